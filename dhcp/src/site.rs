//! The compiled view of the site that the DHCP service needs, built by the server crate at every
//! site load and swapped atomically.

use std::collections::HashMap;
use std::net::Ipv4Addr;

/// MACs and the boot-file table come from the site model, so that each rule exists once.
pub use pxeforge_site::settings::BootFiles;
pub use pxeforge_site::Mac;

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

/// Discovery pool for reservation mode: leases for hosts without a static address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub start: Ipv4Addr,
    pub end: Ipv4Addr,
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
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpSite {
    pub hosts: HashMap<Mac, HostEntry>,
    pub boot_files: BootFiles,
    pub pool: Option<Pool>,
    pub lease_time_secs: u32,
    /// Advertised base URL (e.g. `http://boot.lab:8080`); None = `http://<server addr>:<http_port>`.
    pub base_url: Option<String>,
    pub http_port: u16,
}

impl Default for DhcpSite {
    fn default() -> Self {
        DhcpSite {
            hosts: HashMap::new(),
            boot_files: BootFiles::default(),
            pool: None,
            lease_time_secs: 3600,
            base_url: None,
            http_port: 8080,
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
    pub fn is_reserved(&self, ip: Ipv4Addr) -> bool {
        self.hosts.values().any(|h| h.address == Some(ip))
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
