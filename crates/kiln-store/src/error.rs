use std::path::PathBuf;

/// Errors of the layer store. Each names the path or layer involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("store index {path}: {source}")]
    Index { path: PathBuf, source: rusqlite::Error },
    #[error("layer {0} is not in the store (see `kiln ls`)")]
    NotFound(String),
    #[error("layer {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("cache name `{0}` is invalid: use letters, digits, `-`, `_` and `.`")]
    BadCacheName(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io { path: path.into(), source }
    }
}
