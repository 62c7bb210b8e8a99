//! Turning per-host stage times into the report: percentiles, rates, and the verdict on what
//! limited the run. Pure functions, so the arithmetic is tested without a server.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The stages of one host's boot, in the order a real host goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Dhcp,
    Tftp,
    DhcpIpxe,
    BootScript,
    HostScript,
    Kernel,
    Initrd,
    Kickstart,
    Events,
    /// The installed host's next boot (`--reboot`): /boot.ipxe and /ipxe again.
    Reboot,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Dhcp,
        Stage::Tftp,
        Stage::DhcpIpxe,
        Stage::BootScript,
        Stage::HostScript,
        Stage::Kernel,
        Stage::Initrd,
        Stage::Kickstart,
        Stage::Events,
        Stage::Reboot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp (firmware)",
            Stage::Tftp => "tftp ipxe binary",
            Stage::DhcpIpxe => "dhcp (ipxe)",
            Stage::BootScript => "GET /boot.ipxe",
            Stage::HostScript => "GET /ipxe?mac=",
            Stage::Kernel => "kernel (http)",
            Stage::Initrd => "initrd (http)",
            Stage::Kickstart => "GET /ks/HOST?token",
            Stage::Events => "POST /events x2",
            Stage::Reboot => "second boot: local",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// What one simulated host went through.
#[derive(Debug, Clone, Default)]
pub struct HostOutcome {
    pub times: [Option<Duration>; Stage::ALL.len()],
    pub failure: Option<(Option<Stage>, String)>,
    /// The server accepted the host's `finished` event (sent with its build token).
    pub installed: bool,
    /// On its second boot the host got the local-boot script (no kernel).
    pub local_after_install: bool,
    pub http_bytes: u64,
    pub tftp_bytes: u64,
    /// Wait scripts the host got (`install.max_installing` held it back), and the time it
    /// slept on them before asking again.
    pub waits: u32,
    pub waited: Duration,
    /// Requests repeated after a connection-level failure (`--kill-after`: the server was down).
    pub retries: u32,
}

