//! The build-state store: one record per inventory host and every transition, in a SQLite file
//! of its own (`STATE/buildstate.db`), written with `synchronous=FULL` so that a state change
//! that was answered is on disk. The decisions are `lifecycle`'s; this module only keeps them.

use crate::lifecycle::{self, InventoryHost, Record, State, Transition};
use crate::select::Claims;
use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use std::path::Path;
use std::sync::Mutex;

/// The columns of a [`Record`], in `row_to_record`'s order.
macro_rules! record_columns {
    () => {
        "host, state, token, token_at, bound, boot_mac, platform, host_generation, \
         profile_generation, served_at, spent_token, spent_status, media"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("build-state store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("build-state store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("build-state store: a record names state {0:?}, which is not one pxeforge knows")]
    BadState(String),
    #[error("build-state store lock poisoned")]
    Poisoned,
    #[error("{0}")]
    Unreadable(String),
    #[error("build-state record of {0} kept changing under concurrent requests")]
    Contended(String),
    #[error("{0}")]
    Refused(String),
}

/// A recorded transition, as `pxeforge hosts`-style listings show it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TransitionRow {
    pub host: String,
    pub from: Option<String>,
    pub to: String,
    pub cause: String,
    pub source: String,
    pub at: i64,
}

pub struct BuildState {
    conn: Mutex<Connection>,
    /// What an armed record's media are pinned to when it is written (see [`lifecycle::pin`]);
    /// unset (offline commands): pinned at the host's first script request instead.
    pinner: std::sync::RwLock<Option<Pinner>>,
}

