//! The store: skipping unchanged builds, reproducible rebuilds, verify, gc, and a killed build.

mod common;
use common::*;
use pxeforge_imagebuilder as ib;
use std::process::Command;
use std::time::{Duration, Instant};

const PROFILE: &str =
    "arch = \"x86_64\"\nfirmware = \"uefi\"\nconsole = \"ttyS0\"\ndisk = \"/dev/vda\"\n";
const ALL: &str = "\"kernel\", \"initramfs\", \"squashfs\", \"tar\", \"ext4\", \"disk\", \"qcow2\"";

#[test]
fn second_build_skipped_and_forced_rebuild_byte_identical() {
    let Some(_a) = assets() else { return };
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let extra = "[[user]]\nname = \"admin\"\nuid = 1000\ngid = 1000\nssh_authorized_keys = [\"ssh-ed25519 AAAAC3Nza test\"]\n";
    site.write(
        "images/all.toml",
        busybox_recipe("vm", ALL, "echo hi", extra),
    );
    let first = site.build("all", &p, false).unwrap();
    assert!(!first.skipped);
    let mut names: Vec<&str> = first.outputs.iter().map(|o| o.file.as_str()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "disk.qcow2",
            "disk.raw",
            "initramfs.img",
            "root.ext4",
            "root.squashfs",
            "root.tar.gz",
            "vmlinuz"
        ]
    );
    // The published directory checks out with the standard tool.
    run_ok(
        Command::new("sha256sum")
            .arg("-c")
            .arg("--strict")
            .arg("SHA256SUMS")
            .current_dir(&first.dir),
    );
    let before = snapshot(&first.dir);

    let second = site.build("all", &p, false).unwrap();
    assert!(second.skipped, "unchanged inputs must not be rebuilt");
    assert_eq!(second.id, first.id);
    assert_eq!(
        snapshot(&first.dir),
        before,
        "a skipped build leaves the published files alone"
    );

    let forced = site.build("all", &p, true).unwrap();
    assert!(!forced.skipped);
    assert_eq!(forced.id, first.id);
    for o in &first.outputs {
        let a = before.iter().find(|(n, _)| n == &o.file).unwrap();
        let b = ib::hashing::hash_file(&forced.dir.join(&o.file)).unwrap().1;
        assert_eq!(a.1, b, "{} differs after a forced rebuild", o.file);
        assert_eq!(o.sha256, b);
    }
    let listed = ib::store::list(&site.state());
    assert_eq!(listed.len(), 1);
    assert!(listed[0].is_current);

    // Any change of an input is a new build id.
    site.write(
        "images/all.toml",
        busybox_recipe("vm", ALL, "echo changed", extra),
    );
    let changed = site.build("all", &p, false).unwrap();
    assert_ne!(changed.id, first.id);
    assert!(!changed.skipped);
    let cur = ib::store::resolve(&site.state(), "all", "vm", "current").unwrap();
    assert_eq!(cur, changed.dir);
}

#[test]
fn a_changed_source_file_is_a_new_build_even_with_cached_hashes() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    site.write("src.txt", "aaaa\n");
    site.write("images/c.toml", "profiles = [\"vm\"]\noutputs = [\"tar\"]\n[base]\nscratch = true\n[[file]]\npath = \"/etc/c\"\nsource = \"src.txt\"\n");
    // Old enough for its hash to be remembered.
    std::thread::sleep(Duration::from_millis(3100));
    let first = site.build("c", &p, false).unwrap();
    assert!(site.state().join("images/.hashcache.json").is_file());
    assert!(site.build("c", &p, false).unwrap().skipped);
    // Same size, new content: the cache must not hide it.
    site.write("src.txt", "bbbb\n");
    let second = site.build("c", &p, false).unwrap();
    assert!(!second.skipped);
    assert_ne!(second.id, first.id);
    let t = run_ok(
        Command::new("tar")
            .arg("-xzOf")
            .arg(second.dir.join("root.tar.gz"))
            .arg("etc/c"),
    );
    assert_eq!(t, "bbbb\n");
}

