//! HTTP/1.1 framing as pure functions (RFC 9112): the request head, how long its body is, the
//! chunked body decoder and the response head. No sockets here, so every rule is tested and
//! fuzzed on bytes alone; `conn` does the I/O.
//!
//! Line ends: every line of the framing ends in CRLF — the request line, header lines, the
//! blank line ending the head, chunk-size lines, the CRLF after chunk data, trailer lines and
//! the last line of a chunked body. A bare LF in any of them is refused (400), and so is a
//! bare CR. RFC 9112 §2.2 lets a recipient take a bare LF as a line end, but only where every
//! parser on the path agrees on where a line ends is a request's end the same for all of them;
//! refusing is the one policy that cannot disagree with a proxy in front (that difference is
//! how request smuggling works), and every client pxeforge serves (iPXE, curl, wget, Anaconda)
//! sends CRLF. Bytes inside chunk data are data, LF or not.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

/// A request head larger than this is refused (431) before it is fully read, so a client
/// cannot make us buffer without bound. iPXE's and Anaconda's heads are a few hundred bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// Header lines per request; more is 431.
pub const MAX_HEADERS: usize = 64;
/// Trailer bytes after a chunked body (we read and drop them), and chunk-extension bytes.
const MAX_TRAILER: usize = 4 * 1024;
/// The refusal of a bare LF in a chunked body's lines.
const BARE_LF: &str = "bare LF in chunked body";

/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    /// The request target as sent: origin-form (`/path?q`) or absolute-form.
    pub target: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub headers: HeaderMap,
    /// Bytes of the buffer the head took, including the blank line.
    pub len: usize,
    pub framing: Framing,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expect_continue: bool,
}

/// Why a request is refused before it reaches a handler; each maps to one status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("request head over {MAX_HEAD} bytes or {MAX_HEADERS} header lines")]
    HeadTooLarge,
    #[error("request body over {0} bytes")]
    BodyTooLarge(u64),
    #[error("transfer coding not implemented (only chunked)")]
    UnsupportedCoding,
    #[error("HTTP version not supported (HTTP/1.0 and HTTP/1.1 only)")]
    Version,
}

impl WireError {
    pub fn status(&self) -> StatusCode {
        match self {
            WireError::Malformed(_) => StatusCode::BAD_REQUEST,
            WireError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            WireError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            WireError::UnsupportedCoding => StatusCode::NOT_IMPLEMENTED,
            WireError::Version => StatusCode::HTTP_VERSION_NOT_SUPPORTED,
        }
    }
}

