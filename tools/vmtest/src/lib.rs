//! `pxeforge vm-test`: boots a QEMU VM from the network against this site, in a private network
//! namespace, and reports how far it got and how long each stage took.
//!
//! One run: namespace + bridge + tap (and dnsmasq in a second namespace for proxy mode) →
//! `pxeforge serve` bound to the bridge, its admin API on the namespace's loopback → the host
//! armed through that API → QEMU (TCG) → follow the serial console, the serve log and the host's
//! events (`GET /api/events`) → end on the host's `finished`
//! (exit 0), `failed`, a local boot or the timeout (exit 1). With `--expect-local-reboot` the
//! run goes on after `finished` until the rebooted VM's second network boot gets the local-boot
//! script. Everything it started is stopped and removed on every exit, Ctrl-C included.

pub mod api;
pub mod child;
pub mod dnsmasq;
pub mod needs;
pub mod netns;
pub mod qemu;
pub mod report;
pub mod target;
pub mod timeline;

use anyhow::{bail, Context, Result};
use api::{Admin, Poll};
use child::{ChildGuard, Line, Source};
use pxeforge_child::{ServeChild, StartError};
use pxeforge_site::host::parse_cidr;
use pxeforge_site::Site;
use report::{EventSeen, Outcome, Report};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use timeline::{secs, Stage, Timeline};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// SeaBIOS with QEMU's iPXE option ROM on the NIC
    Bios,
    /// OVMF with the NIC's option ROM disabled: the firmware's own PXE client
    Uefi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VmDhcp {
    /// dnsmasq (addresses only) beside pxeforge's proxyDHCP
    Proxy,
    /// pxeforge alone hands out the addresses
    Reservation,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VmTestArgs {
    /// Profile to test (its firmware; the VM plays the first host to install with this profile)
    #[arg(long)]
    pub profile: Option<String>,
    /// Host of the site the VM plays (its first MAC)
    #[arg(long, conflicts_with = "mac")]
    pub host: Option<String>,
    /// MAC address of the VM (a host of the site, or an unknown machine)
    #[arg(long)]
    pub mac: Option<String>,
    /// Firmware of the VM (default: the profile's; bios for `both` or an unknown machine)
    #[arg(long, value_enum)]
    pub firmware: Option<Firmware>,
    /// Seconds until the run is given up (a TCG boot takes about 30 s)
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
    /// Site directory
    #[arg(long, default_value = ".")]
    pub site: PathBuf,
    /// State directory for the boot service (default: the site's); images are served from it.
    /// One run per state directory at a time (its serve holds it)
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Directory served at /assets/ (default: the site's), e.g. where the test installer is staged
    #[arg(long, value_name = "DIR", conflicts_with = "installer")]
    pub assets: Option<PathBuf>,
    /// Serve the kernel and initramfs of this built recipe (e.g. test-installer) as the boot
    /// tree `/assets/installer/images/pxeboot/` (the assets folder then holds only that)
    #[arg(long, value_name = "RECIPE")]
    pub installer: Option<String>,
    /// Folder for report.txt, report.json, serial.log, serve.log, dnsmasq.log and the VM's disk
    #[arg(long, value_name = "DIR", default_value = "vm-test-out")]
    pub out: PathBuf,
    /// Who hands out addresses: dnsmasq beside pxeforge's proxyDHCP, or pxeforge alone
    #[arg(long, value_enum, default_value_t = VmDhcp::Proxy)]
    pub dhcp: VmDhcp,
    /// The boot server's address on the test bridge (inside the namespace only)
    #[arg(long, default_value = "10.77.0.1/24", value_name = "ADDR/PREFIX")]
    pub address: String,
    /// VM memory in MiB
    #[arg(long, default_value_t = 1024)]
    pub memory: u64,
    /// Size of the VM's (empty, sparse) disk in MiB
    #[arg(long, default_value_t = 256)]
    pub disk_mib: u64,
    /// After `finished`, let the VM reboot (network first, then its disk) and go on until its
    /// second network boot gets the local-boot script; fail if it gets the install script or the
    /// kernel again (the kernel must be fetched exactly once)
    #[arg(long)]
    pub expect_local_reboot: bool,
    /// The pxeforge binary that serves the boot (default: this one)
    #[arg(long, value_name = "PATH", hide = true)]
    pub serve_exe: Option<PathBuf>,
}

impl VmTestArgs {
    /// The pxeforge binary for `serve`: `--serve-exe`, else the running one.
    fn exe(&self) -> Result<PathBuf> {
        match &self.serve_exe {
            Some(p) => Ok(p.clone()),
            None => std::env::current_exe().context("locating the pxeforge binary"),
        }
    }
}

const HTTP_PORT: u16 = 8080;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and TERM end the run through the normal path, so that every guard cleans up.
fn catch_signals() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

/// Runs one VM boot and returns the process exit code (0 only when the host reported `finished`).
pub fn run(args: &VmTestArgs) -> Result<i32> {
    let (server, prefix) = parse_cidr(&args.address)
        .map_err(|e| anyhow::anyhow!("--address {}: {e}", args.address))?;
    if !(8..=24).contains(&prefix) {
        bail!(
            "--address {}: the test network needs a prefix from /8 to /24",
            args.address
        );
    }
    let site_dir = args
        .site
        .canonicalize()
        .with_context(|| format!("site directory {}", args.site.display()))?;
    let site = Site::load(&site_dir).map_err(|e| {
        for d in &e.0 {
            eprintln!("{d}");
        }
        anyhow::anyhow!("{e} in {}", site_dir.display())
    })?;
    let target = target::resolve(
        &site,
        args.host.as_deref(),
        args.mac.as_deref(),
        args.profile.as_deref(),
        args.firmware,
    )?;
    if args.expect_local_reboot && !target.armable {
        bail!(
            "--expect-local-reboot needs a host of the site that installs from a kickstart (install = true, a profile that boots install or image){}",
            match &target.host {
                Some(h) => format!(": {h} does not"),
                None => format!(": {} is an unknown machine", target.mac),
            }
        );
    }
    // The settings' state directory, relative to the site (what `serve` uses without --state).
    let state_dir = args
        .state
        .clone()
        .unwrap_or_else(|| site.dir.join(&site.settings.server.state_dir));
    drop(site);

    let facts = needs::probe();
    let missing = needs::missing(&facts, target.firmware, args.dhcp == VmDhcp::Proxy);
    if !missing.is_empty() {
        eprintln!("pxeforge vm-test: cannot boot a VM here:");
        for m in &missing {
            eprintln!("  missing {}: {}", m.what, m.package);
        }
        let pkgs: Vec<&str> = missing
            .iter()
            .filter_map(|m| m.package.strip_prefix("apt-get install "))
            .collect();
        if !pkgs.is_empty() {
            eprintln!(
                "  on Debian: apt-get install {} (or scripts/install-deps.sh for everything)",
                pkgs.join(" ")
            );
        }
        return Ok(2);
    }

    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let out = args.out.canonicalize()?;
    let disk = out.join("disk.raw");
    // A fresh, sparse, all-zero disk: what the host installs onto, checked from outside later.
    let _ = std::fs::remove_file(&disk);
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(args.disk_mib * 1024 * 1024))
        .with_context(|| format!("creating {}", disk.display()))?;
    let ovmf = match (&target.firmware, &facts.ovmf) {
        (Firmware::Uefi, Some((code, vars))) => {
            let copy = out.join("OVMF_VARS.fd");
            std::fs::copy(vars, &copy).with_context(|| format!("copying {}", vars.display()))?;
            Some((code.clone(), copy))
        }
        _ => None,
    };

    let assets = match &args.installer {
        Some(recipe) => Some(stage_installer(
            &state_dir,
            recipe,
            target.profile.as_deref(),
            &out,
        )?),
        None => args.assets.clone(),
    };

    catch_signals();
    let mut session = Session::start(args, assets.as_deref(), &out, &target, server, prefix)?;
    let outcome = session.follow(args, &target, &disk, ovmf, &facts)?;
    let report = session.finish(args, &target, &out, &disk, outcome);
    let text = report.render();
    std::fs::write(out.join("report.json"), serde_json::to_vec_pretty(&report)?)?;
    std::fs::write(out.join("report.txt"), &text)?;
    print!("{text}");
    Ok(report.exit_code)
}

/// The reason of a failed install: the event's, and what the test installer printed as its own
/// reason when the event does not say it already (the server takes one `failed` per build, the
/// kickstart's `%onerror` report, and refuses the installer's more precise one after it). Pure.
fn failure_reason(event: &str, installer: Option<&str>) -> String {
    match installer {
        Some(i) if !i.is_empty() && !event.contains(i) => format!("{event} (the installer: {i})"),
        _ => event.to_string(),
    }
}

/// `--expect-local-reboot`: whether the host's second script request (the `script` it was sent,
/// at `at` s) closes the install-once loop: after `finished`, the local-boot script, with the
/// kernel fetched exactly once. Otherwise the outcome and its reason. Pure.
fn second_boot_verdict(
    host: &str,
    script: &str,
    at: f64,
    finished: Option<f64>,
    kernel_fetches: u32,
) -> Result<(), (Outcome, String)> {
    if finished.is_none() {
        return Err((
            Outcome::Failed,
            format!("{host} booted from the network again at {at:.1}s before it reported finished (it was sent the {script} script)"),
        ));
    }
    match script {
        "local" if kernel_fetches == 1 => Ok(()),
        "local" => Err((
            Outcome::Reinstall,
            format!("{host} was sent the local-boot script at {at:.1}s, but its kernel was fetched {kernel_fetches} times, not once"),
        )),
        "install" => Err((
            Outcome::Reinstall,
            format!("after finished, {host} was sent the install script again at {at:.1}s: the server holds it as armed, not installed"),
        )),
        other => Err((
            Outcome::Reinstall,
            format!("after finished, {host} was sent the {other:?} script at {at:.1}s, not the local-boot script"),
        )),
    }
}

/// What one run has started. Field order is drop order: VM, service, DHCP server, namespaces.
struct Session {
    qemu: Option<ChildGuard>,
    serve: Option<ServeChild>,
    dnsmasq: Option<ChildGuard>,
    poll_stop: Arc<AtomicBool>,
    /// The service's admin API (reached from inside the namespace only).
    admin: Option<Admin>,
    /// The build-state change made before the boot (`installed -> armed`), if the host was armed.
    armed: Option<String>,
    /// The host's build state when the run ended, as the admin API said.
    state_after: Option<String>,
    netns: netns::Netns,
    lines: mpsc::Receiver<Line>,
    tx: mpsc::Sender<Line>,
    polls: mpsc::Receiver<Poll>,
    logs: Logs,
    timeline: Timeline,
    events: Vec<EventSeen>,
    baseline: i64,
    start: Instant,
    reason: String,
    /// Successful kernel downloads seen in the serve log.
    kernel_fetches: u32,
    /// The scripts the server sent this host (`host script … script="…"`), in order.
    host_scripts: Vec<String>,
    /// When the host's `finished` was seen (event poll or serve log), seconds after the VM's start.
    finished_at: Option<f64>,
    /// `stage: message` of the last `failed` event.
    failed_event: Option<String>,
    /// The test installer's own reason (`pxeforge-installer: failed: …` on the console).
    installer_failure: Option<String>,
}

struct Logs {
    serial: std::fs::File,
    serve: std::fs::File,
    dnsmasq: std::fs::File,
}

impl Logs {
    fn write(&mut self, l: &Line) {
        let f = match l.source {
            Source::Serial => &mut self.serial,
            Source::Serve => &mut self.serve,
            Source::Dnsmasq => &mut self.dnsmasq,
        };
        let _ = writeln!(f, "{}", l.text);
    }
}

impl Session {
    fn start(
        args: &VmTestArgs,
        assets: Option<&Path>,
        out: &Path,
        target: &target::Target,
        server: Ipv4Addr,
        prefix: u8,
    ) -> Result<Session> {
        let net = u32::from(server) & (u32::MAX << (32 - prefix));
        let at = |n: u32| Ipv4Addr::from(net + n);
        let dhcp_server = (args.dhcp == VmDhcp::Proxy).then(|| at(2));
        let netns = netns::Netns::create(std::process::id(), server, prefix, dhcp_server)?;
        let (tx, lines) = mpsc::channel();
        let (ptx, polls) = mpsc::channel();
        let create = |name: &str| {
            std::fs::File::create(out.join(name)).with_context(|| format!("creating {name}"))
        };
        let mut s = Session {
            qemu: None,
            serve: None,
            dnsmasq: None,
            poll_stop: Arc::new(AtomicBool::new(false)),
            admin: None,
            armed: None,
            state_after: None,
            netns,
            lines,
            tx,
            polls,
            logs: Logs {
                serial: create("serial.log")?,
                serve: create("serve.log")?,
                dnsmasq: create("dnsmasq.log")?,
            },
            timeline: Timeline::default(),
            events: Vec::new(),
            baseline: 0,
            start: Instant::now(),
            reason: String::new(),
            kernel_fetches: 0,
            host_scripts: Vec::new(),
            finished_at: None,
            failed_event: None,
            installer_failure: None,
        };
        if let Some(dns) = s.netns.dhcp_ns.clone() {
            let netmask = pxeforge_site::host::netmask(prefix);
            let leases = out.join("dnsmasq.leases");
            let _ = std::fs::remove_file(&leases);
            let mut cmd = netns::Netns::command(&dns, "dnsmasq");
            cmd.args(dnsmasq::args(
                netns::VETH_DHCP_SIDE,
                at(100),
                at(150),
                netmask,
                &leases,
            ));
            s.dnsmasq = Some(ChildGuard::spawn("dnsmasq", cmd, Source::Dnsmasq, &s.tx)?);
        }

        let exe = args.exe()?;
        let mut cmd = netns::Netns::command(&s.netns.name, &exe.to_string_lossy());
        cmd.arg("serve").arg("--site").arg(&args.site);
        // The admin API on the namespace's own loopback: only this run reaches it.
        cmd.args([
            "--http",
            &format!("{server}:{HTTP_PORT}"),
            "--tftp",
            &format!("{server}:69"),
            "--admin",
            "127.0.0.1:0",
        ]);
        let mode = match args.dhcp {
            VmDhcp::Proxy => "proxy",
            VmDhcp::Reservation => "reservation",
        };
        cmd.args(["--dhcp", mode, "--dhcp-interface", netns::BRIDGE]);
        if let Some(state) = &args.state {
            cmd.arg("--state").arg(state);
        }
        if let Some(assets) = assets {
            cmd.arg("--assets").arg(assets);
        }
        cmd.env("PXEFORGE_LOG", "info");
        s.serve = Some(child::spawn_serve(cmd, &s.tx)?);
        s.wait_ready()?;
        let listener = s
            .serve
            .as_ref()
            .and_then(|c| c.listening().admin.clone())
            .context("pxeforge serve printed no `admin listening on` line")?;
        let admin = Admin::from_listener(&listener)?;
        s.admin = Some(admin.clone());

        // A host's build state decides its script, and a new store holds every host as
        // installed: the host is armed through the API, as an operator would, before the VM.
        match (&target.host, target.armable) {
            (Some(host), true) => {
                let (a, h) = (admin.clone(), host.clone());
                let change = api::in_netns(&s.netns.name, move || a.arm(&h))
                    .with_context(|| format!("arming {host} through the admin API"))?;
                println!("pxeforge vm-test: armed {host} ({change}, POST /api/reinstall): it installs at this boot");
                s.armed = Some(change);
            }
            (Some(host), false) => {
                println!("pxeforge vm-test: {host} is not installed from a kickstart: not armed");
            }
            (None, _) => {}
        }

        let (mac, stop) = (target.mac.to_string(), s.poll_stop.clone());
        netns::spawn_in(&s.netns.name, move || {
            api::poll_loop(admin, mac, Duration::from_millis(500), stop, ptx)
        })?;
        s.baseline = s.first_poll()?;
        Ok(s)
    }

    /// Until the service prints `pxeforge: ready`.
    fn wait_ready(&mut self) -> Result<()> {
        const READY_WITHIN: Duration = Duration::from_secs(30);
        let Some(serve) = self.serve.as_mut() else {
            bail!("pxeforge serve was not started");
        };
        let dnsmasq = &mut self.dnsmasq;
        let ready = serve.wait_ready_or(READY_WITHIN, || {
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Some("interrupted".into());
            }
            let st = dnsmasq.as_mut().and_then(|c| c.exited())?;
            Some(format!("dnsmasq exited ({st}); see dnsmasq.log"))
        });
        let err = ready.err();
        if matches!(err, Some(StartError::Exited { .. })) {
            // Let the last lines arrive before quoting them.
            std::thread::sleep(Duration::from_millis(200));
        }
        // What every process printed so far belongs in the logs; a failure quotes the service's.
        let mut tail: Vec<String> = Vec::new();
        while let Ok(l) = self.lines.try_recv() {
            self.logs.write(&l);
            if l.source == Source::Serve {
                tail.push(l.text);
            }
        }
        let quote = || last(&tail, 12).join("\n  ");
        match err {
            None => Ok(()),
            Some(StartError::Exited {
                status: Some(st), ..
            }) => bail!(
                "pxeforge serve exited ({st}) before it was ready:\n  {}",
                quote()
            ),
            Some(StartError::Timeout { .. }) => bail!(
                "pxeforge serve was not ready within {} s:\n  {}",
                READY_WITHIN.as_secs(),
                quote()
            ),
            Some(StartError::Aborted { reason, .. }) => bail!("{reason}"),
            Some(e) => bail!("pxeforge serve did not become ready: {e}:\n  {}", quote()),
        }
    }

    /// The newest event id the server already held for this MAC before the VM started (older
    /// runs): events up to it are not this boot's.
    fn first_poll(&mut self) -> Result<i64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last_err = String::from("no answer");
        while Instant::now() < deadline {
            match self.polls.recv_timeout(Duration::from_millis(500)) {
                Ok(Poll {
                    result: Ok(evs), ..
                }) => return Ok(evs.iter().map(|e| e.id).max().unwrap_or(0)),
                Ok(Poll { result: Err(e), .. }) => last_err = e,
                Err(_) => {}
            }
        }
        bail!("the admin API's /api/events did not answer: {last_err}")
    }

    fn follow(
        &mut self,
        args: &VmTestArgs,
        target: &target::Target,
        disk: &Path,
        ovmf: Option<(PathBuf, PathBuf)>,
        facts: &needs::Facts,
    ) -> Result<Outcome> {
        let bios_rom = facts
            .bios_rom
            .clone()
            .unwrap_or_else(|| PathBuf::from(needs::BIOS_ROM));
        let mac = target.mac.to_string();
        let spec = qemu::VmSpec {
            firmware: target.firmware,
            mac: &mac,
            tap: netns::TAP,
            memory_mib: args.memory,
            disk,
            bios_rom: &bios_rom,
            ovmf,
            reboot: args.expect_local_reboot,
        };
        let mut cmd = netns::Netns::command(&self.netns.name, "qemu-system-x86_64");
        cmd.args(qemu::args(&spec));
        self.start = Instant::now();
        self.qemu = Some(ChildGuard::spawn("qemu", cmd, Source::Serial, &self.tx)?);
        let deadline = self.start + Duration::from_secs(args.timeout);
        let mut failed_at: Option<Instant> = None;
        let mut vm_gone_at: Option<Instant> = None;
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                self.reason = "interrupted".into();
                return Ok(Outcome::Interrupted);
            }
            if let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.logs.write(&l);
                if let Some(end) = self.on_line(args.expect_local_reboot, target, &l) {
                    return Ok(end);
                }
            }
            while let Ok(p) = self.polls.try_recv() {
                let Ok(evs) = p.result else { continue };
                let at = secs(p.at.saturating_duration_since(self.start));
                for ev in evs {
                    if ev.id <= self.baseline
                        || self.events.last().is_some_and(|e| e.event.id >= ev.id)
                    {
                        continue;
                    }
                    self.events.push(EventSeen {
                        at_secs: at,
                        event: ev.clone(),
                    });
                    match ev.status.as_str() {
                        "finished" if !args.expect_local_reboot => return Ok(Outcome::Finished),
                        // The VM reboots now; the run ends at its second network boot.
                        "finished" => {
                            self.finished_at.get_or_insert(at);
                        }
                        "failed" => {
                            // The installer may follow with a more precise reason before it
                            // powers off.
                            self.failed_event = Some(format!("{}: {}", ev.stage, ev.message));
                            failed_at.get_or_insert(Instant::now());
                        }
                        _ => {}
                    }
                }
            }
            let now = Instant::now();
            if vm_gone_at.is_none() && self.qemu.as_mut().and_then(|q| q.exited()).is_some() {
                vm_gone_at = Some(now);
            }
            if let Some(t) = failed_at {
                if vm_gone_at.is_some_and(|g| now > g + Duration::from_secs(1))
                    || now > t + Duration::from_secs(15)
                {
                    self.reason = failure_reason(
                        self.failed_event.as_deref().unwrap_or("failed"),
                        self.installer_failure.as_deref(),
                    );
                    return Ok(Outcome::Failed);
                }
            } else if vm_gone_at.is_some_and(|g| now > g + Duration::from_secs(2)) {
                self.reason = match self.finished().filter(|_| args.expect_local_reboot) {
                    Some(f) => format!(
                        "the host reported finished at {f:.1}s, then the VM stopped instead of booting from the network again (last stage: {})",
                        self.last_stage(None)
                    ),
                    None => format!(
                        "the VM stopped without the host reporting finished or failed (last stage: {})",
                        self.last_stage(None)
                    ),
                };
                return Ok(Outcome::Stopped);
            }
            if now > deadline {
                self.reason = match self.finished().filter(|_| args.expect_local_reboot) {
                    Some(f) => format!(
                        "the host reported finished at {f:.1}s, but no second network boot asked for its script within {} s (last stage: {})",
                        args.timeout,
                        self.last_stage(None)
                    ),
                    None => format!(
                        "no finished or failed event within {} s (last stage: {})",
                        args.timeout,
                        self.last_stage(None)
                    ),
                };
                return Ok(Outcome::Timeout);
            }
        }
    }

    /// Asks the admin API for the host's build state, for the report (once; a failure is noted
    /// in the report rather than ending the run, whose outcome is already decided).
    fn note_state_after(&mut self, target: &target::Target) {
        if self.state_after.is_some() {
            return;
        }
        let (Some(admin), Some(host)) = (self.admin.clone(), target.host.clone()) else {
            return;
        };
        let state = api::in_netns(&self.netns.name, move || admin.host_state(&host));
        self.state_after = Some(state.unwrap_or_else(|e| format!("unknown ({e:#})")));
    }

    /// When the host's `finished` was seen: by the event poll, or in the serve log.
    fn finished(&self) -> Option<f64> {
        let logged = self
            .timeline
            .marks()
            .into_iter()
            .find(|m| m.stage == Stage::EventFinished)
            .map(|m| m.at_secs);
        match (self.finished_at, logged) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// One line of the console or a log: its stage, and whether it ends the run.
    fn on_line(
        &mut self,
        expect_reboot: bool,
        target: &target::Target,
        l: &Line,
    ) -> Option<Outcome> {
        let stage = self.timeline.observe(self.start, l);
        let at = secs(l.at.saturating_duration_since(self.start));
        if l.source == Source::Serial {
            if let Some(why) = l.text.split("pxeforge-installer: failed: ").nth(1) {
                self.installer_failure = Some(why.trim().to_string());
            }
        }
        if timeline::is_kernel_fetch(l.source, &l.text) {
            self.kernel_fetches += 1;
            if expect_reboot && self.kernel_fetches > 1 {
                self.reason = format!(
                    "the kernel was requested a second time at {at:.1}s{}: the host was installing again",
                    if self.finished().is_some() { ", after finished" } else { "" }
                );
                return Some(Outcome::Reinstall);
            }
        }
        let name = target.host.as_deref().unwrap_or("");
        if let Some(hs) = (l.source == Source::Serve)
            .then(|| timeline::host_script_line(&l.text))
            .flatten()
            .filter(|hs| hs.host == name)
        {
            self.host_scripts.push(hs.script.to_string());
            if expect_reboot && self.host_scripts.len() > 1 {
                return Some(self.second_boot(name, l, at));
            }
        }
        if stage == Some(Stage::LocalBoot) {
            let sent = match self.host_scripts.last().map(String::as_str) {
                Some("local") => format!(" ({name} was sent the local-boot script)"),
                _ => String::new(),
            };
            self.reason = match self.finished() {
                Some(f) if expect_reboot => format!(
                    "the host reported finished at {f:.1}s, but the VM went to its local disk at {at:.1}s without booting from the network again"
                ),
                _ => format!(
                    "no network install: the firmware went on to look for a local disk{sent} (last network stage: {})",
                    self.last_stage(Some(Stage::LocalBoot))
                ),
            };
            return Some(Outcome::LocalBoot);
        }
        None
    }

    /// `--expect-local-reboot`: the host's second script request, the line `l` at `at` s.
    fn second_boot(&mut self, host: &str, l: &Line, at: f64) -> Outcome {
        let script = self.host_scripts.last().cloned().unwrap_or_default();
        match second_boot_verdict(host, &script, at, self.finished(), self.kernel_fetches) {
            Ok(()) => {
                // Shown without the MAC, so that the report's column reaches `script="local"`.
                let shown = Line {
                    text: timeline::without_field(&l.text, "mac"),
                    ..l.clone()
                };
                self.timeline.mark(self.start, Stage::LocalReboot, &shown);
                Outcome::Finished
            }
            Err((outcome, reason)) => {
                self.reason = reason;
                outcome
            }
        }
    }

    /// The latest stage seen (other than `except`), for reasons that say how far the boot got.
    fn last_stage(&self, except: Option<Stage>) -> String {
        self.timeline
            .marks()
            .iter()
            .rev()
            .find(|m| Some(m.stage) != except)
            .map(|m| format!("{} at {:.1}s", m.stage.label(), m.at_secs))
            .unwrap_or_else(|| "none".into())
    }

    /// Stops everything in order and assembles the report.
    fn finish(
        &mut self,
        args: &VmTestArgs,
        target: &target::Target,
        out: &Path,
        disk: &Path,
        outcome: Outcome,
    ) -> Report {
        let duration = secs(self.start.elapsed());
        if let Some(q) = self.qemu.as_mut() {
            q.stop();
        }
        // Before the service stops: what it holds for the host now.
        self.note_state_after(target);
        if let Some(s) = self.serve.as_mut() {
            s.stop(child::STOP_GRACE);
        }
        if let Some(d) = self.dnsmasq.as_mut() {
            d.stop();
        }
        self.poll_stop.store(true, Ordering::Relaxed);
        // Lines still in flight belong in the logs.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(100)) {
            self.logs.write(&l);
            self.timeline.observe(self.start, &l);
            if timeline::is_kernel_fetch(l.source, &l.text) {
                self.kernel_fetches += 1;
            }
        }
        Report {
            host: target.host.clone(),
            mac: target.mac.to_string(),
            profile: target.profile.clone(),
            firmware: format!("{:?}", target.firmware).to_lowercase(),
            dhcp: format!("{:?}", args.dhcp).to_lowercase(),
            outcome,
            reason: self.reason.clone(),
            exit_code: outcome.exit_code(),
            duration_secs: duration,
            kernel_fetches: self.kernel_fetches,
            expect_local_reboot: args.expect_local_reboot,
            armed: self.armed.clone(),
            state_after: self.state_after.clone(),
            stages: self.timeline.marks(),
            events: self.events.clone(),
            serial_log: out.join("serial.log").display().to_string(),
            disk: disk.display().to_string(),
        }
    }
}

