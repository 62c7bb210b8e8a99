//! `--kill-after N`: the server is killed with SIGKILL mid-storm and started again on the same
//! addresses, and the run checks what must survive that: every event answered `201` is in the
//! store afterwards, no address was ACKed to two MACs (nor is held by another MAC in
//! `leases.db`), and every host still finishes. The ledgers are filled by the simulated hosts
//! as they go; the checks are pure functions over them, tested without a server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long a simulated host waits before repeating a request that failed because the server
/// was down: iPXE and Anaconda's retries are of this order, and it keeps a restart of a second
/// or two to a handful of attempts per host.
pub const RETRY_EVERY: Duration = Duration::from_millis(200);

/// One event the server answered `201 {"id": N}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub id: i64,
    /// As the host sent it (`aa:bb:…`).
    pub mac: String,
    pub status: String,
    pub message: String,
    /// The 201 arrived before the kill was sent (the server that answered is the killed one).
    pub before_kill: bool,
}

/// One event as `GET /api/events` lists it (the fields the check compares).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub mac: String,
    pub status: String,
    pub message: String,
}

/// What the hosts share about the kill: whether it was sent, how many hosts have finished (the
/// trigger), the events the server answered, and the DHCP ACKs seen.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Set just before SIGKILL is sent: a 201 read while it is false came from the killed server.
    pub killed: AtomicBool,
    /// Set when the server could not be started again: the hosts stop riding through.
    pub gone: AtomicBool,
    /// Hosts that began to boot, and those whose `finished` was answered 201 (the trigger).
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
    answered: Mutex<Vec<Answered>>,
    /// Answers 201 without a readable `{"id": N}`: nothing can be checked for them.
    pub unreadable: AtomicUsize,
}

impl Ledger {
    pub fn record(&self, id: i64, mac: &str, status: &str, message: &str) {
        let a = Answered {
            id,
            mac: mac.to_string(),
            status: status.to_string(),
            message: message.to_string(),
            before_kill: !self.killed.load(Ordering::SeqCst),
        };
        if let Ok(mut v) = self.answered.lock() {
            v.push(a);
        }
    }

    pub fn answered(&self) -> Vec<Answered> {
        self.answered.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// The id of a `201` answer's body `{"id": N}`. Pure.
pub fn event_id(body: &[u8]) -> Option<i64> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get("id")?
        .as_i64()
}

/// A MAC as the store or a client may spell it, in one spelling (`aa:bb:…`), for comparing.
pub fn normal_mac(m: &str) -> String {
    m.trim().to_ascii_lowercase().replace('-', ":")
}

/// Every answered event must be stored under its id with the MAC, status and message it was
/// sent with: an id alone could be reused by the restarted server for another event if the
/// answered one had been lost. Returns one line per event that is not. Pure.
pub fn missing_events(answered: &[Answered], stored: &HashMap<i64, Stored>) -> Vec<String> {
    answered
        .iter()
        .filter_map(|a| {
            let when = if a.before_kill {
                "before the kill"
            } else {
                "after the kill"
            };
            let why = match stored.get(&a.id) {
                None => "is not in the store".to_string(),
                Some(s)
                    if normal_mac(&s.mac) != normal_mac(&a.mac)
                        || s.status != a.status
                        || s.message != a.message =>
                {
                    format!(
                        "is stored as another event ({} {} {:?}): the answered one was lost and its id reused",
                        s.mac, s.status, s.message
                    )
                }
                Some(_) => return None,
            };
            Some(format!(
                "event {} ({} {}) answered 201 {when} {why}",
                a.id, a.mac, a.status
            ))
        })
        .collect()
}

/// Address → the MACs it was ACKed to.
pub type AcksByIp = BTreeMap<Ipv4Addr, BTreeSet<[u8; 6]>>;

/// Every DHCP ACK the simulated clients saw: how many, and address → the MACs it was ACKed to.
#[derive(Debug, Default)]
pub struct Acks {
    inner: Mutex<(usize, AcksByIp)>,
}

impl Acks {
    pub fn record(&self, ip: Ipv4Addr, mac: [u8; 6]) {
        // An ACK without an address (proxy DHCP, INFORM) leases nothing.
        if ip.is_unspecified() {
            return;
        }
        if let Ok(mut g) = self.inner.lock() {
            g.0 += 1;
            g.1.entry(ip).or_default().insert(mac);
        }
    }

