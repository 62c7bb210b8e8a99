//! Least privilege: `serve` started as root binds its ports (67, 69, 4011, the DHCP probe and
//! watch sockets), then becomes `server.user` for good. glibc's `setuid` changes every thread of
//! the process (the kernel's call changes only the caller), and leaving uid 0 clears every
//! capability, so no parser runs with privileges afterwards.

use anyhow::{bail, Context, Result};
use nix::unistd::{Gid, Uid, User};
use std::path::Path;

/// Becomes `user` (its uid, its primary group, no supplementary groups) after giving it the
/// state directory; refuses to go on if root could be regained.
pub fn drop_to(user: &str, state: &Path) -> Result<()> {
    let u = User::from_name(user)
        .with_context(|| format!("looking up server.user {user:?}"))?
        .with_context(|| format!("server.user {user:?}: no such user"))?;
    if u.uid.is_root() {
        bail!("server.user {user:?} is root: name an unprivileged user");
    }
    chown_tree(state, u.uid, u.gid)
        .with_context(|| format!("giving {} to {user}", state.display()))?;
    nix::unistd::setgroups(&[u.gid]).context("setgroups")?;
    nix::unistd::setgid(u.gid).context("setgid")?;
    nix::unistd::setuid(u.uid).context("setuid")?;
    // setuid from root sets the real, effective and saved ids: there is no way back.
    if nix::unistd::setuid(Uid::from_raw(0)).is_ok() || nix::unistd::geteuid().is_root() {
        bail!("could not drop root: still able to become uid 0");
    }
    tracing::info!(
        user,
        uid = u.uid.as_raw(),
        gid = u.gid.as_raw(),
        "dropped root: every port is bound"
    );
    Ok(())
}

/// The state directory and everything in it, for the user the server becomes (the databases,
/// the image store, the admin token). Symlinks are not followed.
fn chown_tree(dir: &Path, uid: Uid, gid: Gid) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid.as_raw()), Some(gid.as_raw()))?;
    if !std::fs::symlink_metadata(dir)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if std::fs::symlink_metadata(&path)?.is_dir() {
            chown_tree(&path, uid, gid)?;
        } else {
            std::os::unix::fs::lchown(&path, Some(uid.as_raw()), Some(gid.as_raw()))?;
        }
    }
    Ok(())
}
