//! Simulated PXE firmware and iPXE DHCP clients. They share one socket on port 68 (as hosts on
//! one broadcast domain share the port) and a receive task hands each reply to its transaction
//! by xid. Requests are built with dhcproto, an implementation independent of ours (the dhcp
//! crate encodes only replies); replies are read with the dhcp crate's own decoder (`wire`),
//! the one the server itself trusts with untrusted input.

use dhcproto::v4::{self, DhcpOption, Flags, Message, MessageType, OptionCode};
use dhcproto::{Encodable, Encoder};
use pxeforge_dhcp::wire::{self, opt};
use pxeforge_dhcp::MessageType as ReplyType;
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SimDhcp {
    /// proxyDHCP: boot information only (DISCOVER→OFFER on 67, REQUEST→ACK on 4011)
    Proxy,
    /// Reservation DHCP: each host's address (DISCOVER→OFFER, REQUEST→ACK on 67)
    Reservation,
    /// No DHCP stage
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("no {0} after {1} tries")]
    Timeout(&'static str, u32),
    #[error("encoding: {0}")]
    Encode(String),
    #[error("{0}")]
    Reply(String),
}

/// What a client tells the server about itself.
#[derive(Debug, Clone)]
pub struct Identity {
    pub mac: [u8; 6],
    pub uefi: bool,
    pub ipxe: bool,
}

/// The parts of the final reply the simulation checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub boot_file: String,
    pub yiaddr: Ipv4Addr,
}

type Waiters = Arc<Mutex<HashMap<u32, mpsc::UnboundedSender<wire::Packet>>>>;

pub struct DhcpClient {
    sock: Arc<UdpSocket>,
    waiters: Waiters,
    /// Every ACK with an address that reached the clients, whichever transaction it answered
    /// (retransmissions and late answers included): the run checks no address went to two MACs.
    pub acks: Arc<super::kill9::Acks>,
    server: Ipv4Addr,
    _rx_task: tokio::task::JoinHandle<()>,
}

pub fn build(
    id: &Identity,
    xid: u32,
    kind: MessageType,
    extra: &[DhcpOption],
    ciaddr: Ipv4Addr,
) -> Message {
    let mut m = Message::default();
    m.set_xid(xid)
        .set_chaddr(&id.mac)
        .set_ciaddr(ciaddr)
        .set_flags(Flags::default().set_broadcast());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let arch: u16 = if id.uefi { 7 } else { 0 };
    opts.insert(DhcpOption::ClientSystemArchitecture(
        v4::Architecture::from(arch),
    ));
    opts.insert(DhcpOption::ClassIdentifier(
        format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes(),
    ));
    let mut guid = vec![0u8; 17];
    guid[11..].copy_from_slice(&id.mac);
    opts.insert(DhcpOption::ClientMachineIdentifier(guid));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::VendorExtensions,
        OptionCode::ClassIdentifier,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    if id.ipxe {
        opts.insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    }
    for o in extra {
        opts.insert(o.clone());
    }
    m
}

/// The boot file of a reply: option 67, else the BOOTP `file` field (up to its first NUL).
pub fn boot_file(m: &wire::Packet) -> Option<String> {
    if let Some(b) = m.options.get(opt::BOOTFILE) {
        return Some(
            String::from_utf8_lossy(b)
                .trim_end_matches('\0')
                .to_string(),
        );
    }
    let f = m.file.split(|&b| b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(f).into_owned()).filter(|f| !f.is_empty())
}

fn server_id(m: &wire::Packet) -> Option<Ipv4Addr> {
    m.option_ip(opt::SERVER_ID)
}

fn encode(m: &Message) -> Result<Vec<u8>, DhcpError> {
    let mut out = Vec::with_capacity(400);
    m.encode(&mut Encoder::new(&mut out))
        .map_err(|e| DhcpError::Encode(e.to_string()))?;
    Ok(out)
}

