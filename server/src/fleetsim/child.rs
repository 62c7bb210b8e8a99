//! The server under test as a child process, and what /proc says about its resource use.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct ServerChild {
    child: Child,
    pub http: SocketAddr,
    pub tftp: Option<SocketAddr>,
    pub dhcp_lines: Vec<String>,
}

impl ServerChild {
    /// Starts `cmd` (a `pxeforge serve`) and waits for its `pxeforge: ready` line.
    pub fn start(mut cmd: Command, log: &Path, timeout: Duration) -> Result<ServerChild> {
        let logf = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        cmd.stdout(Stdio::piped()).stderr(logf).stdin(Stdio::null());
        let mut child = cmd.spawn().context("starting pxeforge serve")?;
        let out = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let (mut http, mut tftp, mut dhcp_lines) = (None, None, Vec::new());
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line.strip_prefix("pxeforge: http listening on ") {
                        http = a.trim().parse().ok();
                    } else if let Some(a) = line.strip_prefix("pxeforge: tftp listening on ") {
                        tftp = a.trim().parse().ok();
                    } else if line.starts_with("pxeforge: dhcp ") {
                        dhcp_lines.push(line.clone());
                    } else if line == "pxeforge: ready" {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(log).unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(20).collect();
                    bail!(
                        "pxeforge serve did not become ready; its log ends with:\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        // Keep draining stdout so that the server never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let http = http.context("pxeforge serve printed no http address")?;
        Ok(ServerChild {
            child,
            http,
            tftp,
            dhcp_lines,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> Result<ProcStats> {
        proc_stats(&format!("/proc/{}", self.pid()))
    }
}

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
