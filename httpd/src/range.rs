//! `Range` and conditional-request decisions (RFC 9110), as pure functions.

/// What to send for a request on a representation of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// 200, the whole file.
    Full,
    /// 206, bytes `start..=end`.
    Partial { start: u64, end: u64 },
    /// 416.
    Unsatisfiable,
}

/// Only single ranges are honoured; a multi-range request gets the whole file (allowed by
/// RFC 9110 §14.2, and no boot client asks for several ranges).
pub fn decide_range(header: Option<&str>, len: u64) -> RangeDecision {
    let Some(h) = header else {
        return RangeDecision::Full;
    };
    // RFC 9110 §14.1: range units are case-insensitive. `get` rather than slicing: the
    // header is the client's and may have a multi-byte character where the unit should end.
    let h = h.trim();
    let Some(spec) = h
        .get(..6)
        .filter(|unit| unit.eq_ignore_ascii_case("bytes="))
        .and_then(|_| h.get(6..))
    else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        return RangeDecision::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => match parse(b) {
            Some(0) => RangeDecision::Unsatisfiable,
            Some(n) if len == 0 => {
                let _ = n;
                RangeDecision::Unsatisfiable
            }
            Some(n) => RangeDecision::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeDecision::Full,
        },
        (false, _) => {
            let Some(start) = parse(a) else {
                return RangeDecision::Full;
            };
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                match parse(b) {
                    Some(e) => Some(e),
                    None => return RangeDecision::Full,
                }
            };
            let end = end.unwrap_or(u64::MAX);
            if end < start {
                return RangeDecision::Full;
            }
            if start >= len {
                return RangeDecision::Unsatisfiable;
            }
            RangeDecision::Partial {
                start,
                end: end.min(len - 1),
            }
        }
        (true, true) => RangeDecision::Full,
    }
}

/// Strong validator from the file's identity: changes whenever the file is replaced or edited.
pub fn etag(len: u64, mtime_ns: u128, ino: u64) -> String {
    format!("\"{len:x}-{mtime_ns:x}-{ino:x}\"")
}

/// `If-None-Match`: `*` or a list of tags; weak comparison as RFC 9110 requires for it.
pub fn none_match(header: Option<&str>, tag: &str) -> bool {
    let Some(h) = header else { return false };
    let bare = tag.trim_start_matches("W/");
    h.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t.trim_start_matches("W/") == bare)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use RangeDecision::*;

    #[test]
    fn ranges() {
        assert_eq!(decide_range(None, 10), Full);
        assert_eq!(
            decide_range(Some("bytes=0-3"), 10),
            Partial { start: 0, end: 3 }
        );
        assert_eq!(
            decide_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            decide_range(Some("bytes=-4"), 10),
            Partial { start: 6, end: 9 }
        );
        assert_eq!(
            decide_range(Some("bytes=-40"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            decide_range(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(decide_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(decide_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(decide_range(Some("bytes=0-1,4-5"), 10), Full);
        assert_eq!(decide_range(Some("items=0-1"), 10), Full);
        assert_eq!(decide_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(decide_range(Some("bytes=0-"), 0), Unsatisfiable);
    }

    #[test]
    fn range_unit_is_case_insensitive() {
        // RFC 9110 §14.1: range units are compared case-insensitively.
        for h in [
            "bytes=0-9",
            "Bytes=0-9",
            "BYTES=0-9",
            "bYtEs=0-9",
            " BYTES=0-9 ",
        ] {
            assert_eq!(
                decide_range(Some(h), 100),
                Partial { start: 0, end: 9 },
                "{h}"
            );
        }
        assert_eq!(
            decide_range(Some("BYTES=-4"), 10),
            Partial { start: 6, end: 9 }
        );
        assert_eq!(decide_range(Some("Bytes=10-"), 10), Unsatisfiable);
        for h in [
            "bytesx=0-9",
            "byte=0-9",
            "bytes =0-9",
            "bytés=0-9",
            "BYTES",
            "",
        ] {
            assert_eq!(decide_range(Some(h), 100), Full, "{h}");
        }
    }

    #[test]
    fn conditional() {
        let t = etag(10, 5, 7);
        assert!(none_match(Some(&t), &t));
        assert!(none_match(Some(&format!("\"x\", W/{t}")), &t));
        assert!(none_match(Some("*"), &t));
        assert!(!none_match(Some("\"other\""), &t));
        assert!(!none_match(None, &t));
    }

    proptest! {
        #[test]
        fn partial_is_always_inside_the_file(h in ".{0,40}", len in 0u64..1_000_000) {
            if let Partial { start, end } = decide_range(Some(&h), len) {
                prop_assert!(start <= end && end < len);
            }
        }

        #[test]
        fn the_unit_in_any_case_decides_as_lowercase(
            upper in proptest::collection::vec(any::<bool>(), 5),
            spec in "[0-9]{0,4}-[0-9]{0,4}",
            len in 0u64..10_000,
        ) {
            let unit: String = "bytes"
                .chars()
                .zip(&upper)
                .map(|(c, &u)| if u { c.to_ascii_uppercase() } else { c })
                .collect();
            prop_assert_eq!(
                decide_range(Some(&format!("{unit}={spec}")), len),
                decide_range(Some(&format!("bytes={spec}")), len)
            );
        }

        #[test]
        fn numeric_ranges_inside(a in 0u64..2000, b in 0u64..2000, len in 1u64..1500) {
            let d = decide_range(Some(&format!("bytes={a}-{b}")), len);
            if let Partial { start, end } = d {
                prop_assert!(start == a && end <= b && end < len);
            }
        }
    }
}
