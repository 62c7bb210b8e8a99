//! The compiled view of the site that the DHCP service needs, built by the server crate at every
//! site load and swapped atomically.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// MACs and the boot-file table come from the site model, so that each rule exists once.
pub use pxeforge_site::settings::BootFiles;
pub use pxeforge_site::Mac;

/// Defaults of the settings of the same names (`dhcp.offer_hold_secs`, `dhcp.ping_timeout_ms`).
pub const DEFAULT_OFFER_HOLD_SECS: u32 = 30;
pub const DEFAULT_PING_TIMEOUT_MS: u32 = 500;

/// One inventory host as DHCP sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub name: String,
    /// false: the host boots its local disk, so it gets no boot offer.
    pub install: bool,
    /// Static address handed out in reservation mode; None = the host takes a pool lease.
    pub address: Option<Ipv4Addr>,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

/// One subnet's pool for reservation mode: leases for hosts without a static address on that
/// subnet. A request is served from the pool of its link's subnet only (the relay's `giaddr`, or
/// our address on the receiving interface), never from another subnet's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
    /// The subnet's prefix length; the subnet is `start/prefix`.
    pub prefix: u8,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
}

impl Pool {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let v = u32::from(ip);
        u32::from(self.start) <= v && v <= u32::from(self.end)
    }

    /// The subnet's network address.
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.start) & u32::from(crate::decide::prefix_mask(self.prefix)))
    }

    /// Whether `ip` is on this pool's subnet (the link a client or relay is on).
    pub fn on_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::from(crate::decide::prefix_mask(self.prefix));
        u32::from(ip) & mask == u32::from(self.network())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSite {
    pub hosts: HashMap<Mac, HostEntry>,
    pub boot_files: BootFiles,
    /// One per subnet (`[[dhcp.subnet]]`), in the order of the settings.
    pub pools: Vec<Pool>,
    pub lease_time_secs: u32,
    /// How long an OFFER holds its address for the client's REQUEST.
    pub offer_hold_secs: u32,
    /// Probe a new address with an ICMP echo before offering it.
    pub ping_check: bool,
    /// How long a probe waits for an echo reply.
    pub ping_timeout_ms: u32,
    /// DHCP servers expected on the segment (counted, not warned about).
    pub peers: Vec<Ipv4Addr>,
    /// Advertised base URL (e.g. `http://boot.lab:8080`); None = `http://<server addr>:<http_port>`.
    pub base_url: Option<String>,
    pub http_port: u16,
    /// Changes whenever hosts or pools may have changed (every compile of the site): the lease
    /// index of free addresses is rebuilt when it does.
    pub generation: u64,
}

impl Default for DhcpSite {
    fn default() -> Self {
        DhcpSite {
            hosts: HashMap::new(),
            boot_files: BootFiles::default(),
            pools: Vec::new(),
            lease_time_secs: 3600,
            offer_hold_secs: DEFAULT_OFFER_HOLD_SECS,
            ping_check: true,
            ping_timeout_ms: DEFAULT_PING_TIMEOUT_MS,
            peers: Vec::new(),
            base_url: None,
            http_port: 8080,
            generation: 0,
        }
    }
}

impl DhcpSite {
    /// The HTTP base the client is sent to, as seen from the interface it asked on.
    pub fn http_base(&self, server: Ipv4Addr) -> String {
        match self
            .base_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            Some(base) => base.trim_end_matches('/').to_string(),
            None if self.http_port == 80 => format!("http://{server}"),
            None => format!("http://{server}:{}", self.http_port),
        }
    }

    /// Whether `ip` is some inventory host's static address (never leased from the pool).
    /// O(hosts): the lease index calls it once per site generation, not per packet.
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.hosts.values().any(|h| h.address == Some(ip))
    }

    /// The pool of the subnet `link` is on (`giaddr` of a relayed request, else our address on
    /// the receiving interface), with its index in `pools`.
    pub fn pool_for(&self, link: Ipv4Addr) -> Option<(usize, &Pool)> {
        self.pools
            .iter()
            .enumerate()
            .find(|(_, p)| p.on_subnet(link))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_spellings() {
        let want = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        for s in [
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "5254.0012.3456",
            "525400123456",
            "52:54:00:12:34:56".to_uppercase().as_str(),
        ] {
            assert_eq!(s.parse::<Mac>().unwrap(), want, "{s}");
        }
        for s in [
            "52:54:00:12:34",
            "52:54:00:12:34:5g",
            "",
            "52 54 00 12 34 56",
            "52:54:00:12:34:56:78",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s}");
        }
        assert_eq!(want.to_string(), "52:54:00:12:34:56");
    }

    #[test]
    fn http_base() {
        let mut s = DhcpSite::default();
        let ip = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(s.http_base(ip), "http://10.0.0.1:8080");
        s.http_port = 80;
        assert_eq!(s.http_base(ip), "http://10.0.0.1");
        s.base_url = Some("http://boot.lab:9000/".into());
        assert_eq!(s.http_base(ip), "http://boot.lab:9000");
    }
}
