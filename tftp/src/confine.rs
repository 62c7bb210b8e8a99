//! Confinement of requested names to the TFTP root.
//!
//! Two stages: [`check_name`] is a pure decision on the requested bytes (no `..`, no absolute
//! paths, no backslashes, no percent-encoded tricks, no NUL or control bytes); [`open_confined`]
//! then opens the name on disk through `pxeforge-confine`, which resolves it beneath the root
//! from a directory descriptor (openat2 `RESOLVE_BENEATH`, or an `O_NOFOLLOW` walk), so that no
//! symlink swapped in at any moment leads out of the root, and refuses anything that is not a
//! regular file.

use std::ffi::OsStr;
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use pxeforge_confine::{open_beneath, ConfineError};

/// Why a requested name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("absolute path")]
    Absolute,
    #[error("parent directory component")]
    ParentDir,
    #[error("backslash in name")]
    Backslash,
    #[error("percent-encoded path characters")]
    PercentEncoded,
    #[error("NUL or control byte in name")]
    ControlByte,
    #[error("name too long")]
    TooLong,
    #[error("path leaves the root")]
    OutsideRoot,
    #[error("not a regular file")]
    NotRegularFile,
    #[error("symlink loop or too many symlinks")]
    SymlinkLoop,
}

/// Longest name accepted (names in a TFTP request are short).
pub const MAX_NAME_LEN: usize = 1024;

/// Decides whether a requested name may be looked up under the root; returns it as a relative
/// path. Pure: touches no file system.
pub fn check_name(raw: &[u8]) -> Result<PathBuf, Refusal> {
    if raw.len() > MAX_NAME_LEN {
        return Err(Refusal::TooLong);
    }
    if raw.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(Refusal::ControlByte);
    }
    if raw.contains(&b'\\') {
        return Err(Refusal::Backslash);
    }
    // TFTP names are not URLs, but some front ends decode them: refuse encodings of the
    // characters that matter for confinement instead of guessing who decodes what.
    if contains_encoded_path_char(raw) {
        return Err(Refusal::PercentEncoded);
    }
    if raw.first() == Some(&b'/') {
        return Err(Refusal::Absolute);
    }
    let path = Path::new(OsStr::from_bytes(raw));
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Refusal::NotRegularFile);
    }
    Ok(out)
}

fn contains_encoded_path_char(raw: &[u8]) -> bool {
    raw.windows(3).any(|w| {
        w[0] == b'%'
            && match (hex(w[1]), hex(w[2])) {
                (Some(hi), Some(lo)) => matches!(hi * 16 + lo, b'.' | b'/' | b'\\' | 0 | b'%'),
                _ => false,
            }
    })
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Why a file could not be opened for a client.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    #[error("not found")]
    NotFound,
    #[error("permission denied")]
    PermissionDenied,
    /// EMFILE/ENFILE: the process (or the system) has no descriptor left. The file may well
    /// exist, so the client is told the server is busy (and may retry), never "file not found".
    #[error("out of file descriptors: {0}")]
    OutOfDescriptors(io::Error),
    /// Anything else: never reported to the client as "file not found".
    #[error("i/o error: {0}")]
    Io(io::Error),
}

/// Whether `err` is EMFILE or ENFILE: no descriptor left for the process or the system, a
/// passing condition that is answered "busy".
pub fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

impl From<ConfineError> for OpenError {
    fn from(err: ConfineError) -> Self {
        use pxeforge_confine::Refusal as R;
        match err {
            ConfineError::NotFound => OpenError::NotFound,
            ConfineError::Refused(refusal) => OpenError::Refused(match refusal {
                R::Absolute => Refusal::Absolute,
                R::ParentDir => Refusal::ParentDir,
                R::Nul => Refusal::ControlByte,
                R::OutsideRoot => Refusal::OutsideRoot,
                R::SymlinkLoop => Refusal::SymlinkLoop,
                R::NotRegularFile => Refusal::NotRegularFile,
            }),
            ConfineError::Io(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                OpenError::PermissionDenied
            }
            ConfineError::Io(e) if out_of_descriptors(&e) => OpenError::OutOfDescriptors(e),
            ConfineError::Io(e) => OpenError::Io(e),
        }
    }
}

/// An opened regular file inside the root.
#[derive(Debug)]
pub struct Opened {
    pub file: File,
    pub metadata: Metadata,
    /// Where the opened file is, symlinks resolved (the key of the memory cache).
    pub path: PathBuf,
}

/// Opens `name` (already checked by [`check_name`]) under `root`: canonical, or a symlink in a
/// canonical folder (followed at each open, see `session::canonical_root`).
pub fn open_confined(root: &Path, name: &Path) -> Result<Opened, OpenError> {
    let (file, metadata) = open_beneath(root, name)?;
    let path = opened_path(root, name, &file);
    Ok(Opened {
        file,
        metadata,
        path,
    })
}

