//! `pxeforge fleet-sim`: boots a whole simulated fleet against a real `pxeforge serve` on
//! loopback, for operators sizing a site. Every host goes through DHCP, TFTP, the iPXE
//! scripts, kernel + initrd, the kickstart and the install events, in order; the report gives
//! hosts per minute, each stage's p50/p99, failures, and the server's peak memory and CPU.
//!
//! The server installs a host once: once it is ready, every simulated host is armed through its
//! admin API (`POST /api/reinstall {"all": true}`, with the token from the file its ready line
//! names), as an operator's `pxeforge reinstall --all --yes` does. Each host then takes its
//! kickstart URL (with its build token) from the `inst.ks=` of its install script, posts its
//! events with that token, and with `--reboot` boots once more and must get the local-boot script.
//! At the end the server's own account must agree (`GET /api/hosts` on the admin API): every host
//! installed, its last event `finished`.
//!
//! With `--max-installing N` the simulated site caps its installs under way
//! (`install.max_installing`): a host held back gets the wait script, sleeps and asks again. The
//! hosts count the installs under way, `GET /api/status` gives the server's count, and the run
//! fails if either went over the cap.
//!
//! With `--kill-after N` the server is killed with SIGKILL once N hosts have finished and
//! started again on the same addresses, site and state; the hosts ride through the outage by
//! repeating what failed at the connection (see `kill9`), and the run fails unless every event
//! answered 201 is still stored, no address was ACKed to two MACs, and every host finished.
//!
//! As root the simulation first moves itself into a private network namespace, so that the
//! DHCP server can own ports 67/68/4011 on its loopback without touching the machine's network.

