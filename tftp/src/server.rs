//! The listening socket: receives requests, learns which local address each was sent to, and
//! hands each one to its own task on its own ephemeral socket (RFC 1350 transfer IDs).

use std::collections::HashMap;
use std::future::Future;
use std::io::IoSliceMut;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{self as nixsock, ControlMessageOwned, MsgFlags, SockaddrStorage};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, Id, JoinSet};
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::metrics::{Ended, TftpMetrics};
use crate::packet::{self, ErrorCode, Packet};
use crate::session::{self, ActiveGuard, OwnedRequest, Shared};
use crate::{TftpConfig, TftpError};

/// Requests are small; 2 KiB holds any sane one, and longer datagrams are cut and then refused.
const REQUEST_BUF: usize = 2048;

/// A bound TFTP server, not yet running.
pub struct TftpServer {
    socket: UdpSocket,
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
        let socket = UdpSocket::from_std(socket.into()).map_err(bind_err)?;
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
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), TftpError> {
        tokio::pin!(shutdown);
        info!(addr = %self.local_addr, root = %self.shared.root.display(), "tftp: serving");
        let mut tasks: JoinSet<()> = JoinSet::new();
        // The transfer of each client port, so that a new request from it replaces the old one.
        let mut by_client: HashMap<SocketAddr, (Id, AbortHandle)> = HashMap::new();
        let mut buf = vec![0u8; REQUEST_BUF];
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(err) => err.id(),
                    };
                    by_client.retain(|_, (task, _)| *task != id);
                }
                received = recv_request(&self.socket, &mut buf, self.pktinfo) => {
                    let (n, peer, local_ip) = match received {
                        Ok(r) => r,
                        Err(err) => {
                            warn!(error = %err, "tftp: receive failed");
                            continue;
                        }
                    };
                    let local_ip = local_ip.unwrap_or(self.local_addr.ip());
                    self.on_datagram(&buf[..n], peer, local_ip, &mut tasks, &mut by_client).await;
                }
            }
        }
        tasks.shutdown().await;
        info!(addr = %self.local_addr, "tftp: stopped");
        Ok(())
    }

    async fn on_datagram(
        &self,
        datagram: &[u8],
        peer: SocketAddr,
        local_ip: IpAddr,
        tasks: &mut JoinSet<()>,
        by_client: &mut HashMap<SocketAddr, (Id, AbortHandle)>,
    ) {
        let metrics = &self.shared.metrics;
        let request = match packet::parse(datagram) {
            Ok(Packet::Rrq(r)) => owned(false, &r),
            Ok(Packet::Wrq(r)) => owned(true, &r),
            Ok(other) => {
                // DATA/ACK/ERROR belong on a transfer socket; answering them here would only
                // help reflection attacks.
                debug!(client = %peer, packet = opcode_name(&other), "tftp: stray packet ignored");
                return;
            }
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
        if let Some((_, old)) = by_client.remove(&peer) {
            // The client restarted (or retried) from the same port: the old transfer is dead.
            debug!(client = %peer, "tftp: new request replaces the running transfer");
            old.abort();
        }
        if metrics.active_transfers() >= self.shared.config.max_transfers as u64 {
            warn!(client = %peer, "tftp: too many transfers, request refused");
            let reply = packet::encode_error(ErrorCode::NotDefined, "server busy");
            let _ = self.socket.send_to(&reply, peer).await;
            metrics.record(Ended::Busy);
            return;
        }
        let socket = match transfer_socket(local_ip, peer) {
            Ok(socket) => socket,
            Err(err) => {
                warn!(client = %peer, local = %local_ip, error = %err, "tftp: cannot open transfer socket");
                metrics.record(Ended::IoError);
                return;
            }
        };
        let guard = ActiveGuard::new(metrics.clone());
        let handle = tasks.spawn(session::serve(
            self.shared.clone(),
            socket,
            peer,
            request,
            guard,
        ));
        by_client.insert(peer, (handle.id(), handle));
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
/// that the kernel drops datagrams from any other transfer ID.
fn transfer_socket(local_ip: IpAddr, peer: SocketAddr) -> std::io::Result<UdpSocket> {
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
    UdpSocket::from_std(socket)
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
