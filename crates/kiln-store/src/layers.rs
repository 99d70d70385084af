//! Building, committing and reading layers.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::fs_store::Durability;
use crate::fsutil::{
    self, fsync_dir, measure_tree, remove_tree, rename_noreplace, write_synced, Flush,
};
use crate::layout::{short_target, unique_suffix, unix_now};
use crate::{
    BaseConfig, BasePin, FsStore, LayerId, LayerInfo, LayerMeta, StoreError, TmpLayer, DISK_FILE,
};

/// A chain longer than this must contain a cycle (a corrupted meta.json).
const MAX_CHAIN: usize = 100_000;

/// What `result/<id>` holds.
pub(crate) enum OnDisk {
    Missing,
    /// Present but unusable; the message says why.
    Invalid(String),
    /// Boxed: a meta (with its config and pin) is much larger than the other variants.
    Valid(Box<LayerMeta>),
}

impl FsStore {
    pub(crate) fn begin_layer(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        flat: bool,
    ) -> Result<TmpLayer, StoreError> {
        match parent {
            None if !flat => {
                return Err(StoreError::Other(format!(
                    "layer {id}: a layer without a parent must be flat (a full tree)"
                )))
            }
            Some(p) if self.get_checked(p)?.is_none() => {
                return Err(StoreError::NotFound(p.to_string()))
            }
            _ => {}
        }
        let dir = self.layout.tmp_dir(id);
        remove_tree(&dir)?;
        let tmp = TmpLayer {
            id: id.clone(),
            parent: parent.cloned(),
            flat,
            rootfs: dir.join("rootfs"),
            work: dir.join("work"),
            log: dir.join("log"),
            dir,
        };
        std::fs::create_dir(&tmp.dir).at(&tmp.dir)?;
        std::fs::create_dir(&tmp.rootfs).at(&tmp.rootfs)?;
        std::fs::create_dir(&tmp.work).at(&tmp.work)?;
        std::fs::File::create(&tmp.log).at(&tmp.log)?;
        Ok(tmp)
    }

    /// Refuses a `TmpLayer` that does not describe this store's temp dir for its id
    /// (its fields are public, so it could have been built by hand).
    pub(crate) fn check_tmp(&self, tmp: &TmpLayer) -> Result<(), StoreError> {
        if tmp.dir == self.layout.tmp_dir(&tmp.id) {
            Ok(())
        } else {
            Err(StoreError::Other(format!(
                "layer {}: {} is not this store's temporary directory for it",
                tmp.id,
                tmp.dir.display()
            )))
        }
    }

