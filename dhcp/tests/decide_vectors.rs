//! The decision with real firmware packets, in both modes.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use dhcproto::{v4, Decodable, Decoder};
use pxeforge_dhcp::decide::{self, Response};
use pxeforge_dhcp::encode::encode;
use pxeforge_dhcp::wire::{self, opt};
use pxeforge_dhcp::{
    parse_request, Action, ClientFacts, Destination, DhcpSite, Firmware, Input, LeaseOp,
    LeaseOutcome, MessageType, Mode, Port, RequestKind, Silence,
};

fn client_source() -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68)
}

fn run(
    bytes: &[u8],
    site: &DhcpSite,
    mode: Mode,
    port: Port,
    lease: LeaseOutcome,
) -> (ClientFacts, Action) {
    let facts = parse_request(bytes).unwrap();
    let source = if port == Port::Pxe {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68)
    } else {
        client_source()
    };
    let input = Input {
        facts: &facts,
        port,
        source,
        server_ip: SERVER,
    };
    let action = decide::decide(&input, site, mode, lease);
    (facts, action)
}

fn respond(action: Action) -> Response {
    match action {
        Action::Respond(r) => *r,
        Action::NoResponse(why) => panic!("expected a reply, got silence: {why:?}"),
    }
}

fn silence(action: Action) -> Silence {
    match action {
        Action::NoResponse(why) => why,
        Action::Respond(r) => panic!("expected silence, got {:?}", r.reply),
    }
}

/// Encodes the reply, decodes it with our decoder and with dhcproto, and checks they agree.
fn wire_reply(resp: &Response) -> wire::Packet {
    let bytes = encode(&resp.reply);
    assert!(bytes.len() >= 300);
    let ours = wire::decode(&bytes).unwrap();
    let theirs = v4::Message::decode(&mut Decoder::new(&bytes)).unwrap();
    assert_eq!(theirs.opcode(), v4::Opcode::BootReply);
    assert_eq!(theirs.xid(), resp.reply.xid);
    assert_eq!(theirs.yiaddr(), resp.reply.yiaddr);
    assert_eq!(theirs.siaddr(), resp.reply.siaddr);
    assert_eq!(
        u8::from(theirs.opts().msg_type().unwrap()),
        resp.reply.msg_type.code()
    );
    assert_eq!(ours.msg_type(), Some(resp.reply.msg_type.code()));
    assert_eq!(ours.options.get(opt::SERVER_ID), Some(&SERVER.octets()[..]));
    if let Some(f) = &resp.reply.file {
        let file = theirs.fname_str().unwrap().unwrap();
        assert_eq!(file.trim_end_matches('\0'), f);
    }
    ours
}

