//! kiln's layer store.
//!
//! On disk (see DESIGN.md, "Store contract"):
//! ```text
//! STORE/
//!   result/<id>/        committed layers: rootfs/ (overlayfs upper dir, or a full tree when flat),
//!                       log, meta.json
//!   result-tmp/<id>/    a step being built: rootfs/, work/ (overlayfs workdir), log
//!   l/<16 hex>          short symlinks to result/<id>/rootfs, keeping overlay mount options short
//!   cache/<name>/       persistent `(cache …)` mounts;  cache-tmp/ their per-step working copies
//!   locks/<id>.lock     flock held while a step with that id is being built
//!   locks/<id>.pin      shared flocks of builds using the layer (prune skips it)
//!   debs/               downloaded .deb files shared by every bootstrap
//!   tmp/                scratch directories (`scratch_dir`), each flocked by its owner
//!   trash/              trees being deleted (renamed here first, removed after)
//!   names/<NAME>        symlink to ../result/<id>: a layer name (`kiln shell --save NAME`);
//!                       prune skips named layers, delete refuses them
//!   index.sqlite        id, parent, created, last used, size, children
//! ```
//! The directory tree is the truth; the index is rebuilt from each layer's meta.json
//! when they disagree (checked at open). Open also removes the temporaries of dead
//! builds, and only those: a live build holds a flock on each of its temporaries.

mod cache;
mod error;
mod fs_store;
mod fsutil;
mod health;
mod index;
mod layers;
mod layout;
mod lock;
mod names;
mod recover;
mod remove;
mod tools;

pub use error::StoreError;
pub use fs_store::{Durability, FsStore, StoreOptions};
pub use kiln_spec::LayerId;
pub use names::{check_name, LayerName, VM_BASE_PREFIX};
pub use recover::Recovery;

use std::path::{Path, PathBuf};

/// What a committed layer records about itself (`result/<id>/meta.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerMeta {
    pub id: LayerId,
    /// The layer this one was built on; `None` for bases.
    pub parent: Option<LayerId>,
    /// True when rootfs/ holds a complete tree (bases, flattened layers), so the
    /// overlay chain stops here.
    pub flat: bool,
    /// Unix seconds.
    pub created: i64,
    /// What produced it, for humans: the op text or the base name.
    pub description: String,
    /// The image config a base brings (env, workdir, user); `None` for steps.
    pub config: Option<BaseConfig>,
    /// For registry images: the reference and the manifest digest it was pinned to.
    /// Absent in layers committed before kiln recorded it (and for other layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<BasePin>,
    /// True when the layer's payload is a VM disk, `disk.qcow2` (built by the QEMU
    /// sandbox), rather than `rootfs/` (which is then empty). Such a layer's disk is
    /// backed by its parent's unless the layer is a VM base or was flattened.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disk: bool,
}

/// The payload file of a disk layer, in its directory.
pub const DISK_FILE: &str = "disk.qcow2";

/// The exact image a registry base was built from, recorded so a tag that later moves
/// still says what this layer holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BasePin {
    /// The normalised reference as written, e.g. `registry-1.docker.io/library/busybox:latest`.
    pub reference: String,
    /// The manifest digest it resolved to (`sha256:…`).
    pub digest: String,
    /// The registry host that answered the tag lookup (a mirror or the image's own
    /// registry); `None` when the reference carried its digest and nothing was asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    /// True when `registry` is the mirror (`$KILN_REGISTRY`) rather than the upstream.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
}

/// The runtime defaults a base image carries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseConfig {
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub user: Option<String>,
}

/// A layer as listed by the index.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerInfo {
    pub meta: LayerMeta,
    /// Unix seconds of the last build that used it.
    pub last_used: i64,
    /// Bytes of this layer's own rootfs/ (not its parents').
    pub size: u64,
    /// Number of committed layers whose parent is this one.
    pub children: u64,
}

/// A step under construction in `result-tmp/<id>`. Dropping it without
/// [`Store::commit`] leaves a temp directory that [`Store::abort`] or the next open removes.
#[derive(Debug)]
pub struct TmpLayer {
    pub id: LayerId,
    pub parent: Option<LayerId>,
    pub flat: bool,
    /// `result-tmp/<id>`.
    pub dir: PathBuf,
    /// `result-tmp/<id>/rootfs`: the overlay upper dir (or the full tree when flat).
    pub rootfs: PathBuf,
    /// `result-tmp/<id>/work`: the overlay workdir (same filesystem as rootfs).
    pub work: PathBuf,
    /// `result-tmp/<id>/log`.
    pub log: PathBuf,
}

/// Exclusive right to build one step id; released on drop (and by the kernel if the process dies).
pub struct StepLock {
    _file: std::fs::File,
}

impl StepLock {
    /// Wraps an already-locked file.
    pub fn from_locked_file(file: std::fs::File) -> Self {
        StepLock { _file: file }
    }
}

