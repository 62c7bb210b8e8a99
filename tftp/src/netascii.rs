//! Netascii encoding (RFC 764 as used by RFC 1350): LF → CR LF, CR → CR NUL.
//!
//! A netascii transfer converts while it streams ([`Stream`]): DATA block N is computed from
//! the source bytes on the fly, so a transfer holds no converted copy of its file (a cached
//! file stays shared with every other transfer of it). Each source byte becomes one or two
//! bytes, so the converted offset of a block depends on every line end before it: the stream
//! carries a [`Cursor`] from one block to the next, including the second half of a pair that a
//! block boundary cut in two (a CR as the block's last byte, its LF or NUL opening the next
//! block), and remembers the cursor at recent block starts for retransmitted windows.

use std::collections::VecDeque;
use std::io;

/// Encodes a file's bytes for a netascii transfer (whole; the transfers use [`Stream`]).
pub fn encode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(encoded_len(data) as usize);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

/// Length of the encoding of `data`.
pub fn encoded_len(data: &[u8]) -> u64 {
    let extra = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    (data.len() + extra) as u64
}

/// A position in the encoded stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Offset of the next source byte to encode.
    pub src: u64,
    /// The second byte of an expanded pair (the LF of CR LF, the NUL of CR NUL) that the end of
    /// the previous output cut off; it comes first in the next output.
    pub pending: Option<u8>,
}

/// Encodes from `input`, the source bytes at `cursor.src`, into `out` until either is used up,
/// advancing `cursor` past the source bytes consumed. Returns the bytes written. Pure.
pub fn encode_step(input: &[u8], cursor: &mut Cursor, out: &mut [u8]) -> usize {
    let mut written = 0;
    if let Some(b) = cursor.pending {
        let Some(slot) = out.first_mut() else {
            return 0;
        };
        *slot = b;
        written = 1;
        cursor.pending = None;
    }
    let mut consumed = 0;
    for &b in input {
        let (first, second) = match b {
            b'\n' => (b'\r', Some(b'\n')),
            b'\r' => (b'\r', Some(0)),
            other => (other, None),
        };
        let Some(slot) = out.get_mut(written) else {
            break;
        };
        *slot = first;
        written += 1;
        consumed += 1;
        if let Some(second) = second {
            match out.get_mut(written) {
                Some(slot) => {
                    *slot = second;
                    written += 1;
                }
                // The block ends between the two bytes of the pair.
                None => {
                    cursor.pending = Some(second);
                    break;
                }
            }
        }
    }
    cursor.src += consumed as u64;
    written
}

/// Raw bytes a [`Stream`] encodes.
pub trait Source {
    /// Length of the source in bytes.
    fn size(&self) -> u64;
    /// Fills `out` with the source bytes at `offset`; a range past the end is an error.
    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()>;
}

