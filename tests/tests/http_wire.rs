//! HTTP/1.1 on the wire, byte by byte, against the real binary: keep-alive and pipelining across
//! sendfile bodies, request bodies in both framings, and every refusal.

use pxeforge_tests::{copy_example_site, Server};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const BIG: usize = 5_000_000;

struct Site {
    _dir: tempfile::TempDir,
    server: Server,
    big: Vec<u8>,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    copy_example_site(&site);
    let assets = dir.path().join("assets");
    std::fs::create_dir_all(&assets).unwrap();
    let big: Vec<u8> = (0..BIG as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(assets.join("big.bin"), &big).unwrap();
    std::fs::write(assets.join("small.txt"), b"small\n").unwrap();
    let state = dir.path().join("state");
    // One armed host, whose build token the event posts below carry.
    pxeforge_tests::arm(&site, &state, &["vm-bios-01"]);
    let server = Server::start(
        &site,
        &[
            "--no-tftp",
            "--assets",
            assets.to_str().unwrap(),
            "--state",
            state.to_str().unwrap(),
        ],
    );
    Site {
        _dir: dir,
        server,
        big,
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A raw connection that reads responses one at a time from what the server sent.
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(site: &Site) -> Conn {
        let s = TcpStream::connect(site.server.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 65536];
        match self.s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Reads one response; `head_only` for responses to HEAD.
    fn response(&mut self, head_only: bool) -> Response {
        let end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            assert!(self.fill(), "connection closed before a response head");
        };
        let head = String::from_utf8(self.buf[..end].to_vec()).unwrap();
        self.buf.drain(..end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        assert!(status_line.starts_with("HTTP/1.1 "), "{status_line}");
        let status = status_line[9..12].parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.trim().to_string(), v.trim().to_string())
            })
            .collect();
        let mut r = Response {
            status,
            headers,
            body: Vec::new(),
        };
        let len: usize = r
            .header("content-length")
            .map(|v| v.parse().unwrap())
            .unwrap_or(0);
        if head_only || status == 304 || status == 100 {
            return r;
        }
        while self.buf.len() < len {
            assert!(self.fill(), "connection closed inside a body");
        }
        r.body = self.buf.drain(..len).collect();
        r
    }

    /// True when the server closed the connection (after what it already sent).
    fn closed(&mut self) -> bool {
        self.s
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        while self.buf.is_empty() {
            if !self.fill() {
                return true;
            }
        }
        false
    }
}

#[test]
fn pipelined_requests_across_sendfile_bodies_keep_order() {
    let site = site();
    let mut c = Conn::open(&site);
    // Three requests in one write: a big sendfile body, a rendered script, a Range request.
    c.send(
        b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /ipxe?mac=52:54:00:00:10:01 HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /assets/big.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1000-1999\r\n\r\n\
          HEAD /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), BIG);
    assert!(r.body == site.big, "sendfile body differs from the file");
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(String::from_utf8_lossy(&r.body).starts_with("#!ipxe"));
    assert_eq!(
        r.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    let r = c.response(false);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("content-range"), Some("bytes 1000-1999/5000000"));
    assert_eq!(r.body, &site.big[1000..2000]);
    let r = c.response(true);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("5000000"));
    // Still open for more, and nothing stray was sent after the HEAD.
    c.send(b"GET /assets/small.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.body, b"small\n");
    assert!(r.header("date").is_some());
}

#[test]
fn http10_closes_unless_asked_to_keep_alive() {
    let site = site();
    let mut c = Conn::open(&site);
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    let r = c.response(false);
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]));
    assert!(c.closed());
    let mut c = Conn::open(&site);
    c.send(b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let r = c.response(false);
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed());
}

const EVENT: &str = r#"{"mac":"52:54:00:00:10:01","stage":"install","status":"started"}"#;

