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
    /// After `finished`, the host booted from the network again and the server sent it the
    /// local-boot script (`--expect-local-reboot`): the install-once loop closed.
    LocalReboot,
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
            Stage::LocalReboot => "local reboot",
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

/// The value of `key` in a `key=value` log line (tracing's format), without quotes; a quoted
/// value may hold spaces (`script="by profile"`).
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    if let Some(quoted) = rest.strip_prefix('"') {
        return Some(quoted.split('"').next().unwrap_or(quoted));
    }
    let v = rest.split(char::is_whitespace).next().unwrap_or("");
    Some(v.trim_matches('"'))
}

/// Whether a serve log line is a successful download of a kernel
/// (`request method=GET path=…vmlinuz… status=200`). Pure.
pub fn is_kernel_fetch(source: Source, text: &str) -> bool {
    if source != Source::Serve || classify(source, text) != Some(Stage::Kernel) {
        return false;
    }
    field(text, "method=") == Some("GET") && field(text, "status=") == Some("200")
}

/// The serve log's line for an inventory host's script:
/// `host script mac=… host=NAME profile=P script="install"|"local"|"by profile"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostScriptLine<'a> {
    pub host: &'a str,
    /// `install`, `local` or `by profile` (the profile decides: not tracked by build state).
    pub script: &'a str,
}

/// `text` without its ` KEY=VALUE` field (e.g. the MAC of a `host script` line, so that a
/// report's short column reaches its `script=`). Pure.
pub fn without_field(text: &str, key: &str) -> String {
    let pat = format!(" {key}=");
    let Some(at) = text.find(&pat) else {
        return text.to_string();
    };
    let rest = &text[at + pat.len()..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    format!("{}{}", &text[..at], &rest[end..])
}

/// Parses a serve log line as [`HostScriptLine`]. Pure.
pub fn host_script_line(text: &str) -> Option<HostScriptLine<'_>> {
    let at = text.find("host script ")?;
    let rest = &text[at + "host script ".len()..];
    // ` host=`: the field, not the end of another key; the MAC comes before it.
    let host = field(rest, " host=")?;
    let script = field(rest, " script=")?;
    (!host.is_empty() && !script.is_empty()).then_some(HostScriptLine { host, script })
}

/// `text` with the value of every `token=` (a build token in a kickstart URL) shown as `…`:
/// a report names the stage, not the secret. Pure.
pub fn redact_token(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("token=") {
        let (head, tail) = rest.split_at(at + "token=".len());
        out.push_str(head);
        let end = tail
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(tail.len());
        if end > 0 {
            out.push('…');
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
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
        self.mark(start, stage, line);
        Some(stage)
    }

    /// Marks `stage` at `line` (unless it was seen before), for stages that a line shows only in
    /// the context of the run, such as [`Stage::LocalReboot`].
    pub fn mark(&mut self, start: Instant, stage: Stage, line: &Line) {
        self.first.entry(stage).or_insert_with(|| Mark {
            stage,
            at_secs: secs(line.at.saturating_duration_since(start)),
            source: line.source.label(),
            line: redact_token(without_log_prefix(&line.text))
                .chars()
                .take(200)
                .collect(),
        });
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
    fn kernel_fetches_and_host_script_lines() {
        let req = |m: &str, p: &str, st: u16| {
            format!("2026-11-30T09:37:51.6Z  INFO pxeforge::http: request method={m} path={p} status={st} ms=3")
        };
        let k = "/assets/installer/images/pxeboot/vmlinuz";
        assert!(is_kernel_fetch(Source::Serve, &req("GET", k, 200)));
        assert!(is_kernel_fetch(
            Source::Serve,
            &req("GET", "/images/r/p/current/vmlinuz.efi", 200)
        ));
        assert!(!is_kernel_fetch(Source::Serve, &req("HEAD", k, 200)));
        assert!(!is_kernel_fetch(Source::Serve, &req("GET", k, 404)));
        assert!(!is_kernel_fetch(
            Source::Serve,
            &req("GET", "/assets/installer/images/pxeboot/initrd.img", 200)
        ));
        assert!(!is_kernel_fetch(Source::Serial, &req("GET", k, 200)));

        let line = |script: &str| {
            format!("2026-11-30T09:37:51.6Z  INFO pxeforge_server::handlers::scripts: host script mac=Some(52:54:00:77:00:01) host=vm-bios profile=qemu-bios script=\"{script}\"")
        };
        assert_eq!(
            host_script_line(&line("local")),
            Some(HostScriptLine {
                host: "vm-bios",
                script: "local"
            })
        );
        assert_eq!(
            host_script_line(&line("install")).unwrap().script,
            "install"
        );
        assert_eq!(
            host_script_line(&line("by profile")).unwrap().script,
            "by profile"
        );
        // Not a stage of its own: the request line after it is the host script stage.
        assert_eq!(classify(Source::Serve, &line("local")), None);
        assert_eq!(host_script_line(&req("GET", "/ipxe", 200)), None);
        assert!(without_field(&line("local"), "mac")
            .ends_with("scripts: host script host=vm-bios profile=qemu-bios script=\"local\""));
        assert_eq!(without_field("a b=1", "mac"), "a b=1");
        assert_eq!(without_field("a mac=1", "mac"), "a");
        assert_eq!(
            host_script_line("host script mac=None host= script=\"local\""),
            None
        );
    }

    #[test]
    fn tokens_are_not_shown() {
        assert_eq!(
            redact_token("pxeforge-installer: kickstart http://10.77.0.1:8080/ks/vm-bios?token=e6bd4f232681a61268ca38d0fc5cad7d"),
            "pxeforge-installer: kickstart http://10.77.0.1:8080/ks/vm-bios?token=…"
        );
        assert_eq!(
            redact_token("a?x=1&token=ab12&y=2 token="),
            "a?x=1&token=…&y=2 token="
        );
        assert_eq!(redact_token("no secrets"), "no secrets");
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
            let _ = host_script_line(&s);
            let _ = redact_token(&s);
            let _ = is_kernel_fetch(Source::Serve, &s);
        }
    }
}
