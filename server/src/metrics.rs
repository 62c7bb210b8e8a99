//! Counters exported at `/metrics` in the Prometheus text format.

use pxeforge_promtext::{Kind, Writer};
use std::collections::{BTreeMap, HashMap};
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
    /// `POST /events` answered 429 by the per-source rate limit.
    pub events_rate_limited: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// HTTP connections refused before a request was read, by reason (`per-address`).
    connections_refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed `accept` calls, by reason (`EMFILE`, `ENFILE`, ...).
    accept_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// Connections closed at the connection cap to make room, by what they were doing
    /// (`fresh`: nothing sent yet; `idle`: a keep-alive connection between requests).
    connections_evicted: Mutex<BTreeMap<&'static str, u64>>,
    /// Stores found corrupt and moved aside, by store (`events`).
    moved_aside: Mutex<BTreeMap<&'static str, u64>>,
}

fn bump(m: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    if let Ok(mut m) = m.lock() {
        *m.entry(key).or_default() += 1;
    }
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

    pub fn moved_aside(&self, store: &'static str) {
        bump(&self.moved_aside, store);
    }

    pub fn script(&self, outcome: &'static str) {
        if let Ok(mut m) = self.scripts.lock() {
            *m.entry(outcome).or_default() += 1;
        }
    }

    pub fn write_prometheus(&self, out: &mut String) {
        let mut w = Writer::new(out);
        let mut requests = w.family(
            "pxeforge_http_requests_total",
            Kind::Counter,
            "HTTP requests by endpoint and status.",
        );
        if let Ok(m) = self.requests.lock() {
            let sorted: BTreeMap<(&str, u16), u64> = m
                .iter()
                .flat_map(|(r, by)| by.iter().map(move |(s, n)| ((r.as_str(), *s), *n)))
                .collect();
            for ((route, status), n) in sorted {
                requests.sample(&[("endpoint", &route), ("status", &status)], n);
            }
        }
        for (name, help, map) in [
            (
                "pxeforge_http_connections_refused_total",
                "HTTP connections refused before any request was read, by reason.",
                &self.connections_refused,
            ),
            (
                "pxeforge_http_connections_evicted_total",
                "HTTP connections closed at the connection cap to make room for a new one, by what they were doing (fresh: nothing sent; idle: between requests).",
                &self.connections_evicted,
            ),
            (
                "pxeforge_http_accept_failures_total",
                "Failed accepts of HTTP connections (EMFILE: out of descriptors), by reason.",
                &self.accept_failures,
            ),
        ] {
            let mut f = w.family(name, Kind::Counter, help);
            if let Ok(m) = map.lock() {
                for (reason, n) in m.iter() {
                    f.sample(&[("reason", reason)], *n);
                }
            }
        }
        let mut aside = w.family(
            "pxeforge_state_moved_aside_total",
            Kind::Counter,
            "Stores found corrupt at start and moved aside as NAME.corrupt-TIMESTAMP, by store.",
        );
        if let Ok(m) = self.moved_aside.lock() {
            for (store, n) in m.iter() {
                aside.sample(&[("store", store)], *n);
            }
        }
        let mut scripts = w.family(
            "pxeforge_scripts_served_total",
            Kind::Counter,
            "iPXE host scripts by outcome.",
        );
        if let Ok(m) = self.scripts.lock() {
            for (outcome, n) in m.iter() {
                scripts.sample(&[("outcome", outcome)], *n);
            }
        }
        w.counter(
            "pxeforge_events_received_total",
            "Install events stored.",
            self.events_received.load(Ordering::Relaxed),
        );
        w.counter(
            "pxeforge_events_rejected_total",
            "Install events refused as malformed or oversized.",
            self.events_rejected.load(Ordering::Relaxed),
        );
        w.counter(
            "pxeforge_events_rate_limited_total",
            "Install events refused with 429 by the per-source rate limit.",
            self.events_rate_limited.load(Ordering::Relaxed),
        );
        let mut reloads = w.family(
            "pxeforge_site_reloads_total",
            Kind::Counter,
            "Site reloads.",
        );
        for (result, v) in [("ok", &self.reloads_ok), ("failed", &self.reloads_failed)] {
            reloads.sample(&[("result", &result)], v.load(Ordering::Relaxed));
        }
        w.counter(
            "pxeforge_http_bytes_sent_total",
            "File bytes sent over HTTP.",
            self.bytes_sent.load(Ordering::Relaxed),
        );
    }
}

/// What the HTTP transport reports lands in these counters.
impl pxeforge_httpd::Observer for Metrics {
    fn bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    fn request_refused(&self, status: http::StatusCode) {
        self.request("refused", status.as_u16());
    }

    fn connection_refused(&self, reason: &'static str) {
        bump(&self.connections_refused, reason);
    }

    fn accept_failed(&self, reason: &'static str) {
        bump(&self.accept_failures, reason);
    }

    fn connection_evicted(&self, state: &'static str) {
        bump(&self.connections_evicted, state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let m = Metrics::default();
        m.request("/ipxe", 200);
        m.request("/ipxe", 200);
        m.request("/x\"y", 404);
        m.script("host");
        m.reloads_ok.store(1, Ordering::Relaxed);
        m.reloads_failed.store(3, Ordering::Relaxed);
        let mut out = String::new();
        m.write_prometheus(&mut out);
        for line in [
            "pxeforge_http_requests_total{endpoint=\"/ipxe\",status=\"200\"} 2\n",
            "pxeforge_http_requests_total{endpoint=\"/x\\\"y\",status=\"404\"} 1\n",
            "pxeforge_scripts_served_total{outcome=\"host\"} 1\n",
            "pxeforge_events_received_total 0\n",
            "pxeforge_events_rate_limited_total 0\n",
            "# HELP pxeforge_site_reloads_total Site reloads.\n\
             # TYPE pxeforge_site_reloads_total counter\n\
             pxeforge_site_reloads_total{result=\"ok\"} 1\n\
             pxeforge_site_reloads_total{result=\"failed\"} 3\n",
            "pxeforge_http_bytes_sent_total 0\n",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
        // Requests, connections refused, evicted and accept failures, stores moved aside,
        // scripts, events (stored, refused, rate-limited), reloads, bytes.
        assert_eq!(out.matches("# HELP ").count(), 11, "{out}");
    }
}
