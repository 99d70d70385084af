//! Where everything lives under the store root (see the crate docs for the picture).

use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::{LayerId, StoreError};

/// Length of the id prefix naming a short link in `l/`.
pub(crate) const SHORT_LEN: usize = 16;

/// Paths of one store.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// Creates every top-level directory that is missing.
    pub fn create(&self) -> Result<(), StoreError> {
        for dir in [
            self.root.clone(),
            self.result(),
            self.result_tmp(),
            self.links(),
            self.caches(),
            self.cache_tmp(),
            self.locks(),
            self.debs(),
            self.scratch(),
            self.trash(),
            self.names(),
        ] {
            std::fs::create_dir_all(&dir).at(&dir)?;
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn result(&self) -> PathBuf {
        self.root.join("result")
    }
    pub fn result_tmp(&self) -> PathBuf {
        self.root.join("result-tmp")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("l")
    }
    pub fn caches(&self) -> PathBuf {
        self.root.join("cache")
    }
    pub fn cache_tmp(&self) -> PathBuf {
        self.root.join("cache-tmp")
    }
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }
    pub fn debs(&self) -> PathBuf {
        self.root.join("debs")
    }
    /// Scratch directories handed out by `scratch_dir`.
    pub fn scratch(&self) -> PathBuf {
        self.root.join("tmp")
    }
    /// Trees being deleted: renamed here first so no half-deleted tree is ever visible.
    pub fn trash(&self) -> PathBuf {
        self.root.join("trash")
    }
    /// Layer names: `names/<NAME>` symlinks to `../result/<id>`.
    pub fn names(&self) -> PathBuf {
        self.root.join("names")
    }
    pub fn index(&self) -> PathBuf {
        self.root.join("index.sqlite")
    }

    pub fn layer_dir(&self, id: &LayerId) -> PathBuf {
        self.result().join(id.as_str())
    }
    pub fn meta_file(&self, id: &LayerId) -> PathBuf {
        self.layer_dir(id).join("meta.json")
    }
    pub fn tmp_dir(&self, id: &LayerId) -> PathBuf {
        self.result_tmp().join(id.as_str())
    }
    pub fn short_link(&self, id: &LayerId) -> PathBuf {
        self.links().join(short_name(id))
    }
    pub fn step_lock(&self, id: &LayerId) -> PathBuf {
        self.locks().join(format!("{}.lock", id.as_str()))
    }
    pub fn pin_lock(&self, id: &LayerId) -> PathBuf {
        self.locks().join(format!("{}.pin", id.as_str()))
    }
    /// Serialises index reconciliation with deletions (held briefly).
    pub fn maintenance_lock(&self) -> PathBuf {
        self.locks().join("maintenance.lock")
    }
    pub fn cache_dir(&self, name: &str) -> PathBuf {
        self.caches().join(name)
    }
    pub fn cache_lock(&self, name: &str) -> PathBuf {
        self.locks().join(format!("cache.{name}.lock"))
    }
}

/// The name of a layer's short link.
pub(crate) fn short_name(id: &LayerId) -> &str {
    &id.as_str()[..SHORT_LEN]
}

/// The target of a layer's short link, relative to `l/`.
pub(crate) fn short_target(id: &LayerId) -> PathBuf {
    Path::new("..")
        .join("result")
        .join(id.as_str())
        .join("rootfs")
}

/// A name no other process or thread will pick: pid, time and a counter.
pub(crate) fn unique_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{nanos:x}-{n}", std::process::id())
}

/// True for names made of letters, digits, `-`, `_` and `.`, other than `.` and `..`.
pub(crate) fn is_safe_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
