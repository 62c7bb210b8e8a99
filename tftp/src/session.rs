//! One request on its own socket: resolve the file, negotiate, then drive the transfer state
//! machine with real packets and timers.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::task::AbortHandle;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tracing::{debug, info, warn};

use crate::cache::{Cache, Content, ReadAhead, Source};
use crate::confine::{check_name, open_confined, out_of_descriptors, OpenError};
use crate::lockstep::{self, data_packet, CancelOnDrop, Stats};
use crate::metrics::{Ended, TftpMetrics};
use crate::options::{blksize_for_mtu, negotiate, Limits};
use crate::packet::{self, ErrorCode, Mode, RawOption};
use crate::transfer::{Action, Event, Outcome, Params, Transfer};
use crate::TftpConfig;

/// A request copied out of the receive buffer.
#[derive(Debug, Clone)]
pub(crate) struct OwnedRequest {
    pub write: bool,
    pub filename: Vec<u8>,
    pub mode: Mode,
    pub options: Vec<(Vec<u8>, Vec<u8>)>,
}

/// What every session shares.
pub(crate) struct Shared {
    pub config: TftpConfig,
    /// Canonical root.
    pub root: PathBuf,
    pub cache: Cache,
    pub metrics: Arc<TftpMetrics>,
    /// Bounds concurrent opens, so a boot storm does not spawn a blocking thread per request.
    /// A permit is held by the blocking open itself, so that a transfer aborted meanwhile
    /// (evicted, replaced) does not let more opens run than this.
    pub opens: Arc<tokio::sync::Semaphore>,
    /// Bounds the large lockstep transfers that get a thread of their own.
    pub lockstep: Arc<tokio::sync::Semaphore>,
}

/// Whether a transfer's client has acknowledged anything, shared between the transfer and the
/// listener (which may evict an unconfirmed transfer to make room for a new request). One
/// atomic, moved from `UNCONFIRMED` exactly once: a transfer that is confirmed can no longer be
/// evicted, and an evicted one is not counted as confirmed.
#[derive(Debug, Default)]
pub(crate) struct TransferState(AtomicU8);

const UNCONFIRMED: u8 = 0;
const CONFIRMED: u8 = 1;
const EVICTED: u8 = 2;

impl TransferState {
    /// Marks the transfer confirmed unless it was evicted first.
    pub fn confirm(&self) {
        let _ =
            self.0
                .compare_exchange(UNCONFIRMED, CONFIRMED, Ordering::AcqRel, Ordering::Acquire);
    }

    pub fn confirmed(&self) -> bool {
        self.0.load(Ordering::Acquire) == CONFIRMED
    }

