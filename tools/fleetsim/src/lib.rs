//! `pxeforge fleet-sim`: boots a whole simulated fleet against a real `pxeforge serve` on
//! loopback, for operators sizing a site. Every host goes through DHCP, TFTP, the iPXE
//! scripts, kernel + initrd, the kickstart and the install events, in order; the report gives
//! hosts per minute, each stage's p50/p99, failures, and the server's peak memory and CPU.
//!
//! The server installs a host once: before it starts, every simulated host is armed with
//! `pxeforge reinstall --all` in the simulation's state directory. Each host then takes its
//! kickstart URL (with its build token) from the `inst.ks=` of its install script, posts its
//! events with that token, and with `--reboot` boots once more and must get the local-boot script.
//!
//! As root the simulation first moves itself into a private network namespace, so that the
//! DHCP server can own ports 67/68/4011 on its loopback without touching the machine's network.

pub mod child;
pub mod dhcp_client;
pub mod host;
pub mod http_client;
pub mod site_gen;
pub mod stats;
pub mod tftp_client;

use anyhow::{bail, Context, Result};
use dhcp_client::SimDhcp;
use host::{Ctx, SimHost};
use pxeforge_site::profile::Firmware;
use pxeforge_site::{BootMethod, Site};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct FleetSimArgs {
    /// Site whose settings, profiles and templates the simulated fleet boots with
    #[arg(long, default_value = ".")]
    pub site: PathBuf,
    /// Number of generated hosts (spread over the site's install profiles)
    #[arg(long, default_value_t = 1000)]
    pub hosts: usize,
    /// Boot the site's own hosts instead of generated ones
    #[arg(long)]
    pub site_hosts: bool,
    /// Hosts booting at the same time
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// DHCP mode of the simulated network (needs root: a private network namespace)
    #[arg(long, value_enum, default_value = "proxy")]
    pub dhcp: SimDhcp,
    /// Size of the synthetic kernel (K, M, G suffixes)
    #[arg(long, default_value = "8M", value_parser = parse_size)]
    pub kernel_size: u64,
    /// Size of the synthetic initrd
    #[arg(long, default_value = "64M", value_parser = parse_size)]
    pub initrd_size: u64,
    /// TFTP block size the simulated firmware asks for
    #[arg(long, default_value_t = 1468)]
    pub blksize: u16,
    /// Give up on a stage of a host after this many seconds
    #[arg(long, default_value_t = 300)]
    pub stage_timeout: u64,
    /// The pxeforge binary to run as the server (default: this one)
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Log level of the server (its log is kept in the work directory)
    #[arg(long, default_value = "warn")]
    pub server_log: String,
    /// Work directory (default: a new one under $TMPDIR, removed afterwards)
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Stay in this network namespace even as root (skips DHCP)
    #[arg(long)]
    pub no_netns: bool,
    /// After its install, boot each host once more: it must get the local-boot script
    #[arg(long)]
    pub reboot: bool,
}

/// `512`, `64K`, `8M`, `1G`, `8MiB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&t[..t.len() - 1], 1 << 20),
        Some('G' | 'g') => (&t[..t.len() - 1], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a size like 64M"))
}

/// Moves this process into a new network namespace with loopback up. Must run before any
/// thread exists: a namespace change applies to the calling thread only.
fn enter_private_netns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
    let st = Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .context("running `ip link set lo up`")?;
    if !st.success() {
        bail!("`ip link set lo up` failed in the private namespace");
    }
    Ok(())
}

struct WorkDir {
    path: PathBuf,
    remove: bool,
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs the simulation; the exit code is 0 when every host booted.
pub fn run(args: &FleetSimArgs) -> Result<i32> {
    let mut notes = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    let netns = root && !args.no_netns;
    if netns {
        enter_private_netns()?;
    }
    let dhcp_mode = match (args.dhcp, netns) {
        (SimDhcp::Off, _) => None,
        (m, true) => Some(m),
        (_, false) => {
            let why = if root {
                "--no-netns"
            } else {
                "needs root (a private network namespace for ports 67/68/4011)"
            };
            let msg = format!("SKIP: DHCP stage: {why}");
            eprintln!("fleet-sim: {msg}");
            notes.push(msg);
            None
        }
    };
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }

