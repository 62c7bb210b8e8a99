//! Netascii encoding (RFC 764 as used by RFC 1350): LF → CR LF, CR → CR NUL.

/// Encodes a file's bytes for a netascii transfer.
pub fn encode(data: &[u8]) -> Vec<u8> {
    let extra = data.iter().filter(|&&b| b == b'\n' || b == b'\r').count();
    let mut out = Vec::with_capacity(data.len() + extra);
    for &b in data {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ends_and_bare_cr() {
        assert_eq!(encode(b"a\nb\rc\r\n"), b"a\r\nb\r\0c\r\0\r\n");
        assert_eq!(encode(b""), b"");
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

        proptest! {
            #[test]
            fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
                prop_assert_eq!(decode(&encode(&data)), data);
            }
        }
    }
}
