//! Key directories and items: publishing by rename, the `current` pointer, listing, gc and the
//! cleanup of temporaries left by dead processes.

use crate::error::{io, StoreError};
use crate::fsutil::{create_dir_all_synced, flock, fsync_dir, fsync_tree, random_suffix};
use crate::sums::read_sums;
use crate::{valid_id, valid_name, CURRENT, CURRENT_TMP_PREFIX, LOCK, SUMS, TMP};
use nix::fcntl::{Flock, RenameFlags};
use std::fs::File;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// A store: `root/<key path>/<item-id>/`, the key path `key_depth` names deep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Store {
    root: PathBuf,
    key_depth: usize,
}

/// One published item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The names of the key path (`[recipe, profile]` for images).
    pub key: Vec<String>,
    pub id: String,
    /// The item directory.
    pub dir: PathBuf,
    /// Whether `current` of its key directory names it.
    pub is_current: bool,
    /// When it was published: the item directory's mtime, which publishing sets (items are
    /// immutable afterwards, so nothing moves it). gc keeps the newest by this.
    pub published: SystemTime,
}

/// How [`Staging::publish`] treats an item that is already published under the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishOptions {
    /// Swap the new item in atomically (`renameat2(RENAME_EXCHANGE)`) instead of keeping the
    /// published one: for repairing an item `verify` found damaged. Same id, same content, so
    /// readers never see a difference.
    pub replace: bool,
    /// Point `current` at the item, under the same lock as the rename.
    pub set_current: bool,
}

