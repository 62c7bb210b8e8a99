//! Base root filesystems: a directory, a tarball (plain, gzip, zstd) or an OCI image layout.

use crate::error::BuildError;
use crate::tree::{link_stays_inside, normalize, Content, Kind, Node, Tree, Xattrs};
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Members up to this size stay in memory; larger ones are spooled into the build's temp dir.
const INLINE_MAX: u64 = 64 * 1024;

/// Where tar members too big for memory are written during a build.
pub struct Spool {
    dir: PathBuf,
    next: u64,
}

impl Spool {
    pub fn new(dir: PathBuf) -> Result<Spool, BuildError> {
        std::fs::create_dir_all(&dir).map_err(BuildError::io(&dir))?;
        Ok(Spool { dir, next: 0 })
    }

    fn store(&mut self, r: &mut dyn Read, size: u64) -> Result<Content, BuildError> {
        if size <= INLINE_MAX {
            let mut v = Vec::with_capacity(size as usize);
            r.read_to_end(&mut v).map_err(BuildError::io(&self.dir))?;
            return Ok(Content::Inline(v));
        }
        let path = self.dir.join(self.next.to_string());
        self.next += 1;
        let mut f = File::create(&path).map_err(BuildError::io(&path))?;
        let n = std::io::copy(r, &mut f).map_err(BuildError::io(&path))?;
        f.flush().map_err(BuildError::io(&path))?;
        Ok(Content::Host { path, size: n })
    }
}

/// Opens a possibly compressed file, detecting gzip and zstd from their magic bytes.
pub fn open_decompressed(path: &Path) -> Result<Box<dyn Read>, BuildError> {
    let mut f = File::open(path).map_err(BuildError::io(path))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut f, &mut magic).map_err(BuildError::io(path))?;
    let head = std::io::Cursor::new(magic[..n].to_vec());
    let r = BufReader::with_capacity(1 << 20, head.chain(f));
    if n >= 2 && magic[..2] == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::MultiGzDecoder::new(r)))
    } else if n == 4 && magic == [0x28, 0xb5, 0x2f, 0xfd] {
        let d = zstd::stream::read::Decoder::new(r).map_err(BuildError::io(path))?;
        Ok(Box::new(d))
    } else {
        Ok(Box::new(r))
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Applies one tar stream onto the tree. With `oci`, whiteout entries delete from the tree instead
/// of being added. Refuses absolute paths, `..` and links leading out of the root, naming the entry.
pub fn apply_tar(
    tree: &mut Tree,
    reader: Box<dyn Read>,
    origin: &Path,
    spool: &mut Spool,
    oci: bool,
) -> Result<(), BuildError> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar
        .entries()
        .map_err(|e| BuildError::source(origin, e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| BuildError::source(origin, format!("bad tar: {e}")))?;
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let refuse = |reason: String| BuildError::Entry {
            entry: raw_path.clone(),
            reason,
        };
        if raw_path.starts_with('/') {
            return Err(refuse("absolute path".into()));
        }
        let path = normalize(&raw_path).map_err(|_| refuse("path has a `..` component".into()))?;
        let xattrs = pax_xattrs(&mut entry).map_err(|e| refuse(e.to_string()))?;
        let hdr = entry.header();
        let mode = hdr.mode().map_err(|e| refuse(e.to_string()))? & 0o7777;
        let uid = hdr.uid().map_err(|e| refuse(e.to_string()))? as u32;
        let gid = hdr.gid().map_err(|e| refuse(e.to_string()))? as u32;
        let etype = hdr.entry_type();

        if oci {
            let (dir, name) = match path.rfind('/') {
                Some(i) => (&path[..i], &path[i + 1..]),
                None => ("", path.as_str()),
            };
            if name == ".wh..wh..opq" {
                tree.clear_dir(dir);
                continue;
            }
            if let Some(victim) = name.strip_prefix(".wh.") {
                let v = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                tree.remove(&v);
                continue;
            }
        }

        let link_name = || -> Result<String, BuildError> {
            let l = entry
                .link_name_bytes()
                .ok_or_else(|| refuse("link without a target".into()))?;
            Ok(String::from_utf8_lossy(&l).into_owned())
        };
        let kind = match etype {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                let t = link_name()?;
                if !link_stays_inside(&path, &t) {
                    return Err(refuse(format!("symlink to {t:?} leads out of the root")));
                }
                Kind::Symlink(t)
            }
            tar::EntryType::Link => {
                let t = link_name()?;
                if t.starts_with('/') {
                    return Err(refuse(format!("hard link to absolute path {t:?}")));
                }
                let t = normalize(&t)
                    .map_err(|_| refuse(format!("hard link to {t:?} leads out of the root")))?;
                // A hard link is the same inode: it has its target's owner, mode and xattrs. A
                // link to a name that is itself a link is that name's inode again.
                let (t, target) = match tree.get(&t) {
                    Some(
                        n @ Node {
                            kind: Kind::File(c),
                            ..
                        },
                    ) => (t.clone(), (n.clone(), c.clone())),
                    Some(
                        n @ Node {
                            kind: Kind::Hardlink(tt, c),
                            ..
                        },
                    ) => (tt.clone(), (n.clone(), c.clone())),
                    _ => {
                        return Err(refuse(format!(
                            "hard link to {t:?}, which is not an earlier regular file"
                        )))
                    }
                };
                let (n, c) = target;
                tree.insert(
                    path,
                    Node {
                        kind: Kind::Hardlink(t, c),
                        ..n
                    },
                )?;
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = hdr.device_major().ok().flatten().unwrap_or(0);
                let minor = hdr.device_minor().ok().flatten().unwrap_or(0);
                if etype == tar::EntryType::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.size();
                Kind::File(spool.store(&mut entry, size)?)
            }
            // PAX/GNU extension headers are consumed by the tar crate; anything else is skipped.
            _ => continue,
        };
        if path.is_empty() && !matches!(kind, Kind::Dir) {
            return Err(refuse("the root must be a directory".into()));
        }
        tree.insert(
            path,
            Node {
                kind,
                mode,
                uid,
                gid,
                xattrs,
            },
        )?;
    }
    Ok(())
}

