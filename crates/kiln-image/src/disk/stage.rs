//! The staged copy of a partition's root tree: what goes into its filesystem.
//!
//! The source tree is never modified. Its copy gets the image's `/etc/fstab`, an empty
//! `/etc/machine-id`, loses the few well-known files that record when the image was
//! built ([`REMOVED`], [`EMPTIED`]), and has every time later than `SOURCE_DATE_EPOCH`
//! clamped to it. Nothing in the copy is followed through a symbolic link: the tree may
//! hold absolute links that would point into the host.

use crate::ImageError;
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::collections::HashSet;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

/// Files removed from the copy (when they are regular files): caches and state that
/// programs rebuild, whose bytes depend on the build's time or randomness.
pub const REMOVED: &[&str] = &[
    // ldconfig's cache of library mtimes and inode numbers.
    "var/cache/ldconfig/aux-cache",
    // apt's binary caches, rebuilt on the next apt run.
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    // apt's solver dump, compressed (emptying would leave an invalid .xz).
    "var/log/apt/eipp.log.xz",
    // A random seed must not be shared by every machine booted from the image.
    "var/lib/systemd/random-seed",
    // D-Bus falls back to /etc/machine-id (Debian makes this a symlink to it).
    "var/lib/dbus/machine-id",
];

/// Log files emptied in the copy (kept, with their owner and mode): package tools log
/// the time of each action.
pub const EMPTIED: &[&str] = &[
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
];

/// The machine id: kept as an empty file, so systemd makes a new one at first boot.
const MACHINE_ID: &str = "etc/machine-id";

/// How a staged copy is adjusted.
#[derive(Debug, Clone)]
pub(crate) struct Edits<'a> {
    /// The whole `/etc/fstab`.
    pub fstab: &'a str,
    /// Directories to create when missing (mount points such as `boot/efi`).
    pub mount_points: &'a [&'a str],
    /// `SOURCE_DATE_EPOCH`.
    pub epoch: i64,
}

/// How much a staged tree holds, for sizing its filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Content {
    /// Data bytes, each file rounded up to whole 4 KiB blocks.
    pub bytes: u64,
    /// Distinct inodes (hard links counted once).
    pub inodes: u64,
}

/// Copies `source` to `dest` (which must not exist) and applies `edits`.
pub(crate) fn stage(source: &Path, dest: &Path, edits: &Edits) -> Result<(), ImageError> {
    crate::dir_export(source, dest)?;
    write_file(dest, "etc/fstab", edits.fstab.as_bytes())?;
    for dir in edits.mount_points {
        real_dir(dest, Path::new(dir), true)?;
    }
    empty_if_file(dest, MACHINE_ID)?;
    for rel in REMOVED {
        remove_if_file(dest, rel)?;
    }
    for rel in EMPTIED {
        empty_if_file(dest, rel)?;
    }
    clamp_tree(dest, edits.epoch)
}

/// The directory `root/rel`, checked component by component to be a real directory
/// (never a symlink). Missing components are created (mode 0755) when `create`;
/// otherwise `None` is returned for a missing or non-directory component.
fn real_dir(root: &Path, rel: &Path, create: bool) -> Result<Option<PathBuf>, ImageError> {
    let mut dir = root.to_path_buf();
    for part in rel.components() {
        let Component::Normal(part) = part else {
            continue;
        };
        dir.push(part);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) if create => {
                return Err(ImageError::Tool(format!(
                    "{} is not a directory (a symlink or a file): kiln needs to write \
                     below it in the image; make it a directory in the spec",
                    dir.display()
                )))
            }
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&dir)
                    .map_err(|e| ImageError::io(&dir, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(&dir, e)),
        }
    }
    Ok(Some(dir))
}

/// Splits `rel` into its directory (resolved with [`real_dir`]) and file name.
fn locate(root: &Path, rel: &str, create: bool) -> Result<Option<PathBuf>, ImageError> {
    let rel = Path::new(rel);
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(None);
    };
    Ok(real_dir(root, parent, create)?.map(|dir| dir.join(name)))
}

/// Writes `root/rel` as a new regular file (mode 0644), replacing whatever was there
/// unless it is a directory.
fn write_file(root: &Path, rel: &str, contents: &[u8]) -> Result<(), ImageError> {
    let Some(path) = locate(root, rel, true)? else {
        return Ok(());
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => {
            return Err(ImageError::Tool(format!(
                "{} is a directory: kiln writes the image's /{rel} there; remove it in the spec",
                path.display()
            )))
        }
        Ok(_) => fs::remove_file(&path).map_err(|e| ImageError::io(&path, e))?,
        Err(_) => {}
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| ImageError::io(&path, e))?;
    file.write_all(contents)
        .map_err(|e| ImageError::io(&path, e))
}

/// Truncates `root/rel` to zero bytes if it is a regular file.
fn empty_if_file(root: &Path, rel: &str) -> Result<(), ImageError> {
    let Some(path) = locate(root, rel, false)? else {
        return Ok(());
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map(drop)
            .map_err(|e| ImageError::io(&path, e)),
        _ => Ok(()),
    }
}