/// Parses a request head from the start of `buf`. `Ok(None)`: not complete yet, read more.
pub fn parse_head(buf: &[u8]) -> Result<Option<Head>, WireError> {
    if looks_like_http2_preface(buf) {
        return Err(WireError::Version);
    }
    let mut raw = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut raw);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(WireError::HeadTooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::HeadTooLarge),
        Err(httparse::Error::Version) => return Err(WireError::Version),
        Err(_) => return Err(WireError::Malformed("request line or header syntax")),
    };
    if len > MAX_HEAD {
        return Err(WireError::HeadTooLarge);
    }
    // httparse takes a bare LF as a line end; we do not (see the module documentation).
    if has_bare_lf(&buf[..len]) {
        return Err(WireError::Malformed("bare LF in request head"));
    }
    let minor = req.version.ok_or(WireError::Malformed("no version"))?;
    let method = req
        .method
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
        .ok_or(WireError::Malformed("method"))?;
    let target = req.path.ok_or(WireError::Malformed("no target"))?;
    if target.is_empty() {
        return Err(WireError::Malformed("empty target"));
    }
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| WireError::Malformed("header name"))?;
        let value =
            HeaderValue::from_bytes(h.value).map_err(|_| WireError::Malformed("header value"))?;
        headers.append(name, value);
    }
    if minor == 1 && headers.get_all(header::HOST).iter().count() != 1 {
        // RFC 9112 §3.2: exactly one Host in an HTTP/1.1 request.
        return Err(WireError::Malformed(
            "HTTP/1.1 needs exactly one Host header",
        ));
    }
    let framing = framing(&headers, minor)?;
    let close = has_token(&headers, header::CONNECTION, "close");
    let keep_alive = if minor == 0 {
        has_token(&headers, header::CONNECTION, "keep-alive") && !close
    } else {
        !close
    };
    let expect_continue = minor == 1
        && headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    Ok(Some(Head {
        method,
        target: target.to_string(),
        minor,
        headers,
        len,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// Whether an LF in `head` is not preceded by a CR.
fn has_bare_lf(head: &[u8]) -> bool {
    head.first() == Some(&b'\n') || head.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r')
}

/// `PRI * HTTP/2.0`: a client speaking HTTP/2 with prior knowledge.
fn looks_like_http2_preface(buf: &[u8]) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";
    let n = buf.len().min(PREFACE.len());
    n >= 4 && buf[..n] == PREFACE[..n]
}

/// RFC 9112 §6.3. Both Transfer-Encoding and Content-Length, or disagreeing lengths, are
/// refused rather than guessed at: that ambiguity is how request smuggling works.
fn framing(headers: &HeaderMap, minor: u8) -> Result<Framing, WireError> {
    let te: Vec<&HeaderValue> = headers.get_all(header::TRANSFER_ENCODING).iter().collect();
    if !te.is_empty() {
        if headers.contains_key(header::CONTENT_LENGTH) {
            return Err(WireError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if minor == 0 {
            return Err(WireError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        let mut codings = Vec::new();
        for v in te {
            let s = v
                .to_str()
                .map_err(|_| WireError::Malformed("Transfer-Encoding"))?;
            codings.extend(s.split(',').map(str::trim).filter(|c| !c.is_empty()));
        }
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(WireError::UnsupportedCoding),
        };
    }
    let mut length: Option<u64> = None;
    for v in headers.get_all(header::CONTENT_LENGTH) {
        let s = v
            .to_str()
            .map_err(|_| WireError::Malformed("Content-Length"))?;
        for part in s.split(',') {
            let part = part.trim();
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(WireError::Malformed("Content-Length"));
            }
            let n: u64 = part
                .parse()
                .map_err(|_| WireError::Malformed("Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(WireError::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) | None => Framing::None,
        Some(n) => Framing::Length(n),
    })
}

/// Whether a comma-separated header (Connection) lists `token`, case-insensitively.
fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Decodes a chunked body incrementally (RFC 9112 §7.1); trailers are read and dropped. Every
/// line ends in CRLF; a bare LF or CR is refused wherever it comes (see the module docs).
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
    /// Body bytes produced so far, held to `limit`.
    total: u64,
    limit: u64,
    trailer: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Hex digits of a chunk size; `digits` counts them (none is malformed, > 16 overflows).
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions up to CR.
    Ext {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// Start of a trailer line, or of the final empty line.
    TrailerStart,
    TrailerLine,
    TrailerLineLf,
    EndLf,
    Done,
}

impl ChunkedDecoder {
    pub fn new(limit: u64) -> ChunkedDecoder {
        ChunkedDecoder {
            state: Chunk::Size { size: 0, digits: 0 },
            total: 0,
            limit,
            trailer: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Consumes as much of `input` as it can, appending body bytes to `out`; returns how many
    /// input bytes it took. Stops at the end of the body, leaving a pipelined request alone.
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, WireError> {
        let bad = |why| Err(WireError::Malformed(why));
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                Chunk::Done => break,
                Chunk::Data { left } => {
                    let n = (left.min((input.len() - i) as u64)) as usize;
                    self.total += n as u64;
                    if self.total > self.limit {
                        return Err(WireError::BodyTooLarge(self.limit));
                    }
                    out.extend_from_slice(&input[i..i + n]);
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data { left }
                    };
                    continue;
                }
                Chunk::Size { size, digits } => match char::from(b).to_digit(16) {
                    Some(d) => {
                        if digits >= 16 {
                            return bad("chunk size too long");
                        }
                        self.state = Chunk::Size {
                            size: size << 4 | d as u64,
                            digits: digits + 1,
                        };
                    }
                    None if b == b'\n' => return bad(BARE_LF),
                    None if digits == 0 => return bad("chunk size"),
                    None => match b {
                        b'\r' => self.state = Chunk::SizeLf { size },
                        b';' | b' ' | b'\t' => self.state = Chunk::Ext { size },
                        _ => return bad("chunk size"),
                    },
                },
                Chunk::Ext { size } => match b {
                    b'\r' => self.state = Chunk::SizeLf { size },
                    b'\n' => return bad(BARE_LF),
                    _ => {
                        self.trailer += 1;
                        if self.trailer > MAX_TRAILER {
                            return bad("chunk extension too long");
                        }
                    }
                },
                Chunk::SizeLf { size } => {
                    if b != b'\n' {
                        return bad("chunk header not ended by CRLF");
                    }
                    self.trailer = 0;
                    self.state = if size == 0 {
                        Chunk::TrailerStart
                    } else {
                        if self.total.saturating_add(size) > self.limit {
                            return Err(WireError::BodyTooLarge(self.limit));
                        }
                        Chunk::Data { left: size }
                    };
                }
                Chunk::DataCr => {
                    if b == b'\n' {
                        return bad(BARE_LF);
                    }
                    if b != b'\r' {
                        return bad("chunk data not ended by CRLF");
                    }
                    self.state = Chunk::DataLf;
                }
                Chunk::DataLf => {
                    if b != b'\n' {
                        return bad("chunk data not ended by CRLF");
                    }
                    self.state = Chunk::Size { size: 0, digits: 0 };
                }
                // A bare LF here used to be taken as trailer text, so that `0\r\n\n` did not
                // end the body and the request after it was swallowed as trailers.
                Chunk::TrailerStart => {
                    self.state = match b {
                        b'\r' => Chunk::EndLf,
                        b'\n' => return bad(BARE_LF),
                        _ => Chunk::TrailerLine,
                    };
                    self.count_trailer()?;
                }
                Chunk::TrailerLine => {
                    match b {
                        b'\r' => self.state = Chunk::TrailerLineLf,
                        b'\n' => return bad(BARE_LF),
                        _ => {}
                    }
                    self.count_trailer()?;
                }
                Chunk::TrailerLineLf => {
                    if b != b'\n' {
                        return bad("trailer line not ended by CRLF");
                    }
                    self.state = Chunk::TrailerStart;
                }
                Chunk::EndLf => {
                    if b != b'\n' {
                        return bad("chunked body not ended by CRLF");
                    }
                    self.state = Chunk::Done;
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn count_trailer(&mut self) -> Result<(), WireError> {
        self.trailer += 1;
        if self.trailer > MAX_TRAILER {
            Err(WireError::Malformed("trailer too long"))
        } else {
            Ok(())
        }
    }
}

/// Writes a response head. Framing headers (Content-Length, Transfer-Encoding, Connection) are
/// ours to set, whatever the handler put there, so the body length on the wire is always the
/// one written here.
pub fn response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    content_length: Option<u64>,
    close: bool,
    date: &str,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\ndate: ");
    out.extend_from_slice(date.as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || name == header::DATE
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(n) = content_length {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(n.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Whether a response with this status to this method carries a body (RFC 9110 §6.4.1).
pub fn has_body(method: &Method, status: StatusCode) -> bool {
    method != Method::HEAD
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(s: &str) -> Result<Option<Head>, WireError> {
        parse_head(s.as_bytes())
    }

    #[test]
    fn simple_get_and_keep_alive_rules() {
        let h = head("GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHost: a\r\n\r\nGET /next")
            .unwrap()
            .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.target, "/ipxe?mac=52:54:00:00:00:01");
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive);
        assert_eq!(
            h.len,
            "GET /ipxe?mac=52:54:00:00:00:01 HTTP/1.1\r\nHost: a\r\n\r\n".len()
        );
        let h = head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive);
        let h = head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n").unwrap().is_none());
    }

    #[test]
    fn body_framing() {
        let h = head("POST /events HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        let h = head("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let h =
            head("POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.expect_continue);
    }

    #[test]
    fn refusals_have_their_status() {
        let status = |s: &str| head(s).unwrap_err().status().as_u16();
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 505);
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        assert_eq!(status("GET / HTTP/1.1\r\nHo st: a\r\n\r\n"), 400);
        assert_eq!(status("G(T / HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        let many: String = (0..MAX_HEADERS + 1)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(status(&long), 431);
    }

    fn dechunk(input: &[u8], limit: u64) -> Result<(Vec<u8>, usize, bool), WireError> {
        let mut d = ChunkedDecoder::new(limit);
        let mut out = Vec::new();
        let n = d.decode(input, &mut out)?;
        Ok((out, n, d.is_done()))
    }

    #[test]
    fn chunked_bodies() {
        let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-T: 1\r\n\r\nGET /";
        let (out, n, done) = dechunk(body, 100).unwrap();
        assert_eq!(out, b"hello, world");
        assert!(done);
        assert_eq!(&body[n..], b"GET /");
        assert_eq!(
            dechunk(b"5\r\nhello\r\n0\r\n\r\n", 4).unwrap_err(),
            WireError::BodyTooLarge(4)
        );
        assert!(dechunk(b"5\r\nhelloXX", 100).is_err());
        assert!(dechunk(b"x\r\n", 100).is_err());
        assert!(dechunk(b"\r\n", 100).is_err());
        assert!(dechunk(b"5\nhello", 100).is_err());
        assert!(dechunk(b"11111111111111111\r\n", u64::MAX).is_err());
        let (_, _, done) = dechunk(b"5\r\nhel", 100).unwrap();
        assert!(!done);
    }

    #[test]
    fn bare_lf_is_refused_in_heads_and_in_chunked_bodies() {
        // One policy for every line of the framing: CRLF only (see `parse_head`).
        for h in [
            "GET / HTTP/1.1\nHost: a\n\n",
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.0\n\n",
        ] {
            let e = head(h).unwrap_err();
            assert_eq!(e, WireError::Malformed("bare LF in request head"), "{h:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
        // CRLF everywhere, and the leading empty line RFC 9112 §2.2 lets us skip, still parse.
        assert!(head("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .is_some());
        let bodies: [&[u8]; 8] = [
            b"5\nhello\r\n0\r\n\r\n",
            b"5;x=y\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"0\n\r\n",
            b"0\r\n\n",
            b"0\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"0\r\nX-T: 1\n\r\n",
            b"0\r\nX-T: 1\r\n\n",
        ];
        for body in bodies {
            let shown = String::from_utf8_lossy(body);
            assert!(
                matches!(dechunk(body, 100), Err(WireError::Malformed(_))),
                "{shown:?}: {:?}",
                dechunk(body, 100)
            );
        }
        // A bare CR is no line end either.
        assert!(head("GET / HTTP/1.1\rHost: a\r\n\r\n").is_err());
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\r\n\r\n").is_err());
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\n\r\r\n").is_err());
        for body in [
            &b"5\rhello\r\n"[..],
            b"5\r\nhello\r0\r\n\r\n",
            b"0\r\nX: 1\r\r\n\r\n",
            b"0\r\n\r\r\n",
        ] {
            assert!(
                dechunk(body, 100).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        // A bare LF inside chunk data is data.
        let (out, _, done) = dechunk(b"3\r\na\nb\r\n0\r\n\r\n", 100).unwrap();
        assert_eq!((out.as_slice(), done), (&b"a\nb"[..], true));
    }

    #[test]
    fn response_heads() {
        let mut out = Vec::new();
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        response_head(&mut out, StatusCode::OK, &h, Some(3), true, "D");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\ndate: D\r\ncontent-type: text/plain\r\ncontent-length: 3\r\nconnection: close\r\n\r\n"
        );
        assert!(!has_body(&Method::HEAD, StatusCode::OK));
        assert!(!has_body(&Method::GET, StatusCode::NOT_MODIFIED));
        assert!(has_body(&Method::GET, StatusCode::NOT_FOUND));
    }

    proptest! {
        #[test]
        fn any_bytes_parse_or_refuse(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(Some(h)) = parse_head(&bytes) {
                prop_assert!(h.len <= bytes.len() && h.len <= MAX_HEAD);
                prop_assert!(!has_bare_lf(&bytes[..h.len]));
            }
        }

        #[test]
        fn heads_split_anywhere_parse_the_same(split in 0usize..120, cl in 0u64..100_000) {
            let text = format!("POST /events HTTP/1.1\r\nHost: h\r\nContent-Length: {cl}\r\n\r\n");
            let cut = split.min(text.len() - 1);
            prop_assert!(parse_head(&text.as_bytes()[..cut]).unwrap().is_none());
            let h = parse_head(text.as_bytes()).unwrap().unwrap();
            prop_assert_eq!(h.len, text.len());
            prop_assert_eq!(h.framing, if cl == 0 { Framing::None } else { Framing::Length(cl) });
        }

        #[test]
        fn chunked_round_trip_in_any_pieces(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..64), 0..8),
            piece in 1usize..17,
        ) {
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
                wire.extend_from_slice(c);
                wire.extend_from_slice(b"\r\n");
                want.extend_from_slice(c);
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut d = ChunkedDecoder::new(1 << 20);
            let mut out = Vec::new();
            let mut at = 0;
            while at < wire.len() && !d.is_done() {
                let end = (at + piece).min(wire.len());
                let n = d.decode(&wire[at..end], &mut out).unwrap();
                at += n;
            }
            prop_assert!(d.is_done());
            prop_assert_eq!(at, wire.len());
            prop_assert_eq!(out, want);
        }

        /// A head whose line ends are each CRLF or bare LF parses only if all are CRLF.
        #[test]
        fn heads_parse_only_with_crlf_everywhere(
            fields in proptest::collection::vec(("[a-z][a-z0-9-]{0,8}", "[!-~]([ -~]{0,16}[!-~])?"), 0..6),
            crlf in proptest::collection::vec(any::<bool>(), 8),
            leading_blank in any::<bool>(),
        ) {
            let mut lines = vec!["GET /x?y HTTP/1.1".to_string(), "Host: h".to_string()];
            lines.extend(fields.iter().map(|(n, v)| format!("X-{n}: {v}")));
            lines.push(String::new());
            // One end per line, the last one the blank line ending the head; a leading blank
            // line (which RFC 9112 §2.2 lets a server skip) takes the first.
            let ends: Vec<bool> = crlf.iter().copied().cycle().take(lines.len() + 1).collect();
            let eol = |crlf: bool| if crlf { "\r\n" } else { "\n" };
            let mut text = String::new();
            let mut used = Vec::new();
            if leading_blank {
                text.push_str(eol(ends[0]));
                used.push(ends[0]);
            }
            for (i, line) in lines.iter().enumerate() {
                text.push_str(line);
                text.push_str(eol(ends[i + 1]));
                used.push(ends[i + 1]);
            }
            let all_crlf = used.iter().all(|&c| c);
            match parse_head(text.as_bytes()) {
                Ok(Some(h)) => {
                    prop_assert!(all_crlf, "accepted a bare LF: {:?}", text);
                    prop_assert_eq!(h.len, text.len());
                }
                Ok(None) => prop_assert!(false, "incomplete: {:?}", text),
                Err(e) => {
                    prop_assert!(!all_crlf, "refused {:?}: {}", text, e);
                    prop_assert_eq!(e, WireError::Malformed("bare LF in request head"));
                }
            }
        }

        /// A chunked body whose line ends (size lines, data ends, trailers, the last line) are
        /// each CRLF or bare LF decodes only if all are CRLF; a bare LF is refused where it is.
        #[test]
        fn chunked_bodies_decode_only_with_crlf_everywhere(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..32), 0..4),
            ext in any::<bool>(),
            trailers in 0usize..3,
            crlf in proptest::collection::vec(any::<bool>(), 12),
            piece in 1usize..9,
        ) {
            let mut ends = crlf.iter().copied().cycle();
            let mut eol = |wire: &mut Vec<u8>, used: &mut Vec<bool>| {
                let c = ends.next().unwrap_or(true);
                used.push(c);
                wire.extend_from_slice(if c { b"\r\n" } else { b"\n" });
            };
            let (mut wire, mut used, mut want) = (Vec::new(), Vec::new(), Vec::new());
            for c in &chunks {
                wire.extend_from_slice(format!("{:x}", c.len()).as_bytes());
                if ext {
                    wire.extend_from_slice(b";e=1");
                }
                eol(&mut wire, &mut used);
                wire.extend_from_slice(c);
                want.extend_from_slice(c);
                eol(&mut wire, &mut used);
            }
            wire.push(b'0');
            eol(&mut wire, &mut used);
            for t in 0..trailers {
                wire.extend_from_slice(format!("X-T{t}: v").as_bytes());
                eol(&mut wire, &mut used);
            }
            eol(&mut wire, &mut used);
            let all_crlf = used.iter().all(|&c| c);
            // Fed in pieces, as reads deliver it.
            let mut d = ChunkedDecoder::new(1 << 20);
            let mut out = Vec::new();
            let mut at = 0;
            let mut result = Ok(());
            while at < wire.len() && !d.is_done() {
                let end = (at + piece).min(wire.len());
                match d.decode(&wire[at..end], &mut out) {
                    Ok(n) => at += n,
                    Err(e) => {
                        result = Err(e);
                        break;
                    }
                }
            }
            if all_crlf {
                prop_assert_eq!(result, Ok(()));
                prop_assert!(d.is_done());
                prop_assert_eq!(at, wire.len());
                prop_assert_eq!(out, want);
            } else {
                prop_assert!(matches!(result, Err(WireError::Malformed(_))), "{:?}: {:?}", wire, result);
            }
        }

        #[test]
        fn chunked_never_panics_or_exceeds_limit(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            limit in 0u64..256,
        ) {
            let mut d = ChunkedDecoder::new(limit);
            let mut out = Vec::new();
            if let Ok(n) = d.decode(&bytes, &mut out) {
                prop_assert!(n <= bytes.len());
                prop_assert!(out.len() as u64 <= limit);
            }
        }
    }
}
