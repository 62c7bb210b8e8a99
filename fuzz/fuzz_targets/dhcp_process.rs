//! Fuzzes the DHCP server's per-datagram path (`pxeforge_dhcp::process`: decode → facts → lease
//! operation → decision) in every mode and on both ports, and re-decodes every reply we would send.
//!
//!     cargo +nightly fuzz run dhcp_process fuzz/corpus/dhcp_process dhcp/tests/vectors
#![no_main]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use pxeforge_dhcp::encode::encode;
use pxeforge_dhcp::{
    process, wire, Action, BootFiles, DhcpSite, HostEntry, LeaseOutcome, Mac, Mode, Pool, Port,
};

fn site(pool: bool) -> DhcpSite {
    let mut hosts = HashMap::new();
    for (i, install) in [(1u8, true), (2, true), (3, false)] {
        hosts.insert(
            Mac([0x52, 0x54, 0x00, 0xaa, 0x00, i]),
            HostEntry {
                name: format!("node{i:02}"),
                install,
                address: Some(Ipv4Addr::new(10, 0, 0, 10 + i)),
                prefix: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 0, 254)),
                dns: vec![Ipv4Addr::new(10, 0, 0, 53)],
                domain: Some("lab.example".into()),
            },
        );
    }
    DhcpSite {
        hosts,
        boot_files: BootFiles::default(),
        pools: pool
            .then(|| Pool {
                start: Ipv4Addr::new(10, 0, 0, 100),
                end: Ipv4Addr::new(10, 0, 0, 199),
                prefix: 24,
                router: Some(Ipv4Addr::new(10, 0, 0, 1)),
                dns: vec![],
                domain: None,
            })
            .into_iter()
            .collect(),
        lease_time_secs: 3600,
        base_url: None,
        http_port: 8080,
        ..DhcpSite::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let server = Ipv4Addr::new(10, 0, 0, 1);
    let source = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 68);
    let sites = [site(false), site(true)];
    for mode in [Mode::Proxy, Mode::Reservation] {
        for site in &sites {
            for port in [Port::Dhcp, Port::Pxe] {
                for lease in [
                    LeaseOutcome::NotApplicable,
                    LeaseOutcome::Offered(Ipv4Addr::new(10, 0, 0, 100)),
                    LeaseOutcome::Bound(Ipv4Addr::new(10, 0, 0, 100)),
                    LeaseOutcome::Refused,
                    LeaseOutcome::Unknown,
                    LeaseOutcome::Probing,
                    LeaseOutcome::Exhausted,
                ] {
                    let Ok((facts, action)) =
                        process(data, port, source, server, site, mode, |_, _| lease)
                    else {
                        return;
                    };
                    if let Action::Respond(r) = action {
                        let back = wire::decode(&encode(&r.reply)).expect("own reply decodes");
                        assert_eq!(back.xid, facts.xid);
                    }
                }
            }
        }
    }
});
