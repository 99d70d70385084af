//! Deleting layers: `delete`, `prune`, `clean`. Named layers (`names/`) are kept by
//! `prune` and refused by `delete`; `clean` removes the names with everything else.
//!
//! A layer disappears by renaming `result/<id>` into `trash/` (atomic: readers see the
//! whole layer or nothing), then its row and short link go, and only then is the tree
//! removed. Children always go before their parents, so a crash mid-way never leaves a
//! layer whose parent is missing. Deletions hold the maintenance lock so the index
//! reconciliation at open never re-adds a row for a layer being deleted.

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use crate::fsutil::{entry_names, move_to_trash, remove_tree};
use crate::lock::{self, Mode, Wait};
use crate::{FsStore, LayerId, StoreError};

impl FsStore {
    pub(crate) fn maintenance_lock(&self) -> Result<File, StoreError> {
        let path = self.layout.maintenance_lock();
        lock::lock_file(&path, Mode::Exclusive, Wait::Block)?.ok_or_else(|| {
            StoreError::Other(format!(
                "{}: blocking lock returned without the lock",
                path.display()
            ))
        })
    }

    pub(crate) fn delete_subtree(&self, id: &LayerId) -> Result<Vec<LayerId>, StoreError> {
        let guard = self.maintenance_lock()?;
        if self.get_checked(id)?.is_none() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let victims = self.index.subtree_leaves_first(id)?;
        let victims: Vec<LayerId> = victims
            .iter()
            .map(|v| parse_row_id(v))
            .collect::<Result<_, _>>()?;
        self.refuse_named(&victims)?;
        let mut deleted = Vec::new();
        let mut trashed = Vec::new();
        for victim in victims {
            trashed.extend(self.unpublish(&victim)?);
            deleted.push(victim);
        }
        drop(guard);
        remove_trees(&trashed)?;
        Ok(deleted)
    }

    pub(crate) fn prune_lru(&self, keep_bytes: u64) -> Result<Vec<LayerId>, StoreError> {
        let guard = self.maintenance_lock()?;
        let mut deleted = Vec::new();
        let mut trashed = Vec::new();
        // Named layers stay, and with them every layer below them (never a leaf).
        let mut in_use: HashSet<String> = self
            .names()?
            .into_iter()
            .map(|n| n.id.as_str().to_string())
            .collect();
        while self.index.total_size()? > keep_bytes {
            // Deleting a leaf may turn its parent into one, possibly older than the rest:
            // ask again each time.
            let leaves = self.index.leaves_lru()?;
            let mut progressed = false;
            for leaf in &leaves {
                if in_use.contains(leaf) {
                    continue;
                }
                let id = parse_row_id(leaf)?;
                match self.lock_unused(&id)? {
                    Some(locks) => {
                        trashed.extend(self.unpublish(&id)?);
                        for (path, file) in locks {
                            lock::remove_lock_file(&path, file);
                        }
                        deleted.push(id);
                        progressed = true;
                        break;
                    }
                    None => {
                        in_use.insert(leaf.clone());
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        drop(guard);
        remove_trees(&trashed)?;
        Ok(deleted)
    }

    /// Fails when a name points at one of `victims`, naming them.
    fn refuse_named(&self, victims: &[LayerId]) -> Result<(), StoreError> {
        let names = self.names()?;
        let Some(kept) = victims.iter().find(|v| names.iter().any(|n| &n.id == *v)) else {
            return Ok(());
        };
        Err(StoreError::Named {
            id: kept.to_string(),
            names: self.names_of(kept)?.join(", "),
        })
    }

    /// The step lock and the pin of `id` exclusively, if no build holds either.
    fn lock_unused(&self, id: &LayerId) -> Result<Option<Vec<(PathBuf, File)>>, StoreError> {
        let mut held = Vec::new();
        for path in [self.layout.step_lock(id), self.layout.pin_lock(id)] {
            match lock::lock_file(&path, Mode::Exclusive, Wait::NoBlock)? {
                Some(file) => held.push((path, file)),
                None => return Ok(None),
            }
        }
        Ok(Some(held))
    }

    pub(crate) fn clean_everything(&self, all: bool) -> Result<(), StoreError> {
        let guard = self.maintenance_lock()?;
        let mut trashed = Vec::new();
        // Leaves first, round after round, so no layer is ever left without its parent.
        loop {
            let leaves = self.index.leaves_lru()?;
            if leaves.is_empty() {
                break;
            }
            for leaf in leaves {
                trashed.extend(self.unpublish(&parse_row_id(&leaf)?)?);
            }
        }
        // Whatever is left in result/ was never indexed.
        for name in entry_names(&self.layout.result())? {
            trashed.extend(move_to_trash(
                &self.layout.result().join(name),
                &self.layout.trash(),
            )?);
        }
        for name in entry_names(&self.layout.links())? {
            remove_tree(&self.layout.links().join(name))?;
        }
        // Their layers are gone: so are the names.
        for name in entry_names(&self.layout.names())? {
            remove_tree(&self.layout.names().join(name))?;
        }
        for name in entry_names(&self.layout.caches())? {
            let lock =
                lock::lock_file(&self.layout.cache_lock(&name), Mode::Exclusive, Wait::Block)?;
            trashed.extend(move_to_trash(
                &self.layout.caches().join(&name),
                &self.layout.trash(),
            )?);
            drop(lock);
        }
        if all {
            trashed.extend(move_to_trash(&self.layout.debs(), &self.layout.trash())?);
        }
        drop(guard);
        remove_trees(&trashed)?;
        // Temporaries of live builds stay: removing them would break those builds.
        self.purge_temporaries()?;
        self.layout.create()
    }

    /// Makes `id` invisible: moves its tree to the trash (returned, to be removed
    /// outside the maintenance lock), drops its short link and its row.
    fn unpublish(&self, id: &LayerId) -> Result<Option<PathBuf>, StoreError> {
        let trashed = move_to_trash(&self.layout.layer_dir(id), &self.layout.trash())?;
        self.remove_short_link(id)?;
        self.index.remove(id.as_str())?;
        Ok(trashed)
    }
}

fn parse_row_id(s: &str) -> Result<LayerId, StoreError> {
    LayerId::parse(s).map_err(|e| StoreError::Corrupt {
        id: s.to_string(),
        message: format!("index row with a bad id ({e}): delete index.sqlite to rebuild it"),
    })
}

fn remove_trees(paths: &[PathBuf]) -> Result<(), StoreError> {
    for path in paths {
        remove_tree(path)?;
    }
    Ok(())
}
