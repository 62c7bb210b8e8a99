//! The HTTP/1.1 server: accepts connections, frames requests with `wire`, hands them to a
//! tower `Service` (pxeforge's axum `Router`), and writes responses itself, so that file
//! bodies can leave by `sendfile` and a connection costs one small buffer.

use crate::cidr::Cidr;
use crate::peers::{Admit, PerAddr};
use crate::sendfile::{self, SendFile};
use crate::wire::{self, ChunkedDecoder, Framing, Head, WireError};
use crate::Observer;
use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use bytes::{Bytes, BytesMut};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::AbortHandle;
use tower::{Service, ServiceExt};

/// Limits and timeouts of one connection.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A keep-alive connection with no request in progress is closed after this.
    pub idle: Duration,
    /// A request head and body must arrive within this, once started (slowloris).
    pub request: Duration,
    /// A client that takes no byte of a response for this long is dropped (reset). The clock
    /// restarts when bytes leave for the socket, not when the socket is merely writable.
    pub stall: Duration,
    /// The requests that may carry a body, each with its largest size; the first that matches
    /// applies. Any other request with a body (a `Content-Length` above 0, or chunked) is
    /// refused with 413 from its head, before a byte of the body is read, and a body over its
    /// route's cap likewise (from `Content-Length`, or as the chunks arrive). Default: only
    /// `POST /events`, up to 1 MiB (an install event is a few KiB; the handler has its own,
    /// smaller limit).
    pub bodies: Vec<BodyRoute>,
    /// Connections served at once (split evenly over the workers of [`serve_on_threads`]).
    /// A worker at its share makes room for a new connection by closing its oldest
    /// connection that is not in the middle of a request: one that has not sent a byte, or a
    /// keep-alive connection waiting for its next request ([`Observer::connection_evicted`]).
    /// When every one is busy, the new connection waits for a slot.
    pub max_connections: usize,
    /// Requests served on one keep-alive connection: the last one is answered with
    /// `Connection: close` and the connection closed, so that no client holds a connection
    /// (and its worker's attention) for ever. 0 counts as 1.
    pub max_requests: usize,
    /// Connections one client may hold at once, over all the workers together; the one over
    /// it is answered `503 Service Unavailable` with `Retry-After: 1` and closed as soon as it
    /// is accepted, without a byte of it being read (and [`Observer::connection_refused`]
    /// hears `"per-address"`). A client is its IPv4 address (an IPv4-mapped IPv6 peer
    /// included) or the /64 of its IPv6 address, since one IPv6 host can use a whole /64.
    /// 0 turns the cap off.
    pub max_connections_per_addr: usize,
    /// Clients the per-address cap leaves alone (a reverse proxy, a NAT gateway in front of
    /// a rack); they still count towards [`Self::max_connections`].
    pub exempt: Vec<Cidr>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            idle: Duration::from_secs(75),
            request: Duration::from_secs(30),
            stall: Duration::from_secs(60),
            bodies: vec![BodyRoute::new(Method::POST, "/events", 1 << 20)],
            max_connections: 16_384,
            max_requests: 10_000,
            max_connections_per_addr: 256,
            exempt: Vec::new(),
        }
    }
}

impl Limits {
    /// The largest body a request with this method and target may carry, from [`Self::bodies`];
    /// `None` if it may carry none.
    pub fn body_limit(&self, method: &Method, target: &str) -> Option<u64> {
        self.bodies
            .iter()
            .find(|r| r.matches(method, target))
            .map(|r| r.max)
    }
}

/// A kind of request that may carry a body, and its largest size (see [`Limits::bodies`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyRoute {
    pub method: Method,
    /// The path, compared byte for byte (case and percent-encoding included) with the
    /// request's, query left out: `/events` is `/events` and `/events?token=x`, not `/events/x`
    /// nor `/eventsx`. A path ending in `/` also takes every path under it that has no `.` or
    /// `..` segment: `/upload/` takes `/upload/a/b`.
    pub path: Cow<'static, str>,
    /// Bytes; a larger body is refused with 413.
    pub max: u64,
}

impl BodyRoute {
    pub fn new(method: Method, path: impl Into<Cow<'static, str>>, max: u64) -> BodyRoute {
        BodyRoute {
            method,
            path: path.into(),
            max,
        }
    }

    /// Whether a request with this method and target (as sent: origin- or absolute-form) is
    /// one of this route's.
    pub fn matches(&self, method: &Method, target: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let Some(path) = target_path(target) else {
            return false;
        };
        if path == self.path {
            return true;
        }
        self.path.ends_with('/')
            && path.starts_with(&*self.path)
            && !path
                .split('/')
                .any(|segment| segment == "." || segment == "..")
    }
}

/// The path of a request target, without its query: `/a/b?q` → `/a/b`,
/// `http://host/a?q` → `/a`, `http://host` → `/`. `None` for the asterisk and authority
/// forms, which have no path.
fn target_path(target: &str) -> Option<&str> {
    let path_and_query = if target.starts_with('/') {
        target
    } else {
        // absolute-form: scheme "://" authority, then the path (RFC 9112 §3.2.2).
        let (_, rest) = target.split_once("://")?;
        match rest.find(['/', '?', '#']) {
            Some(at) if rest[at..].starts_with('/') => &rest[at..],
            _ => "/",
        }
    };
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    Some(&path_and_query[..end])
}

/// Binds the HTTP listener. The backlog is deep because a rack coming back from a power cut
/// connects all at once, and a connection the kernel drops costs a host a TCP retransmission
/// timeout (1 s, then more) before it tries again.
pub fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// Serves `listener` on `workers` threads, each with its own single-threaded runtime accepting
/// from the same socket (nginx's worker model): a request is parsed, rendered and answered on
/// one thread without a hand-off, and a busy machine cannot park a connection's task behind
/// another worker's queue. Resolves when every worker has stopped; the first error wins.
///
/// `service` gets each request with its whole body in memory and the peer address as a
/// `ConnectInfo<SocketAddr>` extension; a response carrying a [`SendFile`] extension has that
/// file range sent as its body. `observer` hears what the transport reports.
pub async fn serve_on_threads<S, B>(
    listener: std::net::TcpListener,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    workers: usize,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    listener.set_nonblocking(true)?;
    let workers = workers.max(1);
    // One count for all the workers: a client gets the cap in all, not the cap from each.
    let per_addr = PerAddr::new(limits.max_connections_per_addr, limits.exempt.clone());
    let per_worker = Limits {
        max_connections: (limits.max_connections / workers).max(1),
        ..limits
    };
    let mut threads = Vec::with_capacity(workers);
    for i in 0..workers {
        let listener = listener.try_clone()?;
        let (service, observer, limits, shutdown, per_addr) = (
            service.clone(),
            observer.clone(),
            per_worker.clone(),
            shutdown.clone(),
            per_addr.clone(),
        );
        let thread = std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || -> io::Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .max_blocking_threads(16)
                    .build()?;
                rt.block_on(async move {
                    let listener = TcpListener::from_std(listener)?;
                    accept_loop(listener, service, observer, limits, shutdown, per_addr).await
                })
            })?;
        threads.push(thread);
    }
    tokio::task::spawn_blocking(move || {
        let mut first = Ok(());
        for t in threads {
            let r = t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("HTTP worker panicked")));
            if first.is_ok() {
                first = r;
            }
        }
        first
    })
    .await
    .map_err(io::Error::other)?
}

/// Runs until `shutdown` turns true; connections in progress finish their current request.
/// One runtime's share of [`serve_on_threads`], usable on its own (tests, a single thread).
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    let per_addr = PerAddr::new(limits.max_connections_per_addr, limits.exempt.clone());
    accept_loop(listener, service, observer, limits, shutdown, per_addr).await
}

/// How long a worker waits before it calls `accept` again after running out of descriptors
/// or memory: the connection it could not take is still queued, so trying again at once
/// would fail again at once, and a loop doing that takes a whole core from the connections
/// being served (and from whatever would free descriptors). 50 ms is at most 20 tries a
/// second, and a delay a client does not notice once descriptors are back.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// While `accept` keeps failing, a warning at most this often (with the count since the last).
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(10);

