//! The decision: one pure function of (request facts, site, mode, lease state) → reply or silence,
//! shared by proxy and reservation mode. No sockets, no clock, no database here.

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::encode::Reply;
use crate::facts::{ClientFacts, Firmware, MessageType, VendorClass};
use crate::pxe;
use crate::site::{DhcpSite, HostEntry, Pool};
use crate::wire::opt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Off,
    /// Beside the site's own DHCP server: boot information only, no addresses.
    Proxy,
    /// The only DHCP server of an isolated provisioning network.
    Reservation,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Proxy => "proxy",
            Mode::Reservation => "reservation",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(Mode::Off),
            "proxy" => Ok(Mode::Proxy),
            "reservation" => Ok(Mode::Reservation),
            other => Err(format!(
                "unknown DHCP mode {other:?} (off, proxy, reservation)"
            )),
        }
    }
}

/// Which of our sockets the request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// 67: DHCP
    Dhcp,
    /// 4011: PXE boot server discovery / proxyDHCP request
    Pxe,
}

#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub facts: &'a ClientFacts,
    pub port: Port,
    /// Where the datagram came from (a relay, a client with an address, or 0.0.0.0:68).
    pub source: SocketAddrV4,
    /// Our address on the interface the request came in on.
    pub server_ip: Ipv4Addr,
}

/// What the lease database must do before the decision (reservation mode, pool clients only).
/// `pool` is the index in `DhcpSite::pools` of the pool of the request's subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOp {
    None,
    /// Find (or keep) an address for this client and hold it briefly.
    Offer {
        pool: usize,
        requested: Option<Ipv4Addr>,
    },
    /// Bind the address the client asks for, if it may have it.
    Commit {
        pool: usize,
        ip: Ipv4Addr,
        kind: RequestKind,
    },
    Release(Ipv4Addr),
    Decline(Ipv4Addr),
    /// The client chose another server: drop what we offered.
    Forget,
}

pub use crate::leases::RequestKind;

/// What the lease database answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    NotApplicable,
    Offered(Ipv4Addr),
    /// A new address is being probed (ICMP echo) before it is offered.
    Probing,
    Bound(Ipv4Addr),
    /// The client may not have the address it asked for: NAK.
    Refused,
    /// A REQUEST from a client we have no record of: silence (RFC 2131 §4.3.2).
    Unknown,
    Exhausted,
}

/// Why we stay silent; each is a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Silence {
    ModeOff,
    NotBootClient,
    LocalBoot,
    UnsupportedFirmware,
    UnknownHost,
    OtherServer,
    PoolExhausted,
    Released,
    Declined,
    Ignored,
    /// A REQUEST for an address this server never gave the client.
    Unsolicited,
    /// The address chosen for the client is being probed; the offer follows the probe.
    Probing,
}

impl Silence {
    pub fn label(self) -> &'static str {
        match self {
            Silence::ModeOff => "mode_off",
            Silence::NotBootClient => "not_boot_client",
            Silence::LocalBoot => "local_boot",
            Silence::UnsupportedFirmware => "unsupported_firmware",
            Silence::UnknownHost => "unknown_host",
            Silence::OtherServer => "other_server",
            Silence::PoolExhausted => "pool_exhausted",
            Silence::Released => "released",
            Silence::Declined => "declined",
            Silence::Ignored => "ignored",
            Silence::Unsolicited => "unsolicited",
            Silence::Probing => "probing",
        }
    }
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the interface the request came in on.
    Broadcast,
    Unicast(SocketAddrV4),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub reply: Reply,
    pub destination: Destination,
    /// The boot file or URL offered, for logs and tests.
    pub boot: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Respond(Box<Response>),
    NoResponse(Silence),
}

/// The boot offer for a client, independent of mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootChoice {
    /// A file on our TFTP server.
    Tftp(String),
    /// A URL: iPXE's script, or the binary for UEFI HTTP boot.
    Url(String),
    /// Known host with `install = false`.
    LocalBoot,
    /// Not a network-boot client (plain DHCP), or firmware we have no binary for.
    None(Silence),
}

impl BootChoice {
    fn file(&self) -> Option<&str> {
        match self {
            BootChoice::Tftp(f) | BootChoice::Url(f) => Some(f),
            _ => None,
        }
    }
}

fn is_boot_client(f: &ClientFacts) -> bool {
    f.ipxe
        || matches!(
            f.vendor_class,
            VendorClass::PxeClient | VendorClass::HttpClient
        )
}

