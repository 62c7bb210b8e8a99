//! Integration tests in network namespaces that each test creates: a bridge in a "switch"
//! namespace and one namespace per party (our server, the site's dnsmasq, clients, a relay).
//! The DhcpServer runs in-process on a thread that has entered the server's namespace.
//! Needs root (namespaces, port 67); otherwise each test prints SKIP and returns.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use common::*;
use pxeforge_dhcp::wire::{self, opt};
use pxeforge_dhcp::{DhcpConfig, DhcpMetrics, DhcpServer, DhcpSite, Mode};
use socket2::{Domain, Protocol, Socket, Type};

fn can_run() -> bool {
    if !nix::unistd::geteuid().is_root() {
        pxeforge_tests::skip(format_args!(
            "DHCP namespace tests need root (network namespaces, port 67)"
        ));
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        pxeforge_tests::skip(format_args!("DHCP namespace tests need iproute2 (`ip`)"));
        return false;
    }
    true
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// One L2 segment: a bridge in its own namespace, each node attached by a veth named eth0.
struct Lab {
    prefix: String,
    nodes: Vec<Netns>,
    switch: Netns,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let prefix = format!(
            "pxf-dhcp-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let switch = Netns::new(format!("{prefix}-sw"));
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        Lab {
            prefix,
            nodes: Vec::new(),
            switch,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn node(&mut self, role: &str, cidr: Option<&str>, mac: Option<&str>) -> usize {
        let ns = Netns::new(format!("{}-{role}", self.prefix));
        let port = format!("p{}", self.nodes.len());
        ns.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &self.switch.name,
        ]);
        if let Some(mac) = mac {
            ns.ip(&["link", "set", "eth0", "address", mac]);
        }
        self.switch.ip(&["link", "set", &port, "master", "br0"]);
        self.switch.ip(&["link", "set", &port, "up"]);
        if let Some(cidr) = cidr {
            ns.ip(&["addr", "add", cidr, "dev", "eth0"]);
        }
        ns.ip(&["link", "set", "eth0", "up"]);
        self.nodes.push(ns);
        self.nodes.len() - 1
    }

    fn ns(&self, i: usize) -> &Netns {
        &self.nodes[i]
    }
}

/// A pxeforge DHCP server running in a namespace until dropped.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    metrics: Arc<DhcpMetrics>,
}

impl Server {
    fn start(ns: &Netns, mode: Mode, site: DhcpSite, lease_db: PathBuf) -> Server {
        Server::start_on(ns, Some("eth0"), mode, site, lease_db)
    }

    fn start_on(
        ns: &Netns,
        interface: Option<&str>,
        mode: Mode,
        site: DhcpSite,
        lease_db: PathBuf,
    ) -> Server {
        let interface = interface.map(str::to_string);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut config = DhcpConfig::new(mode, lease_db);
                config.interface = interface;
                let site = Arc::new(ArcSwap::from_pointee(site));
                let server = DhcpServer::bind(config, site).await.unwrap();
                let addrs = server.local_addrs();
                assert!(
                    addrs.iter().any(|a| a.port() == 67) && addrs.iter().any(|a| a.port() == 4011),
                    "{addrs:?}"
                );
                ready_tx.send(server.metrics()).unwrap();
                server
                    .run(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let metrics = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Server {
            stop: Some(stop_tx),
            thread: Some(thread),
            metrics,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `packet` from `bind` to `to` inside `ns`, and collects every DHCP reply for `wait`.
fn exchange(
    ns: &Netns,
    bind: SocketAddrV4,
    to: SocketAddrV4,
    packet: Vec<u8>,
    wait: Duration,
) -> Vec<(SocketAddr, wire::Packet)> {
    ns.enter(move || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_broadcast(true).unwrap();
        s.bind_device(Some(b"eth0")).unwrap();
        s.bind(&SocketAddr::V4(bind).into()).unwrap();
        let s: std::net::UdpSocket = s.into();
        s.send_to(&packet, to).unwrap();
        let deadline = Instant::now() + wait;
        let mut replies = Vec::new();
        let mut buf = [0u8; 1600];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            match s.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if let Ok(p) = wire::decode(&buf[..n]) {
                        replies.push((from, p));
                    }
                }
                Err(_) => break,
            }
        }
        replies
    })
    .join()
    .unwrap()
}

