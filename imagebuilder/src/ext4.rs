//! ext4 root image: `mkfs.ext4 -d` copies the staged tree, then one `debugfs -w` script sets every
//! inode's real owner, mode and timestamps, adds device nodes and fifos, and writes extended
//! attributes (`ea_set`: file capabilities, SELinux labels) — no root, no loop device. Setting
//! `security.*` on staged files instead would need root on the build host, and `mkfs.ext4 -d`
//! would copy whatever the host adds to them (its own SELinux labels).
//! UUID and directory hash seed are fixed (derived from the build id) so the image is reproducible.

use crate::error::BuildError;
use crate::tree::{Kind, Tree};
use std::fmt::Write as _;
use std::path::Path;

/// A UUID string made from 16 bytes of a hex id (fixed per build id and purpose).
pub fn uuid_from(id: &str, salt: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{id}/{salt}").as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&h[..16]);
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout, so tools accept it
    b[8] = (b[8] & 0x3f) | 0x80;
    let x = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &x[0..8],
        &x[8..12],
        &x[12..16],
        &x[16..20],
        &x[20..32]
    )
}

/// Bytes an ext4 image of this tree needs, with headroom; a whole number of MiB.
pub fn size_for(tree: &Tree) -> u64 {
    let blocks: u64 = tree
        .entries
        .values()
        .map(|n| match &n.kind {
            Kind::File(c) => c.size().div_ceil(4096) + 1,
            Kind::Dir => 1,
            _ => 0,
        })
        .sum();
    let inodes = tree.entries.len() as u64;
    let bytes = blocks * 4096 + inodes * 256;
    let with_room = bytes + bytes / 4 + (32 << 20);
    with_room.div_ceil(1 << 20) << 20
}

fn q(path: &str) -> String {
    format!("\"/{}\"", path.replace('"', "\\\""))
}

/// Values longer than this (escaped) go through a file (`ea_set -f`): debugfs reads its script
/// in lines of at most 8 KiB.
const INLINE_VALUE_MAX: usize = 1024;

/// A value as a debugfs string: quoted, every byte other than a letter, digit or `._:-` as a
/// three-digit octal escape (debugfs's parser takes those; it has no escape for `"` itself).
fn quote_value(v: &[u8]) -> String {
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for &b in v {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
            s.push(b as char);
        } else {
            let _ = write!(s, "\\{b:03o}");
        }
    }
    s.push('"');
    s
}

/// The debugfs script that gives every inode its owner, mode, times and extended attributes
/// and creates device nodes and fifos. Long attribute values are written to files
/// `xattr-<n>` in `values_dir`, which debugfs must run in.
pub fn debugfs_script(tree: &Tree, mtime: u64, values_dir: &Path) -> Result<String, BuildError> {
    let mut s = String::new();
    let mut value_files = 0usize;
    for (path, node) in &tree.entries {
        if path.contains(['"', '\n']) {
            return Err(BuildError::Entry {
                entry: path.clone(),
                reason: "ext4 output cannot carry names with '\"' or newlines".into(),
            });
        }
        let p = if path.is_empty() {
            "\"/\"".to_string()
        } else {
            q(path)
        };
        // debugfs's mknod creates in its working directory, so go there first.
        let (dir, name) = (
            crate::tree::parent(path),
            path.rsplit('/').next().unwrap_or(path),
        );
        let spec = match &node.kind {
            Kind::Char(ma, mi) => Some(format!("c {ma} {mi}")),
            Kind::Block(ma, mi) => Some(format!("b {ma} {mi}")),
            Kind::Fifo => Some("p".to_string()),
            _ => None,
        };
        if let Some(spec) = spec {
            let _ = writeln!(s, "cd \"/{dir}\"\nmknod \"{name}\" {spec}\ncd /");
        }
        let mode = node.type_bits() | (node.mode & 0o7777);
        let _ = writeln!(s, "sif {p} mode 0{mode:o}");
        let _ = writeln!(s, "sif {p} uid {}", node.uid);
        let _ = writeln!(s, "sif {p} gid {}", node.gid);
        for f in ["atime", "mtime", "ctime", "crtime"] {
            let _ = writeln!(s, "sif {p} {f} @{mtime}");
            let _ = writeln!(s, "sif {p} {f}_extra 0");
        }
        // A hard link's attributes are its target's: set once, on the target.
        if matches!(node.kind, Kind::Hardlink(..)) {
            continue;
        }
        for (name, value) in &node.xattrs {
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
            {
                return Err(BuildError::Entry {
                    entry: path.clone(),
                    reason: format!("ext4 output cannot carry the xattr name {name:?}"),
                });
            }
            let quoted = quote_value(value);
            if quoted.len() <= INLINE_VALUE_MAX {
                let _ = writeln!(s, "ea_set {p} {name} {quoted}");
            } else {
                let file = format!("xattr-{value_files}");
                value_files += 1;
                let fp = values_dir.join(&file);
                std::fs::write(&fp, value).map_err(BuildError::io(&fp))?;
                let _ = writeln!(s, "ea_set -f {file} {p} {name}");
            }
        }
    }
    Ok(s)
}

