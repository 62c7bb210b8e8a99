//! Filesystem helpers: fsync of files and directory trees, directory creation that is durable,
//! streaming sha256, flock, and random names for temporaries.

use crate::error::{io, StoreError};
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::Path;

/// fsyncs a directory, making the entries created, renamed or removed in it durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io(dir))
}

/// fsyncs every regular file and every directory under `root` (children before their
/// directory, `root` last) and returns the `/`-separated relative names of the regular files,
/// sorted. Anything else (symlink, device, fifo, socket, a name that is not UTF-8) is refused:
/// items hold plain files only, so every byte served is one that `SHA256SUMS` vouches for.
pub fn fsync_tree(root: &Path) -> Result<Vec<String>, StoreError> {
    let mut files = Vec::new();
    sync_dir_rec(root, "", &mut files)?;
    files.sort();
    Ok(files)
}

fn sync_dir_rec(dir: &Path, prefix: &str, files: &mut Vec<String>) -> Result<(), StoreError> {
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let e = e.map_err(io(dir))?;
        let path = e.path();
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            return Err(StoreError::invalid(path, "file name is not UTF-8"));
        };
        let rel = format!("{prefix}{name}");
        let t = e.file_type().map_err(io(&path))?;
        if t.is_dir() {
            sync_dir_rec(&path, &format!("{rel}/"), files)?;
        } else if t.is_file() {
            File::open(&path)
                .and_then(|f| f.sync_all())
                .map_err(io(&path))?;
            files.push(rel);
        } else {
            return Err(StoreError::invalid(
                path,
                "not a regular file or directory (items hold plain files only)",
            ));
        }
    }
    fsync_dir(dir)
}

/// `create_dir_all` that fsyncs the parent of every directory it creates, so a published item
/// cannot lose its key directories in a crash.
pub(crate) fn create_dir_all_synced(dir: &Path) -> Result<(), StoreError> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => return Err(StoreError::invalid(dir, "exists and is not a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(dir)(e)),
    }
    let parent = match dir.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => return Err(StoreError::invalid(dir, "cannot be created")),
    };
    create_dir_all_synced(parent)?;
    match std::fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        // Someone else created it meanwhile; they fsync its parent.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Size and lowercase hex sha256 of a file, read in 1 MiB chunks (images are gigabytes).
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((n, hex::encode(h.finalize())))
}

/// Takes an exclusive flock on `f` (opened from `path`). Waits when `wait`, else returns
/// `Ok(None)` when someone else holds it. The lock lives as long as the returned value (closing
/// the file, also by process death, releases it).
pub(crate) fn flock(f: File, path: &Path, wait: bool) -> Result<Option<Flock<File>>, StoreError> {
    let arg = if wait {
        FlockArg::LockExclusive
    } else {
        FlockArg::LockExclusiveNonblock
    };
    let mut f = f;
    loop {
        match Flock::lock(f, arg) {
            Ok(l) => return Ok(Some(l)),
            // A signal handler ran while waiting; wait again.
            Err((back, Errno::EINTR)) => f = back,
            Err((_, Errno::EWOULDBLOCK)) if !wait => return Ok(None),
            Err((_, e)) => return Err(io(path)(std::io::Error::from(e))),
        }
    }
}

/// Opens (creating, mode 0644) the file at `path` and takes an exclusive flock on it without
/// waiting: `Ok(None)` when another process holds it. The lock lives as long as the returned
/// value, and ends with the process however it exits.
pub fn try_lock_file(path: &Path) -> Result<Option<Flock<File>>, StoreError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io(path))?;
    flock(f, path, false)
}

/// 16 hex digits for temporary names. Not secret, only unlikely to collide; every user creates
/// the name exclusively (mkdir, symlink) and retries on a collision.
pub(crate) fn random_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_known_vector() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("abc");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(
            hash_file(&p).unwrap(),
            (
                3,
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string()
            )
        );
    }

    #[test]
    fn tree_lists_files_and_refuses_symlinks() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("images/pxeboot")).unwrap();
        std::fs::create_dir_all(d.path().join("empty")).unwrap();
        std::fs::write(d.path().join("images/pxeboot/vmlinuz"), b"k").unwrap();
        std::fs::write(d.path().join(".treeinfo"), b"t").unwrap();
        assert_eq!(
            fsync_tree(d.path()).unwrap(),
            [".treeinfo", "images/pxeboot/vmlinuz"]
        );
        std::os::unix::fs::symlink("/etc/passwd", d.path().join("images/link")).unwrap();
        let e = fsync_tree(d.path()).unwrap_err();
        assert_eq!(e.path(), d.path().join("images/link"));
    }

    #[test]
    fn dirs_created_with_parents() {
        let d = tempfile::tempdir().unwrap();
        let deep = d.path().join("a/b/c");
        create_dir_all_synced(&deep).unwrap();
        assert!(deep.is_dir());
        create_dir_all_synced(&deep).unwrap();
        std::fs::write(d.path().join("f"), b"").unwrap();
        assert!(create_dir_all_synced(&d.path().join("f")).is_err());
    }
}