/// A per-step working copy of a `(cache …)` mount.
#[derive(Debug)]
pub struct CacheLease {
    pub name: String,
    /// The directory to bind-mount at the cache's target.
    pub dir: PathBuf,
    /// Which version of cache/<name> the copy was taken from.
    pub base_version: u64,
}

/// The seam between the builder and the on-disk store; mocks implement it in unit tests.
pub trait Store: Send + Sync {
    /// The store's root directory.
    fn root(&self) -> &Path;

    /// The layer a name (`kiln shell --save NAME`) points at, if the name exists.
    /// Stores without names (mocks) have none.
    fn lookup_name(&self, name: &str) -> Result<Option<LayerId>, StoreError> {
        let _ = name;
        Ok(None)
    }

    /// The layer if it is committed (does not change `last_used`).
    fn get(&self, id: &LayerId) -> Result<Option<LayerInfo>, StoreError>;

    /// Records that a build used `id` now (for LRU pruning).
    fn touch(&self, id: &LayerId) -> Result<(), StoreError>;

    /// Marks `id` as in use (a lower layer of a running step, a stage being copied from)
    /// until the guard drops; [`Store::prune`] skips pinned layers.
    fn pin(&self, id: &LayerId) -> Result<StepLock, StoreError>;

    /// Blocks until this process holds the build lock for `id`. Two builds of the same
    /// step serialise here; the second then finds the first's result with [`Store::get`].
    fn lock_step(&self, id: &LayerId) -> Result<StepLock, StoreError>;

    /// Creates an empty `result-tmp/<id>` (removing a stale one). The caller holds the step lock.
    fn begin(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        flat: bool,
    ) -> Result<TmpLayer, StoreError>;

    /// Writes meta.json, removes work/, measures the size and atomically renames the
    /// temp dir to `result/<id>`, then indexes it.
    fn commit(
        &self,
        tmp: TmpLayer,
        description: &str,
        config: Option<BaseConfig>,
    ) -> Result<LayerInfo, StoreError>;

    /// [`Store::commit`] for a base layer, also recording which image it was pinned to.
    fn commit_base(
        &self,
        tmp: TmpLayer,
        description: &str,
        config: BaseConfig,
        pin: Option<BasePin>,
    ) -> Result<LayerInfo, StoreError>;

    /// [`Store::commit`] for a layer made elsewhere and pulled (from a registry build
    /// cache): it keeps the description, config, pin and creation time `meta` gives.
    /// The caller has checked `meta` names `tmp`'s id and parent.
    fn commit_pulled(&self, tmp: TmpLayer, meta: &LayerMeta) -> Result<LayerInfo, StoreError> {
        match &meta.config {
            Some(config) if meta.parent.is_none() => {
                self.commit_base(tmp, &meta.description, config.clone(), meta.pin.clone())
            }
            config => self.commit(tmp, &meta.description, config.clone()),
        }
    }

    /// Deletes the temp dir of a failed or cancelled step.
    fn abort(&self, tmp: TmpLayer) -> Result<(), StoreError>;

    /// The overlay lower dirs that make up `id`'s filesystem, topmost first, ending at
    /// the first flat layer. Each path is short (`STORE/l/<16 hex>`).
    fn chain(&self, id: &LayerId) -> Result<Vec<PathBuf>, StoreError>;

    /// `result/<id>/log`.
    fn log_path(&self, id: &LayerId) -> PathBuf;

    /// `result/<id>`: where a committed layer's files are (its `rootfs/`, or its
    /// [`DISK_FILE`] and, for a VM base, `boot/`).
    fn layer_dir(&self, id: &LayerId) -> PathBuf;

    /// Every committed layer.
    fn list(&self) -> Result<Vec<LayerInfo>, StoreError>;

    /// Deletes `id` and all its descendants, leaves first. Returns what was deleted.
    /// Refused when a name points at any of them.
    fn delete(&self, id: &LayerId) -> Result<Vec<LayerId>, StoreError>;

    /// Deletes least-recently-used leaves until the total size is at most `keep_bytes`.
    /// Layers whose step lock is held (in use by a build) and named layers are skipped.
    fn prune(&self, keep_bytes: u64) -> Result<Vec<LayerId>, StoreError>;

    /// Removes every layer, cache and temporary (the .deb cache is kept unless `all`).
    fn clean(&self, all: bool) -> Result<(), StoreError>;

    /// Checks the store is usable: writable, index consistent with result/, overlayfs supported.
    fn healthcheck(&self) -> Result<Vec<String>, StoreError>;

    /// Takes a private working copy of cache `name` (created empty the first time).
    fn cache_acquire(&self, name: &str) -> Result<CacheLease, StoreError>;

    /// After a successful step: the working copy atomically becomes the cache's current
    /// version. After a failure (`keep == false`) it is discarded.
    fn cache_release(&self, lease: CacheLease, keep: bool) -> Result<(), StoreError>;

    /// Directory for downloaded `.deb` files shared by all bootstraps.
    fn deb_cache(&self) -> PathBuf;

    /// A scratch directory under the store (same filesystem) removed at next open if left behind.
    fn scratch_dir(&self, prefix: &str) -> Result<PathBuf, StoreError>;
}