/// The PAX key prefix of an extended attribute, as GNU tar (`--xattrs`), bsdtar, podman and
/// buildah write them: `SCHILY.xattr.<name>` = raw value.
pub const PAX_XATTR: &str = "SCHILY.xattr.";

/// The extended attributes a PAX header gives the entry after it. Names must be UTF-8 (PAX
/// keys are); values are raw bytes. libarchive's own `LIBARCHIVE.xattr.*` form (URL-encoded
/// name, base64 value), written only when asked for, is not read.
fn pax_xattrs<R: Read>(entry: &mut tar::Entry<R>) -> std::io::Result<Xattrs> {
    let mut out = Xattrs::new();
    let Some(exts) = entry.pax_extensions()? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext?;
        let Some(name) = ext.key_bytes().strip_prefix(PAX_XATTR.as_bytes()) else {
            continue;
        };
        let name = std::str::from_utf8(name)
            .ok()
            .filter(|n| !n.is_empty() && !n.contains(['\0', '\n']))
            .ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "extended attribute name {:?} is not valid",
                        String::from_utf8_lossy(name)
                    ),
                )
            })?;
        out.insert(name.to_string(), ext.value_bytes().to_vec());
    }
    Ok(out)
}

/// Reads a directory base with lstat: owners, modes and device numbers as on disk; nothing is
/// copied, file contents are referenced.
pub fn read_dir_base(
    tree: &mut Tree,
    root: &Path,
    owner: Option<[u32; 2]>,
) -> Result<(), BuildError> {
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| BuildError::source(root, e.to_string()))?;
        let rel = entry
            .path()
            .strip_prefix(root)
            .map_err(|e| BuildError::source(root, e.to_string()))?;
        let rel = rel.to_string_lossy().into_owned();
        let md = entry
            .metadata()
            .map_err(|e| BuildError::source(entry.path(), e.to_string()))?;
        let (uid, gid) = match owner {
            Some([u, g]) => (u, g),
            None => (md.uid(), md.gid()),
        };
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_symlink() {
            let t = std::fs::read_link(entry.path()).map_err(BuildError::io(entry.path()))?;
            let t = t.to_string_lossy().into_owned();
            if !link_stays_inside(&rel, &t) {
                return Err(BuildError::Entry {
                    entry: rel,
                    reason: format!("symlink to {t:?} leads out of the root"),
                });
            }
            Kind::Symlink(t)
        } else if ft.is_file() {
            Kind::File(Content::Host {
                path: entry.path().to_path_buf(),
                size: md.len(),
            })
        } else if ft.is_char_device() || ft.is_block_device() {
            let rdev = md.rdev();
            let (ma, mi) = (libc::major(rdev), libc::minor(rdev));
            if ft.is_char_device() {
                Kind::Char(ma, mi)
            } else {
                Kind::Block(ma, mi)
            }
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            continue; // sockets are not carried
        };
        tree.insert(
            rel,
            Node {
                kind,
                mode: md.mode() & 0o7777,
                uid,
                gid,
                xattrs: Default::default(),
            },
        )?;
    }
    Ok(())
}

