//! Counters for `/metrics`, in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// (mode, message, firmware, outcome)
type DecisionKey = (&'static str, &'static str, &'static str, &'static str);

#[derive(Debug, Default)]
pub struct DhcpMetrics {
    pub received: AtomicU64,
    pub malformed: AtomicU64,
    pub replies_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub lease_errors: AtomicU64,
    decisions: Mutex<BTreeMap<DecisionKey, u64>>,
}

impl DhcpMetrics {
    pub fn count_decision(
        &self,
        mode: &'static str,
        msg: &'static str,
        firmware: &'static str,
        outcome: &'static str,
    ) {
        if let Ok(mut map) = self.decisions.lock() {
            *map.entry((mode, msg, firmware, outcome)).or_default() += 1;
        }
    }

    pub fn decisions(&self, outcome: &str) -> u64 {
        self.decisions
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| k.3 == outcome)
                    .map(|(_, v)| v)
                    .sum()
            })
            .unwrap_or(0)
    }

    pub fn write_prometheus(&self, out: &mut String) {
        let counters = [
            (
                "pxeforge_dhcp_packets_received_total",
                "DHCP datagrams received",
                &self.received,
            ),
            (
                "pxeforge_dhcp_packets_malformed_total",
                "datagrams dropped as malformed",
                &self.malformed,
            ),
            (
                "pxeforge_dhcp_replies_sent_total",
                "replies sent",
                &self.replies_sent,
            ),
            (
                "pxeforge_dhcp_send_errors_total",
                "replies that failed to send",
                &self.send_errors,
            ),
            (
                "pxeforge_dhcp_lease_errors_total",
                "lease database errors",
                &self.lease_errors,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        let name = "pxeforge_dhcp_decisions_total";
        let _ = writeln!(
            out,
            "# HELP {name} DHCP decisions by message, firmware and outcome"
        );
        let _ = writeln!(out, "# TYPE {name} counter");
        if let Ok(map) = self.decisions.lock() {
            for ((mode, msg, fw, outcome), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{mode=\"{mode}\",message=\"{msg}\",firmware=\"{fw}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
    }
}
