//! Install progress from hosts, kept in SQLite (WAL) in the state directory so that it
//! survives restarts. Also remembers which profile claimed a discovered machine, so that its
//! kickstart can be served after a restart.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;

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

pub struct EventStore {
    conn: Mutex<Connection>,
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
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS events (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                mac TEXT NOT NULL, host TEXT, stage TEXT NOT NULL, status TEXT NOT NULL,
                message TEXT NOT NULL, at INTEGER NOT NULL, remote TEXT NOT NULL);
             CREATE INDEX IF NOT EXISTS events_mac ON events(mac, id);
             CREATE TABLE IF NOT EXISTS discovered (
                mac TEXT PRIMARY KEY, profile TEXT, facts TEXT NOT NULL, seen_at INTEGER NOT NULL);",
        )
        .map_err(open_err)?;
        Ok(EventStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, EventsError> {
        self.conn.lock().map_err(|_| EventsError::Poisoned)
    }

    pub fn record(&self, e: &Event) -> Result<i64, EventsError> {
        let c = self.conn()?;
        c.execute(
            "INSERT INTO events (mac, host, stage, status, message, at, remote) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![e.mac, e.host, e.stage, e.status, e.message, e.at, e.remote],
        )?;
        Ok(c.last_insert_rowid())
    }

    /// The newest event of each MAC.
    pub fn last_by_mac(&self) -> Result<std::collections::HashMap<String, Event>, EventsError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT id, mac, host, stage, status, message, at, remote FROM events
             WHERE id IN (SELECT MAX(id) FROM events GROUP BY mac)",
        )?;
        let rows = st.query_map([], row_to_event)?;
        let mut out = std::collections::HashMap::new();
        for r in rows {
            let e = r?;
            out.insert(e.mac.clone(), e);
        }
        Ok(out)
    }

    pub fn for_mac(&self, mac: &str, limit: u32) -> Result<Vec<Event>, EventsError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT id, mac, host, stage, status, message, at, remote FROM events
             WHERE mac = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![mac, limit], row_to_event)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    pub fn remember_discovered(
        &self,
        mac: &str,
        profile: Option<&str>,
        facts: &str,
        at: i64,
    ) -> Result<(), EventsError> {
        let c = self.conn()?;
        c.execute(
            "INSERT INTO discovered (mac, profile, facts, seen_at) VALUES (?1,?2,?3,?4)
             ON CONFLICT(mac) DO UPDATE SET profile=excluded.profile, facts=excluded.facts, seen_at=excluded.seen_at",
            params![mac, profile, facts, at],
        )?;
        Ok(())
    }

    pub fn discovered_profile(&self, mac: &str) -> Result<Option<String>, EventsError> {
        let c = self.conn()?;
        Ok(c.query_row(
            "SELECT profile FROM discovered WHERE mac = ?1",
            params![mac],
            |r| r.get::<_, Option<String>>(0),
        )
        .optional()?
        .flatten())
    }

    pub fn discovered(&self) -> Result<Vec<Discovered>, EventsError> {
        let c = self.conn()?;
        let mut st =
            c.prepare("SELECT mac, profile, facts, seen_at FROM discovered ORDER BY mac")?;
        let rows = st.query_map([], |r| {
            Ok(Discovered {
                mac: r.get(0)?,
                profile: r.get(1)?,
                facts: r.get(2)?,
                seen_at: r.get(3)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }
}

/// The profile that claimed an unknown machine, read from the event store in `state` without
/// creating or changing it (for `pxeforge render`, which must not write).
pub fn claimed_profile(state: &Path, mac: pxeforge_site::Mac) -> Option<String> {
    let path = state.join("events.db");
    let conn =
        Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    conn.query_row(
        "SELECT profile FROM discovered WHERE mac = ?1",
        params![mac.to_string()],
        |r| r.get::<_, Option<String>>(0),
    )
    .optional()
    .ok()
    .flatten()
    .flatten()
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
}