/// What an `accept` error says: the `reason` given to [`Observer::accept_failed`], and whether
/// to back off before the next try. Out of descriptors or kernel memory, waiting is the only
/// thing that helps. The errors of one incoming connection (Linux passes the pending network
/// errors of a connection up through `accept`, see accept(2)) are that connection's: the next
/// one is taken at once, and backing off on them would let a client who can provoke them
/// stall the accepting. Anything else is unexpected and backed off from too, so that it
/// cannot spin.
fn accept_error(e: &io::Error) -> (&'static str, bool) {
    match e.raw_os_error() {
        Some(libc::EMFILE) => ("EMFILE", true),
        Some(libc::ENFILE) => ("ENFILE", true),
        Some(libc::ENOBUFS) => ("ENOBUFS", true),
        Some(libc::ENOMEM) => ("ENOMEM", true),
        Some(
            libc::ECONNABORTED
            | libc::ECONNRESET
            | libc::EINTR
            | libc::EPROTO
            | libc::EPERM
            | libc::ENETDOWN
            | libc::ENETUNREACH
            | libc::ENOPROTOOPT
            | libc::EHOSTDOWN
            | libc::EHOSTUNREACH
            | libc::ENONET
            | libc::EOPNOTSUPP
            | libc::ETIMEDOUT,
        ) => ("connection", false),
        _ => ("other", true),
    }
}

/// Keeps a run of failing `accept`s to a few log lines: the first failure, then one warning
/// per [`ACCEPT_WARN_EVERY`], then one line when accepting works again.
#[derive(Default)]
struct AcceptLog {
    /// Failures since the last line logged, and in the whole run.
    unlogged: u64,
    run: u64,
    last_warned: Option<tokio::time::Instant>,
}

impl AcceptLog {
    fn failed(&mut self, e: &io::Error, reason: &'static str) {
        self.unlogged += 1;
        self.run += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warned
            .is_some_and(|t| now.duration_since(t) < ACCEPT_WARN_EVERY)
        {
            return;
        }
        tracing::warn!(error = %e, reason, failures = self.unlogged, "accept failed; backing off");
        self.unlogged = 0;
        self.last_warned = Some(now);
    }

    fn accepted(&mut self) {
        if self.run > 0 {
            tracing::info!(failures = self.run, "accept works again");
            *self = AcceptLog::default();
        }
    }
}

/// [`serve`] with the per-address count given: the workers of [`serve_on_threads`] share one.
async fn accept_loop<S, B>(
    listener: TcpListener,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
    per_addr: Option<Arc<PerAddr>>,
) -> io::Result<()>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let mut arrivals = Arrivals::new(limits.max_connections);
    // Connections going idle tell the accept loop, which may be waiting for something to
    // evict (see `make_room`).
    let went_idle = Arc::new(Notify::new());
    let limits = Arc::new(limits);
    // On shutdown: stop accepting, then wait until every connection has closed (idle ones close
    // at once, a download in flight finishes); the caller bounds how long that may take.
    let drained = || async {
        let _ = slots.acquire_many(all).await;
        Ok(())
    };
    let mut log = AcceptLog::default();
    loop {
        // Accepted before a slot is taken, so that a full worker evicts only for a connection
        // that is actually there; at the cap one accepted connection waits here, the rest in
        // the listen queue.
        let (stream, remote) = tokio::select! {
            _ = stopped(&mut shutdown) => return drained().await,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    let (reason, back_off) = accept_error(&e);
                    observer.accept_failed(reason);
                    if !back_off {
                        tracing::debug!(error = %e, "accept: connection failed");
                        // Others may be waiting on this thread; a run of these must not
                        // starve them.
                        tokio::task::yield_now().await;
                        continue;
                    }
                    log.failed(&e, reason);
                    tokio::select! {
                        _ = stopped(&mut shutdown) => return drained().await,
                        _ = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                    }
                    continue;
                }
            },
        };
        log.accepted();
        let addr_slot = match per_addr.as_ref().map(|t| t.admit(remote.ip())) {
            Some(Admit::Refused) => {
                tracing::debug!(%remote, "connection refused: per-address cap");
                observer.connection_refused("per-address");
                refuse_connection(stream);
                continue;
            }
            Some(Admit::Counted(slot)) => Some(slot),
            Some(Admit::Uncounted) | None => None,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let room = make_room(&slots, &mut arrivals, &went_idle, &*observer, &mut shutdown);
                match room.await {
                    Some(p) => p?,
                    None => {
                        drop((stream, addr_slot));
                        return drained().await;
                    }
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let standing = Arc::new(Standing::default());
        let conn = Connection {
            stream,
            remote,
            buf: BytesMut::with_capacity(4096),
            service: service.clone(),
            observer: observer.clone(),
            limits: limits.clone(),
            shutdown: shutdown.clone(),
            standing: standing.clone(),
            went_idle: went_idle.clone(),
        };
        // Moved into the task rather than made in it: dropped, and so marking the connection
        // closed, even if the task is aborted before it first runs.
        let closes = Closes(standing.clone());
        let task = tokio::spawn(async move {
            // All given back when the task ends, however it ends: returning, unwinding from
            // a panicking handler, aborted by eviction, or dropped with the runtime.
            let _permit = permit;
            let _addr_slot = addr_slot;
            let _closes = closes;
            conn.run().await;
        });
        arrivals.push(Arrival {
            standing,
            task: task.abort_handle(),
            remote,
        });
    }
}

