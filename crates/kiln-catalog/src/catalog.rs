//! A catalogue on disk: the local one (`STORE/catalog`) and the marketplace server's data
//! directory share this layout.
//!
//! ```text
//! DIR/entries/<id>/metadata.json          canonical metadata, exactly the signed bytes
//! DIR/entries/<id>/metadata.json.minisig  its detached minisign signature
//! DIR/entries/<id>/<file>                 the image (its metadata's `file` name), if held
//! DIR/partial/<id>.part                   a download in progress (resumable)
//! DIR/tmp/PID-…                           entries being assembled; removed at open when PID is dead
//! ```
//!
//! An entry becomes visible only by the rename of a complete directory from `tmp/` into
//! `entries/`, and is replaced (new metadata after a deprecation) by an atomic exchange
//! of two directories, so a reader sees the old entry or the new one, never a mix, and
//! a killed writer leaves only `tmp/` litter that the next open removes.

use crate::metadata::{is_hex, Metadata};
use crate::CatalogError;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Name of the metadata file in an entry.
pub const METADATA_FILE: &str = "metadata.json";
/// Name of the signature file in an entry.
pub const SIGNATURE_FILE: &str = "metadata.json.minisig";

/// A catalogue directory.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub dir: PathBuf,
}

/// One entry as read from disk.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub metadata: Metadata,
    /// The metadata file's bytes (what the signature covers).
    pub metadata_bytes: Vec<u8>,
    pub signature: String,
    /// The image file, when the catalogue holds it.
    pub image: Option<PathBuf>,
}

