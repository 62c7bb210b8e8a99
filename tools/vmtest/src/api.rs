//! Reading the host's install events back from the boot service (`GET /api/hosts`), from a
//! thread inside the test namespace.

use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The newest event the server holds for one MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostEvent {
    pub id: i64,
    pub stage: String,
    pub status: String,
    pub message: String,
}

/// Finds the last event of `mac` (canonical lower-case form) in an `/api/hosts` answer:
/// known hosts carry `macs`, discovered machines `mac`. Pure.
pub fn last_event_for(json: &serde_json::Value, mac: &str) -> Option<HostEvent> {
    let hosts = json
        .get("hosts")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten();
    let discovered = json
        .get("discovered")
        .and_then(|h| h.as_array())
        .into_iter()
        .flatten();
    let matches = |entry: &serde_json::Value| {
        let one = entry
            .get("mac")
            .and_then(|m| m.as_str())
            .map(|m| m.eq_ignore_ascii_case(mac));
        let many = entry.get("macs").and_then(|m| m.as_array()).map(|ms| {
            ms.iter()
                .filter_map(|m| m.as_str())
                .any(|m| m.eq_ignore_ascii_case(mac))
        });
        one.unwrap_or(false) || many.unwrap_or(false)
    };
    let entry = hosts.chain(discovered).find(|e| matches(e))?;
    let ev = entry.get("last_event")?;
    let text = |k: &str| ev.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
    Some(HostEvent {
        id: ev.get("id").and_then(|v| v.as_i64())?,
        stage: text("stage"),
        status: text("status"),
        message: text("message"),
    })
}

/// A plain HTTP/1.0 GET; returns the status code and body.
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.take(16 * 1024 * 1024).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("malformed HTTP answer from {addr}");
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .with_context(|| format!("no status code in {:?}", head.lines().next().unwrap_or("")))?;
    Ok((code, body.to_string()))
}

#[derive(Debug)]
pub struct Poll {
    pub at: Instant,
    pub result: Result<Option<HostEvent>, String>,
}

/// The `/api/hosts` query for one MAC. Pure.
pub fn hosts_query(mac: &str) -> String {
    // A MAC is hex digits and separators, none of which needs encoding in a query; anything
    // else is left out rather than sent raw.
    let mac: String = mac
        .chars()
        .filter(|c| c.is_ascii_hexdigit() || matches!(c, ':' | '-'))
        .collect();
    format!("/api/hosts?host={mac}")
}

/// Polls `/api/hosts` every `every` until `stop`; meant to run on a thread inside the namespace.
pub fn poll_loop(
    addr: SocketAddr,
    mac: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    tx: Sender<Poll>,
) {
    // Only the entry of this MAC (an inventory host or a discovered machine), not a page of all.
    let path = hosts_query(&mac);
    while !stop.load(Ordering::Relaxed) {
        let result = http_get(addr, &path)
            .map_err(|e| format!("{e:#}"))
            .and_then(|(code, body)| {
                if code != 200 {
                    return Err(format!("GET /api/hosts answered {code}"));
                }
                serde_json::from_str::<serde_json::Value>(&body)
                    .map_err(|e| format!("GET /api/hosts: {e}"))
                    .map(|v| last_event_for(&v, &mac))
            });
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_known_and_discovered_hosts() {
        let v = json!({
            "hosts": [
                {"name": "a", "macs": ["52:54:00:00:00:01"], "last_event": null},
                {"name": "b", "macs": ["52:54:00:00:00:02", "52:54:00:00:00:03"],
                 "last_event": {"id": 7, "mac": "52:54:00:00:00:03", "stage": "install", "status": "failed", "message": "boom"}}
            ],
            "discovered": [
                {"mac": "52:54:00:00:00:09", "last_event": {"id": 9, "stage": "discover", "status": "info", "message": ""}}
            ]
        });
        assert_eq!(last_event_for(&v, "52:54:00:00:00:01"), None);
        let b = last_event_for(&v, "52:54:00:00:00:02").unwrap();
        assert_eq!(
            (b.id, b.status.as_str(), b.message.as_str()),
            (7, "failed", "boom")
        );
        assert_eq!(last_event_for(&v, "52:54:00:00:00:09").unwrap().id, 9);
        assert_eq!(last_event_for(&v, "52:54:00:00:00:0a"), None);
        assert_eq!(last_event_for(&json!([1, 2]), "52:54:00:00:00:01"), None);
    }

    #[test]
    fn asks_for_one_mac() {
        assert_eq!(
            hosts_query("52:54:00:00:00:0a"),
            "/api/hosts?host=52:54:00:00:00:0a"
        );
        assert_eq!(hosts_query("52:54 &q=?"), "/api/hosts?host=52:54");
    }
}
