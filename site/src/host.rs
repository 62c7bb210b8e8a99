//! The host inventory: `[[host]]` entries in `hosts/*.toml`.

use crate::mac::Mac;
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use toml::Spanned;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFile {
    #[serde(default)]
    pub host: Vec<Spanned<HostEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    pub name: Spanned<String>,
    /// One MAC as a string, or a list of them.
    pub mac: Spanned<toml::Value>,
    pub profile: Spanned<String>,
    #[serde(default)]
    pub uuid: Option<Spanned<String>>,
    #[serde(default)]
    pub serial: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub install: bool,
    #[serde(default)]
    pub network: Option<Spanned<NetworkEntry>>,
    #[serde(default)]
    pub vars: toml::Table,
    /// Raise it to re-arm the host (above the value recorded at its last install).
    #[serde(default)]
    pub generation: u64,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetMode {
    #[default]
    Dhcp,
    Static,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkEntry {
    #[serde(default)]
    pub mode: NetMode,
    #[serde(default)]
    pub address: Option<String>,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub domain: Option<String>,
}

/// A validated host.
#[derive(Debug, Clone, Serialize)]
pub struct Host {
    pub name: String,
    pub macs: Vec<Mac>,
    pub profile: String,
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub install: bool,
    pub network: Network,
    pub vars: toml::Table,
    /// Raise it to re-arm the host; see `pxeforge reinstall` for the command.
    pub generation: u64,
    /// `hosts/x.toml:LINE`, for messages.
    #[serde(skip)]
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Network {
    pub mode: NetMode,
    pub address: Option<Ipv4Addr>,
    pub prefix: Option<u8>,
    pub netmask: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

/// `10.0.0.5/24` → (address, prefix).
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("address {s:?} needs a prefix length, e.g. 10.0.0.5/24"))?;
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| format!("prefix length {p:?} must be 1 to 32"))?;
    Ok((addr, prefix))
}

pub fn netmask(prefix: u8) -> Ipv4Addr {
    let bits: u32 = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    Ipv4Addr::from(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr() {
        assert_eq!(
            parse_cidr("10.0.0.5/24").unwrap(),
            ("10.0.0.5".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.0.0.5").is_err());
        assert!(parse_cidr("10.0.0.5/33").is_err());
        assert!(parse_cidr("10.0.0/24").is_err());
        assert_eq!(netmask(24), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(netmask(32), Ipv4Addr::new(255, 255, 255, 255));
    }
}
