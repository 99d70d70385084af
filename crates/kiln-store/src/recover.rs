//! Crash recovery, run at every open. The filesystem is the truth:
//! - temporaries (`result-tmp/<id>`, `cache-tmp/*`, `tmp/*`) whose owner died are
//!   removed; a live owner holds a flock on them (the step lock for `result-tmp/<id>`,
//!   the directory itself for the others), so only those we can lock are touched;
//! - `trash/` is emptied, and names a crashed `set_name` staged are removed;
//! - the index is reconciled with `result/`.

use std::fmt;
use std::path::PathBuf;

use crate::fsutil::{entry_names, move_to_trash, remove_tree};
use crate::layers::OnDisk;
use crate::lock::{self, Mode, Wait};
use crate::{cache, FsStore, LayerId, StoreError};

/// What an open found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Temporaries of builds that died, removed.
    pub purged: Vec<PathBuf>,
    /// Temporaries left alone because their build is still running.
    pub in_use: Vec<PathBuf>,
    /// Layers found in result/ without an index row, indexed from their meta.json.
    pub reindexed: Vec<LayerId>,
    /// Index rows whose result/ directory is gone, dropped.
    pub dropped_rows: Vec<String>,
    /// result/ entries without a valid meta.json, deleted (names and reasons).
    pub quarantined: Vec<(String, String)>,
}

impl Recovery {
    /// True when nothing needed repair (live temporaries are not repairs).
    pub fn is_empty(&self) -> bool {
        self.purged.is_empty()
            && self.reindexed.is_empty()
            && self.dropped_rows.is_empty()
            && self.quarantined.is_empty()
    }
}

impl fmt::Display for Recovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} stale temporaries removed, {} layers re-indexed, {} index rows dropped, {} broken layers deleted",
            self.purged.len(),
            self.reindexed.len(),
            self.dropped_rows.len(),
            self.quarantined.len()
        )?;
        for (name, why) in &self.quarantined {
            write!(f, "; deleted result/{name}: {why}")?;
        }
        Ok(())
    }
}

impl FsStore {
    /// Purges dead temporaries and reconciles the index with result/ (what open does).
    pub(crate) fn recover(&self) -> Result<Recovery, StoreError> {
        let mut report = Recovery::default();
        let (purged, in_use) = self.purge_temporaries()?;
        report.purged = purged;
        report.in_use = in_use;
        cache::tidy_all(&self.layout)?;
        self.tidy_names()?;
        let guard = self.maintenance_lock()?;
        let trashed = self.reconcile(&mut report)?;
        self.drop_dangling_links()?;
        drop(guard);
        for path in trashed {
            remove_tree(&path)?;
        }
        self.empty_trash()?;
        Ok(report)
    }

    /// Removes the temporaries of dead builds; returns (removed, left alone).
    pub(crate) fn purge_temporaries(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>), StoreError> {
        let mut purged = Vec::new();
        let mut in_use = Vec::new();
        let tmp_root = self.layout.result_tmp();
        for name in entry_names(&tmp_root)? {
            let dir = tmp_root.join(&name);
            let Ok(id) = LayerId::parse(&name) else {
                // Not something kiln makes; nothing can be using it.
                remove_tree(&dir)?;
                purged.push(dir);
                continue;
            };
            let lock_path = self.layout.step_lock(&id);
            match lock::lock_file(&lock_path, Mode::Exclusive, Wait::NoBlock)? {
                Some(file) => {
                    remove_tree(&dir)?;
                    purged.push(dir);
                    lock::remove_lock_file(&lock_path, file);
                }
                None => in_use.push(dir),
            }
        }
        for root in [self.layout.cache_tmp(), self.layout.scratch()] {
            for name in entry_names(&root)? {
                let dir = root.join(&name);
                match lock::try_lock_dir(&dir)? {
                    Some(_held_while_removing) => {
                        remove_tree(&dir)?;
                        purged.push(dir);
                    }
                    None if dir.exists() => in_use.push(dir),
                    None => {}
                }
            }
        }
        Ok((purged, in_use))
    }

    /// Makes the index agree with result/; returns quarantined trees to remove.
    fn reconcile(&self, report: &mut Recovery) -> Result<Vec<PathBuf>, StoreError> {
        let result = self.layout.result();
        let on_disk = entry_names(&result)?;
        let mut trashed = Vec::new();
        let indexed: std::collections::HashSet<String> = self.index.ids()?.into_iter().collect();
        for name in &on_disk {
            let problem = match LayerId::parse(name) {
                Err(e) => Some(e),
                Ok(id) => match self.inspect(&id)? {
                    OnDisk::Valid(meta) => {
                        if indexed.contains(name) {
                            self.ensure_short_link(&id)?;
                        } else {
                            self.index_from_disk(&meta)?;
                            report.reindexed.push(id);
                        }
                        None
                    }
                    OnDisk::Invalid(why) => Some(why),
                    OnDisk::Missing => None, // vanished meanwhile
                },
            };
            if let Some(why) = problem {
                trashed.extend(move_to_trash(&result.join(name), &self.layout.trash())?);
                if indexed.contains(name) {
                    self.index.remove(name)?;
                }
                report.quarantined.push((name.clone(), why));
            }
        }
        for row in indexed {
            if !result.join(&row).is_dir() {
                self.index.remove(&row)?;
                report.dropped_rows.push(row);
            }
        }
        Ok(trashed)
    }

    /// Removes short links whose layer is gone.
    fn drop_dangling_links(&self) -> Result<(), StoreError> {
        let links = self.layout.links();
        for name in entry_names(&links)? {
            let link = links.join(&name);
            if !link.exists() {
                remove_tree(&link)?;
            }
        }
        Ok(())
    }

    /// Removes everything in trash/ (only ever things already made invisible).
    fn empty_trash(&self) -> Result<(), StoreError> {
        let trash = self.layout.trash();
        for name in entry_names(&trash)? {
            remove_tree(&trash.join(name))?;
        }
        Ok(())
    }
}
