//! The listener's table of running transfers: by client port (a new request from the port
//! replaces them), by client address (the per-client cap), and in the order they started (the
//! oldest unconfirmed one makes room when the table is full).
//!
//! Admission works like a SYN cache. A request's source may be spoofed, and a spoofed source
//! never acknowledges the first packet; a transfer that has not been acknowledged yet
//! ("unconfirmed") has shown nothing, and when the table (or one address's share of it) is
//! full, the oldest such transfer is evicted for the new request. A flood of forged requests
//! then only churns through unconfirmed slots, while every transfer a real client has
//! acknowledged keeps its slot; "busy" is answered only when every slot is confirmed.
//! Pure bookkeeping: no sockets, no clock; the handles are only told to abort.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::session::TransferState;

/// Ends a transfer's task.
pub(crate) trait Abort {
    fn abort(&self);
}

impl Abort for tokio::task::AbortHandle {
    fn abort(&self) {
        tokio::task::AbortHandle::abort(self);
    }
}

struct Entry<H> {
    peer: SocketAddr,
    handle: H,
    state: Arc<TransferState>,
    /// The client address it counts against (None: exempt, or no per-client cap).
    client: Option<IpAddr>,
}

/// What to do with a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Start it; `evicted` is the client of the unconfirmed transfer that made room, if any.
    Admit { evicted: Option<SocketAddr> },
    /// The client's address holds `per_client` transfers, all confirmed.
    ClientBusy,
    /// The table holds `max` transfers, all confirmed.
    Busy,
}

/// Running transfers, keyed by task id `K`.
pub(crate) struct Clients<K, H> {
    entries: HashMap<K, Entry<H>>,
    by_peer: HashMap<SocketAddr, Vec<K>>,
    /// Transfers of each capped client address, oldest first (at most the cap each).
    by_client: HashMap<IpAddr, Vec<K>>,
    /// Eviction candidates, oldest first. Ended, evicted and confirmed transfers are skipped
    /// (and dropped) when met, and pruned once they outnumber the live entries, so this stays
    /// within about twice the table.
    order: VecDeque<K>,
}

