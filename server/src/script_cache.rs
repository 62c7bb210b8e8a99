//! Rendered `/ipxe` scripts of inventory hosts, kept in memory so that a host that boots again
//! (the fleet's usual request: installed, local boot) is answered with no template, file or
//! SQLite work.
//!
//! An entry is keyed by what the request adds (the MAC, the platform, the base URL) and is valid
//! for one *epoch*: everything else a script depends on, each part read without a system call.
//!
//! - the catalog (site, templates, settings): a reload swaps it, so its address changes;
//! - the approved/rejected machines and the global pause, kept in memory by the store;
//! - the build-state store: the WAL-index header of `STATE/buildstate.db-shm`, which SQLite
//!   rewrites at every commit, by this process or any other (`pxeforge reinstall --state`), before
//!   the commit returns; it is mapped read-only, so reading it is a memory read. Without it (the
//!   store is not in WAL mode, or could not be read) no script that depends on a host's build
//!   state is kept;
//! - the image and release stores: a file watcher (inotify) counts every change under
//!   `STATE/images`, `STATE/releases` and `STATE/loaders` (a publish by `pxeforge build` moves a
//!   `current` link there). The count moves within the watcher's latency, not before the rename
//!   returns; without a watcher, no script of a profile that installs an image is kept.
//!
//! An entry is stored only if the epoch did not move while it was computed (the epoch is read
//! before the build state is), and a lookup in another epoch misses. Only scripts that a
//! request does not change are kept: hosts whose build is not under way (installed, failed),
//! untracked hosts, and every host while installs are paused. Unknown machines, armed and
//! installing hosts are never kept, so a client choosing MACs cannot grow the cache, and the
//! number of entries is capped (`limits.script_cache_entries`) against the base URLs a client
//! can make up with its `Host` header.

use crate::catalog::Catalog;
use crate::select::Claims;
use bytes::Bytes;
use pxeforge_site::Mac;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

/// What a request adds to the epoch: its MAC, its platform (`pcbios`, `efi`, or none) and the
/// base URL it is told to come back to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub mac: Mac,
    pub platform: Option<Platform>,
    pub base_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    Pcbios,
    Efi,
}

impl Platform {
    /// The platforms that reach a template (`render_ipxe` drops any other).
    pub fn of(p: Option<&str>) -> Option<Platform> {
        match p {
            Some("pcbios") => Some(Platform::Pcbios),
            Some("efi") => Some(Platform::Efi),
            _ => None,
        }
    }
}

/// A kept script, and what its request logs.
#[derive(Debug)]
pub struct Entry {
    pub body: Bytes,
    pub host: String,
    pub profile: String,
    /// The `script` field of the "host script" log line.
    pub script: &'static str,
}

/// Everything besides the key that a kept script depends on. Equal epochs: the same script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    catalog: usize,
    claims: usize,
    paused: bool,
    /// The build-state store's WAL-index header; `None`: not watched.
    store: Option<[u64; 6]>,
    /// Changes seen under the image and release stores; `None`: not watched.
    files: Option<u64>,
}

impl Epoch {
    /// Whether a script that depends on the host's build state may be kept in this epoch.
    pub fn store_watched(&self) -> bool {
        self.store.is_some()
    }

    /// Whether a script that depends on the image store may be kept in this epoch.
    pub fn files_watched(&self) -> bool {
        self.files.is_some()
    }
}

struct Inner {
    epoch: Option<Epoch>,
    /// Held so that the addresses in `epoch` cannot be reused by another catalog or claims set
    /// while they are compared (a `Weak` keeps the allocation, not the value).
    catalog: Weak<Catalog>,
    claims: Weak<Claims>,
    map: HashMap<Key, Arc<Entry>>,
}

pub struct ScriptCache {
    inner: RwLock<Inner>,
    hits: AtomicU64,
    misses: AtomicU64,
    store: Option<ShmHeader>,
    files: Option<FileWatch>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for ScriptCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptCache")
            .field("state_dir", &self.state_dir)
            .field("store_watched", &self.store.is_some())
            .field("files_watched", &self.files.is_some())
            .finish_non_exhaustive()
    }
}