fn text(p: &wire::Packet, code: u8) -> Option<String> {
    p.options
        .get(code)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const DNSMASQ_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

#[test]
fn proxy_beside_dnsmasq() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let dns = lab.node("dnsmasq", Some("10.0.0.2/24"), None);
    let cli = lab.node("cli", None, Some("52:54:00:bb:00:07"));

    // The site's own DHCP server: addresses only, no boot options.
    let leases = lab.dir.path().join("dnsmasq.leases");
    let _dnsmasq = Proc(
        lab.ns(dns)
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--user=root",
                "--dhcp-range=10.0.0.100,10.0.0.150,255.255.255.0,1h",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--dhcp-authoritative",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .arg(format!(
                "--pid-file={}",
                lab.dir.path().join("dnsmasq.pid").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let server = Server::start(
        lab.ns(srv),
        Mode::Proxy,
        site(false),
        lab.dir.path().join("leases.db"),
    );

    // EDK2's real PXE DISCOVER (broadcast flag set), from the client's MAC.
    let mut discover = vector("ovmf-pxe-discover");
    set_mac(&mut discover, mac("52:54:00:bb:00:07"));
    let xid = u32::from_be_bytes(discover[4..8].try_into().unwrap());
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut replies = Vec::new();
    for _ in 0..5 {
        replies = exchange(
            lab.ns(cli),
            client,
            bcast,
            discover.clone(),
            Duration::from_secs(2),
        );
        if replies.iter().any(|(from, _)| from.ip() == DNSMASQ_IP)
            && replies.iter().any(|(from, _)| from.ip() == SERVER_IP)
        {
            break;
        }
    }
    let ours = replies
        .iter()
        .find(|(from, _)| from.ip() == SERVER_IP)
        .map(|(_, p)| p)
        .expect("no proxy offer");
    let theirs = replies
        .iter()
        .find(|(from, _)| from.ip() == DNSMASQ_IP)
        .map(|(_, p)| p)
        .expect("no dnsmasq offer");

    // dnsmasq gives the address, nothing to boot.
    assert_eq!(theirs.msg_type(), Some(2));
    assert!(theirs.yiaddr != Ipv4Addr::UNSPECIFIED);
    assert!(theirs.options.get(opt::BOOTFILE).is_none());
    // We give the boot file, no address, per the PXE specification.
    assert_eq!(ours.xid, xid);
    assert_eq!(ours.msg_type(), Some(2));
    assert_eq!(ours.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(ours.siaddr, SERVER_IP);
    assert_eq!(
        ours.option_ip(opt::SERVER_ID),
        Some(SERVER_IP),
        "option 54 = the interface's address"
    );
    assert_eq!(text(ours, opt::VENDOR_CLASS).as_deref(), Some("PXEClient"));
    assert_eq!(ours.options.get(opt::CLIENT_GUID), Some(&[0u8; 17][..]));
    assert_eq!(text(ours, opt::BOOTFILE).as_deref(), Some("snponly.efi"));
    assert_eq!(text(ours, opt::TFTP_SERVER).as_deref(), Some("10.0.0.1"));
    assert_eq!(&ours.file[..11], b"snponly.efi");
    assert_eq!(&ours.options.get(opt::VENDOR).unwrap()[..3], &[6, 1, 8]);
    assert!(ours.options.get(opt::LEASE_TIME).is_none());

    // With dnsmasq's address, the client asks us on 4011 and gets an ACK there.
    let addr = theirs.yiaddr;
    lab.ns(cli)
        .ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    let mut request = vector("ovmf-pxe-request");
    set_mac(&mut request, mac("52:54:00:bb:00:07"));
    set_ip(&mut request, CIADDR, addr);
    remove_option(&mut request, 50);
    remove_option(&mut request, 54);
    let acks = exchange(
        lab.ns(cli),
        SocketAddrV4::new(addr, 68),
        SocketAddrV4::new(SERVER_IP, 4011),
        request,
        Duration::from_secs(2),
    );
    let (from, ack) = acks
        .iter()
        .find(|(from, _)| from.ip() == SERVER_IP)
        .expect("no ACK from port 4011");
    assert_eq!(from.port(), 4011);
    assert_eq!(ack.msg_type(), Some(5));
    assert_eq!(text(ack, opt::BOOTFILE).as_deref(), Some("snponly.efi"));

    // A plain DHCP client is left to dnsmasq.
    let plain = plain_client(mac("52:54:00:bb:00:08"), 1);
    let mut plain = plain;
    plain[10] = 0x80;
    let replies = exchange(lab.ns(cli), client, bcast, plain, Duration::from_secs(2));
    assert!(
        replies.iter().all(|(from, _)| from.ip() != SERVER_IP),
        "proxy answered a non-PXE client"
    );

    assert!(server.metrics.decisions("offer") >= 1);
    assert!(server.metrics.decisions("ack") >= 1);
    assert!(server.metrics.decisions("not_boot_client") >= 1);
    let mut prom = String::new();
    server.metrics.write_prometheus(&mut prom);
    assert!(prom.contains("pxeforge_dhcp_decisions_total{mode=\"proxy\",message=\"discover\",firmware=\"efi-x64\",outcome=\"offer\"}"), "{prom}");
}

/// Runs busybox udhcpc in `ns`; returns the variables its script saw on `bound`.
fn udhcpc(
    ns: &Netns,
    dir: &Path,
    extra: &[&str],
) -> Option<std::collections::HashMap<String, String>> {
    let script = dir.join("udhcpc.sh");
    let out = dir.join("udhcpc.env");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nfor v in ip subnet router dns domain hostname boot_file siaddr serverid lease; do eval echo \"$v=\\$$v\"; done > {}\n",
            out.display()
        ),
    )
    .unwrap();
    run("chmod", &["+x", script.to_str().unwrap()]);
    let status = ns
        .command("busybox")
        .args([
            "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "4", "-T", "1", "-s",
        ])
        .arg(&script)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    if !status.success() {
        return None;
    }
    let env = std::fs::read_to_string(&out).ok()?;
    Some(
        env.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

fn have_busybox() -> bool {
    let ok = Command::new("busybox")
        .arg("udhcpc")
        .arg("--help")
        .output()
        .is_ok();
    if !ok {
        pxeforge_tests::skip(format_args!("busybox (udhcpc) not installed"));
    }
    ok
}

#[test]
fn reservation_with_udhcpc_and_restart() {
    if !can_run() || !have_busybox() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    // 52:54:00:aa:00:01 is node01 (10.0.0.11) in the test site.
    let cli = lab.node("cli", None, Some("52:54:00:aa:00:01"));
    let db = lab.dir.path().join("state/leases.db");
    let dir = lab.dir.path().to_path_buf();

    let server = Server::start(lab.ns(srv), Mode::Reservation, site(true), db.clone());
    // A plain client: address, mask, router, DNS, domain, hostname; no boot file.
    let env = udhcpc(lab.ns(cli), &dir, &[]).expect("udhcpc got no lease for the known host");
    assert_eq!(env["ip"], "10.0.0.11");
    assert_eq!(env["subnet"], "255.255.255.0");
    assert_eq!(env["router"], "10.0.0.254");
    assert_eq!(
        env["dns"].split_whitespace().collect::<Vec<_>>(),
        ["10.0.0.53", "10.0.0.54"]
    );
    assert_eq!(env["domain"], "lab.example");
    assert_eq!(env["hostname"], "node01");
    assert_eq!(env["serverid"], "10.0.0.1");
    assert_eq!(env["lease"], "3600");
    assert_eq!(env["boot_file"], "");
    // The same host as a PXE client also gets its boot file.
    let env = udhcpc(
        lab.ns(cli),
        &dir,
        &["-V", "PXEClient:Arch:00000:UNDI:002001"],
    )
    .expect("no lease as PXE client");
    assert_eq!(env["ip"], "10.0.0.11");
    assert_eq!(env["boot_file"], "undionly.kpxe");
    assert_eq!(env["siaddr"], "10.0.0.1");

    // An unknown host gets a pool lease.
    lab.ns(cli)
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:01:01"]);
    let env = udhcpc(lab.ns(cli), &dir, &[]).expect("no pool lease");
    assert_eq!(env["ip"], "10.0.0.100");
    assert_eq!(env["router"], "10.0.0.1");
    assert!(server.metrics.decisions("ack") >= 3);
    drop(server);

    // Restart: the lease is remembered, and not given to anyone else.
    let server = Server::start(lab.ns(srv), Mode::Reservation, site(true), db.clone());
    lab.ns(cli)
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:01:02"]);
    let env = udhcpc(lab.ns(cli), &dir, &["-r", "10.0.0.100"])
        .expect("no pool lease for the second client");
    assert_eq!(
        env["ip"], "10.0.0.101",
        "10.0.0.100 is still leased to the first client"
    );
    lab.ns(cli)
        .ip(&["link", "set", "eth0", "address", "02:00:00:00:01:01"]);
    let env = udhcpc(lab.ns(cli), &dir, &[]).expect("no lease after restart");
    assert_eq!(env["ip"], "10.0.0.100");
    drop(server);

    let leases = pxeforge_dhcp::leases::LeaseDb::open(&db)
        .unwrap()
        .all()
        .unwrap();
    let bound: Vec<_> = leases
        .iter()
        .map(|l| (l.ip.to_string(), l.mac.to_string()))
        .collect();
    assert!(
        bound.contains(&("10.0.0.100".into(), "02:00:00:00:01:01".into())),
        "{bound:?}"
    );
    assert!(
        bound.contains(&("10.0.0.101".into(), "02:00:00:00:01:02".into())),
        "{bound:?}"
    );
}

#[test]
fn relayed_request_answered_through_relay() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let relay = lab.node("relay", Some("10.0.0.9/24"), None);
    let relay_ip = Ipv4Addr::new(10, 0, 0, 9);
    for mode in [Mode::Reservation, Mode::Proxy] {
        let server = Server::start(
            lab.ns(srv),
            mode,
            site(false),
            lab.dir.path().join("leases.db"),
        );
        // iPXE's DISCOVER as a relay forwards it: giaddr set, hops 1, unicast to the server.
        let mut p = vector("bios-ipxe-discover");
        set_ip(&mut p, GIADDR, relay_ip);
        p[3] = 1;
        let replies = exchange(
            lab.ns(relay),
            SocketAddrV4::new(relay_ip, 67),
            SocketAddrV4::new(SERVER_IP, 67),
            p,
            Duration::from_secs(2),
        );
        assert_eq!(replies.len(), 1, "{mode:?}: {replies:?}");
        let (from, reply) = &replies[0];
        assert_eq!(*from, SocketAddr::V4(SocketAddrV4::new(SERVER_IP, 67)));
        assert_eq!(reply.giaddr, relay_ip);
        assert_eq!(reply.msg_type(), Some(2));
        assert_eq!(
            text(reply, opt::BOOTFILE).as_deref(),
            Some("http://10.0.0.1:8080/boot.ipxe")
        );
        match mode {
            Mode::Reservation => assert_eq!(reply.yiaddr, Ipv4Addr::new(10, 0, 0, 11)),
            _ => assert_eq!(reply.yiaddr, Ipv4Addr::UNSPECIFIED),
        }
        drop(server);
    }
}

#[test]
fn hostile_packets_over_the_wire_are_dropped() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let cli = lab.node("cli", Some("10.0.0.50/24"), None);
    let server = Server::start(
        lab.ns(srv),
        Mode::Proxy,
        site(false),
        lab.dir.path().join("leases.db"),
    );
    let good = vector("uefi-ipxe-discover");
    let end = good.iter().rposition(|&b| b == 255).unwrap();
    let mut wrong_hlen = good.clone();
    wrong_hlen[2] = 20;
    let mut loop_overload = good[..240].to_vec();
    loop_overload.extend_from_slice(&[53, 1, 1, 52, 1, 1, 255]);
    loop_overload[108..111].copy_from_slice(&[52, 1, 1]);
    for bad in [
        good[..end].to_vec(),
        wrong_hlen,
        loop_overload,
        vec![1; 1500],
        vec![0xff; 100],
    ] {
        let replies = exchange(
            lab.ns(cli),
            SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68),
            SocketAddrV4::new(SERVER_IP, 67),
            bad,
            Duration::from_millis(300),
        );
        assert!(replies.is_empty());
    }
    // Still alive and answering.
    let replies = exchange(
        lab.ns(cli),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
        SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
        good,
        Duration::from_secs(2),
    );
    assert_eq!(replies.len(), 1);
    assert_eq!(server.metrics.malformed.load(Ordering::Relaxed), 5);
}

