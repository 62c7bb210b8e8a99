//! The site as DHCP needs it, compiled once per load and swapped into the DHCP service.

use crate::serve::Effective;
use crate::site::settings::DhcpMode;
use crate::site::Site;
use pxeforge_dhcp as dhcp;

pub fn compile(site: &Site, eff: &Effective) -> dhcp::DhcpSite {
    let s = &site.settings.dhcp;
    let hosts = site
        .hosts
        .iter()
        .flat_map(|h| {
            let boots_locally = !h.install
                || site
                    .profiles
                    .get(&h.profile)
                    .is_some_and(|p| p.boot == crate::site::BootMethod::Local);
            let entry = dhcp::HostEntry {
                name: h.name.clone(),
                install: !boots_locally,
                address: h.network.address,
                prefix: h.network.prefix.unwrap_or(24),
                gateway: h.network.gateway,
                dns: h.network.dns.clone(),
                domain: h.network.domain.clone(),
            };
            h.macs.iter().map(move |m| (dhcp::Mac(m.0), entry.clone()))
        })
        .collect();
    let base_url = eff.base_url.clone().or_else(|| {
        (!site.settings.server.base_url.is_empty()).then(|| site.settings.server.base_url.clone())
    });
    dhcp::DhcpSite {
        hosts,
        boot_files: dhcp::BootFiles {
            bios: s.boot_files.bios.clone(),
            efi_x64: s.boot_files.efi_x64.clone(),
            efi_ia32: s.boot_files.efi_ia32.clone(),
            arm64: s.boot_files.arm64.clone(),
            http_boot: s.boot_files.http_boot.clone(),
            http_boot_arm64: None,
        },
        pool: s.pool.as_ref().map(|p| dhcp::Pool {
            start: p.start,
            end: p.end,
            prefix: p.prefix,
            router: p.router,
            dns: p.dns.clone(),
            domain: p.domain.clone(),
        }),
        lease_time_secs: s.lease_time_secs,
        base_url,
        http_port: eff.http.port(),
    }
}

pub fn config(eff: &Effective) -> dhcp::DhcpConfig {
    let mode = match eff.dhcp {
        DhcpMode::Off => dhcp::Mode::Off,
        DhcpMode::Proxy => dhcp::Mode::Proxy,
        DhcpMode::Reservation => dhcp::Mode::Reservation,
    };
    let mut c = dhcp::DhcpConfig::new(mode, eff.state.join("leases.db"));
    c.interface = eff.dhcp_interface.clone();
    c
}