impl ScriptCache {
    /// The cache of the server whose state directory is `state_dir`; made after the build-state
    /// store was opened (its `-shm` file exists from then on).
    pub fn new(state_dir: &Path) -> ScriptCache {
        let store = ShmHeader::open(&state_dir.join("buildstate.db-shm"));
        if store.is_none() {
            tracing::warn!(state = %state_dir.display(), "the build-state store is not in WAL mode here: scripts that depend on build state are rendered at every request");
        }
        let files = FileWatch::start(state_dir);
        ScriptCache {
            inner: RwLock::new(Inner {
                epoch: None,
                catalog: Weak::new(),
                claims: Weak::new(),
                map: HashMap::new(),
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            store,
            files,
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// The epoch now, for the catalog and claims the request holds. Memory reads only.
    pub fn epoch(&self, catalog: &Arc<Catalog>, claims: &Arc<Claims>, paused: bool) -> Epoch {
        Epoch {
            catalog: Arc::as_ptr(catalog) as usize,
            claims: Arc::as_ptr(claims) as usize,
            paused,
            store: self.store.as_ref().map(ShmHeader::read),
            files: self
                .files
                .as_ref()
                .map(|f| f.changes.load(Ordering::Acquire)),
        }
    }

    /// The script kept for `key` in `epoch`, if any.
    pub fn get(&self, epoch: &Epoch, key: &Key) -> Option<Arc<Entry>> {
        let found = self.inner.read().ok().and_then(|inner| {
            (inner.epoch.as_ref() == Some(epoch))
                .then(|| inner.map.get(key).cloned())
                .flatten()
        });
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Keeps `entry`, computed in `computed_in`, if that is still the epoch `now` (read after
    /// the script was made): a change in between may have made it stale. At most `cap` entries
    /// are kept; a full cache drops an arbitrary one (`HashMap` order is randomly seeded).
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        computed_in: Epoch,
        now: Epoch,
        catalog: &Arc<Catalog>,
        claims: &Arc<Claims>,
        key: Key,
        entry: Entry,
        cap: usize,
    ) {
        if cap == 0 || computed_in != now {
            return;
        }
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner.epoch != Some(now) {
            inner.map.clear();
            inner.epoch = Some(now);
            inner.catalog = Arc::downgrade(catalog);
            inner.claims = Arc::downgrade(claims);
        }
        while inner.map.len() >= cap && !inner.map.contains_key(&key) {
            let Some(victim) = inner.map.keys().next().cloned() else {
                break;
            };
            inner.map.remove(&victim);
        }
        inner.map.insert(key, Arc::new(entry));
    }

    /// Entries kept (in whatever epoch they were made), for tests and `/metrics`.
    pub fn len(&self) -> usize {
        self.inner.read().map_or(0, |i| i.map.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cache's counters, for `/metrics`.
    pub fn write_prometheus(&self, out: &mut String) {
        let mut w = pxeforge_promtext::Writer::new(out);
        w.counter(
            "pxeforge_script_cache_hits_total",
            "Requests for an inventory host's /ipxe script answered from memory.",
            self.hits.load(Ordering::Relaxed),
        );
        w.counter(
            "pxeforge_script_cache_misses_total",
            "Requests for an inventory host's /ipxe script that were rendered.",
            self.misses.load(Ordering::Relaxed),
        );
        w.gauge(
            "pxeforge_script_cache_entries",
            "Rendered /ipxe scripts kept (at most limits.script_cache_entries).",
            self.len() as u64,
        );
    }
}

/// The WAL-index header of a SQLite database in WAL mode (the first 48 bytes of its `-shm`
/// file, <https://sqlite.org/walformat.html#the_wal_index_header>): its change counter
/// (`iChange`) and frame count move at every commit, whichever process made it. The file is
/// mapped shared and read-only, as SQLite itself maps it; it is neither shrunk nor replaced
/// while a connection (the server's) holds the database open.
struct ShmHeader {
    ptr: std::ptr::NonNull<u64>,
    len: usize,
}

// The mapping is read-only and only ever read with volatile loads.
unsafe impl Send for ShmHeader {}
unsafe impl Sync for ShmHeader {}

impl ShmHeader {
    /// The bytes compared: the first copy of the header.
    const WORDS: usize = 6;

    fn open(path: &Path) -> Option<ShmHeader> {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path).ok()?;
        let len = usize::try_from(file.metadata().ok()?.len()).ok()?;
        if len < Self::WORDS * 8 {
            return None;
        }
        // SAFETY: a fresh read-only shared mapping of an open file, of its current length; the
        // descriptor may be closed once it is mapped.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        Some(ShmHeader {
            ptr: std::ptr::NonNull::new(p.cast::<u64>())?,
            len,
        })
    }

    fn read(&self) -> [u64; 6] {
        let mut out = [0u64; Self::WORDS];
        for (i, w) in out.iter_mut().enumerate() {
            // SAFETY: within the mapping (at least WORDS words long), page-aligned; another
            // process writes it concurrently, so each load is volatile. A torn read only makes
            // a spurious difference, which costs one render.
            *w = unsafe { std::ptr::read_volatile(self.ptr.as_ptr().add(i)) };
        }
        out
    }
}

impl Drop for ShmHeader {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `open`, unmapped once.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The stores that rendered scripts read files of, under the state directory.
const WATCHED: [&str; 3] = ["images", "releases", "loaders"];

/// Counts changes under the watched stores (and their appearance).
struct FileWatch {
    changes: Arc<AtomicU64>,
    /// Shared with the thread that adds the watches of stores made later.
    _watcher: Arc<std::sync::Mutex<notify::RecommendedWatcher>>,
}

impl FileWatch {
    fn start(state_dir: &Path) -> Option<FileWatch> {
        use notify::{RecursiveMode, Watcher};
        let changes = Arc::new(AtomicU64::new(0));
        let counter = changes.clone();
        let dir = state_dir.to_path_buf();
        // Watches added from the handler when a store appears (the handler runs on the
        // watcher's thread, and cannot reach the watcher itself).
        let (add_tx, add_rx) = std::sync::mpsc::channel::<PathBuf>();
        let handler = move |ev: notify::Result<notify::Event>| {
            match ev {
                // Opening and reading files (renders, TFTP) change nothing.
                Ok(ev) if matches!(ev.kind, notify::EventKind::Access(_)) => return,
                Ok(ev) => {
                    let relevant = ev.paths.iter().any(|p| {
                        let rel = p.strip_prefix(&dir).ok();
                        let top = rel.and_then(|r| r.components().next());
                        top.is_some_and(|c| WATCHED.iter().any(|w| c.as_os_str() == *w))
                    });
                    if !relevant {
                        return;
                    }
                    for p in &ev.paths {
                        if p.parent() == Some(dir.as_path()) && p.is_dir() {
                            let _ = add_tx.send(p.clone());
                        }
                    }
                }
                // Events may have been lost (queue overflow): assume a change.
                Err(e) => tracing::warn!(error = %e, "image store watch"),
            }
            counter.fetch_add(1, Ordering::AcqRel);
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the image store: scripts of image profiles are rendered at every request");
                return None;
            }
        };
        let watch_dir = state_dir.to_path_buf();
        if let Err(e) = std::fs::create_dir_all(&watch_dir)
            .map_err(notify::Error::io)
            .and_then(|()| watcher.watch(&watch_dir, RecursiveMode::NonRecursive))
        {
            tracing::warn!(error = %e, state = %watch_dir.display(), "cannot watch the state directory: scripts of image profiles are rendered at every request");
            return None;
        }
        for w in WATCHED {
            let p = state_dir.join(w);
            if p.is_dir() {
                if let Err(e) = watcher.watch(&p, RecursiveMode::Recursive) {
                    tracing::warn!(error = %e, dir = %p.display(), "cannot watch a store: scripts of image profiles are rendered at every request");
                    return None;
                }
            }
        }
        let watcher = Arc::new(std::sync::Mutex::new(watcher));
        // A store made after start (the first publish) is watched from then on; its creation
        // already counted as a change.
        let adder = Arc::downgrade(&watcher);
        let counter = changes.clone();
        let spawned = std::thread::Builder::new()
            .name("script-cache-watch".into())
            .spawn(move || {
                for p in add_rx {
                    let Some(w) = adder.upgrade() else { return };
                    if let Ok(mut w) = w.lock() {
                        if let Err(e) = w.watch(&p, RecursiveMode::Recursive) {
                            tracing::warn!(error = %e, dir = %p.display(), "cannot watch a new store");
                        }
                    };
                    // What changed in it before it was watched is seen by renders from now on.
                    counter.fetch_add(1, Ordering::AcqRel);
                }
            });
        if spawned.is_err() {
            return None;
        }
        Some(FileWatch {
            changes,
            _watcher: watcher,
        })
    }
}
