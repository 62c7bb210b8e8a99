//! The lease database: uniqueness, expiry, DECLINE, RELEASE, restart.

mod common;

use std::net::Ipv4Addr;

use common::*;
use pxeforge_dhcp::leases::{
    CommitOutcome, LeaseDb, LeaseState, OfferOutcome, RequestKind, DECLINE_HOLD_SECS,
};
use pxeforge_dhcp::{DhcpSite, Mac};

/// The test pool's offers without probing, as `Option<Ipv4Addr>`.
fn offer(
    db: &mut LeaseDb,
    m: Mac,
    req: Option<Ipv4Addr>,
    site: &DhcpSite,
    now: i64,
) -> Option<Ipv4Addr> {
    match db.offer(m, req, &site.pools[0], site, now, false).unwrap() {
        OfferOutcome::Offered(ip) => Some(ip),
        OfferOutcome::Exhausted => None,
        other => panic!("{other:?}"),
    }
}

fn commit(
    db: &mut LeaseDb,
    m: Mac,
    at: Ipv4Addr,
    kind: RequestKind,
    site: &DhcpSite,
    now: i64,
) -> CommitOutcome {
    db.commit(m, at, kind, &site.pools[0], site, now).unwrap()
}

/// A SELECTING request: binds only what was offered.
fn select(db: &mut LeaseDb, m: Mac, at: Ipv4Addr, site: &DhcpSite, now: i64) -> bool {
    commit(db, m, at, RequestKind::Selecting, site, now) == CommitOutcome::Bound(at)
}

const OFFER_HOLD_SECS: i64 = pxeforge_dhcp::site::DEFAULT_OFFER_HOLD_SECS as i64;

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
    let first = offer(&mut db, a, None, &site, now).unwrap();
    assert_eq!(first, ip(100));
    // Same client again: same address.
    assert_eq!(offer(&mut db, a, None, &site, now + 1), Some(ip(100)));
    // Another client asking for the held address gets a different one.
    assert_eq!(offer(&mut db, b, Some(ip(100)), &site, now), Some(ip(101)));
    // A free requested address is honoured.
    let c = mac("02:00:00:00:00:0c");
    assert_eq!(offer(&mut db, c, Some(ip(103)), &site, now), Some(ip(103)));
    // B cannot bind A's address; A can.
    assert!(!select(&mut db, b, ip(100), &site, now));
    assert!(select(&mut db, a, ip(100), &site, now));
    // Outside the pool, or someone's static address: refused.
    assert!(!select(&mut db, b, ip(50), &site, now));
    assert!(!select(&mut db, b, ip(11), &site, now));
    let d = mac("02:00:00:00:00:0d");
    assert_eq!(offer(&mut db, d, None, &site, now), Some(ip(102)));
    // No free address: the oldest offer held for another client (B's) gives way.
    let e = mac("02:00:00:00:00:0e");
    assert_eq!(offer(&mut db, e, None, &site, now), Some(ip(101)));
    assert!(
        !select(&mut db, b, ip(101), &site, now),
        "B's offer is gone"
    );
    // Offers expire; the bound lease of A does not (yet).
    let later = now + OFFER_HOLD_SECS + 1;
    let got = offer(&mut db, e, None, &site, later).unwrap();
    assert!(got != ip(100) && site.pools[0].contains(got), "{got}");
    assert!(!select(&mut db, e, ip(100), &site, later));
    // After A's lease time it can go to someone else, through an offer.
    let much_later = now + i64::from(site.lease_time_secs) + 1;
    assert!(
        !select(&mut db, e, ip(100), &site, much_later),
        "not offered to E"
    );
    assert_eq!(
        offer(&mut db, e, Some(ip(100)), &site, much_later),
        Some(ip(100))
    );
    assert!(select(&mut db, e, ip(100), &site, much_later));
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
        offer(&mut db, mac("02:00:00:00:00:01"), Some(ip(100)), &site, 0),
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
        assert_eq!(offer(&mut db, a, None, &site, now), Some(ip(100)));
        assert!(select(&mut db, a, ip(100), &site, now));
        // A says 100 is in use by someone else.
        assert!(db.decline(a, ip(100), &site, now).unwrap());
        let l = db.all().unwrap();
        assert_eq!(l[0].state, LeaseState::Declined);
        // Nobody gets 100 while it is marked bad, not even A.
        assert_eq!(offer(&mut db, a, None, &site, now), Some(ip(101)));
        assert!(!select(&mut db, b, ip(100), &site, now + 1));
        assert!(select(&mut db, a, ip(101), &site, now));
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
    assert_eq!(offer(&mut db, a, None, &site, now + 10), Some(ip(101)));
    assert_eq!(
        offer(&mut db, b, Some(ip(101)), &site, now + 10),
        Some(ip(102))
    );
    // The bad mark expires.
    let after = now + DECLINE_HOLD_SECS + 1;
    assert_eq!(
        offer(&mut db, b, Some(ip(100)), &site, after),
        Some(ip(100))
    );
    assert!(select(&mut db, b, ip(100), &site, after));
    // RELEASE frees the address, only for its holder.
    assert!(!db.release(b, ip(101), &site, after).unwrap());
    assert!(db.release(a, ip(101), &site, after).unwrap());
    assert_eq!(
        offer(&mut db, b, Some(ip(101)), &site, after),
        Some(ip(100)),
        "B keeps its own"
    );
    // Forgetting an offer leaves bound leases alone.
    db.forget_offer(b, &site, after).unwrap();
    assert!(db
        .all()
        .unwrap()
        .iter()
        .any(|l| l.mac == b && l.ip == ip(100)));
}

