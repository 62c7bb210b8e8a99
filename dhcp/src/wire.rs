//! DHCPv4 packet decoding: the BOOTP header and the options area, with every length checked.
//!
//! We parse options ourselves instead of through dhcproto: its decoder has `debug_assert!`s on
//! option lengths that panic on hostile packets in debug builds, decodes architecture codes above
//! 9 as `Unknown`, and gives no control over overload loops or a missing end option. This is the
//! one decoder the server, the tests and the fuzz target all use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

pub const BOOTREQUEST: u8 = 1;
pub const BOOTREPLY: u8 = 2;
pub const HTYPE_ETHERNET: u8 = 1;
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Fixed BOOTP header (236 bytes) plus the magic cookie.
pub const HEADER_LEN: usize = 240;
/// Largest datagram we accept; DHCP clients on Ethernet never need more than one MTU.
pub const MAX_PACKET_LEN: usize = 1500;

pub mod opt {
    pub const PAD: u8 = 0;
    pub const SUBNET_MASK: u8 = 1;
    pub const ROUTER: u8 = 3;
    pub const DNS: u8 = 6;
    pub const HOSTNAME: u8 = 12;
    pub const DOMAIN: u8 = 15;
    pub const BROADCAST: u8 = 28;
    pub const VENDOR: u8 = 43;
    pub const REQUESTED_IP: u8 = 50;
    pub const LEASE_TIME: u8 = 51;
    pub const OVERLOAD: u8 = 52;
    pub const MSG_TYPE: u8 = 53;
    pub const SERVER_ID: u8 = 54;
    pub const PARAM_REQUEST: u8 = 55;
    pub const MESSAGE: u8 = 56;
    pub const MAX_MSG_SIZE: u8 = 57;
    pub const RENEWAL: u8 = 58;
    pub const REBINDING: u8 = 59;
    pub const VENDOR_CLASS: u8 = 60;
    pub const CLIENT_ID: u8 = 61;
    pub const TFTP_SERVER: u8 = 66;
    pub const BOOTFILE: u8 = 67;
    pub const USER_CLASS: u8 = 77;
    pub const CLIENT_ARCH: u8 = 93;
    pub const CLIENT_NDI: u8 = 94;
    pub const CLIENT_GUID: u8 = 97;
    pub const IPXE_ENCAP: u8 = 175;
    pub const END: u8 = 255;
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("packet of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("packet of {0} bytes is larger than {MAX_PACKET_LEN}")]
    TooLong(usize),
    #[error("op {0} is neither BOOTREQUEST nor BOOTREPLY")]
    BadOp(u8),
    #[error("hardware type {htype} with address length {hlen}: only Ethernet (1, 6) is served")]
    BadHardware { htype: u8, hlen: u8 },
    #[error("magic cookie missing")]
    BadCookie,
    #[error("option {code} at offset {offset} runs past the end of its area")]
    OptionOverrun { code: u8, offset: usize },
    #[error("options area has no end option")]
    MissingEnd,
    #[error("option overload value {0} is not 1, 2 or 3")]
    BadOverload(u8),
    #[error("option 52 (overload) inside an overloaded field")]
    OverloadLoop,
}

/// A DHCP message, decoded. Options are concatenated per code (RFC 3396) in order of appearance
/// across the options area, then `file`, then `sname` (RFC 2131 §4.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub op: u8,
    pub htype: u8,
    pub hlen: u8,
    pub hops: u8,
    pub xid: u32,
    pub secs: u16,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    pub sname: [u8; 64],
    pub file: [u8; 128],
    pub options: Options,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Options {
    values: BTreeMap<u8, Vec<u8>>,
}

impl Options {
    pub fn get(&self, code: u8) -> Option<&[u8]> {
        self.values.get(&code).map(Vec::as_slice)
    }

    pub fn contains(&self, code: u8) -> bool {
        self.values.contains_key(&code)
    }

    pub fn insert(&mut self, code: u8, value: Vec<u8>) {
        self.values.insert(code, value);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u8, &[u8])> {
        self.values.iter().map(|(c, v)| (*c, v.as_slice()))
    }

    fn append(&mut self, code: u8, value: &[u8]) {
        self.values
            .entry(code)
            .or_default()
            .extend_from_slice(value);
    }
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3])
}

