//! The result of one VM boot: printed for people, written as JSON for pipelines.

use super::api::HostEvent;
use super::timeline::Mark;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Finished,
    Failed,
    Timeout,
    /// The firmware found nothing to boot from the network and went for a local disk.
    LocalBoot,
    Interrupted,
    /// The VM stopped without the host reporting `finished` or `failed`.
    Stopped,
    /// `--expect-local-reboot`: after `finished`, the host was sent the install script or its
    /// kernel again instead of the local-boot script.
    Reinstall,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Finished => 0,
            Outcome::Interrupted => 130,
            _ => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct EventSeen {
    pub at_secs: f64,
    #[serde(flatten)]
    pub event: HostEvent,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub host: Option<String>,
    pub mac: String,
    pub profile: Option<String>,
    pub firmware: String,
    pub dhcp: String,
    pub outcome: Outcome,
    pub reason: String,
    /// The build-state change vm-test made before the boot (`installed -> armed`), if it armed.
    pub armed: Option<String>,
    /// The host's build state at the end of the run, from the admin API (`installed` after a
    /// good install); `None` for an unknown machine.
    pub state_after: Option<String>,
    pub exit_code: i32,
    pub duration_secs: f64,
    /// Successful kernel downloads in the serve log (`GET …vmlinuz… status=200`).
    pub kernel_fetches: u32,
    /// Whether the run went on after `finished` until the host's local boot.
    pub expect_local_reboot: bool,
    pub stages: Vec<Mark>,
    pub events: Vec<EventSeen>,
    pub serial_log: String,
    pub disk: String,
}

impl Report {
    pub fn render(&self) -> String {
        let mut s = String::new();
        let who = match &self.host {
            Some(h) => format!("{h} ({})", self.mac),
            None => format!("unknown machine {}", self.mac),
        };
        let _ = writeln!(
            s,
            "pxeforge vm-test: {who}, profile {}, {} firmware, {} DHCP",
            self.profile.as_deref().unwrap_or("-"),
            self.firmware,
            self.dhcp
        );
        if let Some(change) = &self.armed {
            let _ = writeln!(s, "  armed before the boot: {change} (admin API)");
        }
        let _ = writeln!(s, "  {:<15} {:>8}  {:<10} line", "stage", "at", "seen in");
        for m in &self.stages {
            let _ = writeln!(
                s,
                "  {:<15} {:>7.1}s  {:<10} {}",
                m.stage.label(),
                m.at_secs,
                m.source,
                m.line.chars().take(70).collect::<String>()
            );
        }
        for e in &self.events {
            let _ = writeln!(
                s,
                "  {:<15} {:>7.1}s  {:<10} {}/{} {}",
                format!("event #{}", e.event.id),
                e.at_secs,
                "admin API",
                e.event.stage,
                e.event.status,
                e.event.message
            );
        }
        if let Some(state) = &self.state_after {
            let _ = writeln!(s, "  build state at the end: {state}");
        }
        let _ = writeln!(
            s,
            "  kernel fetches: {}{}",
            self.kernel_fetches,
            if self.expect_local_reboot {
                " (expected: exactly 1, then the local-boot script at the reboot)"
            } else {
                ""
            }
        );
        let verdict = match self.outcome {
            Outcome::Finished => "FINISHED".to_string(),
            other => format!("{} ({})", serde_plain(other).to_uppercase(), self.reason),
        };
        let _ = writeln!(
            s,
            "  result: {verdict} after {:.1}s, exit code {}",
            self.duration_secs, self.exit_code
        );
        let _ = writeln!(s, "  serial log: {}   disk: {}", self.serial_log, self.disk);
        s
    }
}

fn serde_plain(o: Outcome) -> String {
    serde_json::to_value(o)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::Stage;

    #[test]
    fn renders_and_serialises() {
        let r = Report {
            host: Some("vm-bios-01".into()),
            mac: "52:54:00:00:10:01".into(),
            profile: Some("qemu-bios".into()),
            firmware: "bios".into(),
            dhcp: "proxy".into(),
            outcome: Outcome::Failed,
            reason: "%post failed".into(),
            armed: Some("installed -> armed".into()),
            state_after: Some("failed".into()),
            exit_code: 1,
            duration_secs: 30.25,
            kernel_fetches: 1,
            expect_local_reboot: false,
            stages: vec![Mark {
                stage: Stage::Dhcp,
                at_secs: 3.5,
                source: "dnsmasq",
                line: "DHCPACK(vd1)".into(),
            }],
            events: vec![],
            serial_log: "out/serial.log".into(),
            disk: "out/disk.raw".into(),
        };
        let text = r.render();
        assert!(text.contains("dhcp"), "{text}");
        assert!(text.contains("FAILED (%post failed)"), "{text}");
        assert!(text.contains("kernel fetches: 1\n"), "{text}");
        assert!(
            text.contains("armed before the boot: installed -> armed"),
            "{text}"
        );
        assert!(text.contains("build state at the end: failed\n"), "{text}");
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["outcome"], "failed");
        assert_eq!(j["kernel_fetches"], 1);
        assert_eq!(serde_plain(Outcome::Reinstall), "reinstall");
        assert_eq!(j["stages"][0]["stage"], "dhcp");
    }
}
