//! Files served over HTTP stay confined to their root even while the tree changes under them,
//! and nothing under a root can block a request.

use pxeforge_tests::Server;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const SECRET: &[u8] = b"SECRET: must never be served\n";
const HARMLESS: &[u8] = b"harmless\n";

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a temp path")
}

/// Swaps `a` and `b` atomically (`renameat2(RENAME_EXCHANGE)`) until `stop` is set.
fn exchange_loop(a: &Path, b: &Path, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    let (a, b) = (cstr(a), cstr(b));
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: two valid NUL-terminated paths, relative to the current directory (they
            // are absolute), and a flag the kernel defines; nothing is borrowed past the call.
            let rc = unsafe {
                libc::renameat2(
                    libc::AT_FDCWD,
                    a.as_ptr(),
                    libc::AT_FDCWD,
                    b.as_ptr(),
                    libc::RENAME_EXCHANGE,
                )
            };
            // The directory is gone once a failing test has dropped it: stop quietly.
            if rc != 0 {
                break;
            }
            n += 1;
        }
        n
    })
}

#[test]
fn http_refuses_a_symlink_swapped_in_between_check_and_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    pxeforge_tests::copy_example_site(&site);
    let root = dir.path().join("assets");
    std::fs::create_dir_all(root.join("d")).expect("d");
    std::fs::write(root.join("d/passwd"), HARMLESS).expect("harmless");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("passwd"), SECRET).expect("secret");
    // `swap` is a symlink to the outside directory; exchanging it with `d` makes `d` a symlink
    // out of the root for half of the time.
    std::os::unix::fs::symlink(&outside, root.join("swap")).expect("symlink");
    let server = Server::start(
        &site,
        &["--no-tftp", "--assets", root.to_str().expect("utf-8 path")],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = exchange_loop(&root.join("d"), &root.join("swap"), stop.clone());
    let c = reqwest::blocking::Client::new();
    let url = server.url("/assets/d/passwd");
    let (mut served, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    for _ in 0..400 {
        if Instant::now() > deadline {
            break;
        }
        let r = c.get(&url).send().expect("GET");
        let status = r.status();
        let body = r.bytes().expect("body");
        assert_ne!(body.as_ref(), SECRET, "a file outside the root was served");
        if status == 200 {
            assert_eq!(body.as_ref(), HARMLESS);
            served += 1;
        } else {
            refused += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = swapper.join().expect("swapper");
    assert!(swaps > 0, "the tree never changed");
    assert!(served + refused > 0);
    eprintln!("{served} served, {refused} refused, {swaps} swaps");
}

#[test]
fn a_fifo_under_a_served_root_never_blocks_a_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site");
    pxeforge_tests::copy_example_site(&site);
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root");
    std::fs::write(root.join("real.bin"), HARMLESS).expect("file");
    nix::unistd::mkfifo(&root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::os::unix::fs::symlink("fifo", root.join("to-fifo")).expect("symlink");
    let root_s = root.to_str().expect("utf-8 path");
    let server = Server::start(
        &site,
        &["--no-tftp", "--assets", root_s, "--tftp-root", root_s],
    );
    let c = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    // More requests than HTTP worker threads, so one blocked open would show.
    for path in [
        "/assets/fifo",
        "/assets/to-fifo",
        "/tftp/fifo",
        "/tftp/to-fifo",
    ] {
        for _ in 0..4 {
            let r = c.get(server.url(path)).send().expect("answered within 5 s");
            assert_eq!(r.status(), 404, "{path}");
        }
    }
    // A FIFO swapped in for a regular file between any check and the open, reached directly,
    // through a relative link and through an absolute one: every request is still answered.
    std::fs::write(root.join("flip"), HARMLESS).expect("file");
    nix::unistd::mkfifo(&root.join("flop"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    std::os::unix::fs::symlink("flip", root.join("rel-flip")).expect("symlink");
    std::os::unix::fs::symlink(root.join("flip"), root.join("abs-flip")).expect("symlink");
    let stop = Arc::new(AtomicBool::new(false));
    let swapper = exchange_loop(&root.join("flip"), &root.join("flop"), stop.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    'outer: for _ in 0..100 {
        for path in ["/assets/flip", "/assets/rel-flip", "/assets/abs-flip"] {
            if Instant::now() > deadline {
                break 'outer;
            }
            let r = c.get(server.url(path)).send();
            let r = r.unwrap_or_else(|e| panic!("{path}: no answer within 5 s: {e}"));
            assert!(
                [200, 403, 404].contains(&r.status().as_u16()),
                "{path}: {}",
                r.status()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    assert!(swapper.join().expect("swapper") > 0);
    let r = c.get(server.url("/assets/real.bin")).send().expect("GET");
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().expect("body").as_ref(), HARMLESS);
}
