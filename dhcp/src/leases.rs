//! Pool leases in SQLite (WAL) in the state directory. The address is the primary key, so one
//! address can never be held by two clients; every operation runs in one immediate transaction.

use std::net::Ipv4Addr;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::site::{DhcpSite, Mac, Pool};

/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD_SECS: i64 = 60;
/// How long a declined address (someone else answered ARP for it) stays out of the pool.
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
    Offered,
    Bound,
    Declined,
}

impl LeaseState {
    fn parse(s: &str) -> Self {
        match s {
            "bound" => LeaseState::Bound,
            "declined" => LeaseState::Declined,
            _ => LeaseState::Offered,
        }
    }
}

pub struct LeaseDb {
    conn: Connection,
    /// Where the next free-address search starts: allocation stays O(1) while the pool fills,
    /// instead of rescanning from the pool's start every time.
    next_hint: u32,
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

impl LeaseDb {
    pub fn open(path: &Path) -> Result<Self, LeaseError> {
        let open_err = |source| LeaseError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // NORMAL under WAL: a power loss may lose the last leases but never corrupts the file.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS leases (
                ip INTEGER PRIMARY KEY,
                mac BLOB NOT NULL,
                state TEXT NOT NULL,
                expires INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS leases_mac ON leases(mac);",
        )
        .map_err(open_err)?;
        Ok(LeaseDb { conn, next_hint: 0 })
    }

    /// An address for `mac`: its current one, else the one it asks for if free, else the lowest
    /// free address. The address is held as `offered` for [`OFFER_HOLD_SECS`].
    pub fn offer(
        &mut self,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        site: &DhcpSite,
        now: i64,
    ) -> Result<Option<Ipv4Addr>, LeaseError> {
        let Some(pool) = &site.pool else {
            return Ok(None);
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<(u32, i64)> = tx
            .prepare_cached(
                "SELECT ip, expires FROM leases WHERE mac = ?1 AND state != 'declined'
                 ORDER BY expires DESC LIMIT 1",
            )?
            .query_row(params![mac_blob(mac)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let hold = now + OFFER_HOLD_SECS;
        if let Some((ip, expires)) = current {
            let ip = Ipv4Addr::from(ip);
            if pool.contains(ip) && !site.is_reserved(ip) {
                // A bound lease keeps its expiry; an offer is extended.
                tx.prepare_cached("UPDATE leases SET expires = ?2 WHERE ip = ?1")?
                    .execute(params![u32::from(ip), expires.max(hold)])?;
                tx.commit()?;
                return Ok(Some(ip));
            }
            tx.prepare_cached("DELETE FROM leases WHERE ip = ?1")?
                .execute(params![u32::from(ip)])?;
        }
        let choice = match requested.filter(|ip| pool.contains(*ip)) {
            Some(ip) if is_free(&tx, ip, site, now)? => Some(ip),
            _ => next_free(&mut self.next_hint, &tx, pool, site, now)?,
        };
        let Some(ip) = choice else {
            tx.commit()?;
            return Ok(None);
        };
        tx.prepare_cached("INSERT OR REPLACE INTO leases (ip, mac, state, expires) VALUES (?1, ?2, 'offered', ?3)")?.execute(params![u32::from(ip), mac_blob(mac), hold],
        )?;
        tx.commit()?;
        Ok(Some(ip))
    }

    /// Binds `ip` to `mac` if it is in the pool and not held by someone else.
    pub fn commit(
        &mut self,
        mac: Mac,
        ip: Ipv4Addr,
        site: &DhcpSite,
        now: i64,
    ) -> Result<bool, LeaseError> {
        let Some(pool) = &site.pool else {
            return Ok(false);
        };
        if !pool.contains(ip) || site.is_reserved(ip) {
            return Ok(false);
        }
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let holder: Option<(Vec<u8>, String, i64)> = tx
            .prepare_cached("SELECT mac, state, expires FROM leases WHERE ip = ?1")?
            .query_row(params![u32::from(ip)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let ok = match holder {
            None => true,
            Some((m, state, expires)) => {
                let state = LeaseState::parse(&state);
                if state == LeaseState::Declined {
                    expires <= now
                } else {
                    mac_from_blob(&m) == mac || expires <= now
                }
            }
        };
        if ok {
            // One address per client: drop whatever else it held.
            tx.prepare_cached(
                "DELETE FROM leases WHERE mac = ?1 AND ip != ?2 AND state != 'declined'",
            )?
            .execute(params![mac_blob(mac), u32::from(ip)])?;
            tx.prepare_cached("INSERT OR REPLACE INTO leases (ip, mac, state, expires) VALUES (?1, ?2, 'bound', ?3)")?.execute(params![u32::from(ip), mac_blob(mac), now + i64::from(site.lease_time_secs)],
            )?;
        }
        tx.commit()?;
        Ok(ok)
    }

    pub fn release(&mut self, mac: Mac, ip: Ipv4Addr) -> Result<bool, LeaseError> {
        let n = self
            .conn
            .prepare_cached(
                "DELETE FROM leases WHERE ip = ?1 AND mac = ?2 AND state != 'declined'",
            )?
            .execute(params![u32::from(ip), mac_blob(mac)])?;
        Ok(n > 0)
    }

    /// The client found `ip` in use: keep it out of the pool for a while.
    pub fn decline(&mut self, mac: Mac, ip: Ipv4Addr, now: i64) -> Result<bool, LeaseError> {
        let n = self
            .conn
            .prepare_cached(
                "UPDATE leases SET state = 'declined', expires = ?3 WHERE ip = ?1 AND mac = ?2",
            )?
            .execute(params![
                u32::from(ip),
                mac_blob(mac),
                now + DECLINE_HOLD_SECS
            ])?;
        Ok(n > 0)
    }

    /// The client took another server's offer.
    pub fn forget_offer(&mut self, mac: Mac) -> Result<(), LeaseError> {
        self.conn
            .prepare_cached("DELETE FROM leases WHERE mac = ?1 AND state = 'offered'")?
            .execute(params![mac_blob(mac)])?;
        Ok(())
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

fn is_free(
    tx: &rusqlite::Transaction<'_>,
    ip: Ipv4Addr,
    site: &DhcpSite,
    now: i64,
) -> Result<bool, LeaseError> {
    if site.is_reserved(ip) {
        return Ok(false);
    }
    let expires: Option<i64> = tx
        .prepare_cached("SELECT expires FROM leases WHERE ip = ?1")?
        .query_row(params![u32::from(ip)], |r| r.get(0))
        .optional()?;
    Ok(expires.is_none_or(|e| e <= now))
}

fn next_free(
    hint: &mut u32,
    tx: &rusqlite::Transaction<'_>,
    pool: &Pool,
    site: &DhcpSite,
    now: i64,
) -> Result<Option<Ipv4Addr>, LeaseError> {
    let start = u32::from(pool.start);
    let size = u32::from(pool.end).saturating_sub(start).saturating_add(1);
    if pool.end < pool.start {
        return Ok(None);
    }
    for i in 0..size {
        let offset = hint.wrapping_add(i) % size;
        let ip = Ipv4Addr::from(start + offset);
        if is_free(tx, ip, site, now)? {
            *hint = offset.wrapping_add(1) % size;
            return Ok(Some(ip));
        }
    }
    Ok(None)
}