#[test]
fn server_address_follows_the_receiving_interface() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let cli = lab.node("cli", None, None);
    // A second segment straight into the server's namespace: eth1 10.5.0.1 <-> the other client.
    let other = Netns::new(format!("{}-cli2", lab.prefix));
    lab.ns(srv).ip(&[
        "link",
        "add",
        "eth1",
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        &other.name,
    ]);
    lab.ns(srv)
        .ip(&["addr", "add", "10.5.0.1/24", "dev", "eth1"]);
    lab.ns(srv).ip(&["link", "set", "eth1", "up"]);
    other.ip(&["link", "set", "eth0", "up"]);

    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let discover = vector("uefi-ipxe-discover");
    let first_reply = |ns: &Netns| {
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies = exchange(
                ns,
                client,
                bcast,
                discover.clone(),
                Duration::from_millis(1500),
            );
            if !replies.is_empty() {
                break;
            }
        }
        replies
    };

    // Every interface: option 54, siaddr and the script URL name the address the client can reach.
    let server = Server::start_on(
        lab.ns(srv),
        None,
        Mode::Proxy,
        site(false),
        lab.dir.path().join("l.db"),
    );
    for (ns, want) in [(lab.ns(cli), "10.0.0.1"), (&other, "10.5.0.1")] {
        let replies = first_reply(ns);
        let (from, p) = replies.first().expect("no reply");
        let want: Ipv4Addr = want.parse().unwrap();
        assert_eq!(from.ip(), want);
        assert_eq!(p.option_ip(opt::SERVER_ID), Some(want));
        assert_eq!(p.siaddr, want);
        assert_eq!(
            text(p, opt::BOOTFILE),
            Some(format!("http://{want}:8080/boot.ipxe"))
        );
    }
    drop(server);

    // Bound to eth0: the other segment is not served.
    let _server = Server::start_on(
        lab.ns(srv),
        Some("eth0"),
        Mode::Proxy,
        site(false),
        lab.dir.path().join("l.db"),
    );
    assert_eq!(first_reply(lab.ns(cli)).len(), 1);
    assert!(
        first_reply(&other).is_empty(),
        "answered on an interface it is not bound to"
    );
}

