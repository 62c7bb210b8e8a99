//! Counters of the TFTP service, rendered in the Prometheus text format.

use pxeforge_promtext::{Kind, Writer};
use std::sync::atomic::{AtomicU64, Ordering};

/// How a request ended, as counted in `pxeforge_tftp_transfers_total{outcome=...}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Complete,
    /// The client sent an ERROR (a `tsize` probe aborted with ERROR 8 counts here).
    ClientAbort,
    Timeout,
    ProtocolError,
    /// Refused by confinement (escape attempts, symlinks out of the root, non-regular files).
    Refused,
    NotFound,
    /// Write requests are always refused.
    WriteRefused,
    /// Malformed request or unsupported mode.
    BadRequest,
    /// Too many transfers at once, every one of them acknowledged by its client; or no file
    /// descriptor left for the transfer (EMFILE/ENFILE).
    Busy,
    /// The client's address has `max_transfers_per_addr` transfers running, every one of them
    /// acknowledged.
    ClientBusy,
    /// A transfer whose client never acknowledged anything, ended to make room for a new
    /// request when the table (or the client address's share of it) was full.
    Evicted,
    /// Ended by server shutdown, or replaced by a new request from the same client port once
    /// that request's first packet was acknowledged.
    Aborted,
    IoError,
    /// Ended by the total transfer deadline (`TftpConfig::transfer_deadline`).
    Deadline,
    /// Not answered: the source sent more new requests than its per-second allowance.
    RateLimited,
}

