//! Out of descriptors is an I/O error, never "not found": a server must not tell a client a
//! file is missing because it ran out of descriptors. One test in this binary, because it
//! lowers the process's RLIMIT_NOFILE.

use std::fs::File;
use std::path::Path;

use pxeforge_confine::{open_beneath_with, ConfineError, Method};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();

#[test]
fn emfile_is_io_not_not_found() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/b/c/file"), b"x").unwrap();

    let old = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(64),
            maximum: old.maximum,
        },
    )
    .unwrap();
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if e.raw_os_error() == Some(EMFILE) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() < 100, "RLIMIT_NOFILE was not lowered");
    }
    // Free 0..4 descriptors: the failure then hits the root, an intermediate directory of the
    // walk, or the final open; each must be EMFILE.
    let mut outcomes = Vec::new();
    for free in 0..4 {
        for method in [Method::Walk, Method::Auto, Method::Openat2] {
            let result = open_beneath_with(root, Path::new("a/b/c/file"), method);
            outcomes.push((free, method, result.map(|_| ())));
        }
        held.pop();
    }
    drop(held);
    setrlimit(Resource::Nofile, old).unwrap();
    for (free, method, result) in outcomes {
        match result {
            Err(ConfineError::Io(e)) if e.raw_os_error() == Some(EMFILE) => {}
            // openat2 needs one descriptor besides the root's: with two free it succeeds.
            Ok(()) if method != Method::Walk && free >= 2 => {}
            // Where openat2 is unavailable, the forced method says so.
            Err(ConfineError::Io(_)) if method == Method::Openat2 && free >= 1 => {}
            other => panic!("{free} free, {method:?}: {other:?}"),
        }
    }
}
