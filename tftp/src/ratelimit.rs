//! Per-source admission of new transfers, and the address networks exempt from it.
//!
//! Every answer to a request goes to the request's source address, which on a hostile segment
//! may be spoofed: the server would then send packets at a victim that asked for nothing. Each
//! source address gets a token bucket of `rate` new requests per second (a burst of as many);
//! requests beyond it get no answer at all. Pure: the caller passes the time.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// Source addresses tracked at once. An entry whose bucket has refilled is forgotten (it acts
/// as a new source), so the table only holds sources seen within about the last second; if
/// more than this many are, new sources are refused until entries refill. Each entry is about
/// 40 bytes, so the table stays under 3 MiB.
pub const MAX_SOURCES: usize = 65_536;

/// How often a full table is searched for refilled entries at most (the search is linear).
const PRUNE_INTERVAL: Duration = Duration::from_millis(100);

/// Admits new requests per source address.
#[derive(Debug)]
pub struct RateLimiter {
    /// New requests per second and source, and the burst allowed; 0 admits everything.
    rate: u32,
    exempt: Vec<IpNet>,
    buckets: HashMap<IpAddr, Bucket>,
    max_sources: usize,
    last_prune: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Requests the source may still make, as of `at`.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn tokens_at(&self, now: Instant, rate: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(rate)
    }
}

impl RateLimiter {
    pub fn new(rate: u32, exempt: Vec<IpNet>) -> RateLimiter {
        RateLimiter::with_max_sources(rate, exempt, MAX_SOURCES)
    }

    /// As [`RateLimiter::new`], tracking at most `max_sources` sources at once.
    pub fn with_max_sources(rate: u32, exempt: Vec<IpNet>, max_sources: usize) -> RateLimiter {
        RateLimiter {
            rate,
            exempt,
            buckets: HashMap::new(),
            max_sources,
            last_prune: None,
        }
    }

    /// Whether a new request from `ip` at `now` is admitted; an admitted request uses one of
    /// the source's allowance.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self.rate == 0 {
            return true;
        }
        // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d: one source either way.
        let ip = ip.to_canonical();
        if is_exempt(&self.exempt, ip) {
            return true;
        }
        let rate = f64::from(self.rate);
        if !self.buckets.contains_key(&ip) && self.buckets.len() >= self.max_sources {
            let due = self
                .last_prune
                .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_INTERVAL);
            if due {
                self.last_prune = Some(now);
                self.buckets.retain(|_, b| b.tokens_at(now, rate) < rate);
            }
            // Still full: more sources than can be told apart right now. Refusing keeps the
            // limit for the sources already tracked (admitting untracked ones would let a
            // flood of spoofed sources switch it off). A source that made one request
            // refills within 1/rate s, so a table full of fresh sources takes a flood of
            // millions a second; the transfers a slower flood starts are never acknowledged
            // and only churn through the unconfirmed slots of `max_transfers`.
            if self.buckets.len() >= self.max_sources {
                return false;
            }
        }
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let tokens = bucket.tokens_at(now, rate);
        bucket.at = now;
        if tokens >= 1.0 {
            bucket.tokens = tokens - 1.0;
            true
        } else {
            bucket.tokens = tokens;
            false
        }
    }

    /// Sources currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// Whether `ip` lies in one of the `exempt` networks, which the per-client limits (the rate of
/// new requests, the concurrent transfers of one client) do not apply to.
pub fn is_exempt(exempt: &[IpNet], ip: IpAddr) -> bool {
    exempt.iter().any(|net| net.contains(ip))
}

/// What a source address counts as for the per-client cap on concurrent transfers: the
/// address itself (an IPv4-mapped IPv6 address as its IPv4 address), and for IPv6 its /64,
/// since one host is commonly given a whole /64 and could otherwise use a fresh address for
/// every request (the same unit as the HTTP per-client cap).
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => mask(IpAddr::V6(v6), 64),
        v4 => v4,
    }
}

/// An IP network (`ADDR/PREFIX`; a bare address is the network of that one address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

/// Why a string is not an IP network.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP network (ADDR or ADDR/PREFIX): {0:?}")]
pub struct IpNetError(pub String);

