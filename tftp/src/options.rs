//! Option negotiation (RFC 2347 blksize/tsize/timeout per RFC 2348, 2349, windowsize per RFC 7440).
//!
//! The server acknowledges only options the client sent, clamps values the RFCs allow it to
//! lower (and `timeout`, which the RFC does not: see [`negotiate`]), ignores options it does
//! not know or whose values are invalid, and never acknowledges an option twice.

use std::time::Duration;

use crate::packet::{RawOption, DEFAULT_BLKSIZE, MAX_BLKSIZE};

/// What the server is willing to agree to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest block size the server agrees to (a client asking more gets this value).
    pub max_blksize: u16,
    /// Largest window the server agrees to (a client asking more gets this value).
    pub max_windowsize: u16,
    /// Largest retransmission timeout the server agrees to.
    pub max_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_blksize: MAX_BLKSIZE,
            max_windowsize: 64,
            max_timeout: Duration::from_secs(10),
        }
    }
}

/// Transfer parameters after negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// Retransmission timeout the client asked for, if it asked for a valid one.
    pub timeout: Option<Duration>,
    /// Accepted options in the order the client sent them; empty means no OACK is sent.
    pub oack: Vec<(&'static str, String)>,
}

/// Negotiates the client's options. `size` is the transfer size in bytes if known (an unknown
/// size simply leaves `tsize` unacknowledged).
pub fn negotiate(options: &[RawOption<'_>], size: Option<u64>, limits: Limits) -> Negotiated {
    let mut out = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        oack: Vec::new(),
    };
    let max_blksize = limits.max_blksize.clamp(8, MAX_BLKSIZE);
    let max_windowsize = limits.max_windowsize.max(1);
    // Whole seconds, as the option counts; never below the option's smallest valid value.
    let max_timeout = limits.max_timeout.as_secs().max(1);
    for opt in options {
        let Some(name) = known_name(opt.name) else {
            continue;
        };
        if out.oack.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let Some(value) = parse_decimal(opt.value) else {
            continue;
        };
        let accepted = match name {
            // RFC 2348: valid range 8..=65464; the server may answer with a smaller value.
            "blksize" if value >= 8 => {
                out.blksize = value.min(u64::from(max_blksize)) as u16;
                out.blksize.to_string()
            }
            // RFC 7440: valid range 1..=65535; the server may answer with a smaller value.
            "windowsize" if (1..=65535).contains(&value) => {
                out.windowsize = value.min(u64::from(max_windowsize)) as u16;
                out.windowsize.to_string()
            }
            // RFC 2349: 1..=255 seconds, and the server takes the value as is or leaves it
            // unacknowledged (an OACK with another value is not allowed). A single, possibly
            // spoofed, request asking 255 s would hold a transfer for retries × 255 s, so a
            // value above the server's maximum is left unacknowledged: both sides then use
            // their default timeout, and the server's never exceeds the maximum.
            "timeout" if (1..=max_timeout).contains(&value) => {
                out.timeout = Some(Duration::from_secs(value));
                value.to_string()
            }
            // RFC 2349: a read request carries 0; the server answers with the size.
            "tsize" if value == 0 => match size {
                Some(size) => size.to_string(),
                None => continue,
            },
            _ => continue,
        };
        out.oack.push((name, accepted));
    }
    out
}

/// Largest block size whose DATA packet fits one datagram on a path of `mtu` bytes, so that no
/// block depends on IP fragmentation (some NICs' PXE stacks drop fragments).
pub fn blksize_for_mtu(mtu: u32, ipv6: bool) -> u16 {
    let ip_header = if ipv6 { 40 } else { 20 };
    let udp_and_tftp = 8 + 4;
    let fits = mtu.saturating_sub(ip_header + udp_and_tftp);
    fits.clamp(8, u32::from(MAX_BLKSIZE)) as u16
}

fn known_name(raw: &[u8]) -> Option<&'static str> {
    ["blksize", "windowsize", "timeout", "tsize"]
        .into_iter()
        .find(|known| raw.eq_ignore_ascii_case(known.as_bytes()))
}