    /// Marks the transfer evicted if its client has not acknowledged anything; returns whether
    /// it did (the caller then aborts the transfer's task).
    pub fn evict(&self) -> bool {
        self.0
            .compare_exchange(UNCONFIRMED, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn evicted(&self) -> bool {
        self.0.load(Ordering::Acquire) == EVICTED
    }
}

/// Keeps the active-transfer gauge right and records an outcome even when the task is aborted.
pub(crate) struct ActiveGuard {
    metrics: Arc<TftpMetrics>,
    state: Arc<TransferState>,
    ended: Option<Ended>,
}

impl ActiveGuard {
    pub fn new(metrics: Arc<TftpMetrics>, state: Arc<TransferState>) -> ActiveGuard {
        metrics.transfer_started();
        ActiveGuard {
            metrics,
            state,
            ended: None,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        // Not ended by itself: aborted, by shutdown, a replacing request, or eviction.
        let ended = self.ended.unwrap_or(if self.state.evicted() {
            Ended::Evicted
        } else {
            Ended::Aborted
        });
        self.metrics.record(ended);
        self.metrics.transfer_ended();
    }
}

/// What the client's first acknowledgement of a transfer does: it confirms the transfer (which
/// the listener then never evicts), and it ends the older transfers of the same client port
/// that this request replaces. Those are ended only then: a spoofed request (which never sees
/// the first packet) cannot abort a client's running transfer, while a client that really
/// started over acknowledges at once.
#[derive(Debug)]
pub(crate) struct FirstAck {
    older: Vec<AbortHandle>,
    state: Arc<TransferState>,
    seen: bool,
}

impl FirstAck {
    pub fn new(older: Vec<AbortHandle>, state: Arc<TransferState>) -> FirstAck {
        FirstAck {
            older,
            state,
            seen: false,
        }
    }

    /// Acts on the first acknowledgement of `transfer`; called after each event.
    pub fn check(&mut self, transfer: &Transfer) {
        if self.seen || !transfer.acknowledged() {
            return;
        }
        self.seen = true;
        self.state.confirm();
        if !self.older.is_empty() {
            debug!(
                replaced = self.older.len(),
                "tftp: acknowledged new request replaces the old transfer"
            );
            for older in self.older.drain(..) {
                older.abort();
            }
        }
    }
}

/// Serves one request from `socket`, which is bound to the address the request was sent to,
/// connected to the client, non-blocking, and registered with no event loop: a large lockstep
/// transfer drives it from a thread of its own with blocking `recv`, and each ACK then wakes
/// that thread only (a socket also registered with a runtime's epoll would wake that runtime's
/// thread too, on every ACK, for nothing: two threads woken per block, which is what made
/// lockstep transfers slow on a busy machine). Other transfers register it with the current
/// worker's runtime.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    socket: std::net::UdpSocket,
    peer: SocketAddr,
    request: OwnedRequest,
    path_mtu: Option<u32>,
    first_ack: FirstAck,
    mut guard: ActiveGuard,
) {
    // Only for log lines: a client's control characters are escaped there, so that a file
    // name cannot forge a line of its own (the name that is opened is checked separately).
    let name = String::from_utf8_lossy(&request.filename)
        .escape_debug()
        .to_string();
    let ended = serve_inner(&shared, socket, peer, &name, request, path_mtu, first_ack).await;
    guard.ended = Some(ended);
}

/// Sends an ERROR on the (non-blocking, connected) transfer socket: one small datagram, which
/// the kernel takes at once or never; the client may be gone already, and nothing more is to
/// be done about a failed send.
fn send_error(socket: &std::net::UdpSocket, code: ErrorCode, message: &str) {
    let _ = socket.send(&packet::encode_error(code, message));
}

fn refuse(
    socket: &std::net::UdpSocket,
    peer: SocketAddr,
    name: &str,
    reason: &(dyn std::fmt::Display + Sync),
) -> Ended {
    warn!(client = %peer, path = %name, reason = %reason, "tftp: request refused");
    send_error(socket, ErrorCode::AccessViolation, "access violation");
    Ended::Refused
}

async fn serve_inner(
    shared: &Arc<Shared>,
    socket: std::net::UdpSocket,
    peer: SocketAddr,
    name: &str,
    request: OwnedRequest,
    path_mtu: Option<u32>,
    mut first_ack: FirstAck,
) -> Ended {
    if request.write {
        warn!(client = %peer, path = %name, "tftp: write request refused");
        send_error(
            &socket,
            ErrorCode::AccessViolation,
            "write requests are not accepted",
        );
        return Ended::WriteRefused;
    }
    let relative = match check_name(&request.filename) {
        Ok(relative) => relative,
        Err(refusal) => return refuse(&socket, peer, name, &refusal),
    };
    let content = match load(shared, relative, request.mode).await {
        Ok(content) => content,
        Err(LoadError::Open(OpenError::NotFound)) => {
            info!(client = %peer, path = %name, "tftp: file not found");
            send_error(&socket, ErrorCode::FileNotFound, "file not found");
            return Ended::NotFound;
        }
        Err(LoadError::Open(OpenError::Refused(refusal))) => {
            return refuse(&socket, peer, name, &refusal)
        }
        Err(LoadError::Open(OpenError::PermissionDenied)) => {
            return refuse(&socket, peer, name, &"permission denied")
        }
        // Passing: the client is told to come back (PXE firmware retries its request).
        Err(LoadError::Open(OpenError::OutOfDescriptors(err))) => {
            warn!(client = %peer, path = %name, error = %err, "tftp: no descriptor to open the file, busy");
            send_error(&socket, ErrorCode::NotDefined, "server busy");
            return Ended::Busy;
        }
        Err(LoadError::Io(err)) if out_of_descriptors(&err) => {
            warn!(client = %peer, path = %name, error = %err, "tftp: no descriptor to read the file, busy");
            send_error(&socket, ErrorCode::NotDefined, "server busy");
            return Ended::Busy;
        }
        Err(err) => {
            warn!(client = %peer, path = %name, error = %err, "tftp: cannot read file");
            send_error(&socket, ErrorCode::NotDefined, "cannot read file");
            return Ended::IoError;
        }
    };

    let raw: Vec<RawOption<'_>> = request
        .options
        .iter()
        .map(|(n, v)| RawOption { name: n, value: v })
        .collect();
    // Clamp blksize to what the path to this client carries without fragmentation.
    let path_max = path_mtu.map_or(packet::MAX_BLKSIZE, |mtu| {
        blksize_for_mtu(mtu, peer.is_ipv6())
    });
    let limits = Limits {
        max_blksize: shared.config.max_blksize.min(path_max),
        max_windowsize: shared.config.max_windowsize,
        max_timeout: shared.config.max_timeout,
    };
    let negotiated = negotiate(&raw, Some(content.len()), limits);
    let params = Params {
        size: content.len(),
        blksize: negotiated.blksize,
        windowsize: negotiated.windowsize,
        oack: !negotiated.oack.is_empty(),
        max_retries: shared.config.max_retries,
    };
    let oack = packet::encode_oack(&negotiated.oack);
    let timeout = negotiated.timeout.unwrap_or(shared.config.timeout);
    debug!(client = %peer, path = %name, ?params, "tftp: transfer starting");

    let started = Instant::now();
    let deadline = started + shared.config.deadline_for(content.len());
    let size = content.len();
    let streamed_lockstep = params.windowsize == 1 && matches!(content, Content::File { .. });
    let thread = if streamed_lockstep {
        shared
            .lockstep
            .clone()
            .try_acquire_owned()
            .ok()
            .and_then(|permit| match socket.try_clone() {
                Ok(waker) => Some((permit, OwnedFd::from(waker))),
                // Out of descriptors, most likely: the async path needs none.
                Err(err) => {
                    debug!(client = %peer, error = %err, "tftp: no descriptor for a lockstep thread, async path");
                    None
                }
            })
    } else {
        None
    };
    let (outcome, stats, socket) = match thread {
        Some((permit, waker)) => {
            let job = lockstep::Job {
                content,
                params,
                oack,
                timeout,
                deadline,
                first_ack,
                metrics: shared.metrics.clone(),
                slice: shared.config.lockstep_slice,
            };
            run_on_thread(socket, waker, job, permit).await
        }
        None => {
            // Registered with the runtime of the worker that drives the transfer.
            let socket = match UdpSocket::from_std(socket) {
                Ok(socket) => socket,
                Err(err) => {
                    warn!(client = %peer, error = %err, "tftp: cannot register transfer socket");
                    return Ended::IoError;
                }
            };
            let mut stats = Stats::default();
            let plan = Plan {
                params,
                oack: &oack,
                timeout,
                deadline,
            };
            let outcome = run(
                &socket,
                &content,
                plan,
                &mut first_ack,
                &shared.metrics,
                &mut stats,
            )
            .await;
            (outcome, stats, socket.into_std().ok())
        }
    };
    let ended = match outcome {
        Ok(Outcome::Complete) => {
            shared.metrics.observe_duration(started.elapsed());
            Ended::Complete
        }
        Ok(Outcome::ClientAbort) => Ended::ClientAbort,
        Ok(Outcome::Timeout) => Ended::Timeout,
        Ok(Outcome::ProtocolError) => Ended::ProtocolError,
        Ok(Outcome::Deadline) => Ended::Deadline,
        Err(ref err) => {
            warn!(client = %peer, path = %name, error = %err, "tftp: transfer failed");
            if let Some(socket) = &socket {
                send_error(socket, ErrorCode::NotDefined, "read error");
            }
            Ended::IoError
        }
    };
    info!(
        client = %peer,
        path = %name,
        outcome = ended.as_str(),
        size,
        bytes_sent = stats.bytes,
        blocks_retransmitted = stats.retransmitted,
        blksize = params.blksize,
        windowsize = params.windowsize,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "tftp: transfer ended"
    );
    ended
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Open(#[from] OpenError),
    #[error("file too large for netascii ({0} bytes)")]
    TooLargeForNetascii(u64),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("file open task failed")]
    Join,
}

/// Opens and reads on the blocking pool so that a slow disk never stalls the socket loops.
async fn load(shared: &Arc<Shared>, relative: PathBuf, mode: Mode) -> Result<Content, LoadError> {
    let permit = shared
        .opens
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| LoadError::Join)?;
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let opened = open_confined(&shared.root, &relative)?;
        let size = opened.metadata.len();
        if mode == Mode::Netascii && size > shared.config.netascii_max_size {
            return Err(LoadError::TooLargeForNetascii(size));
        }
        let (content, source) = shared.cache.content(opened)?;
        shared
            .metrics
            .cache_lookup(source == Source::Hit, shared.cache.bytes());
        if mode == Mode::Netascii {
            // Converted as it is sent: no copy beside the (possibly shared) content.
            return Ok(Content::netascii(content)?);
        }
        Ok(content)
    })
    .await
    .map_err(|_| LoadError::Join)?
}

