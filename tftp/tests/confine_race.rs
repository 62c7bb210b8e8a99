//! Confinement over the real protocol: a directory under the root exchanged, again and again,
//! with a symlink to a directory outside (`renameat2(RENAME_EXCHANGE)`) never lets the outside
//! file through, and FIFOs under the root are refused at once without stalling the service.

mod common;

use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{renameat2, RenameFlags};
use pxeforge_tftp::packet::ErrorCode;
use pxeforge_tftp::Ended;

const HARMLESS: &[u8] = b"harmless passwd\n";
const SECRET: &[u8] = b"SECRET root:x:0:0:root:/root:/bin/sh\n";
/// Fetches over the protocol; an unconfined open leaks within a few hundred.
const ATTEMPTS: usize = 400;
/// Fetches go on past ATTEMPTS until both states of the swap were seen, up to this long.
const PATIENCE: Duration = Duration::from_secs(30);

/// Stops the exchanging thread when the test ends, passing or not.
struct Swapper {
    stop: Arc<AtomicBool>,
    swaps: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanged_directory_never_serves_the_outside_file() {
    let t = tree();
    let elsewhere = t.dir.path().join("etc");
    std::fs::create_dir_all(t.root.join("d")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(t.root.join("d/passwd"), HARMLESS).unwrap();
    std::fs::write(elsewhere.join("passwd"), SECRET).unwrap();
    symlink(&elsewhere, t.root.join("swap")).unwrap();
    let (d, swap) = (t.root.join("d"), t.root.join("swap"));
    if let Err(e) = renameat2(None, &d, None, &swap, RenameFlags::RENAME_EXCHANGE) {
        pxeforge_tests::skip(format_args!(
            "renameat2(RENAME_EXCHANGE) is not supported here ({e})"
        ));
        return;
    }
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = Swapper {
        stop: stop.clone(),
        swaps: swaps.clone(),
        thread: Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed)
                && renameat2(None, &d, None, &swap, RenameFlags::RENAME_EXCHANGE).is_ok()
            {
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })),
    };

    let (mut served, mut refused, mut attempts) = (0usize, 0usize, 0usize);
    let started = Instant::now();
    while attempts < ATTEMPTS || ((served == 0 || refused == 0) && started.elapsed() < PATIENCE) {
        attempts += 1;
        let sock = client().await;
        match fetch_raw(&sock, server.addr, &rrq(b"d/passwd", &[])).await {
            Fetch::Data(data) => {
                assert_ne!(data, SECRET, "the file outside the root was served");
                assert_eq!(data, HARMLESS);
                served += 1;
            }
            Fetch::Error(code, _) if code == ErrorCode::AccessViolation.as_u16() => refused += 1,
            Fetch::Error(code, message) => panic!("unexpected error {code}: {message}"),
        }
    }
    let exchanges = swapper.swaps.load(Ordering::Relaxed);
    drop(swapper);
    eprintln!("{attempts} fetches: {served} served, {refused} refused; {exchanges} exchanges");
    // Both states were met, so the race really ran.
    assert!(
        served > 0 && refused > 0,
        "the swap was not observed: {served} served, {refused} refused"
    );
    wait_outcome(&server.metrics, Ended::Refused, refused as u64).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_is_refused_promptly_and_service_goes_on() {
    let t = tree();
    nix::unistd::mkfifo(&t.root.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    symlink("fifo", t.root.join("fifo-link")).unwrap();
    std::fs::write(t.root.join("ok"), b"fine\n").unwrap();
    let server = start("127.0.0.1:0", &t.root, |_| {}).await;

    // More FIFO requests at once than the server opens files in parallel: a blocking open
    // would hold every opener and starve the request for `ok` below.
    let mut requests = Vec::new();
    for i in 0..40 {
        let name: &[u8] = if i % 2 == 0 { b"fifo" } else { b"fifo-link" };
        let addr = server.addr;
        requests.push(tokio::spawn(async move {
            let sock = client().await;
            tokio::time::timeout(
                Duration::from_secs(5),
                fetch_raw(&sock, addr, &rrq(name, &[])),
            )
            .await
        }));
    }
    for request in requests {
        let reply = request
            .await
            .unwrap()
            .expect("no answer to a FIFO request within 5 s");
        assert!(
            matches!(reply, Fetch::Error(code, _) if code == ErrorCode::AccessViolation.as_u16()),
            "{reply:?}"
        );
    }
    let sock = client().await;
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        fetch_raw(&sock, server.addr, &rrq(b"ok", &[])),
    )
    .await
    .expect("the server stopped serving after the FIFO requests");
    assert_eq!(reply, Fetch::Data(b"fine\n".to_vec()));
    wait_outcome(&server.metrics, Ended::Refused, 40).await;
    server.stop().await;
}
