//! ext4 root image: `mkfs.ext4 -d` copies the staged tree, then one `debugfs -w` script sets every
//! inode's real owner, mode and timestamps and adds device nodes and fifos — no root, no loop device.
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

pub fn debugfs_script(tree: &Tree, mtime: u64) -> Result<String, BuildError> {
    let mut s = String::new();
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
    let script = work.join("ext4.debugfs");
    std::fs::write(&script, debugfs_script(tree, mtime)?).map_err(BuildError::io(&script))?;
    // debugfs exits 0 even when a command fails; its complaints on stderr are the errors.
    let o = crate::tools::cmd("debugfs")
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