#[test]
fn unsolicited_commit_binds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    let site = site(true);
    let a = mac("02:00:00:00:00:0a");
    // Nothing offered, no lease: a REQUEST for a free pool address must not bind it.
    assert!(!select(&mut db, a, ip(101), &site, 1000));
    assert!(db.all().unwrap().is_empty());
    // INIT-REBOOT and RENEWING from a client we have no record of: silence, nothing bound.
    for kind in [RequestKind::InitReboot, RequestKind::Renewing] {
        assert_eq!(
            commit(&mut db, a, ip(101), kind, &site, 1000),
            CommitOutcome::Unknown
        );
    }
    // Off the pool's subnet: NAK (the client moved).
    assert_eq!(
        commit(
            &mut db,
            a,
            Ipv4Addr::new(10, 9, 0, 5),
            RequestKind::InitReboot,
            &site,
            1000
        ),
        CommitOutcome::Refused
    );
    assert!(db.all().unwrap().is_empty());
    // A real lease: INIT-REBOOT and RENEWING extend it, for its holder only.
    assert_eq!(offer(&mut db, a, None, &site, 1000), Some(ip(100)));
    assert!(select(&mut db, a, ip(100), &site, 1000));
    let b = mac("02:00:00:00:00:0b");
    assert_eq!(
        commit(&mut db, a, ip(100), RequestKind::InitReboot, &site, 2000),
        CommitOutcome::Bound(ip(100))
    );
    assert_eq!(
        commit(&mut db, a, ip(100), RequestKind::Renewing, &site, 2500),
        CommitOutcome::Bound(ip(100))
    );
    assert_eq!(
        commit(&mut db, b, ip(100), RequestKind::InitReboot, &site, 2500),
        CommitOutcome::Refused
    );
    // A knows us, with another address: NAK.
    assert_eq!(
        commit(&mut db, a, ip(102), RequestKind::InitReboot, &site, 2500),
        CommitOutcome::Refused
    );
    let l = db.all().unwrap();
    assert_eq!(l.len(), 1);
    assert_eq!(
        (l[0].ip, l[0].expires),
        (ip(100), 2500 + i64::from(site.lease_time_secs))
    );
}

#[test]
fn probed_offers_are_not_requestable_until_probed() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    let site = site(true);
    let pool = &site.pools[0];
    let a = mac("02:00:00:00:00:0a");
    assert_eq!(
        db.offer(a, None, pool, &site, 10, true).unwrap(),
        OfferOutcome::Probe(ip(100))
    );
    // A retransmitted DISCOVER waits for the probe; a REQUEST cannot take the address yet.
    assert_eq!(
        db.offer(a, None, pool, &site, 11, true).unwrap(),
        OfferOutcome::Probing
    );
    assert!(!select(&mut db, a, ip(100), &site, 11));
    // Something answered: the next address is probed instead, and 100 stays out.
    db.conflict(a, ip(100), &site, 12).unwrap();
    assert_eq!(
        db.offer(a, None, pool, &site, 12, true).unwrap(),
        OfferOutcome::Probe(ip(101))
    );
    assert!(db.probed(a, ip(101), &site, 13).unwrap());
    assert_eq!(
        db.offer(a, None, pool, &site, 14, true).unwrap(),
        OfferOutcome::Offered(ip(101))
    );
    assert!(select(&mut db, a, ip(101), &site, 14));
    let b = mac("02:00:00:00:00:0b");
    assert_eq!(
        db.offer(b, None, pool, &site, 15, true).unwrap(),
        OfferOutcome::Probe(ip(102))
    );
}

#[test]
fn lease_store_settings() {
    let dir = tempfile::tempdir().unwrap();
    let db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    assert_eq!(db.synchronous().unwrap(), 2, "synchronous=FULL");
}

