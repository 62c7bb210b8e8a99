//! TFTP service of pxeforge: read-only RFC 1350 with the option extensions PXE firmware uses
//! (RFC 2347 OACK, 2348 blksize, 2349 tsize/timeout, 7440 windowsize).
//!
//! Protocol decisions are pure functions ([`packet`], [`options`], [`transfer`], [`confine`]);
//! the server and session modules only move datagrams and bytes.

pub mod cache;
pub mod confine;
mod lockstep;
pub mod metrics;
pub mod netascii;
pub mod options;
pub mod packet;
mod server;
mod session;
pub mod transfer;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::CacheLimits;
pub use metrics::{Ended, TftpMetrics};
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
    /// Transfers in progress at once; requests beyond it get "server busy".
    pub max_transfers: usize,
    /// Largest block size agreed to (clients asking for more get this).
    pub max_blksize: u16,
    /// Largest window agreed to (RFC 7440).
    pub max_windowsize: u16,
    /// Memory cache of small files.
    pub cache: CacheLimits,
    /// Netascii transfers are converted in memory; larger files are refused in that mode.
    pub netascii_max_size: u64,
    /// Threads that drive transfers, each with its own single-threaded runtime.
    pub threads: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            root: PathBuf::from("/srv/tftp"),
            timeout: Duration::from_secs(1),
            max_retries: 5,
            max_transfers: 4096,
            max_blksize: packet::MAX_BLKSIZE,
            max_windowsize: 64,
            cache: CacheLimits::default(),
            netascii_max_size: 16 << 20,
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get())
                .min(4),
        }
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