/// The layers of an OCI image layout, in order: index.json → manifest → layer blobs.
pub fn oci_layers(layout: &Path, want_ref: Option<&str>) -> Result<Vec<PathBuf>, BuildError> {
    let index_path = layout.join("index.json");
    let index: serde_json::Value = read_json(&index_path)?;
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| BuildError::source(&index_path, "no manifests"))?;
    let chosen = match want_ref {
        Some(r) => manifests
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str() == Some(r))
            .ok_or_else(|| BuildError::source(&index_path, format!("no manifest named {r:?}")))?,
        None if manifests.len() == 1 => &manifests[0],
        None => {
            return Err(BuildError::source(
                &index_path,
                format!("{} manifests: name one with oci_ref", manifests.len()),
            ))
        }
    };
    let mut manifest_path = blob_path(layout, chosen["digest"].as_str())?;
    let mut manifest: serde_json::Value = read_json(&manifest_path)?;
    // An index can point at another index (multi-arch); take its amd64/linux entry.
    if manifest["manifests"].is_array() {
        let inner = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| !matches!(m["platform"]["architecture"].as_str(), Some(a) if a != "amd64"))
            .ok_or_else(|| BuildError::source(&manifest_path, "no amd64 manifest"))?;
        manifest_path = blob_path(layout, inner["digest"].as_str())?;
        manifest = read_json(&manifest_path)?;
    }
    let layers = manifest["layers"]
        .as_array()
        .ok_or_else(|| BuildError::source(&manifest_path, "manifest has no layers"))?;
    layers
        .iter()
        .map(|l| blob_path(layout, l["digest"].as_str()))
        .collect()
}

fn blob_path(layout: &Path, digest: Option<&str>) -> Result<PathBuf, BuildError> {
    let d = digest.ok_or_else(|| BuildError::source(layout, "descriptor without digest"))?;
    let (alg, hex) = d
        .split_once(':')
        .ok_or_else(|| BuildError::source(layout, format!("bad digest {d:?}")))?;
    if !alg.chars().all(|c| c.is_ascii_alphanumeric())
        || !hex.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(BuildError::source(layout, format!("bad digest {d:?}")));
    }
    Ok(layout.join("blobs").join(alg).join(hex))
}

fn read_json(path: &Path) -> Result<serde_json::Value, BuildError> {
    let bytes = std::fs::read(path).map_err(BuildError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| BuildError::source(path, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(bytes: Vec<u8>, oci: bool) -> (Tree, Result<(), BuildError>) {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::new(dir.path().join("spool")).unwrap();
        let mut tree = Tree::new();
        let r = apply_tar(
            &mut tree,
            Box::new(std::io::Cursor::new(bytes)),
            Path::new("t"),
            &mut spool,
            oci,
        );
        (tree, r)
    }

    fn one_entry(name: &[u8], link: &[u8], kind: u8) -> Vec<u8> {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_mode(0o644);
        h.set_size(0);
        h.set_entry_type(match kind % 4 {
            0 => tar::EntryType::Regular,
            1 => tar::EntryType::Directory,
            2 => tar::EntryType::Symlink,
            _ => tar::EntryType::Link,
        });
        let g = h.as_gnu_mut().unwrap();
        g.name[..name.len()].copy_from_slice(name);
        g.linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &[][..]).unwrap();
        b.into_inner().unwrap()
    }

    proptest! {
        /// Arbitrary bytes as a tarball never panic the reader.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096), oci in any::<bool>()) {
            let _ = apply(bytes, oci);
        }

        /// Whatever the entry's name and link target, an accepted entry lands inside the root.
        #[test]
        fn accepted_entries_stay_inside(
            name in "[a-z./]{1,40}",
            link in "[a-z./]{0,40}",
            kind in any::<u8>(),
        ) {
            let (tree, r) = apply(one_entry(name.as_bytes(), link.as_bytes(), kind), false);
            if r.is_ok() {
                for (k, n) in &tree.entries {
                    prop_assert!(!k.starts_with('/') && !k.split('/').any(|c| c == ".." || c == "."), "{k}");
                    if let Kind::Symlink(t) = &n.kind {
                        prop_assert!(link_stays_inside(k, t));
                    }
                }
            } else {
                let e = r.unwrap_err().to_string();
                prop_assert!(e.contains(&format!("{name:?}")) || e.contains("bad tar"), "{e}");
            }
        }
    }
}
