//! Encoding our replies. Options go out in the order given (message type and server identifier
//! first, as dnsmasq and ISC do: some PXE ROMs scan only the start of the options area).

use std::net::Ipv4Addr;

use crate::facts::MessageType;
use crate::wire::{opt, BOOTREPLY, HTYPE_ETHERNET, MAGIC_COOKIE};

/// BOOTP's minimum message size: older PXE ROMs drop shorter replies.
const MIN_LEN: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: MessageType,
    pub xid: u32,
    pub flags: u16,
    pub ciaddr: Ipv4Addr,
    pub yiaddr: Ipv4Addr,
    pub siaddr: Ipv4Addr,
    pub giaddr: Ipv4Addr,
    pub chaddr: [u8; 16],
    /// The BOOTP `file` field; left empty when the name does not fit (option 67 still carries it).
    pub file: Option<String>,
    /// Options other than 53 (the message type, always written first).
    pub options: Vec<(u8, Vec<u8>)>,
}

impl Reply {
    pub fn option(&self, code: u8) -> Option<&[u8]> {
        self.options
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v.as_slice())
    }
}

pub fn encode(reply: &Reply) -> Vec<u8> {
    let mut out = Vec::with_capacity(400);
    out.extend_from_slice(&[BOOTREPLY, HTYPE_ETHERNET, 6, 0]);
    out.extend_from_slice(&reply.xid.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&reply.flags.to_be_bytes());
    for ip in [reply.ciaddr, reply.yiaddr, reply.siaddr, reply.giaddr] {
        out.extend_from_slice(&ip.octets());
    }
    out.extend_from_slice(&reply.chaddr);
    out.extend_from_slice(&[0u8; 64]);
    let mut file = [0u8; 128];
    if let Some(name) = reply.file.as_deref() {
        // Keep one byte for the terminating NUL.
        if name.len() < file.len() {
            file[..name.len()].copy_from_slice(name.as_bytes());
        }
    }
    out.extend_from_slice(&file);
    out.extend_from_slice(&MAGIC_COOKIE);
    put_option(&mut out, opt::MSG_TYPE, &[reply.msg_type.code()]);
    for (code, value) in &reply.options {
        put_option(&mut out, *code, value);
    }
    out.push(opt::END);
    if out.len() < MIN_LEN {
        out.resize(MIN_LEN, 0);
    }
    out
}

/// Values longer than 255 bytes are split into consecutive instances (RFC 3396).
fn put_option(out: &mut Vec<u8>, code: u8, value: &[u8]) {
    if value.is_empty() {
        out.extend_from_slice(&[code, 0]);
        return;
    }
    for chunk in value.chunks(255) {
        out.push(code);
        out.push(chunk.len() as u8);
        out.extend_from_slice(chunk);
    }
}
