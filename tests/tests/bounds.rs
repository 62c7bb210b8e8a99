//! Every store a client can grow is bounded: 100,000 unknown machines asking for `/ipxe` leave
//! at most `install.max_discovered` discovered machines, their events and a database of a
//! bounded size; `/api/hosts` answers in pages; `POST /events` is rate-limited per address.

use pxeforge_tests::{copy_example_site, Server};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Unknown machines sent to `/ipxe`.
const MACHINES: u64 = 100_000;
/// `install.max_discovered` and `install.events_per_host` by default (README).
const MAX_DISCOVERED: i64 = 10_000;
const EVENTS_PER_HOST: i64 = 200;
/// events.db + events.db-wal after the flood, with every fact at its longest (128 characters):
/// measured 20.4 MiB (10,000 discovered rows and their 10,000 events; README).
const MAX_DB_BYTES: u64 = 24 << 20;

struct Site {
    _dir: tempfile::TempDir,
    site: PathBuf,
    state: PathBuf,
}

/// A copy of the example site with `extra` added to its `[install]` table.
fn site(extra: &str) -> Site {
    let dir = tempfile::tempdir().expect("tempdir");
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("mkdir");
    copy_example_site(&site);
    set_install(&site, extra);
    let state = dir.path().join("state");
    Site {
        _dir: dir,
        site,
        state,
    }
}

fn set_install(site: &Path, extra: &str) {
    let p = site.join("pxeforge.toml");
    let toml = std::fs::read_to_string(&p).expect("pxeforge.toml");
    let base = match toml.split_once("\n# bounds test\n") {
        Some((head, rest)) => format!("{head}\n{}", rest.split_once("\n\n").map_or("", |r| r.1)),
        None => toml,
    };
    let edited = base.replacen(
        "[install]\n",
        &format!("[install]\n# bounds test\n{extra}\n\n"),
        1,
    );
    assert_ne!(edited, base, "no [install] table in pxeforge.toml");
    std::fs::write(&p, edited).expect("write pxeforge.toml");
}

fn start(s: &Site) -> Server {
    Server::start(
        &s.site,
        &[
            "--no-tftp",
            "--state",
            s.state.to_str().expect("utf-8 path"),
        ],
    )
}

/// One HTTP/1.1 response read off a keep-alive connection.
struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// A keep-alive connection that reads responses with a `Content-Length` (all pxeforge sends
/// The admin API of a server under test, answering like a [`Conn`] (status and body).
struct Admin<'a>(&'a Server);

impl Admin<'_> {
    fn get(&self, path: &str) -> Response {
        let (status, body) = self.0.admin_get(path);
        Response {
            status,
            head: String::new(),
            body: body.into_bytes(),
        }
    }
}

/// for these endpoints).
struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        s.set_nodelay(true).expect("nodelay");
        Conn { s, buf: Vec::new() }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).expect("send");
    }

    fn response(&mut self) -> Response {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or_else(|| panic!("no status in {head:?}"));
                let mut r = Response {
                    status,
                    head,
                    body: Vec::new(),
                };
                let len: usize = r
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no Content-Length in {:?}", r.head));
                while self.buf.len() < end + 4 + len {
                    self.fill();
                }
                r.body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return r;
            }
            self.fill();
        }
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.s.read(&mut chunk).expect("read");
        assert!(n > 0, "the server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.response()
    }

    fn post(&mut self, path: &str, content_type: &str, body: &str) -> Response {
        self.send(
            format!(
                "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        self.response()
    }
}

/// Machine `i`'s MAC: a bijection of 40 bits (multiplication by an odd constant), so every
/// machine is new, spread over the whole space, locally administered.
fn mac(i: u64) -> String {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15 | 1) & ((1 << 40) - 1);
    let b = x.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[3], b[4], b[5], b[6], b[7]
    )
}

/// `n` characters that `clean_fact` keeps, varying with `i`.
fn fact(prefix: &str, i: u64, n: usize) -> String {
    let mut s = format!("{prefix}-{i:x}-");
    while s.len() < n {
        s.push_str("ABCDEFGHIJ0123456789abcdefghij.");
    }
    s.truncate(n);
    s
}

/// `/ipxe` for machine `i`, every fact as long as a fact may be (128 characters; `platform`
/// is one of two words); every other one a Dell R650, which the example site's `dell-r650`
/// profile claims.
fn ipxe_request(i: u64) -> String {
    let (manufacturer, product) = if i.is_multiple_of(2) {
        ("Dell+Inc.".to_string(), fact("PowerEdge+R650", i, 128))
    } else {
        (fact("QEMU", i, 128), fact("Standard+PC", i, 128))
    };
    format!(
        "GET /ipxe?mac={}&uuid={}&serial={}&manufacturer={manufacturer}&product={product}&arch={}&platform=efi HTTP/1.1\r\nHost: t\r\n\r\n",
        mac(i),
        fact("uuid", i, 128),
        fact("serial", i, 128),
        fact("arch", i, 128),
    )
}

