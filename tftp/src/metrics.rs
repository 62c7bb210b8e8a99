//! Counters of the TFTP service, rendered in the Prometheus text format.

use std::fmt::Write as _;
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
    /// Too many transfers at once.
    Busy,
    /// Ended by server shutdown or by a new request from the same client port.
    Aborted,
    IoError,
}

impl Ended {
    pub const ALL: [Ended; 11] = [
        Ended::Complete,
        Ended::ClientAbort,
        Ended::Timeout,
        Ended::ProtocolError,
        Ended::Refused,
        Ended::NotFound,
        Ended::WriteRefused,
        Ended::BadRequest,
        Ended::Busy,
        Ended::Aborted,
        Ended::IoError,
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
            Ended::Aborted => "aborted",
            Ended::IoError => "io_error",
        }
    }

    fn index(self) -> usize {
        Ended::ALL.iter().position(|e| *e == self).unwrap_or(0)
    }
}

/// Service-wide counters; shared with the HTTP `/metrics` endpoint.
#[derive(Debug, Default)]
pub struct TftpMetrics {
    transfers: [AtomicU64; 11],
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

    pub(crate) fn transfer_started(&self) {
        self.active.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn transfer_ended(&self) {
        self.active.fetch_sub(1, Ordering::Relaxed);
    }

    /// Appends the counters in the Prometheus text exposition format.
    pub fn write_prometheus(&self, out: &mut String) {
        out.push_str("# HELP pxeforge_tftp_transfers_total TFTP requests by how they ended.\n");
        out.push_str("# TYPE pxeforge_tftp_transfers_total counter\n");
        for ended in Ended::ALL {
            let _ = writeln!(
                out,
                "pxeforge_tftp_transfers_total{{outcome=\"{}\"}} {}",
                ended.as_str(),
                self.transfers(ended)
            );
        }
        let scalars = [
            (
                "pxeforge_tftp_active_transfers",
                "gauge",
                "TFTP transfers in progress.",
                self.active_transfers(),
            ),
            (
                "pxeforge_tftp_bytes_sent_total",
                "counter",
                "Payload bytes sent in DATA packets, retransmissions included.",
                self.bytes_sent(),
            ),
            (
                "pxeforge_tftp_blocks_retransmitted_total",
                "counter",
                "DATA blocks sent again after a timeout.",
                self.blocks_retransmitted(),
            ),
            (
                "pxeforge_tftp_cache_hits_total",
                "counter",
                "Transfers served from the memory cache.",
                self.cache_hits.load(Ordering::Relaxed),
            ),
            (
                "pxeforge_tftp_cache_misses_total",
                "counter",
                "Transfers that read their file from disk.",
                self.cache_misses.load(Ordering::Relaxed),
            ),
            (
                "pxeforge_tftp_cache_bytes",
                "gauge",
                "Bytes of file content held in the memory cache.",
                self.cache_bytes.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in scalars {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
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
}