fn opt_str(p: &wire::Packet, code: u8) -> Option<String> {
    p.options
        .get(code)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

#[test]
fn facts_from_captures() {
    let f = parse_request(&vector("bios-ipxe-discover")).unwrap();
    assert_eq!(f.mac, mac("52:54:00:aa:00:01"));
    assert_eq!(
        (f.msg_type, f.arch, f.firmware, f.ipxe),
        (MessageType::Discover, Some(0), Firmware::Bios, true)
    );
    let f = parse_request(&vector("uefi-ipxe-discover")).unwrap();
    assert_eq!(
        (f.arch, f.firmware, f.ipxe),
        (Some(7), Firmware::EfiX64, true)
    );
    let f = parse_request(&vector("ovmf-pxe-discover")).unwrap();
    assert_eq!(
        (f.arch, f.firmware, f.ipxe),
        (Some(7), Firmware::EfiX64, false)
    );
    assert_eq!(f.guid.as_deref(), Some(&[0u8; 17][..]));
    assert!(f.broadcast_flag());
    let f = parse_request(&vector("ovmf-pxe-request")).unwrap();
    assert_eq!(f.msg_type, MessageType::Request);
    assert_eq!(f.requested_ip, Some(Ipv4Addr::new(10, 77, 0, 104)));
    assert_eq!(f.server_id, Some(Ipv4Addr::new(10, 77, 0, 1)));
    let f = parse_request(&vector("ovmf-http-discover")).unwrap();
    assert_eq!(
        (f.arch, f.firmware, f.ipxe),
        (Some(16), Firmware::HttpX64, false)
    );
    assert_eq!(
        f.vendor_class,
        pxeforge_dhcp::facts::VendorClass::HttpClient
    );
}

#[test]
fn proxy_ipxe_bios_and_uefi_get_the_script() {
    let site = site(false);
    for name in ["bios-ipxe-discover", "uefi-ipxe-discover"] {
        let (facts, action) = run(
            &vector(name),
            &site,
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        );
        let resp = respond(action);
        assert_eq!(
            resp.boot.as_deref(),
            Some("http://10.0.0.1:8080/boot.ipxe"),
            "{name}"
        );
        assert_eq!(resp.destination, Destination::Broadcast);
        let p = wire_reply(&resp);
        assert_eq!(p.msg_type(), Some(2));
        assert_eq!(p.xid, facts.xid);
        assert_eq!(
            p.yiaddr,
            Ipv4Addr::UNSPECIFIED,
            "proxy offers carry no address"
        );
        assert_eq!(p.siaddr, SERVER);
        assert_eq!(p.mac(), facts.mac);
        assert_eq!(opt_str(&p, opt::VENDOR_CLASS).as_deref(), Some("PXEClient"));
        assert_eq!(
            opt_str(&p, opt::BOOTFILE).as_deref(),
            Some("http://10.0.0.1:8080/boot.ipxe")
        );
        assert_eq!(p.options.get(opt::CLIENT_GUID), facts.guid.as_deref());
        let v43 = p.options.get(opt::VENDOR).unwrap();
        assert_eq!(&v43[..3], &[6, 1, 8]);
        // No lease options in proxy mode.
        assert!(p.options.get(opt::LEASE_TIME).is_none());
        assert!(p.options.get(opt::SUBNET_MASK).is_none());
    }
}

#[test]
fn proxy_native_uefi_pxe_gets_tftp_binary() {
    let mut p = vector("ovmf-pxe-discover");
    set_mac(&mut p, mac("52:54:00:bb:00:03"));
    let (facts, action) = run(
        &p,
        &site(false),
        Mode::Proxy,
        Port::Dhcp,
        LeaseOutcome::NotApplicable,
    );
    let resp = respond(action);
    assert_eq!(resp.boot.as_deref(), Some("snponly.efi"));
    let p = wire_reply(&resp);
    assert_eq!(opt_str(&p, opt::TFTP_SERVER).as_deref(), Some("10.0.0.1"));
    assert_eq!(opt_str(&p, opt::BOOTFILE).as_deref(), Some("snponly.efi"));
    assert_eq!(p.options.get(opt::CLIENT_GUID), Some(&[0u8; 17][..]));
    assert_eq!(p.flags, facts.flags);
    let v43 = p.options.get(opt::VENDOR).unwrap();
    // discovery control, boot menu, prompt, end
    assert_eq!(v43[0], 6);
    assert!(v43.windows(2).any(|w| w == [9, 11]));
    assert!(v43.windows(3).any(|w| w == [10, 9, 0]));
    assert_eq!(*v43.last().unwrap(), 255);
}

#[test]
fn proxy_http_boot_gets_url_and_httpclient() {
    let resp = respond(
        run(
            &vector("ovmf-http-discover"),
            &site(false),
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(
        resp.boot.as_deref(),
        Some("http://10.0.0.1:8080/tftp/ipxe.efi")
    );
    let p = wire_reply(&resp);
    assert_eq!(
        opt_str(&p, opt::VENDOR_CLASS).as_deref(),
        Some("HTTPClient")
    );
    assert!(
        p.options.get(opt::VENDOR).is_none(),
        "no PXE options for HTTP boot"
    );
    assert!(p.options.get(opt::TFTP_SERVER).is_none());
}

#[test]
fn every_firmware_class() {
    let site = site(false);
    let cases: &[(&str, u16, &str, Option<&str>)] = &[
        ("PXEClient", 0, "ovmf-pxe-discover", Some("undionly.kpxe")),
        ("PXEClient", 6, "ovmf-pxe-discover", Some("ipxe-i386.efi")),
        ("PXEClient", 7, "ovmf-pxe-discover", Some("snponly.efi")),
        ("PXEClient", 9, "ovmf-pxe-discover", Some("snponly.efi")),
        ("PXEClient", 11, "ovmf-pxe-discover", Some("ipxe-arm64.efi")),
        (
            "HTTPClient",
            16,
            "ovmf-http-discover",
            Some("http://10.0.0.1:8080/tftp/ipxe.efi"),
        ),
        (
            "HTTPClient",
            19,
            "ovmf-http-discover",
            Some("http://10.0.0.1:8080/tftp/ipxe-arm64.efi"),
        ),
        ("PXEClient", 2, "ovmf-pxe-discover", None),
    ];
    for &(class, arch, base, want) in cases {
        // Another MAC: 52:54:00:aa:00:03 is a local-boot host.
        let mut p = with_arch(vector(base), arch, class);
        set_mac(&mut p, mac("52:54:00:bb:00:01"));
        let (facts, action) = run(
            &p,
            &site,
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        );
        assert_eq!(facts.arch, Some(arch));
        match want {
            Some(file) => assert_eq!(respond(action).boot.as_deref(), Some(file), "arch {arch}"),
            None => assert_eq!(silence(action), Silence::UnsupportedFirmware, "arch {arch}"),
        }
    }
    // iPXE wins over the architecture: it always gets the script.
    for arch in [0u16, 6, 7, 9, 11] {
        let p = with_arch(vector("bios-ipxe-discover"), arch, "PXEClient");
        let resp = respond(
            run(
                &p,
                &site,
                Mode::Proxy,
                Port::Dhcp,
                LeaseOutcome::NotApplicable,
            )
            .1,
        );
        assert_eq!(resp.boot.as_deref(), Some("http://10.0.0.1:8080/boot.ipxe"));
    }
    // Option 175 alone marks iPXE too.
    let mut p = vector("bios-ipxe-discover");
    remove_option(&mut p, 77);
    let resp = respond(
        run(
            &p,
            &site,
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.boot.as_deref(), Some("http://10.0.0.1:8080/boot.ipxe"));
    // Without 77 and 175 the same ROM is a BIOS PXE client.
    remove_option(&mut p, 175);
    let resp = respond(
        run(
            &p,
            &site,
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.boot.as_deref(), Some("undionly.kpxe"));
}

#[test]
fn base_url_override() {
    let mut site = site(false);
    site.base_url = Some("http://boot.lab.example/".into());
    let resp = respond(
        run(
            &vector("uefi-ipxe-discover"),
            &site,
            Mode::Proxy,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(
        resp.boot.as_deref(),
        Some("http://boot.lab.example/boot.ipxe")
    );
}

#[test]
fn proxy_answers_only_boot_clients_and_only_discover_on_67() {
    let site = site(false);
    let plain = plain_client(mac("52:54:00:cc:00:01"), 1);
    assert_eq!(
        silence(
            run(
                &plain,
                &site,
                Mode::Proxy,
                Port::Dhcp,
                LeaseOutcome::NotApplicable
            )
            .1
        ),
        Silence::NotBootClient
    );
    // REQUEST on 67 belongs to the site's DHCP server.
    assert_eq!(
        silence(
            run(
                &vector("ovmf-pxe-request"),
                &site,
                Mode::Proxy,
                Port::Dhcp,
                LeaseOutcome::NotApplicable
            )
            .1
        ),
        Silence::Ignored
    );
    // Mode off never answers.
    assert_eq!(
        silence(
            run(
                &vector("bios-ipxe-discover"),
                &site,
                Mode::Off,
                Port::Dhcp,
                LeaseOutcome::NotApplicable
            )
            .1
        ),
        Silence::ModeOff
    );
}

#[test]
fn proxy_request_on_4011_is_acked_to_its_source_with_boot_item() {
    let mut p = vector("uefi-ipxe-request");
    // A boot server discovery request carries the menu item it picked.
    set_option(&mut p, 43, &[71, 4, 0x80, 0x00, 0x00, 0x00, 255]);
    let resp = respond(
        run(
            &p,
            &site(false),
            Mode::Proxy,
            Port::Pxe,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.reply.msg_type, MessageType::Ack);
    assert_eq!(
        resp.destination,
        Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 50), 68))
    );
    let w = wire_reply(&resp);
    assert_eq!(w.yiaddr, Ipv4Addr::UNSPECIFIED);
    let v43 = w.options.get(opt::VENDOR).unwrap();
    assert!(v43.windows(6).any(|x| x == [71, 4, 0x80, 0, 0, 0]));
}

#[test]
fn local_boot_host_gets_no_boot_offer() {
    // 52:54:00:aa:00:03 (the OVMF PXE capture) is install = false.
    let p = vector("ovmf-pxe-discover");
    assert_eq!(
        silence(
            run(
                &p,
                &site(false),
                Mode::Proxy,
                Port::Dhcp,
                LeaseOutcome::NotApplicable
            )
            .1
        ),
        Silence::LocalBoot
    );
    let resp = respond(
        run(
            &p,
            &site(false),
            Mode::Reservation,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.reply.yiaddr, Ipv4Addr::new(10, 0, 0, 13));
    assert_eq!(resp.boot, None);
    let w = wire_reply(&resp);
    assert!(w.options.get(opt::BOOTFILE).is_none());
    assert!(w.options.get(opt::VENDOR).is_none());
    assert_eq!(w.file, [0u8; 128]);
    assert_eq!(w.siaddr, Ipv4Addr::UNSPECIFIED);
}

#[test]
fn reservation_known_host_static_address() {
    let site = site(false);
    let (_, action) = run(
        &vector("bios-ipxe-discover"),
        &site,
        Mode::Reservation,
        Port::Dhcp,
        LeaseOutcome::NotApplicable,
    );
    let resp = respond(action);
    assert_eq!(resp.reply.msg_type, MessageType::Offer);
    let w = wire_reply(&resp);
    assert_eq!(w.yiaddr, Ipv4Addr::new(10, 0, 0, 11));
    assert_eq!(
        w.options.get(opt::SUBNET_MASK),
        Some(&[255, 255, 255, 0][..])
    );
    assert_eq!(w.options.get(opt::ROUTER), Some(&[10, 0, 0, 254][..]));
    assert_eq!(
        w.options.get(opt::DNS),
        Some(&[10, 0, 0, 53, 10, 0, 0, 54][..])
    );
    assert_eq!(opt_str(&w, opt::DOMAIN).as_deref(), Some("lab.example"));
    assert_eq!(opt_str(&w, opt::HOSTNAME).as_deref(), Some("node01"));
    assert_eq!(
        w.options.get(opt::LEASE_TIME),
        Some(&3600u32.to_be_bytes()[..])
    );
    assert_eq!(
        w.options.get(opt::RENEWAL),
        Some(&1800u32.to_be_bytes()[..])
    );
    assert_eq!(
        w.options.get(opt::REBINDING),
        Some(&3150u32.to_be_bytes()[..])
    );
    assert_eq!(
        opt_str(&w, opt::BOOTFILE).as_deref(),
        Some("http://10.0.0.1:8080/boot.ipxe")
    );

    // Its REQUEST (captured against another server) names 10.77.0.102: NAK, broadcast.
    let req = vector("bios-ipxe-request");
    let (facts, action) = run(
        &req,
        &site,
        Mode::Reservation,
        Port::Dhcp,
        LeaseOutcome::NotApplicable,
    );
    assert_eq!(facts.server_id, Some(Ipv4Addr::new(10, 77, 0, 1)));
    assert_eq!(
        silence(action),
        Silence::OtherServer,
        "the client chose another server"
    );
    let mut req = req;
    remove_option(&mut req, 54);
    let resp = respond(
        run(
            &req,
            &site,
            Mode::Reservation,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.reply.msg_type, MessageType::Nak);
    assert_eq!(resp.destination, Destination::Broadcast);
    assert_eq!(wire_reply(&resp).yiaddr, Ipv4Addr::UNSPECIFIED);
    // Asking for its own address: ACK.
    set_option(&mut req, 54, &SERVER.octets());
    set_option(&mut req, 50, &[10, 0, 0, 11]);
    let resp = respond(
        run(
            &req,
            &site,
            Mode::Reservation,
            Port::Dhcp,
            LeaseOutcome::NotApplicable,
        )
        .1,
    );
    assert_eq!(resp.reply.msg_type, MessageType::Ack);
    assert_eq!(resp.reply.yiaddr, Ipv4Addr::new(10, 0, 0, 11));
}

#[test]
fn reservation_unknown_host() {
    let mut p = vector("ovmf-pxe-discover");
    set_mac(&mut p, mac("52:54:00:dd:00:01"));
    // No pool: ignored.
    let no_pool = site(false);
    let (facts, action) = run(
        &p,
        &no_pool,
        Mode::Reservation,
        Port::Dhcp,
        LeaseOutcome::NotApplicable,
    );
    assert_eq!(silence(action), Silence::UnknownHost);
    let input = Input {
        facts: &facts,
        port: Port::Dhcp,
        source: client_source(),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &no_pool, Mode::Reservation),
        LeaseOp::None
    );

    // Pool: the lease database is asked, and its answer is offered with the pool's network.
    let pool = site(true);
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::Offer {
            pool: 0,
            requested: None
        }
    );
    assert_eq!(decide::lease_op(&input, &pool, Mode::Proxy), LeaseOp::None);
    let ip = Ipv4Addr::new(10, 0, 0, 100);
    let resp = respond(decide::decide(
        &input,
        &pool,
        Mode::Reservation,
        LeaseOutcome::Offered(ip),
    ));
    let w = wire_reply(&resp);
    assert_eq!(w.yiaddr, ip);
    assert_eq!(w.options.get(opt::ROUTER), Some(&[10, 0, 0, 1][..]));
    assert_eq!(opt_str(&w, opt::BOOTFILE).as_deref(), Some("snponly.efi"));
    assert!(w.options.get(opt::HOSTNAME).is_none());
    assert_eq!(
        silence(decide::decide(
            &input,
            &pool,
            Mode::Reservation,
            LeaseOutcome::Exhausted
        )),
        Silence::PoolExhausted
    );

    // REQUEST for the offered address → Commit; bound → ACK, refused → NAK.
    let mut req = vector("ovmf-pxe-request");
    set_mac(&mut req, mac("52:54:00:dd:00:01"));
    set_option(&mut req, 54, &SERVER.octets());
    set_option(&mut req, 50, &ip.octets());
    let facts = parse_request(&req).unwrap();
    let input = Input {
        facts: &facts,
        port: Port::Dhcp,
        source: client_source(),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::Commit {
            pool: 0,
            ip,
            kind: RequestKind::Selecting
        }
    );
    let ack = respond(decide::decide(
        &input,
        &pool,
        Mode::Reservation,
        LeaseOutcome::Bound(ip),
    ));
    assert_eq!(
        (ack.reply.msg_type, ack.reply.yiaddr),
        (MessageType::Ack, ip)
    );
    let nak = respond(decide::decide(
        &input,
        &pool,
        Mode::Reservation,
        LeaseOutcome::Refused,
    ));
    assert_eq!(nak.reply.msg_type, MessageType::Nak);

    // REQUEST naming another server: forget our offer, stay silent.
    set_option(&mut req, 54, &[10, 0, 0, 2]);
    let facts = parse_request(&req).unwrap();
    let input = Input {
        facts: &facts,
        port: Port::Dhcp,
        source: client_source(),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::Forget
    );
    assert_eq!(
        silence(decide::decide(
            &input,
            &pool,
            Mode::Reservation,
            LeaseOutcome::NotApplicable
        )),
        Silence::OtherServer
    );
}

#[test]
fn reservation_release_decline_inform() {
    let pool = site(true);
    let who = mac("52:54:00:dd:00:02");
    let mut rel = plain_client(who, 7);
    set_ip(&mut rel, CIADDR, Ipv4Addr::new(10, 0, 0, 101));
    let f = parse_request(&rel).unwrap();
    let input = Input {
        facts: &f,
        port: Port::Dhcp,
        source: client_source(),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::Release(Ipv4Addr::new(10, 0, 0, 101))
    );
    assert_eq!(
        silence(decide::decide(
            &input,
            &pool,
            Mode::Reservation,
            LeaseOutcome::NotApplicable
        )),
        Silence::Released
    );

    let mut dec = plain_client(who, 4);
    set_option(&mut dec, 50, &[10, 0, 0, 101]);
    let f = parse_request(&dec).unwrap();
    let input = Input {
        facts: &f,
        port: Port::Dhcp,
        source: client_source(),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::Decline(Ipv4Addr::new(10, 0, 0, 101))
    );
    assert_eq!(
        silence(decide::decide(
            &input,
            &pool,
            Mode::Reservation,
            LeaseOutcome::NotApplicable
        )),
        Silence::Declined
    );

    // INFORM: ACK with configuration but no address, unicast to the client.
    let mut inf = plain_client(who, 8);
    set_ip(&mut inf, CIADDR, Ipv4Addr::new(10, 0, 0, 150));
    let f = parse_request(&inf).unwrap();
    let input = Input {
        facts: &f,
        port: Port::Dhcp,
        source: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 150), 68),
        server_ip: SERVER,
    };
    assert_eq!(
        decide::lease_op(&input, &pool, Mode::Reservation),
        LeaseOp::None
    );
    let resp = respond(decide::decide(
        &input,
        &pool,
        Mode::Reservation,
        LeaseOutcome::NotApplicable,
    ));
    assert_eq!(resp.reply.msg_type, MessageType::Ack);
    assert_eq!(
        resp.destination,
        Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 150), 68))
    );
    let w = wire_reply(&resp);
    assert_eq!(w.yiaddr, Ipv4Addr::UNSPECIFIED);
    assert_eq!(w.ciaddr, Ipv4Addr::new(10, 0, 0, 150));
    assert!(w.options.get(opt::LEASE_TIME).is_none());
    assert_eq!(
        w.options.get(opt::SUBNET_MASK),
        Some(&[255, 255, 255, 0][..])
    );
    assert!(
        w.options.get(opt::BOOTFILE).is_none(),
        "plain clients get no boot file"
    );
}

#[test]
fn relayed_requests_go_back_through_the_relay() {
    let relay = Ipv4Addr::new(10, 9, 0, 1);
    for mode in [Mode::Proxy, Mode::Reservation] {
        let mut p = vector("bios-ipxe-discover");
        set_ip(&mut p, GIADDR, relay);
        let resp = respond(
            run(
                &p,
                &site(false),
                mode,
                Port::Dhcp,
                LeaseOutcome::NotApplicable,
            )
            .1,
        );
        assert_eq!(
            resp.destination,
            Destination::Unicast(SocketAddrV4::new(relay, 67)),
            "{mode:?}"
        );
        assert_eq!(wire_reply(&resp).giaddr, relay);
    }
}

#[test]
fn captured_replies_are_not_requests() {
    // A BOOTREPLY (op 2) is decoded but never decided on.
    let mut p = vector("bios-ipxe-discover");
    p[0] = 2;
    assert!(parse_request(&p).unwrap_err().contains("not a BOOTREQUEST"));
}
