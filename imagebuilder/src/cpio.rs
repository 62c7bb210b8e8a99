//! A cpio "newc" writer (what the kernel unpacks as an initramfs): entries in path order, inode
//! numbers assigned in that order, every mtime fixed, owners and modes from the tree.

use crate::tree::{Kind, Tree};
use crate::Progress;
use std::io::{self, Write};

struct Header<'a> {
    ino: u32,
    mode: u32,
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
        h.ino, h.mode, h.uid, h.gid, 1, h.mtime, h.size, 0, 0, h.rdev.0, h.rdev.1, namesize, 0
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
    for (ino, (path, node)) in tree.entries.iter().enumerate() {
        let name = if path.is_empty() { "." } else { path.as_str() };
        let mode = node.type_bits() | node.mode;
        let mut h = Header {
            ino: ino as u32 + 1,
            mode,
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
            // Hard links are written as copies: the kernel's unpacker and every reader accept that.
            Kind::File(content) | Kind::Hardlink(_, content) => {
                let size = content.size();
                h.size = u32::try_from(size).map_err(|_| too_big(path))?;
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
    use crate::tree::{Content, Node};

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
}