/// Parses a plain decimal number; anything else (signs, spaces, overflow) is invalid.
fn parse_decimal(raw: &[u8]) -> Option<u64> {
    if raw.is_empty() || raw.len() > 19 || !raw.iter().all(u8::is_ascii_digit) {
        return None;
    }
    raw.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts<'a>(pairs: &'a [(&'a str, &'a str)]) -> Vec<RawOption<'a>> {
        pairs
            .iter()
            .map(|(n, v)| RawOption {
                name: n.as_bytes(),
                value: v.as_bytes(),
            })
            .collect()
    }

    #[test]
    fn no_options_no_oack() {
        let n = negotiate(&[], Some(10), Limits::default());
        assert!(n.oack.is_empty());
        assert_eq!((n.blksize, n.windowsize), (512, 1));
    }

    #[test]
    fn ovmf_probe_is_answered_in_client_order() {
        let n = negotiate(
            &opts(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
            Some(173792),
            Limits::default(),
        );
        assert_eq!(
            n.oack,
            vec![
                ("tsize", "173792".to_string()),
                ("blksize", "1468".to_string()),
                ("windowsize", "4".to_string())
            ]
        );
    }

    #[test]
    fn values_are_clamped_and_invalid_ones_ignored() {
        let limits = Limits {
            max_blksize: 1468,
            max_windowsize: 16,
            ..Limits::default()
        };
        let n = negotiate(
            &opts(&[
                ("BLKSIZE", "65464"),
                ("windowsize", "500"),
                ("timeout", "0"),
                ("tsize", "12"),
                ("unknown", "1"),
            ]),
            Some(5),
            limits,
        );
        assert_eq!(
            n.oack,
            vec![("blksize", "1468".into()), ("windowsize", "16".into())]
        );
        assert_eq!(n.timeout, None);
        let n = negotiate(
            &opts(&[("blksize", "7"), ("windowsize", "0")]),
            None,
            limits,
        );
        assert!(n.oack.is_empty());
        assert_eq!(n.blksize, 512);
    }

    #[test]
    fn timeout_is_clamped_to_the_server_maximum() {
        // One spoofed RRQ asking 255 s with 5 retries would hold a transfer for 25 minutes.
        let limits = Limits {
            max_timeout: Duration::from_secs(10),
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("timeout", "255")]), None, limits);
        assert_eq!(n.timeout, None, "above the maximum: not acknowledged");
        assert!(n.oack.is_empty());
        // Within the limit the client's value stands.
        let n = negotiate(&opts(&[("timeout", "3")]), None, limits);
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(n.oack, vec![("timeout", "3".to_string())]);
        // A maximum below one second still allows the option's smallest value, 1.
        let limits = Limits {
            max_timeout: Duration::from_millis(100),
            ..Limits::default()
        };
        let n = negotiate(&opts(&[("timeout", "5")]), None, limits);
        assert!(n.oack.is_empty());
        let n = negotiate(&opts(&[("timeout", "1")]), None, limits);
        assert_eq!(n.oack, vec![("timeout", "1".to_string())]);
    }

    #[test]
    fn duplicate_option_uses_the_first() {
        let n = negotiate(
            &opts(&[("blksize", "1024"), ("blksize", "2048"), ("timeout", "3")]),
            None,
            Limits::default(),
        );
        assert_eq!(n.blksize, 1024);
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(n.oack.len(), 2);
    }

    #[test]
    fn blksize_fits_the_path() {
        assert_eq!(blksize_for_mtu(1500, false), 1468);
        assert_eq!(blksize_for_mtu(1500, true), 1448);
        assert_eq!(blksize_for_mtu(9000, false), 8968);
        assert_eq!(blksize_for_mtu(65536, false), MAX_BLKSIZE);
        assert_eq!(blksize_for_mtu(0, false), 8);
    }

    #[test]
    fn numbers_are_strict() {
        assert_eq!(parse_decimal(b"1468"), Some(1468));
        assert_eq!(parse_decimal(b"+1"), None);
        assert_eq!(parse_decimal(b" 1"), None);
        assert_eq!(parse_decimal(b"99999999999999999999"), None);
        assert_eq!(parse_decimal(b""), None);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn negotiated_values_stay_in_range(
                pairs in proptest::collection::vec(
                    (prop_oneof![Just("blksize".to_string()), Just("windowsize".to_string()),
                                 Just("timeout".to_string()), Just("tsize".to_string()), ".{0,8}"],
                     "[0-9]{0,22}"),
                    0..20),
                max_blksize in any::<u16>(),
                max_windowsize in any::<u16>(),
                size in proptest::option::of(any::<u64>()),
            ) {
                let raw: Vec<RawOption<'_>> = pairs.iter()
                    .map(|(n, v)| RawOption { name: n.as_bytes(), value: v.as_bytes() })
                    .collect();
                let limits = Limits { max_blksize, max_windowsize, ..Limits::default() };
                let n = negotiate(&raw, size, limits);
                if let Some(timeout) = n.timeout {
                    prop_assert!(timeout >= Duration::from_secs(1) && timeout <= limits.max_timeout);
                }
                prop_assert!((8..=MAX_BLKSIZE).contains(&n.blksize));
                prop_assert!(n.windowsize >= 1 && n.windowsize <= max_windowsize.max(1));
                prop_assert!(n.oack.len() <= 4);
                for (name, _) in &n.oack {
                    prop_assert!(pairs.iter().any(|(p, _)| p.eq_ignore_ascii_case(name)));
                }
            }
        }
    }
}