/// Copies the current build of `recipe` (the profile's, else any profile's: an installer does not
/// depend on the machine) to `<out>/assets/installer/images/pxeboot/{vmlinuz,initrd.img}`, the
/// layout of an install tree, and returns the assets folder to serve.
fn stage_installer(
    state: &Path,
    recipe: &str,
    profile: Option<&str>,
    out: &Path,
) -> Result<PathBuf> {
    let recipe_dir = state.join("images").join(recipe);
    let mut candidates: Vec<PathBuf> = profile.map(|p| recipe_dir.join(p)).into_iter().collect();
    if let Ok(rd) = std::fs::read_dir(&recipe_dir) {
        let mut others: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        others.sort();
        candidates.extend(others);
    }
    let Some(build) = candidates
        .iter()
        .map(|d| d.join("current"))
        .find(|c| c.join("vmlinuz").is_file() && c.join("initramfs.img").is_file())
    else {
        bail!(
            "no published build of {recipe:?} with vmlinuz and initramfs.img under {} (run: pxeforge build {recipe})",
            recipe_dir.display()
        );
    };
    let assets = out.join("assets");
    let tree = assets.join("installer/images/pxeboot");
    std::fs::create_dir_all(&tree)?;
    for (from, to) in [("vmlinuz", "vmlinuz"), ("initramfs.img", "initrd.img")] {
        std::fs::copy(build.join(from), tree.join(to))
            .with_context(|| format!("staging {}", build.join(from).display()))?;
    }
    Ok(assets)
}

