//! Where base layers (`(from …)`) come from.
//!
//! - `debian:SUITE`: mmdebstrap (debootstrap as a fallback), downloaded `.deb`s kept in the
//!   store's deb cache so a second bootstrap downloads no package ([`debian`]);
//! - `file:PATH.tar[.gz|.zst]`: a rootfs tarball ([`tarball`]);
//! - an OCI reference `NAME@sha256:…` or `REGISTRY/NAME:TAG`: pulled with `oci-client`,
//!   layers applied with whiteouts honoured ([`oci`]); bare names come from Docker Hub
//!   (through the `$KILN_REGISTRY` mirror first when one is set);
//! - `layer:NAME|ID`: a stored layer, parsed here and taken from the store by the builder.
//!
//! A base's id is computed before anything is written, and fetching writes only into the
//! temporary rootfs the builder hands over (OCI layer blobs are staged in hidden temporary
//! files beside it and removed), so a failed fetch leaves the store untouched. A failed
//! fetch also empties the rootfs again.
//!
//! Archives (tarballs, layers) are unpacked by code that never writes outside the root:
//! absolute paths, `..` and paths through symlinks are refused.

mod debcache;
pub mod debian;
mod error;
mod fsutil;
pub mod oci;
pub mod skeleton;
mod source;
pub mod tarball;
mod tools;
mod unpack;

pub use error::FetchError;
pub use oci::RegistrySettings;
pub use source::{parse_base, BaseSource, DEBIAN_VARIANTS};

use kiln_spec::LayerId;
use kiln_store::{BaseConfig, BasePin};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A base whose id is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBase {
    /// What to fetch. For OCI bases this is the pinned `REGISTRY/REPOSITORY@sha256:…`, so
    /// the fetch gets exactly the image the id names even if the tag moves meanwhile.
    pub source: BaseSource,
    pub id: LayerId,
    /// Human description, e.g. `debian:bookworm (minbase)` or `registry/name@sha256:…`.
    pub description: String,
    /// For registry images: the digest the reference was pinned to and who said so.
    pub pin: Option<BasePin>,
}

impl ResolvedBase {
    /// `busybox:latest resolved to sha256:… (by 127.0.0.1:5000, the mirror)` when a tag
    /// was looked up in a registry; `None` for other bases and digest references.
    pub fn resolution(&self) -> Option<String> {
        let pin = self.pin.as_ref()?;
        let registry = pin.registry.as_deref()?;
        let name = oci::OciRef::parse(&pin.reference)
            .map(|r| r.familiar())
            .unwrap_or_else(|_| pin.reference.clone());
        let mirror = if pin.mirror { ", the mirror" } else { "" };
        Some(format!(
            "{name} resolved to {} (by {registry}{mirror})",
            pin.digest
        ))
    }
}

/// The seam between the builder and base sources; mocks implement it in unit tests.
pub trait Fetcher: Send + Sync {
    /// Computes the base's id: hash of bootstrap inputs, of the tarball's bytes, or of the
    /// OCI manifest digest (tags are resolved against the registry).
    fn resolve(&self, source: &BaseSource) -> Result<ResolvedBase, FetchError>;

    /// Writes the base's complete root filesystem into `rootfs` (an empty directory) and
    /// returns the image config it carries. Progress goes to `progress`.
    /// `source_date_epoch` is given to bootstrap tools that honour it (mmdebstrap, and
    /// through it dpkg and mkinitramfs), as `run` steps get it: like for them, it
    /// describes how the base is made reproducibly, and does not enter its id.
    fn fetch(
        &self,
        base: &ResolvedBase,
        rootfs: &Path,
        source_date_epoch: Option<i64>,
        progress: &mut dyn Write,
    ) -> Result<BaseConfig, FetchError>;

    /// Fills `into`, an empty apt lists directory, with the index files the base's
    /// bootstrap downloaded, so a first `apt-get update` on it only revalidates them
    /// (apt checks the signed InRelease and refetches whatever changed). Returns how
    /// many files were copied: 0 for bases that are not Debian bootstraps.
    fn seed_apt_lists(&self, base: &ResolvedBase, into: &Path) -> Result<usize, FetchError> {
        let _ = (base, into);
        Ok(0)
    }
}

/// The real fetcher.
#[derive(Debug, Clone)]
pub struct RealFetcher {
    /// Where downloaded `.deb`s are kept (`Store::deb_cache`).
    pub deb_cache: PathBuf,
    /// How registries are reached: the Docker Hub mirror, plain-HTTP hosts, credentials.
    pub registries: RegistrySettings,
}