#[test]
fn decline_and_release_over_the_wire() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let cli = lab.node("cli", None, None);
    let server = Server::start(
        lab.ns(srv),
        Mode::Reservation,
        site(true),
        lab.dir.path().join("leases.db"),
    );
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let a = mac("02:00:00:00:02:0a");
    let b = mac("02:00:00:00:02:0b");
    let packet = |who, msg: u8, opts: &[(u8, Vec<u8>)], ciaddr: Option<Ipv4Addr>| {
        let mut p = plain_client(who, msg);
        p[10] = 0x80; // broadcast flag: the client has no address to receive unicast on
        for (code, value) in opts {
            set_option(&mut p, *code, value);
        }
        if let Some(ip) = ciaddr {
            set_ip(&mut p, CIADDR, ip);
        }
        p
    };
    let ask = |p: Vec<u8>| -> Option<wire::Packet> {
        for _ in 0..3 {
            let replies = exchange(
                lab.ns(cli),
                client,
                bcast,
                p.clone(),
                Duration::from_millis(1500),
            );
            if let Some((_, r)) = replies.into_iter().next() {
                return Some(r);
            }
        }
        None
    };
    let tell = |p: Vec<u8>| {
        let replies = exchange(lab.ns(cli), client, bcast, p, Duration::from_millis(500));
        assert!(replies.is_empty(), "DECLINE and RELEASE get no reply");
    };
    let sid = (opt::SERVER_ID, SERVER_IP.octets().to_vec());
    let req = |ip: Ipv4Addr| (opt::REQUESTED_IP, ip.octets().to_vec());

    let offer = ask(packet(a, 1, &[], None)).expect("no offer");
    let first = offer.yiaddr;
    assert_eq!(first, Ipv4Addr::new(10, 0, 0, 100));
    let ack = ask(packet(a, 3, &[sid.clone(), req(first)], None)).expect("no ack");
    assert_eq!((ack.msg_type(), ack.yiaddr), (Some(5), first));

    // The address is in use by someone else: A declines it and never gets it again for now.
    tell(packet(a, 4, &[sid.clone(), req(first)], None));
    let offer = ask(packet(a, 1, &[req(first)], None)).expect("no offer after decline");
    let second = offer.yiaddr;
    assert!(
        second != first && second != Ipv4Addr::UNSPECIFIED,
        "{second}"
    );
    let ack = ask(packet(a, 3, &[sid.clone(), req(second)], None)).expect("no ack");
    assert_eq!(ack.yiaddr, second);
    // B may not take A's bound address: NAK.
    let nak = ask(packet(b, 3, &[sid.clone(), req(second)], None)).expect("no nak");
    assert_eq!(nak.msg_type(), Some(6));

    // A releases it; now B can have it.
    tell(packet(a, 7, std::slice::from_ref(&sid), Some(second)));
    let offer = ask(packet(b, 1, &[req(second)], None)).expect("no offer for b");
    assert_eq!(offer.yiaddr, second);
    let ack = ask(packet(b, 3, &[sid, req(second)], None)).expect("no ack for b");
    assert_eq!((ack.msg_type(), ack.yiaddr), (Some(5), second));
    assert!(server.metrics.decisions("declined") == 1 && server.metrics.decisions("released") == 1);
    assert_eq!(server.metrics.lease_errors.load(Ordering::Relaxed), 0);
}