/// Where the image of a new entry comes from.
pub enum ImageSource<'a> {
    /// Copy this file (the original stays).
    Copy(&'a Path),
    /// Move this file in (it must be on the catalogue's filesystem: a finished download).
    Move(&'a Path),
    /// Metadata only.
    None,
}

impl Catalog {
    /// Opens (creating) a catalogue and removes what interrupted writers left in `tmp/`.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let catalog = Catalog {
            dir: dir.to_path_buf(),
        };
        for sub in ["entries", "partial", "tmp"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).map_err(|e| CatalogError::io(&path, e))?;
        }
        let tmp = catalog.tmp_dir();
        for entry in fs::read_dir(&tmp).map_err(|e| CatalogError::io(&tmp, e))? {
            let entry = entry.map_err(|e| CatalogError::io(&tmp, e))?;
            if owner_alive(&entry.file_name().to_string_lossy()) {
                continue;
            }
            let path = entry.path();
            remove_any(&path).map_err(|e| CatalogError::io(&path, e))?;
        }
        Ok(catalog)
    }

    /// A name for a temporary file or directory in `tmp/`: it starts with this process's
    /// id, so that [`Catalog::open`] removes only what dead processes left.
    pub fn tmp_name(&self, what: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.tmp_dir().join(format!(
            "{}-{what}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ))
    }

    /// Opens a catalogue without cleaning up (for a server that cleans once at start and
    /// must not remove a concurrent upload's temporary files).
    pub fn open_existing(dir: &Path) -> Catalog {
        Catalog {
            dir: dir.to_path_buf(),
        }
    }

    pub fn entries_dir(&self) -> PathBuf {
        self.dir.join("entries")
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    /// Where a resumable download of `id` is kept.
    pub fn partial_path(&self, id: &str) -> PathBuf {
        self.dir.join("partial").join(format!("{id}.part"))
    }

    /// Every readable entry, by creation time then title. An entry that cannot be read is
    /// reported in the second list (path and why) rather than hidden.
    pub fn list(&self) -> Result<(Vec<Entry>, Vec<String>), CatalogError> {
        let dir = self.entries_dir();
        let mut entries = Vec::new();
        let mut broken = Vec::new();
        let listing = match fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((vec![], vec![])),
            Err(e) => return Err(CatalogError::io(&dir, e)),
        };
        for item in listing {
            let item = item.map_err(|e| CatalogError::io(&dir, e))?;
            let name = item.file_name();
            let Some(id) = name.to_str().filter(|n| is_hex(n, 64)) else {
                continue;
            };
            match self.read(id) {
                Ok(entry) => entries.push(entry),
                Err(e) => broken.push(format!("{}: {e}", item.path().display())),
            }
        }
        entries.sort_by(|a, b| {
            (&a.metadata.created, &a.metadata.title).cmp(&(&b.metadata.created, &b.metadata.title))
        });
        Ok((entries, broken))
    }

    /// Reads entry `id` (a full id).
    pub fn read(&self, id: &str) -> Result<Entry, CatalogError> {
        if !is_hex(id, 64) {
            return Err(CatalogError::NotFound(format!(
                "{id:?} is not an image id (64 lowercase hex digits)"
            )));
        }
        let dir = self.entries_dir().join(id);
        let meta_path = dir.join(METADATA_FILE);
        let metadata_bytes = fs::read(&meta_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CatalogError::NotFound(format!(
                    "no image {id} in the catalogue {}",
                    self.dir.display()
                ))
            } else {
                CatalogError::io(&meta_path, e)
            }
        })?;
        let metadata = Metadata::parse(&metadata_bytes)
            .map_err(|e| CatalogError::Image(format!("{}: {e}", meta_path.display())))?;
        if metadata.id != id {
            return Err(CatalogError::Image(format!(
                "{}: holds the metadata of {}, not of {id}",
                meta_path.display(),
                metadata.id
            )));
        }
        let sig_path = dir.join(SIGNATURE_FILE);
        let signature =
            fs::read_to_string(&sig_path).map_err(|e| CatalogError::io(&sig_path, e))?;
        let image = dir.join(&metadata.file);
        let image = image.is_file().then_some(image);
        Ok(Entry {
            dir,
            metadata,
            metadata_bytes,
            signature,
            image,
        })
    }

    /// Finds the one entry `reference` names: a full id, an id prefix (8+ hex digits) or a
    /// short id.
    pub fn resolve(&self, reference: &str) -> Result<Entry, CatalogError> {
        let reference = reference.trim();
        if is_hex(reference, 64) {
            return self.read(reference);
        }
        let (entries, _) = self.list()?;
        let mut found: Vec<Entry> = entries
            .into_iter()
            .filter(|e| e.metadata.is_named_by(reference))
            .collect();
        match found.len() {
            0 => Err(CatalogError::NotFound(format!(
                "no image {reference:?} in the catalogue {} (give an id, an id prefix of 8 \
                 or more hex digits, or a short id; `kiln image ls` lists them)",
                self.dir.display()
            ))),
            1 => Ok(found.remove(0)),
            n => Err(CatalogError::Usage(format!(
                "{reference:?} names {n} images ({}); give more of the id",
                found
                    .iter()
                    .map(|e| e.metadata.short_id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
        }
    }

    /// Adds an entry, or replaces the metadata of an existing one (keeping its image when
    /// `image` is `None`). The metadata bytes must be canonical metadata of `id`.
    pub fn put(
        &self,
        metadata: &Metadata,
        metadata_bytes: &[u8],
        signature: &str,
        image: ImageSource<'_>,
    ) -> Result<Entry, CatalogError> {
        let id = metadata.id.as_str();
        let stage = tempfile::Builder::new()
            .prefix(&format!("{}-put-{}-", std::process::id(), &id[..16]))
            .tempdir_in(self.tmp_dir())
            .map_err(|e| CatalogError::io(&self.tmp_dir(), e))?;
        write_synced(&stage.path().join(METADATA_FILE), metadata_bytes)?;
        write_synced(&stage.path().join(SIGNATURE_FILE), signature.as_bytes())?;
        let staged_image = stage.path().join(&metadata.file);
        let target = self.entries_dir().join(id);
        match image {
            ImageSource::Copy(src) => {
                fs::copy(src, &staged_image).map_err(|e| CatalogError::io(src, e))?;
            }
            ImageSource::Move(src) => {
                fs::rename(src, &staged_image).map_err(|e| CatalogError::io(src, e))?;
            }
            ImageSource::None => {
                // Keep the image the entry already holds (a hard link: same filesystem).
                if let Ok(old) = self.read(id) {
                    if let Some(old_image) = &old.image {
                        fs::hard_link(old_image, &staged_image)
                            .map_err(|e| CatalogError::io(old_image, e))?;
                    }
                }
            }
        }
        sync_dir(stage.path())?;
        let staged = stage.keep();
        let swapped = if target.exists() {
            exchange(&staged, &target).map(|()| true)
        } else {
            fs::rename(&staged, &target).map(|()| false)
        };
        match swapped {
            Ok(true) => {
                // `staged` now holds the old entry.
                let _ = fs::remove_dir_all(&staged);
            }
            Ok(false) => {}
            Err(e) => {
                let _ = fs::remove_dir_all(&staged);
                return Err(CatalogError::io(&target, e));
            }
        }
        sync_dir(&self.entries_dir())?;
        self.read(id)
    }

    /// Removes entry `id`: renamed away first (so it disappears at once), then deleted.
    pub fn remove(&self, id: &str) -> Result<(), CatalogError> {
        let target = self.entries_dir().join(id);
        if !is_hex(id, 64) || !target.is_dir() {
            return Err(CatalogError::NotFound(format!(
                "no image {id} in the catalogue {}",
                self.dir.display()
            )));
        }
        let gone = self.tmp_name(&format!("rm-{}", &id[..16]));
        fs::rename(&target, &gone).map_err(|e| CatalogError::io(&target, e))?;
        fs::remove_dir_all(&gone).map_err(|e| CatalogError::io(&gone, e))
    }
}

/// Exchanges two directories atomically (renameat2 RENAME_EXCHANGE).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    nix::fcntl::renameat2(None, a, None, b, nix::fcntl::RenameFlags::RENAME_EXCHANGE)
        .map_err(std::io::Error::from)
}

pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), CatalogError> {
    let mut f = fs::File::create(path).map_err(|e| CatalogError::io(path, e))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| CatalogError::io(path, e))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), CatalogError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CatalogError::io(dir, e))
}

/// Whether the process whose id starts `name` (`PID-…`) is running. Names without one
/// belong to nobody.
fn owner_alive(name: &str) -> bool {
    let Some(pid) = name.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
        return false;
    };
    if pid <= 0 || pid as u32 == std::process::id() {
        return false;
    }
    // Signal 0 checks existence; EPERM means it exists but is not ours.
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_removes_only_what_dead_processes_left() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let tmp = catalog.tmp_dir();
        // pid 1 is always alive; 4194304 is above Linux's pid_max limit, so never alive.
        fs::create_dir(tmp.join("1-put-live")).unwrap();
        fs::write(tmp.join("4194304-upload-dead"), b"x").unwrap();
        fs::write(tmp.join("stray"), b"x").unwrap();
        Catalog::open(dir.path()).unwrap();
        let left: Vec<String> = fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["1-put-live"]);
    }
}