impl Default for PublishOptions {
    fn default() -> Self {
        PublishOptions {
            replace: false,
            set_current: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishOutcome {
    /// Renamed into place.
    New,
    /// An item with this id was already published; ids name content, so the new one was
    /// discarded and the published one left untouched.
    AlreadyPresent,
    /// The published item was swapped for the new one ([`PublishOptions::replace`]).
    Replaced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The item directory, `<key dir>/<id>`.
    pub dir: PathBuf,
    pub outcome: PublishOutcome,
}

/// The exclusive lock of a store root (`flock` on `<root>/.lock`), released when dropped.
///
/// flock belongs to the open file, not to the process: a second `Store::lock()` of the same
/// store from the thread holding this one waits forever. Use the methods of the guard instead.
pub struct StoreLock {
    store: Store,
    _lock: Flock<File>,
}

impl StoreLock {
    /// [`Store::set_current`] under this lock.
    pub fn set_current(&self, dir: &Path, id: &str) -> Result<(), StoreError> {
        self.store.set_current_locked(dir, id)
    }
}

/// A temporary directory `<root>/.tmp/<prefix><random>/` to assemble an item in.
///
/// Build the item in [`Staging::out`]; [`Staging::path`] may hold any scratch files besides.
/// The directory is flock'ed for its whole life, which is how cleanup tells a live one from a
/// leftover of a dead process. Dropping it (published or not) removes it.
pub struct Staging {
    store: Store,
    path: PathBuf,
    out: PathBuf,
    _lock: Flock<File>,
}

impl std::fmt::Debug for Staging {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staging").field("path", &self.path).finish()
    }
}

impl Store {
    pub fn new(root: impl Into<PathBuf>, key_depth: usize) -> Store {
        Store {
            root: root.into(),
            key_depth,
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn key_depth(&self) -> usize {
        self.key_depth
    }

    /// `<root>/.tmp`, where temporaries live.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join(TMP)
    }

    /// The key directory of `key`, or None unless `key` is `key_depth` valid names.
    pub fn key_dir(&self, key: &[&str]) -> Option<PathBuf> {
        (key.len() == self.key_depth && key.iter().all(|k| valid_name(k)))
            .then(|| key.iter().fold(self.root.clone(), |p, k| p.join(k)))
    }

    /// The key of a key directory; refuses any other path, so that publish, set_current and gc
    /// only ever touch what belongs to this store.
    fn key_of(&self, dir: &Path) -> Result<Vec<String>, StoreError> {
        let bad = |m: &str| StoreError::invalid(dir, m.to_string());
        let rel = dir
            .strip_prefix(&self.root)
            .map_err(|_| bad(&format!("not inside the store {}", self.root.display())))?;
        let key: Vec<String> = rel
            .components()
            .map(|c| match c {
                Component::Normal(n) => n.to_str().filter(|n| valid_name(n)).map(str::to_string),
                _ => None,
            })
            .collect::<Option<_>>()
            .ok_or_else(|| bad("not a key directory of the store (invalid name)"))?;
        if key.len() != self.key_depth {
            return Err(bad(&format!(
                "not a key directory of the store ({} names deep, expected {})",
                key.len(),
                self.key_depth
            )));
        }
        Ok(key)
    }

    /// Takes the store's exclusive lock, creating the root if needed. Publishing, set_current,
    /// gc and stale cleanup hold it, so a gc never removes an item that a publish is pointing
    /// `current` at, and cleanup never sees a temporary before its owner has locked it.
    pub fn lock(&self) -> Result<StoreLock, StoreError> {
        create_dir_all_synced(&self.root)?;
        let path = self.root.join(LOCK);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io(&path))?;
        let l =
            flock(f, &path, true)?.ok_or_else(|| StoreError::invalid(&path, "lock not granted"))?;
        Ok(StoreLock {
            store: self.clone(),
            _lock: l,
        })
    }

    /// A new temporary directory to assemble an item in (see [`Staging`]). `prefix` is a
    /// [`valid_name`], e.g. `build-`.
    pub fn staging(&self, prefix: &str) -> Result<Staging, StoreError> {
        let lock = self.lock()?;
        let s = self.staging_locked(prefix);
        drop(lock);
        s
    }

    /// Creates and locks a temporary; the caller holds the store lock, so no cleanup can see the
    /// directory between its mkdir and its flock.
    fn staging_locked(&self, prefix: &str) -> Result<Staging, StoreError> {
        let tmp = self.tmp_dir();
        if !valid_name(prefix) {
            return Err(StoreError::invalid(
                tmp.join(prefix),
                "invalid temporary name prefix",
            ));
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let mut tries = 0;
        let path = loop {
            let p = tmp.join(format!("{prefix}{}", random_suffix()));
            match std::fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(io(&p)(e)),
            }
        };
        let setup = || -> Result<Staging, StoreError> {
            let f = File::open(&path).map_err(io(&path))?;
            let lock = flock(f, &path, false)?.ok_or_else(|| {
                StoreError::invalid(&path, "a new temporary is locked by someone else")
            })?;
            let out = path.join("out");
            std::fs::create_dir(&out).map_err(io(&out))?;
            Ok(Staging {
                store: self.clone(),
                path: path.clone(),
                out,
                _lock: lock,
            })
        };
        setup().inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&path);
        })
    }

    /// Points `current` of key directory `dir` at the published item `id`, atomically: a
    /// relative symlink `current.tmp-XXXX` renamed over `current`, then `dir` fsynced. Readers
    /// see the old or the new target, never no `current`. Takes the store lock.
    pub fn set_current(&self, dir: &Path, id: &str) -> Result<(), StoreError> {
        self.lock()?.set_current(dir, id)
    }

    fn set_current_locked(&self, dir: &Path, id: &str) -> Result<(), StoreError> {
        self.key_of(dir)?;
        let item = dir.join(id);
        if !valid_id(id) {
            return Err(StoreError::invalid(item, "not a valid item id"));
        }
        if !item.join(SUMS).is_file() {
            return Err(StoreError::invalid(item, "no published item here"));
        }
        let mut tries = 0;
        let tmp = loop {
            let t = dir.join(format!("{CURRENT_TMP_PREFIX}{}", random_suffix()));
            // Relative, so the store can be moved or mounted elsewhere.
            match std::os::unix::fs::symlink(id, &t) {
                Ok(()) => break t,
                Err(e) if e.kind() == ErrorKind::AlreadyExists && tries < 100 => tries += 1,
                Err(e) => return Err(io(&t)(e)),
            }
        };
        let cur = dir.join(CURRENT);
        if let Err(e) = std::fs::rename(&tmp, &cur) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&cur)(e));
        }
        fsync_dir(dir)
    }

    /// Every key directory, sorted by key.
    pub fn key_dirs(&self) -> Vec<(Vec<String>, PathBuf)> {
        let mut level = vec![(Vec::new(), self.root.clone())];
        for _ in 0..self.key_depth {
            level = level
                .into_iter()
                .flat_map(|(key, dir)| {
                    subdirs(&dir).into_iter().map(move |(n, p)| {
                        let mut k = key.clone();
                        k.push(n);
                        (k, p)
                    })
                })
                .collect();
        }
        level
    }

    /// The published items of key directory `dir` (directories with a valid id holding a
    /// `SHA256SUMS`), newest first; empty when `dir` is not a key directory of this store.
    pub fn items(&self, dir: &Path) -> Vec<Item> {
        let Ok(key) = self.key_of(dir) else {
            return Vec::new();
        };
        let cur = current(dir);
        let mut v: Vec<Item> = subdirs(dir)
            .into_iter()
            .filter(|(id, p)| valid_id(id) && p.join(SUMS).is_file())
            .map(|(id, p)| Item {
                key: key.clone(),
                is_current: cur.as_deref() == Some(id.as_str()),
                published: std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH),
                id,
                dir: p,
            })
            .collect();
        v.sort_by(|a, b| b.published.cmp(&a.published).then(a.id.cmp(&b.id)));
        v
    }

    /// Every published item, by key, then newest first.
    pub fn list(&self) -> Vec<Item> {
        self.key_dirs()
            .into_iter()
            .flat_map(|(_, d)| self.items(&d))
            .collect()
    }

    /// Removes all but the newest `keep` items of key directory `dir`; the item `current` names
    /// is never removed, whatever `keep`. Returns the removed item directories.
    ///
    /// Under the store lock the victims are renamed into a temporary (so no half-deleted item is
    /// ever visible) and stale `current.tmp-*` links are dropped; the deleting itself happens
    /// after the lock is released.
    pub fn gc(&self, dir: &Path, keep: usize) -> Result<Vec<PathBuf>, StoreError> {
        self.gc_with(dir, keep, &|_| false)
    }

    /// [`Store::gc`], also sparing every item `spare` says to keep (e.g. one a host is pinned
    /// to); decided under the store lock, so a publish in between is seen.
    pub fn gc_with(
        &self,
        dir: &Path,
        keep: usize,
        spare: &dyn Fn(&Item) -> bool,
    ) -> Result<Vec<PathBuf>, StoreError> {
        self.key_of(dir)?;
        if !dir.is_dir() {
            return Ok(Vec::new());
        }
        let lock = self.lock()?;
        // set_current holds the lock from symlink to rename, so any such link now is a leftover.
        for e in std::fs::read_dir(dir).map_err(io(dir))?.flatten() {
            if e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(CURRENT_TMP_PREFIX))
                && e.file_type().is_ok_and(|t| t.is_symlink())
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let victims: Vec<Item> = self
            .items(dir)
            .into_iter()
            .enumerate()
            .filter(|(n, it)| *n >= keep && !it.is_current && !spare(it))
            .map(|(_, it)| it)
            .collect();
        if victims.is_empty() {
            return Ok(Vec::new());
        }
        let trash = self.staging_locked("gc-")?;
        let mut removed = Vec::new();
        for v in victims {
            let to = trash.path().join(&v.id);
            std::fs::rename(&v.dir, &to).map_err(io(&v.dir))?;
            removed.push(v.dir);
        }
        fsync_dir(dir)?;
        drop(lock);
        trash.remove()?;
        Ok(removed)
    }

    /// Stale temporaries cleaned, then [`Store::gc`] of every key directory.
    pub fn gc_all(&self, keep: usize) -> Result<Vec<PathBuf>, StoreError> {
        if !self.root.is_dir() {
            return Ok(Vec::new());
        }
        self.clean_stale_tmp()?;
        let mut removed = Vec::new();
        for (_, d) in self.key_dirs() {
            removed.extend(self.gc(&d, keep)?);
        }
        Ok(removed)
    }

    /// Removes the temporaries whose owner is gone (a build killed mid-way, a crash): every
    /// entry of `.tmp` whose flock is free. Live temporaries are locked by their owner; process
    /// ids are never consulted (they get reused). Returns what was removed.
    pub fn clean_stale_tmp(&self) -> Result<Vec<PathBuf>, StoreError> {
        let tmp = self.tmp_dir();
        if !tmp.is_dir() {
            return Ok(Vec::new());
        }
        let mut claimed = Vec::new();
        let mut removed = Vec::new();
        {
            // Owners create and lock their temporaries under this lock, so none is seen unlocked.
            let _lock = self.lock()?;
            for e in std::fs::read_dir(&tmp).map_err(io(&tmp))? {
                let e = e.map_err(io(&tmp))?;
                let path = e.path();
                if e.file_type().map_err(io(&path))?.is_dir() {
                    let f = match File::open(&path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(io(&path)(e)),
                    };
                    if let Some(l) = flock(f, &path, false)? {
                        // Holding its lock claims it: no other cleaner will touch it, so it can
                        // be deleted after the store lock is released.
                        claimed.push((path, l));
                    }
                } else {
                    // Only directories belong here.
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed.push(path),
                        Err(e) if e.kind() == ErrorKind::NotFound => {}
                        Err(e) => return Err(io(&path)(e)),
                    }
                }
            }
        }
        for (path, lock) in claimed {
            tracing::info!(path = %path.display(), "removing a stale temporary");
            match std::fs::remove_dir_all(&path) {
                Ok(()) => removed.push(path),
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
            drop(lock);
        }
        Ok(removed)
    }
}

