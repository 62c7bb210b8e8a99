//! The store through its public API: publish, current, gc, verify, stale temporaries, the lock
//! and the sums cache.

use pxeforge_store::{
    current, resolve, verify, write_sums, PublishOptions, PublishOutcome, Staging, Store,
    StoreError, Sums, SumsCache, CURRENT, SUMS,
};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

fn sha(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// Writes `files` (subpaths allowed) and their SHA256SUMS into the staging's out directory.
fn fill(s: &Staging, files: &[(&str, &[u8])]) {
    let mut sums = Sums::new();
    for (name, data) in files {
        let p = s.out().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        sums.insert(name, &sha(data)).unwrap();
    }
    write_sums(&s.out().join(SUMS), &sums).unwrap();
}

fn publish(store: &Store, dir: &Path, id: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let s = store.staging("test-").unwrap();
    fill(&s, files);
    let p = s.publish(dir, id, PublishOptions::default()).unwrap();
    p.dir
}

fn tmp_entries(store: &Store) -> usize {
    std::fs::read_dir(store.tmp_dir())
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A two-level store like the image store (`<recipe>/<profile>/<id>`).
fn store() -> (tempfile::TempDir, Store, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let store = Store::new(t.path().join("images"), 2);
    let dir = store.key_dir(&["base", "vm"]).unwrap();
    (t, store, dir)
}

fn set_mtime(p: &Path, secs: u64) {
    std::fs::File::open(p)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn publish_moves_the_item_into_place_and_sets_current() {
    let (_t, store, dir) = store();
    let s = store.staging("build-").unwrap();
    let tmp_path = s.path().to_path_buf();
    assert!(tmp_path.starts_with(store.tmp_dir()));
    std::fs::write(s.path().join("scratch"), b"not published").unwrap();
    fill(
        &s,
        &[
            (".treeinfo", b"[general]\n"),
            ("images/pxeboot/vmlinuz", b"kernel"),
        ],
    );
    let p = s
        .publish(&dir, "abc123", PublishOptions::default())
        .unwrap();
    assert_eq!(p.outcome, PublishOutcome::New);
    assert_eq!(p.dir, dir.join("abc123"));
    assert_eq!(
        std::fs::read(p.dir.join("images/pxeboot/vmlinuz")).unwrap(),
        b"kernel"
    );
    assert!(!tmp_path.exists(), "the temporary is gone");
    assert_eq!(current(&dir).as_deref(), Some("abc123"));
    assert_eq!(
        std::fs::read_link(dir.join(CURRENT)).unwrap(),
        Path::new("abc123"),
        "relative"
    );
    assert_eq!(resolve(&dir, "current"), Some(p.dir.clone()));
    assert_eq!(resolve(&dir, "abc123"), Some(p.dir.clone()));
    assert_eq!(resolve(&dir, "nope"), None);
    assert_eq!(resolve(&dir, ".."), None);
    assert!(verify(&p.dir).unwrap().is_empty());

    let items = store.list();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, ["base", "vm"]);
    assert_eq!(items[0].id, "abc123");
    assert!(items[0].is_current);
}

#[test]
fn publishing_the_same_id_twice_keeps_the_first() {
    let (_t, store, dir) = store();
    let first = publish(&store, &dir, "id1", &[("a", b"one")]);
    let before = std::fs::metadata(first.join("a")).unwrap().ino_and_mtime();

    let s = store.staging("build-").unwrap();
    fill(&s, &[("a", b"one")]);
    let p = s.publish(&dir, "id1", PublishOptions::default()).unwrap();
    assert_eq!(p.outcome, PublishOutcome::AlreadyPresent);
    assert_eq!(p.dir, first);
    assert_eq!(
        std::fs::metadata(first.join("a")).unwrap().ino_and_mtime(),
        before,
        "the published file is untouched"
    );
    assert_eq!(tmp_entries(&store), 0, "the second copy is discarded");
    assert_eq!(store.list().len(), 1);

    // Asked to, the new copy replaces the published one in one step (repairing damage).
    std::fs::write(first.join("a"), b"dmg").unwrap();
    let s = store.staging("build-").unwrap();
    fill(&s, &[("a", b"one")]);
    let opts = PublishOptions {
        replace: true,
        ..PublishOptions::default()
    };
    let p = s.publish(&dir, "id1", opts).unwrap();
    assert_eq!(p.outcome, PublishOutcome::Replaced);
    assert_eq!(std::fs::read(first.join("a")).unwrap(), b"one");
    assert_eq!(tmp_entries(&store), 0, "the replaced copy is removed");
    assert_eq!(current(&dir).as_deref(), Some("id1"));
}

trait InoMtime {
    fn ino_and_mtime(&self) -> (u64, SystemTime);
}
impl InoMtime for std::fs::Metadata {
    fn ino_and_mtime(&self) -> (u64, SystemTime) {
        use std::os::unix::fs::MetadataExt;
        (self.ino(), self.modified().unwrap())
    }
}

#[test]
fn publish_refuses_what_verify_would_report() {
    let (_t, store, dir) = store();
    // No SHA256SUMS.
    let s = store.staging("build-").unwrap();
    std::fs::write(s.out().join("a"), b"x").unwrap();
    let e = s
        .publish(&dir, "id1", PublishOptions::default())
        .unwrap_err();
    assert!(e.path().ends_with(SUMS), "{e}");
    // An unlisted file and a listed one missing.
    let s = store.staging("build-").unwrap();
    fill(&s, &[("a", b"x"), ("b", b"y")]);
    std::fs::remove_file(s.out().join("b")).unwrap();
    std::fs::write(s.out().join("extra"), b"z").unwrap();
    let e = s
        .publish(&dir, "id1", PublishOptions::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not listed: extra") && e.contains(": b"), "{e}");
    // A symlink.
    let s = store.staging("build-").unwrap();
    fill(&s, &[("a", b"x")]);
    std::os::unix::fs::symlink("/etc/passwd", s.out().join("l")).unwrap();
    assert!(s.publish(&dir, "id1", PublishOptions::default()).is_err());
    // Bad ids and directories outside the store.
    for (d, id) in [
        (dir.clone(), "current"),
        (dir.clone(), "../x"),
        (dir.clone(), ".hidden"),
        (store.root().join("base"), "id1"),
        (PathBuf::from("/tmp/elsewhere/a/b"), "id1"),
        (store.root().join("base/../x"), "id1"),
    ] {
        let s = store.staging("build-").unwrap();
        fill(&s, &[("a", b"x")]);
        let e = s.publish(&d, id, PublishOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::Invalid { .. }), "{d:?} {id}: {e}");
    }
    assert!(store.list().is_empty());
    assert_eq!(tmp_entries(&store), 0);
}

#[test]
fn set_current_replaces_atomically() {
    let (_t, store, dir) = store();
    publish(&store, &dir, "a", &[("f", b"a")]);
    publish(&store, &dir, "b", &[("f", b"b")]);
    assert_eq!(current(&dir).as_deref(), Some("b"));

    // A reader never finds `current` missing or naming anything else while it flips.
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let reader_dir = dir.clone();
    let reader = std::thread::spawn(move || {
        let mut reads = 0u64;
        while stop_rx.try_recv().is_err() {
            let c = current(&reader_dir);
            assert!(matches!(c.as_deref(), Some("a" | "b")), "{c:?}");
            reads += 1;
        }
        reads
    });
    for i in 0..200 {
        store
            .set_current(&dir, if i % 2 == 0 { "a" } else { "b" })
            .unwrap();
    }
    stop_tx.send(()).unwrap();
    assert!(reader.join().unwrap() > 0);
    assert_eq!(current(&dir).as_deref(), Some("b"));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("current.tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Only published items can be made current.
    assert!(store.set_current(&dir, "nope").is_err());
    assert!(store.set_current(&dir, "..").is_err());
    assert_eq!(current(&dir).as_deref(), Some("b"));
}

#[test]
fn gc_keeps_current_and_the_newest() {
    let (_t, store, dir) = store();
    let other = store.key_dir(&["base", "metal"]).unwrap();
    for (n, id) in ["i0", "i1", "i2", "i3", "i4"].iter().enumerate() {
        let d = publish(&store, &dir, id, &[("f", id.as_bytes())]);
        // Publish times one second apart, so the order does not hang on timestamp resolution.
        set_mtime(&d, 1_000_000 + n as u64);
    }
    publish(&store, &other, "m0", &[("f", b"m")]);
    store.set_current(&dir, "i1").unwrap();
    // A leftover of a set_current that died between symlink and rename.
    std::os::unix::fs::symlink("i0", dir.join("current.tmp-dead")).unwrap();

    let ids = |d: &Path| -> Vec<String> { store.items(d).into_iter().map(|i| i.id).collect() };
    assert_eq!(ids(&dir), ["i4", "i3", "i2", "i1", "i0"], "newest first");

    let removed = store.gc(&dir, 2).unwrap();
    let mut removed: Vec<_> = removed
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    removed.sort();
    assert_eq!(removed, ["i0", "i2"]);
    assert_eq!(ids(&dir), ["i4", "i3", "i1"]);
    assert!(!dir.join("current.tmp-dead").exists());
    assert_eq!(ids(&other), ["m0"], "other key directories untouched");

    // keep 0 still keeps current.
    assert_eq!(store.gc(&dir, 0).unwrap().len(), 2);
    assert_eq!(ids(&dir), ["i1"]);
    assert_eq!(current(&dir).as_deref(), Some("i1"));
    assert_eq!(tmp_entries(&store), 0, "removed items do not linger");

    // gc_all walks every key directory.
    publish(&store, &other, "m1", &[("f", b"m1")]);
    assert_eq!(store.gc_all(0).unwrap().len(), 1);
    assert_eq!(ids(&other), ["m1"]);

    assert!(
        store.gc(&store.root().join("base"), 0).is_err(),
        "not a key dir"
    );
}

#[test]
fn verify_names_the_flipped_byte_the_missing_and_the_unlisted() {
    let (_t, store, dir) = store();
    let d = publish(
        &store,
        &dir,
        "id1",
        &[
            ("images/pxeboot/vmlinuz", b"kernel bytes"),
            ("images/pxeboot/initrd.img", b"initrd"),
            (".treeinfo", b"t"),
        ],
    );
    assert!(verify(&d).unwrap().is_empty());

    let victim = d.join("images/pxeboot/vmlinuz");
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[3] ^= 0x01;
    std::fs::write(&victim, &bytes).unwrap();
    let bad = verify(&d).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].path, victim);
    assert_eq!(
        bad[0].expected.as_deref(),
        Some(sha(b"kernel bytes").as_str())
    );
    assert_eq!(bad[0].actual.as_deref(), Some(sha(&bytes).as_str()));
    let msg = bad[0].to_string();
    assert!(msg.contains("images/pxeboot/vmlinuz"), "{msg}");

    std::fs::remove_file(d.join("images/pxeboot/initrd.img")).unwrap();
    std::fs::write(d.join("images/extra"), b"x").unwrap();
    let bad = verify(&d).unwrap();
    let msgs: Vec<String> = bad.iter().map(|m| m.to_string()).collect();
    assert_eq!(bad.len(), 3, "{msgs:?}");
    assert!(
        msgs.iter().any(|m| m.ends_with("initrd.img: missing")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m.ends_with("images/extra: not listed in SHA256SUMS")),
        "{msgs:?}"
    );

    // A damaged SHA256SUMS is an error naming it and its line.
    std::fs::write(d.join(SUMS), "garbage\n").unwrap();
    let e = verify(&d).unwrap_err();
    assert!(matches!(e, StoreError::Sums { line: 1, .. }), "{e}");
    assert_eq!(e.path(), d.join(SUMS));
}

#[test]
fn stale_temporaries_are_found_through_their_lock() {
    let (_t, store, dir) = store();
    let live = store.staging("build-").unwrap();
    std::fs::write(live.out().join("partial"), b"x").unwrap();
    // What a killed build leaves: a directory nobody holds locked.
    let dead = store.tmp_dir().join("build-dead");
    std::fs::create_dir_all(dead.join("out")).unwrap();
    std::fs::write(dead.join("out/partial"), b"x").unwrap();
    std::fs::write(store.tmp_dir().join("stray-file"), b"x").unwrap();

    let mut removed = store.clean_stale_tmp().unwrap();
    removed.sort();
    assert_eq!(removed, [dead, store.tmp_dir().join("stray-file")]);
    assert!(
        live.out().join("partial").exists(),
        "a live temporary is kept"
    );

    // Another process's temporary is kept while it holds the lock (the lock is per open file,
    // never per pid), and found stale once that process is gone. flock(1) -o keeps the lock in
    // flock itself; cat exits when its stdin closes, so nothing outlives the test.
    let other = store.tmp_dir().join("build-other");
    std::fs::create_dir_all(&other).unwrap();
    let child = std::process::Command::new("flock")
        .arg("-o")
        .arg(&other)
        .arg("cat")
        .stdin(std::process::Stdio::piped())
        .spawn();
    match child {
        Ok(mut c) => {
            // Wait until flock holds it: a non-blocking attempt of ours then fails.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !held_elsewhere(&other) {
                assert!(std::time::Instant::now() < deadline, "flock never locked");
                std::thread::sleep(Duration::from_millis(10));
            }
            let r = store.clean_stale_tmp().unwrap();
            assert!(!r.contains(&other), "held by another process: {r:?}");
            assert!(other.is_dir());
            c.kill().unwrap();
            drop(c.stdin.take());
            c.wait().unwrap();
            // flock(1) forks before it closes its copy of the descriptor for `cat`: on a loaded
            // machine that child can still hold the lock for a moment after flock itself died
            // (a CI run failed here). Stale means nobody holds it, so wait for that.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while held_elsewhere(&other) {
                assert!(std::time::Instant::now() < deadline, "lock outlived flock");
                std::thread::sleep(Duration::from_millis(10));
            }
            let r = store.clean_stale_tmp().unwrap();
            assert_eq!(r, std::slice::from_ref(&other));
        }
        Err(e) => eprintln!("SKIP the cross-process part: no flock(1): {e}"),
    }

    fill(&live, &[("a", b"a")]);
    std::fs::remove_file(live.out().join("partial")).unwrap();
    live.publish(&dir, "id1", PublishOptions::default())
        .unwrap();
    assert_eq!(tmp_entries(&store), 0);
}

