//! squashfs root image: our deterministic tar stream is piped into `mksquashfs -tar`, so owners,
//! modes, device nodes and extended attributes (the stream's PAX `SCHILY.xattr.*` records: file
//! capabilities, SELinux labels) come straight from the tree — no staging, no root, and the
//! builder's uid never leaks in. squashfs stores the `user.`, `trusted.` and `security.`
//! namespaces; mksquashfs drops others (`system.*`) with a warning.

use crate::error::BuildError;
use crate::recipe::SquashComp;
use crate::tree::Tree;
use crate::Progress;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;

pub fn build(
    tree: &Tree,
    out: &Path,
    mtime: u64,
    comp: SquashComp,
    progress: &dyn Progress,
) -> Result<(), BuildError> {
    let root = tree
        .get("")
        .map(|n| (n.mode, n.uid, n.gid))
        .unwrap_or((0o755, 0, 0));
    let comp = match comp {
        SquashComp::Gzip => "gzip",
        SquashComp::Xz => "xz",
        SquashComp::Zstd => "zstd",
    };
    let t = mtime.to_string();
    let mut child = crate::tools::cmd("mksquashfs")
        .arg("-")
        .arg(out)
        .args([
            "-tar",
            "-noappend",
            "-no-progress",
            "-quiet",
            "-reproducible",
            "-comp",
            comp,
        ])
        .args(["-all-time", &t, "-mkfs-time", &t])
        .args([
            "-root-mode",
            &format!("{:o}", root.0 & 0o7777),
            "-root-uid",
            &root.1.to_string(),
            "-root-gid",
            &root.2.to_string(),
        ])
        // mksquashfs refuses SOURCE_DATE_EPOCH together with explicit times.
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(BuildError::io("mksquashfs"))?;
    let mut stderr = child.stderr.take();
    let errs = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = stderr.as_mut() {
            let _ = e.read_to_string(&mut s);
        }
        s
    });
    let written = match child.stdin.take() {
        Some(stdin) => {
            crate::tarout::write_tar(tree, mtime, std::io::BufWriter::new(stdin), progress)
                .map(drop)
        }
        None => Ok(()),
    };
    let status = child.wait().map_err(BuildError::io("mksquashfs"))?;
    let stderr = errs.join().unwrap_or_default();
    if !status.success() || written.is_err() {
        return Err(BuildError::Tool {
            tool: "mksquashfs".into(),
            status: status.to_string(),
            stderr: match written {
                Err(e) => format!("writing the tar stream: {e}; {stderr}"),
                Ok(()) => stderr,
            },
        });
    }
    Ok(())
}
