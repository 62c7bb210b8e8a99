//! Pool leases in SQLite (WAL, `synchronous=FULL`) in the state directory. The address is the
//! primary key, so one address can never be held by two clients; every operation runs in one
//! immediate transaction, and a lease is on disk (fsynced) before its ACK is sent; an offer's
//! hold is committed without the fsync. With group commit ([`LeaseDb::set_group_commit`]) the
//! bindings of several requests are committed without the fsync and made durable together by
//! one [`LeaseDb::sync`], which the server calls before it sends their ACKs. The database is the
//! truth; an in-memory index of free addresses ([`FreeIndex`]) mirrors it so that allocation
//! never scans the pool, and is rebuilt from the table whenever a write fails or the site changes.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::site::{DhcpSite, Mac, Pool};

/// How long a declined address (someone else answered ARP, or our ping) stays out of the pool.
pub const DECLINE_HOLD_SECS: i64 = 600;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("lease database: {0}")]
    Sql(#[from] rusqlite::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub mac: Mac,
    pub state: LeaseState,
    pub expires: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Chosen for a client, waiting for the ICMP probe: not offered yet, so not requestable.
    Probing,
    /// Offered and held for the client's REQUEST.
    Offered,
    Bound,
    Declined,
}

impl LeaseState {
    fn parse(s: &str) -> Self {
        match s {
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            "probing" => LeaseState::Probing,
            _ => LeaseState::Offered,
        }
    }
}

/// Which REQUEST this is (RFC 2131 §4.3.2): it decides what the client may bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// After our OFFER: server identifier and option 50. Binds only what we offered.
    Selecting,
    /// A client rebooting with its old address in option 50 and no server identifier: binds
    /// only its own existing lease; a client we have no record of gets silence.
    InitReboot,
    /// RENEWING or REBINDING, the address in ciaddr: extends only the client's own lease.
    Renewing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OfferOutcome {
    Offered(Ipv4Addr),
    /// A new address, held as `probing`: offer it once an ICMP probe got no answer.
    Probe(Ipv4Addr),
    /// The client's address is being probed already: its retransmission gets nothing.
    Probing,
    Exhausted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Bound(Ipv4Addr),
    /// NAK: the address is not this client's to have.
    Refused,
    /// Silence: a client we have no record of (RFC 2131 §4.3.2, INIT-REBOOT and RENEWING).
    Unknown,
}

/// How a write is committed (see [`LeaseDb::write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durable {
    /// fsynced before the answer: a binding, release or decline.
    Full,
    /// An offer's hold: committed, not fsynced.
    Offer,
}

pub struct LeaseDb {
    conn: Connection,
    index: Option<FreeIndex>,
    /// Where a corrupt file found at open was moved.
    moved_aside: Option<std::path::PathBuf>,
    /// The connection's `synchronous` as last set: FULL (true) or NORMAL.
    full_sync: bool,
    /// Durable writes are committed without the fsync until [`LeaseDb::sync`].
    group_commit: bool,
    /// A durable write was committed since the last fsync of the WAL.
    unsynced: bool,
}

fn mac_blob(mac: Mac) -> Vec<u8> {
    mac.0.to_vec()
}

fn mac_from_blob(b: &[u8]) -> Mac {
    let mut m = [0u8; 6];
    if b.len() == 6 {
        m.copy_from_slice(b);
    }
    Mac(m)
}

struct Row {
    mac: Mac,
    state: LeaseState,
    expires: i64,
}

fn row_at(tx: &rusqlite::Transaction<'_>, ip: Ipv4Addr) -> Result<Option<Row>, LeaseError> {
    Ok(tx
        .prepare_cached("SELECT mac, state, expires FROM leases WHERE ip = ?1")?
        .query_row(params![u32::from(ip)], |r| {
            let mac: Vec<u8> = r.get(0)?;
            let state: String = r.get(1)?;
            Ok(Row {
                mac: mac_from_blob(&mac),
                state: LeaseState::parse(&state),
                expires: r.get(2)?,
            })
        })
        .optional()?)
}

