//! Persistent `(cache …)` mounts.
//!
//! ```text
//! cache/<name>/current -> v<N>     symlink, replaced atomically by rename
//! cache/<name>/v<N>/               the current version; never written in place
//! cache-tmp/<name>.<unique>/       a lease's private working copy, locked while leased
//! locks/cache.<name>.lock          shared while copying a version, exclusive to switch
//! ```
//! Acquire copies the current version under a shared lock; a successful release renames
//! the working copy to `v<N+1>` and switches `current` under the exclusive lock, then
//! deletes the older versions. A crash leaves at worst an unused `v<M>` or working copy,
//! both removed later; `current` always names a complete version.

use std::io;
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::fsutil::{self, entry_names, fsync_dir, move_to_trash, remove_tree};
use crate::layout::{is_safe_name, unique_suffix, Layout};
use crate::lock::{self, HeldDirs, Mode, Wait};
use crate::tools::cp;
use crate::{CacheLease, StoreError};

const CURRENT: &str = "current";

/// Takes a private working copy of cache `name`.
pub(crate) fn acquire(
    layout: &Layout,
    held: &HeldDirs,
    name: &str,
) -> Result<CacheLease, StoreError> {
    check_name(name)?;
    let dir = layout.cache_dir(name);
    loop {
        let shared = lock_cache(layout, name, Mode::Shared)?;
        if let Some(version) = current_version(&dir)? {
            return copy_version(layout, held, name, &dir, version);
        }
        drop(shared);
        // First use: create an empty version under the exclusive lock, then take the shared
        // lock again (flock cannot downgrade atomically, so look again).
        let exclusive = lock_cache(layout, name, Mode::Exclusive)?;
        if current_version(&dir)?.is_none() {
            create_empty_version(layout, &dir)?;
        }
        drop(exclusive);
    }
}

/// Copies `v<version>` to a fresh locked working copy; the caller holds the shared lock.
fn copy_version(
    layout: &Layout,
    held: &HeldDirs,
    name: &str,
    dir: &Path,
    version: u64,
) -> Result<CacheLease, StoreError> {
    let work = layout
        .cache_tmp()
        .join(format!("{name}.{}", unique_suffix()));
    held.create_locked(&work)?;
    if let Err(e) = cp::copy_contents(&version_dir(dir, version), &work) {
        discard(held, &work);
        return Err(e);
    }
    Ok(CacheLease {
        name: name.to_string(),
        dir: work,
        base_version: version,
    })
}

/// Publishes (`keep`) or discards a working copy.
pub(crate) fn release(
    layout: &Layout,
    held: &HeldDirs,
    lease: CacheLease,
    keep: bool,
) -> Result<(), StoreError> {
    check_name(&lease.name)?;
    if lease.dir.parent() != Some(layout.cache_tmp().as_path()) {
        return Err(StoreError::Other(format!(
            "cache lease {}: {} is not a working copy of this store",
            lease.name,
            lease.dir.display()
        )));
    }
    if !keep {
        discard(held, &lease.dir);
        return Ok(());
    }
    let dir = layout.cache_dir(&lease.name);
    let exclusive = lock_cache(layout, &lease.name, Mode::Exclusive)?;
    std::fs::create_dir_all(&dir).at(&dir)?;
    let next = next_version(&dir)?;
    let published = version_dir(&dir, next);
    let renamed = std::fs::rename(&lease.dir, &published).at(&lease.dir);
    held.release(&lease.dir);
    renamed?;
    fsync_dir(&dir)?;
    switch_current(&dir, next)?;
    let old = trash_other_versions(layout, &dir, next)?;
    drop(exclusive);
    remove_all(&old);
    Ok(())
}

