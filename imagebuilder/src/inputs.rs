//! Every input of a build, hashed: the build id is the hash of all of them, so an unchanged build
//! is recognised without composing anything.

use crate::error::BuildError;
use crate::hashing::hash_reader;
use crate::recipe::{Output, Recipe};
use crate::store::Input;
use crate::ProfileLayer;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bumped whenever the builder's output for the same inputs changes.
/// 2: extended attributes carried, hard link groups written file first, cpio newc links.
pub const FORMAT: &str = "pxeforge-imagebuilder/2";

fn site_file(site: &Path, rel: &str) -> Result<std::path::PathBuf, BuildError> {
    crate::layers::site_path(site, rel)
}

pub fn hash_file(path: &Path) -> Result<String, BuildError> {
    let mut f = std::fs::File::open(path).map_err(BuildError::io(path))?;
    Ok(hash_reader(&mut f).map_err(BuildError::io(path))?.1)
}

/// Content hashes of input files remembered by (device, inode, size, mtime, ctime), so that an
/// unchanged multi-GiB tarball is not re-read to find out that nothing changed. Kept in
/// `<state>/images/.hashcache.json`; a file changed in the last two seconds is never remembered
/// (its timestamps could still match a later change).
#[derive(Default)]
pub struct HashCache {
    path: Option<std::path::PathBuf>,
    map: HashMap<String, (String, String)>,
    dirty: bool,
}

impl HashCache {
    pub fn load(state_dir: &Path) -> HashCache {
        let path = crate::store::images_dir(state_dir).join(".hashcache.json");
        let map = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        HashCache {
            path: Some(path),
            map,
            dirty: false,
        }
    }

    fn stamp(md: &std::fs::Metadata) -> String {
        format!(
            "{}:{}:{}:{}.{}:{}.{}",
            md.dev(),
            md.ino(),
            md.size(),
            md.mtime(),
            md.mtime_nsec(),
            md.ctime(),
            md.ctime_nsec()
        )
    }

    pub fn hash(&mut self, path: &Path) -> Result<String, BuildError> {
        let md = std::fs::metadata(path).map_err(BuildError::io(path))?;
        let key = path.to_string_lossy().into_owned();
        let stamp = Self::stamp(&md);
        if let Some((s, h)) = self.map.get(&key) {
            if *s == stamp {
                return Ok(h.clone());
            }
        }
        let h = hash_file(path)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        if md.ctime() < now - 2 && md.mtime() < now - 2 {
            self.map.insert(key, (stamp, h.clone()));
            self.dirty = true;
        }
        Ok(h)
    }

    /// Writes the cache (temp file + rename, so concurrent builds never see half a file).
    pub fn save(&self) {
        let Some(path) = &self.path else { return };
        if !self.dirty {
            return;
        }
        let Ok(bytes) = serde_json::to_vec(&self.map) else {
            return;
        };
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}

/// Hash of a directory: every entry's relative path, type, mode, owner, device number, symlink
/// target and content, in sorted order.
pub fn hash_dir(root: &Path, cache: &mut HashCache) -> Result<String, BuildError> {
    let mut h = Sha256::new();
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| BuildError::source(root, e.to_string()))?;
        let md = entry
            .metadata()
            .map_err(|e| BuildError::source(entry.path(), e.to_string()))?;
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        h.update(rel.as_os_str().as_encoded_bytes());
        h.update(
            format!(
                "\0{:o}\0{}\0{}\0{}\0",
                md.mode(),
                md.uid(),
                md.gid(),
                md.rdev()
            )
            .as_bytes(),
        );
        let ft = md.file_type();
        if ft.is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(BuildError::io(entry.path()))?;
            h.update(t.as_os_str().as_encoded_bytes());
        } else if ft.is_file() {
            h.update(cache.hash(entry.path())?.as_bytes());
        }
        h.update(b"\n");
    }
    Ok(hex::encode(h.finalize()))
}

