//! The per-client connection count behind [`crate::conn::Limits::max_connections_per_addr`]:
//! one table for all the workers of a server, a slot taken on accept and given back by a
//! guard's `Drop`, so that however a connection ends (closed, timed out, reset, refused, its
//! handler panicking, the runtime shutting down) the count comes down exactly once.

use crate::cidr::{self, Cidr};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Connections held per client, for every client holding one. An entry is removed when its
/// count comes back to 0, so the table never holds more entries than there are connections
/// (at most `Limits::max_connections`). The default SipHash keys it: a client cannot choose
/// addresses that collide.
#[derive(Debug)]
pub(crate) struct PerAddr {
    max: usize,
    exempt: Vec<Cidr>,
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// Whether a new connection may go on.
#[derive(Debug)]
pub(crate) enum Admit {
    /// Counted: the slot is given back when this is dropped.
    Counted(AddrSlot),
    /// The client is exempt, or there is no cap: nothing to give back.
    Uncounted,
    /// The client already holds the cap.
    Refused,
}

impl PerAddr {
    /// The table for a server with these limits; `None` when the cap is off (0), so that
    /// accepting then costs no lock.
    pub(crate) fn new(max: usize, exempt: Vec<Cidr>) -> Option<Arc<PerAddr>> {
        (max > 0).then(|| {
            Arc::new(PerAddr {
                max,
                exempt,
                counts: Mutex::new(HashMap::new()),
            })
        })
    }

    /// Counts a connection from `ip` unless that would take its client over the cap.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admit {
        if self.exempt.iter().any(|net| net.contains(ip)) {
            return Admit::Uncounted;
        }
        let key = client_key(ip);
        let mut counts = self.lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            // An entry exists only while its client holds a connection, and one at the cap
            // holds `max` of them, so the entry is not left behind at 0 here.
            return Admit::Refused;
        }
        *n += 1;
        Admit::Counted(AddrSlot {
            table: self.clone(),
            key,
        })
    }

    /// The lock is held only for a map lookup and an add, with nothing that can panic inside;
    /// a poisoned lock (a panic elsewhere while holding it, which cannot happen today) still
    /// guards consistent counts, so it is taken as it is rather than unwrapped.
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn held(&self, ip: IpAddr) -> usize {
        self.lock().get(&client_key(ip)).copied().unwrap_or(0)
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.lock().len()
    }
}

/// One connection's place in its client's count; dropping it gives the place back.
#[derive(Debug)]
pub(crate) struct AddrSlot {
    table: Arc<PerAddr>,
    key: IpAddr,
}

impl Drop for AddrSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// The client a peer address counts as: an IPv4 address as it is (an IPv4-mapped IPv6 one
/// as the IPv4 address it maps to), an IPv6 address as its /64, the block a single host or
/// LAN is given and can pick any address from.
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        v4 @ IpAddr::V4(_) => v4,
        v6 @ IpAddr::V6(_) => cidr::mask(v6, 64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_slash_64s() {
        assert_eq!(client_key(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(client_key(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(client_key(ip("2001:db8:1:2::1")), ip("2001:db8:1:2::"));
        assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
        // IPv4-compatible (deprecated) and NAT64 addresses are IPv6 clients.
        assert_eq!(client_key(ip("::10.1.2.3")), ip("::"));
        assert_eq!(client_key(ip("64:ff9b::10.1.2.3")), ip("64:ff9b::"));
    }

    #[test]
    fn the_cap_counts_per_client_and_slots_come_back_on_drop() {
        let t = PerAddr::new(2, vec!["10.9.0.0/16".parse().unwrap()]).unwrap();
        let a1 = t.admit(ip("10.0.0.1"));
        let a2 = t.admit(ip("::ffff:10.0.0.1"));
        assert!(matches!(a1, Admit::Counted(_)));
        assert!(matches!(a2, Admit::Counted(_)));
        assert!(matches!(t.admit(ip("10.0.0.1")), Admit::Refused));
        // Another client, and the same /64 under two addresses.
        assert!(matches!(t.admit(ip("10.0.0.2")), Admit::Counted(_)));
        let b1 = t.admit(ip("2001:db8::1"));
        let b2 = t.admit(ip("2001:db8::ffff:2"));
        assert!(matches!(t.admit(ip("2001:db8::3")), Admit::Refused));
        assert!(matches!(t.admit(ip("2001:db8:0:1::3")), Admit::Counted(_)));
        // Exempt: never counted.
        let exempt: Vec<_> = (0..5).map(|_| t.admit(ip("10.9.8.7"))).collect();
        assert!(exempt.iter().all(|a| matches!(a, Admit::Uncounted)));
        assert_eq!(t.held(ip("10.9.8.7")), 0);
        assert_eq!((t.held(ip("10.0.0.1")), t.held(ip("2001:db8::9"))), (2, 2));
        drop(a1);
        assert_eq!(t.held(ip("10.0.0.1")), 1);
        assert!(matches!(t.admit(ip("10.0.0.1")), Admit::Counted(_)));
        drop((a2, b1, b2));
        // Every slot back (the `Counted`s not bound above were dropped at once): no entry left.
        assert_eq!(t.clients(), 0);
        assert!(PerAddr::new(0, Vec::new()).is_none());
    }

    /// Threads taking and giving back slots for a few clients at once: nobody ever holds more
    /// than the cap, and when all is given back the table is empty.
    #[test]
    fn the_count_is_exact_under_concurrency() {
        let cap = 3;
        let t = PerAddr::new(cap, Vec::new()).unwrap();
        let clients = ["10.0.0.1", "10.0.0.2", "2001:db8::1", "::ffff:10.0.0.1"];
        let holding: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
        let refused = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for thread in 0..8 {
                let (t, holding, refused) = (&t, &holding, &refused);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    for i in 0..20_000usize {
                        let which = (i * 7 + thread) % clients.len();
                        // 10.0.0.1 and ::ffff:10.0.0.1 are one client.
                        let slot = which % 3;
                        match t.admit(ip(clients[which])) {
                            Admit::Counted(g) => {
                                let now = holding[slot].fetch_add(1, Ordering::SeqCst) + 1;
                                assert!(now <= cap, "{now} held by {}", clients[which]);
                                mine.push((slot, g));
                            }
                            Admit::Refused => {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                            Admit::Uncounted => unreachable!(),
                        }
                        if i % 2 == 1 || mine.len() > 4 {
                            if let Some((slot, g)) = mine.pop() {
                                holding[slot].fetch_sub(1, Ordering::SeqCst);
                                drop(g);
                            }
                        }
                    }
                    for (slot, g) in mine {
                        holding[slot].fetch_sub(1, Ordering::SeqCst);
                        drop(g);
                    }
                });
            }
        });
        assert!(refused.load(Ordering::Relaxed) > 0, "the cap never bit");
        assert_eq!(t.clients(), 0);
    }
}
