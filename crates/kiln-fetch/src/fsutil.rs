//! Descriptor-relative file operations that never follow a symlink and never leave the
//! filesystem they start on, so untrusted trees (image layers, half-built roots) can be
//! walked and deleted safely.

use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens `path` as a directory (following symlinks: the caller chose this path).
pub(crate) fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    // SAFETY: `open` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `name` inside `dir`, refusing symlinks (`ELOOP`) and non-directories
/// (`ENOTDIR`).
pub(crate) fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(Some(dir.as_raw_fd()), name, flags, Mode::empty())?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A second descriptor for the directory `dir`.
pub(crate) fn reopen_dir(dir: &OwnedFd) -> nix::Result<OwnedFd> {
    open_dir_at(dir, OsStr::new("."))
}

/// `lstat` of `name` inside `dir`; `None` when it does not exist.
pub(crate) fn lstat_at(dir: &OwnedFd, name: &OsStr) -> nix::Result<Option<FileStat>> {
    match fstatat(
        Some(dir.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    ) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a stat result describes a directory.
pub(crate) fn is_dir(st: &FileStat) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR
}

/// The names in directory `dir`, without `.` and `..`.
pub(crate) fn list_names(dir: &OwnedFd) -> nix::Result<Vec<OsString>> {
    let mut handle = nix::dir::Dir::from_fd(reopen_dir(dir)?.into_raw_fd())?;
    let mut names = Vec::new();
    for entry in handle.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// Removes `name` inside `dir` whatever it is; directories are removed with their contents.
/// A missing `name` is not an error. Refuses to descend into another filesystem (a mount point).
pub(crate) fn remove_at(dir: &OwnedFd, name: &OsStr) -> io::Result<()> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if is_dir(&st) {
        let sub = open_dir_at(dir, name)?;
        let parent_dev = fstat(dir.as_raw_fd())?.st_dev;
        if st.st_dev != parent_dev {
            return Err(io::Error::other(format!(
                "`{}` is a mount point; unmount it first",
                name.to_string_lossy()
            )));
        }
        remove_children(&sub)?;
        unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)?;
    } else {
        match unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes everything inside directory `dir`, keeping `dir` itself.
pub(crate) fn remove_children(dir: &OwnedFd) -> io::Result<()> {
    for name in list_names(dir)? {
        remove_at(dir, &name)?;
    }
    Ok(())
}

/// Empties the directory at `path` in place.
pub(crate) fn clear_dir(path: &Path) -> io::Result<()> {
    remove_children(&open_dir(path)?)
}

/// Whether `path` is a directory without entries.
pub(crate) fn is_empty_dir(path: &Path) -> io::Result<bool> {
    Ok(list_names(&open_dir(path)?)?.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_dir_removes_trees_but_not_symlink_targets() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b/c")).unwrap();
        std::fs::write(root.path().join("a/b/c/f"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/link")).unwrap();
        clear_dir(root.path()).unwrap();
        assert!(is_empty_dir(root.path()).unwrap());
        assert!(outside.path().join("keep").exists());
    }
}