#[test]
fn verify_catches_a_flipped_byte_and_gc_keeps_current() {
    let site = Site::new();
    let p = site.profile("vm", PROFILE);
    let recipe = |n: u32| {
        format!("profiles = [\"vm\"]\noutputs = [\"tar\", \"initramfs\"]\n[base]\nscratch = true\n[[file]]\npath = \"/etc/motd\"\ncontents = \"build {n}\\n\"\n")
    };
    let mut ids = Vec::new();
    for n in 0..3 {
        site.write("images/small.toml", recipe(n));
        ids.push(site.build("small", &p, false).unwrap());
        // built_at has a one-second resolution; gc orders by it.
        std::thread::sleep(Duration::from_millis(1100));
    }
    assert!(ib::store::verify(&site.state()).unwrap().is_empty());

    let victim = ids[1].dir.join("root.tar.gz");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    let bad = ib::store::verify(&site.state()).unwrap();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert_eq!(bad[0].path, victim);
    assert!(bad[0].to_string().contains("root.tar.gz"), "{}", bad[0]);

    // An unlisted file is reported too.
    std::fs::write(ids[0].dir.join("extra"), b"x").unwrap();
    assert_eq!(ib::store::verify(&site.state()).unwrap().len(), 2);

    // gc --keep 1 keeps the newest (current) build only; the current one survives even keep 0.
    let removed = ib::store::gc(&site.state(), 0).unwrap();
    assert_eq!(removed.len(), 2, "{removed:?}");
    let left = ib::store::list(&site.state());
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[2].id);
    assert!(left[0].is_current);
}

#[test]
fn killed_build_leaves_no_trace() {
    let site = Site::new();
    site.profile("vm", PROFILE);
    let p = ib::ProfileLayer::from(&pxeforge_site::parse_profile_text("vm", PROFILE).unwrap());
    site.write("images/big.toml", "profiles = [\"vm\"]\noutputs = [\"initramfs\", \"tar\"]\n[base]\nscratch = true\n[[file]]\npath = \"/etc/motd\"\ncontents = \"one\\n\"\n");
    let good = site.build("big", &p, false).unwrap();
    let before = snapshot(&site.state().join("images/big"));

    // A new build with a large incompressible file takes long enough to be killed mid-way.
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    site.write("blob.bin", &data);
    site.write("images/big.toml", "profiles = [\"vm\"]\noutputs = [\"initramfs\", \"tar\"]\n[base]\nscratch = true\n[[file]]\npath = \"/blob\"\nsource = \"blob.bin\"\n");

    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/build");
    assert!(
        example.is_file(),
        "{} (cargo test builds the examples)",
        example.display()
    );
    let mut child = Command::new(&example)
        .arg(site.dir())
        .arg(site.state())
        .args(["big", "vm"])
        .spawn()
        .unwrap();
    let tmp = site.state().join("images/.tmp");
    let deadline = Instant::now() + Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| {
                let f = e.path().join("out/initramfs.img");
                std::fs::metadata(&f)
                    .ok()
                    .filter(|m| m.len() > 0)
                    .map(|_| f)
            });
        if let Some(f) = found {
            break f;
        }
        assert!(Instant::now() < deadline, "the build never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build finished before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(partial.exists(), "the kill landed mid-way");

    assert_eq!(
        snapshot(&site.state().join("images/big")),
        before,
        "published builds and current unchanged"
    );
    let listed = ib::store::list(&site.state());
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, good.id);
    assert!(listed[0].is_current);
    assert!(ib::store::verify(&site.state()).unwrap().is_empty());

    // The dead build's scratch space is reclaimed by the next store operation.
    ib::store::gc(&site.state(), 10).unwrap();
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn store_limits_warn_about_memory() {
    let site = Site::new();
    let p = site.profile(
        "small",
        "arch = \"x86_64\"\nfirmware = \"bios\"\nmemory_mib = 1\ndisk = \"/dev/vda\"\n",
    );
    site.write("blob.bin", vec![0u8; 3 << 20]);
    site.write("images/fat.toml", "profiles = [\"small\"]\noutputs = [\"initramfs\"]\n[base]\nscratch = true\n[[file]]\npath = \"/blob\"\nsource = \"blob.bin\"\n");
    site.build("fat", &p, false).unwrap();
    let w = ib::check_store_limits(&site.state(), std::slice::from_ref(&p));
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0].severity, ib::Severity::Warning);
    assert!(w[0].message.contains("memory_mib"), "{}", w[0].message);
    let roomy = ib::ProfileLayer::from(
        &pxeforge_site::parse_profile_text(
            "small",
            "arch = \"x86_64\"\nfirmware = \"bios\"\nmemory_mib = 64\ndisk = \"/dev/vda\"\n",
        )
        .unwrap(),
    );
    assert!(ib::check_store_limits(&site.state(), &[roomy]).is_empty());
}

