//! Opening a SQLite store that may be corrupt: real corruption moves the file aside (with its
//! WAL and shared-memory files) as `NAME.corrupt-TIMESTAMP` and starts afresh; any other failure
//! is returned. See the README for which stores use it and why.

use rusqlite::{Connection, ErrorCode};
use std::path::{Path, PathBuf};

/// An open store, and where the corrupt file it replaced went.
pub struct Opened {
    pub conn: Connection,
    pub moved_aside: Option<PathBuf>,
}

/// Whether `e` says the file is damaged (as opposed to unreadable for another reason).
pub fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase)
    )
}

/// Opens `path` and runs `setup` (pragmas, schema); then `PRAGMA quick_check`. Corruption found
/// by any of them moves the files aside and opens a fresh store once; other errors are returned.
pub fn open(
    path: &Path,
    setup: impl Fn(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<Opened> {
    match open_checked(path, &setup) {
        Ok(conn) => Ok(Opened {
            conn,
            moved_aside: None,
        }),
        Err(e) if is_corruption(&e) => {
            let aside = move_aside(path).map_err(|io| {
                rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                    Some(format!("moving the corrupt {} aside: {io}", path.display())),
                )
            })?;
            tracing::error!(store = %path.display(), moved_to = %aside.display(), error = %e, "corrupt store moved aside: starting a fresh one");
            let conn = open_checked(path, &setup)?;
            Ok(Opened {
                conn,
                moved_aside: Some(aside),
            })
        }
        Err(e) => Err(e),
    }
}

fn open_checked(
    path: &Path,
    setup: &impl Fn(&Connection) -> rusqlite::Result<()>,
) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    setup(&conn)?;
    let verdict: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if verdict != "ok" {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            Some(format!("quick_check: {verdict}")),
        ));
    }
    Ok(conn)
}

/// Renames `path` (and its `-wal`, `-shm`) to `path.corrupt-SECONDS[-N]`; the new name of the
/// main file.
fn move_aside(path: &Path) -> std::io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let with = |suffix: &str, n: u32| {
        let mut s = path.as_os_str().to_os_string();
        s.push(format!(".corrupt-{secs}"));
        if n > 0 {
            s.push(format!("-{n}"));
        }
        s.push(suffix);
        PathBuf::from(s)
    };
    // Never over an earlier copy: each corruption keeps its evidence.
    let n = (0..1000).find(|n| !with("", *n).exists()).unwrap_or(1000);
    for suffix in ["-wal", "-shm"] {
        let mut side = path.as_os_str().to_os_string();
        side.push(suffix);
        let side = PathBuf::from(side);
        if side.exists() {
            std::fs::rename(&side, with(suffix, n))?;
        }
    }
    let to = with("", n);
    std::fs::rename(path, &to)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(c: &Connection) -> rusqlite::Result<()> {
        c.pragma_update(None, "journal_mode", "WAL")?;
        c.execute_batch("CREATE TABLE IF NOT EXISTS t (x INTEGER)")
    }

    #[test]
    fn garbage_is_moved_aside_and_a_fresh_store_opens() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("events.db");
        std::fs::write(&p, vec![0x5a; 8192]).expect("garbage");
        let o = open(&p, setup).expect("opened");
        let aside = o.moved_aside.expect("moved aside");
        assert!(aside.to_string_lossy().contains("events.db.corrupt-"));
        assert_eq!(std::fs::read(&aside).expect("kept"), vec![0x5a; 8192]);
        o.conn
            .execute("INSERT INTO t VALUES (1)", [])
            .expect("fresh store writes");
    }

    #[test]
    fn a_damaged_page_is_corruption_too() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("leases.db");
        {
            let mut c = Connection::open(&p).expect("open");
            c.execute_batch("CREATE TABLE t (x TEXT); CREATE INDEX tx ON t(x);")
                .expect("schema");
            let tx = c.transaction().expect("tx");
            for i in 0..2000 {
                tx.execute(
                    "INSERT INTO t VALUES (?1)",
                    [format!("row {i} {}", "x".repeat(50))],
                )
                .expect("insert");
            }
            tx.commit().expect("commit");
        }
        // Scribble over the middle of the file, past the header and schema page.
        let mut bytes = std::fs::read(&p).expect("read");
        let mid = bytes.len() / 2;
        bytes[mid..mid + 4096].fill(0xff);
        std::fs::write(&p, bytes).expect("write");
        let o = open(&p, |c| {
            c.execute_batch("CREATE TABLE IF NOT EXISTS t (x TEXT)")
        })
        .expect("opened");
        assert!(o.moved_aside.is_some(), "quick_check must find the damage");
    }

    #[test]
    fn other_failures_are_errors_and_nothing_moves() {
        let d = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be: not corruption.
        let p = d.path().join("events.db");
        std::fs::create_dir(&p).expect("dir");
        assert!(open(&p, setup).is_err());
        assert!(p.is_dir());
        let entries = std::fs::read_dir(d.path()).expect("ls").count();
        assert_eq!(entries, 1, "nothing moved aside");
    }
}
