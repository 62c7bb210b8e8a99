//! Counters exported at `/metrics` in the Prometheus text format.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// (endpoint route, status) → count. Routes are the matched patterns, so the label set
    /// stays bounded whatever paths clients invent.
    /// Keyed by route first so that the hot path looks up a borrowed `&str` without allocating.
    requests: Mutex<HashMap<String, HashMap<u16, u64>>>,
    /// Outcome of /ipxe: host, matched, unknown_local, unknown_discover, error.
    scripts: Mutex<BTreeMap<&'static str, u64>>,
    pub events_received: AtomicU64,
    pub events_rejected: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub bytes_sent: AtomicU64,
}

impl Metrics {
    pub fn request(&self, route: &str, status: u16) {
        if let Ok(mut m) = self.requests.lock() {
            let by_status = match m.get_mut(route) {
                Some(s) => s,
                None => m.entry(route.to_string()).or_default(),
            };
            *by_status.entry(status).or_default() += 1;
        }
    }

    pub fn script(&self, outcome: &'static str) {
        if let Ok(mut m) = self.scripts.lock() {
            *m.entry(outcome).or_default() += 1;
        }
    }

    pub fn write_prometheus(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP pxeforge_http_requests_total HTTP requests by endpoint and status."
        );
        let _ = writeln!(out, "# TYPE pxeforge_http_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            let sorted: BTreeMap<(&str, u16), u64> = m
                .iter()
                .flat_map(|(r, by)| by.iter().map(move |(s, n)| ((r.as_str(), *s), *n)))
                .collect();
            for ((route, status), n) in sorted {
                let _ = writeln!(
                    out,
                    "pxeforge_http_requests_total{{endpoint=\"{}\",status=\"{status}\"}} {n}",
                    escape_label(route)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP pxeforge_scripts_served_total iPXE host scripts by outcome."
        );
        let _ = writeln!(out, "# TYPE pxeforge_scripts_served_total counter");
        if let Ok(m) = self.scripts.lock() {
            for (outcome, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "pxeforge_scripts_served_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        for (name, help, v) in [
            (
                "pxeforge_events_received_total",
                "Install events stored.",
                &self.events_received,
            ),
            (
                "pxeforge_events_rejected_total",
                "Install events refused as malformed or oversized.",
                &self.events_rejected,
            ),
            (
                "pxeforge_site_reloads_total{result=\"ok\"}",
                "Site reloads.",
                &self.reloads_ok,
            ),
            (
                "pxeforge_site_reloads_total{result=\"failed\"}",
                "",
                &self.reloads_failed,
            ),
            (
                "pxeforge_http_bytes_sent_total",
                "File bytes sent over HTTP.",
                &self.bytes_sent,
            ),
        ] {
            let base = name.split('{').next().unwrap_or(name);
            if !help.is_empty() {
                let _ = writeln!(out, "# HELP {base} {help}");
                let _ = writeln!(out, "# TYPE {base} counter");
            }
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