pub fn boot_choice(f: &ClientFacts, site: &DhcpSite, server_ip: Ipv4Addr) -> BootChoice {
    if !is_boot_client(f) {
        return BootChoice::None(Silence::NotBootClient);
    }
    if site.hosts.get(&f.mac).is_some_and(|h| !h.install) {
        return BootChoice::LocalBoot;
    }
    let base = site.http_base(server_ip);
    // iPXE goes straight to the script; offering it the iPXE binary again would loop forever.
    if f.ipxe {
        return BootChoice::Url(format!("{base}/boot.ipxe"));
    }
    let files = &site.boot_files;
    match f.firmware {
        Firmware::Bios => BootChoice::Tftp(files.bios.clone()),
        Firmware::EfiIa32 => BootChoice::Tftp(files.efi_ia32.clone()),
        Firmware::EfiX64 => BootChoice::Tftp(files.efi_x64.clone()),
        Firmware::EfiArm64 => BootChoice::Tftp(files.arm64.clone()),
        Firmware::HttpX64 => BootChoice::Url(format!("{base}/tftp/{}", files.http_boot)),
        Firmware::HttpArm64 => {
            let file = files.http_boot_arm64.as_deref().unwrap_or(&files.arm64);
            BootChoice::Url(format!("{base}/tftp/{file}"))
        }
        Firmware::Unknown(_) => BootChoice::None(Silence::UnsupportedFirmware),
    }
}

/// The address of the link the client is on: the relay's (`giaddr`), else ours on the
/// receiving interface. Its subnet picks the pool (RFC 2131 §4.3.1).
pub fn link_address(input: &Input<'_>) -> Ipv4Addr {
    if input.facts.relayed() {
        input.facts.giaddr
    } else {
        input.server_ip
    }
}

/// What the lease database has to do for this request; `Input` and the site decide it alone.
pub fn lease_op(input: &Input<'_>, site: &DhcpSite, mode: Mode) -> LeaseOp {
    let f = input.facts;
    if mode != Mode::Reservation || input.port != Port::Dhcp {
        return LeaseOp::None;
    }
    let Some((pool, _)) = site.pool_for(link_address(input)) else {
        return LeaseOp::None;
    };
    if site.hosts.get(&f.mac).is_some_and(|h| h.address.is_some()) {
        return LeaseOp::None;
    }
    match f.msg_type {
        MessageType::Discover => LeaseOp::Offer {
            pool,
            requested: f.requested_ip,
        },
        MessageType::Request => match f.server_id {
            Some(id) if id != input.server_ip => LeaseOp::Forget,
            Some(_) => match f.requested_ip {
                Some(ip) => LeaseOp::Commit {
                    pool,
                    ip,
                    kind: RequestKind::Selecting,
                },
                None => LeaseOp::None,
            },
            None => match (f.requested_ip, f.ciaddr.is_unspecified()) {
                (Some(ip), true) => LeaseOp::Commit {
                    pool,
                    ip,
                    kind: RequestKind::InitReboot,
                },
                (_, false) => LeaseOp::Commit {
                    pool,
                    ip: f.ciaddr,
                    kind: RequestKind::Renewing,
                },
                (None, true) => LeaseOp::None,
            },
        },
        MessageType::Release if !f.ciaddr.is_unspecified() => LeaseOp::Release(f.ciaddr),
        MessageType::Decline => match f.requested_ip {
            Some(ip) => LeaseOp::Decline(ip),
            None => LeaseOp::None,
        },
        _ => LeaseOp::None,
    }
}

/// SELECTING and INIT-REBOOT put the address in option 50; RENEWING and REBINDING in ciaddr.
fn requested_address(f: &ClientFacts) -> Option<Ipv4Addr> {
    f.requested_ip
        .or((!f.ciaddr.is_unspecified()).then_some(f.ciaddr))
}

pub fn decide(input: &Input<'_>, site: &DhcpSite, mode: Mode, lease: LeaseOutcome) -> Action {
    match mode {
        Mode::Off => Action::NoResponse(Silence::ModeOff),
        Mode::Proxy => decide_proxy(input, site),
        Mode::Reservation => decide_reservation(input, site, lease),
    }
}

