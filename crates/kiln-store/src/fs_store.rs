//! [`FsStore`]: the [`Store`] on a local filesystem. The work is split by concern:
//! `layers.rs` (begin/commit/chain), `remove.rs` (delete/prune/clean), `recover.rs`
//! (crash recovery at open), `health.rs`, `cache.rs`, with `index.rs` and `lock.rs` below.

use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::index::Index;
use crate::layout::{is_safe_name, unique_suffix, Layout};
use crate::lock::{self, HeldDirs, Mode, Wait};
use crate::recover::Recovery;
use crate::{
    cache, layout, BaseConfig, BasePin, CacheLease, LayerId, LayerInfo, LayerMeta, StepLock, Store,
    StoreError, TmpLayer,
};

/// How hard a commit works to survive a power loss (process crashes are always survived).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// Writes each new file's data out and commits the journal once per layer before the
    /// layer becomes visible. Costs O(what the step wrote).
    #[default]
    Batch,
    /// Only meta.json and directory entries are synced: a power loss may leave a committed
    /// layer with empty files. For throwaway stores (CI, tests).
    MetadataOnly,
}

/// Options of [`FsStore::open_with`].
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreOptions {
    pub durability: Durability,
}

/// The on-disk store (layout in the crate docs). Several processes may use one store at
/// once; each build step is serialised by its step lock.
pub struct FsStore {
    pub(crate) layout: Layout,
    pub(crate) index: Index,
    /// Locks on cache working copies and scratch directories handed out by this store.
    pub(crate) held: HeldDirs,
    pub(crate) options: StoreOptions,
    recovery: Recovery,
}

impl FsStore {
    /// Opens the store at `root` with default options, creating it if missing, and
    /// recovers from crashed builds (see [`FsStore::recovery`]).
    pub fn open(root: &Path) -> Result<FsStore, StoreError> {
        FsStore::open_with(root, StoreOptions::default())
    }

    /// [`FsStore::open`] with options.
    pub fn open_with(root: &Path, options: StoreOptions) -> Result<FsStore, StoreError> {
        let root = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().at(root)?.join(root)
        };
        let layout = Layout::new(&root);
        layout.create()?;
        let index = Index::open(&layout.index())?;
        let mut store = FsStore {
            layout,
            index,
            held: HeldDirs::default(),
            options,
            recovery: Recovery::default(),
        };
        store.recovery = store.recover()?;
        if !store.recovery.is_empty() {
            tracing::info!("store {}: recovered: {}", root.display(), store.recovery);
        }
        Ok(store)
    }

    /// What the open found and repaired.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// How many layers make up `id`'s filesystem (the length of [`Store::chain`]). The
    /// builder flattens chains that grow too deep for an overlay mount.
    pub fn chain_depth(&self, id: &LayerId) -> Result<usize, StoreError> {
        Ok(self.chain_ids(id)?.len())
    }

    /// The build lock for `id` if nobody holds it, without waiting.
    pub fn try_lock_step(&self, id: &LayerId) -> Result<Option<StepLock>, StoreError> {
        let file = lock::lock_file(&self.layout.step_lock(id), Mode::Exclusive, Wait::NoBlock)?;
        Ok(file.map(StepLock::from_locked_file))
    }

    /// Marks `id` as in use (e.g. as a lower layer of a running step) until the returned
    /// guard drops: [`Store::prune`] skips pinned layers. Pins are shared: any number of
    /// processes may pin one layer.
    pub fn pin(&self, id: &LayerId) -> Result<StepLock, StoreError> {
        let path = self.layout.pin_lock(id);
        let file = lock::lock_file(&path, Mode::Shared, Wait::Block)?;
        file.map(StepLock::from_locked_file).ok_or_else(|| {
            StoreError::Other(format!(
                "{}: blocking lock returned without the lock",
                path.display()
            ))
        })
    }

    /// Removes a directory made by [`Store::scratch_dir`] and releases its lock.
    pub fn remove_scratch(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.parent() != Some(self.layout.scratch().as_path()) {
            return Err(StoreError::Other(format!(
                "{} is not a scratch directory of this store",
                dir.display()
            )));
        }
        let removed = crate::fsutil::remove_tree(dir);
        self.held.release(dir);
        removed
    }

    /// Total bytes of all committed layers.
    pub fn total_size(&self) -> Result<u64, StoreError> {
        self.index.total_size()
    }
}

