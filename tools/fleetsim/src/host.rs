//! One simulated host's boot, stage by stage, as firmware, iPXE and the installer do it.

use super::dhcp_client::{DhcpClient, Identity, SimDhcp};
use super::http_client::{Conn, Expect};
use super::stats::{HostOutcome, Stage};
use super::tftp_client;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct SimHost {
    pub index: usize,
    pub name: String,
    pub mac: [u8; 6],
    pub uefi: bool,
    pub address: Option<Ipv4Addr>,
}

/// Everything the hosts share: where the services are and what the files must contain.
pub struct Ctx {
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub dhcp: Option<(DhcpClient, SimDhcp)>,
    pub boot_bios: String,
    pub boot_efi: String,
    pub blksize: u16,
    pub stage_timeout: Duration,
    /// TFTP file name → content.
    pub tftp_files: HashMap<String, Arc<Vec<u8>>>,
    /// HTTP path → content, for the big downloads.
    pub http_files: HashMap<String, Arc<Vec<u8>>>,
}

/// What a rendered iPXE script makes the host fetch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Fetches {
    pub kernels: Vec<String>,
    pub initrds: Vec<String>,
    pub kickstart: Option<String>,
}

/// Reads `kernel`/`initrd` lines (and `inst.ks=` on the kernel line) of an iPXE script.
pub fn script_fetches(script: &str) -> Fetches {
    let mut f = Fetches::default();
    for line in script.lines() {
        let mut words = line.split_whitespace();
        let Some(cmd) = words.next() else { continue };
        let is_kernel = matches!(cmd, "kernel" | "chain" | "imgexec");
        let is_initrd = matches!(cmd, "initrd" | "imgfetch" | "module");
        if !is_kernel && !is_initrd {
            continue;
        }
        let mut url = None;
        let mut skip_value = false;
        let rest: Vec<&str> = words.collect();
        for w in &rest {
            if skip_value {
                skip_value = false;
                continue;
            }
            if w.starts_with('-') {
                skip_value = !w.contains('=') && matches!(*w, "--name" | "-n" | "--timeout" | "-t");
                continue;
            }
            url = Some(w.to_string());
            break;
        }
        let Some(url) = url else { continue };
        if is_kernel {
            f.kernels.push(url);
            if let Some(ks) = rest.iter().find_map(|w| w.strip_prefix("inst.ks=")) {
                f.kickstart = Some(ks.to_string());
            }
        } else {
            f.initrds.push(url);
        }
    }
    f
}

fn failure(stage: Stage, why: impl std::fmt::Display) -> (Option<Stage>, String) {
    (Some(stage), why.to_string())
}

