//! Which composes armed hosts are pinned to: read, read-only, from the build-state store, so
//! that gc never removes the media a host is about to boot or is installing from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The build-state store in the state directory (written by `serve` and `reinstall`).
pub const BUILDSTATE: &str = "buildstate.db";

/// release → compose id → number of hosts pinned to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pins(BTreeMap<String, BTreeMap<String, usize>>);

impl Pins {
    /// Hosts pinned to `compose` of `release`.
    pub fn count(&self, release: &str, compose: &str) -> usize {
        self.0
            .get(release)
            .and_then(|m| m.get(compose))
            .copied()
            .unwrap_or(0)
    }

    pub fn is_pinned(&self, release: &str, compose: &str) -> bool {
        self.count(release, compose) > 0
    }

    /// Counts one host pinned to `media` (`<release>/<compose-id>`); other values are ignored.
    pub fn add(&mut self, media: &str) {
        if let Some((r, c)) = crate::parse_media_id(media) {
            *self
                .0
                .entry(r.to_string())
                .or_default()
                .entry(c.to_string())
                .or_default() += 1;
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("build-state store {path} (read to find the composes hosts are pinned to): {source}")]
pub struct PinsError {
    pub path: PathBuf,
    pub source: rusqlite::Error,
}

/// The composes of hosts that are armed or installing (a host that installed, or failed, boots
/// nothing from them any more; re-arming pins the current compose afresh). No store yet: no
/// pins. A store that cannot be read is an error: gc must not guess.
pub fn read_pins(state: &Path) -> Result<Pins, PinsError> {
    let path = state.join(BUILDSTATE);
    let mut pins = Pins::default();
    if !path.exists() {
        return Ok(pins);
    }
    let err = |source| PinsError {
        path: path.clone(),
        source,
    };
    let c =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(err)?;
    c.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    // A store written before media were pinned has no such column, and so no pins.
    let has_media: bool = c
        .query_row(
            "SELECT COUNT(*) FROM pragma_table_info('hosts') WHERE name = 'media'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .map_err(err)?
        > 0;
    if !has_media {
        return Ok(pins);
    }
    let mut st = c
        .prepare(
            "SELECT media FROM hosts WHERE media IS NOT NULL AND state IN ('armed', 'installing')",
        )
        .map_err(err)?;
    for m in st.query_map([], |r| r.get::<_, String>(0)).map_err(err)? {
        pins.add(&m.map_err(err)?);
    }
    Ok(pins)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_armed_and_installing_hosts_pin() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(read_pins(d.path()).unwrap(), Pins::default());
        let c = rusqlite::Connection::open(d.path().join(BUILDSTATE)).unwrap();
        c.execute_batch(
            "CREATE TABLE hosts (host TEXT PRIMARY KEY, state TEXT NOT NULL, media TEXT);
             INSERT INTO hosts VALUES ('a', 'armed', 'stream9/aaa'), ('b', 'installing', 'stream9/aaa'),
               ('c', 'installed', 'stream9/bbb'), ('d', 'armed', NULL), ('e', 'armed', 'stream10/ccc'),
               ('f', 'armed', '../x');",
        )
        .unwrap();
        let p = read_pins(d.path()).unwrap();
        assert_eq!(p.count("stream9", "aaa"), 2);
        assert!(!p.is_pinned("stream9", "bbb"));
        assert_eq!(p.count("stream10", "ccc"), 1);
    }

    #[test]
    fn an_older_store_has_no_pins_and_garbage_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let c = rusqlite::Connection::open(d.path().join(BUILDSTATE)).unwrap();
        c.execute_batch("CREATE TABLE hosts (host TEXT PRIMARY KEY, state TEXT NOT NULL);")
            .unwrap();
        drop(c);
        assert_eq!(read_pins(d.path()).unwrap(), Pins::default());
        std::fs::write(d.path().join(BUILDSTATE), b"not a database, not at all....").unwrap();
        let e = read_pins(d.path()).unwrap_err().to_string();
        assert!(e.contains(BUILDSTATE), "{e}");
    }
}
