//! What a request tells us about the client: identity, message type and firmware.

use std::fmt;
use std::net::Ipv4Addr;

use crate::wire::{opt, Packet, BOOTREQUEST};
use crate::Mac;

/// DHCP message types (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MessageType {
    Discover,
    Offer,
    Request,
    Decline,
    Ack,
    Nak,
    Release,
    Inform,
}

impl MessageType {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::Discover,
            2 => Self::Offer,
            3 => Self::Request,
            4 => Self::Decline,
            5 => Self::Ack,
            6 => Self::Nak,
            7 => Self::Release,
            8 => Self::Inform,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        match self {
            Self::Discover => 1,
            Self::Offer => 2,
            Self::Request => 3,
            Self::Decline => 4,
            Self::Ack => 5,
            Self::Nak => 6,
            Self::Release => 7,
            Self::Inform => 8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Discover => "discover",
            Self::Offer => "offer",
            Self::Request => "request",
            Self::Decline => "decline",
            Self::Ack => "ack",
            Self::Nak => "nak",
            Self::Release => "release",
            Self::Inform => "inform",
        }
    }
}

/// Client firmware, from option 93 (RFC 4578 and the IANA registry), else option 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Firmware {
    /// 0: x86 BIOS
    Bios,
    /// 6: EFI IA32
    EfiIa32,
    /// 7 and 9: EFI x86-64 (9 is what some firmware sends for "EFI BC")
    EfiX64,
    /// 11: ARM64 EFI
    EfiArm64,
    /// 16: x86-64 UEFI HTTP boot
    HttpX64,
    /// 19: ARM64 UEFI HTTP boot
    HttpArm64,
    Unknown(u16),
}

impl Firmware {
    pub fn from_arch(code: u16) -> Self {
        match code {
            0 => Self::Bios,
            6 => Self::EfiIa32,
            7 | 9 => Self::EfiX64,
            11 => Self::EfiArm64,
            16 => Self::HttpX64,
            19 => Self::HttpArm64,
            n => Self::Unknown(n),
        }
    }

    pub fn is_http_boot(self) -> bool {
        matches!(self, Self::HttpX64 | Self::HttpArm64)
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Bios => "bios",
            Self::EfiIa32 => "efi-ia32",
            Self::EfiX64 => "efi-x64",
            Self::EfiArm64 => "efi-arm64",
            Self::HttpX64 => "http-x64",
            Self::HttpArm64 => "http-arm64",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for Firmware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(n) => write!(f, "unknown({n})"),
            other => f.write_str(other.label()),
        }
    }
}

/// The class a client announced in option 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VendorClass {
    PxeClient,
    HttpClient,
    Other,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("op {0} is not a BOOTREQUEST")]
    NotRequest(u8),
    #[error("no valid DHCP message type")]
    NoMessageType,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFacts {
    pub mac: Mac,
    pub xid: u32,
    pub msg_type: MessageType,
    pub flags: u16,
    pub hops: u8,
    pub secs: u16,
    pub ciaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// Option 93 if sent, else the number in `PXEClient:Arch:NNNNN`.
    pub arch: Option<u16>,
    pub firmware: Firmware,
    pub vendor_class: VendorClass,
    pub vendor_class_raw: Option<Vec<u8>>,
    /// User class `iPXE` (option 77) or iPXE's encapsulated options (175).
    pub ipxe: bool,
    /// Option 97, echoed in PXE replies.
    pub guid: Option<Vec<u8>>,
    /// Option 43 as the client sent it (PXE boot item sub-option 71 on port 4011).
    pub vendor_options: Option<Vec<u8>>,
    pub requested_ip: Option<Ipv4Addr>,
    pub server_id: Option<Ipv4Addr>,
    pub client_id: Option<Vec<u8>>,
    pub hostname: Option<String>,
}