/// Gets a slot for a new connection on a full worker: evicts the oldest evictable
/// connection and waits for its task to give its slot back, or, with none evictable, waits
/// for a slot, looking again whenever a connection goes idle. `None` if the server is
/// stopping meanwhile.
async fn make_room(
    slots: &Arc<Semaphore>,
    arrivals: &mut Arrivals,
    went_idle: &Notify,
    observer: &dyn Observer,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<io::Result<OwnedSemaphorePermit>> {
    loop {
        let evicted = match arrivals.evict_oldest() {
            Some((remote, state)) => {
                tracing::debug!(%remote, state, "connection evicted: worker at its connection cap");
                observer.connection_evicted(state);
                true
            }
            None => false,
        };
        tokio::select! {
            _ = stopped(shutdown) => return None,
            // After an eviction, the aborted task's slot comes back once the runtime has
            // dropped it; nothing else takes slots (only this loop acquires them).
            p = slots.clone().acquire_owned() => return Some(p.map_err(io::Error::other)),
            // Something may be evictable now. (A notification left from before, when nobody
            // was waiting, costs one more look.)
            _ = went_idle.notified(), if !evicted => {}
        }
    }
}

/// Where a connection stands, for eviction at the connection cap. The accept loop may evict
/// a connection only from `FRESH` or `IDLE`, the connection leaves those for `BUSY` when
/// request bytes arrive, and both moves are compare-and-swaps from the same values: a
/// connection that has begun a request can never be evicted, and an evicted one never
/// begins one.
#[derive(Debug)]
struct Standing(AtomicU8);

/// Accepted, no byte received yet.
const FRESH: u8 = 0;
/// Keep-alive, waiting for the next request, nothing of it received or buffered.
const IDLE: u8 = 1;
/// Reading a request, running its handler, or writing its response.
const BUSY: u8 = 2;
/// Chosen for eviction; its task is being aborted.
const EVICTED: u8 = 3;
/// Its task has ended.
const CLOSED: u8 = 4;

impl Default for Standing {
    fn default() -> Self {
        Standing(AtomicU8::new(FRESH))
    }
}

impl Standing {
    /// Request bytes arrived: `FRESH` or `IDLE` → `BUSY`. `false` if the connection was
    /// evicted first, when it must stop.
    fn begin(&self) -> bool {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            match now {
                BUSY => return true,
                FRESH | IDLE => {}
                _ => return false,
            }
            match self
                .0
                .compare_exchange(now, BUSY, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(actual) => now = actual,
            }
        }
    }

    /// A request answered and nothing of the next one buffered: `BUSY` → `IDLE`. Whether it
    /// moved (a `FRESH` connection stays fresh).
    fn idle(&self) -> bool {
        self.0
            .compare_exchange(BUSY, IDLE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// `FRESH` or `IDLE` → `EVICTED`; which of the two it was, or `None` if it was neither.
    fn evict(&self) -> Option<&'static str> {
        let mut now = self.0.load(Ordering::Acquire);
        loop {
            let state = match now {
                FRESH => "fresh",
                IDLE => "idle",
                _ => return None,
            };
            match self
                .0
                .compare_exchange(now, EVICTED, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(state),
                Err(actual) => now = actual,
            }
        }
    }

    /// Evicted or ended: nothing more to do with it.
    fn gone(&self) -> bool {
        self.0.load(Ordering::Acquire) >= EVICTED
    }
}

/// Marks a connection `CLOSED` when its task ends, however it ends.
struct Closes(Arc<Standing>);

impl Drop for Closes {
    fn drop(&mut self) {
        self.0 .0.store(CLOSED, Ordering::Release);
    }
}

/// One connection of an accept loop, in [`Arrivals`].
struct Arrival {
    standing: Arc<Standing>,
    task: AbortHandle,
    remote: SocketAddr,
}

/// An accept loop's connections in the order they arrived, for evicting the oldest. Entries
/// of connections that ended stay until they are met (at the front, or in a scan) or the
/// queue outgrows twice the worker's cap, so that a connection's end costs the loop nothing.
struct Arrivals {
    queue: VecDeque<Arrival>,
    /// Past this many entries, the ended ones are swept out.
    sweep_at: usize,
}

impl Arrivals {
    fn new(max_connections: usize) -> Arrivals {
        Arrivals {
            queue: VecDeque::new(),
            sweep_at: max_connections.max(1).saturating_mul(2),
        }
    }

    fn push(&mut self, a: Arrival) {
        if self.queue.len() >= self.sweep_at {
            self.queue.retain(|a| !a.standing.gone());
        }
        self.queue.push_back(a);
    }

    /// Evicts the oldest connection that is fresh or idle and aborts its task (which closes
    /// its socket and gives back its slot); its address and which it was. Busy connections
    /// are passed over and keep their place. The scan is linear in the busy connections older
    /// than the first evictable one: a few atomic loads each, and only when the worker is full.
    fn evict_oldest(&mut self) -> Option<(SocketAddr, &'static str)> {
        while self.queue.front().is_some_and(|a| a.standing.gone()) {
            self.queue.pop_front();
        }
        let mut i = 0;
        while i < self.queue.len() {
            let a = &self.queue[i];
            if a.standing.gone() {
                self.queue.remove(i);
                continue;
            }
            if let Some(state) = a.standing.evict() {
                // Only now, with the connection unable to begin a request: it was waiting
                // for bytes, and is dropped there.
                a.task.abort();
                let remote = a.remote;
                self.queue.remove(i);
                return Some((remote, state));
            }
            i += 1;
        }
        None
    }
}

/// Answers a connection over a cap with `503 Service Unavailable` and closes it, from the
/// accept loop and without waiting for anything: one non-blocking `send` into the empty
/// buffer of a new socket (which takes these 200 bytes whole), a FIN, and the close. Nothing
/// is read and nothing lingers: such a connection must cost next to nothing however many a
/// client opens, and lingering (as `Connection::linger` does for a refused request) would let
/// a flood of them hold descriptors. A request that came in before the close, or comes
/// after it, makes the kernel reset the connection behind the 503 already sent; a Linux
/// client still reads what arrived before the reset, and iPXE takes data as it arrives.
fn refuse_connection(stream: TcpStream) {
    const WHY: &str = "too many connections from this address\n";
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    let mut out = Vec::with_capacity(256);
    wire::response_head(
        &mut out,
        StatusCode::SERVICE_UNAVAILABLE,
        &headers,
        Some(WHY.len() as u64),
        true,
        &http_date(),
    );
    out.extend_from_slice(WHY.as_bytes());
    // Straight on the socket: tokio's `try_write` would refuse a stream its reactor has not
    // yet seen writable. MSG_NOSIGNAL: a client already gone is an EPIPE, not a SIGPIPE.
    // Errors are the client's and change nothing: the connection is closed either way.
    let sock = socket2::SockRef::from(&stream);
    let _ = sock.send_with_flags(&out, libc::MSG_NOSIGNAL);
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

struct Connection<S> {
    stream: TcpStream,
    remote: SocketAddr,
    /// Bytes read and not yet consumed: the rest of a head, a body, or pipelined requests.
    buf: BytesMut,
    service: S,
    observer: Arc<dyn Observer>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
    /// Fresh, idle or busy, for the accept loop's eviction.
    standing: Arc<Standing>,
    /// Told when this connection goes idle (see `make_room`).
    went_idle: Arc<Notify>,
}

/// What reading a request came to.
enum Next {
    Request(Head, Bytes),
    /// The client closed, went idle, or the server is stopping: close quietly.
    Close,
    /// Refuse with this status and close.
    Refuse(StatusCode, String),
}

impl<S, B> Connection<S>
where
    S: Service<Request<Body>, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Display + Send,
{
    async fn run(mut self) {
        let mut served = 0usize;
        loop {
            let (head, body) = match self.next_request().await {
                Next::Request(h, b) => (h, b),
                Next::Close => return,
                Next::Refuse(status, why) => {
                    tracing::debug!(remote = %self.remote, %status, %why, "request refused");
                    self.observer.request_refused(status);
                    self.refuse(status, &why).await;
                    return;
                }
            };
            served += 1;
            let last = served >= self.limits.max_requests.max(1);
            let close = !head.keep_alive || last || *self.shutdown.borrow();
            match self.respond(head, body, close).await {
                Ok(()) if !close => {}
                Ok(()) if last => {
                    // A client at the cap is likely pipelining more: let it read the answer
                    // rather than a reset.
                    self.linger().await;
                    return;
                }
                Ok(()) => {
                    let _ = self.stream.shutdown().await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(remote = %self.remote, error = %e, "connection ended");
                    if e.kind() == io::ErrorKind::TimedOut {
                        self.reset();
                    }
                    return;
                }
            }
        }
    }

    /// Makes the close that follows a reset: a client that stopped reading has no use for the
    /// rest of its response, and a graceful close would leave the kernel holding the unsent
    /// bytes (megabytes, for a file) and retrying them for minutes.
    fn reset(&self) {
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }

    async fn next_request(&mut self) -> Next {
        // The request clock starts with the request's first byte, not with the idle wait.
        let mut started = (!self.buf.is_empty()).then(tokio::time::Instant::now);
        // Between requests with nothing buffered, a full worker may evict this connection;
        // with a pipelined request already here it stays busy.
        if started.is_none() && self.standing.idle() {
            self.went_idle.notify_one();
        }
        let head = loop {
            match wire::parse_head(&self.buf) {
                Ok(Some(h)) => break h,
                Ok(None) => {}
                Err(e) => return Next::Refuse(e.status(), e.to_string()),
            }
            // Between requests the idle timeout applies; once a request has begun, the
            // request timeout runs from its first byte.
            let deadline = match started {
                None => tokio::time::Instant::now() + self.limits.idle,
                Some(t) => t + self.limits.request,
            };
            let mut shutdown = self.shutdown.clone();
            let idle = self.buf.is_empty();
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)) => r,
                _ = stopped(&mut shutdown), if idle => return Next::Close,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
                Ok(Ok(_)) => {
                    if started.is_none() && !self.standing.begin() {
                        // Evicted while waiting; the evictor is aborting this task.
                        return Next::Close;
                    }
                    started.get_or_insert_with(tokio::time::Instant::now);
                }
                Err(_) if idle => return Next::Close,
                Err(_) => {
                    return Next::Refuse(
                        StatusCode::REQUEST_TIMEOUT,
                        "request not received in time".into(),
                    )
                }
            }
        };
        // Whether this request may carry a body at all, and how large, is known from its
        // head: a body that will not be taken is refused before a byte of it is read (and
        // before a `100 Continue` invites it).
        let max_body = match head.framing {
            Framing::None => 0,
            Framing::Length(_) | Framing::Chunked => {
                match self.limits.body_limit(&head.method, &head.target) {
                    Some(max) => max,
                    None => {
                        return Next::Refuse(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "this request takes no body".into(),
                        )
                    }
                }
            }
        };
        let _ = self.buf.split_to(head.len);
        let deadline = started.unwrap_or_else(tokio::time::Instant::now) + self.limits.request;
        let body = match head.framing {
            Framing::None => Bytes::new(),
            Framing::Length(n) if n > max_body => {
                let e = WireError::BodyTooLarge(max_body);
                return Next::Refuse(e.status(), e.to_string());
            }
            Framing::Length(n) => {
                let n = n as usize;
                if head.expect_continue && self.buf.len() < n && self.continue_100().await.is_err()
                {
                    return Next::Close;
                }
                while self.buf.len() < n {
                    self.buf.reserve(n - self.buf.len());
                    if let Err(instead) = self.read_body(deadline).await {
                        return instead;
                    }
                }
                self.buf.split_to(n).freeze()
            }
            Framing::Chunked => {
                if head.expect_continue && self.buf.is_empty() && self.continue_100().await.is_err()
                {
                    return Next::Close;
                }
                let mut decoder = ChunkedDecoder::new(max_body);
                let mut out = Vec::new();
                loop {
                    match decoder.decode(&self.buf, &mut out) {
                        Ok(n) => {
                            let _ = self.buf.split_to(n);
                        }
                        Err(e) => return Next::Refuse(e.status(), e.to_string()),
                    }
                    if decoder.is_done() {
                        break;
                    }
                    if let Err(instead) = self.read_body(deadline).await {
                        return instead;
                    }
                }
                Bytes::from(out)
            }
        };
        Next::Request(head, body)
    }

    /// One more read of a request body; `Err` says what to do instead (close, or 408).
    async fn read_body(&mut self, deadline: tokio::time::Instant) -> Result<(), Next> {
        match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(Next::Refuse(
                StatusCode::REQUEST_TIMEOUT,
                "request body not received in time".into(),
            )),
            Ok(Ok(0)) | Ok(Err(_)) => Err(Next::Close),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn continue_100(&mut self) -> io::Result<()> {
        self.write(b"HTTP/1.1 100 Continue\r\n\r\n").await
    }

    /// Writes `data`, dropping a client that takes no byte of it for `stall`.
    async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        sendfile::write_all(&mut self.stream, data, self.limits.stall).await
    }

    async fn respond(&mut self, head: Head, body: Bytes, close: bool) -> io::Result<()> {
        let request = match build_request(head, body, self.remote) {
            Ok(r) => r,
            Err(why) => {
                self.refuse(StatusCode::BAD_REQUEST, why).await;
                return Err(io::Error::other(why));
            }
        };
        let method = request.method().clone();
        let response = match self.service.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let (mut parts, body) = response.into_parts();
        let date = http_date();
        let mut out = Vec::with_capacity(512);
        if let Some(file) = parts.extensions.remove::<SendFile>() {
            wire::response_head(
                &mut out,
                parts.status,
                &parts.headers,
                Some(file.count),
                close,
                &date,
            );
            return sendfile::send(
                &mut self.stream,
                &out,
                &file,
                &*self.observer,
                self.limits.stall,
            )
            .await;
        }
        let bytes = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::error!(error = %e, "response body failed");
                self.refuse(StatusCode::INTERNAL_SERVER_ERROR, "response failed")
                    .await;
                return Err(io::Error::other("response body failed"));
            }
        };
        let has_body = wire::has_body(&method, parts.status);
        let length = if has_body {
            Some(bytes.len() as u64)
        } else if method == http::Method::HEAD {
            // HEAD reports the length a GET would have had, which the service left in the
            // headers (axum does).
            parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok())
        } else {
            None
        };
        wire::response_head(&mut out, parts.status, &parts.headers, length, close, &date);
        if has_body {
            out.extend_from_slice(&bytes);
        }
        self.write(&out).await
    }

    /// Sends an error response and closes, lingering (see `linger`) so that the client sees
    /// the answer rather than a reset.
    async fn refuse(&mut self, status: StatusCode, why: &str) {
        let mut out = Vec::with_capacity(256);
        let text = format!("{why}\n");
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        wire::response_head(
            &mut out,
            status,
            &headers,
            Some(text.len() as u64),
            true,
            &http_date(),
        );
        out.extend_from_slice(text.as_bytes());
        if let Err(e) = self.write(&out).await {
            if e.kind() == io::ErrorKind::TimedOut {
                self.reset();
            }
            return;
        }
        self.linger().await;
    }

    /// Closes after the last answer: the write side first, then what the client still sends
    /// is read and dropped (up to 1 MiB, for up to 2 s) until it closes too. Closing with
    /// unread data would make the kernel send a reset, and the client could lose our answer
    /// to it.
    async fn linger(&mut self) {
        let _ = self.stream.shutdown().await;
        let mut sink = [0u8; 4096];
        let mut drained = 0usize;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while drained < 1 << 20 {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
    }
}

