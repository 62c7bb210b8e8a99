//! Install progress from hosts, kept in SQLite (WAL) in the state directory so that it
//! survives restarts. Also remembers which profile claimed a discovered machine, so that its
//! kickstart can be served after a restart.
//!
//! Everything a client can grow is bounded (`[install]` in `pxeforge.toml`): at most
//! `events_per_host` events per MAC (the oldest go first) and at most `max_discovered`
//! discovered machines (the least recently seen go first, with their events). An event from a
//! MAC outside the inventory (`host` unset) always belongs to a discovered machine — one is
//! remembered for it if need be — so the `events` table holds at most
//! (inventory MACs + `max_discovered`) × `events_per_host` rows.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

/// Longest facts JSON stored for a discovered machine. Facts are short already (each at most
/// 128 characters, `select::clean_fact`); this holds whatever a future caller passes.
pub const MAX_FACTS_BYTES: usize = 2048;
/// Longest event message stored (`POST /events` refuses longer ones already).
pub const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("event store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("event store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("event store lock poisoned")]
    Poisoned,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub mac: String,
    pub host: Option<String>,
    pub stage: String,
    pub status: String,
    pub message: String,
    /// Seconds since the Unix epoch, from the server's clock.
    pub at: i64,
    pub remote: String,
}

/// A machine that asked for a script without being in the inventory.
#[derive(Debug, Clone)]
pub struct Discovered {
    pub mac: String,
    /// The profile whose match rule claimed it, if any.
    pub profile: Option<String>,
    /// Its facts as JSON.
    pub facts: String,
    pub seen_at: i64,
}

/// How much the store keeps (`install.events_per_host`, `install.max_discovered`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub events_per_host: u32,
    pub max_discovered: u32,
}

impl Limits {
    pub fn from_settings(s: &pxeforge_site::settings::InstallSettings) -> Limits {
        Limits {
            events_per_host: s.events_per_host,
            max_discovered: s.max_discovered,
        }
    }

    /// Zero would delete the row just written (and with it the id `record` returns, or the
    /// claim `/ks/MAC` needs), so the store keeps at least one of each.
    fn effective(self) -> Limits {
        Limits {
            events_per_host: self.events_per_host.max(1),
            max_discovered: self.max_discovered.max(1),
        }
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::from_settings(&pxeforge_site::settings::InstallSettings::default())
    }
}

/// Where the store reads its limits on each write, so that a reloaded site applies at once.
pub type LimitsSource = Arc<dyn Fn() -> Limits + Send + Sync>;

struct Inner {
    conn: Connection,
    /// Rows in `discovered`, known after the first write (saves a count per request).
    discovered: Option<u64>,
    /// The limits last enforced over the whole store; a change (or the first write after
    /// opening an older, larger store) trims everything once.
    enforced: Option<Limits>,
}

pub struct EventStore {
    inner: Mutex<Inner>,
    limits: RwLock<LimitsSource>,
    /// Where a corrupt file found at open was moved.
    moved_aside: Option<std::path::PathBuf>,
}