#[test]
fn gc_during_a_build_spares_it_and_removes_leftovers_whatever_their_pid() {
    let site = Site::new();
    site.profile("vm", PROFILE);
    let p = ib::ProfileLayer::from(&pxeforge_site::parse_profile_text("vm", PROFILE).unwrap());
    site.write("images/g.toml", "profiles = [\"vm\"]\noutputs = [\"initramfs\"]\n[base]\nscratch = true\n[[file]]\npath = \"/etc/motd\"\ncontents = \"one\\n\"\n");
    let old = site.build("g", &p, false).unwrap();

    // Leftovers of builds in other containers sharing the store, named as builds once were
    // (`build-<pid>-*`): pid 1 and our own pid are alive here, yet nobody holds their lock.
    let tmp = site.state().join("images/.tmp");
    let leftovers = [
        tmp.join("build-1-0123abcd"),
        tmp.join(format!("build-{}-4567ef", std::process::id())),
    ];
    for l in &leftovers {
        std::fs::create_dir_all(l.join("out")).unwrap();
        std::fs::write(l.join("out/initramfs.img"), b"partial").unwrap();
    }

    let mut x: u64 = 0x2545f4914f6cdd1d;
    let data: Vec<u8> = (0..48 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    site.write("blob.bin", &data);
    site.write("images/g.toml", "profiles = [\"vm\"]\noutputs = [\"initramfs\"]\n[initramfs]\ncompression = \"zstd\"\n[base]\nscratch = true\n[[file]]\npath = \"/blob\"\nsource = \"blob.bin\"\n");
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/build");
    let mut child = Command::new(&example)
        .arg(site.dir())
        .arg(site.state())
        .args(["g", "vm"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        let found = std::fs::read_dir(&tmp)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .find(|d| !leftovers.contains(d) && d.join("out/initramfs.img").exists());
        if let Some(d) = found {
            break d;
        }
        assert!(Instant::now() < deadline, "the build never started writing");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build finished too soon"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // keep = 0: only `current` protects the old build; the running build's temporary is
    // protected by its lock, the leftovers are not.
    let removed = ib::store::gc(&site.state(), 0).unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    for l in &leftovers {
        assert!(!l.exists(), "{} left behind", l.display());
    }
    let still_running = child.try_wait().unwrap().is_none();
    assert!(
        !still_running || live.is_dir(),
        "gc removed the temporary of a running build"
    );
    assert!(child.wait().unwrap().success(), "the build failed");

    let listed = ib::store::list(&site.state());
    assert_eq!(listed.len(), 2, "{listed:?}");
    let new = listed.iter().find(|i| i.is_current).unwrap();
    assert_ne!(new.id, old.id);
    assert!(ib::store::verify(&site.state()).unwrap().is_empty());
    let removed = ib::store::gc(&site.state(), 0).unwrap();
    assert_eq!(removed, [old.dir]);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn every_output_and_its_directory_are_fsynced_before_the_rename_that_publishes_them() {
    if !pxeforge_tests::have("strace") {
        pxeforge_tests::skip("no strace (Debian package strace): cannot watch the fsyncs");
        return;
    }
    let site = Site::new();
    site.profile("vm", PROFILE);
    site.write("vmlinuz", b"not really a kernel, the ESP takes any file");
    site.write("images/f.toml", format!("profiles = [\"vm\"]\noutputs = [{ALL}]\n[base]\nscratch = true\n[kernel]\nfile = \"vmlinuz\"\n[[file]]\npath = \"/etc/motd\"\ncontents = \"hi\\n\"\n"));
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/build");
    let log = site.dir().join("strace.log");
    // -y prints the path behind every fd, so each fsync names what it made durable.
    run_ok(
        Command::new("strace")
            .args([
                "-f",
                "-y",
                "-qq",
                "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2",
                "-o",
            ])
            .arg(&log)
            .arg(&example)
            .arg(site.dir())
            .arg(site.state())
            .args(["f", "vm"]),
    );
    let listed = ib::store::list(&site.state());
    assert_eq!(listed.len(), 1);
    let item = &listed[0];
    let trace = std::fs::read_to_string(&log).unwrap();
    // strace pads the pid column ("1022  fsync(" but "10222 fsync("), and under -f splits a
    // call that another thread interrupted into "<unfinished ...>" and "<... resumed>" lines:
    // join those first, each call at the place it completed.
    let mut pending: std::collections::HashMap<String, String> = Default::default();
    let mut calls: Vec<String> = Vec::new();
    for l in trace.lines() {
        let (pid, call) = l.split_once(' ').unwrap_or(("", l));
        let call = call.trim_start();
        if let Some(head) = call.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), head.trim_end().to_string());
        } else if call.starts_with("<... ") {
            if let Some(head) = pending.remove(pid) {
                let rest = call.split_once("resumed>").map_or("", |(_, r)| r);
                calls.push(format!("{head}{rest}"));
            }
        } else {
            calls.push(call.to_string());
        }
    }
    // "fsync(3</abs/path>) = 0" → path; "rename("from", "to") = 0" → (from, to).
    let events: Vec<(&str, String, String)> = calls
        .iter()
        .map(|c| c.trim_end())
        .filter(|l| l.ends_with("= 0"))
        .filter_map(|call| {
            if let Some(rest) = call
                .strip_prefix("fsync(")
                .or(call.strip_prefix("fdatasync("))
            {
                let p = rest.split_once('<')?.1.split_once(">)")?.0;
                Some(("fsync", p.to_string(), String::new()))
            } else if call.starts_with("rename") {
                let q: Vec<&str> = call.split('"').collect();
                Some((
                    "rename",
                    q.get(q.len().checked_sub(4)?)?.to_string(),
                    q[q.len() - 2].to_string(),
                ))
            } else {
                None
            }
        })
        .collect();
    let abs = |p: &str| std::path::absolute(p).unwrap();
    let publish = events
        .iter()
        .position(|(k, _, to)| *k == "rename" && abs(to) == abs(item.dir.to_str().unwrap()))
        .unwrap_or_else(|| panic!("no rename to {}:\n{trace}", item.dir.display()));
    let out = abs(&events[publish].1);
    assert!(out.ends_with("out"), "{}", out.display());
    let fsynced_before = |p: &std::path::Path| {
        events[..publish]
            .iter()
            .any(|(k, f, _)| *k == "fsync" && std::path::Path::new(f) == p)
    };
    let mut files: Vec<String> = item.outputs.iter().map(|o| o.file.clone()).collect();
    files.extend(["manifest.json".to_string(), "SHA256SUMS".to_string()]);
    for f in [
        "disk.qcow2",
        "root.squashfs",
        "root.ext4",
        "root.tar.gz",
        "initramfs.img",
    ] {
        assert!(files.iter().any(|x| x == f), "{f} not among {files:?}");
    }
    for f in &files {
        assert!(
            fsynced_before(&out.join(f)),
            "{f} not fsynced before the rename:\n{trace}"
        );
    }
    assert!(
        fsynced_before(&out),
        "out/ not fsynced before the rename:\n{trace}"
    );
    let key_dir = item.dir.parent().unwrap();
    assert!(
        events[publish..]
            .iter()
            .any(|(k, f, _)| *k == "fsync" && std::path::Path::new(f) == key_dir),
        "{} not fsynced after the rename:\n{trace}",
        key_dir.display()
    );
}
