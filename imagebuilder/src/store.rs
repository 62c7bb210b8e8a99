//! The image store: `<state>/images/<recipe>/<profile>/<build-id>/` with the outputs,
//! `SHA256SUMS` and `manifest.json`, and a `current` symlink per recipe/profile.
//!
//! This module knows the image layout and the manifest. Checksums, publishing by rename, the
//! `current` pointer, verify, gc, the store lock and the cleanup of temporaries (under
//! `<state>/images/.tmp/`) are pxeforge-store's, shared with the other stores of the state
//! directory.

use pxeforge_store::Store;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use pxeforge_store::{FileSum, ItemSums, Mismatch, StoreError, CURRENT, SUMS, TMP};

pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputFile {
    /// The output kind (`initramfs`, `disk`, ...).
    pub name: String,
    /// File name inside the build directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
    /// Uncompressed size of a compressed output (the initramfs), for memory checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Input {
    pub name: String,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub recipe: String,
    pub profile: String,
    pub id: String,
    pub built_at: u64,
    pub source_date_epoch: u64,
    pub kernel_args: Vec<String>,
    pub inputs: Vec<Input>,
    pub tools: Vec<(String, String)>,
    pub outputs: Vec<OutputFile>,
}

#[derive(Debug, Clone)]
pub struct PublishedImage {
    pub recipe: String,
    pub profile: String,
    pub id: String,
    pub dir: PathBuf,
    pub is_current: bool,
    pub built_at: u64,
    pub kernel_args: Vec<String>,
    pub outputs: Vec<OutputFile>,
}

pub fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// The image store of a state directory: key `<recipe>/<profile>`.
pub fn image_store(state_dir: &Path) -> Store {
    Store::new(images_dir(state_dir), 2)
}

/// `<state>/images/<recipe>/<profile>`, or None for names that are not [`valid_name`]s.
pub fn profile_dir(state_dir: &Path, recipe: &str, profile: &str) -> Option<PathBuf> {
    image_store(state_dir).key_dir(&[recipe, profile])
}

/// Names that may appear as a path component of the store (recipe, profile, build id).
pub fn valid_name(s: &str) -> bool {
    pxeforge_store::valid_name(s)
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let p = dir.join(MANIFEST);
    let bytes = std::fs::read(&p).map_err(|source| StoreError::Io {
        path: p.clone(),
        source,
    })?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Invalid {
        path: p,
        message: e.to_string(),
    })
}

/// Every published build (with a readable manifest), by recipe, profile, then newest first.
pub fn list(state_dir: &Path) -> Vec<PublishedImage> {
    let mut out: Vec<PublishedImage> = image_store(state_dir)
        .list()
        .into_iter()
        .filter_map(|item| {
            let [recipe, profile] = <[String; 2]>::try_from(item.key).ok()?;
            let m = read_manifest(&item.dir).ok()?;
            Some(PublishedImage {
                recipe,
                profile,
                id: item.id,
                dir: item.dir,
                is_current: item.is_current,
                built_at: m.built_at,
                kernel_args: m.kernel_args,
                outputs: m.outputs,
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.recipe, &a.profile)
            .cmp(&(&b.recipe, &b.profile))
            .then(b.built_at.cmp(&a.built_at))
            .then(a.id.cmp(&b.id))
    });
    out
}

/// Re-hashes every published file against its build's `SHA256SUMS`. A build whose
/// `SHA256SUMS` cannot be read or parsed is reported as a mismatch of that file, so one damaged
/// build does not hide the state of the others.
pub fn verify(state_dir: &Path) -> Result<Vec<Mismatch>, StoreError> {
    let images = list(state_dir);
    Ok(pxeforge_store::verify_items(
        images.iter().map(|i| i.dir.as_path()),
    ))
}

/// The directory of one published build; `id_or_current` is a build id or `current`.
pub fn resolve(
    state_dir: &Path,
    recipe: &str,
    profile: &str,
    id_or_current: &str,
) -> Option<PathBuf> {
    let dir = pxeforge_store::resolve(&profile_dir(state_dir, recipe, profile)?, id_or_current)?;
    dir.join(MANIFEST).is_file().then_some(dir)
}

/// Points `current` of a recipe/profile at build `id` atomically, under the store lock.
pub fn set_current(
    state_dir: &Path,
    recipe: &str,
    profile: &str,
    id: &str,
) -> Result<(), StoreError> {
    let store = image_store(state_dir);
    let dir = store
        .key_dir(&[recipe, profile])
        .ok_or_else(|| StoreError::Invalid {
            path: images_dir(state_dir).join(recipe).join(profile),
            message: "invalid recipe or profile name".into(),
        })?;
    store.set_current(&dir, id)
}

/// The checksums and sizes of the current build of a recipe/profile, from the process-wide
/// cache (one readlink per call; re-read only when `current` moved). URLs of its files are
/// `<base>/images/<recipe>/<profile>/<id>/<name>`.
pub fn current_sums(state_dir: &Path, recipe: &str, profile: &str) -> Option<Arc<ItemSums>> {
    pxeforge_store::current_sums(&profile_dir(state_dir, recipe, profile)?)
}

/// Removes leftovers of builds whose process is gone (a build killed mid-way): the temporaries
/// no live process holds locked. Returns what was removed.
pub fn clean_stale_tmp(state_dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    image_store(state_dir).clean_stale_tmp()
}

/// Removes stale temporaries, then all but the newest `keep` builds of every recipe/profile; the
/// current build is always kept. Returns the removed build directories.
pub fn gc(state_dir: &Path, keep: usize) -> Result<Vec<PathBuf>, StoreError> {
    image_store(state_dir).gc_all(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("base") && valid_name("0123abcd"));
        assert!(!valid_name("..") && !valid_name("a/b") && !valid_name(".tmp") && !valid_name(""));
        let state = Path::new("/state");
        assert_eq!(
            profile_dir(state, "base", "vm"),
            Some(PathBuf::from("/state/images/base/vm"))
        );
        assert_eq!(profile_dir(state, "..", "vm"), None);
        assert_eq!(resolve(state, "base", "../x", "current"), None);
    }
}
