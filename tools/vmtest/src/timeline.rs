//! Boot stages recognised in the lines of the serve log, dnsmasq's log and the serial console.
//! A stage's time is the first line that shows it, relative to the VM's start.

use super::child::{Line, Source};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The machine got an address (dnsmasq or pxeforge ACK, firmware or iPXE saying so).
    Dhcp,
    /// A first-stage file (iPXE) fetched over TFTP.
    Tftp,
    /// `GET /boot.ipxe`.
    Script,
    /// `GET /ipxe?mac=...`: the host's own script.
    HostScript,
    Kernel,
    Initrd,
    /// The kernel printed its banner on the console.
    KernelRunning,
    /// `GET /ks/...`.
    Kickstart,
    EventStarted,
    EventFinished,
    EventFailed,
    /// The firmware gave up on the network and looked for a local disk.
    LocalBoot,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Dhcp => "dhcp",
            Stage::Tftp => "tftp",
            Stage::Script => "script",
            Stage::HostScript => "host script",
            Stage::Kernel => "kernel",
            Stage::Initrd => "initrd",
            Stage::KernelRunning => "kernel running",
            Stage::Kickstart => "kickstart",
            Stage::EventStarted => "event started",
            Stage::EventFinished => "event finished",
            Stage::EventFailed => "event failed",
            Stage::LocalBoot => "local boot",
        }
    }
}

/// The stage a line shows, if any. Pure.
pub fn classify(source: Source, text: &str) -> Option<Stage> {
    let lower = text.to_ascii_lowercase();
    match source {
        Source::Dnsmasq => lower.contains("dhcpack(").then_some(Stage::Dhcp),
        Source::Serial => classify_serial(text),
        Source::Serve => classify_serve(text, &lower),
    }
}

fn classify_serial(text: &str) -> Option<Stage> {
    let has = |s: &str| text.contains(s);
    if has("Station IP address is") || (has("Configuring (net") && text.trim_end().ends_with("ok"))
    {
        Some(Stage::Dhcp)
    } else if has("NBP file downloaded successfully") {
        Some(Stage::Tftp)
    } else if has("Linux version ") {
        Some(Stage::KernelRunning)
    } else if has("pxeforge-installer: kickstart ") {
        Some(Stage::Kickstart)
    } else if has("No bootable device") || has("No bootable option or device was found") {
        Some(Stage::LocalBoot)
    } else {
        None
    }
}

fn classify_serve(text: &str, lower: &str) -> Option<Stage> {
    if lower.contains("listening") {
        return None;
    }
    if let Some(path) = field(text, "path=") {
        let path = path.split('?').next().unwrap_or(path);
        return if path == "/boot.ipxe" {
            Some(Stage::Script)
        } else if path == "/ipxe" {
            Some(Stage::HostScript)
        } else if path.starts_with("/ks") {
            Some(Stage::Kickstart)
        } else if path.starts_with("/tftp/") {
            Some(Stage::Tftp)
        } else if path.ends_with("vmlinuz") || path.ends_with("vmlinuz.efi") {
            Some(Stage::Kernel)
        } else if path.contains("initrd") || path.contains("initramfs") {
            Some(Stage::Initrd)
        } else {
            None
        };
    }
    if lower.contains("install event") {
        return match field(text, "status=") {
            Some("started") => Some(Stage::EventStarted),
            Some("finished") => Some(Stage::EventFinished),
            Some("failed") => Some(Stage::EventFailed),
            _ => None,
        };
    }
    if lower.contains("tftp")
        && [".efi", ".kpxe", ".pxe", "rrq", "read request"]
            .iter()
            .any(|k| lower.contains(k))
    {
        return Some(Stage::Tftp);
    }
    if lower.contains("dhcp")
        && !lower.contains("no reply")
        && ["ack", "offer"].iter().any(|k| lower.contains(k))
    {
        return Some(Stage::Dhcp);
    }
    None
}

/// The value of `key` in a `key=value` log line (tracing's format), without quotes.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let v = rest.split_whitespace().next().unwrap_or("");
    Some(v.trim_matches('"'))
}

/// A tracing line without its timestamp, level and target (`2026-..Z  INFO pxeforge::http: `).
fn without_log_prefix(text: &str) -> &str {
    let mut rest = text.trim_start();
    let first = rest.split_whitespace().next().unwrap_or("");
    if !(first.starts_with(|c: char| c.is_ascii_digit()) && first.contains('T')) {
        return text;
    }
    rest = rest[first.len()..].trim_start();
    let level = rest.split_whitespace().next().unwrap_or("");
    if ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level) {
        rest = rest[level.len()..].trim_start();
    }
    let target = rest.split_whitespace().next().unwrap_or("");
    if target.ends_with(':') {
        rest = rest[target.len()..].trim_start();
    }
    rest
}

#[derive(Debug, Clone, Serialize)]
pub struct Mark {
    pub stage: Stage,
    pub at_secs: f64,
    pub source: &'static str,
    pub line: String,
}

/// First sighting of each stage.
#[derive(Debug, Default)]
pub struct Timeline {
    first: BTreeMap<Stage, Mark>,
}