fn build_request(
    head: Head,
    body: Bytes,
    remote: SocketAddr,
) -> Result<Request<Body>, &'static str> {
    let uri: http::Uri = head
        .target
        .parse()
        .map_err(|_| "malformed request target")?;
    let mut req = Request::builder()
        .method(head.method)
        .uri(uri)
        .version(if head.minor == 0 {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        })
        .body(Body::from(body))
        .map_err(|_| "malformed request")?;
    *req.headers_mut() = head.headers;
    req.extensions_mut().insert(ConnectInfo(remote));
    Ok(req)
}

/// Resolves once the server is stopping (or its sender is gone).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// The `Date` header, formatted once per second per thread instead of once per response.
fn http_date() -> String {
    use std::cell::RefCell;
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        c.1.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files;
    use axum::extract::Path;
    use axum::http::{HeaderMap, Method};
    use axum::routing::{get, post};
    use axum::Router;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    /// Records what the transport reports.
    #[derive(Default)]
    struct Recorder {
        bytes: AtomicU64,
        refused: Mutex<Vec<u16>>,
        connections_refused: Mutex<Vec<&'static str>>,
        evicted: Mutex<Vec<&'static str>>,
        accept_failed: Mutex<Vec<&'static str>>,
    }

    impl Observer for Recorder {
        fn bytes_sent(&self, n: u64) {
            self.bytes.fetch_add(n, Ordering::Relaxed);
        }
        fn request_refused(&self, status: StatusCode) {
            self.refused.lock().unwrap().push(status.as_u16());
        }
        fn connection_refused(&self, reason: &'static str) {
            self.connections_refused.lock().unwrap().push(reason);
        }
        fn connection_evicted(&self, state: &'static str) {
            self.evicted.lock().unwrap().push(state);
        }
        fn accept_failed(&self, reason: &'static str) {
            self.accept_failed.lock().unwrap().push(reason);
        }
    }

    fn app(root: std::path::PathBuf) -> Router {
        Router::new()
            .route(
                "/f/{*path}",
                get(
                    move |Path(p): Path<String>, method: Method, headers: HeaderMap| async move {
                        files::serve(&root, &p, &method, &headers)
                    },
                ),
            )
            .route("/events", post(|body: Bytes| async move { body }))
            .route("/echo", post(|body: Bytes| async move { body }))
            .route("/ok", get(|| async { "ok" }))
            // A handler that panics: the connection's task ends by unwinding (tokio prints the
            // panic; the test that asks for it expects that).
            .route(
                "/panic",
                get(|| async {
                    panic!("handler panicked on purpose");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            // An in-memory body larger than any socket buffer.
            .route("/mem", get(|| async { Bytes::from(vec![7u8; MEM]) }))
    }

    const MEM: usize = 16 << 20;
    const HUGE: u64 = 16 << 20;

    struct Running {
        addr: SocketAddr,
        recorder: Arc<Recorder>,
        stop: watch::Sender<bool>,
        server: tokio::task::JoinHandle<io::Result<()>>,
        _dir: tempfile::TempDir,
    }

    /// A server on a loopback port with `limits`, serving a temp directory holding `a.bin`
    /// (16 bytes), `big.bin` (1 MiB, so that it is sent corked) and `huge.bin` (16 MiB of
    /// zeros, sparse).
    async fn start(limits: Limits) -> Running {
        start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), limits)
    }

    /// [`start`] on a listener of the caller's.
    fn start_on(listener: TcpListener, limits: Limits) -> Running {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"0123456789abcdef").unwrap();
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), big).unwrap();
        // Sparse: larger than any socket buffer, and costs no disk.
        std::fs::File::create(dir.path().join("huge.bin"))
            .unwrap()
            .set_len(HUGE)
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve(
            listener,
            app(dir.path().to_path_buf()),
            recorder.clone(),
            limits,
            rx,
        ));
        Running {
            addr,
            recorder,
            stop,
            server,
            _dir: dir,
        }
    }

    /// Sends `req` (which should end the connection) and reads the answer to EOF.
    async fn exchange(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    }

    fn count(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len())
            .filter(|w| *w == needle.as_bytes())
            .count()
    }

    #[tokio::test]
    async fn pipelined_requests_file_bodies_and_observer() {
        let r = start(Limits::default()).await;
        let out = exchange(
            r.addr,
            b"GET /f/a.bin HTTP/1.1\r\nHost: h\r\n\r\n\
              GET /f/a.bin HTTP/1.1\r\nHost: h\r\nRange: bytes=2-5\r\n\r\n\
              HEAD /f/a.bin HTTP/1.1\r\nHost: h\r\n\r\n\
              POST /events HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 3, "{text}");
        assert_eq!(count(&out, "HTTP/1.1 206 Partial Content\r\n"), 1, "{text}");
        assert!(
            text.contains("\r\n\r\n0123456789abcdefHTTP/1.1 206"),
            "{text}"
        );
        assert!(text.contains("content-range: bytes 2-5/16\r\n"), "{text}");
        assert!(text.contains("\r\n\r\n2345HTTP/1.1 200"), "{text}");
        assert!(text.ends_with("connection: close\r\n\r\nhello"), "{text}");
        // File bodies only: 16 + 4 bytes; HEAD and the echo are not file bodies.
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 20);
        assert!(r.recorder.refused.lock().unwrap().is_empty());

        let out = exchange(
            r.addr,
            b"GET /f/big.bin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        )
        .await;
        let body_at = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let want: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
        assert!(out[..body_at].starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(out[body_at..] == want[..], "big body differs");
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 20 + (1 << 20));

        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn refusals_reach_the_observer_and_close() {
        let r = start(Limits {
            request: Duration::from_millis(300),
            ..Limits::default()
        })
        .await;
        let out = exchange(r.addr, b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
        let out = exchange(
            r.addr,
            b"POST /events HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n",
        )
        .await;
        assert!(out.starts_with(b"HTTP/1.1 413 Payload Too Large\r\n"));
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(wire::MAX_HEAD));
        let out = exchange(r.addr, long.as_bytes()).await;
        assert!(out.starts_with(b"HTTP/1.1 431 "));
        // Half a head, then nothing: the request timeout answers 408.
        let out = exchange(r.addr, b"GET / HTTP/1.1\r\nHo").await;
        assert!(out.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"));
        assert_eq!(
            *r.recorder.refused.lock().unwrap(),
            vec![400, 413, 431, 408]
        );
        assert_eq!(r.recorder.bytes.load(Ordering::Relaxed), 0);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn serve_on_threads_answers_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.bin"), b"abc").unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = watch::channel(false);
        let server = tokio::spawn(serve_on_threads(
            listener,
            app(dir.path().to_path_buf()),
            Arc::new(crate::NoObserver),
            Limits::default(),
            rx,
            2,
        ));
        for _ in 0..4 {
            let out = exchange(
                addr,
                b"GET /f/a.bin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            )
            .await;
            assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
            assert!(out.ends_with(b"\r\n\r\nabc"));
        }
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// Sends `req` and reads until the server closes, or `within` passes (then panics).
    async fn exchange_within(addr: SocketAddr, req: &[u8], within: Duration) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(req).await.unwrap();
        let mut out = Vec::new();
        match tokio::time::timeout(within, s.read_to_end(&mut out)).await {
            Ok(r) => {
                r.unwrap();
            }
            Err(_) => panic!(
                "no answer and close within {within:?}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
        out
    }

    #[tokio::test]
    async fn bodies_are_refused_at_the_head_unless_the_limits_allow_them() {
        let r = start(Limits::default()).await;
        // Heads only: the answer must come without the body ever being sent, well inside
        // the request timeout (30 s) that waiting for it would run into.
        let refused = [
            "GET /f/a.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "GET /f/a.bin HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /f/a.bin HTTP/1.0\r\nContent-Length: 5\r\n\r\n",
            "HEAD /f/a.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            // POST, but not to /events.
            "POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "POST /eventsx HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "POST /events/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "POST /EVENTS HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            // /events, but not POST.
            "PUT /events HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            "GET /events HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n",
            // With 100-continue the client waits for us: it must get the refusal, not 100.
            "POST /echo HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
        ];
        for req in refused {
            let out = exchange_within(r.addr, req.as_bytes(), Duration::from_secs(3)).await;
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
                "{req:?}: {text}"
            );
            assert!(text.contains("connection: close\r\n"), "{req:?}: {text}");
        }
        assert_eq!(
            *r.recorder.refused.lock().unwrap(),
            vec![413; refused.len()]
        );
        // Allowed: POST /events (with a query too), and an empty body anywhere.
        let out = exchange(
            r.addr,
            b"POST /events?token=t HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello\
              POST /events HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n\
              GET /f/a.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&out);
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 4, "{text}");
        assert!(text.contains("\r\n\r\nhelloHTTP/1.1 200"), "{text}");
        assert!(text.contains("\r\n\r\nhiHTTP/1.1 200"), "{text}");
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_keep_alive_connection_serves_at_most_the_request_cap() {
        let r = start(Limits::default()).await;
        let cap = 10_000;
        // One more than the cap, pipelined; the last asks to close, so that without a cap the
        // connection ends after it.
        let mut req = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n".repeat(cap);
        req.extend_from_slice(b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
        let s = TcpStream::connect(r.addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let writer = tokio::spawn(async move {
            // The server may close before it has read it all.
            let _ = wr.write_all(&req).await;
            wr
        });
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(60), rd.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        let _ = writer.await;
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), cap);
        assert_eq!(count(&out, "connection: close\r\n"), 1);
        assert!(out.ends_with(b"connection: close\r\n\r\nok"));
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// A blocking client socket with a small receive buffer, so that the server's sends stall
    /// as soon as its own socket buffer is full.
    fn small_window_client(addr: SocketAddr) -> std::net::TcpStream {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_recv_buffer_size(4096).unwrap();
        s.connect(&addr.into()).unwrap();
        s.into()
    }

    /// How a test client reads a response.
    #[derive(Clone, Copy, Debug)]
    enum Reader {
        /// Reads nothing (the window stays at zero) for this long.
        Never(Duration),
        /// Reads one byte every `.0` for `.1`.
        Trickle(Duration, Duration),
        /// Reads `.0` bytes as fast as it can, then nothing for `.1`, until the end.
        Bursts(usize, Duration),
    }

    /// Asks for `target` on a small-window client and reads as `how` says, then as fast as it
    /// can until the server ends the connection; returns the bytes received (head included)
    /// and whether the connection ended in a reset.
    async fn slow_download(addr: SocketAddr, target: &'static str, how: Reader) -> (u64, bool) {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = small_window_client(addr);
            let req = format!("GET {target} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut total = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            let ended = |r: std::io::Result<usize>, total| match r {
                Ok(0) => Some((total, false)),
                Ok(_) => None,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Some((total, true)),
                Err(e) => panic!("read failed after {total} bytes: {e}"),
            };
            match how {
                Reader::Never(d) => std::thread::sleep(d),
                Reader::Trickle(every, d) => {
                    let until = std::time::Instant::now() + d;
                    while std::time::Instant::now() < until {
                        std::thread::sleep(every);
                        let r = s.read(&mut buf[..1]);
                        if let Ok(n) = r {
                            total += n as u64;
                        }
                        if let Some(end) = ended(r, total) {
                            return end;
                        }
                    }
                }
                Reader::Bursts(size, pause) => loop {
                    let mut got = 0;
                    while got < size {
                        let r = s.read(&mut buf);
                        if let Ok(n) = r {
                            got += n;
                            total += n as u64;
                        }
                        if let Some(end) = ended(r, total) {
                            return end;
                        }
                    }
                    std::thread::sleep(pause);
                },
            }
            loop {
                let r = s.read(&mut buf);
                if let Ok(n) = r {
                    total += n as u64;
                }
                if let Some(end) = ended(r, total) {
                    return end;
                }
            }
        })
        .await
        .unwrap()
    }

    /// Clients that read nothing, or one byte at a time, are dropped by the stall limit,
    /// whether the body is a file (sendfile) or in memory; had they not been, reading as fast
    /// as they can afterwards would bring them the whole body. They are reset, so that what
    /// the server had queued for them (megabytes) is thrown away rather than delivered later.
    #[tokio::test]
    async fn clients_that_do_not_read_are_dropped_by_the_stall_limit() {
        let stall = Duration::from_millis(400);
        let r = start(Limits {
            stall,
            ..Limits::default()
        })
        .await;
        let wait = stall * 5;
        let (never, trickle) = (Reader::Never(wait), Reader::Trickle(stall / 4, wait));
        // At once, each on its own blocking thread.
        let results = tokio::join!(
            slow_download(r.addr, "/f/huge.bin", never),
            slow_download(r.addr, "/f/huge.bin", trickle),
            slow_download(r.addr, "/mem", never),
            slow_download(r.addr, "/mem", trickle),
        );
        let results = [
            ("/f/huge.bin", HUGE, never, results.0),
            ("/f/huge.bin", HUGE, trickle, results.1),
            ("/mem", MEM as u64, never, results.2),
            ("/mem", MEM as u64, trickle, results.3),
        ];
        for (target, size, how, (got, reset)) in results {
            assert!(got < size, "{target} {how:?}: the whole body arrived");
            assert!(
                reset,
                "{target} {how:?}: closed, not reset, after {got} bytes"
            );
            assert!(
                got < 1 << 20,
                "{target} {how:?}: {got} bytes after the stall"
            );
        }
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// The stall limit is about progress: a client that reads in bursts, pausing for less than
    /// the limit each time but for much longer in all, gets its whole body.
    #[tokio::test]
    async fn clients_that_keep_reading_slowly_are_not_dropped() {
        let stall = Duration::from_millis(1500);
        let r = start(Limits {
            stall,
            ..Limits::default()
        })
        .await;
        // 2 MiB a burst: enough of what the server's socket holds to let the server write
        // again; the eight bursts and their pauses take longer than the limit.
        let bursts = Reader::Bursts(2 << 20, stall / 3);
        let (mem, file) = tokio::join!(
            slow_download(r.addr, "/mem", bursts),
            slow_download(r.addr, "/f/huge.bin", bursts),
        );
        for (target, size, (got, reset)) in [("/mem", MEM as u64, mem), ("/f/huge.bin", HUGE, file)]
        {
            assert!(!reset, "{target}: reset after {got} bytes");
            assert!(
                got > size,
                "{target}: only {got} bytes of {size} and a head"
            );
        }
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn body_routes_from_the_limits_and_their_caps() {
        let r = start(Limits {
            bodies: vec![
                BodyRoute::new(Method::POST, "/echo", 4),
                BodyRoute::new(Method::PUT, "/f/", 0),
            ],
            ..Limits::default()
        })
        .await;
        let out = exchange(
            r.addr,
            b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\n\r\nabcd\
              POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
              2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n",
        )
        .await;
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 2);
        for req in [
            // Over the cap, by length and by chunks.
            &b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"[..],
            b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\n\r\n",
            // No longer listed.
            b"POST /events HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n",
            // Under a subtree, but with a dot segment.
            b"PUT /f/../echo HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n",
            // With the body already sent: still the answer, not a reset.
            b"GET /f/a.bin HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        ] {
            let out = exchange_within(r.addr, req, Duration::from_secs(3)).await;
            assert!(
                out.starts_with(b"HTTP/1.1 413 Payload Too Large\r\n"),
                "{}",
                String::from_utf8_lossy(&out)
            );
        }
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    #[test]
    fn accept_errors_back_off_unless_they_are_one_connections() {
        let of = |errno| accept_error(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EMFILE), ("EMFILE", true));
        assert_eq!(of(libc::ENFILE), ("ENFILE", true));
        assert_eq!(of(libc::ENOBUFS), ("ENOBUFS", true));
        assert_eq!(of(libc::ENOMEM), ("ENOMEM", true));
        for errno in [
            libc::ECONNABORTED,
            libc::EPROTO,
            libc::EPERM,
            libc::ENETUNREACH,
        ] {
            assert_eq!(of(errno), ("connection", false), "{errno}");
        }
        assert_eq!(of(libc::EBADF), ("other", true));
        assert_eq!(accept_error(&io::Error::other("?")), ("other", true));
    }

    #[test]
    fn body_routes_match_method_and_path() {
        let limits = Limits::default();
        let post = |t: &str| limits.body_limit(&Method::POST, t);
        assert_eq!(post("/events"), Some(1 << 20));
        assert_eq!(post("/events?token=abc&x=/y"), Some(1 << 20));
        assert_eq!(
            post("http://pxe.example:8080/events?token=abc"),
            Some(1 << 20)
        );
        assert_eq!(limits.body_limit(&Method::PUT, "/events"), None);
        for t in [
            "/events/",
            "/events/x",
            "/eventsx",
            "/Events",
            "/%65vents",
            "/./events",
            "events",
            "*",
            "pxe.example:80",
            "http://pxe.example",
            "http://pxe.example?/events",
            "http://pxe.example/x/events",
        ] {
            assert_eq!(post(t), None, "{t}");
        }
        let tree = BodyRoute::new(Method::PUT, "/up/", 9);
        assert!(tree.matches(&Method::PUT, "/up/"));
        assert!(tree.matches(&Method::PUT, "/up/a/b.bin?x"));
        assert!(tree.matches(&Method::PUT, "http://h/up/a"));
        assert!(!tree.matches(&Method::PUT, "/up"));
        assert!(!tree.matches(&Method::PUT, "/up/../secret"));
        assert!(!tree.matches(&Method::PUT, "/up/./a"));
        assert!(!tree.matches(&Method::POST, "/up/a"));
        assert_eq!(target_path("/a/b?q#f"), Some("/a/b"));
        assert_eq!(target_path("http://h:1/a?q"), Some("/a"));
        assert_eq!(target_path("http://h?q"), Some("/"));
        assert_eq!(target_path("*"), None);
    }

    #[tokio::test]
    async fn the_request_cap_closes_after_the_last_answer() {
        let r = start(Limits {
            max_requests: 2,
            ..Limits::default()
        })
        .await;
        // One at a time: the second answer says close, and the connection ends after it.
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        let mut all = Vec::new();
        for _ in 0..2 {
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n")
                .await
                .unwrap();
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            all.extend_from_slice(&buf[..n]);
        }
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        assert!(rest.is_empty());
        assert_eq!(count(&all, "HTTP/1.1 200 OK\r\n"), 2);
        assert_eq!(count(&all, "connection: close\r\n"), 1);
        assert!(all.ends_with(b"connection: close\r\n\r\nok"));
        // 0 counts as 1.
        let r0 = start(Limits {
            max_requests: 0,
            ..Limits::default()
        })
        .await;
        let out = exchange(
            r0.addr,
            b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n",
        )
        .await;
        assert_eq!(count(&out, "HTTP/1.1 200 OK\r\n"), 1);
        for r in [r, r0] {
            r.stop.send(true).unwrap();
            r.server.await.unwrap().unwrap();
        }
    }

    /// Opens a connection and has one keep-alive request answered on it, so that the server
    /// has accepted (and counted) it; `Err` with what came instead, such as a 503.
    async fn held(addr: SocketAddr) -> Result<TcpStream, String> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // A refused connection may be closed before the request is written: then the write
        // fails, and the read shows why.
        let _ = s.write_all(b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n").await;
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("no answer within 5 s");
            match read {
                Ok(0) => return Err(String::from_utf8_lossy(&got).into_owned()),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => return Err(format!("{e} after {:?}", String::from_utf8_lossy(&got))),
            }
            if got.starts_with(b"HTTP/1.1 200 OK\r\n") && got.ends_with(b"\r\n\r\nok") {
                return Ok(s);
            }
        }
    }

    /// Connects, sends `req` (maybe nothing) and reads until the server closes, within 5 s; a
    /// reset after the answer ends the read too.
    async fn read_all(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        if !req.is_empty() {
            let _ = s.write_all(req).await;
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .unwrap_or_else(|_| {
                    panic!("not closed within 5 s: {:?}", String::from_utf8_lossy(&out))
                });
            match read {
                Ok(0) | Err(_) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    }

    fn assert_refused_503(out: &[u8]) {
        let text = String::from_utf8_lossy(out);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text:?}"
        );
        assert!(text.contains("\r\nretry-after: 1\r\n"), "{text:?}");
        assert!(text.contains("\r\nconnection: close\r\n"), "{text:?}");
        assert_eq!(count(out, "HTTP/1.1 "), 1, "{text:?}");
    }

    /// Holds exactly `n` connections and then sees the next refused, retrying for up to 5 s
    /// while the server is still releasing slots of connections that ended.
    async fn holds_exactly(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
        let until = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mut all = Vec::new();
            let mut last = Ok(());
            for _ in 0..n {
                match held(addr).await {
                    Ok(s) => all.push(s),
                    Err(e) => {
                        last = Err(e);
                        break;
                    }
                }
            }
            if all.len() == n {
                assert_refused_503(&read_all(addr, b"").await);
                return all;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "only {} of {n} connections could be held: {last:?}",
                all.len()
            );
            drop(all);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Over the per-address cap a connection is answered 503 at once: with no request sent
    /// (so nothing waited for one), and with one sent (which is not served).
    #[tokio::test]
    async fn connections_over_the_per_address_cap_are_refused_at_once() {
        let r = start(Limits {
            max_connections_per_addr: 2,
            ..Limits::default()
        })
        .await;
        let mut a = held(r.addr).await.unwrap();
        let b = held(r.addr).await.unwrap();
        assert_refused_503(&read_all(r.addr, b"").await);
        let out = read_all(r.addr, b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert_refused_503(&out);
        assert!(!out.ends_with(b"\r\n\r\nok"));
        assert_eq!(
            *r.recorder.connections_refused.lock().unwrap(),
            vec!["per-address"; 2]
        );
        assert!(r.recorder.refused.lock().unwrap().is_empty());
        // The connections held go on being served.
        a.write_all(b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        a.read_to_end(&mut out).await.unwrap();
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        // Both slots come back once the server has seen the connections end.
        drop(b);
        let again = holds_exactly(r.addr, 2).await;
        drop(again);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// Waits until the server has closed `s` (EOF or reset); panics if it is still open after
    /// 5 s (a hang, not a timing assertion: the close is due at once).
    async fn closed_by_server(s: &mut TcpStream) {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(n)) => panic!("got {:?}", String::from_utf8_lossy(&buf[..n])),
            Err(_) => panic!("not closed within 5 s"),
        }
    }

    /// Whether `s` is still open with nothing to read: the server has neither closed it nor
    /// written to it.
    fn still_open(s: &TcpStream) -> bool {
        let mut buf = [0u8; 1];
        matches!(s.try_read(&mut buf), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// The bench/abuse attack in small: silent connections fill the worker's slots, and a
    /// new connection is served anyway, by closing the oldest silent one. (Before eviction
    /// the new one waited in the listen queue until a silent one timed out: 75 s.)
    #[tokio::test]
    async fn silent_connections_at_the_cap_make_room_for_a_new_one() {
        let r = start(Limits {
            max_connections: 4,
            ..Limits::default()
        })
        .await;
        // Accepted in the order they connect: the listen queue is first in, first out.
        let mut silent = Vec::new();
        for _ in 0..4 {
            silent.push(TcpStream::connect(r.addr).await.unwrap());
        }
        let out = exchange_within(
            r.addr,
            b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(
            out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.ends_with(b"\r\n\r\nok"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        // The oldest went, and only it.
        closed_by_server(&mut silent[0]).await;
        assert!(silent[1..].iter().all(still_open));
        assert_eq!(*r.recorder.evicted.lock().unwrap(), vec!["fresh"]);
        // Again, with a slot free after the close: nothing more is evicted.
        let out = exchange_within(
            r.addr,
            b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(out.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(r.recorder.evicted.lock().unwrap().len() <= 2);
        drop(silent);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// Keep-alive connections waiting for their next request are evictable too, oldest
    /// first; the others go on being served.
    #[tokio::test]
    async fn idle_keep_alive_connections_are_evicted_oldest_first() {
        let r = start(Limits {
            max_connections: 4,
            ..Limits::default()
        })
        .await;
        let mut idle = Vec::new();
        for _ in 0..4 {
            idle.push(held(r.addr).await.unwrap());
        }
        let fifth = held(r.addr).await.unwrap();
        closed_by_server(&mut idle[0]).await;
        assert_eq!(*r.recorder.evicted.lock().unwrap(), vec!["idle"]);
        for mut s in idle.into_iter().skip(1).chain([fifth]) {
            s.write_all(b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.ends_with(b"\r\n\r\nok"),
                "{:?}",
                String::from_utf8_lossy(&out)
            );
        }
        assert_eq!(*r.recorder.evicted.lock().unwrap(), vec!["idle"]);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// A download a client has stopped reading (for now): the server is in the middle of
    /// sending `huge.bin` with `sendfile`. `go` lets the client read it all; the result is
    /// the bytes received and whether the connection ended in a reset.
    struct StalledDownload {
        go: std::sync::mpsc::Sender<()>,
        done: tokio::task::JoinHandle<(u64, bool)>,
    }

    /// Starts a [`StalledDownload`] and returns once the server has begun sending its body
    /// (`recorder` heard file bytes leave), so that its connection is busy.
    async fn stalled_download(addr: SocketAddr, recorder: &Recorder) -> StalledDownload {
        let before = recorder.bytes.load(Ordering::Relaxed);
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let done = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = small_window_client(addr);
            s.write_all(b"GET /f/huge.bin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
                .unwrap();
            // Until told (or the test is gone), nothing is read.
            let _ = wait.recv();
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => return (total, false),
                    Ok(n) => total += n as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                        return (total, true)
                    }
                    Err(e) => panic!("read failed after {total} bytes: {e}"),
                }
            }
        });
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while recorder.bytes.load(Ordering::Relaxed) == before {
            assert!(
                tokio::time::Instant::now() < until,
                "the download did not start within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        StalledDownload { go, done }
    }

    /// Connections in the middle of a request (a body being received) or of a response (a
    /// download the client reads slowly) are never evicted: fresh and idle ones go instead,
    /// oldest first, even when the busy ones are older.
    #[tokio::test]
    async fn busy_connections_are_never_evicted() {
        let r = start(Limits {
            max_connections: 4,
            ..Limits::default()
        })
        .await;
        // Busy writing a response.
        let download = stalled_download(r.addr, &r.recorder).await;
        // Busy reading a request: the server has the head (it asked for the body).
        let mut upload = TcpStream::connect(r.addr).await.unwrap();
        upload
            .write_all(
                b"POST /events HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\
                  Content-Length: 5\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
        let mut cont = [0u8; 25];
        tokio::time::timeout(Duration::from_secs(5), upload.read_exact(&mut cont))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
        let mut fresh = Vec::new();
        for _ in 0..2 {
            fresh.push(TcpStream::connect(r.addr).await.unwrap());
        }
        // Full: each of these takes the place of the oldest evictable connection: the two
        // fresh ones, then the first of these once it is idle.
        let mut kept = Vec::new();
        for _ in 0..3 {
            kept.push(held(r.addr).await.unwrap());
        }
        for s in &mut fresh {
            closed_by_server(s).await;
        }
        closed_by_server(&mut kept[0]).await;
        assert_eq!(
            *r.recorder.evicted.lock().unwrap(),
            vec!["fresh", "fresh", "idle"]
        );
        // The busy ones finish undisturbed.
        upload.write_all(b"hello").await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), upload.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.ends_with(b"\r\n\r\nhello"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        download.go.send(()).unwrap();
        let (got, reset) = tokio::time::timeout(Duration::from_secs(30), download.done)
            .await
            .unwrap()
            .unwrap();
        assert!(!reset, "download reset after {got} bytes");
        assert!(got > HUGE, "only {got} bytes of {HUGE} and a head");
        assert_eq!(r.recorder.evicted.lock().unwrap().len(), 3);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// With nothing evictable the new connection waits for a slot, as before eviction: it is
    /// answered once the busy connection is done, and the busy one is not cut short for it.
    #[tokio::test]
    async fn with_nothing_evictable_a_new_connection_waits_for_a_slot() {
        let r = start(Limits {
            max_connections: 1,
            ..Limits::default()
        })
        .await;
        let download = stalled_download(r.addr, &r.recorder).await;
        let waiting = tokio::spawn(exchange_within(
            r.addr,
            b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
            Duration::from_secs(30),
        ));
        download.go.send(()).unwrap();
        let (got, reset) = tokio::time::timeout(Duration::from_secs(30), download.done)
            .await
            .unwrap()
            .unwrap();
        assert!(!reset && got > HUGE, "{got} bytes, reset: {reset}");
        let out = waiting.await.unwrap();
        assert!(
            out.ends_with(b"\r\n\r\nok"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(r.recorder.evicted.lock().unwrap().is_empty());
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// However a connection ends, its per-address slot comes back: afterwards the client can
    /// hold exactly the cap again.
    #[tokio::test]
    async fn per_address_slots_come_back_however_a_connection_ends() {
        let stall = Duration::from_millis(400);
        let r = start(Limits {
            max_connections_per_addr: 3,
            idle: Duration::from_millis(300),
            request: Duration::from_millis(300),
            max_requests: 2,
            stall,
            ..Limits::default()
        })
        .await;
        let addr = r.addr;
        let get_close = b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        // The client closes an idle keep-alive connection.
        drop(held(addr).await.unwrap());
        // `Connection: close`.
        assert!(exchange(addr, get_close).await.ends_with(b"\r\n\r\nok"));
        // Refusals: 400 at once, 408 when the request times out.
        assert!(exchange(addr, b"GET / HTTP/1.1\r\n\r\n")
            .await
            .starts_with(b"HTTP/1.1 400 "));
        assert!(exchange(addr, b"GET / HTTP/1.1\r\nHo")
            .await
            .starts_with(b"HTTP/1.1 408 "));
        // The idle timeout.
        let mut s = held(addr).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .unwrap()
            .unwrap();
        // The request cap (2), the last request answered with close.
        let two = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\nGET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(count(&exchange(addr, two).await, "HTTP/1.1 200 OK\r\n"), 2);
        // The client resets.
        let s = held(addr).await.unwrap();
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
        // The handler panics: the connection's task unwinds.
        let out = read_all(addr, b"GET /panic HTTP/1.1\r\nHost: h\r\n\r\n").await;
        assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
        // The client stops reading and the stall limit drops it.
        let (_, reset) = slow_download(addr, "/mem", Reader::Never(stall * 3)).await;
        assert!(reset);
        // Refused at the cap: the refusal itself takes no slot.
        let full = holds_exactly(addr, 3).await;
        assert_refused_503(&read_all(addr, b"").await);
        drop(full);
        let again = holds_exactly(addr, 3).await;
        drop(again);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// The workers of `serve_on_threads` share one count: a client gets the cap in all, not
    /// the cap from each worker, and connections that come and go at once from many tasks
    /// leave the count exact.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_per_address_cap_holds_across_workers_and_churn() {
        let dir = tempfile::tempdir().unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let (stop, rx) = watch::channel(false);
        let cap = 4;
        let server = tokio::spawn(serve_on_threads(
            listener,
            app(dir.path().to_path_buf()),
            recorder.clone(),
            Limits {
                max_connections_per_addr: cap,
                ..Limits::default()
            },
            rx,
            2,
        ));
        // Twice the cap at once: exactly the cap are served, whichever worker took each.
        let mut tries = tokio::task::JoinSet::new();
        for _ in 0..2 * cap {
            tries.spawn(held(addr));
        }
        let mut kept = Vec::new();
        let mut refused = 0;
        while let Some(t) = tries.join_next().await {
            match t.unwrap() {
                Ok(s) => kept.push(s),
                Err(e) => {
                    assert_refused_503(e.as_bytes());
                    refused += 1;
                }
            }
        }
        assert_eq!((kept.len(), refused), (cap, cap));
        drop(kept);
        // Churn: 16 tasks, 25 short connections each, many of them over the cap.
        let mut churn = tokio::task::JoinSet::new();
        for _ in 0..16 {
            churn.spawn(async move {
                for _ in 0..25 {
                    let out = read_all(
                        addr,
                        b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                    )
                    .await;
                    let text = String::from_utf8_lossy(&out);
                    assert!(
                        text.starts_with("HTTP/1.1 200 OK\r\n")
                            || text.starts_with("HTTP/1.1 503 "),
                        "{text:?}"
                    );
                }
            });
        }
        while let Some(t) = churn.join_next().await {
            t.unwrap();
        }
        let full = holds_exactly(addr, cap).await;
        drop(full);
        assert!(recorder
            .connections_refused
            .lock()
            .unwrap()
            .iter()
            .all(|r| *r == "per-address"));
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }

    /// A listener on `[::]` that takes IPv4 too, when the host has IPv6; IPv4 peers then
    /// arrive as `::ffff:a.b.c.d`.
    fn dual_stack() -> Option<TcpListener> {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).ok()?;
        s.set_only_v6(false).ok()?;
        s.bind(&"[::]:0".parse::<SocketAddr>().unwrap().into())
            .ok()?;
        s.listen(128).ok()?;
        s.set_nonblocking(true).ok()?;
        TcpListener::from_std(s.into()).ok()
    }

    /// Exempt networks are not capped; an IPv4-mapped peer is counted, and exempted, as its
    /// IPv4 address; IPv6 loopback is a client of its own.
    #[tokio::test]
    async fn exempt_networks_and_mapped_peers() {
        let exempt = |nets: &[&str]| Limits {
            max_connections_per_addr: 1,
            exempt: nets.iter().map(|n| n.parse().unwrap()).collect(),
            ..Limits::default()
        };
        let r = start(exempt(&["10.0.0.0/8", "127.0.0.0/8"])).await;
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(held(r.addr).await.unwrap());
        }
        drop(all);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();

        let Some(listener) = dual_stack() else {
            eprintln!("no IPv6 here: the mapped-address half of this test is skipped");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let v4: SocketAddr = ([127, 0, 0, 1], port).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
        // Capped at 1 as 127.0.0.1; ::1 is another client.
        let r = start_on(listener, exempt(&[]));
        let one = held(v4).await.unwrap();
        assert_refused_503(&read_all(v4, b"").await);
        let other = held(v6).await.unwrap();
        assert_refused_503(&read_all(v6, b"").await);
        drop((one, other));
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
        // 127.0.0.1/32 exempts the mapped peer, and only it.
        let listener = dual_stack().unwrap();
        let port = listener.local_addr().unwrap().port();
        let v4: SocketAddr = ([127, 0, 0, 1], port).into();
        let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
        let r = start_on(listener, exempt(&["127.0.0.1/32"]));
        let mut all = Vec::new();
        for _ in 0..3 {
            all.push(held(v4).await.unwrap());
        }
        all.push(held(v6).await.unwrap());
        assert_refused_503(&read_all(v6, b"").await);
        drop(all);
        r.stop.send(true).unwrap();
        r.server.await.unwrap().unwrap();
    }

    /// Set in the environment of the child process that
    /// `accept_backs_off_and_recovers_when_descriptors_run_out` runs.
    const EMFILE_CHILD: &str = "PXEFORGE_HTTPD_TEST_EMFILE_CHILD";

    /// Runs the server out of file descriptors: `emfile_child` in a child process (the
    /// descriptor limit is the whole process's, and running out would break the tests running
    /// beside it here), bounded to 60 s.
    #[test]
    fn accept_backs_off_and_recovers_when_descriptors_run_out() {
        let stdout = pxeforge_child::run_test_in_child(
            "conn::tests::emfile_child",
            (EMFILE_CHILD, "1"),
            Duration::from_secs(60),
            "emfile-child: done",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        eprintln!(
            "{}",
            // The harness prints `test … ... ` before what the test prints, on its line.
            stdout
                .lines()
                .filter_map(|l| l.find("emfile-child:").map(|at| &l[at..]))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// CPU time this process has used, user and system.
    fn cpu_time() -> Duration {
        // SAFETY: getrusage fills the struct it is given; zeroed is a valid `rusage`.
        let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
        let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
        assert_eq!(rc, 0);
        let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }

    /// The child half of `accept_backs_off_and_recovers_when_descriptors_run_out`; does
    /// nothing unless `EMFILE_CHILD` is set. A server thread with a client connection waiting
    /// in the backlog while the process has no descriptor left: for a second its accept loop
    /// must fail slowly (little CPU, a bounded count of failures reported), and once
    /// descriptors are free it must take the connection and answer it by itself.
    #[test]
    fn emfile_child() {
        if std::env::var_os(EMFILE_CHILD).is_none() {
            return;
        }
        use std::io::{Read, Write};
        // A low limit, so that running out takes a few hundred descriptors, not a million.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: get/setrlimit on a valid struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        lim.rlim_cur = lim.rlim_max.min(256);
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);

        let dir = tempfile::tempdir().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Arc::new(Recorder::default());
        let (stop, rx) = watch::channel(false);
        let (observer, root): (Arc<dyn Observer>, _) = (recorder.clone(), dir.path().to_owned());
        let (up_tx, up) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).unwrap();
                // Runtime and listener have their descriptors: the rest may run out.
                up_tx.send(()).unwrap();
                serve(listener, app(root), observer, Limits::default(), rx).await
            })
        });
        up.recv_timeout(Duration::from_secs(10)).unwrap();
        let get = b"GET /ok HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
        let answer = |mut s: std::net::TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).map(|_| out)
        };
        // The client's socket is made while there are descriptors, and connected after: the
        // kernel completes the handshake in the backlog, and only the server's accept needs
        // a descriptor it cannot have.
        let client =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let mut hog = Vec::new();
        let mut run_out = || loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => hog.push(f),
                Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
                Err(e) => panic!("opening /dev/null: {e}"),
            }
        };
        run_out();
        // Again, for any descriptor the runtime's threads closed meanwhile.
        std::thread::sleep(Duration::from_millis(100));
        run_out();
        let short = hog.len();
        client.connect(&addr.into()).unwrap();
        let mut client: std::net::TcpStream = client.into();
        client.write_all(get).unwrap();
        let (cpu0, t0) = (cpu_time(), std::time::Instant::now());
        std::thread::sleep(Duration::from_secs(1));
        let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
        let failed = recorder.accept_failed.lock().unwrap().clone();
        // Not answered while out of descriptors.
        client.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let early = client.read(&mut byte);
        client.set_nonblocking(false).unwrap();

        drop(hog);
        let t1 = std::time::Instant::now();
        let out = answer(client);
        let recovered = t1.elapsed();
        println!(
            "emfile-child: out of descriptors ({short} taken) for {wall:?}: {cpu:?} CPU, {} \
             accept failures reported ({:?}); answered {recovered:?} after they were freed",
            failed.len(),
            failed.first()
        );
        assert!(
            matches!(&early, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "answered while out of descriptors: {early:?}"
        );
        let out = out.unwrap();
        assert!(
            out.starts_with(b"HTTP/1.1 200 OK\r\n") && out.ends_with(b"\r\n\r\nok"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(recovered < Duration::from_secs(2), "{recovered:?}");
        // A loop that spins burns the whole second; backing off 50 ms costs ~20 accept calls.
        assert!(cpu < Duration::from_millis(300), "{cpu:?} CPU in {wall:?}");
        assert!(
            (5..=40).contains(&failed.len()) && failed.iter().all(|r| *r == "EMFILE"),
            "{} accept failures reported in {wall:?}: {failed:?}",
            failed.len()
        );
        stop.send(true).unwrap();
        server.join().unwrap().unwrap();
        println!("emfile-child: done");
    }
}