impl Fetcher for RealFetcher {
    fn resolve(&self, source: &BaseSource) -> Result<ResolvedBase, FetchError> {
        match source {
            BaseSource::Debian { .. } => {
                let debian =
                    debian::DebianBase::from_source(source).ok_or_else(|| not_debian(source))?;
                let (id, description) = debian.id()?;
                Ok(ResolvedBase {
                    source: source.clone(),
                    id,
                    description,
                    pin: None,
                })
            }
            BaseSource::Tar(path) => {
                let name = source.to_string();
                let (id, digest) = tarball::base_id(&name, path)?;
                let description = format!("{name} (sha256:{})", &digest[..12]);
                Ok(ResolvedBase {
                    source: source.clone(),
                    id,
                    description,
                    pin: None,
                })
            }
            BaseSource::Oci(reference) => oci::resolve(reference, &self.registries),
            BaseSource::Layer(_) => Err(stored_layer(source)),
        }
    }

    fn fetch(
        &self,
        base: &ResolvedBase,
        rootfs: &Path,
        source_date_epoch: Option<i64>,
        progress: &mut dyn Write,
    ) -> Result<BaseConfig, FetchError> {
        let name = base.source.to_string();
        check_target(&name, rootfs)?;
        let fetched = match &base.source {
            BaseSource::Debian { .. } => {
                let debian = debian::DebianBase {
                    expected_id: Some(&base.id),
                    ..debian::DebianBase::from_source(&base.source)
                        .ok_or_else(|| not_debian(&base.source))?
                };
                debian.fetch(&self.deb_cache, rootfs, source_date_epoch, progress)
            }
            BaseSource::Tar(path) => tarball::fetch(&name, path, &base.id, rootfs, progress),
            BaseSource::Oci(reference) => oci::fetch(reference, rootfs, progress, &self.registries),
            BaseSource::Layer(_) => Err(stored_layer(&base.source)),
        };
        match fetched {
            Ok(config) => Ok(config),
            Err(e) => match fsutil::clear_dir(rootfs) {
                Ok(()) => Err(e),
                Err(clear) => Err(FetchError::Target {
                    base: name,
                    path: rootfs.to_path_buf(),
                    problem: format!("could not be emptied after a failure ({clear}); remove it by hand. The failure: {e}"),
                }),
            },
        }
    }

    fn seed_apt_lists(&self, base: &ResolvedBase, into: &Path) -> Result<usize, FetchError> {
        match debian::DebianBase::from_source(&base.source) {
            Some(debian) => debian.seed_lists(&self.deb_cache, into),
            None => Ok(0),
        }
    }
}

/// The rootfs must be an existing, empty directory: fetching never mixes into old content.
fn check_target(name: &str, rootfs: &Path) -> Result<(), FetchError> {
    match fsutil::is_empty_dir(rootfs) {
        Ok(true) => Ok(()),
        Ok(false) => Err(FetchError::Target {
            base: name.to_string(),
            path: rootfs.to_path_buf(),
            problem: "is not empty".into(),
        }),
        Err(e) => Err(FetchError::Target {
            base: name.to_string(),
            path: rootfs.to_path_buf(),
            problem: format!("is not a usable directory: {e}"),
        }),
    }
}

/// `layer:` bases are in the store already: the builder takes them from there.
fn stored_layer(source: &BaseSource) -> FetchError {
    FetchError::base(
        &source.to_string(),
        "internal error: a `layer:` base is taken from the store by the builder, never fetched"
            .to_string(),
    )
}

/// Matching on `BaseSource::Debian` and then not getting a Debian base would be a bug.
fn not_debian(source: &BaseSource) -> FetchError {
    FetchError::base(
        &source.to_string(),
        "internal error: not a debian: base".to_string(),
    )
}

/// Extracts a tar stream into `root` exactly as archived (owners, modes, times, xattrs,
/// device nodes, `.wh.` names kept as they are), with the same guards as base unpacking:
/// nothing is ever written outside `root`. For trees kiln archived itself, such as the
/// layers of its registry build cache. Returns the number of entries.
pub fn unpack_tree(reader: impl std::io::Read, root: &Path) -> Result<u64, String> {
    unpack::unpack(reader, root, unpack::Whiteouts::Literal)
        .map(|stats| stats.entries)
        .map_err(|e| e.to_string())
}