impl DhcpClient {
    /// Binds 0.0.0.0:68 on `interface` (broadcasts must stay on it) and starts the receiver.
    pub fn bind(interface: &str, server: Ipv4Addr) -> Result<DhcpClient, DhcpError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_address(true)?;
        s.set_broadcast(true)?;
        s.bind_device(Some(interface.as_bytes()))?;
        s.set_nonblocking(true)?;
        s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)).into())?;
        let sock = Arc::new(UdpSocket::from_std(s.into())?);
        let waiters: Waiters = Arc::default();
        let acks: Arc<super::kill9::Acks> = Arc::default();
        let (rs, rw, ra) = (sock.clone(), waiters.clone(), acks.clone());
        let rx_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, _)) = rs.recv_from(&mut buf).await else {
                    continue;
                };
                let Ok(msg) = wire::decode(&buf[..n]) else {
                    continue;
                };
                if msg.op != wire::BOOTREPLY {
                    continue;
                }
                if msg.msg_type() == Some(ReplyType::Ack.code()) {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(&msg.chaddr[..6]);
                    ra.record(msg.yiaddr, mac);
                }
                let tx = rw.lock().ok().and_then(|w| w.get(&msg.xid).cloned());
                if let Some(tx) = tx {
                    let _ = tx.send(msg);
                }
            }
        });
        Ok(DhcpClient {
            sock,
            waiters,
            acks,
            server,
            _rx_task: rx_task,
        })
    }

    /// Sends `m` to `to` until a reply of type `want` arrives (1 s apart, 4 tries).
    async fn transact(
        &self,
        rx: &mut mpsc::UnboundedReceiver<wire::Packet>,
        m: &Message,
        to: SocketAddrV4,
        want: ReplyType,
        what: &'static str,
    ) -> Result<wire::Packet, DhcpError> {
        let data = encode(m)?;
        let tries = 4;
        for _ in 0..tries {
            self.sock.send_to(&data, SocketAddr::V4(to)).await?;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            while let Ok(Some(reply)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                match reply.msg_type().and_then(ReplyType::from_code) {
                    Some(t) if t == want => return Ok(reply),
                    Some(ReplyType::Nak) => return Err(DhcpError::Reply(format!("NAK to {what}"))),
                    _ => continue,
                }
            }
        }
        Err(DhcpError::Timeout(what, tries))
    }

    /// One full exchange in `mode`; returns what the host would boot with.
    pub async fn exchange(
        &self,
        id: &Identity,
        xid: u32,
        mode: SimDhcp,
    ) -> Result<Lease, DhcpError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if let Ok(mut w) = self.waiters.lock() {
            w.insert(xid, tx);
        }
        let result = self.exchange_inner(id, xid, mode, &mut rx).await;
        if let Ok(mut w) = self.waiters.lock() {
            w.remove(&xid);
        }
        result
    }

    async fn exchange_inner(
        &self,
        id: &Identity,
        xid: u32,
        mode: SimDhcp,
        rx: &mut mpsc::UnboundedReceiver<wire::Packet>,
    ) -> Result<Lease, DhcpError> {
        let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
        let discover = build(id, xid, MessageType::Discover, &[], Ipv4Addr::UNSPECIFIED);
        let offer = self
            .transact(rx, &discover, bcast, ReplyType::Offer, "OFFER")
            .await?;
        match mode {
            SimDhcp::Proxy => {
                // The client has its address from the site's DHCP server; it asks the proxy's
                // boot service on 4011 from it.
                let request = build(id, xid, MessageType::Request, &[], self.server);
                let to = SocketAddrV4::new(server_id(&offer).unwrap_or(self.server), 4011);
                let ack = self
                    .transact(rx, &request, to, ReplyType::Ack, "ACK on 4011")
                    .await?;
                let boot_file = boot_file(&ack)
                    .ok_or_else(|| DhcpError::Reply("ACK without a boot file".into()))?;
                Ok(Lease {
                    boot_file,
                    yiaddr: ack.yiaddr,
                })
            }
            SimDhcp::Reservation | SimDhcp::Off => {
                let sid = server_id(&offer)
                    .ok_or_else(|| DhcpError::Reply("OFFER without server id".into()))?;
                let extra = [
                    DhcpOption::RequestedIpAddress(offer.yiaddr),
                    DhcpOption::ServerIdentifier(sid),
                ];
                let request = build(id, xid, MessageType::Request, &extra, Ipv4Addr::UNSPECIFIED);
                let ack = self
                    .transact(rx, &request, bcast, ReplyType::Ack, "ACK")
                    .await?;
                if ack.yiaddr != offer.yiaddr {
                    return Err(DhcpError::Reply(format!(
                        "ACK for {} after an OFFER of {}",
                        ack.yiaddr, offer.yiaddr
                    )));
                }
                let boot_file = boot_file(&ack)
                    .ok_or_else(|| DhcpError::Reply("ACK without a boot file".into()))?;
                Ok(Lease {
                    boot_file,
                    yiaddr: ack.yiaddr,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packets we send are what pxeforge's own DHCP parser reads as a PXE/iPXE client.
    #[test]
    fn requests_read_as_pxe_clients_by_the_dhcp_crate() {
        let id = Identity {
            mac: [2, 0x50, 0x46, 0, 0, 7],
            uefi: true,
            ipxe: false,
        };
        let m = build(
            &id,
            0x1234,
            MessageType::Discover,
            &[],
            Ipv4Addr::UNSPECIFIED,
        );
        let facts = pxeforge_dhcp::parse_request(&encode(&m).unwrap()).unwrap();
        assert_eq!(facts.mac.0, id.mac);
        assert_eq!(facts.xid, 0x1234);
        assert!(!facts.ipxe);
        let ipxe = build(
            &Identity { ipxe: true, ..id },
            1,
            MessageType::Discover,
            &[],
            Ipv4Addr::UNSPECIFIED,
        );
        assert!(
            pxeforge_dhcp::parse_request(&encode(&ipxe).unwrap())
                .unwrap()
                .ipxe
        );
    }

    /// Replies are read by the dhcp crate's decoder: option 67 first, else the `file` field.
    #[test]
    fn boot_file_of_a_reply_encoded_by_the_dhcp_crate() {
        let reply = |file: Option<&str>, opt67: Option<&str>| {
            let r = pxeforge_dhcp::encode::Reply {
                msg_type: ReplyType::Ack,
                xid: 9,
                flags: 0x8000,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                yiaddr: Ipv4Addr::new(10, 0, 0, 9),
                siaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                chaddr: [0; 16],
                file: file.map(String::from),
                options: opt67
                    .map(|b| (opt::BOOTFILE, b.as_bytes().to_vec()))
                    .into_iter()
                    .chain([(opt::SERVER_ID, vec![10, 0, 0, 1])])
                    .collect(),
            };
            wire::decode(&pxeforge_dhcp::encode::encode(&r)).unwrap()
        };
        let both = reply(Some("undionly.kpxe"), Some("http://s/boot.ipxe"));
        assert_eq!(boot_file(&both).as_deref(), Some("http://s/boot.ipxe"));
        assert_eq!(server_id(&both), Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(both.msg_type(), Some(ReplyType::Ack.code()));
        assert_eq!(
            boot_file(&reply(Some("snponly.efi"), None)).as_deref(),
            Some("snponly.efi")
        );
        assert_eq!(boot_file(&reply(None, None)), None);
    }
}