/// The current media (`<release>/<compose-id>`) of a host, by name.
pub type Pinner = std::sync::Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS hosts (
    host TEXT PRIMARY KEY, state TEXT NOT NULL, token TEXT, token_at INTEGER NOT NULL,
    bound TEXT, boot_mac TEXT, platform TEXT,
    host_generation INTEGER NOT NULL, profile_generation INTEGER NOT NULL,
    updated_at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS hosts_token ON hosts(token) WHERE token IS NOT NULL;
CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, host TEXT NOT NULL, from_state TEXT,
    to_state TEXT NOT NULL, cause TEXT NOT NULL, source TEXT NOT NULL, at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS transitions_host ON transitions(host, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS claims (
    mac TEXT PRIMARY KEY, status TEXT NOT NULL, name TEXT, profile TEXT,
    source TEXT NOT NULL, at INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS claims_name ON claims(name) WHERE name IS NOT NULL;
";

/// Columns added after the first release of the store, with their definitions: an older file
/// gets them at open.
const ADDED_COLUMNS: [(&str, &str); 5] = [
    ("served_at", "INTEGER NOT NULL DEFAULT 0"),
    ("since", "INTEGER NOT NULL DEFAULT 0"),
    ("spent_token", "TEXT"),
    ("spent_status", "TEXT"),
    ("media", "TEXT"),
];

/// Transitions kept per host (older ones are deleted as new ones are recorded).
const HISTORY_PER_HOST: i64 = 100;

impl BuildState {
    /// Opens (creating if needed) the store. Any failure is returned, never papered over: a
    /// store that cannot be read must arm nothing.
    pub fn open(path: &Path) -> Result<BuildState, StateError> {
        let open_err = |source| StateError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // FULL: a transition that was answered survives a power cut of the server.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_err)?;
        conn.execute_batch(SCHEMA).map_err(open_err)?;
        add_columns(&conn).map_err(open_err)?;
        // After the columns it names exist (an older file gets them just above).
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS hosts_spent ON hosts(spent_token) WHERE spent_token IS NOT NULL",
        )
        .map_err(open_err)?;
        // Reads every record once, so that a store with garbage in it fails here, at start,
        // and not host by host.
        {
            let mut st = conn.prepare("SELECT state FROM hosts").map_err(open_err)?;
            let states = st
                .query_map([], |r| r.get::<_, String>(0))
                .map_err(open_err)?;
            for s in states {
                let s = s.map_err(open_err)?;
                if State::parse(&s).is_none() {
                    return Err(StateError::BadState(s));
                }
            }
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Tokens are in here: readable by the service alone.
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        Ok(BuildState {
            conn: Mutex::new(conn),
            pinner: std::sync::RwLock::new(None),
        })
    }

    /// Sets what armed records are pinned to from now on (the server, at every load).
    pub fn set_pinner(&self, pinner: Pinner) {
        if let Ok(mut p) = self.pinner.write() {
            *p = Some(pinner);
        }
    }

    /// `r` as it is written: an armed build without media gets the current ones.
    fn pinned(&self, r: &Record) -> Record {
        let mut rec = r.clone();
        if let Ok(Some(p)) = self.pinner.read().as_deref() {
            let host = rec.host.clone();
            lifecycle::pin(&mut rec, &mut || p(&host));
        }
        rec
    }

    fn conn(&self) -> Result<std::sync::MutexGuard<'_, Connection>, StateError> {
        self.conn.lock().map_err(|_| StateError::Poisoned)
    }

    /// The `synchronous` pragma in force (2 = FULL), for the tests that assert durability.
    pub fn synchronous(&self) -> Result<i64, StateError> {
        Ok(self
            .conn()?
            .query_row("PRAGMA synchronous", [], |r| r.get(0))?)
    }

    pub fn get(&self, host: &str) -> Result<Option<Record>, StateError> {
        let c = self.conn()?;
        get_in(&c, host)
    }

    /// The host whose live token this is, or whose last build it ended.
    pub fn by_token(&self, token: &str) -> Result<Option<Record>, StateError> {
        let c = self.conn()?;
        let host: Option<String> = c
            .query_row(
                "SELECT host FROM hosts WHERE token = ?1 OR spent_token = ?1 LIMIT 1",
                params![token],
                |r| r.get(0),
            )
            .optional()?;
        match host {
            // The lookup used the index; the comparison that decides is `lifecycle`'s, in
            // constant time.
            Some(h) => get_in(&c, &h),
            None => Ok(None),
        }
    }

    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let c = self.conn()?;
        let mut st = c.prepare(&format!("{SELECT} ORDER BY host"))?;
        let rows = st.query_map([], row_to_record)?;
        let mut out = Vec::new();
        for r in rows {
            out.push(r??);
        }
        Ok(out)
    }

    /// Every record with the time it entered its state.
    pub fn list_since(&self) -> Result<Vec<(Record, i64)>, StateError> {
        let c = self.conn()?;
        let mut st = c.prepare(concat!(
            "SELECT ",
            record_columns!(),
            ", since FROM hosts ORDER BY host"
        ))?;
        let rows = st.query_map([], |r| Ok((row_to_record(r)?, r.get::<_, i64>(13)?)))?;
        let mut out = Vec::new();
        for r in rows {
            let (rec, since) = r?;
            out.push((rec?, since));
        }
        Ok(out)
    }

    /// Installs under way at `now` other than `host`'s (see [`lifecycle::in_flight`]).
    fn in_flight_except(c: &Connection, host: &str, now: i64) -> Result<u32, StateError> {
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM hosts WHERE host != ?1 AND (state = 'installing'
               OR (state = 'armed' AND served_at > 0 AND served_at > ?2))",
            params![host, now - lifecycle::START_WINDOW_SECS],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Hosts `installing` since before `before`, with the time they started.
    pub fn installing_since_before(&self, before: i64) -> Result<Vec<(String, i64)>, StateError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT host, since FROM hosts WHERE state = 'installing' AND since < ?1 ORDER BY host",
        )?;
        let rows = st.query_map(params![before], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Hosts in each state (and installs under way), for `/api/status` and `/metrics`.
    pub fn count_installing(&self) -> Result<u32, StateError> {
        let c = self.conn()?;
        let n: i64 = c.query_row(
            "SELECT COUNT(*) FROM hosts WHERE state = 'installing'",
            [],
            |r| r.get(0),
        )?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    pub fn paused(&self) -> Result<bool, StateError> {
        let c = self.conn()?;
        let v: Option<String> = c
            .query_row("SELECT value FROM meta WHERE key = 'paused'", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.as_deref() == Some("1"))
    }

    pub fn set_paused(&self, paused: bool) -> Result<(), StateError> {
        let c = self.conn()?;
        c.execute(
            "INSERT INTO meta (key, value) VALUES ('paused', ?1)
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![if paused { "1" } else { "0" }],
        )?;
        Ok(())
    }

    /// Every operator decision about a machine outside the inventory.
    pub fn claims(&self) -> Result<Vec<ClaimRow>, StateError> {
        Ok(claims_in(&*self.conn()?)?)
    }

    /// Records the approval (or adoption) of `mac` as host `name` of `profile`, and the host's
    /// first build-state record, in one transaction. Refused when the MAC already has an
    /// approved claim or the name is taken by another claim.
    pub fn approve(
        &self,
        mac: &str,
        name: &str,
        profile: &str,
        install: bool,
        source: &str,
        now: i64,
    ) -> Result<Transition, StateError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM claims WHERE mac = ?1",
                params![mac],
                |r| r.get(0),
            )
            .optional()?;
        if status.as_deref() == Some("approved") {
            return Err(StateError::Refused(format!(
                "{mac} is already approved: its claim cannot change"
            )));
        }
        let taken: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM claims WHERE name = ?1 AND mac != ?2)",
            params![name, mac],
            |r| r.get(0),
        )?;
        if taken {
            return Err(StateError::Refused(format!(
                "the name {name:?} is already another machine's"
            )));
        }
        tx.execute(
            "INSERT INTO claims (mac, status, name, profile, source, at)
             VALUES (?1, 'approved', ?2, ?3, ?4, ?5)
             ON CONFLICT(mac) DO UPDATE SET status = 'approved', name = excluded.name,
               profile = excluded.profile, source = excluded.source, at = excluded.at",
            params![mac, name, profile, source, now],
        )?;
        // A record left under this name by a host since removed from the inventory is replaced.
        let (record, t) = lifecycle::approved(name, install, source);
        put(&tx, &record, now)?;
        log(&tx, &t, now)?;
        tx.commit()?;
        log_transition(&t);
        Ok(t)
    }

    /// Records that `mac` is never to be installed (it boots its local disk). Refused for an
    /// approved machine.
    pub fn reject(&self, mac: &str, source: &str, now: i64) -> Result<(), StateError> {
        let c = self.conn()?;
        let n = c.execute(
            "INSERT INTO claims (mac, status, name, profile, source, at)
             VALUES (?1, 'rejected', NULL, NULL, ?2, ?3)
             ON CONFLICT(mac) DO UPDATE SET status = 'rejected', source = excluded.source,
               at = excluded.at WHERE claims.status != 'approved'",
            params![mac, source, now],
        )?;
        if n == 0 {
            return Err(StateError::Refused(format!(
                "{mac} is approved: cancel or reinstall its host instead"
            )));
        }
        tracing::info!(mac, source, "machine rejected: it boots its local disk");
        Ok(())
    }

    pub fn history(&self, host: &str, limit: u32) -> Result<Vec<TransitionRow>, StateError> {
        let c = self.conn()?;
        let mut st = c.prepare(
            "SELECT host, from_state, to_state, cause, source, at FROM transitions
             WHERE host = ?1 ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = st.query_map(params![host, limit], |r| {
            Ok(TransitionRow {
                host: r.get(0)?,
                from: r.get(1)?,
                to: r.get(2)?,
                cause: r.get(3)?,
                source: r.get(4)?,
                at: r.get(5)?,
            })
        })?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    /// Writes `record` and its transitions in one transaction, only if the stored record is
    /// still `expected` (so that two requests deciding from the same record cannot both win).
    /// Returns false when the record changed in between (the caller decides again).
    pub fn apply(
        &self,
        expected: Option<&Record>,
        record: &Record,
        transitions: &[Transition],
        now: i64,
    ) -> Result<bool, StateError> {
        self.apply_capped(expected, record, transitions, now, None)
    }

    /// [`BuildState::apply`], and when `cap` is given, only while fewer than `cap` other
    /// installs are under way (counted inside the same write transaction, so that two hosts
    /// starting at once cannot both take the last slot).
    fn apply_capped(
        &self,
        expected: Option<&Record>,
        record: &Record,
        transitions: &[Transition],
        now: i64,
        cap: Option<u32>,
    ) -> Result<bool, StateError> {
        let mut c = self.conn()?;
        // IMMEDIATE: take the write lock before reading, so a second process waits (busy
        // timeout) instead of failing its upgrade from a read with "database is locked".
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if get_in(&tx, &record.host)?.as_ref() != expected {
            return Ok(false);
        }
        if let Some(cap) = cap {
            if Self::in_flight_except(&tx, &record.host, now)? >= cap {
                return Ok(false);
            }
        }
        put(&tx, &self.pinned(record), now)?;
        for t in transitions {
            log(&tx, t, now)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Applies a site load: adoption of an empty store, new hosts, raised generations.
    /// `announce` sees the transitions before they are committed (the "this load arms N
    /// hosts" warning); they are returned once they are.
    pub fn reconcile(
        &self,
        inventory: &[InventoryHost],
        now: i64,
        announce: impl FnOnce(&[Transition]),
    ) -> Result<Vec<Transition>, StateError> {
        let mut c = self.conn()?;
        let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let empty: bool = tx.query_row(
            "SELECT NOT EXISTS (SELECT 1 FROM meta WHERE key = 'initialized')",
            [],
            |r| r.get(0),
        )?;
        let known = |h: &str| get_in(&tx, h).ok().flatten();
        let (records, transitions): (Vec<Record>, Vec<Transition>) =
            lifecycle::reconcile(inventory, &known, empty)
                .into_iter()
                .unzip();
        announce(&transitions);
        for (record, t) in records.iter().zip(&transitions) {
            put(&tx, &self.pinned(record), now)?;
            log(&tx, t, now)?;
        }
        tx.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('initialized', ?1)",
            params![now.to_string()],
        )?;
        tx.commit()?;
        Ok(transitions)
    }

    /// Decides for `host` from its current record with `decide`, and writes what it changed;
    /// if another writer changed the record in between, decides again from the new one.
    /// `None`: the host has no record.
    pub fn decide<A>(
        &self,
        host: &str,
        now: i64,
        mut decide: impl FnMut(&Record) -> (A, Option<(Record, Vec<Transition>)>),
    ) -> Result<Option<A>, StateError> {
        self.decide_capped(host, now, 0, |r, _| decide(r))
    }

    /// [`BuildState::decide`] under a cap of `cap` installs under way (0: none): `decide` is
    /// told whether there is room for another, and a decision that starts an install is
    /// written only while there still is.
    pub fn decide_capped<A>(
        &self,
        host: &str,
        now: i64,
        cap: u32,
        mut decide: impl FnMut(&Record, bool) -> (A, Option<(Record, Vec<Transition>)>),
    ) -> Result<Option<A>, StateError> {
        for _ in 0..16 {
            let Some(current) = self.get(host)? else {
                return Ok(None);
            };
            let room = cap == 0 || {
                let c = self.conn()?;
                Self::in_flight_except(&c, host, now)? < cap
            };
            let (answer, change) = decide(&current, room);
            let Some((record, transitions)) = change else {
                return Ok(Some(answer));
            };
            let starts = cap > 0
                && lifecycle::in_flight(&record, now)
                && !lifecycle::in_flight(&current, now);
            let guard = starts.then_some(cap);
            if self.apply_capped(Some(&current), &record, &transitions, now, guard)? {
                for t in &transitions {
                    log_transition(t);
                }
                return Ok(Some(answer));
            }
        }
        Err(StateError::Contended(host.to_string()))
    }
}

const SELECT: &str = concat!("SELECT ", record_columns!(), " FROM hosts");

/// An operator's decision about a machine outside the inventory.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClaimRow {
    pub mac: String,
    /// `approved` or `rejected`.
    pub status: String,
    pub name: Option<String>,
    pub profile: Option<String>,
    pub source: String,
    pub at: i64,
}

fn claims_in(c: &Connection) -> rusqlite::Result<Vec<ClaimRow>> {
    let mut st =
        c.prepare("SELECT mac, status, name, profile, source, at FROM claims ORDER BY mac")?;
    let rows = st.query_map([], |r| {
        Ok(ClaimRow {
            mac: r.get(0)?,
            status: r.get(1)?,
            name: r.get(2)?,
            profile: r.get(3)?,
            source: r.get(4)?,
            at: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The claims of the store at `path`, opened read-only (`pxeforge render` must not write).
pub fn claims_read_only(path: &Path) -> rusqlite::Result<Vec<ClaimRow>> {
    let c = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    claims_in(&c)
}

fn add_columns(c: &Connection) -> rusqlite::Result<()> {
    let mut have = Vec::new();
    {
        let mut st = c.prepare("SELECT name FROM pragma_table_info('hosts')")?;
        for n in st.query_map([], |r| r.get::<_, String>(0))? {
            have.push(n?);
        }
    }
    for (col, def) in ADDED_COLUMNS {
        if !have.iter().any(|h| h == col) {
            c.execute_batch(&format!("ALTER TABLE hosts ADD COLUMN {col} {def}"))?;
        }
    }
    Ok(())
}

fn get_in(c: &Connection, host: &str) -> Result<Option<Record>, StateError> {
    let r = c
        .query_row(
            &format!("{SELECT} WHERE host = ?1"),
            params![host],
            row_to_record,
        )
        .optional()?;
    r.transpose()
}

fn row_to_record(r: &rusqlite::Row) -> rusqlite::Result<Result<Record, StateError>> {
    let state: String = r.get(1)?;
    let Some(parsed) = State::parse(&state) else {
        return Ok(Err(StateError::BadState(state)));
    };
    Ok(Ok(Record {
        host: r.get(0)?,
        state: parsed,
        token: r.get(2)?,
        token_at: r.get(3)?,
        bound: r.get(4)?,
        boot_mac: r.get(5)?,
        platform: r.get(6)?,
        host_generation: r.get::<_, i64>(7)?.max(0) as u64,
        profile_generation: r.get::<_, i64>(8)?.max(0) as u64,
        served_at: r.get(9)?,
        spent_token: r.get(10)?,
        spent_status: r.get(11)?,
        media: r.get(12)?,
    }))
}

fn put(c: &Connection, r: &Record, now: i64) -> Result<(), StateError> {
    c.execute(
        "INSERT INTO hosts (host, state, token, token_at, bound, boot_mac, platform,
            host_generation, profile_generation, updated_at, served_at, since, spent_token,
            spent_status, media)
         VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?10,?12,?13,?14)
         ON CONFLICT(host) DO UPDATE SET state=excluded.state, token=excluded.token,
            token_at=excluded.token_at, bound=excluded.bound, boot_mac=excluded.boot_mac,
            platform=excluded.platform, host_generation=excluded.host_generation,
            profile_generation=excluded.profile_generation, updated_at=excluded.updated_at,
            served_at=excluded.served_at, spent_token=excluded.spent_token,
            spent_status=excluded.spent_status, media=excluded.media,
            since=CASE WHEN hosts.state = excluded.state THEN hosts.since ELSE excluded.since END",
        params![
            r.host,
            r.state.as_str(),
            r.token,
            r.token_at,
            r.bound,
            r.boot_mac,
            r.platform,
            i64::try_from(r.host_generation).unwrap_or(i64::MAX),
            i64::try_from(r.profile_generation).unwrap_or(i64::MAX),
            now,
            r.served_at,
            r.spent_token,
            r.spent_status,
            r.media
        ],
    )?;
    Ok(())
}

fn log(c: &Connection, t: &Transition, now: i64) -> Result<(), StateError> {
    c.execute(
        "INSERT INTO transitions (host, from_state, to_state, cause, source, at)
         VALUES (?1,?2,?3,?4,?5,?6)",
        params![
            t.host,
            t.from.map(|s| s.as_str()),
            t.to.as_str(),
            t.cause,
            t.source,
            now
        ],
    )?;
    c.execute(
        "DELETE FROM transitions WHERE host = ?1 AND id NOT IN
           (SELECT id FROM transitions WHERE host = ?1 ORDER BY id DESC LIMIT ?2)",
        params![t.host, HISTORY_PER_HOST],
    )?;
    Ok(())
}

/// The store as the server holds it: open, or the reason it could not be read. A store that
/// cannot be read arms nothing: every host boots locally and installs are refused until it is
/// repaired and the server restarted. Beside it, what every request reads and only operators
/// change, kept in memory: the approved and rejected machines, and the global pause.
pub struct Store {
    inner: Result<BuildState, String>,
    claims: arc_swap::ArcSwap<Claims>,
    paused: std::sync::atomic::AtomicBool,
}

impl Store {
    pub fn open(path: &Path) -> Store {
        let inner = BuildState::open(path).map_err(|e| {
            let why = format!(
                "{e}: no host will be installed (every host boots its local disk) until it is repaired or moved away and pxeforge restarted"
            );
            tracing::error!("{why}");
            why
        });
        let store = Store {
            inner,
            claims: arc_swap::ArcSwap::from_pointee(Claims::default()),
            paused: std::sync::atomic::AtomicBool::new(false),
        };
        if let Err(e) = store.refresh() {
            tracing::error!(error = %e, "build state: approvals and pause could not be read");
        }
        store
    }

    pub fn state(&self) -> Result<&BuildState, &str> {
        self.inner.as_ref().map_err(String::as_str)
    }

    fn state_or_err(&self) -> Result<&BuildState, StateError> {
        self.state()
            .map_err(|why| StateError::Unreadable(why.to_string()))
    }

    /// [`BuildState::decide`] on the store, or its unreadability as an error.
    pub fn decide<A>(
        &self,
        host: &str,
        now: i64,
        decide: impl FnMut(&Record) -> (A, Option<(Record, Vec<Transition>)>),
    ) -> Result<Option<A>, StateError> {
        self.state_or_err()?.decide(host, now, decide)
    }

    /// [`BuildState::decide_capped`] on the store.
    pub fn decide_capped<A>(
        &self,
        host: &str,
        now: i64,
        cap: u32,
        decide: impl FnMut(&Record, bool) -> (A, Option<(Record, Vec<Transition>)>),
    ) -> Result<Option<A>, StateError> {
        self.state_or_err()?.decide_capped(host, now, cap, decide)
    }

    /// The approved and rejected machines, as selection reads them.
    pub fn claims(&self) -> arc_swap::Guard<std::sync::Arc<Claims>> {
        self.claims.load()
    }

    pub fn paused(&self) -> bool {
        self.paused.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Re-reads the claims and the pause from the file (after a change).
    fn refresh(&self) -> Result<(), StateError> {
        let bs = self.state_or_err()?;
        self.claims
            .store(std::sync::Arc::new(claims_of(&bs.claims()?)));
        self.paused
            .store(bs.paused()?, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    pub fn set_paused(&self, paused: bool, source: &str) -> Result<(), StateError> {
        self.state_or_err()?.set_paused(paused)?;
        self.refresh()?;
        if paused {
            tracing::warn!(source, "installs paused: every host boots its local disk");
        } else {
            tracing::info!(source, "installs resumed");
        }
        Ok(())
    }

    /// [`BuildState::approve`], then the new claims are in force at the next request.
    pub fn approve(
        &self,
        mac: &str,
        name: &str,
        profile: &str,
        install: bool,
        source: &str,
    ) -> Result<Transition, StateError> {
        let t = self.state_or_err()?.approve(
            mac,
            name,
            profile,
            install,
            source,
            crate::events::now(),
        )?;
        self.refresh()?;
        Ok(t)
    }

    pub fn reject(&self, mac: &str, source: &str) -> Result<(), StateError> {
        self.state_or_err()?
            .reject(mac, source, crate::events::now())?;
        self.refresh()
    }
}

/// The claims table as selection reads it. A row with a MAC or name that does not parse (only
/// possible by editing the file by hand) is skipped with an error in the log.
pub fn claims_of(rows: &[ClaimRow]) -> Claims {
    let mut out = Claims::default();
    for r in rows {
        let Ok(mac) = r.mac.parse::<pxeforge_site::Mac>() else {
            tracing::error!(mac = %r.mac, "build state: a claim with a malformed MAC is ignored");
            continue;
        };
        match (r.status.as_str(), &r.name, &r.profile) {
            ("approved", Some(name), Some(profile)) => {
                let origin = format!("approved by {} at {}", r.source, r.at);
                out.approved.insert(
                    mac,
                    crate::select::approved_host(name, profile, mac, origin),
                );
            }
            ("rejected", _, _) => {
                out.rejected.insert(mac);
            }
            _ => {
                tracing::error!(mac = %r.mac, status = %r.status, "build state: an incomplete claim is ignored")
            }
        }
    }
    out
}

/// Every transition is logged (never with a token) as well as recorded.
pub fn log_transition(t: &Transition) {
    let from = t.from.map_or("none", |s| s.as_str());
    if t.to == State::Failed {
        tracing::error!(host = %t.host, from, to = t.to.as_str(), cause = %t.cause, source = %t.source, "build state: install failed");
    } else {
        tracing::info!(host = %t.host, from, to = t.to.as_str(), cause = %t.cause, source = %t.source, "build state");
    }
}

/// The inventory as build state sees it: every host, whether pxeforge may install it, and the
/// generations of the host and its profile.
pub fn inventory(site: &pxeforge_site::Site) -> Vec<InventoryHost> {
    site.hosts
        .iter()
        .map(|h| {
            let profile = site.profiles.get(&h.profile);
            InventoryHost {
                name: h.name.clone(),
                installable: profile.is_some_and(|p| crate::select::tracked(h, p)),
                host_generation: h.generation,
                profile_generation: profile.map_or(0, |p| p.generation),
            }
        })
        .collect()
}

/// Brings the store in line with a newly loaded site (adoption, new hosts, raised
/// generations), saying first how many hosts this arms.
pub fn reconcile_site(store: &Store, site: &pxeforge_site::Site, state: &Path) {
    let Ok(bs) = store.state() else {
        return;
    };
    let announce = |ts: &[Transition]| {
        let armed: Vec<&str> = ts
            .iter()
            .filter(|t| t.to == State::Armed)
            .map(|t| t.host.as_str())
            .collect();
        if !armed.is_empty() {
            let first: Vec<&str> = armed.iter().take(20).copied().collect();
            tracing::warn!(hosts = ?first, "this load arms {} host(s): they install at their next network boot", armed.len());
        }
    };
    bs.set_pinner(crate::media::pinner(state, site));
    match bs.reconcile(&inventory(site), crate::events::now(), announce) {
        Ok(ts) => ts.iter().for_each(log_transition),
        Err(e) => tracing::error!(error = %e, "build state: the load was not applied"),
    }
}

/// A fresh per-build token: 128 random bits from the operating system, as hex.
pub fn new_token() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only without any entropy source; a token of zeros would be guessable,
    // so that is a reason to stop, not to go on.
    if let Err(e) = getrandom::fill(&mut b) {
        panic!("no randomness for a build token: {e}");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(name: &str) -> InventoryHost {
        InventoryHost {
            name: name.into(),
            installable: true,
            host_generation: 0,
            profile_generation: 0,
        }
    }

    #[test]
    fn adopts_then_arms_new_hosts_and_survives_reopen() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("buildstate.db");
        {
            let s = BuildState::open(&p).expect("open");
            assert_eq!(s.synchronous().expect("pragma"), 2, "synchronous=FULL");
            let t = s.reconcile(&[inv("a")], 1, |_| {}).expect("reconcile");
            assert_eq!(t[0].to, State::Installed);
            let t = s
                .reconcile(&[inv("a"), inv("b")], 2, |_| {})
                .expect("reconcile");
            assert_eq!(t.len(), 1);
            assert_eq!(t[0].to, State::Armed);
        }
        let s = BuildState::open(&p).expect("reopen");
        assert_eq!(s.get("a").expect("get").expect("a").state, State::Installed);
        assert_eq!(s.get("b").expect("get").expect("b").state, State::Armed);
        assert_eq!(s.history("b", 10).expect("history").len(), 1);
        assert!(s
            .reconcile(&[inv("a"), inv("b")], 3, |_| {})
            .expect("again")
            .is_empty());
    }

    #[test]
    fn apply_refuses_a_stale_decision() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = BuildState::open(&d.path().join("b.db")).expect("open");
        s.reconcile(&[], 1, |_| {}).expect("init");
        s.reconcile(&[inv("a")], 1, |_| {}).expect("arm");
        let r = s.get("a").expect("get").expect("a");
        let mut next = r.clone();
        next.token = Some(new_token());
        assert!(s.apply(Some(&r), &next, &[], 2).expect("apply"));
        assert!(!s.apply(Some(&r), &next, &[], 3).expect("stale"));
        let found = s
            .by_token(next.token.as_deref().expect("token"))
            .expect("lookup");
        assert_eq!(found.map(|r| r.host), Some("a".to_string()));
    }

    /// Arming by a load or a command pins the media current then; a later compose does not
    /// move the build, a new arm does.
    #[test]
    fn arming_pins_the_current_media() {
        let d = tempfile::tempdir().expect("tempdir");
        let s = BuildState::open(&d.path().join("b.db")).expect("open");
        let current = std::sync::Arc::new(Mutex::new("r/c1".to_string()));
        let c = current.clone();
        s.set_pinner(std::sync::Arc::new(move |host: &str| {
            (host == "a").then(|| c.lock().expect("lock").clone())
        }));
        s.reconcile(&[], 1, |_| {}).expect("init");
        s.reconcile(&[inv("a"), inv("b")], 1, |_| {}).expect("arm");
        let a = s.get("a").expect("get").expect("a");
        assert_eq!((a.state, a.media.as_deref()), (State::Armed, Some("r/c1")));
        assert_eq!(s.get("b").expect("get").expect("b").media, None);
        *current.lock().expect("lock") = "r/c2".into();
        let mut next = a.clone();
        next.token = Some(new_token());
        assert!(s.apply(Some(&a), &next, &[], 2).expect("apply"));
        let a = s.get("a").expect("get").expect("a");
        assert_eq!(a.media.as_deref(), Some("r/c1"), "kept through the build");
        let (rearmed, t) = lifecycle::rearm(&a, "op");
        assert!(s.apply(Some(&a), &rearmed, &[t], 3).expect("rearm"));
        let a = s.get("a").expect("get").expect("a");
        assert_eq!(
            a.media.as_deref(),
            Some("r/c2"),
            "a new build, the new compose"
        );
    }

    #[test]
    fn garbage_is_an_error_not_an_empty_store() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("buildstate.db");
        std::fs::write(&p, b"this is not a database, and not empty either....").expect("write");
        assert!(BuildState::open(&p).is_err());
    }

    #[test]
    fn tokens_are_128_bit_hex_and_differ() {
        let a = new_token();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, new_token());
    }
}
