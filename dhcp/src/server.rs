//! The socket loop: receive on 67 and 4011 (bound to the interface), decode, decide, reply.
//! Everything protocol-related happens in the pure modules; this file moves bytes.

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::decide::{Action, Destination, LeaseOp, LeaseOutcome, Mode, Port};
use crate::encode::encode;
use crate::facts::ClientFacts;
use crate::leases::{LeaseDb, LeaseError};
use crate::metrics::DhcpMetrics;
use crate::site::DhcpSite;
use crate::wire;

#[derive(Debug, Clone)]
pub struct DhcpConfig {
    pub mode: Mode,
    /// Interface to bind to (SO_BINDTODEVICE); None = every interface.
    pub interface: Option<String>,
    /// Address the sockets bind to; 0.0.0.0 to receive broadcasts.
    pub listen_ip: Ipv4Addr,
    /// DHCP server port, 67.
    pub port: u16,
    /// PXE boot server port, 4011; 0 = do not listen.
    pub pxe_port: u16,
    /// Where broadcast replies go, 68.
    pub client_port: u16,
    /// SQLite lease database (reservation mode), e.g. `<state_dir>/leases.db`.
    pub lease_db: PathBuf,
}

impl DhcpConfig {
    pub fn new(mode: Mode, lease_db: PathBuf) -> Self {
        DhcpConfig {
            mode,
            interface: None,
            listen_ip: Ipv4Addr::UNSPECIFIED,
            port: 67,
            pxe_port: 4011,
            client_port: 68,
            lease_db,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("binding DHCP socket {addr}{}: {source}", iface_suffix(.interface))]
    Bind {
        addr: SocketAddrV4,
        interface: Option<String>,
        source: io::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("DHCP socket: {0}")]
    Io(#[from] io::Error),
}

fn iface_suffix(i: &Option<String>) -> String {
    i.as_ref()
        .map(|n| format!(" on interface {n}"))
        .unwrap_or_default()
}

struct Shared {
    mode: Mode,
    client_port: u16,
    site: Arc<ArcSwap<DhcpSite>>,
    metrics: Arc<DhcpMetrics>,
    leases: Option<Mutex<LeaseDb>>,
}

pub struct DhcpServer {
    sockets: Vec<(Port, UdpSocket)>,
    shared: Arc<Shared>,
}

fn bind_socket(config: &DhcpConfig, port: u16) -> Result<UdpSocket, DhcpError> {
    let addr = SocketAddrV4::new(config.listen_ip, port);
    let bind_err = |source| DhcpError::Bind {
        addr,
        interface: config.interface.clone(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.set_broadcast(true).map_err(bind_err)?;
    if let Some(name) = config.interface.as_deref().filter(|n| !n.is_empty()) {
        socket
            .bind_device(Some(name.as_bytes()))
            .map_err(bind_err)?;
    }
    // The incoming interface and our address on it: option 54, siaddr and the URL host.
    setsockopt(&socket, sockopt::Ipv4PacketInfo, &true).map_err(|e| bind_err(e.into()))?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket
        .bind(&SocketAddr::V4(addr).into())
        .map_err(bind_err)?;
    UdpSocket::from_std(socket.into()).map_err(bind_err)
}

impl DhcpServer {
    pub async fn bind(
        config: DhcpConfig,
        site: Arc<ArcSwap<DhcpSite>>,
    ) -> Result<DhcpServer, DhcpError> {
        let leases = if config.mode == Mode::Reservation {
            if let Some(dir) = config.lease_db.parent() {
                std::fs::create_dir_all(dir)?;
            }
            Some(Mutex::new(LeaseDb::open(&config.lease_db)?))
        } else {
            None
        };
        let mut sockets = Vec::new();
        if config.mode != Mode::Off {
            sockets.push((Port::Dhcp, bind_socket(&config, config.port)?));
            if config.pxe_port != 0 {
                sockets.push((Port::Pxe, bind_socket(&config, config.pxe_port)?));
            }
        }
        Ok(DhcpServer {
            sockets,
            shared: Arc::new(Shared {
                mode: config.mode,
                client_port: config.client_port,
                site,
                metrics: Arc::new(DhcpMetrics::default()),
                leases,
            }),
        })
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|(_, s)| s.local_addr().ok())
            .collect()
    }

    pub fn metrics(&self) -> Arc<DhcpMetrics> {
        self.shared.metrics.clone()
    }

    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DhcpError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (port, socket) in self.sockets {
            let shared = self.shared.clone();
            tasks.spawn(async move { serve_socket(port, socket, shared).await });
        }
        tokio::select! {
            _ = shutdown => {
                tasks.abort_all();
                Ok(())
            }
            Some(res) = tasks.join_next() => match res {
                Ok(r) => r,
                Err(e) => Err(DhcpError::Io(io::Error::other(e))),
            },
            else => Ok(()),
        }
    }
}

struct Received {
    len: usize,
    source: SocketAddrV4,
    ifindex: i32,
    local: Ipv4Addr,
}

fn recv_with_pktinfo(fd: i32, buf: &mut [u8]) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!(libc::in_pktinfo);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrIn>(fd, &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let source = msg
        .address
        .map(|a| SocketAddrV4::new(a.ip(), a.port()))
        .unwrap_or_else(|| SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    let mut ifindex = 0;
    let mut local = Ipv4Addr::UNSPECIFIED;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::Ipv4PacketInfo(info) = c {
                ifindex = info.ipi_ifindex;
                local = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
            }
        }
    }
    Ok(Received {
        len: msg.bytes,
        source,
        ifindex,
        local,
    })
}

fn send_with_pktinfo(
    fd: i32,
    data: &[u8],
    dest: SocketAddrV4,
    ifindex: i32,
    source: Ipv4Addr,
) -> io::Result<usize> {
    let info = libc::in_pktinfo {
        ipi_ifindex: ifindex,
        ipi_spec_dst: libc::in_addr {
            s_addr: u32::from(source).to_be(),
        },
        ipi_addr: libc::in_addr { s_addr: 0 },
    };
    let cmsgs = [ControlMessage::Ipv4PacketInfo(&info)];
    let addr = SockaddrIn::from(dest);
    Ok(sendmsg(
        fd,
        &[IoSlice::new(data)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&addr),
    )?)
}

/// Our IPv4 address on interface `ifindex`, when the kernel gave us none with the packet.
fn interface_address(ifindex: i32) -> Option<Ipv4Addr> {
    let name = nix::net::if_::if_indextoname(u32::try_from(ifindex).ok()?).ok()?;
    let name = name.to_str().ok()?;
    nix::ifaddrs::getifaddrs().ok()?.find_map(|a| {
        if a.interface_name != name {
            return None;
        }
        a.address?.as_sockaddr_in().map(|s| s.ip())
    })
}

async fn serve_socket(port: Port, socket: UdpSocket, shared: Arc<Shared>) -> Result<(), DhcpError> {
    let fd = socket.as_raw_fd();
    let mut buf = vec![0u8; wire::MAX_PACKET_LEN + 1];
    loop {
        let rx = socket
            .async_io(Interest::READABLE, || recv_with_pktinfo(fd, &mut buf))
            .await;
        let rx = match rx {
            Ok(rx) => rx,
            Err(e) => {
                warn!(error = %e, "dhcp: receive failed");
                continue;
            }
        };
        shared
            .metrics
            .received
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((data, dest, ifindex, server_ip)) = handle(&shared, port, &buf[..rx.len], &rx)
        else {
            continue;
        };
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                send_with_pktinfo(fd, &data, dest, ifindex, server_ip)
            })
            .await;
        match sent {
            Ok(_) => {
                shared
                    .metrics
                    .replies_sent
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                shared
                    .metrics
                    .send_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                warn!(error = %e, %dest, "dhcp: sending reply failed");
            }
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One datagram in, at most one datagram out.
fn handle(
    shared: &Shared,
    port: Port,
    data: &[u8],
    rx: &Received,
) -> Option<(Vec<u8>, SocketAddrV4, i32, Ipv4Addr)> {
    let metrics = &shared.metrics;
    let server_ip = if rx.local.is_unspecified() {
        interface_address(rx.ifindex).unwrap_or(Ipv4Addr::UNSPECIFIED)
    } else {
        rx.local
    };
    if server_ip.is_unspecified() {
        warn!(
            ifindex = rx.ifindex,
            "dhcp: no IPv4 address on the receiving interface; not answering"
        );
        return None;
    }
    let site = shared.site.load();
    let processed = crate::process(
        data,
        port,
        rx.source,
        server_ip,
        &site,
        shared.mode,
        |f, op| apply_lease_op(shared, f, op, &site),
    );
    let (facts, action) = match processed {
        Ok(done) => done,
        Err(why) => {
            metrics
                .malformed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            debug!(source = %rx.source, len = data.len(), %why, "dhcp: dropped malformed packet");
            return None;
        }
    };
    let firmware = facts.firmware.label();
    let msg = facts.msg_type.name();
    match action {
        Action::NoResponse(why) => {
            metrics.count_decision(shared.mode.name(), msg, firmware, why.label());
            info!(
                mac = %facts.mac, xid = format_args!("{:#010x}", facts.xid), message = msg,
                firmware = %facts.firmware, ipxe = facts.ipxe, server = %server_ip,
                outcome = why.label(), "dhcp: no reply"
            );
            None
        }
        Action::Respond(resp) => {
            let outcome = resp.reply.msg_type.name();
            metrics.count_decision(shared.mode.name(), msg, firmware, outcome);
            info!(
                mac = %facts.mac, xid = format_args!("{:#010x}", facts.xid), message = msg,
                firmware = %facts.firmware, ipxe = facts.ipxe, server = %server_ip,
                outcome, address = %resp.reply.yiaddr,
                boot = resp.boot.as_deref().unwrap_or("-"), "dhcp: reply"
            );
            let dest = match resp.destination {
                Destination::Broadcast => {
                    SocketAddrV4::new(Ipv4Addr::BROADCAST, shared.client_port)
                }
                Destination::Unicast(a) => a,
            };
            Some((encode(&resp.reply), dest, rx.ifindex, server_ip))
        }
    }
}

fn apply_lease_op(
    shared: &Shared,
    facts: &ClientFacts,
    op: LeaseOp,
    site: &DhcpSite,
) -> LeaseOutcome {
    if op == LeaseOp::None {
        return LeaseOutcome::NotApplicable;
    }
    let Some(db) = &shared.leases else {
        return LeaseOutcome::NotApplicable;
    };
    let Ok(mut db) = db.lock() else {
        return LeaseOutcome::NotApplicable;
    };
    let now = now_secs();
    let mac = facts.mac;
    let result = match op {
        LeaseOp::None => Ok(LeaseOutcome::NotApplicable),
        LeaseOp::Offer { requested } => db.offer(mac, requested, site, now).map(|ip| match ip {
            Some(ip) => LeaseOutcome::Offered(ip),
            None => LeaseOutcome::Exhausted,
        }),
        LeaseOp::Commit(ip) => db.commit(mac, ip, site, now).map(|ok| {
            if ok {
                LeaseOutcome::Bound(ip)
            } else {
                LeaseOutcome::Refused
            }
        }),
        LeaseOp::Release(ip) => db.release(mac, ip).map(|_| LeaseOutcome::NotApplicable),
        LeaseOp::Decline(ip) => {
            warn!(%mac, %ip, "dhcp: client declined address (in use by someone else?)");
            db.decline(mac, ip, now)
                .map(|_| LeaseOutcome::NotApplicable)
        }
        LeaseOp::Forget => db.forget_offer(mac).map(|_| LeaseOutcome::NotApplicable),
    };
    result.unwrap_or_else(|e| {
        shared
            .metrics
            .lease_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        warn!(error = %e, %mac, "dhcp: lease database");
        // Without the database we cannot promise an address is unique: stay silent.
        LeaseOutcome::NotApplicable
    })
}