fn last(v: &[String], n: usize) -> &[String] {
    &v[v.len().saturating_sub(n)..]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(state: &Path, recipe: &str, profile: &str, kernel: &str) {
        let build = state.join("images").join(recipe).join(profile).join("b1");
        std::fs::create_dir_all(&build).unwrap();
        std::fs::write(build.join("vmlinuz"), kernel).unwrap();
        std::fs::write(build.join("initramfs.img"), "initramfs").unwrap();
        std::os::unix::fs::symlink("b1", build.parent().unwrap().join("current")).unwrap();
    }

    #[test]
    fn failure_reasons() {
        let precise = "post: %post script failed with exit code 3: /etc/x is missing";
        assert_eq!(
            failure_reason("install: installation of vm-postfail failed", Some(precise)),
            format!("install: installation of vm-postfail failed (the installer: {precise})")
        );
        assert_eq!(failure_reason(precise, Some(precise)), precise);
        assert_eq!(failure_reason("install: failed", None), "install: failed");
    }

    #[test]
    fn the_second_boot_must_be_the_local_one() {
        let v = |script, finished, kernels| {
            second_boot_verdict("vm-bios", script, 60.0, finished, kernels)
        };
        assert_eq!(v("local", Some(31.0), 1), Ok(()));
        let (o, why) = v("install", Some(31.0), 1).unwrap_err();
        assert_eq!(o, Outcome::Reinstall);
        assert!(why.contains("install script again at 60.0s"), "{why}");
        let (o, why) = v("local", Some(31.0), 2).unwrap_err();
        assert_eq!(o, Outcome::Reinstall);
        assert!(why.contains("fetched 2 times"), "{why}");
        let (o, why) = v("local", None, 1).unwrap_err();
        assert_eq!(o, Outcome::Failed);
        assert!(why.contains("before it reported finished"), "{why}");
        let (o, _) = v("by profile", Some(31.0), 1).unwrap_err();
        assert_eq!(o, Outcome::Reinstall);
    }

    #[test]
    fn installer_is_staged_as_an_install_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (state, out) = (dir.path().join("state"), dir.path().join("out"));
        publish(&state, "test-installer", "qemu-bios", "bios kernel");
        publish(&state, "test-installer", "qemu-uefi", "uefi kernel");
        let tree = |a: &Path| a.join("installer/images/pxeboot");
        // The profile's own build first ...
        let a = stage_installer(&state, "test-installer", Some("qemu-uefi"), &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree(&a).join("vmlinuz")).unwrap(),
            "uefi kernel"
        );
        assert_eq!(
            std::fs::read_to_string(tree(&a).join("initrd.img")).unwrap(),
            "initramfs"
        );
        // ... else any profile's: the installer does not depend on the machine.
        let a = stage_installer(&state, "test-installer", Some("other"), &out).unwrap();
        assert_eq!(
            std::fs::read_to_string(tree(&a).join("vmlinuz")).unwrap(),
            "bios kernel"
        );
        let e = stage_installer(&state, "missing", None, &out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("pxeforge build missing"), "{e}");
    }
}