fn decide_proxy(input: &Input<'_>, site: &DhcpSite) -> Action {
    let f = input.facts;
    let msg = match (input.port, f.msg_type) {
        (Port::Dhcp, MessageType::Discover) => MessageType::Offer,
        (Port::Pxe, MessageType::Request | MessageType::Inform) => MessageType::Ack,
        // The site's DHCP server handles everything else on 67.
        _ => return Action::NoResponse(Silence::Ignored),
    };
    if !is_boot_client(f) {
        return Action::NoResponse(Silence::NotBootClient);
    }
    let boot = match boot_choice(f, site, input.server_ip) {
        BootChoice::LocalBoot => return Action::NoResponse(Silence::LocalBoot),
        BootChoice::None(why) => return Action::NoResponse(why),
        choice => choice,
    };
    let mut reply = base_reply(f, msg, input.server_ip);
    add_boot_options(&mut reply, f, &boot, input.server_ip);
    respond(reply, destination(input, false), &boot)
}

fn decide_reservation(input: &Input<'_>, site: &DhcpSite, lease: LeaseOutcome) -> Action {
    let f = input.facts;
    if input.port == Port::Pxe {
        // Boot server discovery after the address exchange: boot information only, as in proxy.
        return decide_proxy(input, site);
    }
    let host = site.hosts.get(&f.mac);
    let static_ip = host.and_then(|h| h.address);
    let pool = site.pool_for(link_address(input)).map(|(_, p)| p);
    if static_ip.is_none() && pool.is_none() {
        // No pool on this client's subnet: never one of another subnet's addresses.
        return Action::NoResponse(Silence::UnknownHost);
    }
    if f.msg_type == MessageType::Request && f.server_id.is_some_and(|id| id != input.server_ip) {
        return Action::NoResponse(Silence::OtherServer);
    }
    let boot = boot_choice(f, site, input.server_ip);

    let (msg, address) = match f.msg_type {
        MessageType::Discover => match (static_ip, lease) {
            (Some(ip), _) | (None, LeaseOutcome::Offered(ip)) => (MessageType::Offer, Some(ip)),
            (None, LeaseOutcome::Exhausted) => return Action::NoResponse(Silence::PoolExhausted),
            (None, LeaseOutcome::Probing) => return Action::NoResponse(Silence::Probing),
            _ => return Action::NoResponse(Silence::Ignored),
        },
        MessageType::Request => match (static_ip, lease) {
            (Some(ip), _) if requested_address(f) == Some(ip) => (MessageType::Ack, Some(ip)),
            (None, LeaseOutcome::Bound(ip)) => (MessageType::Ack, Some(ip)),
            (Some(_), _) | (None, LeaseOutcome::Refused) => {
                return respond_nak(input, "address not available for this client");
            }
            (None, LeaseOutcome::Unknown) => return Action::NoResponse(Silence::Unsolicited),
            _ => return Action::NoResponse(Silence::Ignored),
        },
        MessageType::Inform => (MessageType::Ack, None),
        MessageType::Release => return Action::NoResponse(Silence::Released),
        MessageType::Decline => return Action::NoResponse(Silence::Declined),
        _ => return Action::NoResponse(Silence::Ignored),
    };

    let mut reply = base_reply(f, msg, input.server_ip);
    let net = network_for(host, pool);
    if let Some(ip) = address {
        reply.yiaddr = ip;
        let lease_secs = site.lease_time_secs;
        reply
            .options
            .push((opt::LEASE_TIME, lease_secs.to_be_bytes().to_vec()));
        reply
            .options
            .push((opt::RENEWAL, (lease_secs / 2).to_be_bytes().to_vec()));
        let rebinding = (u64::from(lease_secs) * 7 / 8) as u32;
        reply
            .options
            .push((opt::REBINDING, rebinding.to_be_bytes().to_vec()));
    } else {
        reply.ciaddr = f.ciaddr;
    }
    if let Some(net) = &net {
        reply
            .options
            .push((opt::SUBNET_MASK, prefix_mask(net.prefix).octets().to_vec()));
        if let Some(gw) = net.gateway {
            reply.options.push((opt::ROUTER, gw.octets().to_vec()));
        }
        if !net.dns.is_empty() {
            let dns: Vec<u8> = net.dns.iter().flat_map(|d| d.octets()).collect();
            reply.options.push((opt::DNS, dns));
        }
        if let Some(domain) = net.domain.filter(|d| !d.is_empty()) {
            reply
                .options
                .push((opt::DOMAIN, domain.as_bytes().to_vec()));
        }
        if let Some(name) = net.name.filter(|n| !n.is_empty()) {
            reply
                .options
                .push((opt::HOSTNAME, name.as_bytes().to_vec()));
        }
    }
    // Local-boot hosts and plain DHCP clients get an address and nothing to boot.
    add_boot_options(&mut reply, f, &boot, input.server_ip);
    respond(reply, destination(input, msg == MessageType::Nak), &boot)
}

