//! A cpio "newc" writer (what the kernel unpacks as an initramfs): entries in path order, inode
//! numbers assigned in that order, every mtime fixed, owners and modes from the tree.
//!
//! Hard links are written as newc links: every name of the inode with the same inode number
//! and link count, the data once, with the last name (the layout GNU cpio writes and expects;
//! the kernel's unpacker links each name to the first and accepts the data on any of them).
//!
//! Extended attributes are NOT carried: the newc header (110 bytes of fixed fields: inode, mode,
//! uid, gid, nlink, mtime, filesize, device numbers, name size, check) has no place for them, and
//! the kernel's initramfs unpacker reads no other cpio format (the `070703` "newcx" format with
//! xattrs was proposed upstream and never merged). A file capability or an SELinux label in the
//! tree is therefore dropped from the initramfs, with a warning; the tar, squashfs and ext4
//! outputs keep them.

use crate::tree::{Kind, Node, Tree};
use crate::Progress;
use std::collections::HashMap;
use std::io::{self, Write};

struct Header<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: &'a str,
}

fn pad4<W: Write + ?Sized>(w: &mut W, len: u64) -> io::Result<()> {
    let pad = (4 - (len % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..pad])
}

fn write_header<W: Write + ?Sized>(w: &mut W, h: &Header) -> io::Result<()> {
    let namesize = h.name.len() + 1;
    write!(
        w,
        "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
        h.ino,
        h.mode,
        h.uid,
        h.gid,
        h.nlink,
        h.mtime,
        h.size,
        0,
        0,
        h.rdev.0,
        h.rdev.1,
        namesize,
        0
    )?;
    w.write_all(h.name.as_bytes())?;
    w.write_all(&[0])?;
    pad4(w, (110 + namesize) as u64)
}

fn too_big(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{name}: larger than 4 GiB, cpio newc cannot hold it"),
    )
}

/// Writes the whole tree as an uncompressed newc archive; returns the archive's length.
pub fn write_cpio<W: Write + ?Sized>(
    tree: &Tree,
    mtime: u64,
    w: &mut W,
    progress: &dyn Progress,
) -> io::Result<u64> {
    let total = tree.content_size();
    let mut done = 0u64;
    let mut out = CountingWriter { inner: w, n: 0 };
    let mtime = mtime.min(u32::MAX as u64) as u32;
    let groups = link_groups(tree);
    warn_dropped_xattrs(tree);
    // Inode numbers of the link groups' files, as they are written (a file precedes its links).
    let mut group_ino: HashMap<&str, u32> = HashMap::new();
    for (ino, (path, node)) in tree.entries.iter().enumerate() {
        let name = if path.is_empty() { "." } else { path.as_str() };
        let mode = node.type_bits() | node.mode;
        let mut h = Header {
            ino: ino as u32 + 1,
            mode,
            nlink: 1,
            uid: node.uid,
            gid: node.gid,
            mtime,
            size: 0,
            rdev: (0, 0),
            name,
        };
        match &node.kind {
            Kind::Dir | Kind::Fifo => write_header(&mut out, &h)?,
            Kind::Char(ma, mi) | Kind::Block(ma, mi) => {
                h.rdev = (*ma, *mi);
                write_header(&mut out, &h)?;
            }
            Kind::Symlink(t) => {
                h.size = t.len() as u32;
                write_header(&mut out, &h)?;
                out.write_all(t.as_bytes())?;
                pad4(&mut out, t.len() as u64)?;
            }
            Kind::File(content) | Kind::Hardlink(_, content) => {
                let size = content.size();
                h.size = u32::try_from(size).map_err(|_| too_big(path))?;
                let group = match &node.kind {
                    Kind::Hardlink(t, _) => groups.get(t.as_str()).map(|g| (t.as_str(), g)),
                    _ => groups.get(path.as_str()).map(|g| (path.as_str(), g)),
                };
                // A link whose target is not a file of this tree (never after fix_hardlinks)
                // is written as a file of its own.
                if let Some((first, g)) = group {
                    h.ino = *group_ino.entry(first).or_insert(h.ino);
                    h.nlink = g.nlink;
                    if g.last != path.as_str() {
                        h.size = 0;
                        write_header(&mut out, &h)?;
                        continue;
                    }
                }
                write_header(&mut out, &h)?;
                let copied = io::copy(&mut content.open()?, &mut out)?;
                if copied != size {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{path}: source changed size during the build"),
                    ));
                }
                pad4(&mut out, size)?;
                done += size;
                progress.bytes(done, Some(total));
            }
        }
    }
    let trailer = Header {
        ino: 0,
        mode: 0,
        nlink: 1,
        uid: 0,
        gid: 0,
        mtime: 0,
        size: 0,
        rdev: (0, 0),
        name: "TRAILER!!!",
    };
    write_header(&mut out, &trailer)?;
    Ok(out.n)
}

/// A hard link group: how many names, and the last of them (which carries the data).
struct Group<'a> {
    nlink: u32,
    last: &'a str,
}