/// The outputs a recipe asks for plus the ones they are made from.
pub fn effective_outputs(recipe: &Recipe) -> Vec<Output> {
    let mut v: Vec<Output> = recipe
        .spec
        .outputs
        .iter()
        .filter_map(|o| Output::parse(o.get_ref()))
        .collect();
    if v.contains(&Output::Qcow2) {
        v.push(Output::Disk);
    }
    if v.contains(&Output::Disk) {
        v.extend([Output::Ext4, Output::Initramfs, Output::Kernel]);
    }
    v.sort();
    v.dedup();
    v
}

/// All inputs of building `recipe` for `profile`, and the build id derived from them.
pub fn collect(
    site: &Path,
    recipe: &Recipe,
    profile: &ProfileLayer,
    tools: &[(String, String)],
    cache: &mut HashCache,
) -> Result<(Vec<Input>, String), BuildError> {
    let mut inputs = Vec::new();
    let mut push = |name: String, sha256: String| inputs.push(Input { name, sha256 });
    push(
        format!("builder {FORMAT}"),
        hex::encode(Sha256::digest(FORMAT.as_bytes())),
    );
    push(
        format!("recipe {}", recipe.file.display()),
        hex::encode(Sha256::digest(&recipe.raw)),
    );
    push(
        format!("recipe name {}", recipe.name),
        hex::encode(Sha256::digest(recipe.name.as_bytes())),
    );
    push(
        "source_date_epoch".into(),
        hex::encode(Sha256::digest(
            recipe.source_date_epoch().to_string().as_bytes(),
        )),
    );
    let profile_json =
        serde_json::to_vec(profile).map_err(|e| BuildError::Recipe(e.to_string()))?;
    push(
        format!("profile {}", profile.name),
        hex::encode(Sha256::digest(&profile_json)),
    );

    let s = &recipe.spec;
    let base = s.base.get_ref();
    if let Some(d) = &base.dir {
        push(
            format!("base dir {}", d.get_ref()),
            hash_dir(&site_file(site, d.get_ref())?, cache)?,
        );
    }
    if let Some(t) = &base.tarball {
        push(
            format!("base tarball {}", t.get_ref()),
            cache.hash(&site_file(site, t.get_ref())?)?,
        );
    }
    if let Some(o) = &base.oci {
        let layout = site_file(site, o.get_ref())?;
        push(
            format!("base oci {}/index.json", o.get_ref()),
            cache.hash(&layout.join("index.json"))?,
        );
        // Blobs are content addressed, but a corrupted blob must not be mistaken for the real one.
        for layer in crate::source::oci_layers(&layout, base.oci_ref.as_deref())? {
            push(
                format!("oci layer {}", layer.display()),
                cache.hash(&layer)?,
            );
        }
    }
    for t in &s.tree {
        push(
            format!("tree {}", t.get_ref().dir),
            hash_dir(&site_file(site, &t.get_ref().dir)?, cache)?,
        );
    }
    for f in &s.file {
        if let Some(src) = &f.get_ref().source {
            push(format!("file {src}"), cache.hash(&site_file(site, src)?)?);
        }
    }
    if let Some(k) = &s.kernel {
        if let Some(f) = &k.get_ref().file {
            push(format!("kernel {f}"), cache.hash(&site_file(site, f)?)?);
        }
    }
    if let Some(d) = &profile.layer_dir {
        push(
            format!("profile layer {}", d.display()),
            hash_dir(&site.join(d), cache)?,
        );
    }
    for f in &profile.firmware_files {
        push(
            format!("firmware {}", f.display()),
            cache.hash(&site.join(f))?,
        );
    }
    for (tool, version) in tools {
        push(
            format!("tool {tool}"),
            hex::encode(Sha256::digest(version.as_bytes())),
        );
    }

    let mut h = Sha256::new();
    for i in &inputs {
        h.update(i.name.as_bytes());
        h.update(b"\0");
        h.update(i.sha256.as_bytes());
        h.update(b"\n");
    }
    let id = hex::encode(&h.finalize()[..16]);
    Ok((inputs, id))
}