impl Store for FsStore {
    fn pin(&self, id: &LayerId) -> Result<StepLock, StoreError> {
        FsStore::pin(self, id)
    }

    fn root(&self) -> &Path {
        self.layout.root()
    }

    fn lookup_name(&self, name: &str) -> Result<Option<LayerId>, StoreError> {
        FsStore::lookup_name(self, name)
    }

    fn get(&self, id: &LayerId) -> Result<Option<LayerInfo>, StoreError> {
        self.get_checked(id)
    }

    fn touch(&self, id: &LayerId) -> Result<(), StoreError> {
        if self.index.touch(id, layout::unix_now())? {
            return Ok(());
        }
        // Committed by a process that died before indexing it? The tree is the truth.
        if self.get_checked(id)?.is_some() && self.index.touch(id, layout::unix_now())? {
            return Ok(());
        }
        Err(StoreError::NotFound(id.to_string()))
    }

    fn lock_step(&self, id: &LayerId) -> Result<StepLock, StoreError> {
        let path = self.layout.step_lock(id);
        let file = lock::lock_file(&path, Mode::Exclusive, Wait::Block)?;
        file.map(StepLock::from_locked_file).ok_or_else(|| {
            StoreError::Other(format!(
                "{}: blocking lock returned without the lock",
                path.display()
            ))
        })
    }

    fn begin(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        flat: bool,
    ) -> Result<TmpLayer, StoreError> {
        self.begin_layer(id, parent, flat)
    }

    fn commit(
        &self,
        tmp: TmpLayer,
        description: &str,
        config: Option<BaseConfig>,
    ) -> Result<LayerInfo, StoreError> {
        self.commit_layer(tmp, description, config, None, None)
    }

    fn commit_base(
        &self,
        tmp: TmpLayer,
        description: &str,
        config: BaseConfig,
        pin: Option<BasePin>,
    ) -> Result<LayerInfo, StoreError> {
        self.commit_layer(tmp, description, Some(config), pin, None)
    }

    fn commit_pulled(&self, tmp: TmpLayer, meta: &LayerMeta) -> Result<LayerInfo, StoreError> {
        self.commit_layer(
            tmp,
            &meta.description,
            meta.config.clone(),
            meta.pin.clone(),
            Some(meta.created),
        )
    }

    fn abort(&self, tmp: TmpLayer) -> Result<(), StoreError> {
        self.check_tmp(&tmp)?;
        crate::fsutil::remove_tree(&tmp.dir)
    }

    fn chain(&self, id: &LayerId) -> Result<Vec<PathBuf>, StoreError> {
        self.chain_ids(id)?
            .iter()
            .map(|layer| self.ensure_short_link(layer))
            .collect()
    }

    fn log_path(&self, id: &LayerId) -> PathBuf {
        self.layout.layer_dir(id).join("log")
    }

    fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.layout.layer_dir(id)
    }

    fn list(&self) -> Result<Vec<LayerInfo>, StoreError> {
        self.index.list()
    }

    fn delete(&self, id: &LayerId) -> Result<Vec<LayerId>, StoreError> {
        self.delete_subtree(id)
    }

    fn prune(&self, keep_bytes: u64) -> Result<Vec<LayerId>, StoreError> {
        self.prune_lru(keep_bytes)
    }

    fn clean(&self, all: bool) -> Result<(), StoreError> {
        self.clean_everything(all)
    }

    fn healthcheck(&self) -> Result<Vec<String>, StoreError> {
        crate::health::check(self)
    }

    fn cache_acquire(&self, name: &str) -> Result<CacheLease, StoreError> {
        cache::acquire(&self.layout, &self.held, name)
    }

    fn cache_release(&self, lease: CacheLease, keep: bool) -> Result<(), StoreError> {
        cache::release(&self.layout, &self.held, lease, keep)
    }

    fn deb_cache(&self) -> PathBuf {
        self.layout.debs()
    }

    fn scratch_dir(&self, prefix: &str) -> Result<PathBuf, StoreError> {
        if !is_safe_name(prefix) || prefix.len() > 64 {
            return Err(StoreError::BadScratchPrefix(prefix.to_string()));
        }
        self.held.forget_removed();
        let dir = self
            .layout
            .scratch()
            .join(format!("{prefix}.{}", unique_suffix()));
        self.held.create_locked(&dir)?;
        Ok(dir)
    }
}
