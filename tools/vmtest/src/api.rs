//! The boot service's admin API, as vm-test uses it: arming the host (`POST /api/reinstall`),
//! reading its build state (`GET /api/hosts?host=`) and following its install events
//! (`GET /api/events?host=MAC&after=ID`), with the bearer token from the file `serve` names in its
//! ready line. The service runs in the test namespace and its admin listener is on that
//! namespace's loopback, so every call is made from a thread inside it ([`in_netns`]).

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One install or discovery event the server holds for the MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostEvent {
    pub id: i64,
    pub stage: String,
    pub status: String,
    pub message: String,
}

/// Where the admin API is and the token it wants.
#[derive(Debug, Clone)]
pub struct Admin {
    pub addr: SocketAddr,
    pub token: String,
}

impl Admin {
    /// From the ready line `pxeforge: admin listening on ADDR (http, token file PATH)`.
    pub fn from_listener(l: &pxeforge_child::AdminListener) -> Result<Admin> {
        if l.tls {
            // vm-test starts the service itself with a plain loopback listener; TLS would mean
            // the site's settings reached it, which this client does not speak.
            bail!(
                "the admin API at {} speaks https; vm-test expects the plain loopback listener it asked for (--admin)",
                l.addr
            );
        }
        let token = l
            .token()
            .with_context(|| format!("reading the admin token {}", l.token_file.display()))?;
        Ok(Admin {
            addr: l.addr,
            token,
        })
    }

    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, json: &serde_json::Value) -> Result<(u16, String)> {
        self.request("POST", path, Some(json.to_string()))
    }

    /// One HTTP/1.0 request with the bearer token; the status code and body.
    fn request(&self, method: &str, path: &str, body: Option<String>) -> Result<(u16, String)> {
        let addr = self.addr;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to the admin API at {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        let mut head = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\nAuthorization: Bearer {}\r\n",
            self.token
        );
        if let Some(b) = &body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        if let Some(b) = &body {
            s.write_all(b.as_bytes())?;
        }
        let mut raw = Vec::new();
        s.take(16 * 1024 * 1024).read_to_end(&mut raw)?;
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("malformed HTTP answer from {addr} to {method} {path}");
        };
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse::<u16>().ok())
            .with_context(|| {
                format!(
                    "no status code in {:?} ({method} {path})",
                    head.lines().next().unwrap_or("")
                )
            })?;
        Ok((code, body.to_string()))
    }

    /// GET that must answer 200 with JSON.
    pub fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let (code, body) = self.get(path)?;
        if code != 200 {
            bail!(
                "GET {path} on the admin API answered {code}: {}",
                body.trim()
            );
        }
        serde_json::from_str(&body).with_context(|| format!("GET {path}: the answer is not JSON"))
    }

    /// The host's build state (`armed`, `installed`, …; `-` when it has none).
    pub fn host_state(&self, host: &str) -> Result<String> {
        let doc = self.get_json(&format!("/api/hosts?host={}", query_value(host)))?;
        host_state_in(&doc, host)
            .with_context(|| format!("GET /api/hosts?host={host}: no host {host:?} in {doc}"))
    }

    /// Arms `host` (`POST /api/reinstall`) and returns the change, e.g. `installed -> armed`.
    pub fn arm(&self, host: &str) -> Result<String> {
        let from = self.host_state(host)?;
        let body = serde_json::json!({ "hosts": [host] });
        let (code, answer) = self.post("/api/reinstall", &body)?;
        if code != 200 {
            bail!(
                "POST /api/reinstall {body} answered {code}: {}",
                answer.trim()
            );
        }
        let v: serde_json::Value = serde_json::from_str(&answer)
            .with_context(|| format!("POST /api/reinstall: the answer is not JSON: {answer}"))?;
        armed_in(&v, host)?;
        Ok(format!("{from} -> armed"))
    }
}

/// A query value of names and MACs: characters that would need encoding are left out rather
/// than sent raw. Pure.
pub fn query_value(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '.' | '_'))
        .collect()
}

/// The `state` of `host` in an `/api/hosts` answer (`-` for a host without build state). Pure.
pub fn host_state_in(doc: &serde_json::Value, host: &str) -> Option<String> {
    let h = doc["hosts"]
        .as_array()?
        .iter()
        .find(|h| h["name"] == host)?;
    Some(h["state"].as_str().unwrap_or("-").to_string())
}

/// Checks that a `POST /api/reinstall` answer armed `host`; the server's reason otherwise. Pure.
pub fn armed_in(v: &serde_json::Value, host: &str) -> Result<()> {
    let armed = v["armed"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n == host));
    if armed {
        return Ok(());
    }
    let why = v["skipped"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["host"] == host)
        .and_then(|s| s["why"].as_str())
        .unwrap_or("the answer does not list it as armed");
    bail!("the server did not arm {host}: {why}")
}

/// The `/api/events` query for one MAC after an event id. Pure.
pub fn events_query(mac: &str, after: i64) -> String {
    format!(
        "/api/events?host={}&after={after}&limit={EVENTS_PAGE}",
        query_value(mac)
    )
}