/// While the store cannot be written, nothing is bound or extended: the persisted expiry
/// stays, and the commit reports the error (the server then stays silent).
#[test]
fn unwritable_store_extends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.db");
    let site = site(true);
    let a = mac("02:00:00:00:00:0a");
    let mut db = LeaseDb::open(&path).unwrap();
    assert_eq!(offer(&mut db, a, None, &site, 1000), Some(ip(100)));
    assert!(select(&mut db, a, ip(100), &site, 1000));
    let persisted = db.bound_expiry(a, ip(100)).unwrap();
    // Another writer holds the lock.
    let other = rusqlite::Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    db.set_busy_timeout(std::time::Duration::from_millis(50))
        .unwrap();
    assert!(db
        .commit(
            a,
            ip(100),
            RequestKind::Renewing,
            &site.pools[0],
            &site,
            2000
        )
        .is_err());
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(db.bound_expiry(a, ip(100)).unwrap(), persisted);
    // And the index is rebuilt from disk: nothing promised in memory was lost.
    assert_eq!(
        commit(&mut db, a, ip(100), RequestKind::Renewing, &site, 2000),
        CommitOutcome::Bound(ip(100))
    );
}

/// Commits one lease in a child process traced by strace: the commit must be followed by an
/// fsync or fdatasync before it returns (synchronous=FULL), and the pragma must be FULL.
#[test]
fn committed_lease_is_fsynced() {
    if let Some(path) = std::env::var_os("PXF_LEASE_FSYNC_CHILD") {
        let path = std::path::PathBuf::from(path);
        let mut db = LeaseDb::open(&path).unwrap();
        let site = site(true);
        let a = mac("02:00:00:00:00:0a");
        let offered = offer(&mut db, a, None, &site, 1000).unwrap();
        // Markers in the trace around the commit.
        let marker = |m: &str| {
            let _ = nix::unistd::write(std::io::stderr(), m.as_bytes());
        };
        marker("PXF-BEFORE-COMMIT\n");
        assert!(select(&mut db, a, offered, &site, 1000));
        marker("PXF-AFTER-COMMIT\n");
        return;
    }
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        pxeforge_tests::skip(format_args!("strace not installed: fsync not asserted"));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=fsync,fdatasync,write", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "committed_lease_is_fsynced",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PXF_LEASE_FSYNC_CHILD", dir.path().join("leases.db"))
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("ptrace") {
            pxeforge_tests::skip(format_args!("strace cannot trace here: {err}"));
            return;
        }
        panic!("child failed: {err}");
    }
    let trace = std::fs::read_to_string(&trace).unwrap();
    let start = trace.find("PXF-BEFORE-COMMIT").expect("no marker");
    let end = trace.find("PXF-AFTER-COMMIT").expect("no marker");
    let between = &trace[start..end];
    assert!(
        between.contains("fsync(") || between.contains("fdatasync("),
        "no fsync between the commit's start and its return:\n{between}"
    );
}

/// Runs test `name` of this binary again under `strace -f -e fsync,fdatasync,write`, with
/// `PXF_LEASE_FSYNC_CHILD` set to a fresh store's path; returns the trace, or None (skipped)
/// when strace is missing or cannot trace here.
fn traced_child(name: &str) -> Option<String> {
    if std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_err()
    {
        pxeforge_tests::skip(format_args!("strace not installed: fsync not asserted"));
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let out = std::process::Command::new("strace")
        .args(["-f", "-e", "trace=fsync,fdatasync,write", "-o"])
        .arg(&trace)
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env("PXF_LEASE_FSYNC_CHILD", dir.path().join("leases.db"))
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("ptrace") {
            pxeforge_tests::skip(format_args!("strace cannot trace here: {err}"));
            return None;
        }
        panic!("child failed: {err}");
    }
    Some(std::fs::read_to_string(&trace).unwrap())
}

/// The part of `trace` between two markers written by the child.
fn between<'a>(trace: &'a str, from: &str, to: &str) -> &'a str {
    let start = trace.find(from).expect("no marker");
    let end = trace.find(to).expect("no marker");
    &trace[start..end]
}

fn has_fsync(trace: &str) -> bool {
    trace.contains("fsync(") || trace.contains("fdatasync(")
}