impl Source for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&mut self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(out.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

/// Block starts remembered for rewinds: a retransmitted window of up to this many blocks
/// restarts from a remembered cursor; an older offset is reached by encoding forward again
/// from the nearest earlier one (or from the start), which is slower but as correct.
pub const MARKS: usize = 128;

/// Source bytes read at once while encoding.
const SCRATCH: usize = 16 * 1024;

/// Reads the netascii encoding of a [`Source`] at any offset, converting on the fly.
#[derive(Debug, Default)]
pub struct Stream {
    /// Encoded offset where the last read ended, and the cursor there.
    pos: u64,
    cursor: Cursor,
    /// (encoded offset, cursor) where recent reads ended, oldest first.
    marks: VecDeque<(u64, Cursor)>,
    scratch: Vec<u8>,
}

impl Stream {
    pub fn new() -> Stream {
        Stream::default()
    }

    /// Fills `out` with the encoded bytes at encoded `offset`. Reading on from where the
    /// previous read ended costs only the conversion of `out`.
    pub fn read_at(
        &mut self,
        source: &mut impl Source,
        offset: u64,
        out: &mut [u8],
    ) -> io::Result<()> {
        if offset != self.pos {
            self.seek(source, offset)?;
        }
        self.fill(source, out)?;
        if self.marks.back().is_none_or(|&(pos, _)| pos < self.pos) {
            if self.marks.len() == MARKS {
                self.marks.pop_front();
            }
            self.marks.push_back((self.pos, self.cursor));
        }
        Ok(())
    }

    /// Moves to encoded offset `target`: from the nearest known position at or before it.
    fn seek(&mut self, source: &mut impl Source, target: u64) -> io::Result<()> {
        let (pos, cursor) = self
            .marks
            .iter()
            .rev()
            .copied()
            .chain([(self.pos, self.cursor)])
            .filter(|&(pos, _)| pos <= target)
            .max_by_key(|&(pos, _)| pos)
            .unwrap_or_default();
        self.pos = pos;
        self.cursor = cursor;
        let mut skip = [0u8; 4096];
        while self.pos < target {
            let n = (target - self.pos).min(skip.len() as u64) as usize;
            self.fill(source, &mut skip[..n])?;
        }
        Ok(())
    }

    /// Fills `out` from the current position, or fails with `UnexpectedEof` at the source's end.
    fn fill(&mut self, source: &mut impl Source, out: &mut [u8]) -> io::Result<()> {
        let mut written = 0;
        while written < out.len() {
            let left = source.size().saturating_sub(self.cursor.src);
            if left == 0 && self.cursor.pending.is_none() {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            // Each source byte gives at least one output byte: never read more than fits.
            let want = left.min((out.len() - written).min(SCRATCH) as u64) as usize;
            self.scratch.resize(want, 0);
            source.read_at(self.cursor.src, &mut self.scratch)?;
            let n = encode_step(&self.scratch, &mut self.cursor, &mut out[written..]);
            written += n;
            self.pos += n as u64;
        }
        Ok(())
    }
}

/// Length of the encoding of a whole source, read in chunks (no copy of it is kept).
pub fn source_encoded_len(source: &mut impl Source) -> io::Result<u64> {
    let len = source.size();
    let mut chunk = vec![0u8; SCRATCH.min(len as usize)];
    let mut total = 0u64;
    let mut offset = 0u64;
    while offset < len {
        let n = (len - offset).min(chunk.len() as u64) as usize;
        source.read_at(offset, &mut chunk[..n])?;
        total += encoded_len(&chunk[..n]);
        offset += n as u64;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_and_bare_cr() {
        assert_eq!(encode(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(encode(b""), b"");
        assert_eq!(encoded_len(b"a\nb\rc\r\n"), 11);
    }

    /// Reads blocks of `blksize` in order through a [`Stream`].
    fn streamed(data: &[u8], blksize: usize) -> Vec<u8> {
        let size = encoded_len(data);
        let mut stream = Stream::new();
        let mut out = Vec::new();
        let mut offset = 0u64;
        loop {
            let len = (size - offset).min(blksize as u64) as usize;
            let mut block = vec![0u8; len];
            stream.read_at(&mut &data[..], offset, &mut block).unwrap();
            out.extend_from_slice(&block);
            offset += len as u64;
            if len < blksize {
                return out;
            }
        }
    }

    #[test]
    fn cr_at_a_block_boundary() {
        // The CR of "\r\n" (and of "\r\0") is the last byte of block 1; its second byte
        // opens block 2.
        assert_eq!(streamed(b"abc\ndef", 4), b"abc\r\ndef");
        assert_eq!(streamed(b"abc\rdef", 4), b"abc\r\0def");
        assert_eq!(streamed(b"\n\n\n", 1), b"\r\n\r\n\r\n");
        assert_eq!(streamed(b"\r", 1), b"\r\0");
        assert_eq!(streamed(b"", 4), b"");
        // A rewind to a block that begins with the second half of a pair.
        let data = b"abc\ndef\rgh";
        let mut stream = Stream::new();
        let mut block = [0u8; 4];
        stream.read_at(&mut &data[..], 0, &mut block).unwrap();
        stream.read_at(&mut &data[..], 4, &mut block).unwrap();
        assert_eq!(&block, b"\ndef");
        stream.read_at(&mut &data[..], 8, &mut block).unwrap();
        stream.read_at(&mut &data[..], 4, &mut block).unwrap();
        assert_eq!(&block, b"\ndef");
        // Past the end is an error, not a short block.
        assert!(stream.read_at(&mut &data[..], 10, &mut block).is_err());
    }

    #[test]
    fn empty_output_and_source_len() {
        let mut cursor = Cursor {
            src: 0,
            pending: Some(b'\n'),
        };
        assert_eq!(encode_step(b"x", &mut cursor, &mut []), 0);
        assert_eq!(cursor.pending, Some(b'\n'));
        let data = b"a\r\nb".repeat(10_000);
        assert_eq!(
            source_encoded_len(&mut &data[..]).unwrap(),
            encode(&data).len() as u64
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        /// Decoding as a netascii client does must give back the original bytes.
        fn decode(data: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < data.len() {
                if data[i] == b'\r' && i + 1 < data.len() {
                    out.push(if data[i + 1] == b'\n' { b'\n' } else { b'\r' });
                    i += 2;
                } else {
                    out.push(data[i]);
                    i += 1;
                }
            }
            out
        }

        /// Bytes with many CR and LF, so that pairs often straddle block boundaries.
        fn text() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..3000).prop_map(|raw| {
                raw.into_iter()
                    .map(|b| match b % 8 {
                        0..=2 => b'\r',
                        3..=5 => b'\n',
                        _ => b,
                    })
                    .collect()
            })
        }

        proptest! {
            #[test]
            fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
                prop_assert_eq!(decode(&encode(&data)), data);
            }

            /// Blocks read in order, with retransmissions that go back some blocks (a window
            /// restart), equal the whole-file conversion cut into blocks.
            #[test]
            fn streamed_blocks_equal_the_whole_conversion(
                data in text(),
                blksize in 1usize..600,
                rewinds in proptest::collection::vec((0usize..400, 0u64..200), 0..8),
            ) {
                let whole = encode(&data);
                let size = whole.len() as u64;
                prop_assert_eq!(source_encoded_len(&mut &data[..]).unwrap(), size);
                let blocks = size / blksize as u64 + 1;
                let mut stream = Stream::new();
                let mut block = vec![0u8; blksize];
                let mut read_block = |stream: &mut Stream, index: u64| -> Result<(), TestCaseError> {
                    let offset = index * blksize as u64;
                    let len = (size - offset).min(blksize as u64) as usize;
                    stream.read_at(&mut &data[..], offset, &mut block[..len]).unwrap();
                    prop_assert_eq!(&block[..len], &whole[offset as usize..offset as usize + len]);
                    Ok(())
                };
                let mut rewinds = rewinds.into_iter().peekable();
                let mut index = 0u64;
                while index < blocks {
                    read_block(&mut stream, index)?;
                    index += 1;
                    if let Some(&(at, back)) = rewinds.peek() {
                        if at as u64 <= index {
                            rewinds.next();
                            index = index.saturating_sub(back);
                        }
                    }
                }
                // A random block read cold, after everything else.
                if blocks > 0 {
                    read_block(&mut stream, blocks / 2)?;
                }
            }

            /// Any cut of the output into pieces gives the same bytes as one piece.
            #[test]
            fn encode_step_in_pieces(data in text(), cuts in proptest::collection::vec(0usize..50, 1..100)) {
                let whole = encode(&data);
                let mut cursor = Cursor::default();
                let mut out = Vec::new();
                for cut in cuts.iter().cycle() {
                    if out.len() == whole.len() {
                        break;
                    }
                    let mut piece = vec![0u8; cut + 1];
                    let src = cursor.src as usize;
                    let n = encode_step(&data[src..], &mut cursor, &mut piece);
                    prop_assert!(n > 0);
                    out.extend_from_slice(&piece[..n]);
                }
                prop_assert_eq!(out, whole);
            }
        }
    }
}
