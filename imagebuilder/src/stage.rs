//! Writes the tree into a directory for the standard tools that read a root from disk
//! (`mksquashfs`, `mkfs.ext4 -d`). Owners, device nodes and fifos are NOT created here — the tools
//! get them from a pseudo file / debugfs script — so staging needs no privileges. Every staged
//! entry is readable and writable by the builder; the real mode travels separately.

use crate::error::BuildError;
use crate::tree::{Kind, Tree};
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn stage(tree: &Tree, dir: &Path, mtime: u64) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
    for (path, node) in &tree.entries {
        if path.is_empty() {
            continue;
        }
        let p = dir.join(path);
        match &node.kind {
            Kind::Dir => std::fs::create_dir(&p).map_err(BuildError::io(&p))?,
            Kind::File(c) => {
                let mut f = std::fs::File::create(&p).map_err(BuildError::io(&p))?;
                std::io::copy(&mut c.open().map_err(BuildError::io(&p))?, &mut f)
                    .map_err(BuildError::io(&p))?;
                std::fs::set_permissions(
                    &p,
                    std::fs::Permissions::from_mode((node.mode & 0o777) | 0o600),
                )
                .map_err(BuildError::io(&p))?;
            }
            Kind::Symlink(t) => std::os::unix::fs::symlink(t, &p).map_err(BuildError::io(&p))?,
            Kind::Hardlink(t, _) => {
                std::fs::hard_link(dir.join(t), &p).map_err(BuildError::io(&p))?
            }
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {}
        }
    }
    // Directory modes and times last (deepest first) so writing into them kept working.
    for (path, node) in tree.entries.iter().rev() {
        let p = dir.join(path);
        if matches!(node.kind, Kind::Dir) {
            std::fs::set_permissions(
                &p,
                std::fs::Permissions::from_mode((node.mode & 0o777) | 0o700),
            )
            .map_err(BuildError::io(&p))?;
        }
        if !matches!(node.kind, Kind::Char(..) | Kind::Block(..) | Kind::Fifo) {
            set_times(&p, mtime).map_err(BuildError::io(&p))?;
        }
    }
    Ok(())
}

fn set_times(p: &Path, t: u64) -> std::io::Result<()> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let ts = libc::timespec {
        tv_sec: t as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: c is a valid NUL-terminated path and times points at two timespecs.
    let r = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
