//! The lease database: uniqueness, expiry, DECLINE, RELEASE, restart.

mod common;

use std::net::Ipv4Addr;

use common::*;
use pxeforge_dhcp::leases::{LeaseDb, LeaseState, DECLINE_HOLD_SECS, OFFER_HOLD_SECS};

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 0, last)
}

#[test]
fn offers_are_unique_and_stable() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    let site = site(true); // pool 10.0.0.100-103
    let now = 1_000_000;
    let a = mac("02:00:00:00:00:0a");
    let b = mac("02:00:00:00:00:0b");
    let first = db.offer(a, None, &site, now).unwrap().unwrap();
    assert_eq!(first, ip(100));
    // Same client again: same address.
    assert_eq!(db.offer(a, None, &site, now + 1).unwrap(), Some(ip(100)));
    // Another client asking for the held address gets a different one.
    assert_eq!(
        db.offer(b, Some(ip(100)), &site, now).unwrap(),
        Some(ip(101))
    );
    // A free requested address is honoured.
    let c = mac("02:00:00:00:00:0c");
    assert_eq!(
        db.offer(c, Some(ip(103)), &site, now).unwrap(),
        Some(ip(103))
    );
    // B cannot bind A's address; A can.
    assert!(!db.commit(b, ip(100), &site, now).unwrap());
    assert!(db.commit(a, ip(100), &site, now).unwrap());
    // Outside the pool, or someone's static address: refused.
    assert!(!db.commit(b, ip(50), &site, now).unwrap());
    assert!(!db.commit(b, ip(11), &site, now).unwrap());
    let d = mac("02:00:00:00:00:0d");
    assert_eq!(db.offer(d, None, &site, now).unwrap(), Some(ip(102)));
    // Pool full.
    let e = mac("02:00:00:00:00:0e");
    assert_eq!(db.offer(e, None, &site, now).unwrap(), None);
    // Offers expire; the bound lease of A does not (yet).
    let later = now + OFFER_HOLD_SECS + 1;
    let got = db.offer(e, None, &site, later).unwrap().unwrap();
    assert!(
        got != ip(100) && site.pool.as_ref().unwrap().contains(got),
        "{got}"
    );
    assert!(!db.commit(e, ip(100), &site, later).unwrap());
    // After A's lease time it can go to someone else.
    let much_later = now + i64::from(site.lease_time_secs) + 1;
    assert!(db.commit(e, ip(100), &site, much_later).unwrap());
    // E now holds only 100: one address per client.
    let held: Vec<_> = db
        .all()
        .unwrap()
        .into_iter()
        .filter(|l| l.mac == e)
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].ip, ip(100));

    let ips: Vec<_> = db.all().unwrap().into_iter().map(|l| l.ip).collect();
    let mut dedup = ips.clone();
    dedup.dedup();
    assert_eq!(ips, dedup);
}

#[test]
fn static_addresses_never_leased() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    let mut site = site(true);
    site.hosts
        .get_mut(&mac("52:54:00:aa:00:01"))
        .unwrap()
        .address = Some(ip(100));
    assert_eq!(
        db.offer(mac("02:00:00:00:00:01"), Some(ip(100)), &site, 0)
            .unwrap(),
        Some(ip(101))
    );
}

#[test]
fn decline_release_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let site = site(true);
    let a = mac("02:00:00:00:00:0a");
    let b = mac("02:00:00:00:00:0b");
    let now = 5_000;
    {
        let mut db = LeaseDb::open(&path).unwrap();
        assert_eq!(db.offer(a, None, &site, now).unwrap(), Some(ip(100)));
        assert!(db.commit(a, ip(100), &site, now).unwrap());
        // A says 100 is in use by someone else.
        assert!(db.decline(a, ip(100), now).unwrap());
        let l = db.all().unwrap();
        assert_eq!(l[0].state, LeaseState::Declined);
        // Nobody gets 100 while it is marked bad, not even A.
        assert_eq!(db.offer(a, None, &site, now).unwrap(), Some(ip(101)));
        assert!(!db.commit(b, ip(100), &site, now + 1).unwrap());
        assert!(db.commit(a, ip(101), &site, now).unwrap());
    }
    // Restart: the bound lease is still there.
    let mut db = LeaseDb::open(&path).unwrap();
    let bound: Vec<_> = db
        .all()
        .unwrap()
        .into_iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    assert_eq!(bound.len(), 1);
    assert_eq!((bound[0].ip, bound[0].mac), (ip(101), a));
    assert_eq!(db.offer(a, None, &site, now + 10).unwrap(), Some(ip(101)));
    assert_eq!(
        db.offer(b, Some(ip(101)), &site, now + 10).unwrap(),
        Some(ip(102))
    );
    // The bad mark expires.
    assert!(db
        .commit(b, ip(100), &site, now + DECLINE_HOLD_SECS + 1)
        .unwrap());
    // RELEASE frees the address, only for its holder.
    assert!(!db.release(b, ip(101)).unwrap());
    assert!(db.release(a, ip(101)).unwrap());
    assert!(db.commit(b, ip(101), &site, now + 20).unwrap());
    // Forgetting an offer leaves bound leases alone.
    db.forget_offer(b).unwrap();
    assert!(db
        .all()
        .unwrap()
        .iter()
        .any(|l| l.mac == b && l.ip == ip(101)));
}
