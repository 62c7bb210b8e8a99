//! The attack the crate exists for: while a thread keeps exchanging a directory under the root
//! with a symlink to a directory outside (`renameat2(RENAME_EXCHANGE)`), opening `d/passwd`
//! must return the harmless file or a refusal, never the secret one.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pxeforge_confine::{open_beneath_with, ConfineError, Method, Refusal};
use rustix::fs::{RenameFlags, CWD};

const HARMLESS: &[u8] = b"harmless\n";
const SECRET: &[u8] = b"SECRET root:x:0:0\n";
/// Opens per method: enough that an unconfined open leaks many times over.
const ATTEMPTS: usize = 1000;
/// Opens go on past ATTEMPTS until both states of the swap were seen, up to this long (a
/// loaded machine may not schedule the swapping thread at first).
const PATIENCE: Duration = Duration::from_secs(20);

#[derive(Debug, Default)]
struct Counts {
    harmless: usize,
    refused: usize,
    /// openat2's EAGAIN after its retries (forced openat2 only: Auto walks instead).
    again: usize,
}

/// Builds `root/d/passwd` (harmless), `outside/passwd` (secret) and `root/swap`, a symlink to
/// `outside` written as `target`; runs the exchange loop while opening through each method.
fn race(absolute_target: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(root.join("d/passwd"), HARMLESS).unwrap();
    std::fs::write(outside.join("passwd"), SECRET).unwrap();
    let target = if absolute_target {
        outside.clone()
    } else {
        PathBuf::from("../outside")
    };
    symlink(&target, root.join("swap")).unwrap();
    let (d, swap) = (root.join("d"), root.join("swap"));
    if let Err(e) = rustix::fs::renameat_with(CWD, &d, CWD, &swap, RenameFlags::EXCHANGE) {
        pxeforge_tests::skip(format_args!(
            "renameat2(RENAME_EXCHANGE) is not supported here ({e})"
        ));
        return;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        std::thread::spawn(move || {
            // Ends on error too: a failing test removes the tree under it.
            while !stop.load(Ordering::Relaxed)
                && rustix::fs::renameat_with(CWD, &d, CWD, &swap, RenameFlags::EXCHANGE).is_ok()
            {
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    let mut methods = vec![Method::Walk, Method::Auto];
    if openat2_available(&root) {
        methods.push(Method::Openat2);
    }
    let mut report = Vec::new();
    for method in methods {
        let mut counts = Counts::default();
        let started = Instant::now();
        let mut attempts = 0;
        while attempts < ATTEMPTS
            || ((counts.harmless == 0 || counts.refused == 0) && started.elapsed() < PATIENCE)
        {
            attempts += 1;
            match open_beneath_with(&root, Path::new("d/passwd"), method) {
                Ok((mut file, _)) => {
                    let data = read_all(&mut file);
                    assert_ne!(data, SECRET, "{method:?} leaked the secret");
                    assert_eq!(data, HARMLESS, "{method:?}");
                    counts.harmless += 1;
                }
                Err(ConfineError::Refused(Refusal::OutsideRoot)) => counts.refused += 1,
                Err(ConfineError::Io(e))
                    if method == Method::Openat2
                        && e.raw_os_error() == Some(rustix::io::Errno::AGAIN.raw_os_error()) =>
                {
                    counts.again += 1
                }
                Err(e) => panic!("{method:?}: unexpected {e}"),
            }
            // Lets the swapping thread run between opens on a busy machine.
            std::thread::yield_now();
        }
        // Both states were met, so the race was really run (not all opens in one state).
        assert!(
            counts.harmless > 0 && counts.refused > 0,
            "{method:?}: the swap was not observed in {attempts} opens: {counts:?}"
        );
        report.push(format!("{method:?}: {attempts} opens, {counts:?}"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    eprintln!(
        "absolute_target={absolute_target}, {} exchanges; {}",
        swaps.load(Ordering::Relaxed),
        report.join("; ")
    );
}

fn read_all(file: &mut File) -> Vec<u8> {
    let mut data = Vec::new();
    file.read_to_end(&mut data).unwrap();
    data
}

/// Whether openat2 can be called here (5.6+, not filtered by seccomp).
fn openat2_available(root: &Path) -> bool {
    std::fs::write(root.join("probe"), b"").unwrap();
    match open_beneath_with(root, Path::new("probe"), Method::Openat2) {
        Ok(_) => true,
        Err(e) => {
            pxeforge_tests::skip(format_args!(
                "openat2 is not available here ({e}); only the walk is raced"
            ));
            false
        }
    }
}

#[test]
fn exchange_with_absolute_symlink_never_leaks() {
    race(true);
}

#[test]
fn exchange_with_relative_symlink_never_leaks() {
    race(false);
}