impl<K, H> Default for Clients<K, H> {
    fn default() -> Self {
        Clients {
            entries: HashMap::new(),
            by_peer: HashMap::new(),
            by_client: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, H: Abort + Clone> Clients<K, H> {
    /// Handles of the transfers running for `peer`.
    pub fn running(&self, peer: SocketAddr) -> Vec<H> {
        self.by_peer
            .get(&peer)
            .into_iter()
            .flatten()
            .filter_map(|id| self.entries.get(id).map(|e| e.handle.clone()))
            .collect()
    }

    /// Transfers counted against `client`.
    pub fn of_client(&self, client: IpAddr) -> usize {
        self.by_client.get(&client).map_or(0, Vec::len)
    }

    /// Decides on a new request counted against `client` (None: not capped), with at most
    /// `per_client` transfers per client and `max` in all; evicts (aborts) the oldest
    /// unconfirmed transfer of the client, or of the table, if that makes room.
    pub fn admit(&mut self, client: Option<IpAddr>, per_client: usize, max: usize) -> Admission {
        let mut evicted = None;
        if let Some(client) = client {
            if self.of_client(client) >= per_client {
                let oldest = self.by_client.get(&client).and_then(|ids| {
                    ids.iter()
                        .copied()
                        .find(|id| self.entries.get(id).is_some_and(|e| e.state.evict()))
                });
                match oldest {
                    Some(id) => evicted = self.evict(id),
                    None => return Admission::ClientBusy,
                }
            }
        }
        if self.entries.len() >= max {
            match self.evict_oldest() {
                Some(peer) => evicted = Some(peer),
                None => return Admission::Busy,
            }
        }
        Admission::Admit { evicted }
    }

    /// Records a started transfer.
    pub fn insert(
        &mut self,
        id: K,
        peer: SocketAddr,
        handle: H,
        state: Arc<TransferState>,
        client: Option<IpAddr>,
    ) {
        self.by_peer.entry(peer).or_default().push(id);
        if let Some(client) = client {
            self.by_client.entry(client).or_default().push(id);
        }
        self.entries.insert(
            id,
            Entry {
                peer,
                handle,
                state,
                client,
            },
        );
        self.order.push_back(id);
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|id| entries.get(id).is_some_and(|e| !e.state.confirmed()));
        }
    }

    /// Forgets a transfer whose task has ended (nothing if it was evicted before).
    pub fn ended(&mut self, id: K) {
        self.remove(id);
    }

    fn evict_oldest(&mut self) -> Option<SocketAddr> {
        while let Some(id) = self.order.pop_front() {
            // A confirmed transfer never becomes unconfirmed again: it leaves the queue.
            if self.entries.get(&id).is_some_and(|e| e.state.evict()) {
                return self.evict(id);
            }
        }
        None
    }

    /// Aborts a transfer already marked evicted and forgets it at once: its slot is free now,
    /// though its task may take a moment to end.
    fn evict(&mut self, id: K) -> Option<SocketAddr> {
        let entry = self.remove(id)?;
        entry.handle.abort();
        Some(entry.peer)
    }

    fn remove(&mut self, id: K) -> Option<Entry<H>> {
        let entry = self.entries.remove(&id)?;
        forget(&mut self.by_peer, entry.peer, id);
        if let Some(client) = entry.client {
            forget(&mut self.by_client, client, id);
        }
        Some(entry)
    }
}

/// Takes `id` off `key`'s list, and the list out of `map` once empty.
fn forget<Q: Eq + Hash, K: Eq>(map: &mut HashMap<Q, Vec<K>>, key: Q, id: K) {
    if let Some(list) = map.get_mut(&key) {
        list.retain(|k| *k != id);
        if list.is_empty() {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone, Default)]
    struct Handle(Rc<Cell<bool>>);

    impl Abort for Handle {
        fn abort(&self) {
            self.0.set(true);
        }
    }

    fn peer(ip: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, ip], port))
    }

    struct Started {
        handle: Handle,
        state: Arc<TransferState>,
    }

    fn start(
        c: &mut Clients<u32, Handle>,
        id: u32,
        p: SocketAddr,
        capped: bool,
        per: usize,
        max: usize,
    ) -> (Admission, Option<Started>) {
        let client = capped.then_some(p.ip());
        let admission = c.admit(client, per, max);
        if !matches!(admission, Admission::Admit { .. }) {
            return (admission, None);
        }
        let started = Started {
            handle: Handle::default(),
            state: Arc::new(TransferState::default()),
        };
        c.insert(id, p, started.handle.clone(), started.state.clone(), client);
        (admission, Some(started))
    }

    #[test]
    fn full_table_evicts_the_oldest_unconfirmed() {
        let mut c = Clients::default();
        let mut t = Vec::new();
        for id in 0..4 {
            let (a, s) = start(&mut c, id, peer(1, id as u16), false, 0, 4);
            assert_eq!(a, Admission::Admit { evicted: None });
            t.push(s.unwrap());
        }
        // 0 and 2 confirmed: the next request evicts 1, then 3, then the newest unconfirmed.
        t[0].state.confirm();
        t[2].state.confirm();
        let (a, _) = start(&mut c, 10, peer(2, 1), false, 0, 4);
        assert_eq!(
            a,
            Admission::Admit {
                evicted: Some(peer(1, 1))
            }
        );
        assert!(t[1].handle.0.get() && !t[0].handle.0.get());
        let (a, s) = start(&mut c, 11, peer(2, 2), false, 0, 4);
        assert_eq!(
            a,
            Admission::Admit {
                evicted: Some(peer(1, 3))
            }
        );
        s.unwrap().state.confirm();
        let (a, _) = start(&mut c, 12, peer(2, 3), false, 0, 4);
        assert_eq!(
            a,
            Admission::Admit {
                evicted: Some(peer(2, 1))
            }
        );
        assert_eq!(c.entries.len(), 4);
        // An evicted transfer cannot be confirmed any more, nor evicted twice.
        assert!(!t[1].state.evict());
        t[1].state.confirm();
        assert!(!t[1].state.confirmed());
        // All confirmed: busy, nothing aborted.
        let ids: Vec<u32> = c.entries.keys().copied().collect();
        for id in ids {
            c.entries[&id].state.confirm();
        }
        assert_eq!(
            start(&mut c, 13, peer(3, 1), false, 0, 4).0,
            Admission::Busy
        );
        assert_eq!(c.entries.len(), 4);
        // A transfer that ends frees its slot.
        c.ended(0);
        assert_eq!(
            start(&mut c, 14, peer(3, 1), false, 0, 4).0,
            Admission::Admit { evicted: None }
        );
    }

    #[test]
    fn per_client_share() {
        let mut c = Clients::default();
        let a = peer(1, 0).ip();
        let mut t = Vec::new();
        for id in 0..3 {
            let (adm, s) = start(&mut c, id, peer(1, id as u16), true, 3, 100);
            assert_eq!(adm, Admission::Admit { evicted: None });
            t.push(s.unwrap());
        }
        assert_eq!(c.of_client(a), 3);
        t[0].state.confirm();
        // At the cap: the client's own oldest unconfirmed goes, not anyone else's.
        let (_, other) = start(&mut c, 50, peer(2, 9), true, 3, 100);
        let (adm, _) = start(&mut c, 3, peer(1, 3), true, 3, 100);
        assert_eq!(
            adm,
            Admission::Admit {
                evicted: Some(peer(1, 1))
            }
        );
        assert!(!other.unwrap().handle.0.get());
        assert_eq!(c.of_client(a), 3);
        for id in [2, 3] {
            c.entries[&id].state.confirm();
        }
        assert_eq!(
            start(&mut c, 4, peer(1, 4), true, 3, 100).0,
            Admission::ClientBusy
        );
        // Not capped (exempt): no share at all.
        for id in 100..110 {
            assert!(start(&mut c, id, peer(1, id as u16), false, 3, 100)
                .1
                .is_some());
        }
        assert_eq!(c.of_client(a), 3);
        c.ended(2);
        assert_eq!(c.of_client(a), 2);
        assert!(start(&mut c, 5, peer(1, 5), true, 3, 100).1.is_some());
    }

    #[test]
    fn running_by_port() {
        let mut c = Clients::default();
        start(&mut c, 1, peer(1, 7), false, 0, 10);
        start(&mut c, 2, peer(1, 7), false, 0, 10);
        start(&mut c, 3, peer(1, 8), false, 0, 10);
        assert_eq!(c.running(peer(1, 7)).len(), 2);
        c.ended(1);
        assert_eq!(c.running(peer(1, 7)).len(), 1);
        c.ended(2);
        assert!(c.running(peer(1, 7)).is_empty());
        assert!(c.by_peer.len() == 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any sequence of requests, confirmations and ends: the table and each client's
            /// share stay within their caps, a confirmed transfer is never evicted, "busy" only
            /// when everything in the way is confirmed, and the queue stays bounded.
            #[test]
            fn caps_hold_and_confirmed_transfers_stay(
                max in 1usize..12,
                per in 0usize..5,
                ops in proptest::collection::vec((0u8..3, 0u8..4, any::<bool>()), 1..300),
            ) {
                let mut c = Clients::default();
                let mut live: Vec<(u32, Started)> = Vec::new();
                for (i, (op, ip, capped)) in ops.into_iter().enumerate() {
                    let id = i as u32;
                    match op {
                        0 => {
                            let capped = capped && per > 0;
                            let (adm, s) = start(&mut c, id, peer(ip, id as u16), capped, per, max);
                            match adm {
                                Admission::Admit { .. } => live.push((id, s.unwrap())),
                                Admission::Busy => prop_assert!(
                                    live.iter().filter(|(_, s)| !s.handle.0.get())
                                        .all(|(_, s)| s.state.confirmed())
                                ),
                                Admission::ClientBusy => prop_assert!(capped),
                            }
                        }
                        1 => {
                            if let Some((_, s)) = live.get(usize::from(ip) % live.len().max(1)) {
                                s.state.confirm();
                            }
                        }
                        _ => {
                            if !live.is_empty() {
                                let (id, _) = live.remove(usize::from(ip) % live.len());
                                c.ended(id);
                            }
                        }
                    }
                    live.retain(|(id, s)| {
                        if s.handle.0.get() {
                            // Evicted: never a confirmed one, and already out of the table.
                            assert!(!s.state.confirmed());
                            assert!(!c.entries.contains_key(id));
                            false
                        } else {
                            true
                        }
                    });
                    prop_assert!(c.entries.len() <= max);
                    prop_assert_eq!(c.entries.len(), live.len());
                    if per > 0 {
                        for ip in 0..4u8 {
                            prop_assert!(c.of_client(peer(ip, 0).ip()) <= per);
                        }
                    }
                    prop_assert!(c.order.len() <= 2 * max + 64);
                }
            }
        }
    }
}
