//! Turning per-host stage times into the report: percentiles, rates, and the verdict on what
//! limited the run. Pure functions, so the arithmetic is tested without a server.

use std::fmt::Write as _;
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
    /// Hosts `pxeforge reinstall --all` armed before the server started.
    pub armed: usize,
    /// Whether every host booted a second time after its install (`--reboot`).
    pub reboot: bool,
    pub usage: Usage,
    pub notes: Vec<String>,
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
            notes: vec![],
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
            notes: vec![],
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
}
