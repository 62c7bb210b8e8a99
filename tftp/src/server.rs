//! The listening socket: receives requests, learns which local address each was sent to, and
//! hands each one to its own task on its own ephemeral socket (RFC 1350 transfer IDs).

use std::future::Future;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{self as nixsock, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, Id, JoinSet};
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::clients::Admission;
use crate::confine::out_of_descriptors;
use crate::metrics::{Ended, TftpMetrics};
use crate::packet::{self, ErrorCode, Packet};
use crate::ratelimit::RateLimiter;
use crate::ratelimit::{client_key, is_exempt};
use crate::session::{self, ActiveGuard, FirstAck, OwnedRequest, Shared, TransferState};
use crate::{TftpConfig, TftpError};

/// Requests are small; 2 KiB holds any sane one, and longer datagrams are cut and then refused.
const REQUEST_BUF: usize = 2048;
/// Files opened at once on the blocking pool (each open is a few syscalls; more threads than
/// this only add memory).
const OPEN_CONCURRENCY: usize = 8;
/// Large lockstep transfers on threads of their own at once; more run on the async path.
const LOCKSTEP_THREADS: usize = 32;
/// Evicted transfers that may still be ending (holding their socket) beyond `max_transfers`:
/// as many again as `max_transfers`, and at least this many; past it, requests get "busy".
const ENDING_MARGIN: usize = 256;

/// A bound TFTP server, not yet running.
pub struct TftpServer {
    /// Registered with the TFTP thread's own runtime once running.
    socket: std::net::UdpSocket,
    local_addr: SocketAddr,
    /// Bound to a wildcard address: each request's destination comes from IP_PKTINFO.
    pktinfo: bool,
    shared: Arc<Shared>,
}

