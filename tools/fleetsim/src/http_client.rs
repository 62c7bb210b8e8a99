//! A minimal HTTP/1.1 client with keep-alive, as iPXE and Anaconda use HTTP: one connection per
//! host, Content-Length bodies, and large bodies compared against the expected bytes as they
//! stream in rather than stored.

use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_HEAD: usize = 64 * 1024;
/// Bodies kept in memory (scripts, kickstarts); anything larger must be compared, not kept.
const MAX_KEPT_BODY: u64 = 16 * 1024 * 1024;
const READ_SIZE: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed response head: {0}")]
    Head(String),
    #[error("connection closed after {got} of {want} body bytes")]
    Truncated { got: u64, want: u64 },
    #[error("body differs from the served file at byte {0}")]
    Mismatch(u64),
    #[error("body is {got} bytes, the file has {want}")]
    Length { got: u64, want: u64 },
    #[error("body of {0} bytes is too large to keep")]
    TooLarge(u64),
}

impl HttpError {
    /// The request failed because of the connection (refused, reset, closed mid-answer), not
    /// because of what the server answered: what a server that is down or restarting causes,
    /// and what a client may repeat. A malformed or wrong answer is not one.
    pub fn is_connection_failure(&self) -> bool {
        matches!(
            self,
            HttpError::Connect(..) | HttpError::Io(_) | HttpError::Truncated { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub status: u16,
    pub content_length: Option<u64>,
    pub close: bool,
    pub chunked: bool,
}

/// Parses a response head from the start of `buf`: Ok(None) while incomplete, else the head
/// and its length in bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let used = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEAD {
                return Err(HttpError::Head("head larger than 64 KiB".into()));
            }
            return Ok(None);
        }
        Err(e) => return Err(HttpError::Head(e.to_string())),
    };
    let status = resp
        .code
        .ok_or_else(|| HttpError::Head("no status".into()))?;
    let mut head = Head {
        status,
        content_length: None,
        close: resp.version == Some(0),
        chunked: false,
    };
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<u64>()
                .map_err(|_| HttpError::Head(format!("bad content-length {value:?}")))?;
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    Ok(Some((head, used)))
}

pub struct Response {
    pub status: u16,
    /// The body when it was kept (no expected content given).
    pub body: Vec<u8>,
    pub length: u64,
}

/// Where a request's body bytes go.
#[derive(Clone, Copy)]
pub enum Expect<'a> {
    /// Keep the body (small responses).
    Keep,
    /// Compare against these bytes as they arrive; a 200 must match them exactly.
    Bytes(&'a [u8]),
}

pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Bytes buf[..filled] hold data read but not consumed yet.
    filled: usize,
}

impl Conn {
    pub fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            stream: None,
            buf: vec![0; READ_SIZE],
            filled: 0,
        }
    }

    /// Drops the connection (and anything half read from it): the next request opens a new one.
    pub fn reset(&mut self) {
        self.stream = None;
        self.filled = 0;
    }

    /// Sends one request and reads its response, reconnecting once if a kept-alive connection
    /// turned out to be closed before any byte of the response arrived.
    pub async fn request(
        &mut self,
        method: &str,
        target: &str,
        body: Option<(&str, &[u8])>,
        expect: Expect<'_>,
    ) -> Result<Response, HttpError> {
        self.request_with(method, target, &[], body, expect).await
    }

    /// `request` with extra header lines (`Authorization`, ...).
    pub async fn request_with(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        expect: Expect<'_>,
    ) -> Result<Response, HttpError> {
        let reused = self.stream.is_some();
        match self
            .try_request(method, target, headers, body, &expect)
            .await
        {
            Err(HttpError::Io(_)) | Err(HttpError::Truncated { got: 0, want: 0 }) if reused => {
                self.stream = None;
                self.try_request(method, target, headers, body, &expect)
                    .await
            }
            other => other,
        }
    }

    async fn try_request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
        expect: &Expect<'_>,
    ) -> Result<Response, HttpError> {
        if self.stream.is_none() {
            let s = TcpStream::connect(self.addr)
                .await
                .map_err(|e| HttpError::Connect(self.addr, e))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
            self.filled = 0;
        }
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nUser-Agent: pxeforge-fleet-sim\r\n",
            self.addr
        );
        for (name, value) in headers {
            req.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some((ctype, b)) = body {
            req.push_str(&format!(
                "Content-Type: {ctype}\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        if let Some((_, b)) = body {
            bytes.extend_from_slice(b);
        }
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| HttpError::Head("no connection".into()))?;
        stream.write_all(&bytes).await?;

        let (head, used) = loop {
            if let Some(h) = parse_head(&self.buf[..self.filled])? {
                break h;
            }
            if self.filled == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return Err(HttpError::Truncated { got: 0, want: 0 });
            }
            self.filled += n;
        };
        self.buf.copy_within(used..self.filled, 0);
        self.filled -= used;
        if head.chunked {
            return Err(HttpError::Head(
                "chunked bodies are not expected from pxeforge".into(),
            ));
        }
        let want = match (head.content_length, method) {
            (_, "HEAD") => 0,
            (Some(n), _) => n,
            (None, _) if head.status == 204 || head.status == 304 => 0,
            (None, _) => {
                return Err(HttpError::Head(format!(
                    "status {} without Content-Length",
                    head.status
                )))
            }
        };
        let compare = match expect {
            Expect::Bytes(b) if head.status == 200 => {
                if b.len() as u64 != want {
                    return Err(HttpError::Length {
                        got: want,
                        want: b.len() as u64,
                    });
                }
                Some(*b)
            }
            _ => None,
        };
        if compare.is_none() && want > MAX_KEPT_BODY {
            return Err(HttpError::TooLarge(want));
        }
        let mut kept = Vec::new();
        let mut got = 0u64;
        loop {
            let take = (want - got).min(self.filled as u64) as usize;
            if take > 0 {
                let chunk = &self.buf[..take];
                match compare {
                    Some(exp) => {
                        let at = got as usize;
                        if exp[at..at + take] != *chunk {
                            let off = chunk
                                .iter()
                                .zip(&exp[at..at + take])
                                .position(|(a, b)| a != b)
                                .unwrap_or(0);
                            self.stream = None;
                            return Err(HttpError::Mismatch(got + off as u64));
                        }
                    }
                    None => kept.extend_from_slice(chunk),
                }
                got += take as u64;
                self.buf.copy_within(take..self.filled, 0);
                self.filled -= take;
            }
            if got == want {
                break;
            }
            let n = stream.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                self.stream = None;
                return Err(HttpError::Truncated { got, want });
            }
            self.filled += n;
        }
        if head.close {
            self.stream = None;
        }
        Ok(Response {
            status: head.status,
            body: kept,
            length: got,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heads() {
        let (h, n) = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(n, 38);
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(5),
                close: false,
                chunked: false
            }
        );
        let (h, _) = parse_head(b"HTTP/1.0 404 Not Found\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.close);
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
            .unwrap()
            .is_none());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").is_err());
        assert!(parse_head(b"garbage\r\n\r\n").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_heads_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse_head(&data);
        }
    }
}