/// Whether someone else holds the flock of `dir` (probing takes it briefly when free).
fn held_elsewhere(dir: &Path) -> bool {
    let f = std::fs::File::open(dir).unwrap();
    match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(_) => false,
        Err((_, e)) => {
            assert_eq!(e, nix::errno::Errno::EWOULDBLOCK);
            true
        }
    }
}

#[test]
fn gc_waits_for_the_store_lock() {
    let (_t, store, dir) = store();
    publish(&store, &dir, "old", &[("f", b"old")]);
    publish(&store, &dir, "new", &[("f", b"new")]);
    set_mtime(&dir.join("old"), 1_000_000);
    let held = store.lock().unwrap();
    let (tx, rx) = mpsc::channel();
    let s2 = store.clone();
    let d2 = dir.clone();
    let t = std::thread::spawn(move || tx.send(s2.gc(&d2, 0).map(|v| v.len())).unwrap());
    assert!(
        rx.recv_timeout(Duration::from_millis(300)).is_err(),
        "gc ran while the lock was held"
    );
    // While holding the lock, a publisher may still move current.
    held.set_current(&dir, "old").unwrap();
    drop(held);
    let removed = rx.recv_timeout(Duration::from_secs(10)).unwrap().unwrap();
    t.join().unwrap();
    assert_eq!(removed, 1);
    assert_eq!(
        store
            .items(&dir)
            .into_iter()
            .map(|i| i.id)
            .collect::<Vec<_>>(),
        ["old"],
        "gc saw the current set under the lock"
    );
}