impl TftpServer {
    /// Binds the listening socket (port 0 picks a free port) and checks the root.
    pub async fn bind(addr: SocketAddr, config: TftpConfig) -> Result<TftpServer, TftpError> {
        let root = session::canonical_root(&config.root).map_err(|source| TftpError::Root {
            root: config.root.clone(),
            source,
        })?;
        let bind_err = |source| TftpError::Bind { addr, source };
        let domain = if addr.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
        // A boot storm sends hundreds of requests at once: give them room in the queue.
        let _ = socket.set_recv_buffer_size(4 << 20);
        let pktinfo = addr.ip().is_unspecified();
        if pktinfo {
            let result = if addr.is_ipv4() {
                nixsock::setsockopt(&socket, nixsock::sockopt::Ipv4PacketInfo, &true)
            } else {
                nixsock::setsockopt(&socket, nixsock::sockopt::Ipv6RecvPacketInfo, &true)
            };
            result.map_err(|e| bind_err(e.into()))?;
        }
        socket.set_nonblocking(true).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        let socket: std::net::UdpSocket = socket.into();
        let local_addr = socket.local_addr().map_err(bind_err)?;
        let metrics = Arc::new(TftpMetrics::default());
        let cache = Cache::new(config.cache);
        Ok(TftpServer {
            socket,
            local_addr,
            pktinfo,
            shared: Arc::new(Shared {
                config,
                root,
                cache,
                metrics,
                opens: Arc::new(tokio::sync::Semaphore::new(OPEN_CONCURRENCY)),
                lockstep: Arc::new(tokio::sync::Semaphore::new(LOCKSTEP_THREADS)),
            }),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn metrics(&self) -> Arc<TftpMetrics> {
        self.shared.metrics.clone()
    }

    /// Serves requests until `shutdown` completes; then ends every transfer in progress.
    ///
    /// TFTP runs on threads of its own (`config.threads`), each with a single-threaded tokio
    /// runtime: a transfer stays on the thread it starts on, so a lockstep ACK costs one
    /// wake-up and no hand-off between threads, and a boot storm cannot starve the HTTP
    /// service's workers. The first thread also runs the listening socket.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), TftpError> {
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel::<Result<(), TftpError>>();
        let local_addr = self.local_addr;
        let threads = self.shared.config.threads.max(1);
        std::thread::Builder::new()
            .name("pxeforge-tftp".into())
            .spawn(move || {
                let result = match Workers::start(threads - 1) {
                    Ok(workers) => {
                        let result = match current_thread_runtime() {
                            Ok(rt) => {
                                let mut handles = vec![rt.handle().clone()];
                                handles.extend(workers.handles.iter().cloned());
                                let result = rt.block_on(self.serve(stop_rx, handles));
                                rt.shutdown_timeout(std::time::Duration::from_secs(2));
                                result
                            }
                            Err(source) => Err(TftpError::Runtime(source)),
                        };
                        workers.stop();
                        result
                    }
                    Err(source) => Err(TftpError::Runtime(source)),
                };
                let _ = done_tx.send(result);
            })
            .map_err(TftpError::Runtime)?;
        tokio::pin!(shutdown);
        tokio::pin!(done_rx);
        let finished = tokio::select! {
            _ = &mut shutdown => {
                let _ = stop_tx.send(());
                done_rx.await
            }
            finished = &mut done_rx => finished,
        };
        finished.unwrap_or_else(|_| {
            Err(TftpError::Runtime(std::io::Error::other(format!(
                "TFTP thread for {local_addr} ended unexpectedly"
            ))))
        })
    }

    /// The listening loop, on the TFTP thread's runtime.
    async fn serve(
        self,
        stop: oneshot::Receiver<()>,
        workers: Vec<Handle>,
    ) -> Result<(), TftpError> {
        let TftpServer {
            socket,
            local_addr: addr,
            pktinfo,
            shared,
        } = self;
        let socket =
            UdpSocket::from_std(socket).map_err(|source| TftpError::Bind { addr, source })?;
        let limiter = RateLimiter::new(
            shared.config.max_new_per_source_per_sec,
            shared.config.rate_limit_exempt.clone(),
        );
        let listener = Listener {
            socket,
            pktinfo,
            workers,
            next_worker: std::cell::Cell::new(0),
            limiter: std::cell::RefCell::new(limiter),
            shared,
        };
        // A dropped sender (the caller's task went away) also means stop.
        let stop = async {
            let _ = stop.await;
        };
        tokio::pin!(stop);
        info!(addr = %addr, root = %listener.shared.root.display(), "tftp: serving");
        let mut tasks: JoinSet<()> = JoinSet::new();
        // The transfers of each client port, so that a new request from it can replace them.
        let mut by_client = Clients::default();
        let mut buf = vec![0u8; REQUEST_BUF];
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(err) => err.id(),
                    };
                    by_client.ended(id);
                }
                received = recv_request(&listener.socket, &mut buf, listener.pktinfo) => {
                    let (n, peer, local_ip) = match received {
                        Ok(r) => r,
                        Err(err) => {
                            warn!(error = %err, "tftp: receive failed");
                            // A persistent error must not turn this loop into a busy spin.
                            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                            continue;
                        }
                    };
                    let local_ip = local_ip.unwrap_or(addr.ip());
                    listener.on_datagram(&buf[..n], peer, local_ip, &mut tasks, &mut by_client).await;
                }
            }
        }
        tasks.shutdown().await;
        info!(addr = %addr, "tftp: stopped");
        Ok(())
    }
}

