//! MAC addresses as operators and firmware spell them.

use std::fmt;
use std::str::FromStr;

/// A 48-bit Ethernet address; displayed in the canonical lower-case, colon-separated form.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Mac(pub [u8; 6]);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed MAC address {0:?}: expected 12 hex digits, optionally separated by ':', '-' or '.'"
)]
pub struct MacError(pub String);

impl FromStr for Mac {
    type Err = MacError;

    /// Accepts `52:54:00:ab:cd:ef`, `52-54-00-AB-CD-EF`, `5254.00ab.cdef`, `525400abcdef`.
    /// Separators must be consistent so that a typo such as a missing digit is not silently
    /// re-grouped into a different address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacError(s.chars().take(64).collect());
        let s = s.trim();
        if s.len() > 17 {
            return Err(err());
        }
        let sep = s.chars().find(|c| matches!(c, ':' | '-' | '.'));
        let digits: String = match sep {
            None => s.to_string(),
            Some(sep) => {
                if s.chars().any(|c| matches!(c, ':' | '-' | '.') && c != sep) {
                    return Err(err());
                }
                let groups: Vec<&str> = s.split(sep).collect();
                let ok = match sep {
                    '.' => groups.len() == 3 && groups.iter().all(|g| g.len() == 4),
                    _ => groups.len() == 6 && groups.iter().all(|g| g.len() == 2),
                };
                if !ok {
                    return Err(err());
                }
                groups.concat()
            }
        };
        if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut out = [0u8; 6];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl Mac {
    /// `52-54-00-ab-cd-ef`: the spelling used in URLs (no characters that need escaping).
    pub fn hyphenated(&self) -> String {
        let m = self.0;
        format!(
            "{:02x}-{:02x}-{:02x}-{:02x}-{:02x}-{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_common_spelling_normalises() {
        for s in [
            "52:54:00:ab:cd:ef",
            "52-54-00-AB-CD-EF",
            "5254.00ab.cdef",
            "525400ABcdef",
            " 52:54:00:ab:cd:ef ",
        ] {
            assert_eq!(
                s.parse::<Mac>().unwrap().to_string(),
                "52:54:00:ab:cd:ef",
                "{s}"
            );
        }
    }

    #[test]
    fn malformed_spellings_are_refused() {
        for s in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:eg",
            "52:54-00:ab:cd:ef",
            "525:4:00:ab:cd:ef",
            "52:54:00:ab:cd:ef:01",
            "5254.00ab.cde",
            "52540zabcdef",
            "ééééééééééééé",
        ] {
            assert!(s.parse::<Mac>().is_err(), "{s:?} should be refused");
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Mac>();
        }

        #[test]
        fn display_round_trips(bytes in proptest::array::uniform6(any::<u8>())) {
            let mac = Mac(bytes);
            prop_assert_eq!(mac.to_string().parse::<Mac>().unwrap(), mac);
            prop_assert_eq!(mac.hyphenated().parse::<Mac>().unwrap(), mac);
        }
    }
}
