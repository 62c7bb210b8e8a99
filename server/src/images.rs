//! What templates know about built images: URLs and checksums of the current build of the
//! profile's image, read from the store's `SHA256SUMS` (which the builder wrote atomically).

use pxeforge_site::Profile;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

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

/// The current build of the profile's image, as templates see it; `None` when the profile
/// installs no image or nothing is published. The store library reads (and caches, keyed by
/// the full path, so two state directories never share entries) the build's `SHA256SUMS`.
pub fn image_context(state: &Path, base_url: &str, profile: &Profile) -> Option<ImageView> {
    let recipe = profile.image.as_ref()?;
    current_image(state, base_url, recipe, &profile.name)
}

pub fn current_image(
    state_dir: &Path,
    base_url: &str,
    recipe: &str,
    profile: &str,
) -> Option<ImageView> {
    let sums = pxeforge_imagebuilder::store::current_sums(state_dir, recipe, profile)?;
    let url = format!("{base_url}/images/{recipe}/{profile}/{}", sums.id);
    let files: BTreeMap<String, ImageFile> = sums
        .files
        .iter()
        .map(|(name, f)| {
            let file = ImageFile {
                url: format!("{url}/{name}"),
                sha256: f.sha256.clone(),
                size: f.size,
            };
            (name.clone(), file)
        })
        .collect();
    let first = |names: &[&str]| names.iter().find_map(|n| files.get(*n).cloned());
    Some(ImageView {
        recipe: recipe.into(),
        profile: profile.into(),
        id: sums.id.clone(),
        url: url.clone(),
        kernel: first(&["vmlinuz"]),
        initramfs: first(&["initramfs.img"]),
        squashfs: first(&["root.squashfs"]),
        tarball: first(&["root.tar", "root.tar.gz", "root.tar.zst"]),
        disk: first(&["disk.raw"]),
        files,
    })
}
