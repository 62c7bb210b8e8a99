use std::path::{Path, PathBuf};

/// Every error names the file or directory it is about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A malformed `SHA256SUMS` (`line` is 1-based).
    #[error("{path}:{line}: {message}")]
    Sums {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Anything else the store refuses: a bad id, a key directory outside the store, an item
    /// whose files do not match its `SHA256SUMS` at publish time, ...
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl StoreError {
    /// The file or directory the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StoreError::Io { path, .. }
            | StoreError::Sums { path, .. }
            | StoreError::Invalid { path, .. } => path,
        }
    }

    /// The error without its path, for callers that report the path separately.
    pub fn detail(&self) -> String {
        match self {
            StoreError::Io { source, .. } => source.to_string(),
            StoreError::Sums { line, message, .. } => format!("line {line}: {message}"),
            StoreError::Invalid { message, .. } => message.clone(),
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, message: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `map_err(io(&path))`: wraps an io::Error with the path it is about.
pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}