    /// (ACKs seen, address → MACs).
    pub fn snapshot(&self) -> (usize, AcksByIp) {
        self.inner
            .lock()
            .map(|g| (g.0, g.1.clone()))
            .unwrap_or_default()
    }
}

/// Addresses ACKed to more than one MAC over the run. Pure.
pub fn double_acks(acks: &BTreeMap<Ipv4Addr, BTreeSet<[u8; 6]>>) -> Vec<String> {
    acks.iter()
        .filter(|(_, macs)| macs.len() > 1)
        .map(|(ip, macs)| {
            let macs: Vec<String> = macs.iter().map(super::site_gen::mac_string).collect();
            format!("{ip} was ACKed to {} MACs: {}", macs.len(), macs.join(", "))
        })
        .collect()
}

/// One row of `leases.db` (`leases`: ip is the primary key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub ip: Ipv4Addr,
    pub mac: Vec<u8>,
    pub state: String,
}

/// `leases.db` against the ACKs: an address ACKed from the pool (not a reservation) must be
/// on disk for the MAC it was ACKed to, and no row may give an ACKed address to another MAC.
/// Pure.
pub fn lease_conflicts(
    acks: &BTreeMap<Ipv4Addr, BTreeSet<[u8; 6]>>,
    reserved: &BTreeSet<Ipv4Addr>,
    rows: &[LeaseRow],
) -> Vec<String> {
    let by_ip: HashMap<Ipv4Addr, &LeaseRow> = rows.iter().map(|r| (r.ip, r)).collect();
    let mut out = Vec::new();
    for (ip, macs) in acks {
        match by_ip.get(ip) {
            Some(row) => {
                if let Some(m) = macs.iter().find(|m| row.mac != m.as_slice()) {
                    out.push(format!(
                        "leases.db holds {ip} for {} ({}), but it was ACKed to {}",
                        mac_bytes(&row.mac),
                        row.state,
                        super::site_gen::mac_string(m)
                    ));
                }
            }
            None if !reserved.contains(ip) => out.push(format!(
                "{ip} was ACKed from the pool to {} but is not in leases.db",
                macs.iter()
                    .map(super::site_gen::mac_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            None => {}
        }
    }
    out
}

fn mac_bytes(m: &[u8]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads `leases.db` read-only (the server may still hold it open: WAL readers do not block it).
pub fn read_leases(path: &std::path::Path) -> anyhow::Result<Vec<LeaseRow>> {
    use anyhow::Context;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .with_context(|| format!("opening {} read-only", path.display()))?;
    let mut stmt = conn
        .prepare("SELECT ip, mac, state FROM leases")
        .with_context(|| format!("{}: reading the leases table", path.display()))?;
    let rows = stmt
        .query_map([], |r| {
            let ip: i64 = r.get(0)?;
            Ok(LeaseRow {
                // Out-of-range integers cannot be an address; shown as 0.0.0.0 rather than
                // failing the whole check.
                ip: Ipv4Addr::from(u32::try_from(ip).unwrap_or(0)),
                mac: r.get(1)?,
                state: r.get(2)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("{}: reading the leases table", path.display()))?;
    Ok(rows)
}

/// What happened at the kill, for the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Kill {
    /// `--kill-after N`.
    pub after: usize,
    /// Hosts finished when SIGKILL was sent, and hosts started but not finished then.
    pub finished_at_kill: usize,
    pub in_flight: usize,
    pub old_pid: u32,
    pub new_pid: Option<u32>,
    /// How long the server was left down, and how long the new one took to be ready.
    pub down: Duration,
    pub ready_in: Option<Duration>,
    /// Why the kill or the restart did not happen.
    pub error: Option<String>,
}

/// Everything `--kill-after` adds to the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KillReport {
    /// None: the kill was never sent (fewer than N hosts finished).
    pub kill: Option<Kill>,
    pub kill_after: usize,
    /// Requests repeated after a connection-level failure, and hosts that repeated any.
    pub retries: u64,
    pub retrying_hosts: usize,
    /// Events answered 201 (before the kill), and those not stored as answered.
    pub answered: usize,
    pub answered_before_kill: usize,
    pub unreadable_ids: usize,
    pub missing: Vec<String>,
    /// The events check could not be made (the admin API did not answer).
    pub events_error: Option<String>,
    /// DHCP: None when the run had no reservation-mode DHCP (the lease check did not run).
    pub dhcp: Option<DhcpCheck>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DhcpCheck {
    pub acks: usize,
    pub addresses: usize,
    pub doubles: Vec<String>,
    /// Rows of leases.db, or why it could not be read.
    pub lease_rows: Result<usize, String>,
    pub lease_conflicts: Vec<String>,
}

impl KillReport {
    /// Why the run fails (empty: every check held). Pure.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        match &self.kill {
            None => v.push(format!(
                "kill -9: never sent: fewer than {} hosts finished",
                self.kill_after
            )),
            Some(k) => {
                if let Some(e) = &k.error {
                    v.push(format!("kill -9: {e}"));
                }
            }
        }
        if let Some(e) = &self.events_error {
            v.push(format!("events answered 201: not checked: {e}"));
        }
        if self.unreadable_ids > 0 {
            v.push(format!(
                "events answered 201: {} answers had no {{\"id\": N}}",
                self.unreadable_ids
            ));
        }
        v.extend(self.missing.iter().cloned());
        if let Some(d) = &self.dhcp {
            v.extend(d.doubles.iter().cloned());
            if let Err(e) = &d.lease_rows {
                v.push(format!("leases.db: {e}"));
            }
            v.extend(d.lease_conflicts.iter().cloned());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(id: i64, mac: &str, status: &str, before_kill: bool) -> Answered {
        Answered {
            id,
            mac: mac.into(),
            status: status.into(),
            message: format!("fleet-sim {mac}"),
            before_kill,
        }
    }

    fn stored(a: &Answered) -> Stored {
        Stored {
            mac: a.mac.clone(),
            status: a.status.clone(),
            message: a.message.clone(),
        }
    }

    #[test]
    fn reads_the_id_of_a_201() {
        assert_eq!(event_id(br#"{"id": 42}"#), Some(42));
        assert_eq!(event_id(br#"{"id": "42"}"#), None);
        assert_eq!(event_id(b"created"), None);
        assert_eq!(event_id(b""), None);
    }

    #[test]
    fn an_answered_event_missing_from_the_store_is_reported() {
        let a = [
            answered(1, "02:50:46:00:00:01", "started", true),
            answered(2, "02:50:46:00:00:01", "finished", true),
            answered(3, "02:50:46:00:00:02", "started", false),
        ];
        let mut store: HashMap<i64, Stored> = a.iter().map(|e| (e.id, stored(e))).collect();
        assert!(missing_events(&a, &store).is_empty());
        // The store spells MACs its own way: still the same event.
        store.insert(
            1,
            Stored {
                mac: "02-50-46-00-00-01".into(),
                ..stored(&a[0])
            },
        );
        assert!(missing_events(&a, &store).is_empty());
        store.remove(&2);
        let m = missing_events(&a, &store);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(
            m[0].contains("event 2 (02:50:46:00:00:01 finished) answered 201 before the kill is not in the store"),
            "{m:?}"
        );
        // Lost, and its id given to another event after the restart: not "present".
        store.insert(
            2,
            Stored {
                mac: "02:50:46:00:00:09".into(),
                status: "started".into(),
                message: "fleet-sim other".into(),
            },
        );
        let m = missing_events(&a, &store);
        assert_eq!(m.len(), 1, "{m:?}");
        assert!(m[0].contains("stored as another event"), "{m:?}");
    }

    #[test]
    fn an_address_acked_to_two_macs_is_reported() {
        let acks = Acks::default();
        let (a, b) = ([2, 0x50, 0x46, 0, 0, 1], [2, 0x50, 0x46, 0, 0, 2]);
        let ip = Ipv4Addr::new(10, 200, 0, 2);
        acks.record(ip, a);
        acks.record(ip, a);
        acks.record(Ipv4Addr::new(10, 200, 0, 3), b);
        // An ACK without an address leases nothing.
        acks.record(Ipv4Addr::UNSPECIFIED, b);
        let (n, by_ip) = acks.snapshot();
        assert_eq!((n, by_ip.len()), (3, 2));
        assert!(double_acks(&by_ip).is_empty());
        acks.record(ip, b);
        let (_, by_ip) = acks.snapshot();
        let d = double_acks(&by_ip);
        assert_eq!(
            d,
            ["10.200.0.2 was ACKed to 2 MACs: 02:50:46:00:00:01, 02:50:46:00:00:02"]
        );
    }

    #[test]
    fn leases_db_must_hold_each_pool_ack_for_its_mac() {
        let mac = [2, 0x50, 0x46, 0, 0, 1];
        let (pool, reserved_ip) = (Ipv4Addr::new(127, 77, 0, 10), Ipv4Addr::new(10, 200, 0, 2));
        let acks = BTreeMap::from([
            (pool, BTreeSet::from([mac])),
            (reserved_ip, BTreeSet::from([mac])),
        ]);
        let reserved = BTreeSet::from([reserved_ip]);
        let row = |m: [u8; 6]| LeaseRow {
            ip: pool,
            mac: m.to_vec(),
            state: "bound".into(),
        };
        assert!(lease_conflicts(&acks, &reserved, &[row(mac)]).is_empty());
        let gone = lease_conflicts(&acks, &reserved, &[]);
        assert_eq!(gone.len(), 1, "{gone:?}");
        assert!(
            gone[0].contains("127.77.0.10 was ACKed from the pool"),
            "{gone:?}"
        );
        let other = lease_conflicts(&acks, &reserved, &[row([2, 0, 0, 0, 0, 9])]);
        assert!(
            other[0].contains("leases.db holds 127.77.0.10 for 02:00:00:00:00:09"),
            "{other:?}"
        );
    }

    #[test]
    fn every_check_turns_into_a_failure() {
        let ok = KillReport {
            kill: Some(Kill {
                after: 20,
                finished_at_kill: 20,
                old_pid: 1,
                new_pid: Some(2),
                ..Default::default()
            }),
            kill_after: 20,
            answered: 120,
            dhcp: Some(DhcpCheck {
                acks: 120,
                addresses: 60,
                doubles: vec![],
                lease_rows: Ok(0),
                lease_conflicts: vec![],
            }),
            ..Default::default()
        };
        assert!(ok.violations().is_empty(), "{:?}", ok.violations());
        let never = KillReport {
            kill: None,
            ..ok.clone()
        };
        assert!(never.violations()[0].contains("never sent"));
        let no_restart = KillReport {
            kill: Some(Kill {
                error: Some("the server could not be started again: x".into()),
                ..Default::default()
            }),
            ..ok.clone()
        };
        assert!(no_restart.violations()[0].contains("could not be started again"));
        let lost = KillReport {
            missing: vec!["event 7 (…) answered 201 before the kill is not in the store".into()],
            ..ok.clone()
        };
        assert_eq!(lost.violations().len(), 1);
        let unchecked = KillReport {
            events_error: Some("refused".into()),
            ..ok.clone()
        };
        assert!(unchecked.violations()[0].contains("not checked"));
        let twice = KillReport {
            dhcp: Some(DhcpCheck {
                doubles: vec!["10.200.0.2 was ACKed to 2 MACs".into()],
                lease_rows: Err("no such table".into()),
                ..ok.dhcp.clone().unwrap_or_else(|| unreachable!())
            }),
            ..ok
        };
        assert_eq!(twice.violations().len(), 2, "{:?}", twice.violations());
    }
}
