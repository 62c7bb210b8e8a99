//! The socket loop: receive on 67 and 4011 (bound to the interface), decode, decide, reply.
//! Everything protocol-related happens in the pure modules; this file moves bytes.

use std::future::Future;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags,
    SockaddrIn,
};
use pxeforge_site::settings::DhcpSettings;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::decide::{Action, Destination, LeaseOp, LeaseOutcome, Mode, Port};
use crate::encode::encode;
use crate::facts::ClientFacts;
use crate::leases::{CommitOutcome, LeaseDb, LeaseError, OfferOutcome};
use crate::metrics::DhcpMetrics;
use crate::probe::Prober;
use crate::site::DhcpSite;
use crate::watch::Watcher;
use crate::wire;

/// Addresses tried for one DISCOVER when probes keep finding them in use.
const MAX_PROBES_PER_DISCOVER: u32 = 3;
/// Other DHCP servers remembered for rate-limiting their warning (one line per server a minute).
const MAX_WARNED_SERVERS: usize = 256;

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
    /// SO_RCVBUF of each socket (`dhcp.recv_buffer_bytes`); 0 leaves the kernel's default.
    pub recv_buffer_bytes: usize,
    /// Most requests whose leases one fsync makes durable (`dhcp.group_commit_max`); 1 fsyncs
    /// each lease on its own.
    pub group_commit_max: usize,
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
            recv_buffer_bytes: DhcpSettings::default().recv_buffer_bytes,
            group_commit_max: DhcpSettings::default().group_commit_max,
        }
    }

    /// The tuning of `[dhcp]`: socket buffer and group commit.
    pub fn tuned(mut self, settings: &DhcpSettings) -> Self {
        self.recv_buffer_bytes = settings.recv_buffer_bytes;
        self.group_commit_max = settings.group_commit_max;
        self
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
    #[error(
        "reservation mode needs dhcp.interface (--dhcp-interface): a DHCP server that hands out \
         addresses must not answer on every interface"
    )]
    NoInterface,
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
    /// None: probing is off, or the ICMP socket could not be opened (warned at start).
    prober: Option<Arc<Prober>>,
    /// Most requests handled before their leases are fsynced together (at least 1).
    group_commit_max: usize,
}

pub struct DhcpServer {
    sockets: Vec<(Port, UdpSocket)>,
    shared: Arc<Shared>,
    watcher: Option<Watcher>,
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
    if config.recv_buffer_bytes > 0 {
        set_recv_buffer(&socket, config.recv_buffer_bytes);
    }
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

/// Sets SO_RCVBUF to `bytes`: beyond `net.core.rmem_max` with SO_RCVBUFFORCE when allowed
/// (CAP_NET_ADMIN, which a DHCP server on port 67 usually has), else as far as the kernel lets.
/// The kernel's default (~200 KiB, a few hundred requests) overflows within milliseconds of a
/// boot storm while a batch of leases is fsynced; a smaller buffer costs only retries.
fn set_recv_buffer(socket: &Socket, bytes: usize) {
    let want = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is open for the call; the option value is a c_int as SO_RCVBUFFORCE wants.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&want as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    } == 0;
    if !forced {
        if let Err(e) = socket.set_recv_buffer_size(bytes) {
            warn!(error = %e, bytes, "dhcp: cannot set the socket receive buffer (dhcp.recv_buffer_bytes)");
        }
    }
    if let Ok(got) = socket.recv_buffer_size() {
        // The kernel doubles the value for its bookkeeping.
        if got < bytes {
            warn!(asked = bytes, got, "dhcp: socket receive buffer smaller than dhcp.recv_buffer_bytes (net.core.rmem_max)");
        }
    }
}