#[test]
fn sums_cache_is_keyed_by_the_full_path() {
    let t = tempfile::tempdir().unwrap();
    let cache = SumsCache::new(16);
    let mut dirs = Vec::new();
    for (state, data) in [("state-a", &b"AAA"[..]), ("state-b", &b"BBBBB"[..])] {
        let store = Store::new(t.path().join(state).join("images"), 2);
        let dir = store.key_dir(&["base", "vm"]).unwrap();
        publish(&store, &dir, "same-id", &[("vmlinuz", data)]);
        dirs.push((dir, data));
    }
    for _ in 0..2 {
        for (dir, data) in &dirs {
            let s = cache.current(dir).unwrap().unwrap();
            assert_eq!(s.id, "same-id");
            assert_eq!(s.dir, dir.join("same-id"));
            let f = s.get("vmlinuz").unwrap();
            assert_eq!(
                (f.sha256.as_str(), f.size),
                (sha(data).as_str(), data.len() as u64)
            );
        }
    }
    assert_eq!(cache.len(), 2);
    // The global cache behind current_sums keys the same way.
    let a = pxeforge_store::current_sums(&dirs[0].0).unwrap();
    let b = pxeforge_store::current_sums(&dirs[1].0).unwrap();
    assert_ne!(a.files, b.files);
}

