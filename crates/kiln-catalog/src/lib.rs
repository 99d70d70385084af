//! kiln's image catalogue.
//!
//! - [`metadata`]: the metadata of an image (pure), canonical JSON for signing.
//! - [`sign`]: minisign-format keys and signatures; [`trust`]: the trust directory.
//! - [`catalog`]: the local catalogue (a directory of entries), [`verify`]: checks an
//!   entry's checksum, signature, endorser and validity.
//! - [`lint`]: the hygiene check of an image's files.
//! - [`server`]: the marketplace (`kiln serve`); [`client`]: push and pull.
//! - [`admit`]: the checks and the atomic move every pull ends with, whatever the
//!   transport (marketplace, or an OCI registry through the CLI).

pub mod admit;
pub mod catalog;
pub mod client;
pub mod lint;
pub mod metadata;
pub mod remote;
pub mod server;
pub mod sign;
pub mod trust;
pub mod verify;

use std::path::{Path, PathBuf};

/// Errors of the catalogue. Each says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Metadata(#[from] metadata::MetadataError),
    #[error("{0}")]
    Key(String),
    #[error("signature refused: {0}")]
    Signature(String),
    #[error("endorser refused: {0}")]
    Endorser(String),
    #[error("trust: {0}")]
    Trust(String),
    #[error("checksum refused: {0}")]
    Checksum(String),
    #[error("expired: {0}")]
    Expired(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Remote(String),
    #[error("{0}")]
    Image(String),
}

impl CatalogError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> CatalogError {
        CatalogError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
