//! Where base layers (`(from …)`) come from.
//!
//! - `debian:SUITE`: mmdebstrap (debootstrap as a fallback), downloaded `.deb`s kept in the
//!   store's deb cache so a second bootstrap downloads no package ([`debian`]);
//! - `file:PATH.tar[.gz|.zst]`: a rootfs tarball ([`tarball`]);
//! - an OCI reference `NAME@sha256:…` or `REGISTRY/NAME:TAG`: pulled with `oci-client`,
//!   layers applied with whiteouts honoured ([`oci`]).
//!
//! A base's id is computed before anything is written, and fetching writes only into the
//! temporary rootfs the builder hands over, so a failed fetch leaves the store untouched.

pub mod debian;
mod error;
pub mod oci;
pub mod tarball;
mod source;

pub use error::FetchError;
pub use source::{parse_base, BaseSource};

use kiln_spec::LayerId;
use kiln_store::BaseConfig;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A base whose id is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBase {
    pub source: BaseSource,
    pub id: LayerId,
    /// Human description, e.g. `debian:bookworm (minbase)` or `registry/name@sha256:…`.
    pub description: String,
}

/// The seam between the builder and base sources; mocks implement it in unit tests.
pub trait Fetcher: Send + Sync {
    /// Computes the base's id: hash of bootstrap inputs, of the tarball's bytes, or of the
    /// OCI manifest digest (tags are resolved against the registry).
    fn resolve(&self, source: &BaseSource) -> Result<ResolvedBase, FetchError>;

    /// Writes the base's complete root filesystem into `rootfs` (an empty directory) and
    /// returns the image config it carries. Progress goes to `progress`.
    fn fetch(&self, base: &ResolvedBase, rootfs: &Path, progress: &mut dyn Write) -> Result<BaseConfig, FetchError>;
}

/// The real fetcher.
#[derive(Debug, Clone)]
pub struct RealFetcher {
    /// Where downloaded `.deb`s are kept (`Store::deb_cache`).
    pub deb_cache: PathBuf,
    /// `$KILN_REGISTRY`: registry used for bare Docker Hub names (e.g. `busybox`).
    pub default_registry: Option<String>,
}
