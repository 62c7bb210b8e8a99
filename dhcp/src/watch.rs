//! Watching the segment for other DHCP servers: a packet socket that sees UDP 67 → 68 on the
//! DHCP interface, filtered in the kernel so that nothing else is copied to us. A packet socket
//! steals nothing from the host's own DHCP client (a second UDP socket on port 68 could).

use std::io;
use std::mem::MaybeUninit;
use std::net::Ipv4Addr;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

const ETH_P_IP: u16 = 0x0800;
const PACKET_OUTGOING: u8 = 4;

/// Classic BPF on the IP header (a cooked packet socket starts there): IPv4, UDP, first
/// fragment, source port 67, destination port 68.
fn filter() -> Vec<libc::sock_filter> {
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    vec![
        op(0x30, 0, 0, 0),      // ldb [0]
        op(0x54, 0, 0, 0xf0),   // and #0xf0
        op(0x15, 0, 10, 0x40),  // jeq #0x40 (IPv4)
        op(0x30, 0, 0, 9),      // ldb [9]
        op(0x15, 0, 8, 17),     // jeq #17 (UDP)
        op(0x28, 0, 0, 6),      // ldh [6]
        op(0x45, 6, 0, 0x1fff), // jset #0x1fff (a later fragment)
        op(0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf)
        op(0x48, 0, 0, 0),      // ldh [x+0]
        op(0x15, 0, 3, 67),     // jeq #67
        op(0x48, 0, 0, 2),      // ldh [x+2]
        op(0x15, 0, 1, 68),     // jeq #68
        op(0x06, 0, 0, 0xffff), // accept
        op(0x06, 0, 0, 0),      // drop
    ]
}

pub struct Watcher {
    socket: AsyncFd<Socket>,
}

/// A DHCP reply seen on the wire: who sent it, and the server identifier it carried.
pub struct SeenReply {
    pub source: Ipv4Addr,
    pub payload: Vec<u8>,
}

impl Watcher {
    /// `ifindex` 0: every interface.
    pub fn open(ifindex: u32) -> io::Result<Watcher> {
        // Protocol 0 receives nothing until bound, so no unfiltered packet slips in before
        // the filter is attached.
        let socket = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        socket.attach_filter(&filter())?;
        socket.set_nonblocking(true)?;
        // SAFETY: a zeroed sockaddr_ll is valid; the fields set below are plain integers.
        let mut ll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        ll.sll_family = libc::AF_PACKET as u16;
        ll.sll_protocol = ETH_P_IP.to_be();
        ll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: sockaddr_ll fits in sockaddr_storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                &ll as *const libc::sockaddr_ll as *const u8,
                &mut storage as *mut libc::sockaddr_storage as *mut u8,
                std::mem::size_of::<libc::sockaddr_ll>(),
            );
        }
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: storage holds a valid sockaddr_ll of length len.
        let addr = unsafe { socket2::SockAddr::new(storage, len) };
        socket.bind(&addr)?;
        Ok(Watcher {
            // SAFETY: the Socket owns its descriptor for as long as the AsyncFd holds it.
            socket: unsafe { AsyncFd::register(socket)? },
        })
    }

    /// The next DHCP reply that another host sent (our own outgoing ones are skipped).
    pub async fn next(&self) -> io::Result<SeenReply> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1600];
        loop {
            let (n, from) = self
                .socket
                .async_io(tokio::io::Interest::READABLE, |s| s.recv_from(&mut buf))
                .await?;
            // SAFETY: the family of a packet socket's source address is AF_PACKET.
            let pkttype = if usize::try_from(from.len()).unwrap_or(0)
                >= std::mem::size_of::<libc::sockaddr_ll>()
            {
                let ll = unsafe { &*(from.as_ptr() as *const libc::sockaddr_ll) };
                ll.sll_pkttype
            } else {
                0
            };
            if pkttype == PACKET_OUTGOING {
                continue;
            }
            // SAFETY: recv_from initialised the first n bytes.
            let data: Vec<u8> = buf[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            if let Some(seen) = parse(&data) {
                return Ok(seen);
            }
        }
    }
}

fn parse(ip: &[u8]) -> Option<SeenReply> {
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    let source = Ipv4Addr::new(*ip.get(12)?, *ip.get(13)?, *ip.get(14)?, *ip.get(15)?);
    let payload = ip.get(ihl + 8..)?.to_vec();
    Some(SeenReply { source, payload })
}