/// A DHCP message from `who` with the broadcast flag (the client has no address yet).
fn client_packet(who: pxeforge_dhcp::Mac, msg: u8, opts: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut p = plain_client(who, msg);
    p[10] = 0x80;
    for (code, value) in opts {
        set_option(&mut p, *code, value);
    }
    p
}

fn bound_leases(db: &Path) -> Vec<(Ipv4Addr, String)> {
    pxeforge_dhcp::leases::LeaseDb::open(db)
        .unwrap()
        .all()
        .unwrap()
        .into_iter()
        .filter(|l| l.state == pxeforge_dhcp::leases::LeaseState::Bound)
        .map(|l| (l.ip, l.mac.to_string()))
        .collect()
}

fn prometheus(m: &DhcpMetrics) -> String {
    let mut out = String::new();
    m.write_prometheus(&mut out);
    out
}

/// The value of one sample (`name` with its labels, exactly as written) in Prometheus text.
fn sample(prom: &str, name: &str) -> Option<u64> {
    prom.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn unsolicited_requests_bind_nothing() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let cli = lab.node("cli", None, None);
    let db = lab.dir.path().join("leases.db");
    let server = Server::start(lab.ns(srv), Mode::Reservation, site(true), db.clone());
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let sid = (opt::SERVER_ID, SERVER_IP.octets().to_vec());
    // The whole pool (10.0.0.100-103), asked for without any offer: SELECTING with our server
    // identifier, and INIT-REBOOT without one, each from a MAC this server has never seen.
    for (i, last) in (100u8..=103).enumerate() {
        for with_sid in [true, false] {
            let who = mac(&format!(
                "02:00:00:00:09:{:02x}",
                i * 2 + usize::from(with_sid)
            ));
            let mut opts = vec![(
                opt::REQUESTED_IP,
                Ipv4Addr::new(10, 0, 0, last).octets().to_vec(),
            )];
            if with_sid {
                opts.push(sid.clone());
            }
            let replies = exchange(
                lab.ns(cli),
                client,
                bcast,
                client_packet(who, 3, &opts),
                Duration::from_millis(400),
            );
            assert!(
                replies.iter().all(|(_, p)| p.msg_type() != Some(5)),
                "an unsolicited REQUEST for 10.0.0.{last} was ACKed"
            );
        }
    }
    // A real client still gets the first address of the pool.
    let who = mac("02:00:00:00:09:ff");
    let mut offer = None;
    for _ in 0..3 {
        let replies = exchange(
            lab.ns(cli),
            client,
            bcast,
            client_packet(who, 1, &[]),
            Duration::from_millis(1500),
        );
        if let Some((_, p)) = replies.into_iter().next() {
            offer = Some(p);
            break;
        }
    }
    let offer = offer.expect("no offer after the unsolicited requests");
    assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 0, 0, 100));
    let prom = prometheus(&server.metrics);
    drop(server);
    assert_eq!(
        bound_leases(&db),
        vec![],
        "unsolicited REQUESTs bound addresses"
    );
    assert_eq!(
        sample(
            &prom,
            "pxeforge_dhcp_unsolicited_requests_total{answer=\"nak\"}"
        )
        .unwrap_or(0)
            + sample(
                &prom,
                "pxeforge_dhcp_unsolicited_requests_total{answer=\"ignored\"}"
            )
            .unwrap_or(0),
        8,
        "{prom}"
    );
}