/// Installs under way as the simulated hosts see them: one from the moment a host has its
/// install script until it sends `finished`.
///
/// The host leaves the count when it *sends* `finished`, not when the 201 comes back: the
/// server frees the slot before it answers, and may hand it to another host whose install
/// script can reach the simulator before that 201 does; counting to the 201 would see one
/// install too many without the server having overshot. Counted this way, every host's span
/// lies inside the server's own span for it, so the maximum can only exceed the cap if the
/// server let more than the cap start.
#[derive(Debug, Default)]
pub struct InstallsAtOnce {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InstallsAtOnce {
    /// A host received its install script.
    pub fn start(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    /// A host sent its `finished` event.
    pub fn end(&self) {
        // Saturating: an unmatched end must not wrap the count to usize::MAX.
        let _ = self
            .now
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// Installs under way at once over the run, by the simulated hosts and by the server, against
/// the cap in effect (`install.max_installing` of the simulated site).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Installs {
    /// Most installs under way at once, counted by the simulated hosts (`InstallsAtOnce`).
    pub max: usize,
    /// The cap in effect; None: no cap (`max_installing = 0`).
    pub cap: Option<u32>,
    /// Most `installing` that `GET /api/status` on the admin API reported.
    pub server_max: Option<u64>,
    /// `max_installing` as that status reported it (the last answer).
    pub server_cap: Option<u64>,
    /// Status polls answered, and the first one that was not.
    pub server_polls: usize,
    pub poll_error: Option<String>,
}

impl Installs {
    /// Why the cap did not hold (empty: it held, or there is none). Pure.
    pub fn violations(&self) -> Vec<String> {
        let Some(cap) = self.cap.filter(|c| *c > 0) else {
            return Vec::new();
        };
        let mut v = Vec::new();
        if self.max > cap as usize {
            v.push(format!(
                "installs at once: max {} over the cap {cap} (counted by the simulated hosts)",
                self.max
            ));
        }
        if let Some(m) = self.server_max.filter(|m| *m > u64::from(cap)) {
            v.push(format!(
                "installs at once: GET /api/status reported {m} installing, over the cap {cap}"
            ));
        }
        if self.server_polls == 0 {
            v.push(format!(
                "GET /api/status never answered, so the server's count is unchecked: {}",
                self.poll_error.as_deref().unwrap_or("no poll was made")
            ));
        } else if self.server_cap != Some(u64::from(cap)) {
            v.push(format!(
                "the server reports max_installing {}, not {cap}: the cap did not take effect",
                self.server_cap
                    .map_or_else(|| "(none)".to_string(), |c| c.to_string())
            ));
        }
        v
    }
}

/// Nearest-rank percentile of an ascending slice; None when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, PartialEq)]
pub struct StageSummary {
    pub stage: Stage,
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

pub fn summarize(outcomes: &[HostOutcome]) -> Vec<StageSummary> {
    Stage::ALL
        .iter()
        .filter_map(|&stage| {
            let mut v: Vec<Duration> = outcomes
                .iter()
                .filter_map(|o| o.times[stage.index()])
                .collect();
            v.sort();
            Some(StageSummary {
                stage,
                count: v.len(),
                p50: percentile(&v, 50.0)?,
                p99: percentile(&v, 99.0)?,
                max: *v.last()?,
            })
        })
        .collect()
}

/// Resource use of the server and of the simulator over the run.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall: Duration,
    pub server_cpu_secs: f64,
    pub server_peak_rss_kib: u64,
    pub clients_cpu_secs: f64,
    pub cpus: usize,
    /// Share of the machine's CPU time that was busy over the run (all processes, /proc/stat).
    pub machine_busy: Option<f64>,
}

/// (busy, total) jiffies from the `cpu` line of /proc/stat; idle and iowait count as idle.
pub fn cpu_jiffies(proc_stat: &str) -> Option<(u64, u64)> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return None;
    }
    // guest and guest_nice (9th, 10th) are already counted in user and nice.
    let total: u64 = v.iter().take(8).sum();
    Some((total - v[3] - v[4], total))
}

/// Which resource ran out. Server and clients share the machine, so when together they used
/// nearly every CPU the machine is the limit; otherwise someone waited on something else.
pub fn verdict(u: &Usage) -> String {
    let avail = u.wall.as_secs_f64() * u.cpus.max(1) as f64;
    if avail <= 0.0 {
        return "run too short to judge".into();
    }
    let busy = (u.server_cpu_secs + u.clients_cpu_secs) / avail;
    if let Some(machine) = u.machine_busy.filter(|m| *m >= 0.85 && busy < 0.85) {
        return format!(
            "CPU-bound: the machine's {} CPUs were {:.0}% busy, {:.0}% of them with this run \
             (server + simulated clients) and the rest with other processes",
            u.cpus,
            machine * 100.0,
            busy * 100.0
        );
    }
    if busy >= 0.85 {
        format!(
            "CPU-bound: server + simulated clients kept {:.0}% of {} CPUs busy",
            busy * 100.0,
            u.cpus
        )
    } else {
        format!(
            "not CPU-bound ({:.0}% of {} CPUs busy): time went to waiting (concurrency limit, \
             timeouts, or a lock/queue); profile the server to see where",
            busy * 100.0,
            u.cpus
        )
    }
}

pub struct Report<'a> {
    pub header: String,
    pub outcomes: &'a [HostOutcome],
    /// Hosts armed through the admin API (`POST /api/reinstall`, all) before the boots.
    pub armed: usize,
    /// Whether every host booted a second time after its install (`--reboot`).
    pub reboot: bool,
    pub usage: Usage,
    pub installs: Installs,
    pub notes: Vec<String>,
    /// `--kill-after`: the kill, the ride-through and the checks of what must survive it.
    pub kill: Option<super::kill9::KillReport>,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn render(r: &Report<'_>) -> String {
    let mut out = String::new();
    let n = r.outcomes.len();
    let failed: Vec<&HostOutcome> = r.outcomes.iter().filter(|o| o.failure.is_some()).collect();
    let wall = r.usage.wall.as_secs_f64();
    let per_min = if wall > 0.0 {
        (n - failed.len()) as f64 * 60.0 / wall
    } else {
        0.0
    };
    let http: u64 = r.outcomes.iter().map(|o| o.http_bytes).sum();
    let tftp: u64 = r.outcomes.iter().map(|o| o.tftp_bytes).sum();
    let _ = writeln!(out, "{}", r.header);
    for note in &r.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let _ = writeln!(
        out,
        "hosts: {n}, booted: {}, failures: {}, wall {:.1} s, {:.1} hosts/minute",
        n - failed.len(),
        failed.len(),
        wall,
        per_min
    );
    let installed = r.outcomes.iter().filter(|o| o.installed).count();
    let _ = writeln!(
        out,
        "build state: {} armed, {installed} installed (kickstart and events with the build token)",
        r.armed
    );
    if r.reboot {
        let local = r.outcomes.iter().filter(|o| o.local_after_install).count();
        let _ = writeln!(
            out,
            "second boot: {local} of {installed} installed hosts got the local-boot script (no kernel)"
        );
    } else {
        let _ = writeln!(out, "second boot: not simulated (--reboot)");
    }
    let i = &r.installs;
    let _ = writeln!(
        out,
        "installs at once: max {} ({})",
        i.max,
        i.cap
            .map_or_else(|| "no cap".to_string(), |c| format!("cap {c}"))
    );
    match i.server_max {
        Some(m) => {
            let _ = writeln!(
                out,
                "installs at once, the server's count: max {m} installing (GET /api/status, {} polls)",
                i.server_polls
            );
        }
        None => {
            let _ = writeln!(
                out,
                "installs at once, the server's count: unknown ({})",
                i.poll_error.as_deref().unwrap_or("no poll answered")
            );
        }
    }
    let waits: u64 = r.outcomes.iter().map(|o| u64::from(o.waits)).sum();
    let waiting_hosts = r.outcomes.iter().filter(|o| o.waits > 0).count();
    let waited: Duration = r.outcomes.iter().map(|o| o.waited).sum();
    let _ = writeln!(
        out,
        "waits for an install slot: {waits} ({waiting_hosts} hosts, {:.1} s slept in all)",
        waited.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "transferred: HTTP {:.2} GiB ({:.2} GiB/s), TFTP {:.1} MiB",
        http as f64 / (1u64 << 30) as f64,
        if wall > 0.0 {
            http as f64 / (1u64 << 30) as f64 / wall
        } else {
            0.0
        },
        tftp as f64 / (1u64 << 20) as f64
    );
    let _ = writeln!(
        out,
        "{:<18} {:>6} {:>10} {:>10} {:>10}",
        "stage", "count", "p50 ms", "p99 ms", "max ms"
    );
    for s in summarize(r.outcomes) {
        let _ = writeln!(
            out,
            "{:<18} {:>6} {:>10.1} {:>10.1} {:>10.1}",
            s.stage.name(),
            s.count,
            ms(s.p50),
            ms(s.p99),
            ms(s.max)
        );
    }
    let u = &r.usage;
    let _ = writeln!(
        out,
        "server: peak RSS {:.1} MiB, CPU {:.1} s ({:.0}% of one CPU over the run)",
        u.server_peak_rss_kib as f64 / 1024.0,
        u.server_cpu_secs,
        if wall > 0.0 {
            u.server_cpu_secs / wall * 100.0
        } else {
            0.0
        }
    );
    let _ = writeln!(out, "simulated clients: CPU {:.1} s", u.clients_cpu_secs);
    if let Some(m) = u.machine_busy {
        let _ = writeln!(
            out,
            "machine: {} CPUs, {:.0}% busy over the run (all processes)",
            u.cpus,
            m * 100.0
        );
    }
    let _ = writeln!(out, "limit: {}", verdict(u));
    if let Some(k) = &r.kill {
        render_kill(&mut out, k, installed);
    }
    for v in r.installs.violations() {
        let _ = writeln!(out, "FAILED: {v}");
    }
    for v in r.kill.iter().flat_map(|k| k.violations()) {
        let _ = writeln!(out, "FAILED: {v}");
    }
    for f in failed.iter().take(10) {
        if let Some((stage, why)) = &f.failure {
            let _ = writeln!(
                out,
                "FAILED at {}: {why}",
                stage.map(|s| s.name()).unwrap_or("setup")
            );
        }
    }
    out
}

/// The lines of a `--kill-after` run: the kill, the ride-through, and each check's count.
fn render_kill(out: &mut String, k: &super::kill9::KillReport, installed: usize) {
    match &k.kill {
        Some(kill) => {
            let restart = match (kill.new_pid, kill.ready_in) {
                (Some(pid), Some(t)) => format!(
                    "pid {pid} ready {:.1} s later on the same addresses",
                    t.as_secs_f64()
                ),
                _ => "not started again".to_string(),
            };
            let _ = writeln!(
                out,
                "kill -9: after {} hosts finished ({} booting), pid {} killed, down {:.1} s, {restart}",
                kill.finished_at_kill,
                kill.in_flight,
                kill.old_pid,
                kill.down.as_secs_f64()
            );
            let _ = writeln!(
                out,
                "hosts finished after the restart: {}",
                installed.saturating_sub(kill.finished_at_kill)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "kill -9: never sent (fewer than {} hosts finished)",
                k.kill_after
            );
        }
    }
    let _ = writeln!(
        out,
        "ride-through: {} requests repeated after connection failures ({} hosts)",
        k.retries, k.retrying_hosts
    );
    let stored = k.answered.saturating_sub(k.missing.len());
    let _ = writeln!(
        out,
        "events answered 201: {} ({} before the kill), in the store afterwards: {}",
        k.answered,
        k.answered_before_kill,
        match &k.events_error {
            Some(_) => "not checked".to_string(),
            None => format!("{stored} of {}", k.answered),
        }
    );
    match &k.dhcp {
        Some(d) => {
            let doubles = if d.doubles.is_empty() {
                "none to two MACs".to_string()
            } else {
                format!("{} to two MACs or more", d.doubles.len())
            };
            let db = match &d.lease_rows {
                Ok(n) => format!(
                    "leases.db: {n} rows, {} in conflict with the ACKs",
                    d.lease_conflicts.len()
                ),
                Err(_) => "leases.db: not read".to_string(),
            };
            let _ = writeln!(
                out,
                "dhcp leases: {} ACKs with an address, {} addresses, {doubles}; {db}",
                d.acks, d.addresses
            );
        }
        None => {
            let _ = writeln!(
                out,
                "dhcp leases: not checked (no reservation-mode DHCP in this run)"
            );
        }
    }
}

fn kill_json(k: &super::kill9::KillReport) -> serde_json::Value {
    serde_json::json!({
        "kill_after": k.kill_after,
        "sent": k.kill.is_some(),
        "finished_at_kill": k.kill.as_ref().map(|x| x.finished_at_kill),
        "in_flight": k.kill.as_ref().map(|x| x.in_flight),
        "old_pid": k.kill.as_ref().map(|x| x.old_pid),
        "new_pid": k.kill.as_ref().and_then(|x| x.new_pid),
        "down_secs": k.kill.as_ref().map(|x| x.down.as_secs_f64()),
        "ready_secs": k.kill.as_ref().and_then(|x| x.ready_in).map(|t| t.as_secs_f64()),
        "error": k.kill.as_ref().and_then(|x| x.error.clone()),
        "retries": k.retries,
        "retrying_hosts": k.retrying_hosts,
        "events_answered": k.answered,
        "events_answered_before_kill": k.answered_before_kill,
        "events_missing": k.missing,
        "events_error": k.events_error,
        "unreadable_ids": k.unreadable_ids,
        "dhcp": k.dhcp.as_ref().map(|d| serde_json::json!({
            "acks": d.acks,
            "addresses": d.addresses,
            "doubles": d.doubles,
            "lease_rows": d.lease_rows.as_ref().ok(),
            "lease_error": d.lease_rows.as_ref().err(),
            "lease_conflicts": d.lease_conflicts,
        })),
        "violations": k.violations(),
    })
}

/// The report as JSON (`--json FILE`): the same numbers as `render`, for scripts. Pure.
pub fn render_json(r: &Report<'_>) -> serde_json::Value {
    let n = r.outcomes.len();
    let failed = r.outcomes.iter().filter(|o| o.failure.is_some()).count();
    let wall = r.usage.wall.as_secs_f64();
    let i = &r.installs;
    let stages: Vec<serde_json::Value> = summarize(r.outcomes)
        .iter()
        .map(|s| {
            serde_json::json!({
                "stage": s.stage.name(),
                "count": s.count,
                "p50_ms": ms(s.p50),
                "p99_ms": ms(s.p99),
                "max_ms": ms(s.max),
            })
        })
        .collect();
    let failures: Vec<serde_json::Value> = r
        .outcomes
        .iter()
        .filter_map(|o| o.failure.as_ref())
        .map(|(stage, why)| serde_json::json!({"stage": stage.map(|s| s.name()), "why": why}))
        .collect();
    let u = &r.usage;
    serde_json::json!({
        "header": r.header,
        "notes": r.notes,
        "hosts": n,
        "booted": n - failed,
        "failures": failed,
        "wall_secs": wall,
        "hosts_per_minute": if wall > 0.0 { (n - failed) as f64 * 60.0 / wall } else { 0.0 },
        "armed": r.armed,
        "installed": r.outcomes.iter().filter(|o| o.installed).count(),
        "local_after_install": r.reboot.then(|| r.outcomes.iter().filter(|o| o.local_after_install).count()),
        "waits": r.outcomes.iter().map(|o| u64::from(o.waits)).sum::<u64>(),
        "waiting_hosts": r.outcomes.iter().filter(|o| o.waits > 0).count(),
        "waited_secs": r.outcomes.iter().map(|o| o.waited).sum::<Duration>().as_secs_f64(),
        "installs_at_once": {
            "max": i.max,
            "cap": i.cap,
            "server_max": i.server_max,
            "server_cap": i.server_cap,
            "server_polls": i.server_polls,
            "poll_error": i.poll_error,
            "violations": i.violations(),
        },
        "http_bytes": r.outcomes.iter().map(|o| o.http_bytes).sum::<u64>(),
        "tftp_bytes": r.outcomes.iter().map(|o| o.tftp_bytes).sum::<u64>(),
        "stages": stages,
        "server": {"peak_rss_kib": u.server_peak_rss_kib, "cpu_secs": u.server_cpu_secs},
        "clients_cpu_secs": u.clients_cpu_secs,
        "cpus": u.cpus,
        "machine_busy": u.machine_busy,
        "limit": verdict(u),
        "failed": failures,
        "kill": r.kill.as_ref().map(kill_json),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(d).collect();
        assert_eq!(percentile(&v, 50.0), Some(d(50)));
        assert_eq!(percentile(&v, 99.0), Some(d(99)));
        assert_eq!(percentile(&v, 100.0), Some(d(100)));
        assert_eq!(percentile(&[d(7)], 99.0), Some(d(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_skips_stages_nobody_ran_and_report_counts_failures() {
        let mut ok = HostOutcome::default();
        ok.times[Stage::Kernel.index()] = Some(d(10));
        let bad = HostOutcome {
            failure: Some((Some(Stage::Tftp), "timeout".into())),
            ..Default::default()
        };
        let outs = vec![ok.clone(), ok, bad];
        let s = summarize(&outs);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].stage, Stage::Kernel);
        assert_eq!(s[0].count, 2);
        let text = render(&Report {
            header: "h".into(),
            outcomes: &outs,
            armed: 3,
            reboot: false,
            usage: Usage {
                wall: Duration::from_secs(60),
                cpus: 2,
                ..Default::default()
            },
            installs: Installs::default(),
            notes: vec![],
            kill: None,
        });
        assert!(text.contains("hosts: 3, booted: 2, failures: 1"), "{text}");
        assert!(text.contains("build state: 3 armed, 0 installed"), "{text}");
        assert!(text.contains("second boot: not simulated"), "{text}");
        assert!(
            text.contains("FAILED at tftp ipxe binary: timeout"),
            "{text}"
        );
    }

    #[test]
    fn verdict_names_the_cpu_when_it_is_used_up() {
        let u = Usage {
            wall: Duration::from_secs(10),
            server_cpu_secs: 9.0,
            clients_cpu_secs: 9.0,
            cpus: 2,
            ..Default::default()
        };
        assert!(verdict(&u).starts_with("CPU-bound"));
        let idle = Usage {
            server_cpu_secs: 1.0,
            clients_cpu_secs: 1.0,
            ..u
        };
        assert!(verdict(&idle).starts_with("not CPU-bound"));
        let shared = Usage {
            machine_busy: Some(0.97),
            ..idle.clone()
        };
        assert!(
            verdict(&shared).contains("other processes"),
            "{}",
            verdict(&shared)
        );
        assert_eq!(
            cpu_jiffies("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3 4 5\n"),
            Some((15, 100))
        );
        assert_eq!(cpu_jiffies("intr 1 2"), None);
    }

    #[test]
    fn report_counts_installs_and_local_second_boots() {
        let mut done = HostOutcome {
            installed: true,
            local_after_install: true,
            ..Default::default()
        };
        done.times[Stage::Reboot.index()] = Some(d(3));
        let installed_only = HostOutcome {
            installed: true,
            failure: Some((Some(Stage::Reboot), "got the install script again".into())),
            ..Default::default()
        };
        let outs = vec![done.clone(), done, installed_only];
        let text = render(&Report {
            header: "h".into(),
            outcomes: &outs,
            armed: 3,
            reboot: true,
            usage: Usage::default(),
            installs: Installs::default(),
            notes: vec![],
            kill: None,
        });
        assert!(text.contains("build state: 3 armed, 3 installed"), "{text}");
        assert!(
            text.contains("second boot: 2 of 3 installed hosts got the local-boot script"),
            "{text}"
        );
        assert!(text.contains("second boot: local      2"), "{text}");
        assert!(
            text.contains("FAILED at second boot: local: got the install script again"),
            "{text}"
        );
    }

    #[test]
    fn installs_at_once_keeps_the_maximum_and_never_wraps() {
        let c = InstallsAtOnce::default();
        c.start();
        c.start();
        c.end();
        c.start();
        assert_eq!(c.max(), 2);
        for _ in 0..4 {
            c.end();
        }
        c.start();
        assert_eq!(c.max(), 2, "an unmatched end must not wrap the count");
    }

    #[test]
    fn the_cap_is_checked_on_both_counts() {
        let held = Installs {
            max: 5,
            cap: Some(5),
            server_max: Some(5),
            server_cap: Some(5),
            server_polls: 40,
            poll_error: None,
        };
        assert!(held.violations().is_empty(), "{:?}", held.violations());
        let over = Installs {
            max: 6,
            ..held.clone()
        };
        let v = over.violations();
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("max 6 over the cap 5"), "{v:?}");
        let server_over = Installs {
            server_max: Some(9),
            ..held.clone()
        };
        assert!(server_over.violations()[0].contains("reported 9 installing"));
        let unpolled = Installs {
            server_max: None,
            server_polls: 0,
            poll_error: Some("refused".into()),
            ..held.clone()
        };
        assert!(unpolled.violations()[0].contains("never answered"));
        let not_applied = Installs {
            server_cap: Some(0),
            ..held.clone()
        };
        assert!(not_applied.violations()[0].contains("did not take effect"));
        // No cap: nothing to hold, whatever the counts.
        let uncapped = Installs {
            max: 20,
            cap: None,
            server_polls: 0,
            ..held
        };
        assert!(uncapped.violations().is_empty());
    }

    #[test]
    fn report_shows_waits_and_installs_at_once_in_text_and_json() {
        let waited = HostOutcome {
            installed: true,
            waits: 3,
            waited: Duration::from_secs(3),
            ..Default::default()
        };
        let straight = HostOutcome {
            installed: true,
            ..Default::default()
        };
        let outs = vec![waited.clone(), waited, straight];
        let report = Report {
            header: "h".into(),
            outcomes: &outs,
            armed: 3,
            reboot: false,
            usage: Usage::default(),
            installs: Installs {
                max: 7,
                cap: Some(5),
                server_max: Some(4),
                server_cap: Some(5),
                server_polls: 12,
                poll_error: None,
            },
            notes: vec![],
            kill: None,
        };
        let text = render(&report);
        assert!(text.contains("installs at once: max 7 (cap 5)"), "{text}");
        assert!(
            text.contains("the server's count: max 4 installing (GET /api/status, 12 polls)"),
            "{text}"
        );
        assert!(
            text.contains("waits for an install slot: 6 (2 hosts, 6.0 s slept in all)"),
            "{text}"
        );
        assert!(
            text.contains("FAILED: installs at once: max 7 over the cap 5"),
            "{text}"
        );
        let json = render_json(&report);
        assert_eq!(json["waits"], 6);
        assert_eq!(json["waiting_hosts"], 2);
        assert_eq!(json["installs_at_once"]["max"], 7);
        assert_eq!(json["installs_at_once"]["cap"], 5);
        assert_eq!(json["installs_at_once"]["server_max"], 4);
        assert_eq!(
            json["installs_at_once"]["violations"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        let uncapped = render(&Report {
            installs: Installs::default(),
            ..report
        });
        assert!(
            uncapped.contains("installs at once: max 0 (no cap)"),
            "{uncapped}"
        );
    }

    /// A killed server whose store lost an answered event: the report says so and fails.
    #[test]
    fn report_shows_the_kill_and_fails_on_a_missing_event() {
        use super::super::kill9::{DhcpCheck, Kill, KillReport};
        let done = HostOutcome {
            installed: true,
            retries: 2,
            ..Default::default()
        };
        let outs = vec![done.clone(), done.clone(), done];
        let kill = KillReport {
            kill: Some(Kill {
                after: 1,
                finished_at_kill: 1,
                in_flight: 2,
                old_pid: 10,
                new_pid: Some(11),
                down: Duration::from_secs(1),
                ready_in: Some(Duration::from_millis(100)),
                error: None,
            }),
            kill_after: 1,
            retries: 6,
            retrying_hosts: 3,
            answered: 6,
            answered_before_kill: 2,
            missing: vec![
                "event 2 (02:50:46:00:00:00 finished) answered 201 before the kill is not in the store"
                    .into(),
            ],
            dhcp: Some(DhcpCheck {
                acks: 6,
                addresses: 2,
                doubles: vec!["10.200.0.2 was ACKed to 2 MACs: a, b".into()],
                lease_rows: Ok(0),
                lease_conflicts: vec![],
            }),
            ..Default::default()
        };
        let report = Report {
            header: "h".into(),
            outcomes: &outs,
            armed: 3,
            reboot: false,
            usage: Usage::default(),
            installs: Installs::default(),
            notes: vec![],
            kill: Some(kill),
        };
        let text = render(&report);
        for line in [
            "kill -9: after 1 hosts finished (2 booting), pid 10 killed, down 1.0 s, pid 11 ready 0.1 s later on the same addresses",
            "hosts finished after the restart: 2",
            "ride-through: 6 requests repeated after connection failures (3 hosts)",
            "events answered 201: 6 (2 before the kill), in the store afterwards: 5 of 6",
            "dhcp leases: 6 ACKs with an address, 2 addresses, 1 to two MACs or more; leases.db: 0 rows, 0 in conflict",
            "FAILED: event 2 (02:50:46:00:00:00 finished) answered 201 before the kill is not in the store",
            "FAILED: 10.200.0.2 was ACKed to 2 MACs",
        ] {
            assert!(text.contains(line), "{line:?} in:\n{text}");
        }
        let json = render_json(&report);
        assert_eq!(
            json["kill"]["events_missing"].as_array().map(Vec::len),
            Some(1)
        );
        assert_eq!(json["kill"]["violations"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["kill"]["new_pid"], 11);
    }
}