fn put(
    tx: &rusqlite::Transaction<'_>,
    ip: Ipv4Addr,
    mac: Mac,
    state: &str,
    expires: i64,
) -> Result<(), LeaseError> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO leases (ip, mac, state, expires) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![u32::from(ip), mac_blob(mac), state, expires])?;
    Ok(())
}

impl LeaseDb {
    pub fn open(path: &Path) -> Result<Self, LeaseError> {
        let open_err = |source| LeaseError::Open {
            path: path.display().to_string(),
            source,
        };
        // Real corruption moves the file aside (DHCP must come up; a lost lease table costs
        // clients a new address, a server that never starts costs the segment every boot);
        // anything else is an error for the operator.
        let opened = pxeforge_sqlitefile::open(path, |conn| {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // FULL: every commit fsyncs the WAL before it returns, so a lease we ACK is on disk.
            conn.pragma_update(None, "synchronous", "FULL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(
                "CREATE TABLE IF NOT EXISTS leases (
                    ip INTEGER PRIMARY KEY,
                    mac BLOB NOT NULL,
                    state TEXT NOT NULL,
                    expires INTEGER NOT NULL
                );
                CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);
                -- One row, rewritten by `sync` with synchronous=FULL: that commit fsyncs the
                -- WAL, and with it every earlier commit's frames.
                CREATE TABLE IF NOT EXISTS sync_marker (
                    id INTEGER PRIMARY KEY CHECK (id = 0),
                    n INTEGER NOT NULL
                );
                INSERT OR IGNORE INTO sync_marker (id, n) VALUES (0, 0);",
            )
        })
        .map_err(open_err)?;
        let conn = opened.conn;
        Ok(LeaseDb {
            conn,
            index: None,
            moved_aside: opened.moved_aside,
            full_sync: true,
            group_commit: false,
            unsynced: false,
        })
    }

    /// Group commit on: a binding, release or decline is committed without the fsync, and is
    /// durable only after the next [`LeaseDb::sync`] (which the caller must call before it
    /// answers). Off (the default): each is fsynced before its write returns.
    pub fn set_group_commit(&mut self, on: bool) -> Result<(), LeaseError> {
        if !on {
            self.sync()?;
        }
        self.group_commit = on;
        Ok(())
    }

    /// Whether a durable write awaits [`LeaseDb::sync`].
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Makes every write committed so far durable: one commit with `synchronous=FULL`, which
    /// fsyncs the WAL (the file, so every earlier commit's frames as well). Nothing to do when
    /// no durable write is waiting. On error the writes stay unconfirmed: the caller must not
    /// answer for them (and the index is rebuilt from the table, as after any failed write).
    pub fn sync(&mut self) -> Result<(), LeaseError> {
        if !self.unsynced {
            return Ok(());
        }
        let synced = self.set_full_sync(true).and_then(|()| {
            self.conn
                .prepare_cached("UPDATE sync_marker SET n = n + 1 WHERE id = 0")?
                .execute([])?;
            Ok(())
        });
        if let Err(e) = synced {
            self.index = None;
            return Err(e);
        }
        self.unsynced = false;
        Ok(())
    }

    /// Sets `PRAGMA synchronous` to FULL or NORMAL unless it already is.
    fn set_full_sync(&mut self, full: bool) -> Result<(), LeaseError> {
        if self.full_sync != full {
            self.conn
                .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
            self.full_sync = full;
        }
        Ok(())
    }

    /// Where a corrupt store found at open was moved (`leases.db.corrupt-TIMESTAMP`).
    pub fn moved_aside(&self) -> Option<&Path> {
        self.moved_aside.as_deref()
    }

    /// `PRAGMA synchronous` of the connection: 2 is FULL.
    pub fn synchronous(&self) -> Result<i64, LeaseError> {
        Ok(self
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))?)
    }

    /// How long a write waits for another holder of the database's lock before it fails.
    pub fn set_busy_timeout(&mut self, t: std::time::Duration) -> Result<(), LeaseError> {
        Ok(self.conn.busy_timeout(t)?)
    }

    fn index(&mut self, site: &DhcpSite, now: i64) -> Result<&mut FreeIndex, LeaseError> {
        let key = FreeIndex::key(site);
        if self.index.as_ref().is_none_or(|i| i.key != key) {
            let rows: Vec<(u32, i64)> = self
                .conn
                .prepare("SELECT ip, expires FROM leases")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            self.index = Some(FreeIndex::build(key, site, &rows, now));
        }
        let index = self.index.as_mut().ok_or(rusqlite::Error::InvalidQuery)?;
        index.reclaim(now);
        Ok(index)
    }

    /// Runs `f` in one immediate transaction; a failure drops the index (rebuilt from the
    /// table next time), so memory never claims what the disk does not hold. A binding,
    /// release or decline is committed with `synchronous=FULL` (the WAL is fsynced before the
    /// answer); an offer's hold with `NORMAL`: losing one to a power cut costs the client a
    /// retry, and halving the fsyncs of a DORA is what keeps up with a boot storm. A later
    /// FULL commit syncs the offer's frames too. With group commit, durable writes are
    /// committed with NORMAL as well and marked for the next [`LeaseDb::sync`].
    fn write<T>(
        &mut self,
        site: &DhcpSite,
        now: i64,
        durable: Durable,
        f: impl FnOnce(&rusqlite::Transaction<'_>, &mut FreeIndex) -> Result<T, LeaseError>,
    ) -> Result<T, LeaseError> {
        self.index(site, now)?;
        let Some(mut index) = self.index.take() else {
            return Err(rusqlite::Error::InvalidQuery.into());
        };
        let full = durable == Durable::Full && !self.group_commit;
        if let Err(e) = self.set_full_sync(full) {
            self.index = Some(index);
            return Err(e);
        }
        let out: Result<T, LeaseError> = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx, &mut index)?;
            tx.commit()?;
            Ok(out)
        })();
        let out = out?;
        if durable == Durable::Full && self.group_commit {
            self.unsynced = true;
        }
        self.index = Some(index);
        Ok(out)
    }

    /// An address for `mac` from `pool`: its current one, else the one it asks for if free,
    /// else the lowest free address. Held as `offered` for `site.offer_hold_secs`, or as
    /// `probing` (when `probe` is set and the address is new to the client) until
    /// [`LeaseDb::probed`] or [`LeaseDb::conflict`].
    pub fn offer(
        &mut self,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        pool: &Pool,
        site: &DhcpSite,
        now: i64,
        probe: bool,
    ) -> Result<OfferOutcome, LeaseError> {
        let hold = now + i64::from(site.offer_hold_secs);
        self.write(site, now, Durable::Offer, |tx, index| {
            let current: Option<(u32, String, i64)> = tx
                .prepare_cached(
                    "SELECT ip, state, expires FROM leases WHERE mac = ?1 AND state != 'declined'
                     ORDER BY expires DESC LIMIT 1",
                )?
                .query_row(params![mac_blob(mac)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()?;
            if let Some((ip, state, expires)) = current {
                let ip = Ipv4Addr::from(ip);
                let state = LeaseState::parse(&state);
                let usable = pool.contains(ip) && !index.reserved(ip);
                match state {
                    LeaseState::Probing if usable && expires > now => {
                        return Ok(OfferOutcome::Probing)
                    }
                    // The client's own lease (even expired: nobody took the row over).
                    LeaseState::Bound if usable => {
                        if expires < hold {
                            // Expired but still its own: hold it for the REQUEST, as an offer.
                            put(tx, ip, mac, "bound", hold)?;
                            index.hold(ip, hold);
                        }
                        return Ok(OfferOutcome::Offered(ip));
                    }
                    LeaseState::Offered if usable && expires > now => {
                        put(tx, ip, mac, "offered", hold)?;
                        index.hold(ip, hold);
                        return Ok(OfferOutcome::Offered(ip));
                    }
                    _ => {}
                }
                tx.prepare_cached("DELETE FROM leases WHERE ip = ?1")?
                    .execute(params![u32::from(ip)])?;
                index.free(ip);
            }
            let choice = match requested.filter(|ip| pool.contains(*ip)) {
                Some(ip) if index.is_free(ip) => Some(ip),
                _ => index.first_free(pool),
            };
            // No free address: the oldest offer still held for another client gives way, as a
            // forged TFTP request gives way in the TFTP table. A real client REQUESTs within
            // milliseconds of its OFFER, so a flood of DISCOVERs from random MACs (each holding
            // an offer) churns through offers and never holds the pool; bound leases are never
            // taken. The client that loses its offer gets a NAK and starts again.
            let choice = match choice {
                Some(ip) => Some(ip),
                None => tx
                    .prepare_cached(
                        "SELECT ip FROM leases WHERE state = 'offered' AND expires > ?1
                           AND ip BETWEEN ?2 AND ?3 ORDER BY expires, ip LIMIT 1",
                    )?
                    .query_row(
                        params![now, u32::from(pool.start), u32::from(pool.end)],
                        |r| r.get::<_, u32>(0),
                    )
                    .optional()?
                    .map(Ipv4Addr::from)
                    .filter(|ip| !index.reserved(*ip)),
            };
            let Some(ip) = choice else {
                return Ok(OfferOutcome::Exhausted);
            };
            if probe {
                put(tx, ip, mac, "probing", hold)?;
                index.hold(ip, hold);
                Ok(OfferOutcome::Probe(ip))
            } else {
                put(tx, ip, mac, "offered", hold)?;
                index.hold(ip, hold);
                Ok(OfferOutcome::Offered(ip))
            }
        })
    }

    /// The probe of `ip` got no answer: offer it to the client that was waiting.
    pub fn probed(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        site: &DhcpSite,
        now: i64,
    ) -> Result<bool, LeaseError> {
        let hold = now + i64::from(site.offer_hold_secs);
        self.write(site, now, Durable::Offer, |tx, index| {
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = 'offered', expires = ?3
                     WHERE ip = ?1 AND mac = ?2 AND state = 'probing'",
                )?
                .execute(params![u32::from(ip), mac_blob(mac), hold])?;
            if n > 0 {
                index.hold(ip, hold);
            }
            Ok(n > 0)
        })
    }

    /// Something answered the probe of `ip`: keep it out of the pool, as a DECLINE does.
    pub fn conflict(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        site: &DhcpSite,
        now: i64,
    ) -> Result<(), LeaseError> {
        let until = now + DECLINE_HOLD_SECS;
        self.write(site, now, Durable::Offer, |tx, index| {
            put(tx, ip, mac, "declined", until)?;
            index.hold(ip, until);
            Ok(())
        })
    }

    /// Binds `ip` to `mac` if the client may have it: see [`RequestKind`].
    pub fn commit(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        kind: RequestKind,
        pool: &Pool,
        site: &DhcpSite,
        now: i64,
    ) -> Result<CommitOutcome, LeaseError> {
        if !pool.on_subnet(ip) {
            // The client's notion of its network is wrong (it moved): NAK, whatever we know.
            return Ok(CommitOutcome::Refused);
        }
        let expires = now + i64::from(site.lease_time_secs);
        self.write(site, now, Durable::Full, |tx, index| {
            let row = row_at(tx, ip)?;
            let mine = row.as_ref().is_some_and(|r| r.mac == mac);
            let taken = row.as_ref().is_some_and(|r| {
                r.mac != mac && (r.state == LeaseState::Declined || r.expires > now)
            });
            let allowed = match (kind, row.as_ref().map(|r| r.state)) {
                (RequestKind::Selecting, Some(LeaseState::Offered)) => {
                    mine && row.as_ref().is_some_and(|r| r.expires > now)
                }
                (_, Some(LeaseState::Bound)) => mine,
                _ => false,
            };
            if allowed && pool.contains(ip) && !index.reserved(ip) {
                // One address per client: drop whatever else it held.
                let others: Vec<u32> = tx
                    .prepare_cached(
                        "SELECT ip FROM leases WHERE mac = ?1 AND ip != ?2 AND state != 'declined'",
                    )?
                    .query_map(params![mac_blob(mac), u32::from(ip)], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                tx.prepare_cached(
                    "DELETE FROM leases WHERE mac = ?1 AND ip != ?2 AND state != 'declined'",
                )?
                .execute(params![mac_blob(mac), u32::from(ip)])?;
                for other in others {
                    index.free(Ipv4Addr::from(other));
                }
                put(tx, ip, mac, "bound", expires)?;
                index.hold(ip, expires);
                return Ok(CommitOutcome::Bound(ip));
            }
            if allowed || taken || kind == RequestKind::Selecting {
                // Outside the pool now, someone else's, or not what we offered: NAK, so that
                // the client starts over with a DISCOVER.
                return Ok(CommitOutcome::Refused);
            }
            let known: Option<u32> = tx
                .prepare_cached("SELECT ip FROM leases WHERE mac = ?1 AND state = 'bound' LIMIT 1")?
                .query_row(params![mac_blob(mac)], |r| r.get(0))
                .optional()?;
            Ok(match known {
                // We know this client, with another address: tell it.
                Some(_) => CommitOutcome::Refused,
                None => CommitOutcome::Unknown,
            })
        })
    }

    /// The persisted expiry of `mac`'s bound lease on `ip`, if any.
    pub fn bound_expiry(&self, mac: Mac, ip: Ipv4Addr) -> Result<Option<i64>, LeaseError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT expires FROM leases WHERE ip = ?1 AND mac = ?2 AND state = 'bound'",
            )?
            .query_row(params![u32::from(ip), mac_blob(mac)], |r| r.get(0))
            .optional()?)
    }

    pub fn release(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        site: &DhcpSite,
        now: i64,
    ) -> Result<bool, LeaseError> {
        self.write(site, now, Durable::Full, |tx, index| {
            let n = tx
                .prepare_cached(
                    "DELETE FROM leases WHERE ip = ?1 AND mac = ?2 AND state != 'declined'",
                )?
                .execute(params![u32::from(ip), mac_blob(mac)])?;
            if n > 0 {
                index.free(ip);
            }
            Ok(n > 0)
        })
    }

    /// The client found `ip` in use: keep it out of the pool for a while.
    pub fn decline(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        site: &DhcpSite,
        now: i64,
    ) -> Result<bool, LeaseError> {
        let until = now + DECLINE_HOLD_SECS;
        self.write(site, now, Durable::Full, |tx, index| {
            let n = tx
                .prepare_cached(
                    "UPDATE leases SET state = 'declined', expires = ?3 WHERE ip = ?1 AND mac = ?2",
                )?
                .execute(params![u32::from(ip), mac_blob(mac), until])?;
            if n > 0 {
                index.hold(ip, until);
            }
            Ok(n > 0)
        })
    }

    /// The client took another server's offer.
    pub fn forget_offer(&mut self, mac: Mac, site: &DhcpSite, now: i64) -> Result<(), LeaseError> {
        self.write(site, now, Durable::Offer, |tx, index| {
            let ips: Vec<u32> = tx
                .prepare_cached("SELECT ip FROM leases WHERE mac = ?1 AND state = 'offered'")?
                .query_map(params![mac_blob(mac)], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.prepare_cached("DELETE FROM leases WHERE mac = ?1 AND state = 'offered'")?
                .execute(params![mac_blob(mac)])?;
            for ip in ips {
                index.free(Ipv4Addr::from(ip));
            }
            Ok(())
        })
    }

    pub fn all(&self) -> Result<Vec<Lease>, LeaseError> {
        let mut stmt = self
            .conn
            .prepare("SELECT ip, mac, state, expires FROM leases ORDER BY ip")?;
        let rows = stmt.query_map([], |r| {
            let ip: u32 = r.get(0)?;
            let mac: Vec<u8> = r.get(1)?;
            let state: String = r.get(2)?;
            Ok(Lease {
                ip: Ipv4Addr::from(ip),
                mac: mac_from_blob(&mac),
                state: LeaseState::parse(&state),
                expires: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Free pool addresses as disjoint ranges, plus when each held address frees up: allocation is
/// O(log n) however full the pools are (it used to probe the table address by address, each
/// probe scanning every host for a static address, under the lease lock).
pub struct FreeIndex {
    key: (u64, Vec<(u32, u32)>),
    /// start → end (inclusive): free addresses of every pool, static addresses taken out.
    free: BTreeMap<u32, u32>,
    /// Static addresses inside the pools.
    reserved: HashSet<u32>,
    /// When each held address is free again; `expiry_of` tells stale entries apart.
    expiry: BTreeSet<(i64, u32)>,
    expiry_of: HashMap<u32, i64>,
    /// Pool ranges, to tell whether a freed address belongs in `free`.
    ranges: Vec<(u32, u32)>,
}

impl FreeIndex {
    fn key(site: &DhcpSite) -> (u64, Vec<(u32, u32)>) {
        let ranges = site
            .pools
            .iter()
            .map(|p| (u32::from(p.start), u32::from(p.end)))
            .collect();
        (site.generation, ranges)
    }

    fn build(key: (u64, Vec<(u32, u32)>), site: &DhcpSite, rows: &[(u32, i64)], now: i64) -> Self {
        let ranges = key.1.clone();
        let mut index = FreeIndex {
            key,
            free: BTreeMap::new(),
            reserved: HashSet::new(),
            expiry: BTreeSet::new(),
            expiry_of: HashMap::new(),
            ranges,
        };
        for &(start, end) in &index.ranges.clone() {
            if start <= end {
                index.insert_range(start, end);
            }
        }
        for ip in site.hosts.values().filter_map(|h| h.address) {
            if index.in_pools(u32::from(ip)) {
                index.reserved.insert(u32::from(ip));
                index.take(u32::from(ip));
            }
        }
        for &(ip, expires) in rows {
            if expires > now {
                index.hold(Ipv4Addr::from(ip), expires);
            }
        }
        index
    }

    fn in_pools(&self, ip: u32) -> bool {
        self.ranges.iter().any(|&(s, e)| s <= ip && ip <= e)
    }

    fn reserved(&self, ip: Ipv4Addr) -> bool {
        self.reserved.contains(&u32::from(ip))
    }

    fn insert_range(&mut self, mut start: u32, mut end: u32) {
        // Merge with every range that overlaps or touches [start, end].
        let lo = start.saturating_sub(1);
        let hi = end.saturating_add(1);
        let touching: Vec<(u32, u32)> = self
            .free
            .range(..=hi)
            .rev()
            .take_while(|(_, &e)| e >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.free.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.free.insert(start, end);
    }

    /// Removes one address from `free`.
    fn take(&mut self, ip: u32) {
        let Some((&s, &e)) = self.free.range(..=ip).next_back() else {
            return;
        };
        if e < ip {
            return;
        }
        self.free.remove(&s);
        if s < ip {
            self.free.insert(s, ip - 1);
        }
        if ip < e {
            self.free.insert(ip + 1, e);
        }
    }

    fn is_free(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.free
            .range(..=ip)
            .next_back()
            .is_some_and(|(_, &e)| e >= ip)
    }

    fn first_free(&self, pool: &Pool) -> Option<Ipv4Addr> {
        let (start, end) = (u32::from(pool.start), u32::from(pool.end));
        if let Some((_, &e)) = self.free.range(..=start).next_back() {
            if e >= start {
                return Some(pool.start);
            }
        }
        let (&s, _) = self.free.range(start..).next()?;
        (s <= end).then(|| Ipv4Addr::from(s))
    }

    /// `ip` is held (offered, bound, declined) until `until`.
    fn hold(&mut self, ip: Ipv4Addr, until: i64) {
        let ip = u32::from(ip);
        self.take(ip);
        if let Some(old) = self.expiry_of.insert(ip, until) {
            self.expiry.remove(&(old, ip));
        }
        self.expiry.insert((until, ip));
    }

    /// `ip`'s row is gone.
    fn free(&mut self, ip: Ipv4Addr) {
        let ip = u32::from(ip);
        if let Some(old) = self.expiry_of.remove(&ip) {
            self.expiry.remove(&(old, ip));
        }
        if self.in_pools(ip) && !self.reserved.contains(&ip) {
            self.insert_range(ip, ip);
        }
    }

    /// Addresses whose hold has run out are free again (their rows stay until reused).
    fn reclaim(&mut self, now: i64) {
        while let Some(&(until, ip)) = self.expiry.first() {
            if until > now {
                break;
            }
            self.free(Ipv4Addr::from(ip));
        }
    }
}
