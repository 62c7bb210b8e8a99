//! Small hot files (iPXE binaries, about 1 MB) are kept in memory and shared by every transfer;
//! an entry is reloaded when the file's inode, size or modification time change. Larger files
//! are streamed from disk with positioned reads.

use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use crate::confine::Opened;
use crate::netascii::{self, Source as _};

/// What identifies one version of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: i64,
    pub mtime_nsec: i64,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

/// Memory limits of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLimits {
    /// Files up to this size are held in memory.
    pub max_file_size: u64,
    /// Total bytes held; least recently used entries are dropped beyond it.
    pub max_total: u64,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            max_file_size: 8 << 20,
            max_total: 128 << 20,
        }
    }
}

/// The bytes of a transfer.
#[derive(Debug)]
pub enum Content {
    Memory(Arc<[u8]>),
    File {
        file: File,
        size: u64,
    },
    /// The netascii encoding of `source` (never itself netascii), converted as it is read:
    /// `size` is the encoded length, counted when the transfer starts.
    Netascii {
        source: Box<Content>,
        size: u64,
    },
}

impl Content {
    /// The netascii encoding of `source`; reads it through once to count its length.
    pub fn netascii(source: Content) -> io::Result<Content> {
        let size = match &source {
            Content::Memory(data) => netascii::encoded_len(data),
            _ => netascii::source_encoded_len(&mut Raw::new(&source))?,
        };
        Ok(Content::Netascii {
            source: Box::new(source),
            size,
        })
    }

    pub fn len(&self) -> u64 {
        match self {
            Content::Memory(data) => data.len() as u64,
            Content::File { size, .. } | Content::Netascii { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fills `out` with the bytes at `offset`. A file that shrank while being served is an error.
    /// (Netascii content is encoded from its start on every call here: transfers read through
    /// a [`ReadAhead`], which carries the conversion from block to block.)
    pub fn read_at(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match self {
            Content::Netascii { .. } => ReadAhead::new(self).read_at(offset, out),
            Content::Memory(data) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let src = start
                    .checked_add(out.len())
                    .and_then(|end| data.get(start..end))
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                out.copy_from_slice(src);
                Ok(())
            }
            Content::File { file, .. } => file.read_exact_at(out, offset),
        }
    }
}

/// Sequential reader over a [`Content`]: streamed files are read in large chunks, so a
/// 512-byte lockstep transfer costs one `pread` per chunk instead of one per block; netascii
/// content is converted block by block as it is read.
pub struct ReadAhead<'a> {
    raw: Raw<'a>,
    netascii: Option<netascii::Stream>,
}

/// Reads the stored bytes of a content (for netascii, of its source).
struct Raw<'a> {
    content: &'a Content,
    chunk: Vec<u8>,
    chunk_offset: u64,
}

/// Bytes read from disk at once for streamed files.
pub const READ_AHEAD: usize = 256 * 1024;

impl<'a> ReadAhead<'a> {
    pub fn new(content: &'a Content) -> ReadAhead<'a> {
        match content {
            Content::Netascii { source, .. } => ReadAhead {
                raw: Raw::new(source),
                netascii: Some(netascii::Stream::new()),
            },
            _ => ReadAhead {
                raw: Raw::new(content),
                netascii: None,
            },
        }
    }

    /// Fills `out` with the bytes at `offset`.
    pub fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match &mut self.netascii {
            Some(stream) => stream.read_at(&mut self.raw, offset, out),
            None => self.raw.read_at(offset, out),
        }
    }
}

impl<'a> Raw<'a> {
    fn new(content: &'a Content) -> Raw<'a> {
        Raw {
            content,
            chunk: Vec::new(),
            chunk_offset: 0,
        }
    }
}

impl netascii::Source for Raw<'_> {
    fn size(&self) -> u64 {
        self.content.len()
    }

    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let Content::File { file, size } = self.content else {
            return self.content.read_at(offset, out);
        };
        let end = offset
            .checked_add(out.len() as u64)
            .filter(|end| end <= size)
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let chunk_end = self.chunk_offset + self.chunk.len() as u64;
        if offset < self.chunk_offset || end > chunk_end {
            let want = (READ_AHEAD.max(out.len()) as u64).min(size - offset) as usize;
            self.chunk.resize(want, 0);
            file.read_exact_at(&mut self.chunk, offset)?;
            self.chunk_offset = offset;
        }
        let start = (offset - self.chunk_offset) as usize;
        out.copy_from_slice(&self.chunk[start..start + out.len()]);
        Ok(())
    }
}