/// Decodes one DHCP datagram. Every index below is within the 240 bytes checked first, or guarded
/// by `parse_area`'s bounds checks.
pub fn decode(buf: &[u8]) -> Result<Packet, DecodeError> {
    if buf.len() > MAX_PACKET_LEN {
        return Err(DecodeError::TooLong(buf.len()));
    }
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::TooShort(buf.len()));
    }
    let op = buf[0];
    if op != BOOTREQUEST && op != BOOTREPLY {
        return Err(DecodeError::BadOp(op));
    }
    let (htype, hlen) = (buf[1], buf[2]);
    if htype != HTYPE_ETHERNET || hlen != 6 {
        return Err(DecodeError::BadHardware { htype, hlen });
    }
    if buf[236..240] != MAGIC_COOKIE {
        return Err(DecodeError::BadCookie);
    }
    let mut chaddr = [0u8; 16];
    chaddr.copy_from_slice(&buf[28..44]);
    let mut sname = [0u8; 64];
    sname.copy_from_slice(&buf[44..108]);
    let mut file = [0u8; 128];
    file.copy_from_slice(&buf[108..236]);

    let mut options = Options::default();
    let overload = parse_area(&buf[HEADER_LEN..], HEADER_LEN, true, &mut options)?;
    if let Some(value) = overload {
        if !(1..=3).contains(&value) {
            return Err(DecodeError::BadOverload(value));
        }
        // file first, then sname: the order RFC 3396 prescribes for concatenation.
        if value & 1 != 0 && parse_area(&file, 108, false, &mut options)?.is_some() {
            return Err(DecodeError::OverloadLoop);
        }
        if value & 2 != 0 && parse_area(&sname, 44, false, &mut options)?.is_some() {
            return Err(DecodeError::OverloadLoop);
        }
    }

    Ok(Packet {
        op,
        htype,
        hlen,
        hops: buf[3],
        xid: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        secs: u16::from_be_bytes([buf[8], buf[9]]),
        flags: u16::from_be_bytes([buf[10], buf[11]]),
        ciaddr: ip_at(buf, 12),
        yiaddr: ip_at(buf, 16),
        siaddr: ip_at(buf, 20),
        giaddr: ip_at(buf, 24),
        chaddr,
        sname,
        file,
        options,
    })
}

/// Walks one options area, appending to `out`. Returns the overload value if option 52 was seen.
/// `base` is the area's offset in the packet, for error messages only.
fn parse_area(
    area: &[u8],
    base: usize,
    main: bool,
    out: &mut Options,
) -> Result<Option<u8>, DecodeError> {
    let mut overload = None;
    let mut i = 0;
    while i < area.len() {
        let code = area[i];
        match code {
            opt::PAD => {
                i += 1;
                continue;
            }
            opt::END => return Ok(overload),
            _ => {}
        }
        let Some(&len) = area.get(i + 1) else {
            return Err(DecodeError::OptionOverrun {
                code,
                offset: base + i,
            });
        };
        let start = i + 2;
        let end = start + usize::from(len);
        let Some(value) = area.get(start..end) else {
            return Err(DecodeError::OptionOverrun {
                code,
                offset: base + i,
            });
        };
        if code == opt::OVERLOAD {
            if !main {
                return Err(DecodeError::OverloadLoop);
            }
            overload = value.first().copied();
            if value.len() != 1 {
                return Err(DecodeError::BadOverload(overload.unwrap_or(0)));
            }
        } else {
            out.append(code, value);
        }
        i = end;
    }
    if main {
        Err(DecodeError::MissingEnd)
    } else {
        // An overloaded field that is completely used may omit its end option; clients differ.
        Ok(overload)
    }
}

impl Packet {
    pub fn msg_type(&self) -> Option<u8> {
        match self.options.get(opt::MSG_TYPE) {
            Some([t]) => Some(*t),
            _ => None,
        }
    }

    pub fn mac(&self) -> crate::Mac {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.chaddr[..6]);
        crate::Mac(m)
    }

    pub fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        match self.options.get(code) {
            Some(&[a, b, c, d]) => Some(Ipv4Addr::new(a, b, c, d)),
            _ => None,
        }
    }
}
