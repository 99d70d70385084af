use std::path::PathBuf;

/// Errors of the layer store. Each names the path or layer involved and, where
/// the user can do something about it, what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "store index {path}: {source} (the index is rebuilt from result/*/meta.json when missing: \
         delete the file if it is damaged)"
    )]
    Index {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "store index {path} has schema version {found}, this kiln understands up to {supported}: \
         use a newer kiln, or delete the index to rebuild it from result/"
    )]
    IndexVersion {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("layer {0} is not in the store (see `kiln ls`)")]
    NotFound(String),
    #[error("layer {id}: {message}")]
    Corrupt { id: String, message: String },
    #[error("cache name `{0}` is invalid: use letters, digits, `-`, `_` and `.`")]
    BadCacheName(String),
    #[error(
        "scratch directory prefix `{0}` is invalid: use 1 to 64 letters, digits, `-`, `_` and `.`"
    )]
    BadScratchPrefix(String),
    #[error("`{program}` was not found in PATH: install the Debian package `{package}`")]
    ToolMissing {
        program: &'static str,
        package: &'static str,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    ToolFailed {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("layer name `{0}` is invalid: use 1 to 128 letters, digits, `-`, `_` and `.`, starting with a letter or digit (64 hex digits would read as a layer id)")]
    BadLayerName(String),
    /// `delete` of a layer that a name (`kiln shell --save NAME`) keeps.
    #[error(
        "layer {id} is kept by the name(s) {names}: remove them first with `kiln names rm NAME`"
    )]
    Named { id: String, names: String },
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Attaches a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T, StoreError> {
        self.map_err(|e| StoreError::io(path, e))
    }
}