pub fn build(
    tree: &Tree,
    staged: &Path,
    work: &Path,
    out: &Path,
    id: &str,
    mtime: u64,
    size: u64,
) -> Result<(), BuildError> {
    let f = std::fs::File::create(out).map_err(BuildError::io(out))?;
    f.set_len(size).map_err(BuildError::io(out))?;
    drop(f);
    let uuid = uuid_from(id, "ext4");
    let seed = uuid_from(id, "ext4-hash-seed");
    let t = mtime.to_string();
    let inodes = (tree.entries.len() as u64 + 1024).to_string();
    crate::tools::run(
        crate::tools::cmd("mkfs.ext4")
            .args([
                "-q", "-F", "-b", "4096", "-N", &inodes, "-L", "root", "-U", &uuid,
            ])
            .arg("-E")
            .arg(format!(
                "hash_seed={seed},root_owner=0:0,lazy_itable_init=0,nodiscard"
            ))
            .arg("-d")
            .arg(staged)
            .arg(out)
            .env("E2FSPROGS_FAKE_TIME", &t)
            .env("SOURCE_DATE_EPOCH", &t),
    )?;
    // Absolute, as debugfs runs in `work` (a state directory may be given as a relative path).
    let script = std::path::absolute(work.join("ext4.debugfs")).map_err(BuildError::io(work))?;
    let out = &std::path::absolute(out).map_err(BuildError::io(out))?;
    let text = debugfs_script(tree, mtime, work)?;
    std::fs::write(&script, text).map_err(BuildError::io(&script))?;
    // debugfs exits 0 even when a command fails; its complaints on stderr are the errors.
    let o = crate::tools::cmd("debugfs")
        // Where the script's `ea_set -f xattr-<n>` value files are.
        .current_dir(work)
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(out)
        .env("E2FSPROGS_FAKE_TIME", &t)
        .env("SOURCE_DATE_EPOCH", &t)
        .output()
        .map_err(BuildError::io("debugfs"))?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !o.status.success() || !errors.is_empty() {
        return Err(BuildError::Tool {
            tool: "debugfs".into(),
            status: o.status.to_string(),
            stderr: errors
                .iter()
                .take(20)
                .copied()
                .collect::<Vec<_>>()
                .join("\n"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_quoted_with_octal_escapes() {
        assert_eq!(
            quote_value(b"system_u:object_r:bin_t:s0"),
            "\"system_u:object_r:bin_t:s0\""
        );
        // debugfs's parser has no escape for a quote inside quotes: octal for everything else.
        assert_eq!(
            quote_value(b"a\"b\\c \n\x00\xff"),
            r#""a\042b\134c\040\012\000\377""#
        );
    }
}
