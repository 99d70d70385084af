//! `flock(2)` locks: per-step build locks, pins, cache locks and the directory locks
//! protecting temporaries. They are released by the kernel when the holder dies, which is
//! what lets the next open tell a crashed build's leftovers from a live build's.
//!
//! Lock files may be deleted (by whoever holds them exclusively), so every locker checks,
//! after locking, that the file it locked is still the one at the path; otherwise it retries.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::IoContext;
use crate::StoreError;

/// Exclusive or shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Exclusive,
    Shared,
}

/// Whether to wait for a conflicting holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Block,
    NoBlock,
}

/// `flock` on an open file; `Ok(false)` when `NoBlock` and someone else holds it.
fn flock(file: &File, mode: Mode, wait: Wait) -> io::Result<bool> {
    let mut op = match mode {
        Mode::Exclusive => libc::LOCK_EX,
        Mode::Shared => libc::LOCK_SH,
    };
    if wait == Wait::NoBlock {
        op |= libc::LOCK_NB;
    }
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if wait == Wait::NoBlock => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Locks the lock file at `path` (creating it and its directory), or returns `None` when
/// `NoBlock` and it is held.
pub(crate) fn lock_file(path: &Path, mode: Mode, wait: Wait) -> Result<Option<File>, StoreError> {
    loop {
        let file = open_lock_file(path)?;
        if !flock(&file, mode, wait).at(path)? {
            return Ok(None);
        }
        if still_at_path(&file, path).at(path)? {
            return Ok(Some(file));
        }
        // Someone deleted the file between our open and our lock: lock the new one.
    }
}

fn open_lock_file(path: &Path) -> Result<File, StoreError> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).at(dir)?;
            }
            open().at(path)
        }
        other => other.at(path),
    }
}

fn still_at_path(file: &File, path: &Path) -> io::Result<bool> {
    let held = file.metadata()?;
    match std::fs::metadata(path) {
        Ok(now) => Ok(now.ino() == held.ino() && now.dev() == held.dev()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes a lock file whose exclusive lock `file` holds, then releases it. Waiters on
/// the old file notice it is gone and lock a fresh one.
pub(crate) fn remove_lock_file(path: &Path, file: File) {
    if let Err(e) = std::fs::remove_file(path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::debug!("cannot remove lock file {}: {e}", path.display());
        }
    }
    drop(file);
}

/// Locks a directory itself (directories are never recreated under the same name, so no
/// path check is needed). `None` when someone else holds it, or it vanished.
pub(crate) fn try_lock_dir(dir: &Path) -> Result<Option<File>, StoreError> {
    let file = match File::open(dir) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    Ok(flock(&file, Mode::Exclusive, Wait::NoBlock)
        .at(dir)?
        .then_some(file))
}

/// Directory locks this store holds for temporaries it handed out (cache working copies,
/// scratch directories); they live as long as the store or until released.
#[derive(Debug, Default)]
pub(crate) struct HeldDirs {
    held: Mutex<HashMap<PathBuf, File>>,
}

impl HeldDirs {
    /// Creates `dir` (which must not exist) and locks it.
    pub fn create_locked(&self, dir: &Path) -> Result<(), StoreError> {
        std::fs::create_dir(dir).at(dir)?;
        let file = try_lock_dir(dir)?.ok_or_else(|| {
            StoreError::Other(format!(
                "{}: freshly created directory is locked",
                dir.display()
            ))
        })?;
        self.map().insert(dir.to_path_buf(), file);
        Ok(())
    }

    /// Drops the lock of `dir`, if held.
    pub fn release(&self, dir: &Path) {
        self.map().remove(dir);
    }

    /// Drops the locks of directories that no longer exist (removed by their users).
    pub fn forget_removed(&self) {
        self.map().retain(|dir, _| dir.exists());
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, File>> {
        // A panic while holding the map leaves it consistent: every entry is a whole pair.
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