impl IpNet {
    /// The network of `addr` with `prefix_len` leading bits (host bits are cleared).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpNet, IpNetError> {
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > bits {
            return Err(IpNetError(format!("{addr}/{prefix_len}")));
        }
        Ok(IpNet {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this network. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a
    /// dual-stack socket reports IPv4 clients) counts as its IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix_len) == self.addr
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<IpNet, IpNetError> {
        let bad = || IpNetError(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix_len = match prefix {
            // Plain decimal only: "+8" or " 8" are typos, not prefixes.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| bad())?
            }
            Some(_) => return Err(bad()),
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix_len).map_err(|_| bad())
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn networks_parse_and_contain() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("10.1.2.3").to_string(), "10.1.2.3/32");
        assert_eq!(net("::1").to_string(), "::1/128");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net("fe80::1/10").to_string(), "fe80::/10");
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "x/8",
            "10.0.0.0/ 8",
        ] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad:?}");
        }
        assert!(net("127.0.0.0/8").contains(ip("127.200.0.1")));
        assert!(!net("127.0.0.0/8").contains(ip("128.0.0.1")));
        assert!(net("127.0.0.0/8").contains(ip("::ffff:127.0.0.1")));
        assert!(!net("127.0.0.0/8").contains(ip("::1")));
        assert!(net("0.0.0.0/0").contains(ip("1.2.3.4")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(IpNet::new(Ipv4Addr::LOCALHOST.into(), 33).is_err());
        assert!(IpNet::new(Ipv6Addr::LOCALHOST.into(), 128).is_ok());
    }

    #[test]
    fn client_keys() {
        assert_eq!(client_key(ip("10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        assert_eq!(client_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("2001:db8:1:2::ffff")), ip("2001:db8:1:2::"));
        assert!(is_exempt(&[net("10.0.0.0/8")], ip("::ffff:10.1.1.1")));
        assert!(!is_exempt(&[], ip("127.0.0.1")));
    }

    #[test]
    fn burst_then_refill() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(3, vec![]);
        let a = ip("10.0.0.1");
        assert!((0..3).all(|_| limiter.admit(a, t0)));
        assert!(!limiter.admit(a, t0));
        assert!(!limiter.admit(a, t0 + Duration::from_millis(100)));
        // Another source has its own allowance; the same source as IPv4-mapped does not.
        assert!(limiter.admit(ip("10.0.0.2"), t0));
        assert!(!limiter.admit(ip("::ffff:10.0.0.1"), t0));
        // One token per 1/3 s.
        assert!(limiter.admit(a, t0 + Duration::from_millis(340)));
        assert!(!limiter.admit(a, t0 + Duration::from_millis(350)));
        // Never more than the burst, however long the pause.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| limiter.admit(a, later)));
        assert!(!limiter.admit(a, later));
    }

    #[test]
    fn exempt_networks_and_zero_rate() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(1, vec![net("127.0.0.0/8"), net("::1")]);
        assert!((0..1000).all(|_| limiter.admit(ip("127.0.0.1"), t0)));
        assert!((0..1000).all(|_| limiter.admit(ip("::ffff:127.0.0.5"), t0)));
        assert!((0..1000).all(|_| limiter.admit(ip("::1"), t0)));
        assert_eq!(limiter.tracked(), 0);
        assert!(limiter.admit(ip("10.0.0.1"), t0));
        assert!(!limiter.admit(ip("10.0.0.1"), t0));
        let mut off = RateLimiter::new(0, vec![]);
        assert!((0..1000).all(|_| off.admit(ip("10.0.0.1"), t0)));
    }

    #[test]
    fn table_is_bounded() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::with_max_sources(2, vec![], 4);
        let src = |i: u8| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i));
        for i in 0..4 {
            assert!(limiter.admit(src(i), t0));
        }
        // Full of sources seen just now: a fifth is refused, the tracked ones keep their limit.
        assert!(!limiter.admit(src(9), t0));
        assert!(limiter.admit(src(0), t0));
        assert!(!limiter.admit(src(0), t0));
        assert_eq!(limiter.tracked(), 4);
        // A second later every bucket has refilled: they are forgotten and room is made.
        let later = t0 + Duration::from_secs(1);
        assert!(limiter.admit(src(9), later));
        assert_eq!(limiter.tracked(), 1);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Over any window of time, a source is admitted at most burst + rate × elapsed.
            #[test]
            fn admitted_never_exceeds_the_allowance(
                rate in 1u32..50,
                steps in proptest::collection::vec((0u8..4, 0u64..200), 1..400),
            ) {
                let t0 = Instant::now();
                let mut limiter = RateLimiter::with_max_sources(rate, vec![], 3);
                let mut now = t0;
                let mut admitted = [0u64; 4];
                for (source, advance_ms) in steps {
                    now += Duration::from_millis(advance_ms);
                    if limiter.admit(IpAddr::V4(Ipv4Addr::new(10, 0, 0, source)), now) {
                        admitted[usize::from(source)] += 1;
                    }
                    prop_assert!(limiter.tracked() <= 3);
                }
                let elapsed = now.duration_since(t0).as_secs_f64();
                for n in admitted {
                    // A source forgotten after refilling restarts with a full bucket, which it
                    // had anyway: the bound holds across forgetting.
                    prop_assert!(n as f64 <= f64::from(rate) * (1.0 + elapsed) + 1e-6);
                }
            }
        }
    }
}
