//! `SHA256SUMS`: the one reader and writer of the format `sha256sum -c` checks.
//!
//! Each line is `<64 hex digits>` then two spaces (or ` *`, binary mode) then a name. Names are
//! relative paths inside the item (`images/pxeboot/vmlinuz`), never absolute, never with `.` or
//! `..` components, so a checksum file can never point a reader outside its item.

use crate::error::{io, StoreError};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Why a checksum text or entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SumsError {
    /// A malformed line of a checksum file (1-based).
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    /// An entry refused by [`Sums::insert`].
    #[error("{0}")]
    Entry(String),
}

impl SumsError {
    /// The 1-based line of a parse error, 0 for an entry refused by [`Sums::insert`].
    pub fn line(&self) -> usize {
        match self {
            SumsError::Line { line, .. } => *line,
            SumsError::Entry(_) => 0,
        }
    }
    pub fn message(&self) -> &str {
        match self {
            SumsError::Line { message, .. } | SumsError::Entry(message) => message,
        }
    }
}

/// The checksums of one item: file name → lowercase hex sha256, ordered by name.
///
/// Only valid entries get in (checked by [`Sums::insert`] and [`Sums::parse`]), so the text
/// [`Sums::to_text`] writes always parses back and always passes `sha256sum -c --strict`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums(BTreeMap<String, String>);

impl Sums {
    pub fn new() -> Sums {
        Sums::default()
    }

    /// Adds `name` with its hex sha256 (either case; stored lowercase). Refuses invalid names
    /// (see [`valid_sums_name`]), anything but 64 hex digits, and a name already present.
    pub fn insert(&mut self, name: &str, sha256: &str) -> Result<(), SumsError> {
        self.insert_checked(name, sha256).map_err(SumsError::Entry)
    }

    fn insert_checked(&mut self, name: &str, sha256: &str) -> Result<(), String> {
        if !valid_sha256(sha256) {
            return Err(format!(
                "{name:?}: checksum {sha256:?} is not 64 hex digits"
            ));
        }
        if !valid_sums_name(name) {
            return Err(format!(
                "invalid file name {name:?} (a relative path without empty, `.` or `..` \
                 components, backslashes or control characters)"
            ));
        }
        if self.0.contains_key(name) {
            return Err(format!("{name:?} is listed twice"));
        }
        self.0.insert(name.to_string(), sha256.to_ascii_lowercase());
        Ok(())
    }

    /// The sha256 of `name`, if listed.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// `(name, sha256)` pairs ordered by name: the one tuple order of this crate.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.0.iter().map(|(n, h)| (n.as_str(), h.as_str()))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.0.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses a checksum file. Empty lines and `#` comments are skipped (as `sha256sum -c`
    /// does); any other line that is not `<64 hex>  <name>` or `<64 hex> *<name>` with a valid
    /// name is an error naming its line, and so is a name listed twice. Never panics.
    pub fn parse(text: &str) -> Result<Sums, SumsError> {
        let mut sums = Sums::new();
        for (i, line) in text.split('\n').enumerate() {
            let n = i + 1;
            let err = |message: String| SumsError::Line { line: n, message };
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.starts_with('\\') {
                // GNU escapes names holding `\` or a newline this way; valid names never need it.
                return Err(err(
                    "escaped names (a leading backslash) are not supported".into()
                ));
            }
            let b = line.as_bytes();
            if b.len() < 64 || !b[..64].iter().all(u8::is_ascii_hexdigit) {
                return Err(err("expected 64 hex digits of sha256 at the start".into()));
            }
            // Bytes 0..64 are ASCII, so 64, 65 and 66 are char boundaries when present.
            match b.get(64..66) {
                Some(b"  ") | Some(b" *") => {}
                _ => {
                    return Err(err(
                        "expected two spaces (or ` *`) between the checksum and the name".into(),
                    ))
                }
            }
            let (hash, name) = (&line[..64], &line[66..]);
            sums.insert_checked(name, hash).map_err(err)?;
        }
        Ok(sums)
    }

    /// Like [`Sums::parse`] for raw bytes: invalid UTF-8 is an error on the line it sits on.
    pub fn parse_bytes(bytes: &[u8]) -> Result<Sums, SumsError> {
        match std::str::from_utf8(bytes) {
            Ok(text) => Sums::parse(text),
            Err(e) => {
                let line = 1 + bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&c| c == b'\n')
                    .count();
                Err(SumsError::Line {
                    line,
                    message: "not valid UTF-8".into(),
                })
            }
        }
    }

    /// The file text: `<sha256>  <name>\n` per entry, ordered by name.
    pub fn to_text(&self) -> String {
        self.iter().map(|(n, h)| format!("{h}  {n}\n")).collect()
    }
}

fn valid_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Names a checksum file may list: a relative path of non-empty components, none `.` or `..`,
/// without backslashes or control characters (which `sha256sum` would escape).
pub fn valid_sums_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 4096
        && !s.starts_with('/')
        && !s.chars().any(|c| c.is_control() || c == '\\')
        && s.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Reads and parses a checksum file; a malformed line is [`StoreError::Sums`] naming the file
/// and the line.
pub fn read_sums(path: &Path) -> Result<Sums, StoreError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    Sums::parse_bytes(&bytes).map_err(|e| StoreError::Sums {
        path: path.to_path_buf(),
        line: e.line(),
        message: e.message().to_string(),
    })
}

