//! Malformed and hostile packets are rejected with an error, never a panic; and the property test
//! runs the server's exact path (decode → facts → lease op → decide → encode) on arbitrary input.

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::*;
use proptest::prelude::*;
use pxeforge_dhcp::encode::encode;
use pxeforge_dhcp::wire::{self, DecodeError};
use pxeforge_dhcp::{parse_request, process, Action, LeaseOutcome, Mode, Port};

#[test]
fn rejects_malformed() {
    let good = vector("bios-ipxe-discover");
    assert!(wire::decode(&good).is_ok());

    assert_eq!(wire::decode(&good[..239]), Err(DecodeError::TooShort(239)));
    assert_eq!(
        wire::decode(&vec![0u8; 1501]),
        Err(DecodeError::TooLong(1501))
    );

    let mut p = good.clone();
    p[0] = 3;
    assert_eq!(wire::decode(&p), Err(DecodeError::BadOp(3)));
    let mut p = good.clone();
    p[2] = 16;
    assert_eq!(
        wire::decode(&p),
        Err(DecodeError::BadHardware { htype: 1, hlen: 16 })
    );
    let mut p = good.clone();
    p[1] = 6;
    assert!(matches!(
        wire::decode(&p),
        Err(DecodeError::BadHardware { .. })
    ));
    let mut p = good.clone();
    p[236] = 0;
    assert_eq!(wire::decode(&p), Err(DecodeError::BadCookie));

    // Missing end option: cut the packet right before it.
    let end = good.iter().rposition(|&b| b == 255).unwrap();
    assert_eq!(wire::decode(&good[..end]), Err(DecodeError::MissingEnd));
    // An option whose length runs past the packet.
    let mut p = good[..240].to_vec();
    p.extend_from_slice(&[53, 1, 1, 60, 200, b'P']);
    assert!(matches!(
        wire::decode(&p),
        Err(DecodeError::OptionOverrun { code: 60, .. })
    ));
    // A code byte with no length byte.
    let mut p = good[..240].to_vec();
    p.extend_from_slice(&[53, 1, 1, 60]);
    assert!(matches!(
        wire::decode(&p),
        Err(DecodeError::OptionOverrun { code: 60, .. })
    ));
    // Only padding.
    let mut p = good[..240].to_vec();
    p.extend_from_slice(&[0; 60]);
    assert_eq!(wire::decode(&p), Err(DecodeError::MissingEnd));
}

fn base_with(options: &[u8]) -> Vec<u8> {
    let mut p = vector("bios-ipxe-discover")[..240].to_vec();
    p.extend_from_slice(options);
    p
}

#[test]
fn option_overload() {
    // Option 52 = 1: more options in the file field, which must be read.
    let mut p = base_with(&[53, 1, 1, 52, 1, 1, 255]);
    p[108..113].copy_from_slice(&[60, 9, b'P', b'X', b'E']);
    // length 9 but only 3 bytes written: the rest are zeros, still within the field.
    let pk = wire::decode(&p).unwrap();
    assert_eq!(pk.options.get(60).unwrap(), b"PXE\0\0\0\0\0\0");

    // Overload in the overloaded field: a loop.
    let mut p = base_with(&[53, 1, 1, 52, 1, 1, 255]);
    p[108..111].copy_from_slice(&[52, 1, 1]);
    assert_eq!(wire::decode(&p), Err(DecodeError::OverloadLoop));
    // Bad overload value.
    let p = base_with(&[53, 1, 1, 52, 1, 7, 255]);
    assert_eq!(wire::decode(&p), Err(DecodeError::BadOverload(7)));
    let p = base_with(&[53, 1, 1, 52, 2, 1, 1, 255]);
    assert!(matches!(wire::decode(&p), Err(DecodeError::BadOverload(_))));
    // An option overrunning the sname field.
    let mut p = base_with(&[53, 1, 1, 52, 1, 2, 255]);
    p[44 + 60..44 + 64].copy_from_slice(&[12, 10, b'a', b'b']);
    assert!(matches!(
        wire::decode(&p),
        Err(DecodeError::OptionOverrun { code: 12, .. })
    ));
}

