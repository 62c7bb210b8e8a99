//! The server under test as a child process, and what /proc says about its resource use.

use anyhow::{Context, Result};
use pxeforge_child::{AdminListener, DhcpListener, ServeChild};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A started `pxeforge serve`; stopped when dropped.
pub struct ServerChild {
    serve: ServeChild,
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub dhcp: Vec<DhcpListener>,
    /// The admin API (arming, the journal); `serve` must be started with `--admin`.
    pub admin: AdminListener,
}

impl ServerChild {
    /// Starts `cmd` (a `pxeforge serve`) with its stderr in `log` and waits for its
    /// `pxeforge: ready` line.
    pub fn start(mut cmd: Command, log: &Path, timeout: Duration) -> Result<ServerChild> {
        let logf = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        cmd.stderr(logf).stdin(Stdio::null());
        let serve = ServeChild::start(cmd, timeout).map_err(|e| {
            // What the server says about its failure is in its log, not on stdout.
            let log = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            anyhow::anyhow!(
                "pxeforge serve did not become ready: {e}; its log ends with:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })?;
        let l = serve.listening();
        let http = l.http.context("pxeforge serve printed no http address")?;
        let admin = l.admin.clone().with_context(|| {
            format!(
                "pxeforge serve printed no `admin listening on` line (a server without the admin API?); its startup lines: {:?}",
                l.lines
            )
        })?;
        let (tftp, dhcp) = (l.tftp, l.dhcp.clone());
        Ok(ServerChild {
            serve,
            http,
            tftp,
            dhcp,
            admin,
        })
    }

    pub fn pid(&self) -> u32 {
        self.serve.pid()
    }

    /// SIGKILL now (no TERM, no grace: what a crash or the OOM killer does), and reap it.
    pub fn kill(&mut self) {
        self.serve.stop(Duration::ZERO);
    }

    pub fn stats(&self) -> Result<ProcStats> {
        proc_stats(&format!("/proc/{}", self.pid()))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcStats {
    pub cpu_secs: f64,
    pub peak_rss_kib: u64,
}

pub fn proc_stats(dir: &str) -> Result<ProcStats> {
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let (u, s) = cpu_ticks(&stat).context("parsing /proc stat")?;
    Ok(ProcStats {
        cpu_secs: (u + s) as f64 / hz,
        peak_rss_kib: status_kib(&status, "VmHWM").unwrap_or(0),
    })
}

/// utime and stime (fields 14 and 15) of /proc/PID/stat; the command name may hold spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.get(11)?.parse().ok()?, f.get(12)?.parse().ok()?))
}

pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(key)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "1234 (pxe forge) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some((250, 75)));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(
            status_kib("Name:\tx\nVmHWM:\t   51200 kB\nVmRSS:\t 100 kB\n", "VmHWM"),
            Some(51200)
        );
        assert_eq!(status_kib("VmRSS: 1 kB", "VmHWM"), None);
        let me = proc_stats("/proc/self").unwrap();
        assert!(me.peak_rss_kib > 0);
    }
}