    let site_dir = args
        .site
        .canonicalize()
        .with_context(|| format!("site {}", args.site.display()))?;
    let site = Site::load(&site_dir).map_err(|e| {
        for d in &e.0 {
            eprintln!("{d}");
        }
        anyhow::anyhow!("{e} in {}", site_dir.display())
    })?;

    let work = match &args.workdir {
        Some(p) => {
            std::fs::create_dir_all(p)?;
            WorkDir {
                path: p.canonicalize()?,
                remove: false,
            }
        }
        None => {
            let p = std::env::temp_dir().join(format!("pxeforge-fleet-sim-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p)?;
            WorkDir {
                path: p,
                remove: true,
            }
        }
    };
    let (sim_site, assets, tftp_root, state) = (
        work.path.join("site"),
        work.path.join("assets"),
        work.path.join("tftp"),
        work.path.join("state"),
    );
    let _ = std::fs::remove_dir_all(&state);
    for d in [&assets, &tftp_root, &state] {
        std::fs::create_dir_all(d)?;
    }

    // The HTTP port goes into the site's repository URLs, so it is chosen before the start.
    let http_port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let repo_url = format!("http://127.0.0.1:{http_port}/assets/{}", site_gen::REPO_DIR);
    site_gen::copy_site_definition(&site_dir, &sim_site)?;
    let settings = std::fs::read_to_string(site_dir.join("pxeforge.toml"))?;
    std::fs::write(
        sim_site.join("pxeforge.toml"),
        site_gen::rewrite_settings(&settings, &repo_url)?,
    )?;
    let hosts_dir = sim_site.join("hosts");
    let _ = std::fs::remove_dir_all(&hosts_dir);
    let sim_hosts = if args.site_hosts {
        site_gen::copy_dir(&site_dir.join("hosts"), &hosts_dir)?;
        site_hosts(&site)
    } else {
        let install_profiles: Vec<String> = site
            .profiles
            .iter()
            .filter(|(_, p)| p.boot == BootMethod::Install)
            .map(|(n, _)| n.clone())
            .collect();
        std::fs::create_dir_all(&hosts_dir)?;
        std::fs::write(
            hosts_dir.join("fleet.toml"),
            site_gen::hosts_toml(args.hosts, &install_profiles)?,
        )?;
        (0..args.hosts)
            .map(|i| {
                let profile = &install_profiles[i % install_profiles.len()];
                SimHost {
                    index: i,
                    name: format!("sim-{i:05}"),
                    mac: site_gen::mac_for(i),
                    uefi: is_uefi(&site, profile),
                    address: site_gen::address_for(i),
                }
            })
            .collect()
    };

    // Synthetic files: the install repository's kernel + initrd, and the iPXE binaries.
    let pxeboot = assets.join(site_gen::REPO_DIR).join("images/pxeboot");
    std::fs::create_dir_all(&pxeboot)?;
    let kernel = Arc::new(site_gen::synthetic(args.kernel_size as usize, 1));
    let initrd = Arc::new(site_gen::synthetic(args.initrd_size as usize, 2));
    std::fs::write(pxeboot.join("vmlinuz"), &*kernel)?;
    std::fs::write(pxeboot.join("initrd.img"), &*initrd)?;
    let repo_path = format!("/assets/{}/images/pxeboot", site_gen::REPO_DIR);
    let http_files = HashMap::from([
        (format!("{repo_path}/vmlinuz"), kernel),
        (format!("{repo_path}/initrd.img"), initrd),
    ]);
    let bf = &site.settings.dhcp.boot_files;
    let mut tftp_files = HashMap::new();
    for (i, name) in [&bf.bios, &bf.efi_x64].into_iter().enumerate() {
        let real = Path::new("/usr/lib/ipxe").join(name);
        let data = std::fs::read(&real)
            .unwrap_or_else(|_| site_gen::synthetic(256 * 1024 + 77, 10 + i as u64));
        std::fs::write(tftp_root.join(name), &data)?;
        tftp_files.insert(name.clone(), Arc::new(data));
    }

    let exe = match &args.server_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?,
    };
    // A new state store adopts every host as installed: arm them, as an operator would.
    let armed = arm_hosts(
        &exe,
        &sim_site,
        &state,
        &args.server_log,
        &sim_hosts,
        &work.path.join("reinstall.log"),
    )?;
    eprintln!("fleet-sim: armed {armed} hosts (pxeforge reinstall --all)");
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .arg("--site")
        .arg(&sim_site)
        .args([
            "--http",
            &format!("127.0.0.1:{http_port}"),
            "--tftp",
            "127.0.0.1:0",
        ])
        .arg("--tftp-root")
        .arg(&tftp_root)
        .arg("--assets")
        .arg(&assets)
        .arg("--state")
        .arg(&state)
        .env("PXEFORGE_LOG", &args.server_log);
    if let Some(m) = dhcp_mode {
        let mode = if m == SimDhcp::Reservation {
            "reservation"
        } else {
            "proxy"
        };
        cmd.args(["--dhcp", mode, "--dhcp-interface", "lo"]);
    }
    let server =
        child::ServerChild::start(cmd, &work.path.join("serve.log"), Duration::from_secs(300))?;
    if server.tftp.is_none() {
        let msg = "SKIP: TFTP stage: the server reported no TFTP listener".to_string();
        eprintln!("fleet-sim: {msg}");
        notes.push(msg);
    }
    let dhcp_mode = match dhcp_mode {
        Some(_) if server.dhcp.is_empty() => {
            let msg = "SKIP: DHCP stage: the server reported no DHCP listener".to_string();
            eprintln!("fleet-sim: {msg}");
            notes.push(msg);
            None
        }
        m => m,
    };

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()?;
    let n = sim_hosts.len();
    let (outcomes, wall, before, after, self_before, self_after, machine_busy) =
        rt.block_on(async {
            let dhcp = match dhcp_mode {
                Some(m) => Some((dhcp_client::DhcpClient::bind("lo", Ipv4Addr::LOCALHOST)?, m)),
                None => None,
            };
            let ctx = Arc::new(Ctx {
                http: server.http,
                tftp: server.tftp,
                dhcp,
                boot_bios: bf.bios.clone(),
                boot_efi: bf.efi_x64.clone(),
                blksize: args.blksize,
                stage_timeout: Duration::from_secs(args.stage_timeout),
                tftp_files,
                http_files,
                reboot: args.reboot,
            });
            let before = server.stats()?;
            let self_before = child::proc_stats("/proc/self")?;
            let machine_before = machine_jiffies();
            let started = Instant::now();
            let sem = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
            let mut tasks = Vec::with_capacity(n);
            let names: Vec<String> = sim_hosts.iter().map(|h| h.name.clone()).collect();
            for h in sim_hosts {
                let (ctx, sem) = (ctx.clone(), sem.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await;
                    host::boot(&ctx, &h).await
                }));
            }
            let mut outcomes = Vec::with_capacity(n);
            for t in tasks {
                outcomes.push(t.await.unwrap_or_else(|e| stats::HostOutcome {
                    failure: Some((None, format!("host task failed: {e}"))),
                    ..Default::default()
                }));
            }
            let wall = started.elapsed();
            let after = server.stats()?;
            let self_after = child::proc_stats("/proc/self")?;
            let machine_busy = match (machine_before, machine_jiffies()) {
                (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                    Some((b1 - b0) as f64 / (t1 - t0) as f64)
                }
                _ => None,
            };
            check_journal(&ctx, &names, &mut outcomes).await?;
            anyhow::Ok((
                outcomes,
                wall,
                before,
                after,
                self_before,
                self_after,
                machine_busy,
            ))
        })?;
    drop(rt);

    if netns {
        notes.push("ran in a private network namespace (loopback only)".into());
    }
    let header = format!(
        "fleet-sim: {n} hosts, concurrency {}, dhcp {}, kernel {} MiB + initrd {} MiB over HTTP, server {} (pid {}), simulator pid {}",
        args.concurrency,
        dhcp_mode.map(|m| format!("{m:?}").to_lowercase()).unwrap_or_else(|| "skipped".into()),
        args.kernel_size >> 20,
        args.initrd_size >> 20,
        exe.display(),
        server.pid(),
        std::process::id()
    );
    let report = stats::render(&stats::Report {
        header,
        outcomes: &outcomes,
        armed,
        reboot: args.reboot,
        usage: stats::Usage {
            wall,
            server_cpu_secs: after.cpu_secs - before.cpu_secs,
            server_peak_rss_kib: after.peak_rss_kib,
            clients_cpu_secs: self_after.cpu_secs - self_before.cpu_secs,
            cpus,
            machine_busy,
        },
        notes,
    });
    print!("{report}");
    drop(server);
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    Ok(if failures == 0 && n > 0 { 0 } else { 1 })
}

