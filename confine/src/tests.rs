//! The same table of cases through openat2, the walk and the automatic choice.

use super::*;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

/// What an open should come to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Content(&'static [u8]),
    NotFound,
    Refused(Refusal),
}

/// What an open came to (an I/O error is never expected here).
fn outcome(result: Result<(File, Metadata), ConfineError>) -> Result<Vec<u8>, String> {
    match result {
        Ok((mut file, metadata)) => {
            assert!(metadata.is_file());
            let mut data = Vec::new();
            file.read_to_end(&mut data).map_err(|e| e.to_string())?;
            Ok(data)
        }
        Err(e) => Err(e.to_string()),
    }
}

fn expected(want: &Want) -> Result<Vec<u8>, String> {
    match want {
        Want::Content(c) => Ok(c.to_vec()),
        Want::NotFound => Err(ConfineError::NotFound.to_string()),
        Want::Refused(r) => Err(ConfineError::Refused(*r).to_string()),
    }
}

/// Opens in a thread and gives up after a few seconds: a FIFO (or anything else) that blocked
/// the open fails the test instead of hanging it.
fn open_promptly(root: &Path, rel: &str, method: Method) -> Result<Vec<u8>, String> {
    let (tx, rx) = mpsc::channel();
    let (root, rel2) = (root.to_path_buf(), PathBuf::from(rel));
    std::thread::spawn(move || {
        let _ = tx.send(outcome(open_beneath_with(&root, &rel2, method)));
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{method:?}: opening {rel:?} did not return within 5 s"))
}

/// Whether this kernel lets us call openat2 (5.6+, not filtered by seccomp).
fn openat2_available(root: &Path, rel: &Path) -> bool {
    let unavailable = [Errno::NOSYS, Errno::PERM, Errno::TOOBIG, Errno::INVAL];
    match open_beneath_with(root, rel, Method::Openat2) {
        Err(ConfineError::Io(e))
            if unavailable
                .iter()
                .any(|u| e.raw_os_error() == Some(u.raw_os_error())) =>
        {
            pxeforge_tests::skip(format_args!(
                "openat2 is not available here ({e}); only the walk is tested"
            ));
            false
        }
        _ => true,
    }
}

struct Tree {
    _dir: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(root.join("sub/nested")).unwrap();
    std::fs::create_dir_all(root.join("images/builds/build-1")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"SECRET").unwrap();
    std::fs::write(root.join("plain"), b"plain").unwrap();
    std::fs::write(root.join("sub/nested/file"), b"nested").unwrap();
    std::fs::write(root.join("images/builds/build-1/ipxe.efi"), b"build-1").unwrap();
    let ln = |target: &str, link: &str| symlink(target, root.join(link)).unwrap();
    ln("plain", "link-in");
    ln("../plain", "sub/up-in");
    ln("../../plain", "sub/nested/deep-in");
    ln("../outside/secret", "link-up");
    ln("sub/../../outside/secret", "link-up-late");
    ln("../root/plain", "link-out-and-back");
    ln("../outside", "dir-up");
    ln("chain-2", "chain-1");
    ln("chain-3", "chain-2");
    ln("sub/nested/file", "chain-3");
    ln("loop-b", "loop-a");
    ln("loop-a", "loop-b");
    ln("self", "self");
    ln("sub", "dir-link");
    ln(".", "dot-link");
    ln("build-1", "images/builds/current");
    symlink(outside.join("secret"), root.join("link-abs")).unwrap();
    symlink(root.join("plain"), root.join("link-abs-in")).unwrap();
    symlink("/dev/null", root.join("null")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.join("fifo"),
        rustix::fs::FileType::Fifo,
        Mode::RUSR | Mode::WUSR,
        0,
    )
    .unwrap();
    symlink("fifo", root.join("fifo-link")).unwrap();
    Tree {
        _dir: dir,
        root,
        outside,
    }
}

fn cases() -> Vec<(&'static str, Want)> {
    use Want::*;
    vec![
        ("plain", Content(b"plain")),
        ("./plain", Content(b"plain")),
        ("sub/nested/file", Content(b"nested")),
        ("sub//nested/./file", Content(b"nested")),
        // Lexically refused before any lookup.
        ("../outside/secret", Refused(Refusal::ParentDir)),
        ("sub/../plain", Refused(Refusal::ParentDir)),
        ("/etc/passwd", Refused(Refusal::Absolute)),
        ("", Refused(Refusal::NotRegularFile)),
        (".", Refused(Refusal::NotRegularFile)),
        // Relative symlinks that stay inside are followed, `..` included.
        ("link-in", Content(b"plain")),
        ("sub/up-in", Content(b"plain")),
        ("sub/nested/deep-in", Content(b"plain")),
        ("chain-1", Content(b"nested")),
        ("dir-link/nested/file", Content(b"nested")),
        ("dot-link/plain", Content(b"plain")),
        ("images/builds/current/ipxe.efi", Content(b"build-1")),
        // Symlinks that leave, even for a moment, or are absolute.
        ("link-up", Refused(Refusal::OutsideRoot)),
        ("link-up-late", Refused(Refusal::OutsideRoot)),
        ("link-out-and-back", Refused(Refusal::OutsideRoot)),
        ("dir-up/secret", Refused(Refusal::OutsideRoot)),
        ("link-abs", Refused(Refusal::OutsideRoot)),
        ("link-abs-in", Refused(Refusal::OutsideRoot)),
        ("null", Refused(Refusal::OutsideRoot)),
        // Loops end, they do not hang.
        ("loop-a", Refused(Refusal::SymlinkLoop)),
        ("self", Refused(Refusal::SymlinkLoop)),
        ("self/x", Refused(Refusal::SymlinkLoop)),
        // Not regular files.
        ("sub", Refused(Refusal::NotRegularFile)),
        ("dir-link", Refused(Refusal::NotRegularFile)),
        ("images/builds/current", Refused(Refusal::NotRegularFile)),
        ("fifo", Refused(Refusal::NotRegularFile)),
        ("fifo-link", Refused(Refusal::NotRegularFile)),
        // Missing.
        ("missing", NotFound),
        ("sub/missing/file", NotFound),
        ("plain/x", NotFound),
    ]
}

fn methods(t: &Tree) -> Vec<Method> {
    let mut methods = vec![Method::Walk, Method::Auto];
    if openat2_available(&t.root, Path::new("plain")) {
        methods.push(Method::Openat2);
    }
    methods
}

#[test]
fn every_case_through_every_method() {
    let t = tree();
    for method in methods(&t) {
        for (rel, want) in cases() {
            assert_eq!(
                open_promptly(&t.root, rel, method),
                expected(&want),
                "{method:?}: {rel:?}"
            );
        }
    }
}

#[test]
fn nul_is_refused_lexically() {
    let t = tree();
    let rel = Path::new(OsStr::from_bytes(b"pl\0ain"));
    for method in methods(&t) {
        assert!(matches!(
            open_beneath_with(&t.root, rel, method),
            Err(ConfineError::Refused(Refusal::Nul))
        ));
    }
}

#[test]
fn root_given_through_a_symlink_is_used() {
    let t = tree();
    let alias = t.outside.join("root-alias");
    symlink(&t.root, &alias).unwrap();
    for method in methods(&t) {
        assert_eq!(
            open_promptly(&alias, "link-in", method),
            Ok(b"plain".to_vec())
        );
        assert_eq!(
            open_promptly(&alias, "link-up", method),
            expected(&Want::Refused(Refusal::OutsideRoot))
        );
    }
}

#[test]
fn missing_root_is_not_found_and_file_root_is_io() {
    let t = tree();
    assert!(matches!(
        open_beneath(&t.root.join("nope"), Path::new("plain")),
        Err(ConfineError::NotFound)
    ));
    assert!(matches!(
        open_beneath(&t.root.join("plain"), Path::new("plain")),
        Err(ConfineError::Io(_))
    ));
}

#[test]
fn regular_files_come_back_blocking() {
    let t = tree();
    for method in methods(&t) {
        let (file, _) = open_beneath_with(&t.root, Path::new("plain"), method).unwrap();
        let flags = rustix::fs::fcntl_getfl(&file).unwrap();
        assert!(!flags.contains(OFlags::NONBLOCK), "{method:?}");
        let fd_flags = rustix::io::fcntl_getfd(&file).unwrap();
        assert!(
            fd_flags.contains(rustix::io::FdFlags::CLOEXEC),
            "{method:?}"
        );
    }
}

#[test]
fn device_node_inside_the_root_is_refused() {
    let t = tree();
    let dev = t.root.join("null-dev");
    // A character device needs CAP_MKNOD (root, and not every container grants it).
    if let Err(e) = rustix::fs::mknodat(
        rustix::fs::CWD,
        &dev,
        rustix::fs::FileType::CharacterDevice,
        Mode::RUSR | Mode::WUSR,
        rustix::fs::makedev(1, 3),
    ) {
        pxeforge_tests::skip(format_args!(
            "cannot create a device node here ({e}): needs root with CAP_MKNOD"
        ));
        return;
    }
    for method in methods(&t) {
        assert_eq!(
            open_promptly(&t.root, "null-dev", method),
            expected(&Want::Refused(Refusal::NotRegularFile)),
            "{method:?}"
        );
    }
}

#[test]
fn check_relative_table() {
    let ok = ["a", "a/b", "./a", "a//b/", "..a", "a..", "a/.../b"];
    for rel in ok {
        assert_eq!(check_relative(Path::new(rel)), Ok(()), "{rel:?}");
    }
    let refused = [
        ("/a", Refusal::Absolute),
        ("//a", Refusal::Absolute),
        ("..", Refusal::ParentDir),
        ("a/../b", Refusal::ParentDir),
        ("a/..", Refusal::ParentDir),
        ("", Refusal::NotRegularFile),
        ("./.", Refusal::NotRegularFile),
    ];
    for (rel, want) in refused {
        assert_eq!(check_relative(Path::new(rel)), Err(want), "{rel:?}");
    }
    assert_eq!(
        check_relative(Path::new(OsStr::from_bytes(b"a\0"))),
        Err(Refusal::Nul)
    );
}

#[test]
fn only_unavailability_falls_back_to_the_walk() {
    for e in [
        Errno::NOSYS,
        Errno::PERM,
        Errno::TOOBIG,
        Errno::INVAL,
        Errno::AGAIN,
    ] {
        assert!(walk_instead(e), "{e:?}");
    }
    // Refusals and answers from openat2 are final: EXDEV above all.
    for e in [
        Errno::XDEV,
        Errno::LOOP,
        Errno::NOENT,
        Errno::NOTDIR,
        Errno::ACCESS,
        Errno::MFILE,
        Errno::NFILE,
    ] {
        assert!(!walk_instead(e), "{e:?}");
    }
}

#[test]
fn walk_depth_is_bounded() {
    let t = tree();
    let deep = "d/".repeat(MAX_DEPTH + 1);
    std::fs::create_dir_all(t.root.join(&deep)).unwrap();
    std::fs::write(t.root.join(format!("{deep}f")), b"deep").unwrap();
    let shallower = "d/".repeat(MAX_DEPTH);
    std::fs::write(t.root.join(format!("{shallower}f")), b"ok").unwrap();
    assert_eq!(
        open_promptly(&t.root, &format!("{shallower}f"), Method::Walk),
        Ok(b"ok".to_vec())
    );
    assert_eq!(
        open_promptly(&t.root, &format!("{deep}f"), Method::Walk),
        expected(&Want::NotFound)
    );
}
