//! The site as DHCP needs it, compiled once per load and swapped into the DHCP service.

use crate::catalog::Catalog;
use crate::config::Config;
use pxeforge_dhcp as dhcp;
use pxeforge_site::settings::DhcpMode;
use pxeforge_site::BootMethod;
use std::sync::atomic::{AtomicU64, Ordering};

pub fn compile(cat: &Catalog) -> dhcp::DhcpSite {
    let site = &cat.site;
    let s = &site.settings.dhcp;
    let hosts = site
        .hosts
        .iter()
        .flat_map(|h| {
            let boots_locally = !h.install
                || site
                    .profiles
                    .get(&h.profile)
                    .is_some_and(|p| p.boot == BootMethod::Local);
            let entry = dhcp::HostEntry {
                name: h.name.clone(),
                install: !boots_locally,
                address: h.network.address,
                prefix: h.network.prefix.unwrap_or(24),
                gateway: h.network.gateway,
                dns: h.network.dns.clone(),
                domain: h.network.domain.clone(),
            };
            h.macs.iter().map(move |m| (*m, entry.clone()))
        })
        .collect();
    dhcp::DhcpSite {
        hosts,
        boot_files: s.boot_files.clone(),
        pools: s
            .subnets()
            .iter()
            .filter_map(|sn| {
                // Validated at load; a subnet that does not parse cannot be served.
                let (_, prefix) = sn.parse_network()?;
                Some(dhcp::Pool {
                    start: sn.start,
                    end: sn.end,
                    prefix,
                    router: sn.router,
                    dns: sn.dns.clone(),
                    domain: sn.domain.clone(),
                })
            })
            .collect(),
        lease_time_secs: s.lease_time_secs,
        offer_hold_secs: s.offer_hold_secs.max(1),
        ping_check: s.ping_check,
        ping_timeout_ms: s.ping_timeout_ms.max(1),
        peers: s.peers.clone(),
        base_url: cat.config.base_url.fixed().map(str::to_string),
        http_port: cat.config.http.port(),
        // Every compile may change hosts or pools: the lease index is rebuilt for it.
        generation: GENERATION.fetch_add(1, Ordering::Relaxed),
    }
}

static GENERATION: AtomicU64 = AtomicU64::new(1);

pub fn config(eff: &Config) -> dhcp::DhcpConfig {
    let mode = match eff.dhcp {
        DhcpMode::Off => dhcp::Mode::Off,
        DhcpMode::Proxy => dhcp::Mode::Proxy,
        DhcpMode::Reservation => dhcp::Mode::Reservation,
    };
    let mut c = dhcp::DhcpConfig::new(mode, eff.state.join("leases.db"));
    c.interface = eff.dhcp_interface.clone();
    c
}
