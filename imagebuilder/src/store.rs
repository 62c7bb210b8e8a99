//! The image store: `<state>/images/<recipe>/<profile>/<build-id>/` with the outputs, `SHA256SUMS`
//! and `manifest.json`, and a `current` symlink per recipe/profile replaced by rename. Builds are
//! assembled under `<state>/images/.tmp/` (same filesystem) and published by one rename.

use crate::hashing::hash_file;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const SUMS: &str = "SHA256SUMS";
pub const MANIFEST: &str = "manifest.json";
pub const CURRENT: &str = "current";
pub const TMP: &str = ".tmp";

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Bad { path: PathBuf, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A published file whose content is not what `SHA256SUMS` says (or is missing / unlisted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub path: PathBuf,
    pub expected: Option<String>,
    pub actual: Option<String>,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.expected, &self.actual) {
            (Some(e), Some(a)) => write!(f, "{}: sha256 {a}, expected {e}", self.path.display()),
            (Some(_), None) => write!(f, "{}: missing", self.path.display()),
            (None, _) => write!(f, "{}: not listed in {SUMS}", self.path.display()),
        }
    }
}

pub fn images_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("images")
}

/// Names that may appear as a path component of the store (recipe, profile, build id).
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn sorted_subdirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
        .filter_map(|e| e.file_name().to_str().map(|n| (n.to_string(), e.path())))
        .filter(|(n, _)| valid_name(n))
        .collect();
    v.sort();
    v
}

pub fn read_manifest(dir: &Path) -> Result<Manifest, StoreError> {
    let p = dir.join(MANIFEST);
    let bytes = std::fs::read(&p).map_err(io(&p))?;
    serde_json::from_slice(&bytes).map_err(|e| StoreError::Bad {
        path: p,
        message: e.to_string(),
    })
}

fn current_id(profile_dir: &Path) -> Option<String> {
    let t = std::fs::read_link(profile_dir.join(CURRENT)).ok()?;
    let t = t.to_str()?.to_string();
    valid_name(&t).then_some(t)
}

/// Every published build, by recipe, profile, then newest first.
pub fn list(state_dir: &Path) -> Vec<PublishedImage> {
    let mut out = Vec::new();
    for (recipe, rdir) in sorted_subdirs(&images_dir(state_dir)) {
        for (profile, pdir) in sorted_subdirs(&rdir) {
            let cur = current_id(&pdir);
            let mut builds = Vec::new();
            for (id, dir) in sorted_subdirs(&pdir) {
                let Ok(m) = read_manifest(&dir) else { continue };
                builds.push(PublishedImage {
                    recipe: recipe.clone(),
                    profile: profile.clone(),
                    is_current: cur.as_deref() == Some(id.as_str()),
                    id,
                    dir,
                    built_at: m.built_at,
                    kernel_args: m.kernel_args,
                    outputs: m.outputs,
                });
            }
            builds.sort_by(|a, b| b.built_at.cmp(&a.built_at).then(a.id.cmp(&b.id)));
            out.extend(builds);
        }
    }
    out
}

/// Parses a `SHA256SUMS` file: `<hex>  <name>` (or `<hex> *<name>`) per line.
pub fn parse_sums(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (h, rest) = l.split_once(' ')?;
            let name = rest.strip_prefix(' ').or_else(|| rest.strip_prefix('*'))?;
            Some((h.to_string(), name.to_string()))
        })
        .collect()
}

pub fn format_sums(files: &[(String, String)]) -> String {
    let mut v: Vec<&(String, String)> = files.iter().collect();
    v.sort_by(|a, b| a.1.cmp(&b.1));
    v.iter().map(|(h, n)| format!("{h}  {n}\n")).collect()
}