fn db_bytes(state: &Path) -> u64 {
    ["events.db", "events.db-wal"]
        .iter()
        .map(|f| {
            std::fs::metadata(state.join(f))
                .map(|m| m.len())
                .unwrap_or(0)
        })
        .sum()
}

fn count(db: &rusqlite::Connection, sql: &str) -> i64 {
    db.query_row(sql, [], |r| r.get(0)).expect(sql)
}

fn json(r: &Response) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    serde_json::from_slice(&r.body).expect("JSON")
}

#[test]
fn a_flood_of_unknown_machines_stays_bounded() {
    let s = site("");
    let srv = start(&s);
    let started = Instant::now();
    // Two keep-alive connections (the server has two cores too), each writing its requests
    // pipelined in batches and then reading the answers.
    const CONNS: u64 = 2;
    const BATCH: u64 = 250;
    let workers: Vec<_> = (0..CONNS)
        .map(|w| {
            let addr = srv.http;
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let mut on_conn = 0;
                let mut i = w;
                while i < MACHINES {
                    // The server closes a keep-alive connection after 10,000 requests.
                    if on_conn + BATCH > 10_000 {
                        c = Conn::open(addr);
                        on_conn = 0;
                    }
                    on_conn += BATCH;
                    let mut batch = String::new();
                    let mut sent = 0;
                    while sent < BATCH && i < MACHINES {
                        batch.push_str(&ipxe_request(i));
                        i += CONNS;
                        sent += 1;
                    }
                    c.send(batch.as_bytes());
                    for _ in 0..sent {
                        let r = c.response();
                        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let flood = started.elapsed();
    let bytes = db_bytes(&s.state);
    eprintln!(
        "{MACHINES} /ipxe requests in {:.1} s ({:.0}/s); events.db + wal: {} bytes ({:.1} MiB)",
        flood.as_secs_f64(),
        MACHINES as f64 / flood.as_secs_f64(),
        bytes,
        bytes as f64 / (1 << 20) as f64
    );

    let db = rusqlite::Connection::open_with_flags(
        s.state.join("events.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("open events.db read-only");
    let discovered = count(&db, "SELECT COUNT(*) FROM discovered");
    let events = count(&db, "SELECT COUNT(*) FROM events");
    eprintln!("discovered rows: {discovered}, events rows: {events}");
    assert_eq!(discovered, MAX_DISCOVERED);
    // Each machine asked once: one discovery event each, and none of the forgotten ones left.
    assert_eq!(events, discovered);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM events WHERE mac NOT IN (SELECT mac FROM discovered)"
        ),
        0
    );
    // The newest machines are the ones kept (this one a Dell, claimed by a profile).
    let newest = mac(MACHINES - 2);
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM discovered WHERE mac = '{newest}'")
        ),
        1
    );
    assert!(bytes < MAX_DB_BYTES, "events.db + wal: {bytes} bytes");

    let c = Admin(&srv);
    let page = json(&c.get("/api/hosts"));
    let inventory_macs: i64 = page["hosts"]
        .as_array()
        .expect("hosts")
        .iter()
        .map(|h| h["macs"].as_array().map_or(0, |m| m.len() as i64))
        .sum();
    assert!(
        page["total_hosts"].as_u64() <= Some(100),
        "the example site has few hosts"
    );
    assert!(events <= (inventory_macs + MAX_DISCOVERED) * EVENTS_PER_HOST);
    let first = page["discovered"].as_array().expect("discovered");
    assert_eq!(first.len(), 100);
    assert_eq!(page["limit"], 100);
    assert_eq!(page["offset"], 0);
    assert_eq!(page["total_discovered"], MAX_DISCOVERED);
    let r = c.get("/api/hosts?limit=100000&offset=9950");
    eprintln!("a page of /api/hosts: {} bytes", r.body.len());
    let v = json(&r);
    assert_eq!(v["limit"], 1000);
    assert_eq!(v["discovered"].as_array().map(Vec::len), Some(50));
    assert_eq!(v["hosts"].as_array().map(Vec::len), Some(0));
    let one = json(&c.get(&format!("/api/hosts?host={newest}")));
    let d = &one["discovered"][0];
    assert_eq!(d["mac"], newest.as_str());
    assert_eq!(d["profile"], "dell-r650", "{one}");
    assert_eq!(d["last_event"]["stage"], "discovery");
    assert_eq!(one["total_discovered"], 1);
    assert_eq!(one["hosts"].as_array().map(Vec::len), Some(0));
    let gone = json(&c.get(&format!("/api/hosts?host={}", mac(0))));
    assert_eq!(gone["total_discovered"], 0);
    eprintln!("whole test: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn events_over_the_rate_limit_get_429() {
    let s = site("events_per_minute = 5");
    let srv = start(&s);
    let mut c = Conn::open(srv.http);
    let event = r#"{"mac":"52:54:00:00:10:01","stage":"pre","status":"started"}"#;
    // Whatever the endpoint makes of them (stored, refused for want of a token, malformed),
    // the first five go through.
    for body in [event, event, "{not json", event, "mac=zz"] {
        let r = c.post("/events", "application/json", body);
        assert_ne!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    }
    // Then the limit answers first, well-formed or not, on the same connection.
    for body in [event, "{not json", event] {
        let r = c.post("/events", "application/json", body);
        assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
        let wait: u64 = r
            .header("retry-after")
            .and_then(|v| v.parse().ok())
            .expect("Retry-After");
        assert!((1..=60).contains(&wait), "Retry-After: {wait}");
    }
    // Other endpoints are not limited.
    assert_eq!(c.get("/ipxe?mac=02:00:00:00:00:01").status, 200);
    assert_eq!(srv.admin_get("/api/hosts").0, 200);
    let m = srv.metrics();
    assert!(m.contains("pxeforge_events_rate_limited_total 3\n"), "{m}");
    assert!(
        m.contains("pxeforge_http_requests_total{endpoint=\"/events\",status=\"429\"} 3\n"),
        "{m}"
    );

    // A reload applies the new limit to the next request.
    set_install(&s.site, "events_per_minute = 6000");
    srv.signal(nix::sys::signal::Signal::SIGHUP);
    assert!(srv.wait_log("site reloaded", 1), "{}", srv.log_text());
    std::thread::sleep(Duration::from_millis(50));
    let r = c.post("/events", "application/json", event);
    assert_ne!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn api_hosts_pages_and_selects() {
    // `/api/hosts` is on the admin listener; the machines are discovered on the boot listener.
    let s = site("");
    let srv = start(&s);
    let mut c = Conn::open(srv.http);
    for i in 0..25 {
        assert_eq!(c.get(&format!("/ipxe?mac={}", mac(i))).status, 200);
    }
    let c = Admin(&srv);
    let all = json(&c.get("/api/hosts"));
    let total_hosts = all["total_hosts"].as_u64().expect("total_hosts");
    assert_eq!(
        all["hosts"].as_array().map(Vec::len),
        Some(total_hosts as usize)
    );
    assert_eq!(all["total_discovered"], 25);
    // Pages of 10: 10, 10, 5 discovered machines, in MAC order, none twice.
    let mut seen = Vec::new();
    for (offset, n) in [(0, 10), (10, 10), (20, 5), (30, 0)] {
        let p = json(&c.get(&format!("/api/hosts?limit=10&offset={offset}")));
        assert_eq!(p["offset"], offset);
        assert_eq!(p["limit"], 10);
        let d = p["discovered"].as_array().expect("discovered");
        assert_eq!(d.len(), n, "{p}");
        seen.extend(
            d.iter()
                .filter_map(|e| e["mac"].as_str().map(str::to_string)),
        );
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted);
    assert_eq!(seen.len(), 25);
    // One host by name or by MAC, with its last event; one discovered machine by MAC.
    let by_name = json(&c.get("/api/hosts?host=vm-bios-01"));
    assert_eq!(by_name["total_hosts"], 1);
    assert_eq!(by_name["hosts"][0]["name"], "vm-bios-01");
    assert_eq!(by_name["total_discovered"], 0);
    let by_mac = json(&c.get("/api/hosts?host=52-54-00-00-10-01"));
    assert_eq!(by_mac["hosts"][0]["name"], "vm-bios-01", "{by_mac}");
    let one = json(&c.get(&format!("/api/hosts?host={}", mac(7))));
    assert_eq!(one["total_hosts"], 0);
    assert_eq!(one["discovered"][0]["mac"], mac(7).as_str());
    assert_eq!(one["discovered"][0]["last_event"]["stage"], "discovery");
    let none = json(&c.get("/api/hosts?host=no-such-host"));
    assert_eq!(
        (
            none["total_hosts"].as_u64(),
            none["total_discovered"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let totals = json(&c.get("/api/hosts?limit=0"));
    assert_eq!(totals["discovered"].as_array().map(Vec::len), Some(0));
    assert_eq!(totals["total_discovered"], 25);
    assert_eq!(c.get("/api/hosts?limit=lots").status, 400);
}