pub mod child;
pub mod dhcp_client;
pub mod host;
pub mod http_client;
pub mod kill9;
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
use std::sync::{Arc, Mutex, RwLock};
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
    /// Cap the installs under way at once (install.max_installing of the simulated site, its
    /// waiting hosts asking again every second); 0: no cap. Default: the site's own setting.
    /// The run fails if more than the cap were under way at once.
    #[arg(long, value_name = "N")]
    pub max_installing: Option<u32>,
    /// Each host's install takes this long (milliseconds between its `started` and `finished`
    /// events), so that installs overlap as real ones do: with --max-installing, the cap holds
    /// hosts back only while others are still installing
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub install_ms: u64,
    /// Also write the report as JSON to this file
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Once N hosts have finished (their `finished` event answered 201), kill the server with
    /// SIGKILL, leave it down --down-ms, and start it again on the same addresses with the same
    /// site and state; the hosts ride through (a request that fails at the connection is
    /// repeated every 200 ms within the stage timeout). The run fails unless every event
    /// answered 201 is in the store afterwards, no address was ACKed to two MACs (reservation
    /// DHCP), and every host finishes.
    #[arg(long, value_name = "N")]
    pub kill_after: Option<usize>,
    /// With --kill-after: how long the killed server stays down before it is started again
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub down_ms: u64,
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
        site_gen::rewrite_settings(&settings, &repo_url, args.max_installing)?,
    )?;
    // The cap the simulated server runs with, that the run checks.
    let cap = args
        .max_installing
        .unwrap_or(site.settings.install.max_installing);
    let cap = (cap > 0).then_some(cap);
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
    if let Some(k) = args.kill_after {
        if k == 0 || k >= sim_hosts.len() {
            bail!(
                "--kill-after {k}: must be between 1 and the number of hosts less one ({}), so that \
                 hosts finish both before the kill and after the restart",
                sim_hosts.len().saturating_sub(1)
            );
        }
    }
    // The same command starts the server again after a kill, then on the addresses the first
    // one reported (the hosts keep talking to the same endpoints): only the TFTP and admin
    // addresses differ, port 0 the first time.
    let serve_cmd = {
        let (exe, sim_site, tftp_root, assets, state) = (
            exe.clone(),
            sim_site.clone(),
            tftp_root.clone(),
            assets.clone(),
            state.clone(),
        );
        let log_level = args.server_log.clone();
        move |tftp: &str, admin: &str| {
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .arg("--site")
                .arg(&sim_site)
                .args([
                    "--http",
                    &format!("127.0.0.1:{http_port}"),
                    "--tftp",
                    tftp,
                    // The admin API on a free loopback port: arming and the journal go through it.
                    "--admin",
                    admin,
                ])
                .arg("--tftp-root")
                .arg(&tftp_root)
                .arg("--assets")
                .arg(&assets)
                .arg("--state")
                .arg(&state)
                .env("PXEFORGE_LOG", &log_level);
            if let Some(m) = dhcp_mode {
                let mode = if m == SimDhcp::Reservation {
                    "reservation"
                } else {
                    "proxy"
                };
                cmd.args(["--dhcp", mode, "--dhcp-interface", "lo"]);
            }
            cmd
        }
    };
    let server = child::ServerChild::start(
        serve_cmd("127.0.0.1:0", "127.0.0.1:0"),
        &work.path.join("serve.log"),
        Duration::from_secs(300),
    )?;
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

    let admin = RwLock::new(Arc::new(AdminApi::new(&server.admin)?));
    let ledger = args.kill_after.map(|_| Arc::new(kill9::Ledger::default()));
    let reserved: std::collections::BTreeSet<Ipv4Addr> =
        sim_hosts.iter().filter_map(|h| h.address).collect();
    let restart_cmd = {
        let tftp = server
            .tftp
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let admin_addr = server.admin.addr.to_string();
        move || serve_cmd(&tftp, &admin_addr)
    };
    let (http_addr, tftp_addr) = (server.http, server.tftp);
    let server = Mutex::new(server);

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cpus)
        .enable_all()
        .build()?;
    let n = sim_hosts.len();
    let (
        armed,
        outcomes,
        wall,
        server_usage,
        self_before,
        self_after,
        machine_busy,
        installs,
        kill_report,
    ) = rt.block_on(async {
        // A new state store adopts every host as installed: arm them, as an operator would.
        let armed = arm_hosts(
            &current(&admin),
            &sim_hosts,
            &work.path.join("reinstall.log"),
        )
        .await?;
        eprintln!("fleet-sim: armed {armed} hosts (POST /api/reinstall, all)");
        let dhcp = match dhcp_mode {
            Some(m) => Some((dhcp_client::DhcpClient::bind("lo", Ipv4Addr::LOCALHOST)?, m)),
            None => None,
        };
        let ctx = Arc::new(Ctx {
            http: http_addr,
            tftp: tftp_addr,
            dhcp,
            boot_bios: bf.bios.clone(),
            boot_efi: bf.efi_x64.clone(),
            blksize: args.blksize,
            stage_timeout: Duration::from_secs(args.stage_timeout),
            tftp_files,
            http_files,
            reboot: args.reboot,
            installs: stats::InstallsAtOnce::default(),
            install_time: Duration::from_millis(args.install_ms),
            ledger: ledger.clone(),
        });
        let before = lock(&server)?.stats()?;
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
        // The server's own count is polled while the hosts boot, on this task beside them.
        let stop = std::sync::atomic::AtomicBool::new(false);
        let boots = async {
            let mut outcomes = Vec::with_capacity(n);
            for t in tasks {
                outcomes.push(t.await.unwrap_or_else(|e| stats::HostOutcome {
                    failure: Some((None, format!("host task failed: {e}"))),
                    ..Default::default()
                }));
            }
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            outcomes
        };
        // The kill, once enough hosts have finished (never, without --kill-after).
        let killer = async {
            let (Some(after), Some(ledger)) = (args.kill_after, ledger.clone()) else {
                return None;
            };
            while ledger.finished.load(std::sync::atomic::Ordering::SeqCst) < after {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            // Starting a server blocks on its stdout: off the runtime's threads.
            let (down, log) = (
                Duration::from_millis(args.down_ms),
                work.path.join("serve.after-kill.log"),
            );
            let done = tokio::task::block_in_place(|| {
                kill_and_restart(&server, &admin, &ledger, after, down, &restart_cmd, &log)
            });
            Some(done)
        };
        let (mut outcomes, polled, killed) =
            tokio::join!(boots, poll_status(&admin, &stop), killer);
        let wall = started.elapsed();
        let installs = stats::Installs {
            max: ctx.installs.max(),
            cap,
            ..polled
        };
        // A server that could not be started again has no /proc to read: its usage up to
        // the kill is what there is.
        let after = match lock(&server)?.stats() {
            Ok(s) => s,
            Err(_) if killed.is_some() => child::ProcStats::default(),
            Err(e) => return Err(e),
        };
        let server_usage = match &killed {
            // Two processes: the killed one up to the kill, the new one from its start.
            Some((_, Some(at_kill))) => child::ProcStats {
                cpu_secs: at_kill.cpu_secs - before.cpu_secs + after.cpu_secs,
                peak_rss_kib: at_kill.peak_rss_kib.max(after.peak_rss_kib),
            },
            _ => child::ProcStats {
                cpu_secs: after.cpu_secs - before.cpu_secs,
                peak_rss_kib: after.peak_rss_kib,
            },
        };
        let self_after = child::proc_stats("/proc/self")?;
        let machine_busy = match (machine_before, machine_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64)
            }
            _ => None,
        };
        let admin_now = current(&admin);
        check_journal(&admin_now, &names, &mut outcomes).await?;
        let kill_report = match (args.kill_after, &ledger) {
            (Some(after), Some(ledger)) => {
                let dhcp = match &ctx.dhcp {
                    Some((client, SimDhcp::Reservation)) => {
                        Some(check_leases(client, &reserved, &state.join("leases.db")))
                    }
                    _ => None,
                };
                Some(
                    kill_checks(
                        &admin_now,
                        ledger,
                        after,
                        killed.map(|(k, _)| k),
                        &outcomes,
                        dhcp,
                    )
                    .await,
                )
            }
            _ => None,
        };
        anyhow::Ok((
            armed,
            outcomes,
            wall,
            server_usage,
            self_before,
            self_after,
            machine_busy,
            installs,
            kill_report,
        ))
    })?;
    drop(rt);

    if netns {
        notes.push("ran in a private network namespace (loopback only)".into());
    }
    let header = format!(
        "fleet-sim: {n} hosts, concurrency {}, dhcp {}, kernel {} MiB + initrd {} MiB over HTTP{}, server {} (pid {}), simulator pid {}",
        args.concurrency,
        dhcp_mode.map(|m| format!("{m:?}").to_lowercase()).unwrap_or_else(|| "skipped".into()),
        args.kernel_size >> 20,
        args.initrd_size >> 20,
        if args.install_ms > 0 {
            format!(", installs of {} ms", args.install_ms)
        } else {
            String::new()
        },
        exe.display(),
        lock(&server)?.pid(),
        std::process::id()
    );
    let report = stats::Report {
        header,
        outcomes: &outcomes,
        armed,
        reboot: args.reboot,
        usage: stats::Usage {
            wall,
            server_cpu_secs: server_usage.cpu_secs,
            server_peak_rss_kib: server_usage.peak_rss_kib,
            clients_cpu_secs: self_after.cpu_secs - self_before.cpu_secs,
            cpus,
            machine_busy,
        },
        installs,
        notes,
        kill: kill_report,
    };
    print!("{}", stats::render(&report));
    drop(server);
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&stats::render_json(&report))?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let failures = outcomes.iter().filter(|o| o.failure.is_some()).count();
    let held = report.installs.violations().is_empty()
        && report
            .kill
            .as_ref()
            .is_none_or(|k| k.violations().is_empty());
    Ok(if failures == 0 && n > 0 && held { 0 } else { 1 })
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| anyhow::anyhow!("a thread panicked holding the server"))
}

