//! Layer names (`kiln shell --save NAME`): `names/<NAME>` is a symlink to `../result/<id>`.
//!
//! Each name is one symlink, so setting one is atomic: a symlink is made under a staged
//! name (`names/.new.*`, which no valid name can be) and renamed over the old one. A crash
//! leaves at most a staged link, removed at the next open. Names are set and removed under
//! the maintenance lock, as deletions run, so `prune` and `delete` see every name that
//! points at a layer they consider and leave named layers alone.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::fsutil::{entry_names, fsync_dir, remove_tree};
use crate::layout::unique_suffix;
use crate::{FsStore, LayerId, StoreError};

/// Prefix of symlinks being staged in `names/`.
const STAGED: &str = ".new.";

/// A name and the layer it points at.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LayerName {
    pub name: String,
    pub id: LayerId,
}

/// The prefix of a registered VM base's layer name: `kiln base import|build NAME`
/// names its disk layer `vm:NAME`, which `(from vm:NAME)` resolves.
pub const VM_BASE_PREFIX: &str = "vm:";

/// Checks a layer name: 1 to 128 letters, digits, `-`, `_` and `.`, starting with a
/// letter or digit, and not 64 hex digits (which would read as a layer id); or such a
/// name after [`VM_BASE_PREFIX`] (a VM base's).
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let name = match name.strip_prefix(VM_BASE_PREFIX) {
        Some(base) if !base.is_empty() => {
            return check_plain_name(base).map_err(|_| StoreError::BadLayerName(name.to_string()))
        }
        _ => name,
    };
    check_plain_name(name)
}

fn check_plain_name(name: &str) -> Result<(), StoreError> {
    let first_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric());
    let chars_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if first_ok && chars_ok && name.len() <= 128 && LayerId::parse(name).is_err() {
        Ok(())
    } else {
        Err(StoreError::BadLayerName(name.to_string()))
    }
}

impl FsStore {
    /// Points `name` at the committed layer `id`, replacing what it pointed at before
    /// (returned). Atomic: readers see the old or the new target, never neither.
    pub fn set_name(&self, name: &str, id: &LayerId) -> Result<Option<LayerId>, StoreError> {
        check_name(name)?;
        let _guard = self.maintenance_lock()?;
        if self.get_checked(id)?.is_none() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        let previous = self.lookup_name(name)?;
        let dir = self.layout.names();
        let staged = dir.join(format!("{STAGED}{}", unique_suffix()));
        std::os::unix::fs::symlink(name_target(id), &staged).at(&staged)?;
        std::fs::rename(&staged, dir.join(name)).at(&staged)?;
        fsync_dir(&dir)?;
        Ok(previous)
    }

    /// The layer `name` points at, if the name exists (the layer itself may have been
    /// removed by hand since; [`crate::Store::get`] tells).
    pub fn lookup_name(&self, name: &str) -> Result<Option<LayerId>, StoreError> {
        check_name(name)?;
        read_name(&self.layout.names().join(name))
    }

    /// Every name, sorted.
    pub fn names(&self) -> Result<Vec<LayerName>, StoreError> {
        let dir = self.layout.names();
        let mut names = Vec::new();
        for name in entry_names(&dir)? {
            if name.starts_with(STAGED) {
                continue;
            }
            if let Some(id) = read_name(&dir.join(&name))? {
                names.push(LayerName { name, id });
            }
        }
        Ok(names)
    }

    /// Removes `name`; returns the layer it pointed at, or `None` if there was no such name.
    pub fn remove_name(&self, name: &str) -> Result<Option<LayerId>, StoreError> {
        check_name(name)?;
        let _guard = self.maintenance_lock()?;
        let path = self.layout.names().join(name);
        let previous = read_name(&path)?;
        if previous.is_some() {
            remove_tree(&path)?;
            fsync_dir(&self.layout.names())?;
        }
        Ok(previous)
    }

    /// Names pointing at `id` (the caller holds the maintenance lock when it acts on it).
    pub(crate) fn names_of(&self, id: &LayerId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .names()?
            .into_iter()
            .filter(|n| &n.id == id)
            .map(|n| n.name)
            .collect())
    }

    /// Removes symlinks a crashed `set_name` staged (at open).
    pub(crate) fn tidy_names(&self) -> Result<(), StoreError> {
        let dir = self.layout.names();
        for name in entry_names(&dir)? {
            if name.starts_with(STAGED) {
                remove_tree(&dir.join(name))?;
            }
        }
        Ok(())
    }
}

fn name_target(id: &LayerId) -> PathBuf {
    Path::new("..").join("result").join(id.as_str())
}

/// The id a name's symlink points at; `None` when there is no such name.
fn read_name(path: &Path) -> Result<Option<LayerId>, StoreError> {
    let target = match std::fs::read_link(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    let id = target
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| LayerId::parse(n).ok());
    id.map(Some).ok_or_else(|| {
        StoreError::Other(format!(
            "{}: not a layer name kiln wrote (it points at {}); remove it",
            path.display(),
            target.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::check_name;

    #[test]
    fn names_are_words_that_cannot_read_as_ids() {
        for good in ["dev", "my-tools_2", "a.b", "1x"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        let id = "a".repeat(64);
        for bad in ["", ".hidden", "-x", "a/b", "a b", "é", id.as_str()] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert!(check_name(&"n".repeat(129)).is_err());
        assert!(check_name("vm:bookworm").is_ok());
        for bad in ["vm:", "vm:a:b", "vm:.x", "xm:a"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