#[test]
fn split_options_are_concatenated() {
    // RFC 3396: two instances of option 60 form one value.
    let p = base_with(&[
        53, 1, 1, 60, 3, b'P', b'X', b'E', 60, 6, b'C', b'l', b'i', b'e', b'n', b't', 255,
    ]);
    let f = parse_request(&p).unwrap();
    assert_eq!(f.vendor_class_raw.as_deref(), Some(&b"PXEClient"[..]));
    // Wrong-length fixed options are ignored, not trusted.
    let p = base_with(&[53, 2, 1, 1, 255]);
    assert!(
        parse_request(&p).is_err(),
        "a two-byte message type is not a message type"
    );
    let p = base_with(&[53, 1, 1, 93, 1, 7, 50, 3, 10, 0, 0, 255]);
    let f = parse_request(&p).unwrap();
    assert_eq!(f.arch, None);
    assert_eq!(f.requested_ip, None);
}

/// Everything the server does with a datagram, minus the sockets and the database: the same
/// `pxeforge_dhcp::process` the server calls, with every lease answer the database can give.
fn server_path(data: &[u8]) {
    let source = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 68);
    for mode in [Mode::Off, Mode::Proxy, Mode::Reservation] {
        for site in [site(false), site(true)] {
            for port in [Port::Dhcp, Port::Pxe] {
                for lease in [
                    LeaseOutcome::NotApplicable,
                    LeaseOutcome::Offered(Ipv4Addr::new(10, 0, 0, 100)),
                    LeaseOutcome::Bound(Ipv4Addr::new(10, 0, 0, 100)),
                    LeaseOutcome::Refused,
                    LeaseOutcome::Exhausted,
                ] {
                    let Ok((facts, action)) =
                        process(data, port, source, SERVER, &site, mode, |_, _| lease)
                    else {
                        return;
                    };
                    if let Action::Respond(r) = action {
                        let bytes = encode(&r.reply);
                        let back = wire::decode(&bytes).expect("our own reply must decode");
                        assert_eq!(back.xid, facts.xid);
                    }
                }
            }
        }
    }
}

/// Mutations of a real packet: overwrite bytes, truncate, or extend.
fn mutated() -> impl Strategy<Value = Vec<u8>> {
    let names = prop::sample::select(ALL_VECTORS.to_vec());
    (
        names,
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        prop::option::of(any::<prop::sample::Index>()),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(name, writes, cut, tail)| {
            let mut p = vector(name);
            for (at, b) in writes {
                let i = at.index(p.len());
                p[i] = b;
            }
            if let Some(c) = cut {
                p.truncate(c.index(p.len() + 1));
            }
            p.extend_from_slice(&tail);
            p
        })
}

/// Valid header, arbitrary options area: reaches the option parser and the decision.
fn hostile_options() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::collection::vec(any::<u8>(), 0..400),
        any::<u8>(),
        any::<bool>(),
    )
        .prop_map(|(opts, msg, with_type)| {
            let mut p = vector("ovmf-pxe-discover")[..240].to_vec();
            if with_type {
                p.extend_from_slice(&[53, 1, msg % 10]);
            }
            p.extend_from_slice(&opts);
            p
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..1600)) {
        server_path(&data);
    }

    #[test]
    fn mutated_real_packets_never_panic(data in mutated()) {
        server_path(&data);
    }

    #[test]
    fn hostile_options_never_panic(data in hostile_options()) {
        server_path(&data);
    }
}

#[test]
fn all_vectors_through_server_path() {
    for name in ALL_VECTORS {
        assert!(parse_request(&vector(name)).is_ok(), "{name}");
        server_path(&vector(name));
    }
}
