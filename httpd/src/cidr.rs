//! `Cidr`: an IP network written `address/prefix` (or a bare address), for the addresses the
//! per-client connection cap leaves alone ([`crate::conn::Limits::exempt`]).
//!
//! A dozen lines of parsing rather than a dependency: the transport only needs "is this peer
//! inside one of these networks", and the type is simple enough to test on its own here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IPv4 or IPv6 network: an address with its host bits cleared, and a prefix length.
///
/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is IPv4 here, as in [`crate::conn`]: a network written
/// `::ffff:10.0.0.0/104` is `10.0.0.0/8`, and [`Cidr::contains`] finds a mapped peer in the
/// IPv4 network it maps to. Host bits in what is parsed are cleared, not refused:
/// `192.168.1.7/24` is `192.168.1.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a string is not a [`Cidr`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0:?} is not an IP address or network (want a.b.c.d, a.b.c.d/n, x:y::z or x:y::z/n)")]
    Syntax(String),
    #[error("prefix length {prefix} is over {max} for {addr}")]
    Prefix { addr: IpAddr, prefix: u8, max: u8 },
}

impl Cidr {
    /// The network of `addr` with `prefix` leading bits (host bits cleared); `prefix` may be
    /// at most 32 for IPv4 and 128 for IPv6.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::Prefix { addr, prefix, max });
        }
        // `::ffff:a.b.c.d/n` with n ≥ 96 is the IPv4 network a.b.c.d/(n-96). A shorter prefix
        // is an IPv6 network that takes in more than the mapped range, and stays IPv6.
        let (addr, prefix) = match addr {
            IpAddr::V6(v6) if prefix >= 96 => match v6.to_ipv4_mapped() {
                Some(v4) => (IpAddr::V4(v4), prefix - 96),
                None => (addr, prefix),
            },
            _ => (addr, prefix),
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` is inside the network. An IPv4-mapped IPv6 address is looked for as the
    /// IPv4 address it maps to, so no IPv6 network contains it (not even `::/0`).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.addr, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                mask(ip, self.prefix) == self.addr
            }
            _ => false,
        }
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `addr` with all but its first `prefix` bits cleared (`prefix` is at most the family's
/// length; callers check).
pub(crate) fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            // A shift by 32 overflows a u32: `checked_shl` turns /0 into an all-zero mask.
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `a.b.c.d/n`, `x:y::z/n`, or a bare address (a network of one: /32 or /128). No
    /// surrounding space, no brackets, no zone (`%eth0`), and the prefix is decimal digits only.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let syntax = || CidrError::Syntax(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| syntax())?;
        let prefix = match prefix {
            None => max_prefix(addr),
            // `u8::from_str` alone would take "+8"; a prefix is digits and nothing else.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| syntax())?
            }
            Some(_) => return Err(syntax()),
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cidr(s: &str) -> Cidr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_networks_and_bare_addresses() {
        for (input, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("192.168.1.7/24", "192.168.1.0/24"),
            ("192.168.1.7", "192.168.1.7/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("255.255.255.255/0", "0.0.0.0/0"),
            ("fd00::/8", "fd00::/8"),
            ("2001:db8:1:2:3:4:5:6/64", "2001:db8:1:2::/64"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.1.2.3/104", "10.0.0.0/8"),
            ("::ffff:10.1.2.3", "10.1.2.3/32"),
            // Shorter than the mapped range: an IPv6 network.
            ("::ffff:10.1.2.3/80", "::/80"),
            ("10.0.0.0/010", "10.0.0.0/10"),
        ] {
            assert_eq!(cidr(input).to_string(), shown, "{input}");
        }
        assert_eq!(cidr("10.9.8.7/16").addr(), ip("10.9.0.0"));
        assert_eq!(cidr("10.9.8.7/16").prefix(), 16);
    }

    #[test]
    fn refuses_what_is_not_a_network() {
        for bad in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/-1",
            "10.0.0.0/8/8",
            "10.0.0.0/ 8",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "10.0.0/8",
            "10.0.0.0.0",
            "[::1]/128",
            "fe80::1%eth0/64",
            "10.0.0.0/0x8",
            "10.0.0.0/1000",
            "host.example",
        ] {
            assert!(
                matches!(bad.parse::<Cidr>(), Err(CidrError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::Prefix {
                addr: ip("10.0.0.0"),
                prefix: 33,
                max: 32
            })
        );
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::Prefix { max: 128, .. })
        ));
        assert!(Cidr::new(ip("::"), 200).is_err());
    }

    #[test]
    fn contains_by_prefix_and_family() {
        let net = cidr("10.1.0.0/16");
        assert!(net.contains(ip("10.1.0.0")));
        assert!(net.contains(ip("10.1.255.255")));
        assert!(!net.contains(ip("10.2.0.0")));
        assert!(!net.contains(ip("10.0.255.255")));
        // Mapped peers are IPv4 peers.
        assert!(net.contains(ip("::ffff:10.1.2.3")));
        assert!(!net.contains(ip("::ffff:10.2.2.3")));
        // Another family is never inside, not even the address with the same bits.
        assert!(!net.contains(ip("a01::")));
        assert!(!cidr("::/0").contains(ip("10.1.2.3")));
        assert!(!cidr("::/0").contains(ip("::ffff:10.1.2.3")));
        assert!(cidr("0.0.0.0/0").contains(ip("::ffff:1.2.3.4")));
        assert!(!cidr("0.0.0.0/0").contains(ip("::1")));
        let v6 = cidr("2001:db8:0:1::/64");
        assert!(v6.contains(ip("2001:db8:0:1:ffff:ffff:ffff:ffff")));
        assert!(!v6.contains(ip("2001:db8:0:2::")));
        assert!(cidr("::1").contains(ip("::1")));
        assert!(!cidr("::1").contains(ip("::2")));
        assert!(cidr("10.0.0.1/32").contains(ip("10.0.0.1")));
        assert!(!cidr("10.0.0.1/32").contains(ip("10.0.0.2")));
    }

    proptest! {
        /// What is shown parses back to the same network, which contains its own address
        /// and, for a prefix under the full length, the last address of its range.
        #[test]
        fn display_round_trips(bits in any::<u128>(), v4 in any::<bool>(), prefix in 0u8..=128) {
            let (addr, prefix) = if v4 {
                (IpAddr::V4(Ipv4Addr::from(bits as u32)), prefix % 33)
            } else {
                (IpAddr::V6(Ipv6Addr::from(bits)), prefix)
            };
            let net = Cidr::new(addr, prefix).unwrap();
            prop_assert_eq!(net.to_string().parse::<Cidr>(), Ok(net));
            prop_assert!(net.contains(net.addr()));
            // A mapped address under an IPv6 network shorter than /96 is an IPv4 peer, which
            // no IPv6 network contains.
            let same_family = addr.to_canonical().is_ipv4() == net.addr().is_ipv4();
            prop_assert_eq!(net.contains(addr), same_family);
        }
    }
}