/// Runs `EXE reinstall --all --yes` on the simulated site and state (before `serve` starts, so
/// that it finds them armed), keeping its output in `log`; every simulated host must have been
/// armed. Returns how many hosts it armed.
fn arm_hosts(
    exe: &Path,
    site: &Path,
    state: &Path,
    log_level: &str,
    hosts: &[SimHost],
    log: &Path,
) -> Result<usize> {
    let out = Command::new(exe)
        .args(["reinstall", "--all", "--yes", "--site"])
        .arg(site)
        .arg("--state")
        .arg(state)
        .env("PXEFORGE_LOG", log_level)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} reinstall", exe.display()))?;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    std::fs::write(log, format!("{stdout}{stderr}")).with_context(|| log.display().to_string())?;
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().rev().take(20).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    };
    if !out.status.success() {
        bail!(
            "`{} reinstall --all --yes` failed ({}):\n{}",
            exe.display(),
            out.status,
            tail(&stderr)
        );
    }
    let armed = armed_names(&stdout);
    let missing: Vec<&str> = hosts
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| !armed.contains(n))
        .collect();
    if !missing.is_empty() {
        bail!(
            "`{} reinstall --all --yes` armed {} of the {} simulated hosts (not {}{}); it said:\n{}",
            exe.display(),
            hosts.len() - missing.len(),
            hosts.len(),
            missing[..missing.len().min(5)].join(", "),
            if missing.len() > 5 { ", ..." } else { "" },
            tail(&format!("{stdout}{stderr}"))
        );
    }
    Ok(armed.len())
}