#[test]
fn request_bodies_by_length_chunked_and_after_100_continue() {
    let site = site();
    let mut c = Conn::open(&site);
    // The armed host's script carries its build token; events need it.
    c.send(b"GET /ipxe?mac=52:54:00:00:10:01 HTTP/1.1\r\nHost: t\r\n\r\n");
    let script = String::from_utf8(c.response(false).body).unwrap();
    let token = script
        .split("token=")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or_else(|| panic!("no token in {script}"))
        .to_string();
    let auth = format!("Authorization: Bearer {token}\r\n");
    c.send(
        format!(
            "POST /events HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{EVENT}",
            EVENT.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.response(false).status, 201);
    // Chunked, split at an awkward place, with an extension and a trailer.
    let (a, b) = EVENT.split_at(10);
    c.send(
        format!(
            "POST /events HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x};x=y\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: 1\r\n\r\n",
            a.len(),
            b.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.response(false).status, 201);
    // Expect: 100-continue — the body is sent only after the interim response.
    c.send(
        format!(
            "POST /events HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            EVENT.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.response(true).status, 100);
    c.send(EVENT.as_bytes());
    assert_eq!(c.response(false).status, 201);
    // Stored: the admin API lists it.
    let (status, text) = site.server.admin_get("/api/hosts?host=vm-bios-01");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"started\""), "{text}");
}

fn refused(site: &Site, request: &[u8]) -> (u16, bool) {
    let mut c = Conn::open(site);
    c.send(request);
    let r = c.response(false);
    assert_eq!(r.header("connection"), Some("close"));
    (r.status, c.closed())
}

#[test]
fn malformed_and_oversize_requests_get_their_status_and_a_close() {
    let site = site();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        (b"G@T / HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 400),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                .to_vec(),
            400,
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
                .to_vec(),
            400,
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n".to_vec(), 505),
        (
            format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nContent-Length: 99000000\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
            400,
        ),
    ];
    for (req, want) in cases {
        let (status, closed) = refused(&site, &req);
        let shown = String::from_utf8_lossy(&req[..req.len().min(60)]).into_owned();
        assert_eq!(status, want, "{shown}");
        assert!(closed, "connection left open after {want}: {shown}");
    }
    // A chunked body past the size limit is cut off while it streams in.
    let mut c = Conn::open(&site);
    c.send(b"POST /events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let chunk = format!("10000\r\n{}\r\n", "x".repeat(0x10000));
    for _ in 0..20 {
        if c.s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    assert_eq!(c.response(false).status, 413);
    // The server still serves others.
    let mut c = Conn::open(&site);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.response(false).status, 200);
}

#[test]
fn clients_that_walk_away_mid_download_cost_nothing_lasting() {
    let site = site();
    for _ in 0..20 {
        let mut c = Conn::open(&site);
        c.send(b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
        let mut first = [0u8; 1000];
        let _ = c.s.read(&mut first).unwrap();
        drop(c);
    }
    // A stalled reader does not hold up anyone else.
    let mut stalled = Conn::open(&site);
    stalled.send(b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut c = Conn::open(&site);
    c.send(b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.response(false);
    assert!(r.body == site.big);
    let text = site.server.metrics();
    assert!(text.contains("pxeforge_http_bytes_sent"), "{text}");
    drop(stalled);
}

#[test]
fn sigterm_lets_a_download_in_flight_finish_then_exits() {
    let mut site = site();
    let mut c = Conn::open(&site);
    c.send(b"GET /assets/big.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    // The response has started (head and some body are here) before the server is told to stop.
    assert!(c.fill());
    let idle = Conn::open(&site);
    site.server.signal(nix::sys::signal::Signal::SIGTERM);
    // Not reading for a while keeps the rest of the body in flight, the socket buffers full.
    std::thread::sleep(Duration::from_millis(500));
    let r = c.response(false);
    assert_eq!(r.status, 200);
    assert!(r.body == site.big, "the download in flight was cut short");
    assert_eq!(r.header("connection"), None);
    // It stops within its 10 s grace period, and an idle keep-alive connection is no reason
    // to wait: that one is closed at once.
    let mut idle = idle;
    assert!(idle.closed(), "idle connection left open after SIGTERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = site.server.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "server still running 15 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