/// The admin API as it is now (a restarted server may name another address or token).
fn current(admin: &RwLock<Arc<AdminApi>>) -> Arc<AdminApi> {
    match admin.read() {
        Ok(a) => a.clone(),
        // A writer panicked mid-swap: the value is a whole Arc either way.
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Sends SIGKILL to the server, leaves it down for `down`, and starts it again with `cmd` (the
/// same addresses, site and state), reading the new admin address and token from its ready
/// line. Returns what happened, and the killed server's usage up to the kill.
fn kill_and_restart(
    server: &Mutex<child::ServerChild>,
    admin: &RwLock<Arc<AdminApi>>,
    ledger: &kill9::Ledger,
    after: usize,
    down: Duration,
    cmd: &dyn Fn() -> Command,
    log: &Path,
) -> (kill9::Kill, Option<child::ProcStats>) {
    use std::sync::atomic::Ordering::SeqCst;
    let mut k = kill9::Kill {
        after,
        down,
        ..Default::default()
    };
    let mut guard = match lock(server) {
        Ok(g) => g,
        Err(e) => {
            k.error = Some(format!("{e:#}"));
            return (k, None);
        }
    };
    k.old_pid = guard.pid();
    let usage = guard.stats().ok();
    // Set before the signal: an answer read while it is still false came from this server.
    ledger.killed.store(true, SeqCst);
    k.finished_at_kill = ledger.finished.load(SeqCst);
    k.in_flight = ledger
        .started
        .load(SeqCst)
        .saturating_sub(k.finished_at_kill);
    guard.kill();
    eprintln!(
        "fleet-sim: kill -9 pxeforge serve (pid {}) after {} hosts finished, {} booting",
        k.old_pid, k.finished_at_kill, k.in_flight
    );
    std::thread::sleep(down);
    let t = Instant::now();
    match child::ServerChild::start(cmd(), log, Duration::from_secs(300)) {
        Ok(new) => {
            k.ready_in = Some(t.elapsed());
            k.new_pid = Some(new.pid());
            match AdminApi::new(&new.admin) {
                Ok(a) => match admin.write() {
                    Ok(mut w) => *w = Arc::new(a),
                    Err(_) => k.error = Some("the admin API handle was poisoned".into()),
                },
                Err(e) => k.error = Some(format!("the restarted server's admin API: {e:#}")),
            }
            eprintln!(
                "fleet-sim: pxeforge serve started again (pid {}), ready in {:.1} s",
                new.pid(),
                t.elapsed().as_secs_f64()
            );
            *guard = new;
        }
        Err(e) => {
            // Nothing will answer: the hosts stop riding through and fail their stage.
            ledger.gone.store(true, SeqCst);
            k.error = Some(format!("the server could not be started again: {e:#}"));
        }
    }
    (k, usage)
}

/// The ACKs the simulated clients saw against each other and against `leases.db`.
fn check_leases(
    client: &dhcp_client::DhcpClient,
    reserved: &std::collections::BTreeSet<Ipv4Addr>,
    db: &Path,
) -> kill9::DhcpCheck {
    let (acks, by_ip) = client.acks.snapshot();
    let rows = kill9::read_leases(db).map_err(|e| format!("{e:#}"));
    kill9::DhcpCheck {
        acks,
        addresses: by_ip.len(),
        doubles: kill9::double_acks(&by_ip),
        lease_conflicts: rows
            .as_ref()
            .map(|r| kill9::lease_conflicts(&by_ip, reserved, r))
            .unwrap_or_default(),
        lease_rows: rows.map(|r| r.len()),
    }
}

/// Events asked for per page of `/api/events` (the server's largest page).
const EVENTS_PAGE: u64 = 1000;

/// Every event in the store (`GET /api/events?after=`, a page at a time), by id.
async fn stored_events(admin: &AdminApi) -> Result<HashMap<i64, kill9::Stored>> {
    let mut conn = http_client::Conn::new(admin.addr);
    let mut out = HashMap::new();
    let mut after = 0i64;
    loop {
        let path = format!("/api/events?after={after}&limit={EVENTS_PAGE}");
        let doc = admin.json(&mut conn, "GET", &path, None).await?;
        let events = doc["events"]
            .as_array()
            .with_context(|| format!("GET {path}: no `events` list"))?;
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        for e in events {
            let Some(id) = e["id"].as_i64() else { continue };
            out.insert(
                id,
                kill9::Stored {
                    mac: kill9::normal_mac(&text(&e["mac"])),
                    status: text(&e["status"]),
                    message: text(&e["message"]),
                },
            );
        }
        match doc["last_id"].as_i64() {
            Some(last) if !events.is_empty() && last > after => after = last,
            _ => break,
        }
    }
    Ok(out)
}

/// The checks of a `--kill-after` run, after every host is done.
async fn kill_checks(
    admin: &AdminApi,
    ledger: &kill9::Ledger,
    after: usize,
    kill: Option<kill9::Kill>,
    outcomes: &[stats::HostOutcome],
    dhcp: Option<kill9::DhcpCheck>,
) -> kill9::KillReport {
    use std::sync::atomic::Ordering::SeqCst;
    let answered = ledger.answered();
    let (missing, events_error) = match stored_events(admin).await {
        Ok(stored) => (kill9::missing_events(&answered, &stored), None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    kill9::KillReport {
        kill,
        kill_after: after,
        retries: outcomes.iter().map(|o| u64::from(o.retries)).sum(),
        retrying_hosts: outcomes.iter().filter(|o| o.retries > 0).count(),
        answered: answered.len(),
        answered_before_kill: answered.iter().filter(|a| a.before_kill).count(),
        unreadable_ids: ledger.unreadable.load(SeqCst),
        missing,
        events_error,
        dhcp,
    }
}

/// The admin API of the server under test: its address and bearer token.
pub struct AdminApi {
    addr: std::net::SocketAddr,
    token: String,
}

impl AdminApi {
    fn new(l: &pxeforge_child::AdminListener) -> Result<AdminApi> {
        if l.tls {
            bail!(
                "the admin API at {} speaks https; fleet-sim asked for a plain loopback listener (--admin)",
                l.addr
            );
        }
        let token = l
            .token()
            .with_context(|| format!("reading the admin token {}", l.token_file.display()))?;
        Ok(AdminApi {
            addr: l.addr,
            token,
        })
    }

    /// One request with the token; the answer must be 200 with JSON.
    async fn json(
        &self,
        conn: &mut http_client::Conn,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let bearer = format!("Bearer {}", self.token);
        let body = body.map(|b| b.to_string());
        let r = conn
            .request_with(
                method,
                path,
                &[("Authorization", &bearer)],
                body.as_deref().map(|b| ("application/json", b.as_bytes())),
                http_client::Expect::Keep,
            )
            .await
            .with_context(|| format!("{method} {path} on the admin API at {}", self.addr))?;
        if r.status != 200 {
            bail!(
                "{method} {path} on the admin API at {}: status {}: {}",
                self.addr,
                r.status,
                String::from_utf8_lossy(&r.body).trim()
            );
        }
        serde_json::from_slice(&r.body)
            .with_context(|| format!("{method} {path}: the answer is not JSON"))
    }
}

/// Arms every installable host (`POST /api/reinstall {"all": true}`), keeping the answer in
/// `log`; every simulated host must have been armed. Returns how many hosts it armed.
async fn arm_hosts(admin: &AdminApi, hosts: &[SimHost], log: &Path) -> Result<usize> {
    let mut conn = http_client::Conn::new(admin.addr);
    let answer = admin
        .json(
            &mut conn,
            "POST",
            "/api/reinstall",
            Some(&serde_json::json!({"all": true})),
        )
        .await?;
    std::fs::write(log, serde_json::to_vec_pretty(&answer)?)
        .with_context(|| log.display().to_string())?;
    check_armed(&answer, hosts)
}

/// Every simulated host must be in the answer's `armed` list; the count armed. Pure.
fn check_armed(answer: &serde_json::Value, hosts: &[SimHost]) -> Result<usize> {
    let armed: std::collections::HashSet<&str> = answer["armed"]
        .as_array()
        .map(|a| a.iter().filter_map(|n| n.as_str()).collect())
        .unwrap_or_default();
    let missing: Vec<&str> = hosts
        .iter()
        .map(|h| h.name.as_str())
        .filter(|n| !armed.contains(n))
        .collect();
    if !missing.is_empty() {
        let skipped: Vec<String> = answer["skipped"]
            .as_array()
            .into_iter()
            .flatten()
            .take(5)
            .map(|s| format!("{}: {}", s["host"], s["why"]))
            .collect();
        bail!(
            "POST /api/reinstall armed {} of the {} simulated hosts (not {}{}); skipped: [{}]",
            hosts.len() - missing.len(),
            hosts.len(),
            missing[..missing.len().min(5)].join(", "),
            if missing.len() > 5 { ", ..." } else { "" },
            skipped.join("; ")
        );
    }
    Ok(armed.len())
}

/// How often the server's count of installs under way is read during the run: often enough
/// to see a host that is `installing` for a fraction of a second (a simulated install is one
/// kickstart fetch and two events), cheap on loopback.
const STATUS_POLL: Duration = Duration::from_millis(50);

/// Reads `GET /api/status` on the admin API every `STATUS_POLL` until `stop`: the most
/// `installing` it reported, its `max_installing`, and how many polls were answered.
async fn poll_status(
    admin: &RwLock<Arc<AdminApi>>,
    stop: &std::sync::atomic::AtomicBool,
) -> stats::Installs {
    let mut admin_now = current(admin);
    let mut conn = http_client::Conn::new(admin_now.addr);
    let mut out = stats::Installs::default();
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        // After a kill the restarted server's admin API may be elsewhere.
        let latest = current(admin);
        if !Arc::ptr_eq(&latest, &admin_now) {
            admin_now = latest;
            conn = http_client::Conn::new(admin_now.addr);
        }
        let admin = &*admin_now;
        // Bounded, so that a hung admin API cannot hold the run after the hosts are done.
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            admin.json(&mut conn, "GET", "/api/status", None),
        )
        .await
        .map_err(|_| anyhow::anyhow!("GET /api/status: no answer within 10 s"))
        .and_then(|r| r);
        match answer.map(|doc| (doc["installing"].as_u64(), doc["max_installing"].as_u64())) {
            Ok((Some(installing), cap)) => {
                out.server_polls += 1;
                out.server_max = Some(out.server_max.unwrap_or(0).max(installing));
                out.server_cap = cap;
            }
            Ok((None, _)) => {
                out.poll_error
                    .get_or_insert_with(|| "GET /api/status: no `installing` count".into());
            }
            Err(e) => {
                out.poll_error.get_or_insert_with(|| format!("{e:#}"));
                // A fresh connection next time: this one may be mid-response.
                conn = http_client::Conn::new(admin.addr);
            }
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    out
}

fn machine_jiffies() -> Option<(u64, u64)> {
    stats::cpu_jiffies(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The server's own account must agree: every host that booted is `installed` with `finished`
/// as its last event (GET /api/hosts on the admin API, a page at a time).
async fn check_journal(
    admin: &AdminApi,
    names: &[String],
    outcomes: &mut [stats::HostOutcome],
) -> Result<()> {
    let mut conn = http_client::Conn::new(admin.addr);
    let mut journal = std::collections::HashMap::new();
    let mut offset = 0u64;
    loop {
        let path = format!("/api/hosts?limit={JOURNAL_PAGE}&offset={offset}");
        let doc = admin.json(&mut conn, "GET", &path, None).await?;
        match journal_page(&doc, &mut journal) {
            Some(next) if next > offset => offset = next,
            _ => break,
        }
    }
    for (name, o) in names.iter().zip(outcomes.iter_mut()) {
        if o.failure.is_some() {
            continue;
        }
        let why = match journal.get(name.as_str()) {
            None => Some("the server's journal does not list it".to_string()),
            Some(j) if j.last_status != "finished" => Some(format!(
                "the server's journal has no `finished` event (last: {})",
                j.last_status
            )),
            Some(j) if j.state != "installed" => {
                Some(format!("the server holds it as {}, not installed", j.state))
            }
            Some(_) => None,
        };
        if let Some(why) = why {
            o.failure = Some((Some(stats::Stage::Events), format!("{name}: {why}")));
        }
    }
    Ok(())
}

/// What the server's journal says of one host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Journal {
    /// Its build state (`-` when it has none).
    state: String,
    /// The status of its last event (`-` when it has none).
    last_status: String,
}

/// Hosts asked for per page of `/api/hosts` (the server's largest page).
const JOURNAL_PAGE: u64 = 1000;

/// Adds the hosts of one `/api/hosts` page to `journal`; returns the offset of the next page,
/// if there is one. Pure.
fn journal_page(
    doc: &serde_json::Value,
    journal: &mut std::collections::HashMap<String, Journal>,
) -> Option<u64> {
    let hosts = doc["hosts"].as_array()?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
    journal.extend(hosts.iter().filter_map(|h| {
        Some((
            h["name"].as_str()?.to_string(),
            Journal {
                state: text(&h["state"]),
                last_status: text(&h["last_event"]["status"]),
            },
        ))
    }));
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

    fn sim(name: &str) -> SimHost {
        SimHost {
            index: 0,
            name: name.into(),
            mac: [2, 0, 0, 0, 0, 1],
            uefi: false,
            address: None,
        }
    }

    #[test]
    fn every_simulated_host_must_be_armed() {
        let hosts = [sim("sim-00000"), sim("sim-00001")];
        let all = serde_json::json!({"armed": ["sim-00000", "sim-00001", "other"], "skipped": []});
        assert_eq!(check_armed(&all, &hosts).unwrap(), 3);
        let some = serde_json::json!({
            "armed": ["sim-00000"],
            "skipped": [{"host": "sim-00001", "why": "not installed from a kickstart"}]
        });
        let e = check_armed(&some, &hosts).unwrap_err().to_string();
        assert!(
            e.contains("armed 1 of the 2 simulated hosts (not sim-00001)"),
            "{e}"
        );
        assert!(e.contains("not installed from a kickstart"), "{e}");
        let e = check_armed(&serde_json::json!({}), &hosts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("armed 0 of the 2"), "{e}");
    }

    #[test]
    fn journal_pages() {
        let mut journal = std::collections::HashMap::new();
        let page = serde_json::json!({
            "hosts": [
                {"name": "a", "state": "installed", "last_event": {"status": "finished"}},
                {"name": "b", "state": "failed", "last_event": {"status": "failed"}},
                {"name": "c", "state": "armed", "last_event": null}
            ],
            "discovered": [], "total_hosts": 5, "total_discovered": 0, "limit": 3, "offset": 0
        });
        assert_eq!(journal_page(&page, &mut journal), Some(3));
        let last = serde_json::json!({
            "hosts": [{"name": "d", "state": "installed", "last_event": {"status": "finished"}}, {"name": "e"}],
            "discovered": [], "total_hosts": 5, "total_discovered": 0, "limit": 3, "offset": 3
        });
        assert_eq!(journal_page(&last, &mut journal), None);
        let j = |state: &str, last: &str| Journal {
            state: state.into(),
            last_status: last.into(),
        };
        assert_eq!(journal.len(), 5);
        assert_eq!(journal["a"], j("installed", "finished"));
        assert_eq!(journal["b"], j("failed", "failed"));
        assert_eq!(journal["c"], j("armed", "-"));
        assert_eq!(journal["e"], j("-", "-"));
        // An empty page ends the walk whatever the total says.
        let empty = serde_json::json!({"hosts": [], "total_hosts": 9, "offset": 4});
        assert_eq!(journal_page(&empty, &mut Default::default()), None);
    }
}
