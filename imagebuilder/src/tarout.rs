//! A deterministic tar writer: entries in path order, fixed mtime, numeric owners from the tree,
//! no user or group names, device nodes and hard links as entries, extended attributes as PAX
//! `SCHILY.xattr.*` records (what GNU tar `--xattrs`, bsdtar and `mksquashfs -tar` read).

use crate::source::PAX_XATTR;
use crate::tree::{Kind, Tree};
use crate::Progress;
use std::io::{self, Write};

pub fn write_tar<W: Write>(
    tree: &Tree,
    mtime: u64,
    w: W,
    progress: &dyn Progress,
) -> io::Result<W> {
    let total = tree.content_size();
    let mut done = 0;
    let mut b = tar::Builder::new(w);
    for (path, node) in &tree.entries {
        if path.is_empty() {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(node.mode);
        h.set_uid(node.uid as u64);
        h.set_gid(node.gid as u64);
        h.set_mtime(mtime);
        h.set_size(0);
        // A hard link is its target's inode: the attributes travel once, with the target (which
        // the tree puts first), as GNU tar writes them.
        if !node.xattrs.is_empty() && !matches!(node.kind, Kind::Hardlink(..)) {
            let records: Vec<(String, &[u8])> = node
                .xattrs
                .iter()
                .map(|(k, v)| (format!("{PAX_XATTR}{k}"), v.as_slice()))
                .collect();
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))?;
        }
        match &node.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, format!("{path}/"), io::empty())?;
            }
            Kind::File(c) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(c.size());
                b.append_data(&mut h, path, c.open()?)?;
                done += c.size();
                progress.bytes(done, Some(total));
            }
            Kind::Symlink(t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, path, t)?;
            }
            Kind::Hardlink(t, _) => {
                h.set_entry_type(tar::EntryType::Link);
                b.append_link(&mut h, path, t)?;
            }
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.set_entry_type(if matches!(node.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*ma)?;
                h.set_device_minor(*mi)?;
                b.append_data(&mut h, path, io::empty())?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, path, io::empty())?;
            }
        }
    }
    b.into_inner()
}