impl DhcpServer {
    pub async fn bind(
        config: DhcpConfig,
        site: Arc<ArcSwap<DhcpSite>>,
    ) -> Result<DhcpServer, DhcpError> {
        let interface = config.interface.as_deref().filter(|n| !n.is_empty());
        match (config.mode, interface) {
            (Mode::Reservation, None) => return Err(DhcpError::NoInterface),
            (Mode::Proxy, None) => warn!(
                "dhcp: proxy mode on every interface: name one with dhcp.interface \
                 (--dhcp-interface) to keep boot offers off other networks"
            ),
            _ => {}
        }
        let mut moved_aside = false;
        let leases = if config.mode == Mode::Reservation {
            if let Some(dir) = config.lease_db.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut db = LeaseDb::open(&config.lease_db)?;
            moved_aside = db.moved_aside().is_some();
            // The socket loop fsyncs each batch's leases once before answering them.
            db.set_group_commit(config.group_commit_max > 1)?;
            Some(Mutex::new(db))
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
        let prober = if config.mode == Mode::Reservation {
            match Prober::start() {
                Ok(p) => Some(p),
                Err(e) => {
                    if site.load().ping_check {
                        warn!(error = %e, "dhcp: no ICMP socket: addresses are offered without a conflict probe (dhcp.ping_check)");
                    }
                    None
                }
            }
        } else {
            None
        };
        let watcher = if config.mode == Mode::Off {
            None
        } else {
            let ifindex = match interface {
                Some(name) => nix::net::if_::if_nametoindex(name).unwrap_or(0),
                None => 0,
            };
            match Watcher::open(ifindex) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(error = %e, "dhcp: cannot watch the segment for other DHCP servers (needs CAP_NET_RAW)");
                    None
                }
            }
        };
        Ok(DhcpServer {
            sockets,
            shared: Arc::new(Shared {
                mode: config.mode,
                client_port: config.client_port,
                site,
                metrics: {
                    let m = DhcpMetrics::default();
                    m.lease_store_moved_aside
                        .store(u64::from(moved_aside), Ordering::Relaxed);
                    Arc::new(m)
                },
                leases,
                prober,
                group_commit_max: config.group_commit_max.max(1),
            }),
            watcher,
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
            tasks.spawn(async move { serve_socket(port, Arc::new(socket), shared).await });
        }
        if let Some(watcher) = self.watcher {
            let shared = self.shared.clone();
            tasks.spawn(async move { watch_servers(watcher, shared).await });
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

async fn serve_socket(
    port: Port,
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
) -> Result<(), DhcpError> {
    let fd = socket.as_raw_fd();
    let mut buf = vec![0u8; wire::MAX_PACKET_LEN + 1];
    // Replies that wait for their batch's leases to be fsynced.
    let mut held: Vec<Outgoing> = Vec::new();
    loop {
        // A batch is the datagram that woke us and whatever else queued meanwhile (at most
        // `group_commit_max`): their leases are committed one by one, fsynced once, and only
        // then answered. At a low rate a batch is one request, fsynced on its own as before.
        let rx = socket
            .async_io(Interest::READABLE, || recv_with_pktinfo(fd, &mut buf))
            .await;
        on_datagram(port, &socket, &shared, &buf, rx, &mut held).await;
        for _ in 1..shared.group_commit_max {
            let rx = socket.try_io(Interest::READABLE, || recv_with_pktinfo(fd, &mut buf));
            if rx
                .as_ref()
                .is_err_and(|e| e.kind() == io::ErrorKind::WouldBlock)
            {
                break;
            }
            on_datagram(port, &socket, &shared, &buf, rx, &mut held).await;
        }
        if !held.is_empty() {
            send_held(&socket, &shared, &mut held).await;
        }
    }
}

/// Handles one received datagram: a reply goes out at once unless the lease written for it
/// still waits for the batch's fsync; then it joins `held`. (An OFFER's hold needs no fsync.)
async fn on_datagram(
    port: Port,
    socket: &Arc<UdpSocket>,
    shared: &Arc<Shared>,
    buf: &[u8],
    rx: io::Result<Received>,
    held: &mut Vec<Outgoing>,
) {
    let rx = match rx {
        Ok(rx) => rx,
        Err(e) => {
            warn!(error = %e, "dhcp: receive failed");
            return;
        }
    };
    shared.metrics.received.fetch_add(1, Ordering::Relaxed);
    let data = &buf[..rx.len];
    match handle(shared, port, data, &rx) {
        Handled::Silent => {}
        Handled::Reply(out) => {
            if out.durable && unsynced(shared) {
                held.push(out);
            } else {
                send_reply(socket, shared, out).await;
            }
        }
        Handled::Probe(probe) => {
            let data = data.to_vec();
            let (socket, shared) = (socket.clone(), shared.clone());
            // Off the packet path: the offer is sent when the probe is done.
            tokio::spawn(
                async move { probe_then_offer(socket, shared, port, data, rx, probe).await },
            );
        }
    }
}

/// Whether a lease write awaits the fsync (conservatively yes if the lock is poisoned: the
/// reply then waits for `send_held`, which drops it).
fn unsynced(shared: &Shared) -> bool {
    shared
        .leases
        .as_ref()
        .is_some_and(|db| db.lock().map_or(true, |db| db.needs_sync()))
}

/// Makes the batch's leases durable with one fsync, then sends the replies that waited for it.
/// If the fsync fails, none of them is sent: no ACK for a lease that may not survive a crash
/// (the clients retry).
async fn send_held(socket: &UdpSocket, shared: &Shared, held: &mut Vec<Outgoing>) {
    let synced = match shared.leases.as_ref().map(|db| db.lock()) {
        None => Ok(()),
        Some(Ok(mut db)) => {
            let was_needed = db.needs_sync();
            let r = db.sync();
            if was_needed && r.is_ok() {
                shared.metrics.lease_syncs.fetch_add(1, Ordering::Relaxed);
            }
            r.map_err(|e| e.to_string())
        }
        Some(Err(_)) => Err("lease database lock poisoned".to_string()),
    };
    if let Err(e) = synced {
        shared.metrics.lease_errors.fetch_add(1, Ordering::Relaxed);
        warn!(error = %e, replies = held.len(), "dhcp: lease database: fsync failed, replies not sent");
        held.clear();
        return;
    }
    for out in held.drain(..) {
        send_reply(socket, shared, out).await;
    }
}

struct Outgoing {
    data: Vec<u8>,
    dest: SocketAddrV4,
    ifindex: i32,
    source: Ipv4Addr,
    /// Answers a request that wrote a lease: sent only once the lease is durable.
    durable: bool,
}

struct ProbeNeeded {
    mac: crate::Mac,
    ip: Ipv4Addr,
}

enum Handled {
    Silent,
    Reply(Outgoing),
    /// A new address must be probed before the client is offered it.
    Probe(ProbeNeeded),
}

async fn send_reply(socket: &UdpSocket, shared: &Shared, out: Outgoing) {
    let fd = socket.as_raw_fd();
    let sent = socket
        .async_io(Interest::WRITABLE, || {
            send_with_pktinfo(fd, &out.data, out.dest, out.ifindex, out.source)
        })
        .await;
    match sent {
        Ok(_) => {
            shared.metrics.replies_sent.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            shared.metrics.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, dest = %out.dest, "dhcp: sending reply failed");
        }
    }
}

/// Probes the address chosen for a DISCOVER, records the result, and handles the DISCOVER again:
/// now it finds an offer to send, or (after a conflict) picks and probes another address.
async fn probe_then_offer(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    port: Port,
    data: Vec<u8>,
    rx: Received,
    mut probe: ProbeNeeded,
) {
    let Some(prober) = shared.prober.clone() else {
        return;
    };
    for _ in 0..MAX_PROBES_PER_DISCOVER {
        let site = shared.site.load_full();
        let timeout = Duration::from_millis(u64::from(site.ping_timeout_ms));
        shared.metrics.ping_probes.fetch_add(1, Ordering::Relaxed);
        let answered = match prober.probe(probe.ip, timeout).await {
            Ok(a) => a,
            Err(e) => {
                // Unprobed is what we would do without a prober: offer it.
                debug!(ip = %probe.ip, error = %e, "dhcp: probe not sent");
                false
            }
        };
        let recorded = shared
            .leases
            .as_ref()
            .and_then(|db| db.lock().ok())
            .map(|mut db| {
                if answered {
                    db.conflict(probe.mac, probe.ip, &site, now_secs())
                        .map(|_| true)
                } else {
                    db.probed(probe.mac, probe.ip, &site, now_secs())
                }
            });
        if let Some(Err(e)) = recorded {
            shared.metrics.lease_errors.fetch_add(1, Ordering::Relaxed);
            warn!(error = %e, "dhcp: lease database");
            return;
        }
        if answered {
            shared
                .metrics
                .ping_conflicts
                .fetch_add(1, Ordering::Relaxed);
            warn!(ip = %probe.ip, mac = %probe.mac, "dhcp: address answers ping but is not leased; kept out of the pool for 10 minutes");
        }
        match handle(&shared, port, &data, &rx) {
            Handled::Silent => return,
            Handled::Reply(out) => return send_reply(&socket, &shared, out).await,
            Handled::Probe(next) => probe = next,
        }
    }
    warn!(mac = %probe.mac, "dhcp: every address probed for this DISCOVER was in use; no offer");
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One datagram in, at most one datagram out (or a probe that must come first).
fn handle(shared: &Shared, port: Port, data: &[u8], rx: &Received) -> Handled {
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
        return Handled::Silent;
    }
    let site = shared.site.load();
    let probe = std::cell::Cell::new(None);
    // Whether this request wrote a lease that must be durable before its reply leaves.
    let durable = std::cell::Cell::new(false);
    let processed = crate::process(
        data,
        port,
        rx.source,
        server_ip,
        &site,
        shared.mode,
        |f, op| {
            durable.set(matches!(
                op,
                LeaseOp::Commit { .. } | LeaseOp::Release(_) | LeaseOp::Decline(_)
            ));
            apply_lease_op(shared, f, op, &site, &probe)
        },
    );
    let (facts, action) = match processed {
        Ok(done) => done,
        Err(why) => {
            if wire::decode(data).is_ok_and(|p| p.op == wire::BOOTREPLY) {
                // Another server's reply to a relay: seen here, reported by the watcher.
                debug!(source = %rx.source, "dhcp: BOOTREPLY on the server port");
                return Handled::Silent;
            }
            metrics.malformed.fetch_add(1, Ordering::Relaxed);
            debug!(source = %rx.source, len = data.len(), %why, "dhcp: dropped malformed packet");
            return Handled::Silent;
        }
    };
    if let Some(ip) = probe.get() {
        return Handled::Probe(ProbeNeeded { mac: facts.mac, ip });
    }
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
            Handled::Silent
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
            Handled::Reply(Outgoing {
                data: encode(&resp.reply),
                dest,
                ifindex: rx.ifindex,
                source: server_ip,
                durable: durable.get(),
            })
        }
    }
}

