//! A per-source rate limit (token bucket) for endpoints any client can write to
//! (`POST /events`).
//!
//! Each source may send `per_minute` requests in a burst and then `per_minute / 60` a second.
//! A source is an IPv4 address, or an IPv6 /64 (one host usually owns a whole /64, so counting
//! single IPv6 addresses would let it take a fresh one for every request). The map of sources
//! is bounded: when it is full, the sources idle long enough to have a full bucket again are
//! dropped (which changes nothing for them), then if need be the least recently seen eighth.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources remembered at most.
pub const MAX_SOURCES: usize = 65_536;

/// A refill of an empty bucket takes a minute whatever the rate.
const REFILL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    buckets: Mutex<HashMap<u128, Bucket>>,
    max_sources: usize,
}

impl Default for RateLimiter {
    fn default() -> Self {
        RateLimiter::new(MAX_SOURCES)
    }
}

/// The key of a source: an IPv4 address (also when IPv4-mapped), or an IPv6 /64.
fn source_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u128::from(u32::from(v4)),
            // Tagged in the low bits, which a /64 leaves free, so no IPv4 key can equal it.
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

impl RateLimiter {
    pub fn new(max_sources: usize) -> RateLimiter {
        RateLimiter {
            buckets: Mutex::new(HashMap::new()),
            max_sources: max_sources.max(1),
        }
    }

    /// Takes one request from `ip`'s bucket at `now`: `Ok` if it may go on, or `Err` with how
    /// long until it may send again (whole seconds, at least one, for `Retry-After`).
    /// `per_minute == 0` refuses everything.
    pub fn check(&self, ip: IpAddr, per_minute: u32, now: Instant) -> Result<(), Duration> {
        if per_minute == 0 {
            return Err(REFILL);
        }
        let capacity = f64::from(per_minute);
        let rate = capacity / REFILL.as_secs_f64(); // tokens per second
                                                    // A poisoned lock only means a panic elsewhere mid-update; the buckets are still
                                                    // usable numbers, and refusing every event over it would be worse.
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = source_key(ip);
        if !buckets.contains_key(&key) && buckets.len() >= self.max_sources {
            self.prune(&mut buckets, now);
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        // A lowered rate (a reload) also lowers what a bucket may hold.
        b.tokens = (b.tokens + elapsed * rate).min(capacity);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            let wait = ((1.0 - b.tokens) / rate).ceil().max(1.0);
            Err(Duration::from_secs(wait as u64))
        }
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.buckets.lock().map(|b| b.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room: first the sources whose bucket has refilled (forgetting them changes
    /// nothing), then, if that freed less than an eighth, the least recently seen eighth.
    fn prune(&self, buckets: &mut HashMap<u128, Bucket>, now: Instant) {
        buckets.retain(|_, b| now.saturating_duration_since(b.last) < REFILL);
        let room = (self.max_sources / 8).max(1);
        if buckets.len() + room <= self.max_sources {
            return;
        }
        let mut seen: Vec<Instant> = buckets.values().map(|b| b.last).collect();
        let drop = (buckets.len() + room - self.max_sources).min(seen.len());
        if drop == 0 {
            return;
        }
        let (_, cutoff, _) = seen.select_nth_unstable(drop - 1);
        let cutoff = *cutoff;
        let mut left = drop;
        // Ties at the cutoff: drop only as many as needed.
        buckets.retain(|_, b| {
            if left > 0 && b.last <= cutoff {
                left -= 1;
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn v4(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(n))
    }

    #[test]
    fn burst_then_refill() {
        let l = RateLimiter::default();
        let t0 = Instant::now();
        let a = v4(0x0a00_0001);
        for _ in 0..60 {
            assert!(l.check(a, 60, t0).is_ok());
        }
        assert_eq!(l.check(a, 60, t0), Err(Duration::from_secs(1)));
        // Another source has its own bucket.
        assert!(l.check(v4(0x0a00_0002), 60, t0).is_ok());
        // One a second at 60 a minute.
        let t1 = t0 + Duration::from_secs(1);
        assert!(l.check(a, 60, t1).is_ok());
        assert!(l.check(a, 60, t1).is_err());
        // A full minute refills the whole burst, no more.
        let t2 = t1 + Duration::from_secs(600);
        for _ in 0..60 {
            assert!(l.check(a, 60, t2).is_ok());
        }
        assert!(l.check(a, 60, t2).is_err());
    }

    #[test]
    fn retry_after_follows_the_rate() {
        let l = RateLimiter::default();
        let t = Instant::now();
        let a = v4(1);
        for _ in 0..6 {
            assert!(l.check(a, 6, t).is_ok());
        }
        // 6 a minute: one every 10 s.
        assert_eq!(l.check(a, 6, t), Err(Duration::from_secs(10)));
        assert_eq!(
            l.check(a, 6, t + Duration::from_secs(4)),
            Err(Duration::from_secs(6))
        );
        assert!(l.check(a, 6, t + Duration::from_secs(10)).is_ok());
        assert!(l.check(a, 0, t).is_err());
    }

    #[test]
    fn lowered_rate_applies_at_once() {
        let l = RateLimiter::default();
        let t = Instant::now();
        let a = v4(7);
        assert!(l.check(a, 1000, t).is_ok());
        for _ in 0..3 {
            assert!(l.check(a, 3, t).is_ok());
        }
        assert!(l.check(a, 3, t).is_err());
    }

    #[test]
    fn ipv6_counts_by_64_and_mapped_v4_as_v4() {
        let l = RateLimiter::default();
        let t = Instant::now();
        let a: Ipv6Addr = "2001:db8:1:2::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.check(IpAddr::V6(a), 2, t).is_ok());
        assert!(l.check(IpAddr::V6(b), 2, t).is_ok());
        assert!(l.check(IpAddr::V6(a), 2, t).is_err());
        assert!(l.check(IpAddr::V6(c), 2, t).is_ok());
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 5).to_ipv6_mapped());
        assert!(l.check(mapped, 1, t).is_ok());
        assert!(l
            .check(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 1, t)
            .is_err());
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn the_map_stays_bounded_and_drops_the_stalest() {
        let l = RateLimiter::new(64);
        let t = Instant::now();
        // 64 sources, one per millisecond, each spending its whole bucket (1 a minute).
        for i in 0..64u32 {
            assert!(l
                .check(v4(i), 1, t + Duration::from_millis(u64::from(i)))
                .is_ok());
        }
        assert_eq!(l.len(), 64);
        let t1 = t + Duration::from_millis(100);
        assert!(l.check(v4(1000), 1, t1).is_ok());
        assert!(l.len() <= 64);
        // The stalest eighth (sources 0..8) were forgotten: they may send again; later ones
        // are still limited.
        assert!(l.check(v4(0), 1, t1).is_ok());
        assert!(l.check(v4(63), 1, t1).is_err());
        assert!(l.check(v4(1000), 1, t1).is_err());
        // Sources idle for a minute are dropped before any other.
        let t2 = t1 + Duration::from_secs(61);
        for i in 0..200u32 {
            let _ = l.check(v4(10_000 + i), 1, t2);
            assert!(l.len() <= 64);
        }
        // A flood of new sources never grows the map.
        for i in 0..100_000u32 {
            let _ = l.check(v4(i), 600, t2 + Duration::from_micros(u64::from(i)));
        }
        assert!(l.len() <= 64);
    }
}