fn current_thread_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// Extra TFTP threads, each driving its own single-threaded runtime until told to stop.
struct Workers {
    handles: Vec<Handle>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    fn start(n: usize) -> std::io::Result<Workers> {
        let mut workers = Workers {
            handles: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..n {
            let rt = match current_thread_runtime() {
                Ok(rt) => rt,
                Err(err) => {
                    workers.stop();
                    return Err(err);
                }
            };
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            workers.handles.push(rt.handle().clone());
            workers.stops.push(stop_tx);
            let spawned = std::thread::Builder::new()
                .name(format!("pxeforge-tftp-{}", i + 1))
                .spawn(move || {
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    rt.shutdown_timeout(std::time::Duration::from_secs(2));
                });
            match spawned {
                Ok(thread) => workers.threads.push(thread),
                Err(err) => {
                    workers.stop();
                    return Err(err);
                }
            }
        }
        Ok(workers)
    }

    fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

/// The listening socket and what the sessions share, inside the TFTP thread.
struct Listener {
    socket: UdpSocket,
    pktinfo: bool,
    workers: Vec<Handle>,
    next_worker: std::cell::Cell<usize>,
    /// Used only by the listening loop (one thread, one datagram at a time).
    limiter: std::cell::RefCell<RateLimiter>,
    shared: Arc<Shared>,
}

/// The running transfers, by task.
type Clients = crate::clients::Clients<Id, AbortHandle>;

impl Listener {
    async fn on_datagram(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        local_ip: IpAddr,
        tasks: &mut JoinSet<()>,
        by_client: &mut Clients,
    ) {
        let metrics = &self.shared.metrics;
        let parsed = packet::parse(datagram);
        match &parsed {
            Ok(Packet::Rrq(_) | Packet::Wrq(_)) | Err(_) => {}
            Ok(other) => {
                // DATA/ACK/ERROR belong on a transfer socket; answering them here would only
                // help reflection attacks.
                debug!(client = %peer, packet = opcode_name(other), "tftp: stray packet ignored");
                return;
            }
        }
        // Everything else gets an answer (a transfer or an ERROR) at its source address, which
        // may be spoofed: at most so many per source and second.
        let admitted = self
            .limiter
            .borrow_mut()
            .admit(peer.ip(), std::time::Instant::now());
        if !admitted {
            debug!(client = %peer, "tftp: request over the per-source rate, not answered");
            metrics.record(Ended::RateLimited);
            return;
        }
        let request = match parsed {
            Ok(Packet::Rrq(r)) => owned(false, &r),
            Ok(Packet::Wrq(r)) => owned(true, &r),
            // Sorted out above.
            Ok(_) => return,
            Err(err) => {
                warn!(client = %peer, error = %err, "tftp: malformed request");
                let code = match err {
                    packet::ParseError::BadMode(_) => ErrorCode::IllegalOperation,
                    _ => ErrorCode::NotDefined,
                };
                let reply = packet::encode_error(code, &err.to_string());
                let _ = self.socket.send_to(&reply, peer).await;
                metrics.record(Ended::BadRequest);
                return;
            }
        };
        let config = &self.shared.config;
        // Evicted transfers leave the table at once but end only at their task's next poll,
        // holding a socket until then (those on this thread wait until this loop yields, so a
        // burst of requests runs ahead of them); how many may be ending at once is bounded.
        let ending_cap = config
            .max_transfers
            .saturating_add(config.max_transfers.max(ENDING_MARGIN))
            as u64;
        if metrics.active_transfers() >= ending_cap {
            tokio::task::yield_now().await;
            if metrics.active_transfers() >= ending_cap {
                warn!(client = %peer, active = metrics.active_transfers(), "tftp: too many transfers ending, request refused");
                self.busy(peer, "server busy", Ended::Busy).await;
                return;
            }
        }
        // Loopback and `rate_limit_exempt` (NAT, load balancers, benches) have no share.
        let client = (config.max_transfers_per_addr > 0
            && !is_exempt(&config.rate_limit_exempt, peer.ip()))
        .then(|| client_key(peer.ip()));
        match by_client.admit(client, config.max_transfers_per_addr, config.max_transfers) {
            Admission::Admit { evicted: None } => {}
            Admission::Admit {
                evicted: Some(evicted),
            } => {
                // Debug only: a flood of forged requests evicts once per request.
                debug!(client = %peer, evicted = %evicted, "tftp: table full, the oldest unacknowledged transfer makes room");
            }
            Admission::ClientBusy => {
                // Only transfers this client acknowledged count here, so the address is real
                // (and the rate limit bounds these lines per source).
                warn!(client = %peer, max = config.max_transfers_per_addr, "tftp: too many transfers for this client, request refused");
                self.busy(peer, "busy", Ended::ClientBusy).await;
                return;
            }
            Admission::Busy => {
                warn!(client = %peer, "tftp: too many transfers, all acknowledged, request refused");
                self.busy(peer, "server busy", Ended::Busy).await;
                return;
            }
        }
        // The client restarted (or retried) from the same port, or someone spoofed it: the
        // running transfers go on until the new one's first packet is acknowledged.
        let older = by_client.running(peer);
        if !older.is_empty() {
            debug!(client = %peer, running = older.len(), "tftp: new request from a port with a transfer running");
        }
        let (socket, path_mtu) = match transfer_socket(local_ip, peer) {
            Ok(pair) => pair,
            // Passing, and the client may retry: told so from the listening socket (which
            // needs no new descriptor), not left to time out.
            Err(err) if out_of_descriptors(&err) => {
                warn!(client = %peer, local = %local_ip, error = %err, "tftp: no descriptor for a transfer socket, busy");
                self.busy(peer, "server busy", Ended::Busy).await;
                return;
            }
            Err(err) => {
                warn!(client = %peer, local = %local_ip, error = %err, "tftp: cannot open transfer socket");
                metrics.record(Ended::IoError);
                return;
            }
        };
        let state = Arc::new(TransferState::default());
        let first_ack = FirstAck::new(older, state.clone());
        let guard = ActiveGuard::new(metrics.clone(), state.clone());
        // Transfers are spread over the worker threads; each stays on the one it starts on.
        let worker = &self.workers[self.next_worker.get() % self.workers.len()];
        self.next_worker.set(self.next_worker.get().wrapping_add(1));
        let shared = self.shared.clone();
        // The session registers the socket with the worker's runtime only for the async path:
        // a large lockstep transfer keeps it off every event loop (see `session::serve`).
        let task = async move {
            session::serve(shared, socket, peer, request, path_mtu, first_ack, guard).await
        };
        let handle = tasks.spawn_on(task, worker);
        by_client.insert(handle.id(), peer, handle, state, client);
    }

    /// Refuses a request with ERROR 0 `message` from the listening socket.
    async fn busy(&self, peer: SocketAddr, message: &str, ended: Ended) {
        let reply = packet::encode_error(ErrorCode::NotDefined, message);
        let _ = self.socket.send_to(&reply, peer).await;
        self.shared.metrics.record(ended);
    }
}

fn opcode_name(p: &Packet<'_>) -> &'static str {
    match p {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack { .. } => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack { .. } => "OACK",
    }
}

fn owned(write: bool, r: &packet::Request<'_>) -> OwnedRequest {
    OwnedRequest {
        write,
        filename: r.filename.to_vec(),
        mode: r.mode,
        options: r
            .options
            .iter()
            .map(|o| (o.name.to_vec(), o.value.to_vec()))
            .collect(),
    }
}

/// A socket on a fresh port of the address the request came in on, connected to the client so
/// that the kernel drops datagrams from any other transfer ID; with the path MTU to the client.
fn transfer_socket(
    local_ip: IpAddr,
    peer: SocketAddr,
) -> std::io::Result<(std::net::UdpSocket, Option<u32>)> {
    let bind_addr = match (local_ip, peer) {
        (IpAddr::V6(ip), SocketAddr::V6(p)) => {
            SocketAddr::V6(SocketAddrV6::new(ip, 0, 0, p.scope_id()))
        }
        (ip, _) => SocketAddr::new(ip, 0),
    };
    let socket = match std::net::UdpSocket::bind(bind_addr) {
        Ok(socket) => socket,
        // A broadcast destination cannot be bound; the routing table picks the source then.
        Err(_) if !local_ip.is_unspecified() => {
            let any: IpAddr = if peer.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            std::net::UdpSocket::bind(SocketAddr::new(any, 0))?
        }
        Err(err) => return Err(err),
    };
    socket.connect(peer)?;
    socket.set_nonblocking(true)?;
    let mtu = path_mtu(&socket, peer.is_ipv6());
    Ok((socket, mtu))
}

/// The kernel's path MTU of a connected socket (IP_MTU / IPV6_MTU), if it knows one.
fn path_mtu(socket: &std::net::UdpSocket, ipv6: bool) -> Option<u32> {
    let (level, name) = if ipv6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MTU)
    } else {
        (libc::IPPROTO_IP, libc::IP_MTU)
    };
    let mut mtu: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the fd is open for the duration of the call and `mtu`/`len` describe a valid
    // c_int-sized buffer, as getsockopt(2) requires.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut mtu as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0 && mtu > 0).then_some(mtu as u32)
}

/// Receives one datagram; with `pktinfo`, also the local address it was sent to.
async fn recv_request(
    socket: &UdpSocket,
    buf: &mut [u8],
    pktinfo: bool,
) -> std::io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    if !pktinfo {
        let (n, peer) = socket.recv_from(buf).await?;
        return Ok((n, peer, None));
    }
    let fd = socket.as_raw_fd();
    socket
        .async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!(libc::in6_pktinfo);
            let mut iov = [IoSliceMut::new(buf)];
            let msg = nixsock::recvmsg::<SockaddrStorage>(
                fd,
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let peer = msg
                .address
                .as_ref()
                .and_then(sockaddr_to_std)
                .ok_or_else(|| std::io::Error::other("datagram without source address"))?;
            let mut local = None;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                        let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                        // Replies to a broadcast go out from the interface's own address.
                        local = Some(IpAddr::V4(if dst.is_broadcast() || dst.is_multicast() {
                            spec
                        } else {
                            dst
                        }));
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        local = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            Ok((msg.bytes, peer, local))
        })
        .await
}

fn sockaddr_to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    addr.as_sockaddr_in6().map(|v6| {
        SocketAddr::V6(SocketAddrV6::new(
            v6.ip(),
            v6.port(),
            v6.flowinfo(),
            v6.scope_id(),
        ))
    })
}