/// Removes versions no `current` link names and stray link temporaries, for caches
/// nobody is using right now. Called at open.
pub(crate) fn tidy_all(layout: &Layout) -> Result<(), StoreError> {
    for name in entry_names(&layout.caches())? {
        if !is_safe_name(&name) {
            continue;
        }
        let Some(exclusive) =
            lock::lock_file(&layout.cache_lock(&name), Mode::Exclusive, Wait::NoBlock)?
        else {
            continue;
        };
        let dir = layout.cache_dir(&name);
        let keep = current_version(&dir)?;
        let old = match keep {
            Some(v) => trash_other_versions(layout, &dir, v)?,
            None => Vec::new(),
        };
        drop(exclusive);
        remove_all(&old);
    }
    Ok(())
}

/// Validates a cache name: letters, digits, `-`, `_`, `.`; not `.` or `..`.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    if is_safe_name(name) && name.len() <= 200 {
        Ok(())
    } else {
        Err(StoreError::BadCacheName(name.to_string()))
    }
}

fn lock_cache(layout: &Layout, name: &str, mode: Mode) -> Result<std::fs::File, StoreError> {
    let path = layout.cache_lock(name);
    lock::lock_file(&path, mode, Wait::Block)?.ok_or_else(|| {
        StoreError::Other(format!(
            "{}: blocking lock returned without the lock",
            path.display()
        ))
    })
}

fn version_dir(dir: &Path, version: u64) -> PathBuf {
    dir.join(format!("v{version}"))
}

fn parse_version(name: &str) -> Option<u64> {
    name.strip_prefix('v')?.parse().ok()
}

/// The version `current` names, if it names an existing directory.
fn current_version(dir: &Path) -> Result<Option<u64>, StoreError> {
    let link = dir.join(CURRENT);
    let target = match std::fs::read_link(&link) {
        Ok(t) => t,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::InvalidInput
            ) =>
        {
            return Ok(None)
        }
        Err(e) => return Err(StoreError::io(link, e)),
    };
    let version = target.to_str().and_then(parse_version);
    Ok(version.filter(|v| version_dir(dir, *v).is_dir()))
}

/// One more than any version present (0 for a new cache), so a new version never
/// collides with a leftover.
fn next_version(dir: &Path) -> Result<u64, StoreError> {
    let highest = entry_names(dir)?
        .iter()
        .filter_map(|n| parse_version(n))
        .max();
    Ok(highest.map_or(0, |v| v + 1))
}

/// Makes an empty version current (first use, or a damaged `current`).
fn create_empty_version(layout: &Layout, dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(dir).at(dir)?;
    let next = next_version(dir)?;
    let staged = layout.cache_tmp().join(format!("new.{}", unique_suffix()));
    std::fs::create_dir(&staged).at(&staged)?;
    std::fs::rename(&staged, version_dir(dir, next)).at(&staged)?;
    switch_current(dir, next)
}

/// Points `current` at `v<version>` atomically.
fn switch_current(dir: &Path, version: u64) -> Result<(), StoreError> {
    let staged = dir.join(format!("{CURRENT}.new.{}", unique_suffix()));
    std::os::unix::fs::symlink(format!("v{version}"), &staged).at(&staged)?;
    std::fs::rename(&staged, dir.join(CURRENT)).at(&staged)?;
    fsync_dir(dir)
}

/// Moves every entry but `v<keep>` and `current` to the trash; returns the trash paths.
fn trash_other_versions(
    layout: &Layout,
    dir: &Path,
    keep: u64,
) -> Result<Vec<PathBuf>, StoreError> {
    let keep_name = format!("v{keep}");
    let mut moved = Vec::new();
    for name in entry_names(dir)? {
        if name == keep_name || name == CURRENT {
            continue;
        }
        if let Some(path) = move_to_trash(&dir.join(&name), &layout.trash())? {
            moved.push(path);
        }
    }
    Ok(moved)
}

fn remove_all(paths: &[PathBuf]) {
    for path in paths {
        if let Err(e) = remove_tree(path) {
            tracing::warn!("cannot remove old cache version: {e}");
        }
    }
}

fn discard(held: &HeldDirs, work: &Path) {
    if let Err(e) = fsutil::remove_tree(work) {
        tracing::warn!("cannot remove cache working copy (it is removed at next open): {e}");
    }
    held.release(work);
}