impl Staging {
    /// The temporary directory; scratch files may go anywhere in it besides [`Staging::out`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The item being assembled: its files, subdirectories and `SHA256SUMS`.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// Publishes [`Staging::out`] as item `id` of key directory `dir`.
    ///
    /// `out/SHA256SUMS` must list exactly the regular files of `out` (nothing else may be in
    /// it). Every file and directory of `out` is fsynced and `out`'s mtime set to now (the
    /// publish time gc orders by) before the store lock is taken; then one rename to
    /// `<dir>/<id>`, an fsync of `dir` and, if asked, `current` moved, all under the lock. An
    /// item already published under `id` is the same content: it is kept and this one
    /// discarded, unless [`PublishOptions::replace`] asks to swap it in.
    pub fn publish(
        self,
        dir: &Path,
        id: &str,
        opts: PublishOptions,
    ) -> Result<Published, StoreError> {
        self.store.key_of(dir)?;
        let dest = dir.join(id);
        if !valid_id(id) {
            return Err(StoreError::invalid(dest, "not a valid item id"));
        }
        let sums_path = self.out.join(SUMS);
        let sums = read_sums(&sums_path)?;
        // Before the fsyncs, so that the directory's new mtime is made durable with it.
        File::open(&self.out)
            .and_then(|f| f.set_modified(SystemTime::now()))
            .map_err(io(&self.out))?;
        // The slow part (gigabytes may still be in the page cache) stays outside the lock.
        let files = fsync_tree(&self.out)?;
        check_listed(&sums_path, &sums, &files)?;

        let lock = self.store.lock()?;
        create_dir_all_synced(dir)?;
        let outcome = match std::fs::symlink_metadata(&dest) {
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::rename(&self.out, &dest).map_err(io(&dest))?;
                PublishOutcome::New
            }
            Err(e) => return Err(io(&dest)(e)),
            // A directory without SHA256SUMS is no published item (only a hand-made mess can
            // be there); replacing it is the only way forward.
            Ok(_) if !opts.replace && dest.join(SUMS).is_file() => {
                if read_sums(&dest.join(SUMS)).ok().as_ref() != Some(&sums) {
                    tracing::warn!(item = %dest.display(), "already published with other checksums; kept as it is");
                }
                PublishOutcome::AlreadyPresent
            }
            Ok(_) => {
                self.exchange(&dest)?;
                PublishOutcome::Replaced
            }
        };
        fsync_dir(dir)?;
        if opts.set_current {
            lock.set_current(dir, id)?;
        }
        drop(lock);
        // `self` drops here: the temporary goes, with the replaced item if any.
        Ok(Published { dir: dest, outcome })
    }

    /// Swaps `out` and the published `dest` in one step; the old item lands in `out`.
    fn exchange(&self, dest: &Path) -> Result<(), StoreError> {
        match nix::fcntl::renameat2(None, &self.out, None, dest, RenameFlags::RENAME_EXCHANGE) {
            Ok(()) => Ok(()),
            // Filesystems without RENAME_EXCHANGE: two renames, `dest` briefly absent.
            Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOSYS) => {
                let old = self.path.join("replaced");
                std::fs::rename(dest, &old).map_err(io(dest))?;
                std::fs::rename(&self.out, dest).map_err(io(dest))
            }
            Err(e) => Err(io(dest)(std::io::Error::from(e))),
        }
    }

    /// Removes the temporary now, reporting a failure (dropping it only logs one).
    pub fn remove(self) -> Result<(), StoreError> {
        let r = std::fs::remove_dir_all(&self.path);
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.path)(e)),
        }
        // Drop then finds nothing left to remove.
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Runs before the fields drop, so the directory is still locked while it is removed.
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "could not remove a temporary")
            }
        }
    }
}

