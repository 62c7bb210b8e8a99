//! Confined opens of files under a served root (openat2 RESOLVE_BENEATH, or an O_NOFOLLOW walk).
//!
//! [`open_beneath`] opens a regular file named by a relative path under a root directory such
//! that nothing outside the root is ever opened, even while someone swaps directories and
//! symlinks under the root. Every step of the resolution is relative to a descriptor obtained in
//! the previous step; no path is checked in one system call and opened in another, because
//! between the two a directory can be exchanged for a symlink (`renameat2(RENAME_EXCHANGE)`).
//!
//! Two methods resolve the path (see [`Method`]):
//! - `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from an `O_PATH` descriptor of the root:
//!   the kernel refuses any step above the root, absolute symlinks included.
//! - Where openat2 is missing or filtered, a walk: one `openat(O_NOFOLLOW)` per component from
//!   the descriptor of the previous one. Relative symlinks are expanded by hand and their `..`
//!   resolved against the walked directories, never above the root; absolute symlinks are
//!   refused, as openat2 refuses them.
//!
//! Either way only regular files are returned: the opened descriptor is checked with fstat, and
//! it is opened with `O_NONBLOCK` so that a FIFO left in the tree never blocks the opener.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Symlinks followed in one walk before giving up, as the kernel's own limit (40): a loop ends
/// as a refusal instead of a hang.
pub const MAX_SYMLINKS: usize = 40;

/// Directories the walk holds open at once (one descriptor each, kept so that `..` can return
/// to them): a deeper path is "not found" there, as a path longer than PATH_MAX is for the
/// kernel, rather than a way to spend a server's descriptors. Served trees are far shallower.
pub const MAX_DEPTH: usize = 128;

/// Times openat2 is retried when it reports EAGAIN (a rename elsewhere raced with a `..` step
/// and the kernel could not prove confinement) before the walk takes over.
const EAGAIN_RETRIES: usize = 8;

/// Why a path is refused (as opposed to not found).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("absolute path")]
    Absolute,
    #[error("parent directory component")]
    ParentDir,
    #[error("NUL byte in path")]
    Nul,
    /// An absolute symlink, or a relative one whose `..` climbs above the root.
    #[error("path leaves the root")]
    OutsideRoot,
    /// More than [`MAX_SYMLINKS`] symlinks (a loop), or a /proc "magic" link.
    #[error("symlink loop or too many symlinks")]
    SymlinkLoop,
    /// A directory (the root itself included), FIFO, device or socket.
    #[error("not a regular file")]
    NotRegularFile,
}

/// Why a confined open failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Nothing by that name (also a missing root, or a file where a directory was needed).
    #[error("not found")]
    NotFound,
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// Anything else, e.g. EMFILE/ENFILE (out of descriptors) or EACCES: the caller decides,
    /// and must not report it as "not found".
    #[error("i/o error: {0}")]
    Io(#[source] io::Error),
}

/// How the path is resolved; [`Method::Auto`] is the one to use outside tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// openat2, falling back to the walk where the kernel lacks or filters it.
    #[default]
    Auto,
    /// openat2 only; where it is unavailable the error is [`ConfineError::Io`] (ENOSYS, EPERM,
    /// E2BIG or EINVAL).
    Openat2,
    /// The component-by-component walk only.
    Walk,
}

/// Lexical check of a requested relative path, touching no file system: no absolute path, no
/// `..` component, no NUL byte, and at least one name (the root itself is not a file).
pub fn check_relative(rel: &Path) -> Result<(), Refusal> {
    let bytes = rel.as_os_str().as_bytes();
    if bytes.contains(&0) {
        return Err(Refusal::Nul);
    }
    let mut names = 0usize;
    for component in rel.components() {
        match component {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir => return Err(Refusal::ParentDir),
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::Absolute),
        }
    }
    if names == 0 {
        return Err(Refusal::NotRegularFile);
    }
    Ok(())
}