#[test]
fn relayed_request_from_an_unknown_subnet_gets_no_lease() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let relay = lab.node("relay", Some("10.0.0.9/24"), None);
    // The relay's client side is 10.9.0.0/24 (its address there, 10.9.0.1, is giaddr), reached
    // from the server through the relay.
    lab.ns(relay)
        .ip(&["addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    lab.ns(srv)
        .ip(&["route", "add", "10.9.0.0/24", "via", "10.0.0.9"]);
    // The site's only pool is 10.0.0.100-103 (10.0.0.0/24).
    let _server = Server::start(
        lab.ns(srv),
        Mode::Reservation,
        site(true),
        lab.dir.path().join("leases.db"),
    );
    let mut p = client_packet(mac("02:00:00:00:0a:01"), 1, &[]);
    set_ip(&mut p, GIADDR, Ipv4Addr::new(10, 9, 0, 1));
    p[3] = 1;
    let replies = exchange(
        lab.ns(relay),
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
        SocketAddrV4::new(SERVER_IP, 67),
        p,
        Duration::from_millis(1500),
    );
    assert!(
        replies.is_empty(),
        "a client on 10.9.0.0/24 was offered an address of another subnet: {replies:?}"
    );
}

#[test]
fn no_interface_means_no_reservation_mode() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let db = lab.dir.path().join("leases.db");
    let result = lab
        .ns(srv)
        .enter(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut out = Vec::new();
                for (mode, interface) in [
                    (Mode::Reservation, None),
                    (Mode::Reservation, Some(String::new())),
                    (Mode::Proxy, None),
                ] {
                    let mut config = DhcpConfig::new(mode, db.clone());
                    config.interface = interface;
                    let site = Arc::new(ArcSwap::from_pointee(site(true)));
                    out.push(
                        DhcpServer::bind(config, site)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    );
                }
                out
            })
        })
        .join()
        .unwrap();
    let err = result[0]
        .as_ref()
        .expect_err("reservation mode started without an interface");
    assert!(err.contains("interface"), "{err}");
    assert!(
        result[1].is_err(),
        "an empty interface name is no interface"
    );
    assert!(
        result[2].is_ok(),
        "proxy mode without an interface only warns: {:?}",
        result[2]
    );
}

