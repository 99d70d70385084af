//! Filesystem helpers: robust tree removal, measuring and flushing a tree, durable
//! small writes, atomic no-replace renames.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::IoContext;
use crate::layout::unique_suffix;
use crate::StoreError;

/// Removes `path` (file, symlink or whole tree). Missing is fine. Directories we may not
/// read or write (overlayfs leaves `work/work` with mode 000; steps may `chmod 555`
/// their directories) are made accessible first.
pub(crate) fn remove_tree(path: &Path) -> Result<(), StoreError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StoreError::io(path, e)),
    };
    if !meta.is_dir() {
        return ignore_not_found(fs::remove_file(path)).at(path);
    }
    match ignore_not_found(fs::remove_dir_all(path)) {
        Ok(()) => Ok(()),
        Err(first) if first.kind() == io::ErrorKind::PermissionDenied => {
            make_dirs_accessible(path);
            ignore_not_found(fs::remove_dir_all(path)).at(path)
        }
        // Another process may be removing the same tree (two opens purging trash/).
        Err(_) if !path.exists() => Ok(()),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

fn ignore_not_found(r: io::Result<()>) -> io::Result<()> {
    match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Gives the owner full access to every directory under `root` (best effort), chmod-ing
/// each directory before reading it so that mode 000 directories can be entered.
fn make_dirs_accessible(root: &Path) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = fs::symlink_metadata(&dir) {
            if meta.is_dir() && meta.permissions().mode() & 0o700 != 0o700 {
                let mode = meta.permissions().mode() | 0o700;
                let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(mode));
            }
        }
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(entry.path());
            }
        }
    }
}

/// Whether [`measure_tree`] also pushes file data to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flush {
    Yes,
    No,
}

/// Sums the sizes of the regular files under `root` (hardlinked files once) and, with
/// `Flush::Yes`, writes each one's dirty pages to disk and waits for them. A later
/// `fsync` (of meta.json) then commits the metadata journal and the device cache, so a
/// power loss cannot leave a committed layer with empty files. This is the
/// "batch" technique (as git's `core.fsyncMethod=batch`): one journal commit per layer
/// rather than one per file.
pub(crate) fn measure_tree(root: &Path, flush: Flush) -> Result<u64, StoreError> {
    let mut seen_links = HashSet::new();
    let mut total = 0u64;
    let mut written = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| walk_error(root, e))?;
        if !entry.file_type().is_file() {
            continue;
        }
        let meta = entry.metadata().map_err(|e| walk_error(root, e))?;
        if meta.nlink() > 1 && !seen_links.insert((meta.dev(), meta.ino())) {
            continue;
        }
        total += meta.len();
        if flush == Flush::Yes {
            // Start every file's writeback first and wait afterwards, so the device
            // works on all of them at once instead of one file per round trip.
            write_out(entry.path(), WriteOut::Start);
            written.push(entry.into_path());
        }
    }
    for path in &written {
        write_out(path, WriteOut::Wait);
    }
    Ok(total)
}

fn walk_error(root: &Path, e: walkdir::Error) -> StoreError {
    let path = e.path().unwrap_or(root).to_path_buf();
    let io = e
        .into_io_error()
        .unwrap_or_else(|| io::Error::other("filesystem loop"));
    StoreError::io(path, io)
}

/// The two halves of pushing a file's data to disk.
#[derive(Clone, Copy)]
enum WriteOut {
    /// Queue the dirty pages for writing, without waiting.
    Start,
    /// Wait until every page of the file has been written.
    Wait,
}

/// Writeback of one file's data (best effort: a file we may not open is skipped, the
/// final journal commit still covers its metadata).
fn write_out(path: &Path, step: WriteOut) {
    let Ok(file) = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
    else {
        return;
    };
    let flags = match step {
        WriteOut::Start => libc::SYNC_FILE_RANGE_WRITE,
        WriteOut::Wait => {
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER
        }
    };
    // SAFETY: the descriptor is valid for the call; sync_file_range touches no memory of ours.
    unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) };
}

/// Writes `data` to `path` and fsyncs it.
pub(crate) fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut file = File::create(path).at(path)?;
    file.write_all(data).at(path)?;
    file.sync_all().at(path)
}

/// Fsyncs a directory so renames and creations inside it are durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// Renames `from` to `to`, failing with `AlreadyExists` instead of replacing `to`.
pub(crate) fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(io::Error::other);
    let (from_c, to_c) = (c(from)?, c(to)?);
    // SAFETY: both strings are valid NUL-terminated paths that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from_c.as_ptr(),
            libc::AT_FDCWD,
            to_c.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Moves `path` into `trash` under a unique name so it disappears atomically from where
/// it was; returns where it went, or `None` if it did not exist.
pub(crate) fn move_to_trash(path: &Path, trash: &Path) -> Result<Option<PathBuf>, StoreError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dest = trash.join(format!("{name}.{}", unique_suffix()));
    match fs::rename(path, &dest) {
        Ok(()) => Ok(Some(dest)),
        Err(e) if e.kind() == io::ErrorKind::NotFound && !path.exists() => Ok(None),
        Err(e) => Err(StoreError::io(path, e)),
    }
}

/// The names of the entries of `dir` (empty if it does not exist).
pub(crate) fn entry_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(dir, e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.at(dir)?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}