impl Timeline {
    pub fn observe(&mut self, start: Instant, line: &Line) -> Option<Stage> {
        let stage = classify(line.source, &line.text)?;
        self.first.entry(stage).or_insert_with(|| Mark {
            stage,
            at_secs: secs(line.at.saturating_duration_since(start)),
            source: line.source.label(),
            line: without_log_prefix(&line.text).chars().take(200).collect(),
        });
        Some(stage)
    }

    pub fn has(&self, stage: Stage) -> bool {
        self.first.contains_key(&stage)
    }

    /// The marks in the order they happened.
    pub fn marks(&self) -> Vec<Mark> {
        let mut v: Vec<Mark> = self.first.values().cloned().collect();
        v.sort_by(|a, b| a.at_secs.total_cmp(&b.at_secs).then(a.stage.cmp(&b.stage)));
        v
    }
}

pub fn secs(d: std::time::Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn serve_request_lines() {
        let l = |p: &str| {
            format!("2026-11-25T13:00:00.1Z  INFO pxeforge::http: request method=GET path={p} status=200 ms=1")
        };
        assert_eq!(
            classify(Source::Serve, &l("/boot.ipxe")),
            Some(Stage::Script)
        );
        assert_eq!(
            classify(Source::Serve, &l("/ipxe")),
            Some(Stage::HostScript)
        );
        assert_eq!(
            classify(
                Source::Serve,
                &l("/assets/installer/images/pxeboot/vmlinuz")
            ),
            Some(Stage::Kernel)
        );
        assert_eq!(
            classify(
                Source::Serve,
                &l("/assets/installer/images/pxeboot/initrd.img")
            ),
            Some(Stage::Initrd)
        );
        assert_eq!(
            classify(Source::Serve, &l("/images/r/p/current/initramfs.img")),
            Some(Stage::Initrd)
        );
        assert_eq!(
            classify(Source::Serve, &l("/ks/52-54-00-00-10-01")),
            Some(Stage::Kickstart)
        );
        assert_eq!(classify(Source::Serve, &l("/api/hosts")), None);
        assert_eq!(
            classify(Source::Serve, "pxeforge: tftp listening on 10.77.0.1:69"),
            None
        );
        assert_eq!(
            classify(Source::Serve, "INFO pxeforge::http::events: install event mac=52:54:00:00:10:01 stage=install status=finished message=done"),
            Some(Stage::EventFinished)
        );
    }

    #[test]
    fn log_prefix_is_dropped_for_display() {
        assert_eq!(
            without_log_prefix("2026-11-25T13:13:19.668879Z  INFO pxeforge::http: request method=GET path=/boot.ipxe"),
            "request method=GET path=/boot.ipxe"
        );
        assert_eq!(
            without_log_prefix("pxeforge-installer: started"),
            "pxeforge-installer: started"
        );
        assert_eq!(
            classify(Source::Serve, "INFO pxeforge_dhcp::server: dhcp: no reply mac=52:54:00:77:00:01 outcome=\"offer\""),
            None
        );
    }

    #[test]
    fn serial_and_dnsmasq_lines() {
        assert_eq!(
            classify(Source::Serial, "  Station IP address is 10.77.0.116"),
            Some(Stage::Dhcp)
        );
        assert_eq!(
            classify(
                Source::Serial,
                "Configuring (net0 52:54:00:77:00:11)...... ok"
            ),
            Some(Stage::Dhcp)
        );
        assert_eq!(
            classify(
                Source::Serial,
                "[    0.000000] Linux version 6.1.0-56-amd64"
            ),
            Some(Stage::KernelRunning)
        );
        assert_eq!(
            classify(
                Source::Serial,
                "No bootable device.  Retrying in 60 seconds."
            ),
            Some(Stage::LocalBoot)
        );
        assert_eq!(
            classify(
                Source::Dnsmasq,
                "dnsmasq-dhcp[1]: 3816099702 DHCPACK(vd1) 10.77.0.116 52:54:00:77:00:11"
            ),
            Some(Stage::Dhcp)
        );
        assert_eq!(
            classify(Source::Dnsmasq, "DHCPDISCOVER(vd1) 52:54:00:77:00:11"),
            None
        );
    }

    #[test]
    fn first_sighting_wins_and_marks_are_ordered() {
        let start = Instant::now();
        let mut t = Timeline::default();
        let at = |ms| start + std::time::Duration::from_millis(ms);
        for (ms, src, text) in [
            (900, Source::Serial, "[ 0.0] Linux version 6.1"),
            (100, Source::Dnsmasq, "DHCPACK(vd1) 10.77.0.100"),
            (500, Source::Dnsmasq, "DHCPACK(vd1) 10.77.0.100"),
        ] {
            t.observe(
                start,
                &Line {
                    at: at(ms),
                    source: src,
                    text: text.into(),
                },
            );
        }
        let m = t.marks();
        assert_eq!(m.len(), 2);
        assert_eq!((m[0].stage, m[0].at_secs), (Stage::Dhcp, 0.1));
        assert_eq!(m[1].stage, Stage::KernelRunning);
    }

    proptest! {
        #[test]
        fn arbitrary_lines_never_panic(s in ".{0,300}") {
            for src in [Source::Serve, Source::Serial, Source::Dnsmasq] {
                let _ = classify(src, &s);
            }
            let _ = without_log_prefix(&s);
        }
    }
}
