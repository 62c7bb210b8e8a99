//! Group commit and kill -9: a burst of REQUESTs is answered in batches (one fsync each); the
//! server is then killed with SIGKILL, and every lease it ACKed must be bound in the store.
//! The server is the `dhcpd` example (a process of its own, so that it can be killed), in a
//! network namespace joined to the client's by a veth pair. Needs root; otherwise SKIP.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use pxeforge_dhcp::leases::{LeaseDb, LeaseState};
use pxeforge_dhcp::wire::{self, opt};
use pxeforge_dhcp::Mac;
use socket2::{Domain, Protocol, Socket, Type};

// RFC 2132 option 53 values.
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;

/// Clients in the burst: enough that requests queue up behind an fsync and form batches.
const CLIENTS: usize = 200;

/// The `dhcpd` example, built by `cargo test` beside this test binary (target/*/examples).
fn dhcpd() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples/dhcpd");
    path.exists().then_some(path)
}

fn client_mac(i: usize) -> Mac {
    Mac([0x02, 0x00, 0x00, 0x09, (i >> 8) as u8, i as u8])
}

/// A client's packet with the broadcast flag and its own xid.
fn packet(i: usize, msg: u8) -> Vec<u8> {
    let mut p = plain_client(client_mac(i), msg);
    p[4..8].copy_from_slice(&(0x5000_0000u32 + i as u32).to_be_bytes());
    p[10] = 0x80;
    p
}

/// Sends every packet back to back, then collects replies of `want` type until every client
/// has one or nothing arrives for a second.
fn burst(
    s: &std::net::UdpSocket,
    packets: &[(usize, Vec<u8>)],
    want: u8,
) -> HashMap<Mac, Ipv4Addr> {
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    for (_, p) in packets {
        s.send_to(p, to).unwrap();
    }
    let mut got = HashMap::new();
    let mut buf = [0u8; 1600];
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < packets.len() && Instant::now() < deadline {
        let Ok(n) = s.recv(&mut buf) else { break };
        if let Ok(p) = wire::decode(&buf[..n]) {
            if p.msg_type() == Some(want) {
                got.insert(p.mac(), p.yiaddr);
            }
        }
    }
    got
}

#[test]
fn every_lease_acked_in_a_batch_survives_kill_9() {
    if !nix::unistd::geteuid().is_root() {
        pxeforge_tests::skip(format_args!(
            "DHCP kill -9 test needs root (network namespaces, port 67)"
        ));
        return;
    }
    let Some(dhcpd) = dhcpd() else {
        panic!("the dhcpd example is not built: cargo build -p pxeforge-dhcp --examples");
    };
    let prefix = format!("pxf-dk9-{}", std::process::id());
    let srv = Netns::new(format!("{prefix}-s"));
    let cli = Netns::new(format!("{prefix}-c"));
    srv.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &cli.name,
    ]);
    srv.ip(&["addr", "add", "10.9.0.1/16", "dev", "eth0"]);
    srv.ip(&["link", "set", "eth0", "up"]);
    cli.ip(&["link", "set", "eth0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("leases.db");

    // `ip netns exec` execs the server: the child's pid is dhcpd's.
    let mut server = Proc(
        srv.command(dhcpd.to_str().expect("utf-8 path"))
            .args(["--mode", "reservation", "--interface", "eth0", "--lease-db"])
            .arg(&db)
            .args(["--pool", "10.9.1.0-10.9.1.250/16", "--ping-check", "off"])
            .args(["--pxe-port", "0"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = server.0.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "dhcpd: ready");
    assert!(ready, "dhcpd did not start");

    let (offers, acks) = cli
        .enter(move || {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_address(true).unwrap();
            s.set_broadcast(true).unwrap();
            s.set_recv_buffer_size(4 << 20).unwrap();
            s.bind_device(Some(b"eth0")).unwrap();
            let any = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
            s.bind(&SocketAddr::V4(any).into()).unwrap();
            let s: std::net::UdpSocket = s.into();
            let discovers: Vec<_> = (0..CLIENTS).map(|i| (i, packet(i, DISCOVER))).collect();
            let offers = burst(&s, &discovers, OFFER);
            let requests: Vec<_> = (0..CLIENTS)
                .filter_map(|i| {
                    let ip = *offers.get(&client_mac(i))?;
                    let mut p = packet(i, REQUEST);
                    set_option(&mut p, opt::REQUESTED_IP, &ip.octets());
                    set_option(&mut p, opt::SERVER_ID, &[10, 9, 0, 1]);
                    Some((i, p))
                })
                .collect();
            let acks = burst(&s, &requests, ACK);
            (offers, acks)
        })
        .join()
        .unwrap();
    // SIGKILL at once: whatever the server answered must already be in the store.
    server.0.kill().unwrap();
    server.0.wait().unwrap();

    assert!(
        offers.len() > CLIENTS / 2,
        "only {} offers of {CLIENTS}",
        offers.len()
    );
    assert!(!acks.is_empty(), "no ACK at all");
    let leases = LeaseDb::open(&db).unwrap().all().unwrap();
    let bound: HashMap<Mac, Ipv4Addr> = leases
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .map(|l| (l.mac, l.ip))
        .collect();
    for (mac, ip) in &acks {
        assert_eq!(
            bound.get(mac),
            Some(ip),
            "{mac} was ACKed {ip} but the store after kill -9 has {:?}",
            bound.get(mac)
        );
    }
    eprintln!(
        "{} offers, {} ACKs, {} bound leases after kill -9",
        offers.len(),
        acks.len(),
        bound.len()
    );
}
