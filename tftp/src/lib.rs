//! TFTP service of pxeforge: read-only RFC 1350 with the option extensions PXE firmware uses
//! (RFC 2347 OACK, 2348 blksize, 2349 tsize/timeout, 7440 windowsize).
//!
//! Protocol decisions are pure functions ([`packet`], [`options`], [`transfer`], [`confine`]);
//! the server and session modules only move datagrams and bytes.

pub mod cache;
mod clients;
pub mod confine;
mod lockstep;
pub mod metrics;
pub mod netascii;
pub mod options;
pub mod packet;
pub mod ratelimit;
mod server;
mod session;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::CacheLimits;
pub use metrics::{Ended, TftpMetrics};
pub use ratelimit::IpNet;
pub use server::TftpServer;

/// Settings of the TFTP service.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Directory served read-only; nothing outside it is ever read.
    pub root: PathBuf,
    /// Retransmission timeout when the client did not negotiate one.
    pub timeout: Duration,
    /// Retransmissions without progress before a transfer is dropped.
    pub max_retries: u32,
    /// Largest retransmission timeout a client may ask for with the `timeout` option (RFC 2349);
    /// a larger request is acknowledged with this value (whole seconds, at least 1).
    pub max_timeout: Duration,
    /// Every transfer is ended after this long (or after `size / transfer_min_rate`, if that
    /// is longer), however it is going.
    pub transfer_deadline: Duration,
    /// Bytes per second a large transfer is allowed at least before its deadline (see
    /// `transfer_deadline`); 0 gives every transfer `transfer_deadline` regardless of size.
    pub transfer_min_rate: u64,
    /// New requests accepted per source address and second (a burst of as many is allowed);
    /// further requests get no answer at all. 0 turns the limit off.
    pub max_new_per_source_per_sec: u32,
    /// Source networks the per-client limits do not apply to: the rate of new requests
    /// (`max_new_per_source_per_sec`) and the concurrent transfers of one address
    /// (`max_transfers_per_addr`). For racks behind NAT, load balancers and loopback benches.
    pub rate_limit_exempt: Vec<IpNet>,
    /// Transfers in progress at once. When the table is full, a new request takes the place
    /// of the oldest transfer whose client never acknowledged anything (a spoofed request
    /// cannot); only when every transfer is acknowledged does it get "server busy".
    pub max_transfers: usize,
    /// Transfers in progress at once for one client IP address (all its ports); at the cap,
    /// the same rule as `max_transfers` within that address's share, then "busy". 0 = no cap.
    pub max_transfers_per_addr: usize,
    /// Largest block size agreed to (clients asking for more get this).
    pub max_blksize: u16,
    /// Largest window agreed to (RFC 7440).
    pub max_windowsize: u16,
    /// Memory cache of small files.
    pub cache: CacheLimits,
    /// Largest file served in netascii mode (larger ones are refused in that mode): a netascii
    /// transfer converts as it streams, but reads its file once first to count the converted
    /// length.
    pub netascii_max_size: u64,
    /// Threads that drive transfers, each with its own single-threaded runtime.
    pub threads: usize,
    /// Time slice the thread of a large lockstep transfer asks the kernel for (EEVDF, Linux
    /// 6.12+): short, so that an ACK's wake-up preempts a CPU-bound neighbour at once instead
    /// of waiting out its slice. Zero keeps the kernel's default.
    pub lockstep_slice: Duration,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            root: PathBuf::from("/srv/tftp"),
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_timeout: Duration::from_secs(10),
            transfer_deadline: Duration::from_secs(600),
            transfer_min_rate: 64 << 10,
            max_new_per_source_per_sec: 20,
            // Constant prefixes within 0..=32 and 0..=128: these cannot fail.
            rate_limit_exempt: vec![
                IpNet::new(std::net::Ipv4Addr::LOCALHOST.into(), 8).expect("valid prefix"),
                IpNet::new(std::net::Ipv6Addr::LOCALHOST.into(), 128).expect("valid prefix"),
            ],
            max_transfers: 4096,
            max_transfers_per_addr: 16,
            max_blksize: packet::MAX_BLKSIZE,
            max_windowsize: 64,
            cache: CacheLimits::default(),
            netascii_max_size: 16 << 20,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
            lockstep_slice: Duration::from_micros(100),
        }
    }
}

impl TftpConfig {
    /// How long a transfer of `size` bytes may take in all: `transfer_deadline`, or the time
    /// `size` bytes take at `transfer_min_rate` if that is longer; at most a year (so that the
    /// instant it ends at can always be computed).
    pub fn deadline_for(&self, size: u64) -> Duration {
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        let at_min_rate = match self.transfer_min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_secs(size / rate),
        };
        self.transfer_deadline.max(at_min_rate).min(YEAR)
    }
}

/// Errors that stop the TFTP service (per-transfer problems are logged and counted instead).
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("cannot bind TFTP socket on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TFTP service thread: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("TFTP root {}: {source}", root.display())]
    Root {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_grows_with_size_beyond_the_base() {
        let config = TftpConfig::default();
        assert_eq!(config.deadline_for(0), Duration::from_secs(600));
        // A 1 MiB iPXE binary and a 32 MiB image: the base deadline.
        assert_eq!(config.deadline_for(1 << 20), Duration::from_secs(600));
        assert_eq!(config.deadline_for(32 << 20), Duration::from_secs(600));
        // 1 GiB at 64 KiB/s.
        assert_eq!(config.deadline_for(1 << 30), Duration::from_secs(16_384));
        let config = TftpConfig {
            transfer_min_rate: 0,
            ..TftpConfig::default()
        };
        assert_eq!(config.deadline_for(u64::MAX), Duration::from_secs(600));
        let config = TftpConfig {
            transfer_min_rate: 1,
            ..TftpConfig::default()
        };
        assert_eq!(
            config.deadline_for(u64::MAX),
            Duration::from_secs(365 * 24 * 3600)
        );
    }
}
