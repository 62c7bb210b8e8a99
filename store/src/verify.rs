//! Re-hashing a published item against its `SHA256SUMS`.

use crate::error::{io, StoreError};
use crate::fsutil::hash_file;
use crate::sums::read_sums;
use crate::SUMS;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// A file of an item that is not what `SHA256SUMS` says: different, missing, unreadable, or
/// present but not listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: PathBuf,
    /// The listed sha256; None for a file that is not listed.
    pub expected: Option<String>,
    /// The sha256 found; None when missing, unreadable or not a regular file.
    pub actual: Option<String>,
    /// Why `actual` is None, when the file exists (an I/O error, not a regular file, ...).
    pub error: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.path.display();
        match (&self.expected, &self.actual, &self.error) {
            (_, _, Some(e)) => write!(f, "{p}: {e}"),
            (Some(e), Some(a), None) => write!(f, "{p}: sha256 {a}, expected {e}"),
            (Some(_), None, None) => write!(f, "{p}: missing"),
            (None, _, None) => write!(f, "{p}: not listed in {SUMS}"),
        }
    }
}

/// [`verify`] of several items, an item whose `SHA256SUMS` cannot be read or parsed reported as
/// a mismatch of that file, so that one damaged item does not hide the state of the others.
pub fn verify_items<'a>(item_dirs: impl IntoIterator<Item = &'a Path>) -> Vec<Mismatch> {
    let mut bad = Vec::new();
    for dir in item_dirs {
        match verify(dir) {
            Ok(v) => bad.extend(v),
            Err(e) => bad.push(Mismatch {
                path: e.path().to_path_buf(),
                expected: None,
                actual: None,
                error: Some(e.detail()),
            }),
        }
    }
    bad
}

/// Re-hashes every file `item_dir/SHA256SUMS` lists and reports each that differs, is missing
/// or cannot be read, then every file or other entry in the item (subdirectories included) that
/// is not listed. An unreadable or malformed `SHA256SUMS`, or an unreadable directory, is an
/// error.
pub fn verify(item_dir: &Path) -> Result<Vec<Mismatch>, StoreError> {
    let sums = read_sums(&item_dir.join(SUMS))?;
    let mut bad = Vec::new();
    for (name, expected) in sums.iter() {
        let path = item_dir.join(name);
        let mut m = Mismatch {
            path: path.clone(),
            expected: Some(expected.to_string()),
            actual: None,
            error: None,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.is_file() => match hash_file(&path) {
                Ok((_, h)) if h == expected => continue,
                Ok((_, h)) => m.actual = Some(h),
                Err(e) => m.error = Some(format!("unreadable: {e}")),
            },
            Ok(_) => m.error = Some("not a regular file".into()),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => m.error = Some(format!("unreadable: {e}")),
        }
        bad.push(m);
    }
    unlisted(item_dir, "", &sums, &mut bad)?;
    Ok(bad)
}

fn unlisted(
    dir: &Path,
    prefix: &str,
    sums: &crate::Sums,
    bad: &mut Vec<Mismatch>,
) -> Result<(), StoreError> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .collect::<Result<_, _>>()
        .map_err(io(dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = format!("{prefix}{name}");
        let t = e.file_type().map_err(io(&path))?;
        if t.is_dir() {
            unlisted(&path, &format!("{rel}/"), sums, bad)?;
        } else if rel != SUMS && !sums.contains(&rel) {
            let (actual, error) = if t.is_file() {
                match hash_file(&path) {
                    Ok((_, h)) => (Some(h), None),
                    Err(e) => (None, Some(format!("not listed in {SUMS}, unreadable: {e}"))),
                }
            } else {
                (
                    None,
                    Some(format!("not listed in {SUMS}, not a regular file")),
                )
            };
            bad.push(Mismatch {
                path,
                expected: None,
                actual,
                error,
            });
        }
    }
    Ok(())
}
