//! ICMP echo probes of an address before it is first offered (conflict detection, as dnsmasq
//! and Kea do). One socket per server: an ICMP datagram ("ping") socket where
//! `net.ipv4.ping_group_range` allows it, else a raw socket (root or CAP_NET_RAW). Probes run in
//! their own tasks; the packet path never waits for one.

use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tracing::debug;

const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;
const PAYLOAD: &[u8; 8] = b"pxeforge";

pub struct Prober {
    socket: AsyncFd<Socket>,
    /// Raw sockets see every ICMP packet and include the IP header; ping sockets neither.
    raw: bool,
    /// Our echo identifier on a raw socket (a ping socket's is the kernel's).
    ident: u16,
    seq: AtomicU16,
    /// Addresses being probed → who is waiting for an answer.
    waiting: Mutex<HashMap<Ipv4Addr, oneshot::Sender<()>>>,
}

impl Prober {
    /// Opens the socket and starts the task that reads echo replies. Needs a tokio runtime.
    pub fn start() -> io::Result<Arc<Prober>> {
        let (socket, raw) = match Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4)) {
            Ok(s) => (s, false),
            Err(_) => (
                Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?,
                true,
            ),
        };
        socket.set_nonblocking(true)?;
        let prober = Arc::new(Prober {
            // SAFETY: the Socket owns its descriptor for as long as the AsyncFd holds it.
            socket: unsafe { AsyncFd::register(socket)? },
            raw,
            ident: (std::process::id() & 0xffff) as u16,
            seq: AtomicU16::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        let reader = Arc::downgrade(&prober);
        tokio::spawn(async move {
            let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
            while let Some(p) = reader.upgrade() {
                let got = p
                    .socket
                    .async_io(tokio::io::Interest::READABLE, |s| s.recv_from(&mut buf))
                    .await;
                let Ok((n, from)) = got else { continue };
                // SAFETY: recv_from initialised the first n bytes.
                let data: Vec<u8> = buf[..n]
                    .iter()
                    .map(|b| unsafe { b.assume_init() })
                    .collect();
                if let Some(SocketAddr::V4(from)) = from.as_socket() {
                    p.answer(*from.ip(), &data);
                }
            }
        });
        Ok(prober)
    }

    fn answer(&self, from: Ipv4Addr, data: &[u8]) {
        let icmp = if self.raw {
            let ihl = usize::from(data.first().map_or(0, |b| b & 0x0f)) * 4;
            data.get(ihl..).unwrap_or_default()
        } else {
            data
        };
        if icmp.len() < 8 || icmp[0] != ECHO_REPLY {
            return;
        }
        if self.raw && u16::from_be_bytes([icmp[4], icmp[5]]) != self.ident {
            return;
        }
        if let Ok(mut w) = self.waiting.lock() {
            if let Some(tx) = w.remove(&from) {
                let _ = tx.send(());
            }
        }
    }

    /// Whether `ip` answered an echo request within `timeout`.
    pub async fn probe(&self, ip: Ipv4Addr, timeout: Duration) -> io::Result<bool> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(ip, tx);
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let packet = echo_request(self.ident, seq);
        let dest = socket2::SockAddr::from(SocketAddrV4::new(ip, 0));
        let sent = self
            .socket
            .async_io(tokio::io::Interest::WRITABLE, |s| s.send_to(&packet, &dest))
            .await;
        let answered = match &sent {
            Ok(_) => tokio::time::timeout(timeout, rx)
                .await
                .is_ok_and(|r| r.is_ok()),
            Err(e) => {
                debug!(%ip, error = %e, "dhcp: sending ICMP probe failed");
                false
            }
        };
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&ip);
        }
        sent.map(|_| answered)
    }
}

fn echo_request(ident: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![ECHO_REQUEST, 0, 0, 0];
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(PAYLOAD);
    let sum = checksum(&p);
    p[2..4].copy_from_slice(&sum.to_be_bytes());
    p
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksums_to_zero() {
        let p = echo_request(0x1234, 7);
        assert_eq!(p[0], ECHO_REQUEST);
        assert_eq!(checksum(&p), 0);
    }
}