/// Refuses an item whose `SHA256SUMS` does not list exactly its files: verify would report it.
fn check_listed(sums_path: &Path, sums: &crate::Sums, files: &[String]) -> Result<(), StoreError> {
    let unlisted: Vec<&str> = files
        .iter()
        .map(String::as_str)
        .filter(|f| *f != SUMS && !sums.contains(f))
        .collect();
    let missing: Vec<&str> = sums
        .names()
        .filter(|n| files.binary_search_by(|f| f.as_str().cmp(n)).is_err())
        .collect();
    if unlisted.is_empty() && missing.is_empty() {
        return Ok(());
    }
    let mut m = Vec::new();
    if !unlisted.is_empty() {
        m.push(format!("files not listed: {}", unlisted.join(", ")));
    }
    if !missing.is_empty() {
        m.push(format!(
            "listed but not regular files: {}",
            missing.join(", ")
        ));
    }
    Err(StoreError::invalid(sums_path, m.join("; ")))
}

/// The item id `current` of key directory `dir` names (one readlink), if it is a valid id.
pub fn current(dir: &Path) -> Option<String> {
    let t = std::fs::read_link(dir.join(CURRENT)).ok()?;
    let t = t.to_str()?;
    valid_id(t).then(|| t.to_string())
}

/// The directory of a published item of key directory `dir`; `id_or_current` is an item id or
/// `current`. None unless it holds a `SHA256SUMS`.
pub fn resolve(dir: &Path, id_or_current: &str) -> Option<PathBuf> {
    let id = if id_or_current == CURRENT {
        current(dir)?
    } else {
        id_or_current.to_string()
    };
    if !valid_id(&id) {
        return None;
    }
    let item = dir.join(id);
    item.join(SUMS).is_file().then_some(item)
}

/// Subdirectories (not symlinks) with valid names, sorted.
fn subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(|n| (n.to_string(), e.path())))
        .filter(|(n, _)| valid_name(n))
        .collect();
    v.sort();
    v
}