/// Removes `root/rel` if it is a regular file.
fn remove_if_file(root: &Path, rel: &str) -> Result<(), ImageError> {
    let Some(path) = locate(root, rel, false)? else {
        return Ok(());
    };
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_file() => fs::remove_file(&path).map_err(|e| ImageError::io(&path, e)),
        _ => Ok(()),
    }
}

/// Measures the tree at `root` (without changing it).
pub(crate) fn measure(root: &Path) -> Result<Content, ImageError> {
    let mut content = Content::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let (_, meta) = lstat(root, entry)?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        content.inodes += 1;
        content.bytes += data_bytes(&meta);
    }
    Ok(content)
}

/// Clamps access and modification times under `root` to `epoch`.
///
/// Directories are visited after their contents: reading a directory may update its
/// access time (relatime), so its times are set only once nothing will read it again
/// before `mke2fs` records them.
fn clamp_tree(root: &Path, epoch: i64) -> Result<(), ImageError> {
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .contents_first(true)
    {
        let (path, meta) = lstat(root, entry)?;
        clamp_times(&path, &meta, epoch)?;
    }
    Ok(())
}

fn lstat(
    root: &Path,
    entry: walkdir::Result<walkdir::DirEntry>,
) -> Result<(PathBuf, fs::Metadata), ImageError> {
    let entry = entry.map_err(|e| ImageError::Tool(format!("reading {}: {e}", root.display())))?;
    let meta = entry
        .path()
        .symlink_metadata()
        .map_err(|e| ImageError::io(entry.path(), e))?;
    Ok((entry.into_path(), meta))
}

/// Bytes of data blocks an inode takes in ext4 with 4 KiB blocks.
fn data_bytes(meta: &fs::Metadata) -> u64 {
    let blocks = |n: u64| n.div_ceil(4096) * 4096;
    let kind = meta.file_type();
    if kind.is_file() {
        blocks(meta.len())
    } else if kind.is_dir() {
        blocks(meta.len().max(1))
    } else if kind.is_symlink() && meta.len() >= 60 {
        // Shorter targets are stored in the inode itself.
        4096
    } else {
        0
    }
}

fn clamp_times(path: &Path, meta: &fs::Metadata, epoch: i64) -> Result<(), ImageError> {
    if meta.atime() <= epoch && meta.mtime() <= epoch {
        return Ok(());
    }
    let clamp = |secs: i64, nanos: i64| {
        if secs > epoch {
            TimeSpec::new(epoch, 0)
        } else {
            TimeSpec::new(secs, nanos)
        }
    };
    let atime = clamp(meta.atime(), meta.atime_nsec());
    let mtime = clamp(meta.mtime(), meta.mtime_nsec());
    utimensat(None, path, &atime, &mtime, UtimensatFlags::NoFollowSymlink)
        .map_err(|e| ImageError::io(path, std::io::Error::from(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_dir_refuses_symlinked_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/tmp", root.join("etc")).unwrap();
        assert!(real_dir(root, Path::new("etc"), true).is_err());
        assert_eq!(real_dir(root, Path::new("etc"), false).unwrap(), None);
        assert_eq!(
            real_dir(root, Path::new("real/a/b"), true).unwrap(),
            Some(root.join("real/a/b"))
        );
    }

    #[test]
    fn write_file_replaces_a_symlink_without_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, "keep").unwrap();
        let root = tmp.path().join("root");
        fs::create_dir_all(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("etc/fstab")).unwrap();
        write_file(&root, "etc/fstab", b"new").unwrap();
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(fs::read_to_string(root.join("etc/fstab")).unwrap(), "new");
        assert!(!fs::symlink_metadata(root.join("etc/fstab"))
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn leftovers_are_removed_or_emptied_but_links_are_not_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("var/cache/ldconfig")).unwrap();
        fs::write(root.join("var/cache/ldconfig/aux-cache"), "x").unwrap();
        fs::create_dir_all(root.join("var/log")).unwrap();
        fs::write(root.join("var/log/dpkg.log"), "2024-01-01 install").unwrap();
        let outside = root.join("outside");
        fs::write(&outside, "keep").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("var/log/alternatives.log")).unwrap();
        for rel in REMOVED {
            remove_if_file(root, rel).unwrap();
        }
        for rel in EMPTIED {
            empty_if_file(root, rel).unwrap();
        }
        assert!(!root.join("var/cache/ldconfig/aux-cache").exists());
        assert_eq!(fs::read(root.join("var/log/dpkg.log")).unwrap(), b"");
        assert_eq!(fs::read_to_string(&outside).unwrap(), "keep");
    }

    #[test]
    fn times_are_clamped_and_content_measured() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("c")).unwrap();
        let content = measure(root).unwrap();
        // Reading a directory may set its atime: nothing reads the tree after clamping.
        clamp_tree(root, 1_000_000).unwrap();
        // root dir + a (8 KiB) + c; b is a's inode.
        assert_eq!(content.inodes, 3);
        assert_eq!(content.bytes, 8192 + 4096);
        for name in ["a", "c", ""] {
            let m = fs::symlink_metadata(root.join(name)).unwrap();
            assert_eq!((m.mtime(), m.atime()), (1_000_000, 1_000_000), "{name}");
        }
    }
}