/// Group commit: bindings are committed without an fsync, and `sync` fsyncs them all at once
/// (the server sends their ACKs only after it returns).
#[test]
fn group_commit_fsyncs_once_at_sync() {
    if let Some(path) = std::env::var_os("PXF_LEASE_FSYNC_CHILD") {
        let mut db = LeaseDb::open(std::path::Path::new(&path)).unwrap();
        db.set_group_commit(true).unwrap();
        let site = site(true);
        let clients = [
            mac("02:00:00:00:00:0a"),
            mac("02:00:00:00:00:0b"),
            mac("02:00:00:00:00:0c"),
        ];
        let offered: Vec<_> = clients
            .iter()
            .map(|&m| offer(&mut db, m, None, &site, 1000).unwrap())
            .collect();
        let marker = |m: &str| {
            let _ = nix::unistd::write(std::io::stderr(), m.as_bytes());
        };
        marker("PXF-BEFORE-COMMITS\n");
        for (&m, &at) in clients.iter().zip(&offered) {
            assert!(select(&mut db, m, at, &site, 1000));
        }
        assert!(db.needs_sync());
        marker("PXF-BEFORE-SYNC\n");
        db.sync().unwrap();
        marker("PXF-AFTER-SYNC\n");
        assert!(!db.needs_sync());
        // Nothing waiting: no fsync.
        db.sync().unwrap();
        marker("PXF-AFTER-SECOND-SYNC\n");
        // Back to one fsync per binding.
        db.set_group_commit(false).unwrap();
        db.release(clients[0], offered[0], &site, 1001).unwrap();
        assert!(!db.needs_sync());
        marker("PXF-AFTER-RELEASE\n");
        drop(db);
        // All three are bound, read by a fresh connection.
        let all = LeaseDb::open(std::path::Path::new(&path))
            .unwrap()
            .all()
            .unwrap();
        let bound = all.iter().filter(|l| l.state == LeaseState::Bound).count();
        assert_eq!(bound, 2, "{all:?}");
        return;
    }
    let Some(trace) = traced_child("group_commit_fsyncs_once_at_sync") else {
        return;
    };
    let commits = between(&trace, "PXF-BEFORE-COMMITS", "PXF-BEFORE-SYNC");
    assert!(
        !has_fsync(commits),
        "group commit fsynced a binding before sync:\n{commits}"
    );
    let sync = between(&trace, "PXF-BEFORE-SYNC", "PXF-AFTER-SYNC");
    assert!(has_fsync(sync), "sync did not fsync:\n{sync}");
    let idle = between(&trace, "PXF-AFTER-SYNC", "PXF-AFTER-SECOND-SYNC");
    assert!(
        !has_fsync(idle),
        "sync with nothing waiting fsynced:\n{idle}"
    );
    let release = between(&trace, "PXF-AFTER-SECOND-SYNC", "PXF-AFTER-RELEASE");
    assert!(
        has_fsync(release),
        "without group commit a release is not fsynced:\n{release}"
    );
}

#[test]
fn a_corrupt_lease_store_is_moved_aside_and_a_fresh_one_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("leases.db");
    std::fs::write(&path, vec![0x5au8; 8192]).expect("garbage");
    let db = LeaseDb::open(&path).expect("a corrupt store must not stop DHCP");
    let aside = db.moved_aside().expect("moved aside").to_path_buf();
    assert!(aside.to_string_lossy().contains("leases.db.corrupt-"));
    assert_eq!(std::fs::read(&aside).expect("kept"), vec![0x5au8; 8192]);
    // A reopened healthy store moves nothing.
    drop(db);
    assert!(LeaseDb::open(&path)
        .expect("reopen")
        .moved_aside()
        .is_none());
}

/// A spoofer sending DISCOVERs from random MACs holds an offer each: it must not starve the
/// pool. Each new DISCOVER takes the place of the oldest held offer, so a real client that
/// REQUESTs right after its OFFER still binds; bound leases are never taken.
#[test]
fn a_discover_flood_from_random_macs_cannot_hold_the_pool() {
    let dir = tempfile::tempdir().unwrap();
    let mut db = LeaseDb::open(&dir.path().join("leases.db")).unwrap();
    let site = site(true); // pool 10.0.0.100-103
    let now = 2_000_000;
    let bound = mac("02:00:00:00:01:00");
    let got = offer(&mut db, bound, None, &site, now).unwrap();
    assert!(select(&mut db, bound, got, &site, now));
    for i in 0..500u32 {
        let forged = Mac([0x02, 0xee, (i >> 16) as u8, (i >> 8) as u8, i as u8, 1]);
        let _ = offer(&mut db, forged, None, &site, now);
    }
    let real = mac("02:00:00:00:02:00");
    let ip_real = offer(&mut db, real, None, &site, now).expect("an offer despite the flood");
    assert_ne!(ip_real, got, "a bound lease is never taken");
    assert!(select(&mut db, real, ip_real, &site, now), "and it binds");
    // Once every address is bound, there is nothing to give.
    for i in 0..2u8 {
        let m = Mac([0x02, 0, 0, 0, 3, i]);
        let a = offer(&mut db, m, None, &site, now).expect("a free or offered address");
        assert!(select(&mut db, m, a, &site, now));
    }
    assert_eq!(
        offer(&mut db, mac("02:00:00:00:04:00"), None, &site, now),
        None
    );
}
