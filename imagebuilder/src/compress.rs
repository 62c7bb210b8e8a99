//! gzip / zstd / no compression around a writer, with fixed headers (no timestamps). When
//! compressing, the producer (reading sources, writing cpio/tar) runs on its own thread and hands
//! 1 MiB chunks to the compressor, so reading and compressing overlap.

use crate::recipe::Compression;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, SyncSender};

const CHUNK: usize = 1 << 20;

/// Runs `f` on a compressing writer over `w`; returns what `f` returned.
pub fn compressed<W: Write>(
    w: &mut W,
    comp: Compression,
    f: impl FnOnce(&mut dyn Write) -> io::Result<u64> + Send,
) -> io::Result<u64> {
    match comp {
        Compression::None => f(w),
        Compression::Gzip => {
            let mut e = flate2::GzBuilder::new()
                .mtime(0)
                .write(w, flate2::Compression::default());
            let n = pipelined(&mut e, f)?;
            e.finish()?;
            Ok(n)
        }
        Compression::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(w, 9)?;
            e.include_checksum(true)?;
            let n = pipelined(&mut e, f)?;
            e.finish()?;
            Ok(n)
        }
    }
}

struct ChunkWriter {
    tx: SyncSender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .send(chunk)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the compressor stopped"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Runs the producer `f` on a scoped thread; writes what it produces into `sink` here.
fn pipelined(
    sink: &mut dyn Write,
    f: impl FnOnce(&mut dyn Write) -> io::Result<u64> + Send,
) -> io::Result<u64> {
    let (tx, rx) = sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| {
        let producer = s.spawn(move || {
            let mut cw = ChunkWriter {
                tx,
                buf: Vec::with_capacity(CHUNK),
            };
            let n = f(&mut cw)?;
            cw.send()?;
            Ok::<u64, io::Error>(n)
        });
        let mut sink_result = Ok(());
        for chunk in rx.iter() {
            if let Err(e) = sink.write_all(&chunk) {
                sink_result = Err(e);
                break; // dropping rx makes the producer's next send fail
            }
        }
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the archive writer panicked")));
        sink_result?;
        produced
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn gzip_roundtrip_across_chunks() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        let n = compressed(&mut out, Compression::Gzip, |w| {
            for part in data.chunks(1000) {
                w.write_all(part)?;
            }
            Ok(7)
        })
        .unwrap();
        assert_eq!(n, 7);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    #[test]
    fn producer_error_is_returned() {
        let mut out = Vec::new();
        let e = compressed(&mut out, Compression::Zstd, |w| {
            w.write_all(b"x")?;
            Err(io::Error::other("boom"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
    }
}