/// Where the bytes of a transfer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Hit,
    /// Read from disk and kept in memory.
    Loaded,
    Streamed,
}

/// How long after its last modification a file is trusted to stay as its stamp says. A file
/// rewritten twice within one timestamp tick keeps the same mtime (and maybe size and inode),
/// so content read within this window is served but not kept.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Whether a file last modified at `mtime` may be kept in memory at `now`. Pure.
pub fn settled(mtime: SystemTime, now: SystemTime) -> bool {
    now.duration_since(mtime).is_ok_and(|age| age >= SETTLE)
}

/// Decides whether a file of `size` bytes is held in memory. Pure.
pub fn should_cache(size: u64, limits: CacheLimits) -> bool {
    size <= limits.max_file_size && size <= limits.max_total
}

struct Entry {
    stamp: Stamp,
    data: Arc<[u8]>,
    last_used: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<PathBuf, Entry>,
    total: u64,
    clock: u64,
}

/// The memory cache, shared by all transfers.
pub struct Cache {
    limits: CacheLimits,
    inner: Mutex<Inner>,
}

impl Cache {
    pub fn new(limits: CacheLimits) -> Cache {
        Cache {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Bytes currently held in memory.
    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns the content of an opened file, from memory when its stamp is unchanged.
    /// Blocking (reads the file on a miss): call it off the async threads.
    pub fn content(&self, opened: Opened) -> io::Result<(Content, Source)> {
        let stamp = Stamp::of(&opened.metadata);
        if !should_cache(stamp.size, self.limits) {
            return Ok((
                Content::File {
                    file: opened.file,
                    size: stamp.size,
                },
                Source::Streamed,
            ));
        }
        {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            if let Some(entry) = inner.entries.get_mut(&opened.path) {
                if entry.stamp == stamp {
                    entry.last_used = now;
                    return Ok((Content::Memory(entry.data.clone()), Source::Hit));
                }
            }
        }
        // Read outside the lock so a slow disk does not serialise other opens.
        let mut data = Vec::with_capacity(stamp.size as usize);
        (&opened.file).take(stamp.size).read_to_end(&mut data)?;
        let data: Arc<[u8]> = data.into();
        // A file rewritten while being read is served as read but not kept.
        let after = Stamp::of(&opened.file.metadata()?);
        let modified = opened.metadata.modified()?;
        if after == stamp && data.len() as u64 == stamp.size && settled(modified, SystemTime::now())
        {
            self.insert(opened.path, stamp, data.clone());
        }
        Ok((Content::Memory(data), Source::Loaded))
    }

    fn insert(&self, path: PathBuf, stamp: Stamp, data: Arc<[u8]>) {
        let mut inner = self.lock();
        inner.clock += 1;
        let now = inner.clock;
        if let Some(old) = inner.entries.remove(&path) {
            inner.total -= old.data.len() as u64;
        }
        let size = data.len() as u64;
        while inner.total + size > self.limits.max_total {
            let Some(victim) = inner
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            if let Some(old) = inner.entries.remove(&victim) {
                inner.total -= old.data.len() as u64;
            }
        }
        inner.total += size;
        inner.entries.insert(
            path,
            Entry {
                stamp,
                data,
                last_used: now,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::confine::open_confined;
    use std::path::Path;

    /// Writes a file whose mtime lies `age_secs` in the past (settled, unless 0).
    fn write_aged(path: &Path, data: &[u8], age_secs: u64) {
        std::fs::write(path, data).unwrap();
        let when = SystemTime::now() - Duration::from_secs(age_secs);
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(when)
            .unwrap();
    }

    fn content(cache: &Cache, root: &Path, name: &str) -> (Vec<u8>, Source) {
        let (c, src) = cache
            .content(open_confined(root, Path::new(name)).unwrap())
            .unwrap();
        let mut buf = vec![0; c.len() as usize];
        c.read_at(0, &mut buf).unwrap();
        (buf, src)
    }

    #[test]
    fn hit_then_refresh_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let a = root.join("a");
        write_aged(&a, b"one", 120);
        let cache = Cache::new(CacheLimits::default());
        assert_eq!(
            content(&cache, &root, "a"),
            (b"one".to_vec(), Source::Loaded)
        );
        assert_eq!(content(&cache, &root, "a"), (b"one".to_vec(), Source::Hit));
        // Rewritten in place, same size and inode: the mtime tells.
        write_aged(&a, b"two", 60);
        assert_eq!(
            content(&cache, &root, "a"),
            (b"two".to_vec(), Source::Loaded)
        );
        assert_eq!(content(&cache, &root, "a"), (b"two".to_vec(), Source::Hit));
        // Replaced by rename with the same mtime and size: the inode tells.
        let modified = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(root.join("a.new"), b"six").unwrap();
        std::fs::File::options()
            .write(true)
            .open(root.join("a.new"))
            .unwrap()
            .set_modified(modified)
            .unwrap();
        std::fs::rename(root.join("a.new"), &a).unwrap();
        assert_eq!(
            content(&cache, &root, "a"),
            (b"six".to_vec(), Source::Loaded)
        );
        // Rewritten with another size.
        write_aged(&a, b"three", 60);
        assert_eq!(
            content(&cache, &root, "a"),
            (b"three".to_vec(), Source::Loaded)
        );
        assert_eq!(cache.bytes(), 5);
    }

    #[test]
    fn a_freshly_written_file_is_served_but_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        write_aged(&root.join("a"), b"new", 0);
        let cache = Cache::new(CacheLimits::default());
        assert_eq!(
            content(&cache, &root, "a"),
            (b"new".to_vec(), Source::Loaded)
        );
        assert_eq!(
            content(&cache, &root, "a"),
            (b"new".to_vec(), Source::Loaded)
        );
        assert_eq!(cache.bytes(), 0);
        let now = SystemTime::now();
        assert!(!settled(now, now));
        assert!(
            !settled(now + Duration::from_secs(5), now),
            "mtime in the future"
        );
        assert!(settled(now - SETTLE, now));
    }

    #[test]
    fn large_files_stream_and_total_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        for (name, len) in [("big", 100), ("m1", 40), ("m2", 40), ("m3", 40)] {
            write_aged(&root.join(name), &vec![7u8; len], 60);
        }
        let cache = Cache::new(CacheLimits {
            max_file_size: 50,
            max_total: 100,
        });
        assert_eq!(content(&cache, &root, "big").1, Source::Streamed);
        for name in ["m1", "m2", "m3"] {
            assert_eq!(content(&cache, &root, name).1, Source::Loaded);
            assert!(cache.bytes() <= 100);
        }
        // m1 was the least recently used and made room for m3.
        assert_eq!(content(&cache, &root, "m3").1, Source::Hit);
        assert_eq!(content(&cache, &root, "m1").1, Source::Loaded);
    }

    #[test]
    fn read_ahead_matches_direct_reads() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let data: Vec<u8> = (0..(READ_AHEAD * 2 + 1000))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(root.join("f"), &data).unwrap();
        let cache = Cache::new(CacheLimits {
            max_file_size: 10,
            max_total: 10,
        });
        let (content, source) = cache
            .content(open_confined(&root, Path::new("f")).unwrap())
            .unwrap();
        assert_eq!(source, Source::Streamed);
        let mut reader = ReadAhead::new(&content);
        // Forward, across chunk edges, then backwards (a retransmission), then past the end.
        for (offset, len) in [
            (0, 512),
            (512, 700),
            (READ_AHEAD as u64 - 10, 512),
            (100, 50),
        ] {
            let mut buf = vec![0u8; len];
            reader.read_at(offset, &mut buf).unwrap();
            assert_eq!(buf, &data[offset as usize..offset as usize + len]);
        }
        let mut buf = vec![0u8; 2000];
        assert!(reader.read_at(data.len() as u64 - 1000, &mut buf).is_err());
        let mut buf = vec![0u8; 1000];
        reader.read_at(data.len() as u64 - 1000, &mut buf).unwrap();
        assert_eq!(buf, &data[data.len() - 1000..]);
    }

    #[test]
    fn memory_read_past_end_is_an_error() {
        let c = Content::Memory(Arc::from(&b"abc"[..]));
        let mut buf = [0u8; 2];
        assert!(c.read_at(2, &mut buf).is_err());
        assert!(c.read_at(u64::MAX, &mut buf).is_err());
        c.read_at(1, &mut buf).unwrap();
        assert_eq!(&buf, b"bc");
    }
}