/// Events asked for per request (the API's largest page).
pub const EVENTS_PAGE: usize = 1000;

/// The events of an `/api/events` answer, in id order, and the id to ask after next. Pure.
pub fn parse_events(json: &serde_json::Value, after: i64) -> Result<(Vec<HostEvent>, i64)> {
    let Some(list) = json.get("events").and_then(|e| e.as_array()) else {
        bail!("no events list in {json}");
    };
    let mut out = Vec::with_capacity(list.len());
    for ev in list {
        let text = |k: &str| ev.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let Some(id) = ev.get("id").and_then(|v| v.as_i64()) else {
            bail!("an event without an id: {ev}");
        };
        out.push(HostEvent {
            id,
            stage: text("stage"),
            status: text("status"),
            message: text("message"),
        });
    }
    out.sort_by_key(|e| e.id);
    let last = out
        .last()
        .map(|e| e.id)
        .or_else(|| json.get("last_id").and_then(|v| v.as_i64()))
        .unwrap_or(after)
        .max(after);
    Ok((out, last))
}

#[derive(Debug)]
pub struct Poll {
    pub at: Instant,
    /// The events that arrived since the previous poll (the first poll: all the server held).
    pub result: Result<Vec<HostEvent>, String>,
}

/// Every event of `mac` after `after`, page by page; the events and the next `after`.
fn new_events(admin: &Admin, mac: &str, mut after: i64) -> Result<(Vec<HostEvent>, i64)> {
    let mut all = Vec::new();
    loop {
        let doc = admin.get_json(&events_query(mac, after))?;
        let (page, last) = parse_events(&doc, after)?;
        let n = page.len();
        all.extend(page);
        after = last;
        if n < EVENTS_PAGE {
            return Ok((all, after));
        }
    }
}

/// Polls `/api/events` every `every` until `stop`; meant to run on a thread inside the namespace.
pub fn poll_loop(
    admin: Admin,
    mac: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    tx: Sender<Poll>,
) {
    let mut after = 0;
    while !stop.load(Ordering::Relaxed) {
        let result = match new_events(&admin, &mac, after) {
            Ok((events, last)) => {
                after = last;
                Ok(events)
            }
            Err(e) => Err(format!("{e:#}")),
        };
        if tx
            .send(Poll {
                at: Instant::now(),
                result,
            })
            .is_err()
        {
            break;
        }
        std::thread::sleep(every);
    }
}

/// Runs `f` on a thread inside the network namespace `ns` and returns its result.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = crate::netns::spawn_in(ns, move || {
        let _ = tx.send(f());
    })?;
    let _ = handle.join();
    match rx.recv() {
        Ok(r) => r,
        Err(_) => bail!("could not run an admin API call inside the namespace {ns} (see the log)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_events_in_order() {
        let v = json!({
            "events": [
                {"id": 9, "mac": "52:54:00:00:00:01", "stage": "install", "status": "finished", "message": "done"},
                {"id": 7, "mac": "52:54:00:00:00:01", "stage": "pre", "status": "started", "message": ""}
            ],
            "last_id": 9
        });
        let (evs, last) = parse_events(&v, 3).unwrap();
        assert_eq!(last, 9);
        assert_eq!(evs.iter().map(|e| e.id).collect::<Vec<_>>(), [7, 9]);
        assert_eq!(
            (
                evs[1].stage.as_str(),
                evs[1].status.as_str(),
                evs[1].message.as_str()
            ),
            ("install", "finished", "done")
        );
        // No new events: the next poll asks after the same id (or the server's last_id).
        let (evs, last) = parse_events(&json!({"events": [], "last_id": 9}), 9).unwrap();
        assert!(evs.is_empty());
        assert_eq!(last, 9);
        assert_eq!(parse_events(&json!({"events": []}), 4).unwrap().1, 4);
        assert!(parse_events(&json!([1, 2]), 0).is_err());
        assert!(parse_events(&json!({"events": [{"stage": "x"}]}), 0).is_err());
    }

    #[test]
    fn asks_for_one_mac() {
        assert_eq!(
            events_query("52:54:00:00:00:0a", 12),
            "/api/events?host=52:54:00:00:00:0a&after=12&limit=1000"
        );
        assert_eq!(query_value("52:54 &q=?"), "52:54q");
    }

    #[test]
    fn states_and_arming_answers() {
        let doc = json!({"hosts": [
            {"name": "vm-bios-01", "state": "installed"},
            {"name": "vm-keep-01", "state": null}
        ]});
        assert_eq!(
            host_state_in(&doc, "vm-bios-01").as_deref(),
            Some("installed")
        );
        assert_eq!(host_state_in(&doc, "vm-keep-01").as_deref(), Some("-"));
        assert_eq!(host_state_in(&doc, "other"), None);
        assert!(armed_in(&json!({"armed": ["a"], "skipped": []}), "a").is_ok());
        let e = armed_in(
            &json!({"armed": [], "skipped": [{"host": "a", "why": "install = false"}]}),
            "a",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "the server did not arm a: install = false");
    }
}