struct Network<'a> {
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    dns: &'a [Ipv4Addr],
    domain: Option<&'a str>,
    name: Option<&'a str>,
}

fn network_for<'a>(host: Option<&'a HostEntry>, pool: Option<&'a Pool>) -> Option<Network<'a>> {
    match host {
        Some(h) if h.address.is_some() => Some(Network {
            prefix: h.prefix,
            gateway: h.gateway,
            dns: &h.dns,
            domain: h.domain.as_deref(),
            name: Some(&h.name),
        }),
        _ => pool.map(|p| Network {
            prefix: p.prefix,
            gateway: p.router,
            dns: &p.dns,
            domain: p.domain.as_deref(),
            name: host.map(|h| h.name.as_str()),
        }),
    }
}

pub fn prefix_mask(prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    Ipv4Addr::from(u32::MAX.checked_shl(32 - p).unwrap_or(0))
}

fn base_reply(f: &ClientFacts, msg: MessageType, server_ip: Ipv4Addr) -> Reply {
    Reply {
        msg_type: msg,
        xid: f.xid,
        flags: f.flags,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        yiaddr: Ipv4Addr::UNSPECIFIED,
        siaddr: Ipv4Addr::UNSPECIFIED,
        giaddr: f.giaddr,
        chaddr: f.chaddr,
        file: None,
        options: vec![(opt::SERVER_ID, server_ip.octets().to_vec())],
    }
}

fn add_boot_options(reply: &mut Reply, f: &ClientFacts, boot: &BootChoice, server_ip: Ipv4Addr) {
    let Some(file) = boot.file() else { return };
    reply.siaddr = server_ip;
    reply.file = Some(file.to_string());
    match f.vendor_class {
        VendorClass::HttpClient => {
            // UEFI HTTP boot only accepts an offer that names itself HTTPClient.
            reply
                .options
                .push((opt::VENDOR_CLASS, b"HTTPClient".to_vec()));
        }
        VendorClass::PxeClient => {
            reply
                .options
                .push((opt::VENDOR_CLASS, b"PXEClient".to_vec()));
            reply.options.push((
                opt::VENDOR,
                pxe::vendor_options(f.vendor_options.as_deref()),
            ));
        }
        _ => {}
    }
    if let Some(guid) = &f.guid {
        reply.options.push((opt::CLIENT_GUID, guid.clone()));
    }
    if matches!(boot, BootChoice::Tftp(_)) {
        reply
            .options
            .push((opt::TFTP_SERVER, server_ip.to_string().into_bytes()));
    }
    reply
        .options
        .push((opt::BOOTFILE, file.as_bytes().to_vec()));
}

fn respond(reply: Reply, destination: Destination, boot: &BootChoice) -> Action {
    Action::Respond(Box::new(Response {
        reply,
        destination,
        boot: boot.file().map(str::to_string),
    }))
}

fn respond_nak(input: &Input<'_>, message: &str) -> Action {
    let mut reply = base_reply(input.facts, MessageType::Nak, input.server_ip);
    reply
        .options
        .push((opt::MESSAGE, message.as_bytes().to_vec()));
    if input.facts.relayed() {
        // RFC 2131 §4.3.2: the relay must broadcast a NAK to the client.
        reply.flags |= 0x8000;
    }
    respond(
        reply,
        destination(input, true),
        &BootChoice::None(Silence::Ignored),
    )
}

/// RFC 2131 §4.1: relayed → the relay's server port; a client with an address → unicast to it;
/// otherwise broadcast (we do not inject ARP entries for unicast to a client without an address).
/// Port 4011 requests are answered to wherever they came from.
fn destination(input: &Input<'_>, nak: bool) -> Destination {
    let f = input.facts;
    if f.relayed() {
        return Destination::Unicast(SocketAddrV4::new(f.giaddr, 67));
    }
    if input.port == Port::Pxe && !input.source.ip().is_unspecified() {
        return Destination::Unicast(input.source);
    }
    if !nak && !f.ciaddr.is_unspecified() {
        return Destination::Unicast(SocketAddrV4::new(f.ciaddr, 68));
    }
    Destination::Broadcast
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(prefix_mask(0), Ipv4Addr::new(0, 0, 0, 0));
        assert_eq!(prefix_mask(32), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_mask(40), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(prefix_mask(20), Ipv4Addr::new(255, 255, 240, 0));
    }
}
