use crate::FetchError;
use kiln_spec::Bootstrap;
use std::path::{Path, PathBuf};

/// A parsed `(from …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    Debian { suite: String, variant: String, include: Vec<String>, mirror: Option<String>, arch: Option<String> },
    Tar(PathBuf),
    Oci(String),
}

/// Parses a `from` string (relative `file:` paths are resolved against `context`).
pub fn parse_base(from: &str, bootstrap: Option<&Bootstrap>, context: &Path) -> Result<BaseSource, FetchError> {
    let _ = (bootstrap, context);
    Err(FetchError::Base { base: from.into(), message: "not written yet".into() })
}