#[test]
fn ping_probe_skips_an_address_in_use() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    // A machine configured by hand with the pool's first address, which DHCP knows nothing of.
    let _squatter = lab.node("squat", Some("10.0.0.100/24"), None);
    let cli = lab.node("cli", None, None);
    let db = lab.dir.path().join("leases.db");
    let server = Server::start(lab.ns(srv), Mode::Reservation, site(true), db.clone());
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let who = mac("02:00:00:00:0b:01");
    let mut offer = None;
    for _ in 0..4 {
        let replies = exchange(
            lab.ns(cli),
            client,
            bcast,
            client_packet(who, 1, &[]),
            Duration::from_secs(3),
        );
        if let Some((_, p)) = replies.into_iter().next() {
            offer = Some(p);
            break;
        }
    }
    let offer = offer.expect("no offer");
    assert_eq!(
        offer.yiaddr,
        Ipv4Addr::new(10, 0, 0, 101),
        "offered an address that answers ping"
    );
    let prom = prometheus(&server.metrics);
    assert_eq!(
        sample(&prom, "pxeforge_dhcp_ping_conflicts_total"),
        Some(1),
        "{prom}"
    );
}

/// dnsmasq as a second DHCP server on the segment, with its addresses only.
fn dnsmasq(lab: &Lab, ns: usize, range: &str) -> Proc {
    Proc(
        lab.ns(ns)
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=eth0",
                "--bind-interfaces",
                "--user=root",
                "--no-resolv",
                "--no-hosts",
                "--conf-file=/dev/null",
                "--dhcp-authoritative",
            ])
            .arg(format!("--dhcp-range={range}"))
            .arg(format!(
                "--dhcp-leasefile={}",
                lab.dir.path().join(format!("dnsmasq{ns}.leases")).display()
            ))
            .arg(format!(
                "--pid-file={}",
                lab.dir.path().join(format!("dnsmasq{ns}.pid")).display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    )
}

fn have_dnsmasq() -> bool {
    let ok = Command::new("dnsmasq").arg("--version").output().is_ok();
    if !ok {
        pxeforge_tests::skip(format_args!("dnsmasq not installed"));
    }
    ok
}

#[test]
fn a_second_dhcp_server_is_reported() {
    if !can_run() || !have_dnsmasq() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let other = lab.node("dnsmasq", Some("10.0.0.2/24"), None);
    let cli = lab.node("cli", None, None);
    let _dnsmasq = dnsmasq(&lab, other, "10.0.0.150,10.0.0.160,255.255.255.0,1h");
    let server = Server::start(
        lab.ns(srv),
        Mode::Reservation,
        site(true),
        lab.dir.path().join("leases.db"),
    );
    let client = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);
    let bcast = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let who = mac("02:00:00:00:0c:01");
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = None;
    while Instant::now() < deadline {
        let _ = exchange(
            lab.ns(cli),
            client,
            bcast,
            client_packet(who, 1, &[]),
            Duration::from_secs(1),
        );
        let prom = prometheus(&server.metrics);
        seen = sample(&prom, "pxeforge_dhcp_foreign_server_replies_total");
        if seen.unwrap_or(0) > 0 {
            break;
        }
    }
    assert!(
        seen.unwrap_or(0) > 0,
        "dnsmasq's offers were not reported: {}",
        prometheus(&server.metrics)
    );
}

fn decisions(prom: &str, message: &str, outcome: &str) -> u64 {
    sample(
        prom,
        &format!("pxeforge_dhcp_decisions_total{{mode=\"reservation\",message=\"{message}\",firmware=\"unknown\",outcome=\"{outcome}\"}}"),
    )
    .unwrap_or(0)
}

/// ISC dhclient, run to a lease and stopped (by its pid) before returning.
fn dhclient(ns: &Netns, dir: &Path) -> bool {
    let pid = dir.join("dhclient.pid");
    let ok = ns
        .command("dhclient")
        .args(["-1", "-4", "-sf", "/bin/true", "-cf", "/dev/null", "-lf"])
        .arg(dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(&pid)
        .arg("eth0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    // -1 leaves a daemon behind once bound: stop exactly that process.
    if let Some(p) = std::fs::read_to_string(&pid)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
    {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), nix::sys::signal::SIGTERM);
    }
    ok
}