/// The path of the opened file as the kernel knows it, so that `current/ipxe.efi` and
/// `build-1/ipxe.efi` share one cache entry. Read from the descriptor, never looked up again by
/// name; and only a cache key: the cache compares the opened file's own stamp (device, inode,
/// size, mtime) before serving from memory, so a wrong key can only cost a reload. Without
/// /proc, the requested name is the key.
fn opened_path(root: &Path, name: &Path, file: &File) -> PathBuf {
    std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
        .filter(|p| p.starts_with(root))
        .unwrap_or_else(|| root.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        assert_eq!(check_name(b"ipxe.efi").unwrap(), PathBuf::from("ipxe.efi"));
        assert_eq!(check_name(b"./a/b.efi").unwrap(), PathBuf::from("a/b.efi"));
        assert_eq!(check_name(b"a//b").unwrap(), PathBuf::from("a/b"));
        assert_eq!(
            check_name(b"file%20name").unwrap(),
            PathBuf::from("file%20name")
        );
        assert_eq!(check_name(b"..foo").unwrap(), PathBuf::from("..foo"));
    }

    #[test]
    fn escapes_are_refused() {
        let cases: &[(&[u8], Refusal)] = &[
            (b"../etc/passwd", Refusal::ParentDir),
            (b"a/../../etc/passwd", Refusal::ParentDir),
            (b"a/..", Refusal::ParentDir),
            (b"/etc/passwd", Refusal::Absolute),
            (b"..\\..\\etc\\passwd", Refusal::Backslash),
            (b"C:\\boot.ini", Refusal::Backslash),
            (b"%2e%2e/etc/passwd", Refusal::PercentEncoded),
            (b"%2E%2E%2Fetc%2Fpasswd", Refusal::PercentEncoded),
            (b"..%2fetc", Refusal::PercentEncoded),
            (b"a%00b", Refusal::PercentEncoded),
            (b"a%5c..", Refusal::PercentEncoded),
            (b"%252e%252e/etc", Refusal::PercentEncoded),
            (b"a\x00b", Refusal::ControlByte),
            (b"a\nb", Refusal::ControlByte),
            (b".", Refusal::NotRegularFile),
        ];
        for (name, want) in cases {
            assert_eq!(
                check_name(name),
                Err(*want),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        assert_eq!(check_name(&[b'a'; 2000]), Err(Refusal::TooLong));
    }

    #[test]
    fn symlinks_out_of_root_devices_and_dirs_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"s").unwrap();
        let root = tempfile::tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        std::fs::write(r.join("ok"), b"fine").unwrap();
        std::fs::create_dir(r.join("dir")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), r.join("out")).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("outdir")).unwrap();
        std::os::unix::fs::symlink("ok", r.join("inside")).unwrap();
        std::os::unix::fs::symlink("/dev/zero", r.join("zero")).unwrap();

        assert!(open_confined(&r, Path::new("ok")).is_ok());
        assert_eq!(
            open_confined(&r, Path::new("inside")).unwrap().path,
            r.join("ok")
        );
        for name in ["out", "outdir/secret", "zero"] {
            assert!(
                matches!(
                    open_confined(&r, Path::new(name)),
                    Err(OpenError::Refused(Refusal::OutsideRoot))
                ),
                "{name}"
            );
        }
        assert!(matches!(
            open_confined(&r, Path::new("dir")),
            Err(OpenError::Refused(Refusal::NotRegularFile))
        ));
        assert!(matches!(
            open_confined(&r, Path::new("missing")),
            Err(OpenError::NotFound)
        ));
    }

    #[test]
    fn fifo_does_not_hang_and_is_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        nix::unistd::mkfifo(&r.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(matches!(
            open_confined(&r, Path::new("fifo")),
            Err(OpenError::Refused(Refusal::NotRegularFile))
        ));
    }

    #[test]
    fn out_of_descriptors_is_not_not_found() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            let err = OpenError::from(ConfineError::Io(io::Error::from_raw_os_error(errno)));
            assert!(
                matches!(&err, OpenError::OutOfDescriptors(e) if e.raw_os_error() == Some(errno)),
                "{err:?}"
            );
        }
        assert!(matches!(
            OpenError::from(ConfineError::Io(io::Error::from_raw_os_error(libc::EACCES))),
            OpenError::PermissionDenied
        ));
        assert!(matches!(
            OpenError::from(ConfineError::Io(io::Error::from_raw_os_error(libc::EIO))),
            OpenError::Io(_)
        ));
    }

    #[test]
    fn symlinked_build_directory_shares_the_cache_key() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path().canonicalize().unwrap();
        std::fs::create_dir_all(r.join("img/build-1")).unwrap();
        std::fs::write(r.join("img/build-1/ipxe.efi"), b"x").unwrap();
        std::os::unix::fs::symlink("build-1", r.join("img/current")).unwrap();
        let opened = open_confined(&r, Path::new("img/current/ipxe.efi")).unwrap();
        assert_eq!(opened.path, r.join("img/build-1/ipxe.efi"));
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn accepted_names_stay_relative(raw in proptest::collection::vec(any::<u8>(), 0..1500)) {
                if let Ok(path) = check_name(&raw) {
                    prop_assert!(path.is_relative());
                    prop_assert!(path.components().all(|c| matches!(c, Component::Normal(_))));
                }
            }

            #[test]
            fn dotdot_anywhere_is_refused(prefix in "[a-z/]{0,10}", suffix in "[a-z/]{0,10}") {
                let name = format!("{prefix}/../{suffix}");
                prop_assert!(check_name(name.as_bytes()).is_err());
            }
        }
    }
}
