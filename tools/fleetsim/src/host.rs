//! One simulated host's boot, stage by stage, as firmware, iPXE and the installer do it.

use super::dhcp_client::{DhcpClient, Identity, SimDhcp};
use super::http_client::{Conn, Expect, HttpError, Response};
use super::kill9::{self, Ledger};
use super::stats::{HostOutcome, InstallsAtOnce, Stage};
use super::tftp_client;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU32, Ordering};
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
    /// After `finished`, boot each host once more: it must get the local-boot script.
    pub reboot: bool,
    /// Installs under way at once, as the hosts see them (`install.max_installing`).
    pub installs: InstallsAtOnce,
    /// How long each host's installer runs between its `started` and `finished` events.
    pub install_time: Duration,
    /// `--kill-after`: the server will be killed and restarted mid-run. The hosts then ride
    /// through the outage (a request that fails at the connection is repeated, the host does
    /// not start over) and record every event the server answers 201 here.
    pub ledger: Option<Arc<Ledger>>,
}

impl Ctx {
    /// Whether a request that failed at the connection is repeated: only when the server is
    /// killed on purpose, and not once it could not be started again. Without `--kill-after`
    /// a connection failure stays a failure, as a server that crashed must show.
    fn rides_through(&self) -> bool {
        self.ledger
            .as_ref()
            .is_some_and(|l| !l.gone.load(Ordering::SeqCst))
    }
}

/// One HTTP request as the host's firmware or installer makes it. Riding through a kill, a
/// request that fails at the connection (refused while the server is down, reset or cut off
/// when it is killed) is sent again on a new connection every `RETRY_EVERY`, as iPXE and
/// Anaconda do, until the stage's timeout around it ends the wait. The same request is
/// repeated rather than the boot started over: a host that is `installing` and boots from the
/// network again is failed by the server, by design. An answer is returned whatever its status.
#[allow(clippy::too_many_arguments)] // one per part of the request, as `request_with` takes them
async fn send(
    ctx: &Ctx,
    retries: &AtomicU32,
    conn: &mut Conn,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    expect: Expect<'_>,
) -> Result<Response, HttpError> {
    loop {
        match conn
            .request_with(method, target, headers, body, expect)
            .await
        {
            Err(e) if e.is_connection_failure() && ctx.rides_through() => {
                conn.reset();
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(kill9::RETRY_EVERY).await;
            }
            other => return other,
        }
    }
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

/// A wait script: the server holds an armed host back (`install.max_installing`) and tells it
/// to sleep and boot again from the bootstrap script.
#[derive(Debug, PartialEq, Eq)]
pub struct Wait {
    /// The `sleep` before asking again; None when the script has none (or no number).
    pub secs: Option<u64>,
    /// The URL it chains to (`…/boot.ipxe`).
    pub chain: String,
}

/// Whether `script` is a wait script: its one fetch is a `chain` to `…/boot.ipxe` (no kernel,
/// no initrd, no kickstart), with the `sleep` before it. Pure.
pub fn wait_script(script: &str) -> Option<Wait> {
    let f = script_fetches(script);
    let [chain] = f.kernels.as_slice() else {
        return None;
    };
    if !f.initrds.is_empty() || f.kickstart.is_some() || !chain.ends_with("/boot.ipxe") {
        return None;
    }
    let secs = script.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        if w.next()? != "sleep" {
            return None;
        }
        Some(w.next().and_then(|n| n.parse::<u64>().ok()))
    });
    Some(Wait {
        secs: secs.flatten(),
        chain: chain.clone(),
    })
}