#[test]
fn init_reboot_of_a_real_lease() {
    if !can_run() {
        return;
    }
    if Command::new("dhclient").arg("--version").output().is_err() {
        pxeforge_tests::skip(format_args!("dhclient not installed"));
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let cli = lab.node("cli", None, Some("02:00:00:00:0d:01"));
    let db = lab.dir.path().join("leases.db");
    let dir = lab.dir.path().to_path_buf();
    let server = Server::start(lab.ns(srv), Mode::Reservation, site(true), db.clone());
    assert!(dhclient(lab.ns(cli), &dir), "dhclient got no lease");
    let first = prometheus(&server.metrics);
    assert_eq!(decisions(&first, "discover", "offer"), 1, "{first}");
    assert_eq!(decisions(&first, "request", "ack"), 1, "{first}");
    // Rebooting with its lease file: a REQUEST without server identifier (INIT-REBOOT).
    assert!(
        dhclient(lab.ns(cli), &dir),
        "dhclient could not reboot its lease"
    );
    let second = prometheus(&server.metrics);
    assert_eq!(
        decisions(&second, "discover", "offer"),
        1,
        "no new DISCOVER expected: {second}"
    );
    assert_eq!(decisions(&second, "request", "ack"), 2, "{second}");
    drop(server);
    assert_eq!(
        bound_leases(&db),
        vec![(
            Ipv4Addr::new(10, 0, 0, 100),
            "02:00:00:00:0d:01".to_string()
        )]
    );
}

#[test]
fn relayed_request_is_served_from_its_subnet_pool() {
    if !can_run() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let relay = lab.node("relay", Some("10.0.0.9/24"), None);
    lab.ns(relay)
        .ip(&["addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    lab.ns(srv)
        .ip(&["route", "add", "10.9.0.0/24", "via", "10.0.0.9"]);
    let mut s = site(true);
    s.pools.push(pxeforge_dhcp::Pool {
        start: Ipv4Addr::new(10, 9, 0, 100),
        end: Ipv4Addr::new(10, 9, 0, 110),
        prefix: 24,
        router: Some(Ipv4Addr::new(10, 9, 0, 1)),
        dns: vec![],
        domain: Some("far.example".into()),
    });
    let server = Server::start(
        lab.ns(srv),
        Mode::Reservation,
        s,
        lab.dir.path().join("leases.db"),
    );
    let who = mac("02:00:00:00:0e:01");
    let relayed = |msg: u8, opts: &[(u8, Vec<u8>)]| {
        let mut p = client_packet(who, msg, opts);
        set_ip(&mut p, GIADDR, Ipv4Addr::new(10, 9, 0, 1));
        p[3] = 1;
        let mut replies = Vec::new();
        for _ in 0..3 {
            replies = exchange(
                lab.ns(relay),
                SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 67),
                SocketAddrV4::new(SERVER_IP, 67),
                p.clone(),
                Duration::from_millis(1500),
            );
            if !replies.is_empty() {
                break;
            }
        }
        replies
            .into_iter()
            .next()
            .map(|(_, p)| p)
            .expect("no reply through the relay")
    };
    let offer = relayed(1, &[]);
    assert_eq!(offer.msg_type(), Some(2));
    assert_eq!(offer.yiaddr, Ipv4Addr::new(10, 9, 0, 100));
    assert_eq!(
        offer.option_ip(opt::ROUTER),
        Some(Ipv4Addr::new(10, 9, 0, 1))
    );
    assert_eq!(text(&offer, opt::DOMAIN).as_deref(), Some("far.example"));
    let ack = relayed(
        3,
        &[
            (opt::SERVER_ID, SERVER_IP.octets().to_vec()),
            (opt::REQUESTED_IP, offer.yiaddr.octets().to_vec()),
        ],
    );
    assert_eq!((ack.msg_type(), ack.yiaddr), (Some(5), offer.yiaddr));
    // The local segment's pool is untouched.
    let prom = prometheus(&server.metrics);
    assert_eq!(sample(&prom, "pxeforge_dhcp_lease_errors_total"), Some(0));
}

#[test]
fn a_listed_peer_is_counted_not_reported() {
    if !can_run() || !have_dnsmasq() {
        return;
    }
    let mut lab = Lab::new();
    let srv = lab.node("srv", Some("10.0.0.1/24"), None);
    let other = lab.node("dnsmasq", Some("10.0.0.2/24"), None);
    let cli = lab.node("cli", None, None);
    let _dnsmasq = dnsmasq(&lab, other, "10.0.0.150,10.0.0.160,255.255.255.0,1h");
    let mut s = site(true);
    s.peers = vec![DNSMASQ_IP];
    let server = Server::start(
        lab.ns(srv),
        Mode::Proxy,
        s,
        lab.dir.path().join("leases.db"),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut prom = String::new();
    while Instant::now() < deadline {
        let _ = exchange(
            lab.ns(cli),
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
            SocketAddrV4::new(Ipv4Addr::BROADCAST, 67),
            client_packet(mac("02:00:00:00:0f:01"), 1, &[]),
            Duration::from_secs(1),
        );
        prom = prometheus(&server.metrics);
        if sample(&prom, "pxeforge_dhcp_peer_server_replies_total").unwrap_or(0) > 0 {
            break;
        }
    }
    assert!(
        sample(&prom, "pxeforge_dhcp_peer_server_replies_total").unwrap_or(0) > 0,
        "{prom}"
    );
    assert_eq!(
        sample(&prom, "pxeforge_dhcp_foreign_server_replies_total"),
        Some(0),
        "{prom}"
    );
}
