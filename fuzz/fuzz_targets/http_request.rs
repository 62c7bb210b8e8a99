//! Fuzzes the HTTP/1.1 request framing the server runs on every byte a client sends
//! (`pxeforge_httpd::wire`): the head parser, then the chunked body decoder on what
//! follows the head, fed whole and in two pieces, which must agree.
//!
//!     cargo +nightly fuzz run http_request
#![no_main]

use libfuzzer_sys::fuzz_target;
use pxeforge_httpd::wire::{parse_head, ChunkedDecoder, Framing, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    let Ok(Some(head)) = parse_head(data) else {
        return;
    };
    assert!(head.len <= data.len() && head.len <= MAX_HEAD);
    let rest = &data[head.len..];
    if head.framing != Framing::Chunked {
        return;
    }
    let limit = 4096;
    let mut whole = ChunkedDecoder::new(limit);
    let mut out_whole = Vec::new();
    let whole_result = whole.decode(rest, &mut out_whole);
    let split = rest.len() / 2;
    let mut pieces = ChunkedDecoder::new(limit);
    let mut out_pieces = Vec::new();
    let first = pieces.decode(&rest[..split], &mut out_pieces);
    if let (Ok(n), Ok(total)) = (first, &whole_result) {
        // The first piece is consumed whole unless the body ended inside it.
        if n == split && !pieces.is_done() {
            let second = pieces.decode(&rest[split..], &mut out_pieces);
            assert_eq!(second.map(|m| n + m).ok(), Some(*total));
            assert_eq!(out_pieces, out_whole);
            assert_eq!(pieces.is_done(), whole.is_done());
        }
    }
    if whole_result.is_ok() {
        assert!(out_whole.len() as u64 <= limit);
    }
});