/// The link groups of the tree, by the path of their file.
fn link_groups(tree: &Tree) -> HashMap<&str, Group<'_>> {
    let mut groups: HashMap<&str, Group> = HashMap::new();
    for (path, node) in &tree.entries {
        let Kind::Hardlink(t, _) = &node.kind else {
            continue;
        };
        let Some((
            first,
            Node {
                kind: Kind::File(_),
                ..
            },
        )) = tree.entries.get_key_value(t)
        else {
            continue;
        };
        let g = groups.entry(first.as_str()).or_insert(Group {
            nlink: 1,
            last: first.as_str(),
        });
        g.nlink += 1;
        // Entries come in path order: the last one seen is the last written.
        if path.as_str() > g.last {
            g.last = path.as_str();
        }
    }
    groups
}

/// Says which extended attributes the initramfs loses (see the module comment).
fn warn_dropped_xattrs(tree: &Tree) {
    let mut with = tree
        .entries
        .iter()
        .filter(|(_, n)| !n.xattrs.is_empty() && !matches!(n.kind, Kind::Hardlink(..)));
    if let Some((first, n)) = with.next() {
        let names: Vec<&str> = n.xattrs.keys().map(String::as_str).collect();
        tracing::warn!(
            entries = 1 + with.count(),
            first = %format!("/{first} ({})", names.join(", ")),
            "the initramfs (cpio newc) cannot carry extended attributes: dropped"
        );
    }
}

struct CountingWriter<'a, W: Write + ?Sized> {
    inner: &'a mut W,
    n: u64,
}

impl<W: Write + ?Sized> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Content;

    #[test]
    fn device_and_file_entries() {
        let mut t = Tree::new();
        t.insert(
            "dev/console".into(),
            Node {
                kind: Kind::Char(5, 1),
                mode: 0o600,
                uid: 0,
                gid: 5,
                xattrs: Default::default(),
            },
        )
        .unwrap();
        t.insert(
            "init".into(),
            Node {
                kind: Kind::File(Content::Inline(b"hi".to_vec())),
                mode: 0o755,
                uid: 0,
                gid: 0,
                xattrs: Default::default(),
            },
        )
        .unwrap();
        let mut v = Vec::new();
        let n = write_cpio(&t, 7, &mut v, &crate::NoProgress).unwrap();
        assert_eq!(n as usize, v.len());
        assert_eq!(v.len() % 4, 0);
        let s = String::from_utf8_lossy(&v);
        // dev/console: mode 020600, gid 5, rdev 5:1
        let i = s.find("dev/console").unwrap();
        let h = &s[i - 110..i];
        assert_eq!(&h[14..22], "00002180");
        assert_eq!(&h[30..38], "00000005");
        assert_eq!(&h[46..54], "00000007");
        assert_eq!(&h[78..86], "00000005");
        assert_eq!(&h[86..94], "00000001");
        assert!(s.ends_with("TRAILER!!!\0\0\0\0") || s.contains("TRAILER!!!"));
    }

    /// (name, ino, nlink, filesize) of every member of a newc archive.
    fn members(v: &[u8]) -> Vec<(String, u32, u32, u32)> {
        let mut out = Vec::new();
        let mut i = 0;
        let field = |h: &[u8], n: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * n..14 + 8 * n]).unwrap(), 16)
                .unwrap()
        };
        while i + 110 <= v.len() {
            let h = &v[i..i + 110];
            let (namesize, size) = (field(h, 11) as usize, field(h, 6));
            let name = String::from_utf8_lossy(&v[i + 110..i + 110 + namesize - 1]).into_owned();
            out.push((name.clone(), field(h, 0), field(h, 4), size));
            if name == "TRAILER!!!" {
                break;
            }
            i += (110 + namesize).div_ceil(4) * 4;
            i += (size as usize).div_ceil(4) * 4;
        }
        out
    }

    #[test]
    fn hard_links_share_an_inode_and_the_last_name_carries_the_data() {
        let mut t = Tree::new();
        let c = Content::Inline(b"data".to_vec());
        let file = Node::new(Kind::File(c.clone()), 0o755, 0, 0);
        t.insert("bin/a".into(), file.clone()).unwrap();
        t.insert(
            "bin/b".into(),
            Node::new(Kind::Hardlink("bin/a".into(), c.clone()), 0o755, 0, 0),
        )
        .unwrap();
        t.insert(
            "bin/c".into(),
            Node::new(Kind::Hardlink("bin/a".into(), c), 0o755, 0, 0),
        )
        .unwrap();
        t.insert("bin/d".into(), file).unwrap();
        let mut v = Vec::new();
        write_cpio(&t, 0, &mut v, &crate::NoProgress).unwrap();
        let m = members(&v);
        let ino = m[2].1;
        assert_eq!(
            &m[2..6],
            [
                ("bin/a".into(), ino, 3, 0),
                ("bin/b".into(), ino, 3, 0),
                ("bin/c".into(), ino, 3, 4),
                ("bin/d".into(), 6, 1, 4),
            ]
        );
    }
}
