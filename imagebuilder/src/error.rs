use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("entry {entry:?} refused: {reason}")]
    Entry { entry: String, reason: String },
    #[error("{0}")]
    Recipe(String),
    #[error("{source_path}: {message}")]
    Source {
        source_path: PathBuf,
        message: String,
    },
    #[error(transparent)]
    MissingTool(#[from] crate::tools::MissingTool),
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BuildError {
        let path = path.into();
        move |source| BuildError::Io { path, source }
    }
    pub(crate) fn source(path: impl Into<PathBuf>, message: impl Into<String>) -> BuildError {
        BuildError::Source {
            source_path: path.into(),
            message: message.into(),
        }
    }
}