fn apply_lease_op(
    shared: &Shared,
    facts: &ClientFacts,
    op: LeaseOp,
    site: &DhcpSite,
    probe: &std::cell::Cell<Option<Ipv4Addr>>,
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
    let metrics = &shared.metrics;
    let result = match op {
        LeaseOp::None => Ok(LeaseOutcome::NotApplicable),
        LeaseOp::Offer { pool, requested } => {
            let Some(pool) = site.pools.get(pool) else {
                return LeaseOutcome::NotApplicable;
            };
            let ping = site.ping_check && shared.prober.is_some();
            db.offer(mac, requested, pool, site, now, ping)
                .map(|o| match o {
                    OfferOutcome::Offered(ip) => LeaseOutcome::Offered(ip),
                    OfferOutcome::Probe(ip) => {
                        probe.set(Some(ip));
                        LeaseOutcome::Probing
                    }
                    OfferOutcome::Probing => LeaseOutcome::Probing,
                    OfferOutcome::Exhausted => LeaseOutcome::Exhausted,
                })
        }
        LeaseOp::Commit { pool, ip, kind } => {
            let Some(pool) = site.pools.get(pool) else {
                return LeaseOutcome::NotApplicable;
            };
            db.commit(mac, ip, kind, pool, site, now).map(|c| match c {
                CommitOutcome::Bound(ip) => LeaseOutcome::Bound(ip),
                CommitOutcome::Refused => {
                    metrics.unsolicited_nak.fetch_add(1, Ordering::Relaxed);
                    info!(%mac, %ip, ?kind, "dhcp: REQUEST for an address not offered to this client: NAK");
                    LeaseOutcome::Refused
                }
                CommitOutcome::Unknown => {
                    metrics.unsolicited_ignored.fetch_add(1, Ordering::Relaxed);
                    info!(%mac, %ip, ?kind, "dhcp: REQUEST from a client with no lease here: ignored");
                    LeaseOutcome::Unknown
                }
            })
        }
        LeaseOp::Release(ip) => db
            .release(mac, ip, site, now)
            .map(|_| LeaseOutcome::NotApplicable),
        LeaseOp::Decline(ip) => {
            warn!(%mac, %ip, "dhcp: client declined address (in use by someone else?)");
            db.decline(mac, ip, site, now)
                .map(|_| LeaseOutcome::NotApplicable)
        }
        LeaseOp::Forget => db
            .forget_offer(mac, site, now)
            .map(|_| LeaseOutcome::NotApplicable),
    };
    result.unwrap_or_else(|e| {
        metrics.lease_errors.fetch_add(1, Ordering::Relaxed);
        warn!(error = %e, %mac, "dhcp: lease database");
        // Nothing unwritten is promised: no offer, no ACK beyond what is already on disk.
        LeaseOutcome::NotApplicable
    })
}

