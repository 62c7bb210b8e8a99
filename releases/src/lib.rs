//! The releases store: CentOS Stream install trees (`.treeinfo`, `images/…`) synced from their
//! upstream, each file verified against the tree's `.treeinfo`, published under
//! `STATE/releases/<name>/<compose-id>/` with a `current` pointer. The compose id is the sha256
//! of `.treeinfo`.

#![forbid(unsafe_code)]

mod fetch;
mod pins;
mod sync;
mod treeinfo;

pub use fetch::{FetchError, FetchOptions, NoProgress, Progress};
pub use pins::{read_pins, Pins, PinsError, BUILDSTATE};
pub use sync::{
    efi_files, sync, tree_url, PartialDir, SyncError, SyncOutcome, SyncReport, SyncRequest,
    SyncedFile, IMAGES, PARTIAL, TREEINFO,
};
pub use treeinfo::{TreeInfo, TreeInfoError};

use pxeforge_store::{valid_name, Item, Mismatch, Store, StoreError};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The folder of the releases store under the state directory.
pub const DIR: &str = "releases";

/// The releases store of a state directory: one key level, the release's name.
pub fn store(state: &Path) -> pxeforge_store::Store {
    pxeforge_store::Store::new(state.join(DIR), 1)
}

/// The compose that `current` names for release `name`, if it was ever synced.
pub fn current_compose(state: &Path, name: &str) -> Option<String> {
    if !pxeforge_store::valid_name(name) {
        return None;
    }
    pxeforge_store::current(&state.join(DIR).join(name))
}

/// The media id (`<release>/<compose-id>`) of release `name`'s current compose: what a build
/// armed now is pinned to.
pub fn current_media(state: &Path, name: &str) -> Option<String> {
    current_compose(state, name).map(|c| media_id(name, &c))
}

/// The folder of one published compose (which may not exist).
pub fn compose_dir(state: &Path, name: &str, compose: &str) -> PathBuf {
    state.join(DIR).join(name).join(compose)
}

/// `<release>/<compose-id>`: how a host's pinned media are written in its build-state record.
pub fn media_id(name: &str, compose: &str) -> String {
    format!("{name}/{compose}")
}

/// The release and compose of a media id, when both are valid store names.
pub fn parse_media_id(media: &str) -> Option<(&str, &str)> {
    let (name, compose) = media.split_once('/')?;
    (pxeforge_store::valid_name(name) && pxeforge_store::valid_id(compose))
        .then_some((name, compose))
}

pub(crate) fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}

/// One published compose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    pub release: String,
    pub id: String,
    pub dir: PathBuf,
    pub is_current: bool,
    pub published: SystemTime,
    /// The architecture its `.treeinfo` names (None when that cannot be read).
    pub arch: Option<String>,
}

/// The architecture in a published compose's `.treeinfo`.
pub fn compose_arch(dir: &Path) -> Result<String, String> {
    let p = dir.join(TREEINFO);
    let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
    TreeInfo::parse(&bytes)
        .map(|t| t.arch)
        .map_err(|e| format!("{}: {e}", p.display()))
}

/// Every published compose, by release, newest first.
pub fn list(state: &Path) -> Vec<Compose> {
    store(state)
        .list()
        .into_iter()
        .filter_map(
            |Item {
                 key,
                 id,
                 dir,
                 is_current,
                 published,
             }| {
                let [release] = <[String; 1]>::try_from(key).ok()?;
                Some(Compose {
                    arch: compose_arch(&dir).ok(),
                    release,
                    id,
                    dir,
                    is_current,
                    published,
                })
            },
        )
        .collect()
}

/// Re-hashes every file of every published compose against its `SHA256SUMS`.
pub fn verify(state: &Path) -> Vec<Mismatch> {
    let composes = list(state);
    pxeforge_store::verify_items(composes.iter().map(|c| c.dir.as_path()))
}

/// What `releases gc` removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub removed: Vec<PathBuf>,
    /// Partial downloads of releases no sync is running for.
    pub partial_bytes: u64,
}

/// Keeps the newest `keep` composes of every release, the current one and every compose a
/// host is pinned to; also removes the store's stale temporaries and the partial downloads of
/// releases no sync is under way for.
pub fn gc(state: &Path, keep: usize, pins: &Pins) -> Result<GcReport, StoreError> {
    let store = store(state);
    let mut report = GcReport::default();
    if !store.root().is_dir() {
        return Ok(report);
    }
    store.clean_stale_tmp()?;
    for (key, dir) in store.key_dirs() {
        if let [name] = key.as_slice() {
            report
                .removed
                .extend(gc_release(&store, &dir, name, keep, pins)?);
        }
    }
    let partial = state.join(DIR).join(PARTIAL);
    for e in std::fs::read_dir(&partial).into_iter().flatten().flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if !valid_name(&name) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        // A sync of the release holds the lock: its partial files are in use.
        if let Ok(Some(p)) = PartialDir::try_lock(state, &name) {
            report.partial_bytes += p.clear().map_err(|source| StoreError::Io {
                path: partial.join(&name),
                source,
            })?;
        }
    }
    Ok(report)
}

/// [`Store::gc`] with pins: of release `name`'s composes, removes those beyond the newest
/// `keep` that are neither current nor pinned by a host. Victims are moved into a locked
/// temporary under the store lock (readers never see half an item), then deleted.
///
/// A host armed after `pins` was read is pinned to the current compose, which is never removed.
pub fn gc_release(
    store: &Store,
    dir: &Path,
    name: &str,
    keep: usize,
    pins: &Pins,
) -> Result<Vec<PathBuf>, StoreError> {
    store.gc_with(dir, keep, &|it: &Item| pins.is_pinned(name, &it.id))
}