/// The build token of `name`'s kickstart URL (the path and query of `inst.ks=` on the simulated
/// server): it must be `/ks/NAME?token=T` with T 32 hex digits, as the server renders it for
/// an armed host. Pure.
pub fn ks_token(path: &str, name: &str) -> Result<String, String> {
    let (p, query) = path
        .split_once('?')
        .ok_or_else(|| format!("{path}: no ?token= in the kickstart URL"))?;
    if p != format!("/ks/{name}") {
        return Err(format!(
            "{path}: the kickstart URL does not name /ks/{name}"
        ));
    }
    let token = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .ok_or_else(|| format!("{path}: no token= in the kickstart URL"))?;
    if token.len() != 32 || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{path}: the token is not 32 hex digits"));
    }
    Ok(token.to_string())
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
    if let Some(l) = &ctx.ledger {
        l.started.fetch_add(1, Ordering::SeqCst);
    }
    let retries = AtomicU32::new(0);
    if let Err(f) = run_stages(ctx, h, &retries, &mut out).await {
        out.failure = Some(f);
    }
    out.retries = retries.load(Ordering::Relaxed);
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
    retries: &AtomicU32,
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
            dhcp_exchange(ctx, retries, client, &id, xid_base | 1, *mode),
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
            tftp_fetch(ctx, retries, tftp, &boot_file, &data),
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
            dhcp_exchange(ctx, retries, client, &id, xid_base | 2, *mode),
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
        send(
            ctx,
            retries,
            &mut conn,
            "GET",
            "/boot.ipxe",
            &[],
            None,
            Expect::Keep,
        ),
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
    let prefix = format!("http://{}", ctx.http);
    let script = host_script(ctx, h, retries, &mut conn, &target, &prefix, out).await?;
    let fetches = script_fetches(&script);
    if fetches.kernels.is_empty() {
        return Err(failure(
            Stage::HostScript,
            "the script boots no kernel (the local-boot script: was the host armed?)",
        ));
    }
    ctx.installs.start();
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
            let r = timed(
                ctx,
                out,
                stage,
                send(ctx, retries, &mut conn, "GET", path, &[], None, expect),
            )
            .await?;
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
    let token = ks_token(&path, &h.name).map_err(|why| failure(Stage::Kickstart, why))?;
    let r = timed(
        ctx,
        out,
        Stage::Kickstart,
        send(
            ctx,
            retries,
            &mut conn,
            "GET",
            &path,
            &[],
            None,
            Expect::Keep,
        ),
    )
    .await?;
    out.http_bytes += r.length;
    let kickstart = String::from_utf8_lossy(&r.body);
    if r.status != 200 || !kickstart.contains("%post") {
        return Err(failure(
            Stage::Kickstart,
            format!("status {}, or no %post in the kickstart", r.status),
        ));
    }
    // The installer reports with the build's token, so the kickstart must carry it.
    if !kickstart.contains(&token) {
        return Err(failure(
            Stage::Kickstart,
            "the kickstart does not carry the build token for its events",
        ));
    }
    let bearer = format!("Bearer {token}");
    let start = Instant::now();
    for status in ["started", "finished"] {
        if status == "finished" {
            // The install itself (`--install-ms`), between the two events; not part of the
            // events' stage time.
            if !ctx.install_time.is_zero() {
                tokio::time::sleep(ctx.install_time).await;
            }
            // Out of the count as it is sent, not when it is answered: see InstallsAtOnce.
            ctx.installs.end();
        }
        let (mac, message) = (
            super::site_gen::mac_string(&h.mac),
            format!("fleet-sim {}", h.name),
        );
        let body = format!(
            r#"{{"mac":"{mac}","stage":"install","status":"{status}","message":"{message}"}}"#
        );
        let retried_before = retries.load(Ordering::Relaxed);
        let r = timed(
            ctx,
            out,
            Stage::Events,
            send(
                ctx,
                retries,
                &mut conn,
                "POST",
                "/events",
                &[("Authorization", &bearer)],
                Some(("application/json", body.as_bytes())),
                Expect::Keep,
            ),
        )
        .await?;
        let retried = retries.load(Ordering::Relaxed) > retried_before;
        if !(200..300).contains(&r.status) {
            let hint = if r.status == 429 {
                " (the server's install.events_per_minute limit for one address)"
            } else if r.status == 403 && retried && status == "finished" {
                // The first attempt may have been applied (the host installed, its token
                // spent) before the server died without answering: a repeated `finished`
                // cannot be told from a stolen token's.
                " (sent again after the connection failed: the server refuses a repeated \
                 `finished` whose first attempt it may have applied before the kill)"
            } else {
                ""
            };
            return Err(failure(
                Stage::Events,
                format!(
                    "{}: {status}: status {}{hint}: {}",
                    h.name,
                    r.status,
                    String::from_utf8_lossy(&r.body).trim_end()
                ),
            ));
        }
        if let Some(l) = &ctx.ledger {
            // What the server answered is what it promised to keep: checked after the run.
            match kill9::event_id(&r.body) {
                Some(id) if r.status == 201 => l.record(id, &mac, status, &message),
                _ => {
                    l.unreadable.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
    }
    out.times[Stage::Events.index()] = Some(start.elapsed().saturating_sub(ctx.install_time));
    out.installed = true;
    if let Some(l) = &ctx.ledger {
        l.finished.fetch_add(1, Ordering::SeqCst);
    }
    if ctx.reboot {
        second_boot(ctx, h, retries, &target, out).await?;
    }
    Ok(())
}

/// One DHCP exchange. Riding through a kill, an exchange that got no answer (the server was
/// down: the client's own retransmissions ran out) starts again from DISCOVER, as firmware
/// does, until the stage timeout; a NAK or a wrong answer stays a failure.
async fn dhcp_exchange(
    ctx: &Ctx,
    retries: &AtomicU32,
    client: &DhcpClient,
    id: &Identity,
    xid: u32,
    mode: SimDhcp,
) -> Result<super::dhcp_client::Lease, super::dhcp_client::DhcpError> {
    use super::dhcp_client::DhcpError;
    ride_through(
        ctx,
        retries,
        |e| matches!(e, DhcpError::Timeout(..) | DhcpError::Io(_)),
        || client.exchange(id, xid, mode),
    )
    .await
}

/// Repeats `attempt` every `RETRY_EVERY` while it fails in a way `silent` says the server's
/// absence explains, when riding through a kill; any other outcome is returned.
async fn ride_through<T, E, Fut>(
    ctx: &Ctx,
    retries: &AtomicU32,
    silent: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, E>
where
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match attempt().await {
            Err(e) if silent(&e) && ctx.rides_through() => {
                retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(kill9::RETRY_EVERY).await;
            }
            other => return other,
        }
    }
}

/// One TFTP download. Riding through a kill, a transfer the server stopped answering (its
/// transfer socket died with it) is requested again from the start, as firmware does; an
/// error packet or wrong data stays a failure.
async fn tftp_fetch(
    ctx: &Ctx,
    retries: &AtomicU32,
    server: SocketAddr,
    file: &str,
    data: &[u8],
) -> Result<u64, tftp_client::TftpError> {
    use tftp_client::TftpError;
    ride_through(
        ctx,
        retries,
        |e| matches!(e, TftpError::Timeout(_) | TftpError::Io(_)),
        || tftp_client::fetch(server, file, ctx.blksize, data),
    )
    .await
}

/// The host's script from `/ipxe`. While the server answers with a wait script (the install
/// cap is reached) the host does what iPXE does with it: sleeps, boots again from `/boot.ipxe`
/// and asks again, until it gets another script; all its waits together must end within one
/// stage timeout.
async fn host_script(
    ctx: &Ctx,
    h: &SimHost,
    retries: &AtomicU32,
    conn: &mut Conn,
    target: &str,
    prefix: &str,
    out: &mut HostOutcome,
) -> Result<String, (Option<Stage>, String)> {
    let deadline = Instant::now() + ctx.stage_timeout;
    loop {
        let r = timed(
            ctx,
            out,
            Stage::HostScript,
            send(ctx, retries, conn, "GET", target, &[], None, Expect::Keep),
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
        let Some(wait) = wait_script(&script) else {
            return Ok(script);
        };
        out.waits += 1;
        let secs = wait.secs.ok_or_else(|| {
            failure(
                Stage::HostScript,
                "a wait script with no `sleep N`: iPXE would ask again at once, in a loop",
            )
        })?;
        if wait.chain.strip_prefix(prefix) != Some("/boot.ipxe") {
            return Err(failure(
                Stage::HostScript,
                format!(
                    "the wait script chains to {}, not to {prefix}/boot.ipxe",
                    wait.chain
                ),
            ));
        }
        let pause = Duration::from_secs(secs);
        if Instant::now() + pause > deadline {
            return Err(failure(
                Stage::HostScript,
                format!(
                    "no install slot within {:?}: {} wait scripts, the next one {secs} s",
                    ctx.stage_timeout, out.waits
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        out.waited += pause;
        let r = timed(
            ctx,
            out,
            Stage::BootScript,
            send(
                ctx,
                retries,
                conn,
                "GET",
                "/boot.ipxe",
                &[],
                None,
                Expect::Keep,
            ),
        )
        .await?;
        out.http_bytes += r.length;
        if r.status != 200 || !String::from_utf8_lossy(&r.body).contains("/ipxe?mac=") {
            return Err(failure(
                Stage::BootScript,
                format!("after a wait: status {}, or no chain to /ipxe", r.status),
            ));
        }
    }
}

/// The installed host boots again. Its firmware stages are not repeated: what is checked is the
/// server's answer at iPXE, which must now be the local-boot script (no kernel, no kickstart).
async fn second_boot(
    ctx: &Ctx,
    h: &SimHost,
    retries: &AtomicU32,
    target: &str,
    out: &mut HostOutcome,
) -> Result<(), (Option<Stage>, String)> {
    let fail = |why: String| failure(Stage::Reboot, why);
    let (script, length) = timed(ctx, out, Stage::Reboot, async {
        // A rebooted machine opens a new connection.
        let mut conn = Conn::new(ctx.http);
        let r = send(
            ctx,
            retries,
            &mut conn,
            "GET",
            "/boot.ipxe",
            &[],
            None,
            Expect::Keep,
        )
        .await
        .map_err(|e| format!("GET /boot.ipxe: {e}"))?;
        if r.status != 200 {
            return Err(format!("GET /boot.ipxe: status {}", r.status));
        }
        let mut length = r.length;
        let r = send(
            ctx,
            retries,
            &mut conn,
            "GET",
            target,
            &[],
            None,
            Expect::Keep,
        )
        .await
        .map_err(|e| format!("GET /ipxe: {e}"))?;
        length += r.length;
        if r.status != 200 {
            return Err(format!("GET /ipxe: status {}", r.status));
        }
        Ok((String::from_utf8_lossy(&r.body).into_owned(), length))
    })
    .await?;
    out.http_bytes += length;
    if !script.contains(&h.name) {
        return Err(fail(format!(
            "the second boot's script is not {}'s",
            h.name
        )));
    }
    let f = script_fetches(&script);
    if !f.kernels.is_empty() || !f.initrds.is_empty() || f.kickstart.is_some() {
        return Err(fail(format!(
            "installed, yet the second boot got a script that boots {} (not the local-boot script)",
            f.kernels.first().map_or("an initrd", String::as_str)
        )));
    }
    out.local_after_install = true;
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

    #[test]
    fn kickstart_urls_carry_the_hosts_build_token() {
        let t = "0123456789abcdef0123456789ABCDEF";
        assert_eq!(
            ks_token(&format!("/ks/sim-00001?token={t}"), "sim-00001"),
            Ok(t.into())
        );
        assert_eq!(
            ks_token(&format!("/ks/sim-00001?x=1&token={t}"), "sim-00001"),
            Ok(t.into())
        );
        // Another host's URL, the old MAC URL, no token, or a malformed one.
        assert!(ks_token(&format!("/ks/sim-00002?token={t}"), "sim-00001").is_err());
        assert!(ks_token("/ks/02-50-46-00-00-01", "sim-00001").is_err());
        assert!(ks_token("/ks/sim-00001?tok=1", "sim-00001").is_err());
        assert!(ks_token("/ks/sim-00001?token=abc", "sim-00001").is_err());
        assert!(ks_token(&format!("/ks/sim-00001?token={t}0"), "sim-00001").is_err());
        assert!(ks_token(
            "/ks/sim-00001?token=0123456789abcdef0123456789abcdeg",
            "sim-00001"
        )
        .is_err());
    }

    #[test]
    fn tells_a_wait_script_from_the_others() {
        // The server's built-in wait script (server/src/templates.rs WAIT_BUILTIN), rendered.
        let wait =
            "#!ipxe\necho pxeforge: sim-00001 waits for an install slot; asking again in 1 s\n\
                    sleep 1\nchain --replace --autofree http://127.0.0.1:8080/boot.ipxe || exit\n";
        assert_eq!(
            wait_script(wait),
            Some(Wait {
                secs: Some(1),
                chain: "http://127.0.0.1:8080/boot.ipxe".into()
            })
        );
        assert_eq!(
            wait_script("#!ipxe\nchain http://h/boot.ipxe\n"),
            Some(Wait {
                secs: None,
                chain: "http://h/boot.ipxe".into()
            })
        );
        assert_eq!(
            wait_script("#!ipxe\nsleep soon\nchain http://h/boot.ipxe\n").map(|w| w.secs),
            Some(None)
        );
        // An install script, the local-boot script and the bootstrap script are not waits.
        let install =
            "#!ipxe\nkernel http://h/vmlinuz inst.ks=http://h/ks/a?token=t || goto failed\n\
                       initrd http://h/initrd.img\nboot || goto failed\n:failed\nsleep 10\n\
                       chain http://h/boot.ipxe\n";
        assert_eq!(wait_script(install), None);
        assert_eq!(wait_script("#!ipxe\nsanboot --drive 0x80\nexit 1\n"), None);
        assert_eq!(
            wait_script("#!ipxe\nchain --replace --autofree http://h/ipxe?mac=${mac:hexhyp}\n"),
            None
        );
    }
}