/// Runs a transfer on the blocking pool, which takes the transfer socket (registered with no
/// event loop: each ACK wakes the transfer's thread and nothing else) and gives it back at the
/// end; `waker` is a duplicate of its descriptor. If this future is dropped (shutdown,
/// eviction, or a new request from the client port), the thread is told to stop.
async fn run_on_thread(
    socket: std::net::UdpSocket,
    waker: OwnedFd,
    mut job: lockstep::Job,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> (std::io::Result<Outcome>, Stats, Option<std::net::UdpSocket>) {
    let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let cancel = CancelOnDrop::new(flag.clone(), waker);
    let thread = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut stats = Stats::default();
        let outcome = lockstep::run(&socket, &mut job, &mut stats, &flag);
        (outcome, stats, socket)
    })
    .await;
    // Finished normally: nothing to cancel, and the socket may still send an ERROR.
    cancel.disarm();
    match thread {
        Ok((outcome, stats, socket)) => (outcome, stats, Some(socket)),
        Err(_) => (
            Err(std::io::Error::other("transfer thread failed")),
            Stats::default(),
            None,
        ),
    }
}

/// What was negotiated for a transfer, and the instant it must be over by.
#[derive(Debug, Clone, Copy)]
struct Plan<'a> {
    params: Params,
    oack: &'a [u8],
    timeout: Duration,
    deadline: Instant,
}