/// Writes a checksum file and fsyncs it (not its directory: publishing fsyncs the whole item).
pub fn write_sums(path: &Path, sums: &Sums) -> Result<(), StoreError> {
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(sums.to_text().as_bytes()).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(c: char) -> String {
        c.to_string().repeat(64)
    }

    #[test]
    fn round_trip() {
        let mut s = Sums::new();
        s.insert("z", &h('a')).unwrap();
        s.insert("a b", &h('B')).unwrap();
        s.insert("images/pxeboot/vmlinuz", &h('c')).unwrap();
        s.insert(".treeinfo", &h('d')).unwrap();
        let t = s.to_text();
        assert_eq!(
            t,
            format!(
                "{}  .treeinfo\n{}  a b\n{}  images/pxeboot/vmlinuz\n{}  z\n",
                h('d'),
                h('b'),
                h('c'),
                h('a')
            )
        );
        assert_eq!(Sums::parse(&t).unwrap(), s);
        assert_eq!(
            s.iter().next(),
            Some((".treeinfo", h('d').as_str())),
            "(name, sha256), by name"
        );
    }

    #[test]
    fn accepts_binary_mode_uppercase_comments_and_blank_lines() {
        let t = format!("# made by hand\n\n{}  a\n{} *b c\n", h('F'), h('0'));
        let s = Sums::parse(&t).unwrap();
        assert_eq!(s.get("a"), Some(h('f').as_str()));
        assert_eq!(s.get("b c"), Some(h('0').as_str()));
        assert_eq!(s.len(), 2);
        // No trailing newline.
        assert_eq!(Sums::parse(&format!("{}  a", h('1'))).unwrap().len(), 1);
    }

    #[test]
    fn malformed_lines_name_their_line() {
        let good = format!("{}  ok\n", h('a'));
        let cases: Vec<(String, &str)> = vec![
            (format!("{}  a\n", "a".repeat(63)), "64 hex"),
            (format!("{}  a\n", "g".repeat(64)), "64 hex"),
            (format!("{} a\n", h('a')), "two spaces"),
            (format!("{}\ta\n", h('a')), "two spaces"),
            (format!("{}a  a\n", h('a')), "two spaces"),
            (h('a'), "two spaces"),
            (format!("{}  \n", h('a')), "invalid file name"),
            (format!("{}  /etc/passwd\n", h('a')), "invalid file name"),
            (format!("{}  ../x\n", h('a')), "invalid file name"),
            (format!("{}  a/../../x\n", h('a')), "invalid file name"),
            (format!("{}  a//b\n", h('a')), "invalid file name"),
            (format!("{}  a/./b\n", h('a')), "invalid file name"),
            (format!("{}  a/\n", h('a')), "invalid file name"),
            (format!("{}  a\r\n", h('a')), "invalid file name"),
            (format!("{}  ok\n", h('b')), "listed twice"),
            (format!("\\{}  a\\\\b\n", h('a')), "backslash"),
            ("SHA256 (a) = abc\n".to_string(), "64 hex"),
            (" \n".to_string(), "64 hex"),
        ];
        for (bad, want) in cases {
            let text = format!("{good}{bad}");
            let e = Sums::parse(&text).unwrap_err();
            assert_eq!(e.line(), 2, "{text:?}: {e}");
            assert!(e.to_string().contains(want), "{text:?}: {e}");
            assert!(e.to_string().starts_with("line 2: "), "{e}");
        }
        let mut bytes = good.into_bytes();
        bytes.extend_from_slice(b"\n\xff\xfe  x\n");
        let e = Sums::parse_bytes(&bytes).unwrap_err();
        assert_eq!((e.line(), e.message()), (3, "not valid UTF-8"));
    }

    #[test]
    fn insert_refuses_what_parse_refuses() {
        let mut s = Sums::new();
        assert!(s.insert("../a", &h('a')).is_err());
        assert!(s.insert("a", "abc").is_err());
        assert!(s.insert("a", &h('a')).is_ok());
        let e = s.insert("a", &h('b')).unwrap_err();
        assert_eq!(e.line(), 0);
        assert!(e.to_string().contains("twice"), "{e}");
    }

    #[test]
    fn read_names_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("SHA256SUMS");
        std::fs::write(&p, format!("{}  a\nnonsense\n", h('a'))).unwrap();
        let e = read_sums(&p).unwrap_err();
        assert!(matches!(e, StoreError::Sums { line: 2, .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!("{}:2: ", p.display())),
            "{e}"
        );
        let missing = d.path().join("nope");
        assert_eq!(read_sums(&missing).unwrap_err().path(), missing);
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        "[A-Za-z0-9._ -]{1,12}(/[A-Za-z0-9._ -]{1,12}){0,3}"
            .prop_filter("valid", |s| valid_sums_name(s))
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC*") {
            let _ = Sums::parse(&text);
        }

        #[test]
        fn parse_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Sums::parse_bytes(&bytes);
        }

        #[test]
        fn parse_never_panics_near_valid_lines(
            lines in proptest::collection::vec(("[0-9a-fA-Fg]{60,68}", "[ *\t]{0,3}", "[a-z./\\\\\r]{0,8}"), 0..6)
        ) {
            let text: String = lines.iter().map(|(a, b, c)| format!("{a}{b}{c}\n")).collect();
            let _ = Sums::parse(&text);
        }

        #[test]
        fn written_sums_parse_back(
            entries in proptest::collection::btree_map(name_strategy(), "[0-9a-f]{64}", 0..8)
        ) {
            let mut s = Sums::new();
            for (n, h) in &entries {
                s.insert(n, h).unwrap();
            }
            prop_assert_eq!(Sums::parse(&s.to_text()).unwrap(), s);
        }
    }
}
