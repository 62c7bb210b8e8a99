//! The admin API's bearer token: read from a file only the service may read, or made there on
//! the first start.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("admin token file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("admin token file {path} has mode {mode:o}: it must be readable by the service alone (chmod 600 {path})")]
    Mode { path: String, mode: u32 },
    #[error("admin token file {path} is empty or not one line of text")]
    Empty { path: String },
}

/// The token in `path`; a missing file is created (mode 0600, 256 random bits as hex, synced)
/// so that a first start needs no step of its own.
pub fn load_or_create(path: &Path) -> Result<String, TokenError> {
    let p = path.display().to_string();
    let io = |source| TokenError::Io {
        path: p.clone(),
        source,
    };
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(TokenError::Mode { path: p, mode });
            }
            let text = std::fs::read_to_string(path).map_err(io)?;
            let token = text.trim();
            if token.is_empty() || token.contains(['\n', '\r', ' ', '\t']) {
                return Err(TokenError::Empty { path: p });
            }
            Ok(token.to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let mut b = [0u8; 32];
            // As for build tokens: no randomness, no guessable token.
            getrandom::fill(&mut b).map_err(|e| io(std::io::Error::other(e.to_string())))?;
            let token: String = b.iter().map(|x| format!("{x:02x}")).collect();
            // create_new: two servers starting at once cannot overwrite each other's token.
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(io)?;
            f.write_all(format!("{token}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            if let Some(dir) = path.parent() {
                if let Ok(d) = std::fs::File::open(dir) {
                    let _ = d.sync_all();
                }
            }
            tracing::info!(path = %path.display(), "admin token created");
            Ok(token)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_refused_when_readable_by_others() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("sub/admin.token");
        let t = load_or_create(&p).expect("created");
        assert_eq!(t.len(), 64);
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create(&p).expect("read back"), t);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(load_or_create(&p), Err(TokenError::Mode { .. })));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&p, "\n").expect("write");
        assert!(matches!(load_or_create(&p), Err(TokenError::Empty { .. })));
    }
}