impl EventStore {
    pub fn open(path: &Path) -> Result<EventStore, EventsError> {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| EventsError::Open {
            path: path.display().to_string(),
            source,
        };
        // Real corruption moves the file aside (a bad block must not stop every service);
        // anything else is an error for the operator.
        let opened = pxeforge_sqlitefile::open(path, |conn| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS events (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    mac TEXT NOT NULL, host TEXT, stage TEXT NOT NULL, status TEXT NOT NULL,
                    message TEXT NOT NULL, at INTEGER NOT NULL, remote TEXT NOT NULL);
                 CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
                 CREATE TABLE IF NOT EXISTS discovered (
                    mac TEXT PRIMARY KEY, profile TEXT, facts TEXT NOT NULL, seen_at INTEGER NOT NULL);
                 CREATE INDEX IF NOT EXISTS discovered_seen ON discovered(seen_at);",
            )
        })
        .map_err(open_err)?;
        let conn = opened.conn;
        let defaults = Limits::default();
        Ok(EventStore {
            inner: Mutex::new(Inner {
                conn,
                discovered: None,
                enforced: None,
            }),
            limits: RwLock::new(Arc::new(move || defaults)),
            moved_aside: opened.moved_aside,
        })
    }

    /// Where a corrupt store found at open was moved (`NAME.corrupt-TIMESTAMP`).
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// Fixed limits (tests, tools).
    pub fn set_limits(&self, limits: Limits) {
        self.set_limits_source(Arc::new(move || limits));
    }

    /// Limits read again on every write; the server passes the current catalog's settings.
    pub fn set_limits_source(&self, source: LimitsSource) {
        // A poisoned lock only means a panic elsewhere while swapping; the value is whole.
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = source;
    }

    fn limits(&self) -> Limits {
        let source = self
            .limits
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        source().effective()
    }

    fn inner(&self) -> Result<std::sync::MutexGuard<'_, Inner>, EventsError> {
        self.inner.lock().map_err(|_| EventsError::Poisoned)
    }

    /// Runs `write` in one transaction with the limits in force; the discovered count is kept
    /// only when the transaction commits.
    fn write<T>(
        &self,
        write: impl FnOnce(&Transaction, Limits, &mut u64) -> Result<T, EventsError>,
    ) -> Result<T, EventsError> {
        let limits = self.limits();
        let mut g = self.inner()?;
        let inner = &mut *g;
        let known = inner.discovered.take();
        let enforced = inner.enforced.take();
        let tx = inner.conn.transaction()?;
        let mut count = match known {
            Some(n) => n,
            None => count_discovered(&tx)?,
        };
        if enforced != Some(limits) {
            enforce_all(&tx, limits, &mut count)?;
        }
        let out = write(&tx, limits, &mut count)?;
        tx.commit()?;
        inner.discovered = Some(count);
        inner.enforced = Some(limits);
        Ok(out)
    }

    /// Stores an event and returns its id. The MAC keeps its newest `events_per_host` events.
    /// An event without a host (a MAC outside the inventory) remembers the MAC as discovered
    /// if it is not already, so that its events go when it does.
    pub fn record(&self, e: &Event) -> Result<i64, EventsError> {
        self.write(|tx, limits, count| {
            if e.host.is_none() {
                let added = tx.execute(
                    "INSERT INTO discovered (mac, profile, facts, seen_at) VALUES (?1, NULL, '{}', ?2)
                     ON CONFLICT(mac) DO NOTHING",
                    params![e.mac, e.at],
                )?;
                if added > 0 {
                    *count += 1;
                    evict_discovered(tx, limits.max_discovered, Some(&e.mac), count)?;
                }
            }
            tx.execute(
                "INSERT INTO events (mac, host, stage, status, message, at, remote) VALUES (?1,?2,?3,?4,?5,?6,?7)",
                params![
                    e.mac,
                    e.host,
                    e.stage,
                    e.status,
                    truncate(&e.message, MAX_MESSAGE_BYTES),
                    e.at,
                    e.remote
                ],
            )?;
            let id = tx.last_insert_rowid();
            trim_events(tx, &e.mac, limits.events_per_host)?;
            Ok(id)
        })
    }

    /// The newest event of each MAC.
    pub fn last_by_mac(&self) -> Result<HashMap<String, Event>, EventsError> {
        let g = self.inner()?;
        let mut st = g.conn.prepare(
            "SELECT id, mac, host, stage, status, message, at, remote FROM events
             WHERE id IN (SELECT MAX(id) FROM events GROUP BY mac)",
        )?;
        let rows = st.query_map([], row_to_event)?;
        let mut out = HashMap::new();
        for r in rows {
            let e = r?;
            out.insert(e.mac.clone(), e);
        }
        Ok(out)
    }

    /// The newest event of each of `macs` that has one (one indexed look-up per MAC).
    pub fn last_for_macs(&self, macs: &[String]) -> Result<HashMap<String, Event>, EventsError> {
        let mut out = HashMap::new();
        if macs.is_empty() {
            return Ok(out);
        }
        let list = json_list(macs);
        let g = self.inner()?;
        let mut st = g.conn.prepare(
            "SELECT id, mac, host, stage, status, message, at, remote FROM events
             WHERE id IN (SELECT (SELECT MAX(e.id) FROM events e WHERE e.mac = j.value)
                          FROM json_each(?1) j)",
        )?;
        let rows = st.query_map(params![list], row_to_event)?;
        for r in rows {
            let e = r?;
            out.insert(e.mac.clone(), e);
        }
        Ok(out)
    }

    /// Events with an id above `after`, oldest first: of `macs` only when given (for
    /// `pxeforge events --follow`, which asks again from the last id it saw).
    pub fn after(
        &self,
        macs: Option<&[String]>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<Event>, EventsError> {
        let g = self.inner()?;
        let rows = match macs {
            None => {
                let mut st = g.conn.prepare(
                    "SELECT id, mac, host, stage, status, message, at, remote FROM events
                     WHERE id > ?1 ORDER BY id LIMIT ?2",
                )?;
                let rows = st.query_map(params![after, limit], row_to_event)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
            Some(macs) => {
                let mut st = g.conn.prepare(
                    "SELECT id, mac, host, stage, status, message, at, remote FROM events
                     WHERE id > ?1 AND mac IN (SELECT value FROM json_each(?2))
                     ORDER BY id LIMIT ?3",
                )?;
                let rows = st.query_map(params![after, json_list(macs), limit], row_to_event)?;
                rows.collect::<Result<Vec<_>, _>>()?
            }
        };
        Ok(rows)
    }

    pub fn for_mac(&self, mac: &str, limit: u32) -> Result<Vec<Event>, EventsError> {
        let g = self.inner()?;
        let mut st = g.conn.prepare(
            "SELECT id, mac, host, stage, status, message, at, remote FROM events
             WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![mac, limit], row_to_event)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Remembers (or refreshes) an unknown machine. Beyond `max_discovered` machines the least
    /// recently seen is forgotten, with its events. Facts longer than [`MAX_FACTS_BYTES`] keep
    /// only the facts that fit.
    pub fn remember_discovered(
        &self,
        mac: &str,
        profile: Option<&str>,
        facts: &str,
        at: i64,
    ) -> Result<bool, EventsError> {
        let facts = cap_facts(facts);
        self.write(|tx, limits, count| {
            let before: Option<(Option<String>, String)> = tx
                .query_row(
                    "SELECT profile, facts FROM discovered WHERE mac = ?1",
                    params![mac],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            let known = before.is_some();
            // What is new about this machine: it was not known, or it reports other facts.
            let changed = before
                .as_ref()
                .is_none_or(|(p, f)| p.as_deref() != profile || *f != facts);
            tx.execute(
                "INSERT INTO discovered (mac, profile, facts, seen_at) VALUES (?1,?2,?3,?4)
                 ON CONFLICT(mac) DO UPDATE SET profile=excluded.profile, facts=excluded.facts, seen_at=excluded.seen_at",
                params![mac, profile, facts, at],
            )?;
            if !known {
                *count += 1;
                evict_discovered(tx, limits.max_discovered, Some(mac), count)?;
            }
            Ok(changed)
        })
    }

    pub fn discovered_profile(&self, mac: &str) -> Result<Option<String>, EventsError> {
        let g = self.inner()?;
        Ok(g.conn
            .query_row(
                "SELECT profile FROM discovered WHERE mac = ?1",
                params![mac],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()?
            .flatten())
    }

    /// Every discovered machine, by MAC. Up to `max_discovered` rows: prefer
    /// [`EventStore::discovered_page`] where an answer goes to a client.
    pub fn discovered(&self) -> Result<Vec<Discovered>, EventsError> {
        let g = self.inner()?;
        let mut st = g
            .conn
            .prepare("SELECT mac, profile, facts, seen_at FROM discovered ORDER BY mac")?;
        let rows = st.query_map([], row_to_discovered)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// One page of the discovered machines by MAC, leaving out the MACs in `exclude` (the
    /// inventory's), and how many there are in all.
    pub fn discovered_page(
        &self,
        exclude: &[String],
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<Discovered>, u64), EventsError> {
        let list = json_list(exclude);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let g = self.inner()?;
        let total: i64 = g.conn.query_row(
            "SELECT COUNT(*) FROM discovered WHERE mac NOT IN (SELECT value FROM json_each(?1))",
            params![list],
            |r| r.get(0),
        )?;
        let mut st = g.conn.prepare(
            "SELECT mac, profile, facts, seen_at FROM discovered
             WHERE mac NOT IN (SELECT value FROM json_each(?1))
             ORDER BY mac LIMIT ?2 OFFSET ?3",
        )?;
        let rows = st.query_map(params![list, limit, offset], row_to_discovered)?;
        let page = rows.collect::<Result<Vec<_>, _>>()?;
        Ok((page, u64::try_from(total).unwrap_or(0)))
    }

    /// One discovered machine.
    pub fn discovered_one(&self, mac: &str) -> Result<Option<Discovered>, EventsError> {
        let g = self.inner()?;
        Ok(g.conn
            .query_row(
                "SELECT mac, profile, facts, seen_at FROM discovered WHERE mac = ?1",
                params![mac],
                row_to_discovered,
            )
            .optional()?)
    }
}

fn count_discovered(tx: &Transaction) -> Result<u64, EventsError> {
    let n: i64 = tx.query_row("SELECT COUNT(*) FROM discovered", [], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Brings the whole store within `limits`: after a reload lowered them, or on the first write
/// to a store from before they existed.
fn enforce_all(tx: &Transaction, limits: Limits, count: &mut u64) -> Result<(), EventsError> {
    evict_discovered(tx, limits.max_discovered, None, count)?;
    tx.execute(
        "DELETE FROM events WHERE id IN (
            SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY mac ORDER BY id DESC) AS n
                            FROM events)
            WHERE n > ?1)",
        params![limits.events_per_host],
    )?;
    Ok(())
}

/// Forgets the least recently seen machines beyond `max` (never `keep`, the one just seen:
/// the clock has whole seconds, so it may tie with others), and their events. Events recorded
/// under an inventory host's name stay: a MAC discovered before it was added to the
/// inventory keeps its install history.
fn evict_discovered(
    tx: &Transaction,
    max: u32,
    keep: Option<&str>,
    count: &mut u64,
) -> Result<(), EventsError> {
    let excess = count.saturating_sub(u64::from(max));
    if excess == 0 {
        return Ok(());
    }
    let victims: Vec<String> = {
        let mut st = tx.prepare_cached(
            "SELECT mac FROM discovered WHERE mac IS NOT ?1 ORDER BY seen_at, rowid LIMIT ?2",
        )?;
        let rows = st.query_map(
            params![keep, i64::try_from(excess).unwrap_or(i64::MAX)],
            |r| r.get(0),
        )?;
        rows.collect::<Result<_, _>>()?
    };
    let mut del_events = tx.prepare_cached("DELETE FROM events WHERE mac = ?1 AND host IS NULL")?;
    let mut del_machine = tx.prepare_cached("DELETE FROM discovered WHERE mac = ?1")?;
    for mac in &victims {
        del_events.execute(params![mac])?;
        let gone = del_machine.execute(params![mac])?;
        *count = count.saturating_sub(gone as u64);
    }
    Ok(())
}

/// Deletes the events of `mac` older than its newest `keep`.
fn trim_events(tx: &Transaction, mac: &str, keep: u32) -> Result<(), EventsError> {
    tx.prepare_cached(
        "DELETE FROM events WHERE mac = ?1 AND id <=
            (SELECT id FROM events WHERE mac = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![mac, keep])?;
    Ok(())
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Facts JSON within [`MAX_FACTS_BYTES`]: as given when short enough, else the facts (in
/// key order) that fit, still valid JSON; `{}` for anything that is not a JSON object.
fn cap_facts(facts: &str) -> std::borrow::Cow<'_, str> {
    if facts.len() <= MAX_FACTS_BYTES {
        return facts.into();
    }
    let Ok(map) = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(facts) else {
        return "{}".into();
    };
    let mut kept = serde_json::Map::new();
    let mut len = 2; // the braces
    for (k, v) in map {
        let (Ok(kj), Ok(vj)) = (serde_json::to_string(&k), serde_json::to_string(&v)) else {
            continue;
        };
        // `"k":v` plus a comma before every entry but the first
        let add = kj.len() + 1 + vj.len() + usize::from(!kept.is_empty());
        if len + add <= MAX_FACTS_BYTES {
            len += add;
            kept.insert(k, v);
        }
    }
    serde_json::to_string(&kept)
        .unwrap_or_else(|_| "{}".into())
        .into()
}

/// A JSON array of strings, for `json_each` (a list of any length as one parameter).
fn json_list(items: &[String]) -> String {
    serde_json::to_string(items).unwrap_or_else(|_| "[]".into())
}

fn row_to_event(r: &rusqlite::Row) -> rusqlite::Result<Event> {
    Ok(Event {
        id: r.get(0)?,
        mac: r.get(1)?,
        host: r.get(2)?,
        stage: r.get(3)?,
        status: r.get(4)?,
        message: r.get(5)?,
        at: r.get(6)?,
        remote: r.get(7)?,
    })
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn row_to_discovered(r: &rusqlite::Row) -> rusqlite::Result<Discovered> {
    Ok(Discovered {
        mac: r.get(0)?,
        profile: r.get(1)?,
        facts: r.get(2)?,
        seen_at: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_survive_reopen_and_last_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.db");
        let ev = |stage: &str, status: &str| Event {
            id: 0,
            mac: "52:54:00:00:00:01".into(),
            host: Some("n1".into()),
            stage: stage.into(),
            status: status.into(),
            message: String::new(),
            at: 1,
            remote: "127.0.0.1".into(),
        };
        {
            let s = EventStore::open(&p).unwrap();
            s.record(&ev("pre", "started")).unwrap();
            s.record(&ev("post", "finished")).unwrap();
        }
        let s = EventStore::open(&p).unwrap();
        let last = s.last_by_mac().unwrap();
        assert_eq!(last["52:54:00:00:00:01"].status, "finished");
        assert_eq!(s.for_mac("52:54:00:00:00:01", 10).unwrap().len(), 2);
        s.remember_discovered("52:54:00:00:00:02", Some("r650"), "{}", 2)
            .unwrap();
        assert_eq!(
            s.discovered_profile("52:54:00:00:00:02")
                .unwrap()
                .as_deref(),
            Some("r650")
        );
        assert_eq!(s.discovered_profile("52:54:00:00:00:03").unwrap(), None);
    }

    fn mac(i: u32) -> String {
        format!(
            "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
            i >> 24,
            (i >> 16) & 0xff,
            (i >> 8) & 0xff,
            i & 0xff
        )
    }

    fn event(mac: &str, host: Option<&str>, at: i64) -> Event {
        Event {
            id: 0,
            mac: mac.into(),
            host: host.map(str::to_string),
            stage: "install".into(),
            status: "progress".into(),
            message: String::new(),
            at,
            remote: String::new(),
        }
    }

    fn count(s: &EventStore, sql: &str) -> i64 {
        let g = s.inner().unwrap();
        g.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    fn store(events_per_host: u32, max_discovered: u32) -> (tempfile::TempDir, EventStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = EventStore::open(&dir.path().join("events.db")).unwrap();
        s.set_limits(Limits {
            events_per_host,
            max_discovered,
        });
        (dir, s)
    }

    #[test]
    fn events_per_mac_are_capped_oldest_first() {
        let (_d, s) = store(5, 100);
        let mut ids = Vec::new();
        for i in 0..12 {
            ids.push(s.record(&event(&mac(1), Some("n1"), i)).unwrap());
            s.record(&event(&mac(2), Some("n2"), i)).unwrap();
        }
        let kept: Vec<i64> = s
            .for_mac(&mac(1), 100)
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect();
        let newest: Vec<i64> = ids.iter().rev().take(5).copied().collect();
        assert_eq!(kept, newest);
        assert_eq!(s.for_mac(&mac(2), 100).unwrap().len(), 5);
        assert_eq!(count(&s, "SELECT COUNT(*) FROM events"), 10);
        // A reload that lowers the cap applies at the next write, to every MAC.
        s.set_limits(Limits {
            events_per_host: 2,
            max_discovered: 100,
        });
        s.record(&event(&mac(3), Some("n3"), 20)).unwrap();
        assert_eq!(s.for_mac(&mac(1), 100).unwrap().len(), 2);
        assert_eq!(s.for_mac(&mac(2), 100).unwrap().len(), 2);
        assert_eq!(s.for_mac(&mac(1), 100).unwrap()[0].id, ids[11]);
    }

    #[test]
    fn least_recently_seen_machine_goes_first_with_its_events() {
        let (_d, s) = store(10, 3);
        for i in 0..3 {
            s.remember_discovered(&mac(i), None, "{}", 100 + i as i64)
                .unwrap();
            s.record(&event(&mac(i), None, 100 + i as i64)).unwrap();
        }
        // Seeing machine 0 again makes machine 1 the stalest.
        s.remember_discovered(&mac(0), Some("p"), "{}", 200)
            .unwrap();
        s.remember_discovered(&mac(3), None, "{}", 201).unwrap();
        let macs: Vec<String> = s.discovered().unwrap().into_iter().map(|d| d.mac).collect();
        assert_eq!(macs, vec![mac(0), mac(2), mac(3)]);
        assert!(s.for_mac(&mac(1), 10).unwrap().is_empty());
        assert_eq!(s.for_mac(&mac(0), 10).unwrap().len(), 1);
        assert_eq!(s.discovered_profile(&mac(0)).unwrap().as_deref(), Some("p"));
        // Then machine 2 (seen at 102), then 0 (at 200) — each time the oldest `seen_at`.
        s.remember_discovered(&mac(4), None, "{}", 202).unwrap();
        let macs: Vec<String> = s.discovered().unwrap().into_iter().map(|d| d.mac).collect();
        assert_eq!(macs, vec![mac(0), mac(3), mac(4)]);
        s.remember_discovered(&mac(5), None, "{}", 203).unwrap();
        let macs: Vec<String> = s.discovered().unwrap().into_iter().map(|d| d.mac).collect();
        assert_eq!(macs, vec![mac(3), mac(4), mac(5)]);
        assert!(s.for_mac(&mac(2), 10).unwrap().is_empty());
        assert!(s.for_mac(&mac(0), 10).unwrap().is_empty());
        assert_eq!(count(&s, "SELECT COUNT(*) FROM events"), 0);
    }

    #[test]
    fn caps_hold_under_many_machines_and_events() {
        let (_d, s) = store(3, 50);
        // Machines seen in the same second: the one just seen is never the one evicted.
        for i in 0..500u32 {
            let m = mac(i);
            s.remember_discovered(&m, None, r#"{"product":"x"}"#, 7)
                .unwrap();
            for _ in 0..5 {
                s.record(&event(&m, None, 7)).unwrap();
            }
            assert_eq!(s.discovered_profile(&m).unwrap(), None);
            assert!(s.discovered_one(&m).unwrap().is_some(), "{m} just seen");
        }
        // Events from MACs never seen by /ipxe are tied to a discovered machine all the same.
        for i in 1000..1200u32 {
            s.record(&event(&mac(i), None, 8)).unwrap();
        }
        // Inventory hosts' events count against their own cap only.
        for _ in 0..10 {
            s.record(&event(&mac(5000), Some("n1"), 9)).unwrap();
        }
        assert_eq!(count(&s, "SELECT COUNT(*) FROM discovered"), 50);
        let events = count(&s, "SELECT COUNT(*) FROM events");
        assert!(events <= (50 + 1) * 3, "{events}");
        assert_eq!(
            count(&s, "SELECT COUNT(*) FROM events WHERE host IS NULL AND mac NOT IN (SELECT mac FROM discovered)"),
            0
        );
        assert_eq!(s.for_mac(&mac(5000), 100).unwrap().len(), 3);
        // The count kept in memory agrees with a fresh one after reopening.
        let (p, limits) = (
            _d.path().join("events.db"),
            Limits {
                events_per_host: 3,
                max_discovered: 50,
            },
        );
        drop(s);
        let s = EventStore::open(&p).unwrap();
        s.set_limits(limits);
        s.remember_discovered(&mac(9999), None, "{}", 10).unwrap();
        assert_eq!(count(&s, "SELECT COUNT(*) FROM discovered"), 50);
    }

    #[test]
    fn an_older_larger_store_is_trimmed_at_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("events.db");
        {
            let s = EventStore::open(&p).unwrap();
            s.set_limits(Limits {
                events_per_host: 100,
                max_discovered: 100,
            });
            for i in 0..20 {
                s.remember_discovered(&mac(i), None, "{}", i as i64)
                    .unwrap();
                for _ in 0..10 {
                    s.record(&event(&mac(i), None, i as i64)).unwrap();
                }
            }
        }
        let s = EventStore::open(&p).unwrap();
        s.set_limits(Limits {
            events_per_host: 4,
            max_discovered: 5,
        });
        s.remember_discovered(&mac(100), None, "{}", 100).unwrap();
        let macs: Vec<String> = s.discovered().unwrap().into_iter().map(|d| d.mac).collect();
        assert_eq!(macs, vec![mac(16), mac(17), mac(18), mac(19), mac(100)]);
        assert_eq!(count(&s, "SELECT COUNT(*) FROM events"), 4 * 4);
    }

    #[test]
    fn zero_limits_keep_one() {
        let (_d, s) = store(0, 0);
        let id = s.record(&event(&mac(1), None, 1)).unwrap();
        assert_eq!(s.for_mac(&mac(1), 10).unwrap()[0].id, id);
        s.remember_discovered(&mac(2), Some("p"), "{}", 2).unwrap();
        assert_eq!(s.discovered_profile(&mac(2)).unwrap().as_deref(), Some("p"));
        assert_eq!(count(&s, "SELECT COUNT(*) FROM discovered"), 1);
    }

    #[test]
    fn long_facts_and_messages_are_cut() {
        let (_d, s) = store(10, 10);
        let facts = serde_json::json!({
            "a": "x".repeat(1000), "b": "y".repeat(1000), "c": "z".repeat(1000), "d": "short"
        })
        .to_string();
        s.remember_discovered(&mac(1), None, &facts, 1).unwrap();
        let stored = s.discovered_one(&mac(1)).unwrap().unwrap().facts;
        assert!(stored.len() <= MAX_FACTS_BYTES, "{}", stored.len());
        let v: serde_json::Value = serde_json::from_str(&stored).unwrap();
        assert_eq!(v["a"].as_str().map(str::len), Some(1000));
        assert_eq!(v["d"], "short");
        assert!(v.get("c").is_none());
        s.remember_discovered(&mac(2), None, &"[".repeat(5000), 1)
            .unwrap();
        assert_eq!(s.discovered_one(&mac(2)).unwrap().unwrap().facts, "{}");
        let mut e = event(&mac(1), None, 1);
        e.message = "é".repeat(5000);
        s.record(&e).unwrap();
        let m = &s.for_mac(&mac(1), 1).unwrap()[0].message;
        assert!(m.len() <= MAX_MESSAGE_BYTES && m.chars().all(|c| c == 'é'));
    }

    #[test]
    fn pages_of_discovered_leave_out_the_inventory() {
        let (_d, s) = store(10, 100);
        for i in 0..30 {
            s.remember_discovered(&mac(i), None, "{}", i as i64)
                .unwrap();
            s.record(&event(&mac(i), None, i as i64)).unwrap();
        }
        let inventory = vec![mac(0), mac(5), mac(29)];
        let (page, total) = s.discovered_page(&inventory, 10, 0).unwrap();
        assert_eq!(total, 27);
        assert_eq!(page.len(), 10);
        assert_eq!(page[0].mac, mac(1));
        assert_eq!(page[4].mac, mac(6));
        let (page, _) = s.discovered_page(&inventory, 10, 20).unwrap();
        assert_eq!(page.len(), 7);
        assert_eq!(page[6].mac, mac(28));
        let (page, total) = s.discovered_page(&[], 5, u64::MAX).unwrap();
        assert!(page.is_empty());
        assert_eq!(total, 30);
        let last = s.last_for_macs(&[mac(3), mac(4), mac(999)]).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[&mac(3)].at, 3);
        assert!(s.last_for_macs(&[]).unwrap().is_empty());
    }
}
