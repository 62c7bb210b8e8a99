//! pxeforge's HTTP/1.1 transport: framing, connection loop, sendfile, confined files, ranges,
//! limits. It drives any tower `Service` (an axum `Router` in pxeforge) and knows nothing of
//! the application: what it has to report goes through an [`Observer`] the application
//! supplies, so that this crate (and the fuzz target built on `wire`) links no templates,
//! database or metrics registry. [`log_safe`] makes client text fit for a log line.

use std::borrow::Cow;

pub mod cidr;
pub mod conn;
pub mod files;
mod peers;
pub mod range;
pub mod sendfile;
pub mod wire;

/// What the transport reports as it serves. Every method has a no-op default, so an
/// application implements only what it counts, and a new event added here breaks nobody.
///
/// Methods are called on the connection's worker thread in the middle of serving, so they
/// must be cheap and must not block (an atomic add, a short uncontended lock).
pub trait Observer: Send + Sync + 'static {
    /// `n` more bytes of a file body (a [`sendfile::SendFile`]) reached the socket. Called
    /// once per `sendfile(2)` call or fallback copy, not once per response; heads and
    /// in-memory bodies are not counted.
    fn bytes_sent(&self, n: u64) {
        let _ = n;
    }

    /// A request was refused by the transport before any handler saw it, with this status,
    /// and the connection is being closed: malformed framing, a bare LF among them (400), head
    /// over [`wire::MAX_HEAD`] bytes or [`wire::MAX_HEADERS`] lines (431), a body on a request
    /// that [`conn::Limits::bodies`] gives none, or over its cap there (413), unsupported
    /// transfer coding (501), HTTP version (505), or a request not received within
    /// [`conn::Limits::request`] (408).
    ///
    /// Not reported, as in the server before the transport had its own crate: a 400 for a
    /// target that parses as HTTP but not as a URI, and a 500 when a service's response body
    /// fails (the service already saw that request).
    fn request_refused(&self, status: http::StatusCode) {
        let _ = status;
    }

    /// A connection was answered `503 Service Unavailable` (with `Retry-After: 1` and
    /// `Connection: close`) and closed as soon as it was accepted, before a byte of it was
    /// read. `reason` says which limit: `"per-address"`, the client's address (its /64, for
    /// IPv6) already held [`conn::Limits::max_connections_per_addr`] connections.
    fn connection_refused(&self, reason: &'static str) {
        let _ = reason;
    }

    /// A worker at its share of [`conn::Limits::max_connections`] closed one of its
    /// connections to take a new one: the oldest that was not in the middle of a request.
    /// `state` is `"fresh"` (it had never sent a byte) or `"idle"` (a keep-alive connection
    /// waiting for its next request, nothing of one received). The connection is closed
    /// without an answer; the new one is served.
    fn connection_evicted(&self, state: &'static str) {
        let _ = state;
    }

    /// `accept(2)` failed. `reason`: `"EMFILE"`, `"ENFILE"`, `"ENOBUFS"` or `"ENOMEM"` (out of
    /// descriptors or kernel memory: the accepting worker waits 50 ms before it tries again,
    /// rather than spinning on a queue it cannot take from), `"connection"` (an error of one
    /// incoming connection, such as `ECONNABORTED`: the next is accepted at once) or
    /// `"other"` (unexpected; it waits 50 ms too). Called on every failure, up to 20 times a
    /// second per worker while descriptors are short.
    fn accept_failed(&self, reason: &'static str) {
        let _ = reason;
    }
}

/// An observer that reports nothing, for tests, tools and fuzzing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// `s` made safe to put in a log line: nothing a client sends can end the line, start a forged
/// one, or drive the terminal or viewer showing the log.
///
/// Escaped: `\n`, `\r`, `\t` as those two characters; every other C0 control (U+0000–U+001F),
/// DEL (U+007F) and every C1 control (U+0080–U+009F, NEL among them) as `\xNN`; the Unicode
/// line and paragraph separators (U+2028, U+2029) and the bidirectional embedding, override and
/// isolate controls (U+202A–U+202E, U+2066–U+2069, which can make a line read otherwise than it
/// is) as `\u{NNNN}`; and the backslash itself as `\\`, so that an escape in a log line always
/// stands for the character and never for text the client sent. Everything else, other
/// Unicode included, passes unchanged; a string with nothing to escape is returned as it is,
/// without a copy.
///
/// Pass the result as a string field (`path = &*log_safe(p)`, which the `fmt` layer quotes) or
/// with `%` (`path = %log_safe(p)`, shown bare).
pub fn log_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        // Writing to a String cannot fail; the results are ignored for that reason.
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `char::is_control` is exactly C0, DEL and C1 (general category Cc).
fn needs_escape(c: char) -> bool {
    c.is_control()
        || c == '\\'
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn log_safe_escapes_controls_and_backslash_only() {
        let cases = [
            ("/tftp/pxelinux.0", "/tftp/pxelinux.0"),
            ("a\nb", "a\\nb"),
            ("a\r\nINFO forged", "a\\r\\nINFO forged"),
            ("tab\there", "tab\\there"),
            ("\0\x01\x1b[31m\x7f", "\\x00\\x01\\x1b[31m\\x7f"),
            ("nel\u{85}csi\u{9b}c1\u{80}", "nel\\x85csi\\x9bc1\\x80"),
            ("back\\slash \\n", "back\\\\slash \\\\n"),
            ("ls\u{2028}ps\u{2029}", "ls\\u{2028}ps\\u{2029}"),
            ("rlo\u{202e}txt.exe\u{2066}", "rlo\\u{202e}txt.exe\\u{2066}"),
            ("héllo wörld ✓ \u{a0}", "héllo wörld ✓ \u{a0}"),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(log_safe(input), want, "{input:?}");
        }
        assert!(matches!(log_safe("plain /path?q=1"), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn log_safe_output_has_no_control_or_line_breaking_character(s in any::<String>()) {
            let safe = log_safe(&s);
            // `needs_escape` minus the backslash: what must never reach a log line.
            let unsafe_char = |c: char| c != '\\' && needs_escape(c);
            prop_assert!(!safe.chars().any(unsafe_char), "{:?} -> {:?}", s, safe);
            // Nothing to escape: unchanged.
            if !s.chars().any(needs_escape) {
                prop_assert_eq!(&*safe, s.as_str());
            }
        }

        #[test]
        fn log_safe_can_be_undone(s in any::<String>()) {
            prop_assert_eq!(unescape(&log_safe(&s)), s);
        }
    }

    /// The inverse of `log_safe`, to show that the escaping loses nothing.
    fn unescape(s: &str) -> String {
        let mut out = String::new();
        let mut it = s.chars();
        while let Some(c) = it.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match it.next() {
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('\\') => out.push('\\'),
                Some('x') => {
                    let hex: String = it.by_ref().take(2).collect();
                    out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                Some('u') => {
                    let hex: String = it.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    out.extend(u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32));
                }
                other => panic!("stray escape {other:?} in {s:?}"),
            }
        }
        out
    }
}