/// Our own IPv4 addresses, so that our own replies (looped back) are not reported.
fn local_addresses() -> Vec<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// Reports every DHCP reply on the segment that did not come from us: from a server in
/// `dhcp.peers` at debug level, from any other at warn (once a minute per server).
async fn watch_servers(watcher: Watcher, shared: Arc<Shared>) -> Result<(), DhcpError> {
    let mut warned: std::collections::HashMap<Ipv4Addr, Instant> = Default::default();
    let mut ours = local_addresses();
    let mut ours_read = Instant::now();
    loop {
        let seen = match watcher.next().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "dhcp: watching for other DHCP servers failed; stopped");
                // The DHCP service itself goes on.
                std::future::pending::<()>().await;
                return Ok(());
            }
        };
        let Ok(packet) = wire::decode(&seen.payload) else {
            continue;
        };
        if packet.op != wire::BOOTREPLY {
            continue;
        }
        let server = packet
            .option_ip(wire::opt::SERVER_ID)
            .unwrap_or(seen.source);
        if ours_read.elapsed() > Duration::from_secs(10) {
            ours = local_addresses();
            ours_read = Instant::now();
        }
        if ours.contains(&server) || ours.contains(&seen.source) {
            continue;
        }
        let site = shared.site.load();
        if site.peers.contains(&server) || site.peers.contains(&seen.source) {
            shared
                .metrics
                .peer_server_replies
                .fetch_add(1, Ordering::Relaxed);
            debug!(%server, "dhcp: reply from a peer DHCP server");
            continue;
        }
        shared
            .metrics
            .foreign_server_replies
            .fetch_add(1, Ordering::Relaxed);
        let due = warned
            .get(&server)
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if due {
            if warned.len() >= MAX_WARNED_SERVERS {
                warned.clear();
            }
            warned.insert(server, Instant::now());
            warn!(
                %server, source = %seen.source, mac = %packet.mac(),
                address = %packet.yiaddr,
                "dhcp: another DHCP server answers on this segment (list it in dhcp.peers if expected)"
            );
        } else {
            debug!(%server, "dhcp: reply from another DHCP server");
        }
    }
}