    pub(crate) fn commit_layer(
        &self,
        tmp: TmpLayer,
        description: &str,
        config: Option<BaseConfig>,
        pin: Option<BasePin>,
        created: Option<i64>,
    ) -> Result<LayerInfo, StoreError> {
        self.check_tmp(&tmp)?;
        let rootfs = tmp.dir.join("rootfs");
        if !rootfs.is_dir() {
            return Err(StoreError::Corrupt {
                id: tmp.id.to_string(),
                message: format!("{} is missing: nothing to commit", rootfs.display()),
            });
        }
        remove_tree(&tmp.dir.join("work"))?;
        let flush = if self.options.durability == Durability::Batch {
            Flush::Yes
        } else {
            Flush::No
        };
        let size = measure_tree(&rootfs, flush)? + measure_disk(&tmp.dir, flush)?;
        let disk = tmp.dir.join(DISK_FILE).is_file();
        let now = unix_now();
        let meta = LayerMeta {
            id: tmp.id.clone(),
            parent: tmp.parent.clone(),
            flat: tmp.flat,
            created: created.unwrap_or(now),
            description: description.to_string(),
            config,
            pin,
            disk,
        };
        let json = serde_json::to_vec_pretty(&meta)
            .map_err(|e| StoreError::Other(format!("encoding meta.json: {e}")))?;
        write_synced(&tmp.dir.join("meta.json"), &json)?;
        fsync_dir(&tmp.dir)?;
        let dest = self.layout.layer_dir(&tmp.id);
        match rename_noreplace(&tmp.dir, &dest) {
            Ok(()) => fsync_dir(&self.layout.result())?,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EEXIST) | Some(libc::ENOTEMPTY)) => {
                // Another process committed the same step first: its result is as good as ours.
                remove_tree(&tmp.dir)?;
                return self
                    .get_checked(&tmp.id)?
                    .ok_or_else(|| StoreError::NotFound(tmp.id.to_string()));
            }
            Err(e) => return Err(StoreError::io(&tmp.dir, e)),
        }
        self.ensure_short_link(&meta.id)?;
        self.index.upsert(&meta, size, now, true)?;
        self.index
            .get(&meta.id)?
            .ok_or_else(|| StoreError::NotFound(meta.id.to_string()))
    }

    /// The layer from the index, checked against the tree: a row whose directory is gone
    /// is dropped, a directory without a row is indexed.
    pub(crate) fn get_checked(&self, id: &LayerId) -> Result<Option<LayerInfo>, StoreError> {
        let dir = self.layout.layer_dir(id);
        if let Some(info) = self.index.get(id)? {
            if dir.is_dir() {
                return Ok(Some(info));
            }
            self.index.remove(id.as_str())?;
            return Ok(None);
        }
        match self.inspect(id)? {
            OnDisk::Valid(meta) => {
                self.index_from_disk(&meta)?;
                self.index.get(id)
            }
            OnDisk::Missing | OnDisk::Invalid(_) => Ok(None),
        }
    }

    /// Reads and validates `result/<id>/meta.json`.
    pub(crate) fn inspect(&self, id: &LayerId) -> Result<OnDisk, StoreError> {
        let path = self.layout.meta_file(id);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let present = self.layout.layer_dir(id).exists();
                return Ok(if present {
                    OnDisk::Invalid("meta.json is missing".into())
                } else {
                    OnDisk::Missing
                });
            }
            Err(e) => return Err(StoreError::io(path, e)),
        };
        let meta: LayerMeta = match serde_json::from_slice(&bytes) {
            Ok(m) => m,
            Err(e) => return Ok(OnDisk::Invalid(format!("meta.json is invalid: {e}"))),
        };
        if meta.id != *id {
            return Ok(OnDisk::Invalid(format!(
                "meta.json names layer {}",
                meta.id
            )));
        }
        if !self.layout.layer_dir(id).join("rootfs").is_dir() {
            return Ok(OnDisk::Invalid("rootfs/ is missing".into()));
        }
        Ok(OnDisk::Valid(Box::new(meta)))
    }

    /// Indexes a committed layer found on disk (its last use is taken to be its creation).
    pub(crate) fn index_from_disk(&self, meta: &LayerMeta) -> Result<(), StoreError> {
        let dir = self.layout.layer_dir(&meta.id);
        let size = measure_tree(&dir.join("rootfs"), Flush::No)? + measure_disk(&dir, Flush::No)?;
        self.ensure_short_link(&meta.id)?;
        self.index.upsert(meta, size, meta.created, false)
    }

    /// Ids from `id` down to the first flat layer, topmost first.
    pub(crate) fn chain_ids(&self, id: &LayerId) -> Result<Vec<LayerId>, StoreError> {
        let mut chain: Vec<LayerId> = Vec::new();
        let mut current = id.clone();
        loop {
            let Some(info) = self.get_checked(&current)? else {
                return Err(match chain.last() {
                    None => StoreError::NotFound(current.to_string()),
                    Some(child) => StoreError::Corrupt {
                        id: child.to_string(),
                        message: format!("its parent {current} is missing: delete the layer with `kiln rm {child}`"),
                    },
                });
            };
            chain.push(current.clone());
            if info.meta.flat {
                return Ok(chain);
            }
            current = match info.meta.parent {
                Some(parent) if chain.len() < MAX_CHAIN => parent,
                _ => {
                    return Err(StoreError::Corrupt {
                        id: current.to_string(),
                        message: "not flat, yet no flat layer below it: delete it with `kiln rm`"
                            .into(),
                    })
                }
            };
        }
    }

    /// `l/<16 hex>` for `id`, (re)created if missing.
    pub(crate) fn ensure_short_link(&self, id: &LayerId) -> Result<PathBuf, StoreError> {
        let link = self.layout.short_link(id);
        let target = short_target(id);
        match std::fs::read_link(&link) {
            Ok(existing) if existing == target => return Ok(link),
            Ok(existing) if short_link_is_live(&link, &existing) => {
                return Err(StoreError::Corrupt {
                    id: id.to_string(),
                    message: format!(
                        "short link {} already points to {} (16-digit prefix collision): \
                         delete one of the two layers",
                        link.display(),
                        existing.display()
                    ),
                })
            }
            Ok(_) => {} // dangling: a deleted layer with the same prefix; replace it
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(link, e)),
        }
        let staged = self
            .layout
            .links()
            .join(format!(".new.{}", unique_suffix()));
        std::os::unix::fs::symlink(&target, &staged).at(&staged)?;
        std::fs::rename(&staged, &link).at(&staged)?;
        Ok(link)
    }

    /// Removes `l/<16 hex>` if it points to `id`.
    pub(crate) fn remove_short_link(&self, id: &LayerId) -> Result<(), StoreError> {
        let link = self.layout.short_link(id);
        match std::fs::read_link(&link) {
            Ok(target) if target == short_target(id) => fsutil::remove_tree(&link),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(link, e)),
        }
    }
}

fn short_link_is_live(link: &Path, target: &Path) -> bool {
    link.parent().is_some_and(|dir| dir.join(target).exists())
}

/// Bytes a disk layer's [`DISK_FILE`] and `boot/` take (0 for tree layers), flushed with
/// `flush` like the rootfs.
fn measure_disk(dir: &Path, flush: Flush) -> Result<u64, StoreError> {
    let mut total = 0;
    if dir.join(DISK_FILE).is_file() {
        total += measure_tree(&dir.join(DISK_FILE), flush)?;
        if dir.join("boot").is_dir() {
            total += measure_tree(&dir.join("boot"), flush)?;
        }
    }
    Ok(total)
}