/// Re-hashes every published file against its build's `SHA256SUMS`.
pub fn verify(state_dir: &Path) -> Result<Vec<Mismatch>, StoreError> {
    let mut bad = Vec::new();
    for img in list(state_dir) {
        let sums_path = img.dir.join(SUMS);
        let text = std::fs::read_to_string(&sums_path).map_err(io(&sums_path))?;
        let listed = parse_sums(&text);
        for (expected, name) in &listed {
            let p = img.dir.join(name);
            let actual = if valid_name(name) {
                hash_file(&p).ok().map(|(_, h)| h)
            } else {
                None
            };
            if actual.as_deref() != Some(expected.as_str()) {
                bad.push(Mismatch {
                    path: p,
                    expected: Some(expected.clone()),
                    actual,
                });
            }
        }
        for e in std::fs::read_dir(&img.dir).map_err(io(&img.dir))?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name != SUMS && !listed.iter().any(|(_, n)| *n == name) {
                bad.push(Mismatch {
                    path: e.path(),
                    expected: None,
                    actual: hash_file(&e.path()).ok().map(|(_, h)| h),
                });
            }
        }
    }
    Ok(bad)
}

/// The directory of one published build; `id_or_current` is a build id or `current`.
pub fn resolve(
    state_dir: &Path,
    recipe: &str,
    profile: &str,
    id_or_current: &str,
) -> Option<PathBuf> {
    if !valid_name(recipe) || !valid_name(profile) {
        return None;
    }
    let pdir = images_dir(state_dir).join(recipe).join(profile);
    let id = if id_or_current == CURRENT {
        current_id(&pdir)?
    } else {
        id_or_current.to_string()
    };
    if !valid_name(&id) {
        return None;
    }
    let dir = pdir.join(id);
    dir.join(MANIFEST).is_file().then_some(dir)
}

/// Points `current` at `id` atomically (a new symlink renamed over the old one).
pub fn set_current(profile_dir: &Path, id: &str) -> Result<(), StoreError> {
    let tmp = profile_dir.join(format!(".current.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(id, &tmp).map_err(io(&tmp))?;
    let cur = profile_dir.join(CURRENT);
    std::fs::rename(&tmp, &cur).map_err(io(&cur))?;
    sync_dir(profile_dir);
    Ok(())
}

pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

/// Removes leftovers of builds whose process is gone (a build killed mid-way).
pub fn clean_stale_tmp(state_dir: &Path) {
    let tmp = images_dir(state_dir).join(TMP);
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid: Option<i32> = name.split('-').nth(1).and_then(|p| p.parse().ok());
        let alive = pid.is_some_and(|p| {
            // SAFETY: kill with signal 0 only checks whether the process exists.
            p > 0
                && (unsafe { libc::kill(p, 0) } == 0
                    || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
        });
        if !alive {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Removes all but the newest `keep` builds of every recipe/profile; the current build is always
/// kept. A build is first renamed into the temp area so no half-deleted build is ever visible.
pub fn gc(state_dir: &Path, keep: usize) -> Result<Vec<PathBuf>, StoreError> {
    clean_stale_tmp(state_dir);
    let tmp = images_dir(state_dir).join(TMP);
    let mut removed = Vec::new();
    let all = list(state_dir);
    let mut i = 0;
    while i < all.len() {
        let group: Vec<&PublishedImage> = all[i..]
            .iter()
            .take_while(|x| x.recipe == all[i].recipe && x.profile == all[i].profile)
            .collect();
        i += group.len();
        for (n, img) in group.iter().enumerate() {
            if n < keep || img.is_current {
                continue;
            }
            std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
            let dest = tmp.join(format!(
                "gc-{}-{}-{}",
                std::process::id(),
                img.recipe,
                img.id
            ));
            std::fs::rename(&img.dir, &dest).map_err(io(&img.dir))?;
            std::fs::remove_dir_all(&dest).map_err(io(&dest))?;
            removed.push(img.dir.clone());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_roundtrip() {
        let f = vec![
            ("ab".to_string(), "z".to_string()),
            ("cd".to_string(), "a b".to_string()),
        ];
        let t = format_sums(&f);
        assert_eq!(t, "cd  a b\nab  z\n");
        let mut p = parse_sums(&t);
        p.sort();
        assert_eq!(
            p,
            vec![
                ("ab".to_string(), "z".to_string()),
                ("cd".to_string(), "a b".to_string())
            ]
        );
    }

    #[test]
    fn names() {
        assert!(valid_name("base") && valid_name("0123abcd"));
        assert!(!valid_name("..") && !valid_name("a/b") && !valid_name(".tmp") && !valid_name(""));
    }
}