fn mac_hyphens(m: &[u8; 6]) -> String {
    format!(
        "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

pub async fn boot(ctx: &Ctx, h: &SimHost) -> HostOutcome {
    let mut out = HostOutcome::default();
    if let Err(f) = run_stages(ctx, h, &mut out).await {
        out.failure = Some(f);
    }
    out
}

async fn timed<T, E: std::fmt::Display>(
    ctx: &Ctx,
    out: &mut HostOutcome,
    stage: Stage,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, (Option<Stage>, String)> {
    let start = Instant::now();
    match tokio::time::timeout(ctx.stage_timeout, fut).await {
        Ok(Ok(v)) => {
            out.times[stage.index()] = Some(start.elapsed());
            Ok(v)
        }
        Ok(Err(e)) => Err(failure(stage, e)),
        Err(_) => Err(failure(
            stage,
            format!("no result within {:?}", ctx.stage_timeout),
        )),
    }
}

async fn run_stages(
    ctx: &Ctx,
    h: &SimHost,
    out: &mut HostOutcome,
) -> Result<(), (Option<Stage>, String)> {
    let expected_boot = if h.uefi {
        &ctx.boot_efi
    } else {
        &ctx.boot_bios
    };
    let xid_base = (std::process::id() << 20) ^ ((h.index as u32) << 2);
    let mut boot_file = expected_boot.clone();
    if let Some((client, mode)) = &ctx.dhcp {
        let id = Identity {
            mac: h.mac,
            uefi: h.uefi,
            ipxe: false,
        };
        let lease = timed(
            ctx,
            out,
            Stage::Dhcp,
            client.exchange(&id, xid_base | 1, *mode),
        )
        .await?;
        if lease.boot_file != *expected_boot {
            return Err(failure(
                Stage::Dhcp,
                format!(
                    "boot file {:?}, expected {expected_boot:?}",
                    lease.boot_file
                ),
            ));
        }
        if *mode == SimDhcp::Reservation && Some(lease.yiaddr) != h.address {
            return Err(failure(
                Stage::Dhcp,
                format!("address {}, expected {:?}", lease.yiaddr, h.address),
            ));
        }
        boot_file = lease.boot_file;
    }
    if let Some(tftp) = ctx.tftp {
        let data = ctx.tftp_files.get(&boot_file).cloned().ok_or_else(|| {
            failure(
                Stage::Tftp,
                format!("no such boot file {boot_file:?} in the TFTP root"),
            )
        })?;
        out.tftp_bytes += timed(
            ctx,
            out,
            Stage::Tftp,
            tftp_client::fetch(tftp, &boot_file, ctx.blksize, &data),
        )
        .await?;
    }
    if let Some((client, mode)) = &ctx.dhcp {
        let id = Identity {
            mac: h.mac,
            uefi: h.uefi,
            ipxe: true,
        };
        let lease = timed(
            ctx,
            out,
            Stage::DhcpIpxe,
            client.exchange(&id, xid_base | 2, *mode),
        )
        .await?;
        if !lease.boot_file.ends_with("/boot.ipxe") {
            return Err(failure(
                Stage::DhcpIpxe,
                format!(
                    "iPXE was offered {:?}, not the bootstrap script",
                    lease.boot_file
                ),
            ));
        }
    }

    let mut conn = Conn::new(ctx.http);
    let r = timed(
        ctx,
        out,
        Stage::BootScript,
        conn.request("GET", "/boot.ipxe", None, Expect::Keep),
    )
    .await?;
    out.http_bytes += r.length;
    if r.status != 200 || !String::from_utf8_lossy(&r.body).contains("/ipxe?mac=") {
        return Err(failure(
            Stage::BootScript,
            format!("status {}, or no chain to /ipxe", r.status),
        ));
    }
    let (platform, arch) = if h.uefi {
        ("efi", "x86_64")
    } else {
        ("pcbios", "i386")
    };
    let target = format!("/ipxe?mac={}&uuid=&serial=&manufacturer=QEMU&product=Standard%20PC&arch={arch}&platform={platform}", mac_hyphens(&h.mac));
    let r = timed(
        ctx,
        out,
        Stage::HostScript,
        conn.request("GET", &target, None, Expect::Keep),
    )
    .await?;
    out.http_bytes += r.length;
    let script = String::from_utf8_lossy(&r.body).into_owned();
    if r.status != 200 || !script.contains(&h.name) {
        return Err(failure(
            Stage::HostScript,
            format!("status {}, or the script is not {}'s", r.status, h.name),
        ));
    }
    let fetches = script_fetches(&script);
    if fetches.kernels.is_empty() {
        return Err(failure(Stage::HostScript, "the script boots no kernel"));
    }
    let prefix = format!("http://{}", ctx.http);
    for (stage, urls) in [
        (Stage::Kernel, &fetches.kernels),
        (Stage::Initrd, &fetches.initrds),
    ] {
        let start = Instant::now();
        for url in urls.iter() {
            let path = url
                .strip_prefix(&prefix)
                .ok_or_else(|| failure(stage, format!("{url} is not on the simulated server")))?;
            let expect = match ctx.http_files.get(path) {
                Some(d) => Expect::Bytes(d),
                None => Expect::Keep,
            };
            let r = timed(ctx, out, stage, conn.request("GET", path, None, expect)).await?;
            out.http_bytes += r.length;
            if r.status != 200 {
                return Err(failure(stage, format!("{url}: status {}", r.status)));
            }
        }
        if !urls.is_empty() {
            out.times[stage.index()] = Some(start.elapsed());
        }
    }
    let ks = fetches
        .kickstart
        .ok_or_else(|| failure(Stage::Kickstart, "the kernel line has no inst.ks="))?;
    let path = ks
        .strip_prefix(&prefix)
        .ok_or_else(|| {
            failure(
                Stage::Kickstart,
                format!("{ks} is not on the simulated server"),
            )
        })?
        .to_string();
    let r = timed(
        ctx,
        out,
        Stage::Kickstart,
        conn.request("GET", &path, None, Expect::Keep),
    )
    .await?;
    out.http_bytes += r.length;
    if r.status != 200 || !String::from_utf8_lossy(&r.body).contains("%post") {
        return Err(failure(
            Stage::Kickstart,
            format!("status {}, or no %post in the kickstart", r.status),
        ));
    }
    let start = Instant::now();
    for status in ["started", "finished"] {
        let body = format!(
            r#"{{"mac":"{}","stage":"install","status":"{status}","message":"fleet-sim {}"}}"#,
            super::site_gen::mac_string(&h.mac),
            h.name
        );
        let r = timed(
            ctx,
            out,
            Stage::Events,
            conn.request(
                "POST",
                "/events",
                Some(("application/json", body.as_bytes())),
                Expect::Keep,
            ),
        )
        .await?;
        if !(200..300).contains(&r.status) {
            return Err(failure(
                Stage::Events,
                format!(
                    "{status}: status {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                ),
            ));
        }
    }
    out.times[Stage::Events.index()] = Some(start.elapsed());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_a_script_fetches() {
        let s = "#!ipxe\nkernel http://h/vmlinuz inst.repo=http://r inst.ks=http://h/ks/52-54 ip=dhcp || goto failed\n\
                 initrd --name initrd.img http://h/initrd.img || goto failed\n  initrd -n=x http://h/b\nboot\n";
        assert_eq!(
            script_fetches(s),
            Fetches {
                kernels: vec!["http://h/vmlinuz".into()],
                initrds: vec!["http://h/initrd.img".into(), "http://h/b".into()],
                kickstart: Some("http://h/ks/52-54".into()),
            }
        );
        assert_eq!(
            script_fetches("#!ipxe\nsanboot --drive 0x80\nexit 1\n"),
            Fetches::default()
        );
    }
}