/// The hosts `pxeforge reinstall` reports as armed (`NAME: installed -> armed: ...`). Pure.
fn armed_names(stdout: &str) -> std::collections::HashSet<&str> {
    stdout
        .lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": ")?;
            let to = rest.split_once("->")?.1.trim_start();
            to.starts_with("armed").then_some(name.trim())
        })
        .collect()
}

fn machine_jiffies() -> Option<(u64, u64)> {
    stats::cpu_jiffies(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The server's own account must agree: every host that booted has `finished` as its last
/// event in the journal (GET /api/hosts, a page at a time).
async fn check_journal(
    ctx: &Ctx,
    names: &[String],
    outcomes: &mut [stats::HostOutcome],
) -> Result<()> {
    let mut conn = http_client::Conn::new(ctx.http);
    let mut finished = std::collections::HashSet::new();
    let mut offset = 0u64;
    loop {
        let path = format!("/api/hosts?limit={JOURNAL_PAGE}&offset={offset}");
        let r = conn
            .request("GET", &path, None, http_client::Expect::Keep)
            .await
            .with_context(|| format!("GET {path}"))?;
        if r.status != 200 {
            bail!("GET {path}: status {}", r.status);
        }
        let doc: serde_json::Value =
            serde_json::from_slice(&r.body).context("/api/hosts is not JSON")?;
        match journal_page(&doc, &mut finished) {
            Some(next) if next > offset => offset = next,
            _ => break,
        }
    }
    for (name, o) in names.iter().zip(outcomes.iter_mut()) {
        if o.failure.is_none() && !finished.contains(name.as_str()) {
            o.failure = Some((
                Some(stats::Stage::Events),
                format!("{name}: the server's journal has no `finished` event"),
            ));
        }
    }
    Ok(())
}

/// Hosts asked for per page of `/api/hosts` (the server's largest page).
const JOURNAL_PAGE: u64 = 1000;

/// Adds the hosts of one `/api/hosts` page whose last event is `finished` to `finished`;
/// returns the offset of the next page, if there is one. Pure.
fn journal_page(
    doc: &serde_json::Value,
    finished: &mut std::collections::HashSet<String>,
) -> Option<u64> {
    let hosts = doc["hosts"].as_array()?;
    finished.extend(
        hosts
            .iter()
            .filter(|h| h["last_event"]["status"] == "finished")
            .filter_map(|h| h["name"].as_str().map(str::to_string)),
    );
    let next = doc["offset"].as_u64()? + hosts.len() as u64;
    (!hosts.is_empty() && next < doc["total_hosts"].as_u64()?).then_some(next)
}

fn is_uefi(site: &Site, profile: &str) -> bool {
    site.profiles
        .get(profile)
        .is_some_and(|p| p.firmware == Firmware::Uefi)
}

/// The site's hosts that pxeforge installs from a kickstart (the ones `reinstall` arms).
fn site_hosts(site: &Site) -> Vec<SimHost> {
    site.hosts
        .iter()
        .filter(|h| h.install)
        .filter(|h| {
            site.profiles
                .get(&h.profile)
                .is_some_and(|p| matches!(p.boot, BootMethod::Install | BootMethod::Image))
        })
        .enumerate()
        .filter_map(|(i, h)| {
            Some(SimHost {
                index: i,
                name: h.name.clone(),
                mac: h.macs.first()?.0,
                uefi: is_uefi(site, &h.profile),
                address: h.network.address,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("8M"), Ok(8 << 20));
        assert_eq!(parse_size("8MiB"), Ok(8 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
    }

    #[test]
    fn reads_which_hosts_reinstall_armed() {
        let out = "sim-00000: installed -> armed: installs at its next network boot\n\
                   sim-00001: failed -> armed: installs at its next network boot\n\
                   sim-00002: armed -> armed: installs at its next network boot\n\
                   note: something else -> elsewhere\n";
        let mut names: Vec<&str> = armed_names(out).into_iter().collect();
        names.sort();
        assert_eq!(names, ["sim-00000", "sim-00001", "sim-00002"]);
        assert!(armed_names("").is_empty());
    }

    #[test]
    fn journal_pages() {
        let mut finished = std::collections::HashSet::new();
        let page = serde_json::json!({
            "hosts": [
                {"name": "a", "last_event": {"status": "finished"}},
                {"name": "b", "last_event": {"status": "failed"}},
                {"name": "c", "last_event": null}
            ],
            "discovered": [], "total_hosts": 5, "total_discovered": 0, "limit": 3, "offset": 0
        });
        assert_eq!(journal_page(&page, &mut finished), Some(3));
        let last = serde_json::json!({
            "hosts": [{"name": "d", "last_event": {"status": "finished"}}, {"name": "e"}],
            "discovered": [], "total_hosts": 5, "total_discovered": 0, "limit": 3, "offset": 3
        });
        assert_eq!(journal_page(&last, &mut finished), None);
        let mut names: Vec<_> = finished.into_iter().collect();
        names.sort();
        assert_eq!(names, ["a", "d"]);
        // An empty page ends the walk whatever the total says.
        let empty = serde_json::json!({"hosts": [], "total_hosts": 9, "offset": 4});
        assert_eq!(journal_page(&empty, &mut Default::default()), None);
    }
}