/// Opens the regular file `rel` under `root`, never leaving `root` (see the crate docs).
/// `root` itself is trusted configuration and may be reached through symlinks.
pub fn open_beneath(root: &Path, rel: &Path) -> Result<(File, Metadata), ConfineError> {
    open_beneath_with(root, rel, Method::Auto)
}

/// [`open_beneath`] with a chosen [`Method`] (tests run every case through each).
pub fn open_beneath_with(
    root: &Path,
    rel: &Path,
    method: Method,
) -> Result<(File, Metadata), ConfineError> {
    check_relative(rel)?;
    let dir = open_root(root)?;
    let fd = match method {
        Method::Openat2 => openat2_beneath(&dir, rel).map_err(map_errno)?,
        Method::Walk => walk(&dir, rel)?,
        Method::Auto => match openat2_beneath(&dir, rel) {
            Ok(fd) => fd,
            Err(e) if walk_instead(e) => walk(&dir, rel)?,
            Err(e) => return Err(map_errno(e)),
        },
    };
    regular_file(fd)
}

/// Whether an openat2 failure means "use the walk" rather than an answer: openat2 missing
/// (ENOSYS), filtered by seccomp (EPERM), or an older `open_how` (E2BIG, EINVAL); EAGAIN after
/// the retries, since the walk does not depend on the kernel's rename seqlock. EXDEV is not
/// here: it is the kernel refusing a way out, and is final.
fn walk_instead(e: Errno) -> bool {
    [
        Errno::NOSYS,
        Errno::PERM,
        Errno::TOOBIG,
        Errno::INVAL,
        Errno::AGAIN,
    ]
    .contains(&e)
}

/// Flags of the final open. O_NONBLOCK: opening a FIFO returns at once instead of waiting for
/// a writer (the fstat then refuses it). O_NOCTTY: a terminal never becomes ours.
fn file_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

