//! Content-addressed stores: atomic publish, current pointers, SHA256SUMS, verify, gc.
//!
//! A store is a root directory holding `<key path>/<item-id>/` directories. The key path has a
//! fixed depth per store (`images/<recipe>/<profile>` is depth 2, `releases/<name>` depth 1,
//! `loaders` depth 0). Every item directory holds a `SHA256SUMS` listing each of its files
//! (subpaths allowed), and each key directory may hold a `current` relative symlink naming one
//! item. Items are immutable once published; the store knows nothing of what they contain.
//!
//! See README.md for the layout, the durability guarantees and the lock.

#![forbid(unsafe_code)]

mod cache;
mod error;
mod fsutil;
mod store;
mod sums;
mod verify;

pub use cache::{current_sums, FileSum, ItemSums, SumsCache};
pub use error::StoreError;
pub use fsutil::{fsync_dir, fsync_tree, hash_file, try_lock_file};
pub use store::{
    current, resolve, Item, PublishOptions, PublishOutcome, Published, Staging, Store, StoreLock,
};
pub use sums::{read_sums, valid_sums_name, write_sums, Sums, SumsError};
pub use verify::{verify, verify_items, Mismatch};

/// The checksum file of every item.
pub const SUMS: &str = "SHA256SUMS";
/// The pointer in every key directory.
pub const CURRENT: &str = "current";
/// Temporary directories, inside the store root so the publishing rename stays on one filesystem.
pub const TMP: &str = ".tmp";
/// The file locked (flock) by publish, set_current, gc and stale cleanup.
pub const LOCK: &str = ".lock";
/// Prefix of the symlink that `set_current` renames over `current`.
pub const CURRENT_TMP_PREFIX: &str = "current.tmp-";

/// Names that may be a key component or an item id: one path component of letters, digits,
/// `-`, `_`, `.`, not starting with a dot (so `.tmp`, `.lock` and other dot files of the store
/// root are never taken for keys or items).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An item id: a [`valid_name`] that cannot be mistaken for the `current` pointer or for the
/// temporary symlink `set_current` renames over it.
pub fn valid_id(s: &str) -> bool {
    valid_name(s) && s != CURRENT && !s.starts_with(CURRENT_TMP_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("base") && valid_name("0123abcd") && valid_name("a.b-c_d"));
        for bad in ["", "..", ".", "a/b", ".tmp", ".lock", "a b", "é"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert!(valid_name(&"a".repeat(128)) && !valid_name(&"a".repeat(129)));
        assert!(valid_id("0123abcd"));
        assert!(!valid_id("current") && !valid_id("current.tmp-1234"));
    }
}