async fn run(
    socket: &UdpSocket,
    content: &Content,
    Plan {
        params,
        oack,
        timeout,
        deadline,
    }: Plan<'_>,
    first_ack: &mut FirstAck,
    metrics: &TftpMetrics,
    stats: &mut Stats,
) -> std::io::Result<Outcome> {
    let (mut transfer, mut action) = Transfer::start(params);
    let mut reader = ReadAhead::new(content);
    let mut out = vec![0u8; 4 + usize::from(params.blksize)];
    let mut inbuf = [0u8; 1024];
    // One timer per transfer, re-armed in place: cheaper than a new timer per packet.
    let timer = sleep_until(TokioInstant::now() + timeout);
    tokio::pin!(timer);
    let deadline = TokioInstant::from_std(deadline);
    let hard = sleep_until(deadline);
    tokio::pin!(hard);
    loop {
        let waited = action == Action::Wait;
        match action {
            Action::SendOack { .. } => {
                socket.send(oack).await?;
                timer.as_mut().reset(TokioInstant::now() + timeout);
            }
            Action::SendBlocks {
                first,
                last,
                retransmit,
            } => {
                for index in first..=last {
                    let (n, len) = data_packet(&mut reader, &transfer, index, &mut out)?;
                    send_data(socket, &out[..n]).await?;
                    stats.bytes += len as u64;
                    metrics.add_bytes_sent(len as u64);
                }
                if retransmit {
                    let n = last + 1 - first;
                    stats.retransmitted += n;
                    metrics.add_retransmitted(n);
                }
                timer.as_mut().reset(TokioInstant::now() + timeout);
            }
            // A duplicate ACK does not re-arm the timer, so a stream of them cannot keep a
            // transfer alive forever.
            Action::Wait => {}
            Action::Fail {
                code,
                message,
                outcome,
            } => {
                // The client may be gone already; nothing more to do about a failed send.
                let _ = socket.send(&packet::encode_error(code, message)).await;
                return Ok(outcome);
            }
            Action::Finish(outcome) => return Ok(outcome),
        }
        // The select below prefers a waiting packet over the timers; checked here as well, the
        // timers fire even while a stream of useless packets (duplicate ACKs) keeps the socket
        // readable.
        let now = TokioInstant::now();
        let event = if now >= deadline {
            Event::Deadline
        } else if waited && now >= timer.deadline() {
            Event::Timeout
        } else {
            tokio::select! {
                biased;
                received = socket.recv(&mut inbuf) => match received {
                    Ok(n) => Event::from_datagram(&inbuf[..n]),
                    // ICMP port unreachable: the client is gone, end at once.
                    Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Event::ClientError,
                    Err(err) => return Err(err),
                },
                _ = &mut timer => Event::Timeout,
                _ = &mut hard => Event::Deadline,
            }
        };
        action = transfer.on_event(event);
        first_ack.check(&transfer);
    }
}

async fn send_data(socket: &UdpSocket, datagram: &[u8]) -> std::io::Result<()> {
    match socket.send(datagram).await {
        Ok(_) => Ok(()),
        // The client vanished between two packets; the next recv reports it.
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(err) => Err(err),
    }
}

/// Checks that `root` is a directory and returns it canonical.
pub(crate) fn canonical_root(root: &Path) -> std::io::Result<PathBuf> {
    let canonical = root.canonicalize()?;
    if !canonical.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "TFTP root is not a directory",
        ));
    }
    // A root that is itself a symlink (the loaders store's `current`) stays a link: each request
    // follows it to the item current at that moment, as `/tftp/` does, so a sync is served at
    // once and a gc of the item current at start breaks nothing. The folders above it are
    // resolved once.
    if root.symlink_metadata()?.file_type().is_symlink() {
        if let (Some(parent), Some(name)) = (root.parent(), root.file_name()) {
            let parent = if parent.as_os_str().is_empty() {
                Path::new(".")
            } else {
                parent
            };
            return Ok(parent.canonicalize()?.join(name));
        }
    }
    Ok(canonical)
}