fn open_root(root: &Path) -> Result<OwnedFd, ConfineError> {
    retry_eintr(|| {
        rustix::fs::openat(
            rustix::fs::CWD,
            root,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
    })
    .map_err(|e| match e {
        Errno::NOENT => ConfineError::NotFound,
        // A root that is not a directory is a configuration error, not a missing file.
        e => ConfineError::Io(e.into()),
    })
}

fn openat2_beneath(dir: &OwnedFd, rel: &Path) -> Result<OwnedFd, Errno> {
    let mut again = 0;
    loop {
        match rustix::fs::openat2(
            dir,
            rel,
            file_flags(),
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(Errno::INTR) => {}
            Err(Errno::AGAIN) if again < EAGAIN_RETRIES => again += 1,
            other => return other,
        }
    }
}

/// The walk: one component at a time, each opened with O_NOFOLLOW relative to the directory
/// descriptor of the previous one, symlinks expanded by hand.
fn walk(root: &OwnedFd, rel: &Path) -> Result<OwnedFd, ConfineError> {
    // Names still to resolve; a symlink's target is spliced in at the front.
    let mut pending: VecDeque<OsString> = VecDeque::new();
    push_front_components(&mut pending, rel)?;
    // Directories walked below the root: `..` pops one, and cannot pop the root itself.
    let mut stack: Vec<OwnedFd> = Vec::new();
    let mut links = 0usize;
    while let Some(name) = pending.pop_front() {
        let dir = stack.last().unwrap_or(root);
        if name == ".." {
            if stack.pop().is_none() {
                return Err(Refusal::OutsideRoot.into());
            }
            continue;
        }
        let last = pending.is_empty();
        let target = if last {
            match retry_eintr(|| {
                rustix::fs::openat(
                    dir,
                    name.as_os_str(),
                    file_flags() | OFlags::NOFOLLOW,
                    Mode::empty(),
                )
            }) {
                Ok(fd) => return Ok(fd),
                // O_NOFOLLOW on a symlink. Its target is read from the same directory
                // descriptor and resolved afresh from there, so a swap in between gains
                // nothing; if it is no longer a symlink, the name is looked up again.
                Err(Errno::LOOP) => {
                    match rustix::fs::readlinkat(dir, name.as_os_str(), Vec::new()) {
                        Ok(target) => target,
                        Err(Errno::INVAL) => {
                            count_link(&mut links)?;
                            pending.push_front(name);
                            continue;
                        }
                        Err(e) => return Err(map_errno(e)),
                    }
                }
                Err(e) => return Err(map_errno(e)),
            }
        } else {
            // An intermediate name is opened with O_PATH (needs only search permission and
            // opens nothing) without following it, then its type is read from the descriptor:
            // what is checked is what was opened, and a symlink's target is read from that
            // same inode (readlinkat with an empty path).
            let fd = retry_eintr(|| {
                rustix::fs::openat(
                    dir,
                    name.as_os_str(),
                    OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
            })
            .map_err(map_errno)?;
            let kind = rustix::fs::FileType::from_raw_mode(
                rustix::fs::fstat(&fd)
                    .map_err(|e| ConfineError::Io(e.into()))?
                    .st_mode,
            );
            match kind {
                rustix::fs::FileType::Directory if stack.len() < MAX_DEPTH => {
                    stack.push(fd);
                    continue;
                }
                rustix::fs::FileType::Directory => return Err(ConfineError::NotFound),
                rustix::fs::FileType::Symlink => {
                    rustix::fs::readlinkat(&fd, "", Vec::new()).map_err(map_errno)?
                }
                // A file where a directory is needed: no such path, as ENOTDIR.
                _ => return Err(ConfineError::NotFound),
            }
        };
        count_link(&mut links)?;
        let target = Path::new(OsStr::from_bytes(target.as_bytes()));
        if target.as_os_str().is_empty() {
            // As the kernel: an empty symlink resolves to nothing.
            return Err(ConfineError::NotFound);
        }
        if target.is_absolute() {
            // An absolute target names the host's tree, not the root's; openat2 refuses it
            // with EXDEV, and so does the walk.
            return Err(Refusal::OutsideRoot.into());
        }
        push_front_components(&mut pending, target)?;
    }
    // The names ran out on a `..` or a symlink such as `x -> .`: the path names a directory.
    Err(Refusal::NotRegularFile.into())
}

/// Counts one more symlink (or one more look at a name that changed under us): past
/// [`MAX_SYMLINKS`] the walk ends, so a loop is a refusal instead of a hang.
fn count_link(links: &mut usize) -> Result<(), Refusal> {
    *links += 1;
    if *links > MAX_SYMLINKS {
        return Err(Refusal::SymlinkLoop);
    }
    Ok(())
}

/// Puts the components of a relative path at the front of `pending`, in order; `.` dropped.
fn push_front_components(pending: &mut VecDeque<OsString>, path: &Path) -> Result<(), Refusal> {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => parts.push(part.to_os_string()),
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(Refusal::OutsideRoot),
        }
    }
    for part in parts.into_iter().rev() {
        pending.push_front(part);
    }
    Ok(())
}

/// Keeps the descriptor only if it is a regular file.
fn regular_file(fd: OwnedFd) -> Result<(File, Metadata), ConfineError> {
    let file = File::from(fd);
    let metadata = file.metadata().map_err(ConfineError::Io)?;
    if !metadata.is_file() {
        return Err(Refusal::NotRegularFile.into());
    }
    // O_NONBLOCK was only for the open; cleared so that readers on file systems that honour it
    // for regular files (FUSE, some network file systems) never see EAGAIN. F_SETFL touches
    // only O_APPEND, O_ASYNC, O_DIRECT, O_NOATIME and O_NONBLOCK, none of which we want.
    rustix::fs::fcntl_setfl(&file, OFlags::empty()).map_err(|e| ConfineError::Io(e.into()))?;
    Ok((file, metadata))
}

fn map_errno(e: Errno) -> ConfineError {
    match e {
        // ENOTDIR: a file where a directory was needed, so no such path.
        Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG => ConfineError::NotFound,
        // openat2: a step above the root or an absolute symlink.
        Errno::XDEV => Refusal::OutsideRoot.into(),
        Errno::LOOP => Refusal::SymlinkLoop.into(),
        e => ConfineError::Io(e.into()),
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match f() {
            Err(Errno::INTR) => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests;
