//! What templates know about built images: URLs and checksums of the current build of the
//! profile's image, read from the store's `SHA256SUMS` (which the builder wrote atomically).

use crate::site::{Profile, Site};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, Clone, Serialize)]
pub struct ImageFile {
    pub url: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageView {
    pub recipe: String,
    pub profile: String,
    pub id: String,
    /// `BASE/images/RECIPE/PROFILE/ID`
    pub url: String,
    pub files: BTreeMap<String, ImageFile>,
    /// The well-known outputs, so templates need not know file names or compression.
    pub kernel: Option<ImageFile>,
    pub initramfs: Option<ImageFile>,
    pub squashfs: Option<ImageFile>,
    /// `root.tar`, `root.tar.gz` or `root.tar.zst`: what `liveimg --url` installs.
    pub tarball: Option<ImageFile>,
    pub disk: Option<ImageFile>,
}

/// (recipe, profile) → (build id that `current` pointed at, files). A publish moves `current`,
/// so one readlink per render tells whether the cached sums are still the current ones.
type Cache = Mutex<BTreeMap<(String, String), (String, BTreeMap<String, (String, u64)>)>>;
static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();

pub fn image_context(site: &Site, base_url: &str, profile: &Profile) -> Option<ImageView> {
    let recipe = profile.image.as_ref()?;
    current_image(&site.state_dir(), base_url, recipe, &profile.name)
}

pub fn current_image(
    state_dir: &Path,
    base_url: &str,
    recipe: &str,
    profile: &str,
) -> Option<ImageView> {
    let dir: PathBuf = state_dir.join("images").join(recipe).join(profile);
    let id = std::fs::read_link(dir.join("current"))
        .ok()?
        .file_name()?
        .to_string_lossy()
        .into_owned();
    let cache = CACHE.get_or_init(Default::default);
    let key = (recipe.to_string(), profile.to_string());
    let cached = cache.lock().ok().and_then(|c| {
        c.get(&key)
            .filter(|(cid, _)| *cid == id)
            .map(|(_, f)| f.clone())
    });
    let sums = match cached {
        Some(s) => s,
        None => {
            let s = read_sums(&dir.join(&id))?;
            if let Ok(mut c) = cache.lock() {
                c.insert(key, (id.clone(), s.clone()));
            }
            s
        }
    };
    let url = format!("{base_url}/images/{recipe}/{profile}/{id}");
    let files: BTreeMap<String, ImageFile> = sums
        .into_iter()
        .map(|(name, (sha256, size))| {
            let file = ImageFile {
                url: format!("{url}/{name}"),
                sha256,
                size,
            };
            (name, file)
        })
        .collect();
    let first = |names: &[&str]| names.iter().find_map(|n| files.get(*n).cloned());
    Some(ImageView {
        recipe: recipe.into(),
        profile: profile.into(),
        id,
        url: url.clone(),
        kernel: first(&["vmlinuz"]),
        initramfs: first(&["initramfs.img"]),
        squashfs: first(&["root.squashfs"]),
        tarball: first(&["root.tar", "root.tar.gz", "root.tar.zst"]),
        disk: first(&["disk.raw"]),
        files,
    })
}

/// `sha256sum` format: `<64 hex>  <name>` (or ` *<name>` for binary mode).
pub fn parse_sums(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (sum, rest) = l.split_once(' ')?;
            let name = rest.trim_start_matches([' ', '*']);
            (sum.len() == 64 && sum.bytes().all(|b| b.is_ascii_hexdigit()) && !name.is_empty())
                .then(|| (name.to_string(), sum.to_ascii_lowercase()))
        })
        .collect()
}

fn read_sums(build: &Path) -> Option<BTreeMap<String, (String, u64)>> {
    let text = std::fs::read_to_string(build.join("SHA256SUMS")).ok()?;
    Some(
        parse_sums(&text)
            .into_iter()
            .map(|(name, sum)| {
                let size = std::fs::metadata(build.join(&name))
                    .map(|m| m.len())
                    .unwrap_or(0);
                (name, (sum, size))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums() {
        let h = "a".repeat(64);
        let t = format!("{h}  vmlinuz\n{h} *root.tar\nbad line\n");
        let p = parse_sums(&t);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].0, "root.tar");
    }
}