impl Ended {
    pub const ALL: [Ended; 15] = [
        Ended::Complete,
        Ended::ClientAbort,
        Ended::Timeout,
        Ended::ProtocolError,
        Ended::Refused,
        Ended::NotFound,
        Ended::WriteRefused,
        Ended::BadRequest,
        Ended::Busy,
        Ended::ClientBusy,
        Ended::Evicted,
        Ended::Aborted,
        Ended::IoError,
        Ended::Deadline,
        Ended::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ended::Complete => "complete",
            Ended::ClientAbort => "client_abort",
            Ended::Timeout => "timeout",
            Ended::ProtocolError => "protocol_error",
            Ended::Refused => "refused",
            Ended::NotFound => "not_found",
            Ended::WriteRefused => "write_refused",
            Ended::BadRequest => "bad_request",
            Ended::Busy => "busy",
            Ended::ClientBusy => "busy_client",
            Ended::Evicted => "evicted",
            Ended::Aborted => "aborted",
            Ended::IoError => "io_error",
            Ended::Deadline => "deadline",
            Ended::RateLimited => "rate_limited",
        }
    }

    fn index(self) -> usize {
        Ended::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// Upper bounds (seconds) of the transfer-duration histogram buckets.
pub const DURATION_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Service-wide counters; shared with the HTTP `/metrics` endpoint.
#[derive(Debug, Default)]
pub struct TftpMetrics {
    /// Completed transfers by duration (cumulative buckets are computed when rendering).
    duration_buckets: [AtomicU64; 11],
    duration_micros_sum: AtomicU64,
    transfers: [AtomicU64; Ended::ALL.len()],
    active: AtomicU64,
    bytes_sent: AtomicU64,
    blocks_retransmitted: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_bytes: AtomicU64,
}

impl TftpMetrics {
    pub fn record(&self, ended: Ended) {
        self.transfers[ended.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Requests that ended with `ended` so far.
    pub fn transfers(&self, ended: Ended) -> u64 {
        self.transfers[ended.index()].load(Ordering::Relaxed)
    }

    /// Transfers in progress (each holds a socket and possibly file content).
    pub fn active_transfers(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }

    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    pub fn blocks_retransmitted(&self) -> u64 {
        self.blocks_retransmitted.load(Ordering::Relaxed)
    }

    pub(crate) fn add_bytes_sent(&self, n: u64) {
        self.bytes_sent.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_retransmitted(&self, n: u64) {
        self.blocks_retransmitted.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn cache_lookup(&self, hit: bool, cache_bytes: u64) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        self.cache_bytes.store(cache_bytes, Ordering::Relaxed);
    }

    /// Records the duration of one completed transfer.
    pub fn observe_duration(&self, elapsed: std::time::Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = DURATION_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(DURATION_BUCKETS.len());
        self.duration_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.duration_micros_sum
            .fetch_add(micros, Ordering::Relaxed);
    }

    pub(crate) fn transfer_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn transfer_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Appends the counters in the Prometheus text exposition format.
    pub fn write_prometheus(&self, out: &mut String) {
        let mut w = Writer::new(out);
        let mut transfers = w.family(
            "pxeforge_tftp_transfers_total",
            Kind::Counter,
            "TFTP requests by how they ended.",
        );
        for ended in Ended::ALL {
            transfers.sample(&[("outcome", &ended.as_str())], self.transfers(ended));
        }
        w.gauge(
            "pxeforge_tftp_active_transfers",
            "TFTP transfers in progress.",
            self.active_transfers(),
        );
        w.counter(
            "pxeforge_tftp_bytes_sent_total",
            "Payload bytes sent in DATA packets, retransmissions included.",
            self.bytes_sent(),
        );
        w.counter(
            "pxeforge_tftp_blocks_retransmitted_total",
            "DATA blocks sent again after a timeout.",
            self.blocks_retransmitted(),
        );
        w.counter(
            "pxeforge_tftp_cache_hits_total",
            "Transfers served from the memory cache.",
            self.cache_hits.load(Ordering::Relaxed),
        );
        w.counter(
            "pxeforge_tftp_cache_misses_total",
            "Transfers that read their file from disk.",
            self.cache_misses.load(Ordering::Relaxed),
        );
        w.gauge(
            "pxeforge_tftp_cache_bytes",
            "Bytes of file content held in the memory cache.",
            self.cache_bytes.load(Ordering::Relaxed),
        );
        // The last counter is the +Inf bucket: observations above every bound.
        let mut cumulative = [0; DURATION_BUCKETS.len()];
        let mut count = 0;
        for (i, counter) in self.duration_buckets.iter().enumerate() {
            count += counter.load(Ordering::Relaxed);
            if let Some(c) = cumulative.get_mut(i) {
                *c = count;
            }
        }
        let sum = self.duration_micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
        w.histogram(
            "pxeforge_tftp_transfer_duration_seconds",
            "Duration of completed transfers.",
            &DURATION_BUCKETS,
            &cumulative,
            sum,
            count,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text() {
        let m = TftpMetrics::default();
        m.record(Ended::Complete);
        m.record(Ended::Complete);
        m.record(Ended::ClientAbort);
        m.add_bytes_sent(1468);
        let mut out = String::new();
        m.write_prometheus(&mut out);
        assert!(out.contains("pxeforge_tftp_transfers_total{outcome=\"complete\"} 2\n"));
        assert!(out.contains("pxeforge_tftp_transfers_total{outcome=\"client_abort\"} 1\n"));
        assert!(out.contains("pxeforge_tftp_transfers_total{outcome=\"timeout\"} 0\n"));
        assert!(out.contains("pxeforge_tftp_bytes_sent_total 1468\n"));
        assert!(out.contains("# TYPE pxeforge_tftp_active_transfers gauge\n"));
    }

    #[test]
    fn duration_histogram_is_cumulative() {
        let m = TftpMetrics::default();
        m.observe_duration(std::time::Duration::from_millis(3));
        m.observe_duration(std::time::Duration::from_millis(300));
        m.observe_duration(std::time::Duration::from_secs(100));
        let mut out = String::new();
        m.write_prometheus(&mut out);
        let h = "pxeforge_tftp_transfer_duration_seconds";
        assert!(
            out.contains(&format!("{h}_bucket{{le=\"0.01\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{h}_bucket{{le=\"0.25\"}} 1\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{h}_bucket{{le=\"0.5\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{h}_bucket{{le=\"30\"}} 2\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("{h}_bucket{{le=\"+Inf\"}} 3\n")),
            "{out}"
        );
        assert!(out.contains(&format!("{h}_count 3\n")), "{out}");
        assert!(out.contains(&format!("{h}_sum 100.303\n")), "{out}");
    }
}
