//! The site's own DHCP server beside pxeforge in proxy mode: dnsmasq handing out addresses only
//! (no boot options, no DNS), as a typical office or lab DHCP server does.

use std::net::Ipv4Addr;
use std::path::Path;

pub fn args(
    interface: &str,
    first: Ipv4Addr,
    last: Ipv4Addr,
    netmask: Ipv4Addr,
    leases: &Path,
) -> Vec<String> {
    vec![
        "--no-daemon".into(),
        "--conf-file=/dev/null".into(),
        "--port=0".into(),
        format!("--interface={interface}"),
        "--bind-interfaces".into(),
        format!("--dhcp-range={first},{last},{netmask},1h"),
        format!("--dhcp-leasefile={}", leases.display()),
        "--pid-file=".into(),
        "--log-dhcp".into(),
        "--log-facility=-".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_only() {
        let a = args(
            "vd1",
            Ipv4Addr::new(10, 77, 0, 100),
            Ipv4Addr::new(10, 77, 0, 150),
            Ipv4Addr::new(255, 255, 255, 0),
            Path::new("/tmp/l"),
        );
        assert!(a.contains(&"--dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h".to_string()));
        assert!(a.contains(&"--port=0".to_string()));
        assert!(!a
            .iter()
            .any(|x| x.starts_with("--dhcp-boot") || x.contains("tftp")));
    }
}