impl ClientFacts {
    pub fn from_packet(p: &Packet) -> Result<Self, FactsError> {
        if p.op != BOOTREQUEST {
            return Err(FactsError::NotRequest(p.op));
        }
        let msg_type = p
            .msg_type()
            .and_then(MessageType::from_code)
            .ok_or(FactsError::NoMessageType)?;
        let vendor_class_raw = p.options.get(opt::VENDOR_CLASS).map(<[u8]>::to_vec);
        let vendor_class = match vendor_class_raw.as_deref() {
            None => VendorClass::None,
            Some(v) if v.starts_with(b"PXEClient") => VendorClass::PxeClient,
            Some(v) if v.starts_with(b"HTTPClient") => VendorClass::HttpClient,
            Some(_) => VendorClass::Other,
        };
        let arch = match p.options.get(opt::CLIENT_ARCH) {
            // RFC 4578 allows a list; the first entry is the client's preference.
            Some(v) if v.len() >= 2 => Some(u16::from_be_bytes([v[0], v[1]])),
            _ => vendor_class_raw.as_deref().and_then(arch_from_vendor_class),
        };
        let firmware = match (arch, vendor_class) {
            (Some(a), _) => Firmware::from_arch(a),
            // PXE 2.1 clients always send option 93; one that does not is a legacy BIOS ROM.
            (None, VendorClass::PxeClient) => Firmware::Bios,
            (None, _) => Firmware::Unknown(u16::MAX),
        };
        let ipxe = p.options.contains(opt::IPXE_ENCAP)
            || p.options
                .get(opt::USER_CLASS)
                .is_some_and(is_ipxe_user_class);
        Ok(ClientFacts {
            mac: p.mac(),
            xid: p.xid,
            msg_type,
            flags: p.flags,
            hops: p.hops,
            secs: p.secs,
            ciaddr: p.ciaddr,
            giaddr: p.giaddr,
            chaddr: p.chaddr,
            arch,
            firmware,
            vendor_class,
            vendor_class_raw,
            ipxe,
            guid: p.options.get(opt::CLIENT_GUID).map(<[u8]>::to_vec),
            vendor_options: p.options.get(opt::VENDOR).map(<[u8]>::to_vec),
            requested_ip: p.option_ip(opt::REQUESTED_IP),
            server_id: p.option_ip(opt::SERVER_ID),
            client_id: p.options.get(opt::CLIENT_ID).map(<[u8]>::to_vec),
            hostname: p
                .options
                .get(opt::HOSTNAME)
                .map(|h| String::from_utf8_lossy(h).into_owned()),
        })
    }

    pub fn broadcast_flag(&self) -> bool {
        self.flags & 0x8000 != 0
    }

    pub fn relayed(&self) -> bool {
        !self.giaddr.is_unspecified()
    }
}

/// `PXEClient:Arch:00007:UNDI:003000` → 7.
fn arch_from_vendor_class(v: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(v).ok()?;
    let mut parts = text.split(':');
    parts.next()?;
    if parts.next()? != "Arch" {
        return None;
    }
    parts.next()?.parse().ok()
}

/// iPXE sends the bare string `iPXE`; RFC 3004 clients send length-prefixed instances.
fn is_ipxe_user_class(v: &[u8]) -> bool {
    if v == b"iPXE" {
        return true;
    }
    let mut rest = v;
    while let Some((&len, tail)) = rest.split_first() {
        let Some(item) = tail.get(..usize::from(len)) else {
            return false;
        };
        if item == b"iPXE" {
            return true;
        }
        rest = &tail[usize::from(len)..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_class_arch() {
        assert_eq!(
            arch_from_vendor_class(b"PXEClient:Arch:00007:UNDI:003000"),
            Some(7)
        );
        assert_eq!(
            arch_from_vendor_class(b"HTTPClient:Arch:00016:UNDI:003000"),
            Some(16)
        );
        assert_eq!(arch_from_vendor_class(b"PXEClient"), None);
        assert_eq!(arch_from_vendor_class(b"PXEClient:Arch:x"), None);
    }

    #[test]
    fn user_class_forms() {
        assert!(is_ipxe_user_class(b"iPXE"));
        assert!(is_ipxe_user_class(b"\x03abc\x04iPXE"));
        assert!(!is_ipxe_user_class(b"gPXE"));
        assert!(!is_ipxe_user_class(b"\x09iPXE"));
        assert!(!is_ipxe_user_class(b""));
    }
}