#[test]
fn sums_cache_follows_current() {
    let (_t, store, dir) = store();
    let cache = SumsCache::new(16);
    assert!(cache.current(&dir).unwrap().is_none(), "nothing published");
    publish(&store, &dir, "one", &[("f", b"1")]);
    let s1 = cache.current(&dir).unwrap().unwrap();
    assert_eq!(s1.id, "one");
    let again = cache.current(&dir).unwrap().unwrap();
    assert!(
        std::sync::Arc::ptr_eq(&s1, &again),
        "a hit while current stays"
    );

    publish(&store, &dir, "two", &[("f", b"22"), ("g", b"g")]);
    let s2 = cache.current(&dir).unwrap().unwrap();
    assert_eq!(s2.id, "two");
    assert_eq!(s2.files.len(), 2);
    assert_eq!(s2.get("f").unwrap().size, 2);

    store.set_current(&dir, "one").unwrap();
    assert_eq!(cache.current(&dir).unwrap().unwrap().id, "one");
    assert_eq!(cache.len(), 1, "one entry per key directory");

    std::fs::remove_file(dir.join(CURRENT)).unwrap();
    assert!(cache.current(&dir).unwrap().is_none());
    assert!(cache.is_empty());
}

#[test]
fn sums_cache_is_bounded() {
    let (_t, store, _) = store();
    let cache = SumsCache::new(2);
    let dirs: Vec<PathBuf> = ["p1", "p2", "p3"]
        .iter()
        .map(|p| {
            let d = store.key_dir(&["base", p]).unwrap();
            publish(&store, &d, "x", &[("f", p.as_bytes())]);
            d
        })
        .collect();
    for d in &dirs {
        assert!(cache.current(d).unwrap().is_some());
        assert!(cache.len() <= 2);
    }
    // The least recently used went; every lookup is still right.
    for d in dirs.iter().rev() {
        let s = cache.current(d).unwrap().unwrap();
        assert_eq!(s.dir, d.join("x"));
    }
    assert_eq!(cache.len(), 2);
}

#[test]
fn a_depth_zero_store_has_its_root_as_key_directory() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::new(t.path().join("loaders"), 0);
    let dir = store.key_dir(&[]).unwrap();
    assert_eq!(dir, store.root());
    publish(&store, &dir, "v1", &[("ipxe.efi", b"efi")]);
    assert_eq!(current(&dir).as_deref(), Some("v1"));
    let items = store.list();
    assert_eq!(items.len(), 1);
    assert!(items[0].key.is_empty());
    assert_eq!(store.gc_all(0).unwrap().len(), 0);
}
