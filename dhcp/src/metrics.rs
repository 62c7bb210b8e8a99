//! Counters for `/metrics`, in the Prometheus text format.

use pxeforge_promtext::{Kind, Writer};
use std::collections::BTreeMap;
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
    /// fsyncs of the lease store that made a batch of leases durable (group commit).
    pub lease_syncs: AtomicU64,
    /// The lease store was found corrupt at start and moved aside (0 or 1).
    pub lease_store_moved_aside: AtomicU64,
    /// REQUESTs for an address we never gave the client, answered with a NAK.
    pub unsolicited_nak: AtomicU64,
    /// The same, from clients we have no record of: left unanswered.
    pub unsolicited_ignored: AtomicU64,
    pub ping_probes: AtomicU64,
    /// Probes answered: the address was in use and stays out of the pool.
    pub ping_conflicts: AtomicU64,
    /// BOOTREPLYs from a DHCP server not in `dhcp.peers`.
    pub foreign_server_replies: AtomicU64,
    /// BOOTREPLYs from the servers in `dhcp.peers`.
    pub peer_server_replies: AtomicU64,
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
        let mut w = Writer::new(out);
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
                "pxeforge_dhcp_lease_syncs_total",
                "fsyncs of the lease store, each making a batch of ACKed leases durable",
                &self.lease_syncs,
            ),
            (
                "pxeforge_dhcp_lease_errors_total",
                "lease database errors",
                &self.lease_errors,
            ),
            (
                "pxeforge_dhcp_lease_store_moved_aside_total",
                "lease stores found corrupt at start and moved aside as leases.db.corrupt-TIMESTAMP",
                &self.lease_store_moved_aside,
            ),
            (
                "pxeforge_dhcp_ping_probes_total",
                "ICMP echo probes of an address before offering it",
                &self.ping_probes,
            ),
            (
                "pxeforge_dhcp_ping_conflicts_total",
                "probed addresses that answered, kept out of the pool",
                &self.ping_conflicts,
            ),
            (
                "pxeforge_dhcp_foreign_server_replies_total",
                "DHCP replies seen from servers not listed in dhcp.peers",
                &self.foreign_server_replies,
            ),
            (
                "pxeforge_dhcp_peer_server_replies_total",
                "DHCP replies seen from the servers in dhcp.peers",
                &self.peer_server_replies,
            ),
        ];
        for (name, help, value) in counters {
            w.counter(name, help, value.load(Ordering::Relaxed));
        }
        let mut unsolicited = w.family(
            "pxeforge_dhcp_unsolicited_requests_total",
            Kind::Counter,
            "REQUESTs for an address this server did not offer and the client does not hold",
        );
        unsolicited.sample(
            &[("answer", &"nak")],
            self.unsolicited_nak.load(Ordering::Relaxed),
        );
        unsolicited.sample(
            &[("answer", &"ignored")],
            self.unsolicited_ignored.load(Ordering::Relaxed),
        );
        let mut decisions = w.family(
            "pxeforge_dhcp_decisions_total",
            Kind::Counter,
            "DHCP decisions by message, firmware and outcome",
        );
        if let Ok(map) = self.decisions.lock() {
            for ((mode, msg, fw, outcome), n) in map.iter() {
                decisions.sample(
                    &[
                        ("mode", mode),
                        ("message", msg),
                        ("firmware", fw),
                        ("outcome", outcome),
                    ],
                    *n,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let m = DhcpMetrics::default();
        m.received.store(10, Ordering::Relaxed);
        m.count_decision("proxy", "discover", "efi-x64", "offer");
        m.count_decision("proxy", "discover", "efi-x64", "offer");
        m.count_decision("reservation", "request", "bios", "ack");
        let mut out = String::new();
        m.write_prometheus(&mut out);
        assert!(
            out.contains("pxeforge_dhcp_packets_received_total 10\n"),
            "{out}"
        );
        assert!(
            out.contains("pxeforge_dhcp_lease_errors_total 0\n"),
            "{out}"
        );
        assert!(out.contains("pxeforge_dhcp_decisions_total{mode=\"proxy\",message=\"discover\",firmware=\"efi-x64\",outcome=\"offer\"} 2\n"), "{out}");
        assert!(out.contains("pxeforge_dhcp_decisions_total{mode=\"reservation\",message=\"request\",firmware=\"bios\",outcome=\"ack\"} 1\n"), "{out}");
        assert_eq!(
            out.matches("# TYPE pxeforge_dhcp_decisions_total counter\n")
                .count(),
            1
        );
        assert_eq!(m.decisions("offer"), 2);
    }
}
