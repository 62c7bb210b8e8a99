//! The checksums of the current item of a key directory, cached for readers that need them on
//! every request (the boot server renders URLs, sizes and checksums into every script).
//!
//! Items are immutable and their ids name their content, so the checksums read once for an item
//! path stay right for as long as `current` names that item: each lookup costs one readlink and
//! a map lookup, and re-reads only after `current` moved.

use crate::error::{io, StoreError};
use crate::sums::read_sums;
use crate::{current, SUMS};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

/// One listed file of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSum {
    /// Lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// The checksums and sizes of one published item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSums {
    /// The item id (what URLs name).
    pub id: String,
    /// The item directory.
    pub dir: PathBuf,
    /// By file name as listed (`/`-separated subpaths), so `format!("{base}/{id}/{name}")` is
    /// the URL of each.
    pub files: BTreeMap<String, FileSum>,
}

impl ItemSums {
    /// Reads `item_dir/SHA256SUMS` and the size of every listed file (which must be a regular
    /// file).
    pub fn load(item_dir: &Path) -> Result<ItemSums, StoreError> {
        let id = item_dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| crate::valid_id(n))
            .ok_or_else(|| StoreError::invalid(item_dir, "not an item directory"))?
            .to_string();
        let sums = read_sums(&item_dir.join(SUMS))?;
        let mut files = BTreeMap::new();
        for (name, sha256) in sums.iter() {
            let p = item_dir.join(name);
            let md = std::fs::symlink_metadata(&p).map_err(io(&p))?;
            if !md.is_file() {
                return Err(StoreError::invalid(
                    p,
                    format!("listed in {SUMS} but not a regular file"),
                ));
            }
            files.insert(
                name.to_string(),
                FileSum {
                    sha256: sha256.to_string(),
                    size: md.len(),
                },
            );
        }
        Ok(ItemSums {
            id,
            dir: item_dir.to_path_buf(),
            files,
        })
    }

    pub fn get(&self, name: &str) -> Option<&FileSum> {
        self.files.get(name)
    }
}

/// A bounded cache of [`ItemSums`] of current items.
///
/// There is one entry per key directory, by its path as given, holding the sums of the item
/// (full path) `current` named when it was read; a lookup hits only when `current` still names
/// that same item path. Keys are whole paths, so two stores (two state directories) with the
/// same key names and ids never share an entry. Beyond `capacity` key directories the least
/// recently used entry is dropped.
#[derive(Debug)]
pub struct SumsCache {
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    tick: u64,
    entries: HashMap<PathBuf, (Arc<ItemSums>, u64)>,
}

impl SumsCache {
    /// The capacity of the process-wide cache behind [`current_sums`].
    pub const DEFAULT_CAPACITY: usize = 1024;

    pub fn new(capacity: usize) -> SumsCache {
        SumsCache {
            capacity,
            inner: Mutex::default(),
        }
    }

    /// The process-wide cache.
    pub fn global() -> &'static SumsCache {
        static GLOBAL: OnceLock<SumsCache> = OnceLock::new();
        GLOBAL.get_or_init(|| SumsCache::new(SumsCache::DEFAULT_CAPACITY))
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave the map half-updated (each change is one insert or
        // remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The sums of the item `current` of key directory `dir` names; Ok(None) when there is no
    /// `current` (or it names no valid id). One readlink per call; the `SHA256SUMS` and sizes
    /// are read again only when `current` moved.
    pub fn current(&self, dir: &Path) -> Result<Option<Arc<ItemSums>>, StoreError> {
        let Some(id) = current(dir) else {
            self.inner().entries.remove(dir);
            return Ok(None);
        };
        let item = dir.join(&id);
        {
            let mut g = self.inner();
            g.tick += 1;
            let tick = g.tick;
            if let Some((sums, used)) = g.entries.get_mut(dir) {
                if sums.dir == item {
                    *used = tick;
                    return Ok(Some(sums.clone()));
                }
            }
        }
        // Read outside the mutex: a slow disk must not hold up lookups of other directories.
        let loaded = ItemSums::load(&item);
        let mut g = self.inner();
        let sums = match loaded {
            Ok(s) => Arc::new(s),
            Err(e) => {
                g.entries.remove(dir);
                return Err(e);
            }
        };
        if self.capacity == 0 {
            return Ok(Some(sums));
        }
        g.tick += 1;
        let tick = g.tick;
        if !g.entries.contains_key(dir) && g.entries.len() >= self.capacity {
            let oldest = g
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                g.entries.remove(&k);
            }
        }
        g.entries.insert(dir.to_path_buf(), (sums.clone(), tick));
        Ok(Some(sums))
    }

    /// How many key directories are cached.
    pub fn len(&self) -> usize {
        self.inner().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// [`SumsCache::current`] of the process-wide cache, for callers that only need "the current
/// item or nothing": errors (a damaged item) are logged and give None.
pub fn current_sums(dir: &Path) -> Option<Arc<ItemSums>> {
    match SumsCache::global().current(dir) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "checksums of the current item unreadable");
            None
        }
    }
}
