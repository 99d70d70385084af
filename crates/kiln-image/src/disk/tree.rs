//! Reading a partition's source tree (never changing it): how much it holds, and which
//! inode times the filesystem made from it needs fixed.

use crate::ImageError;
use std::collections::HashSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// How much a tree holds, for sizing its filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Content {
    /// Data bytes, each file rounded up to whole 4 KiB blocks.
    pub bytes: u64,
    /// Distinct inodes (hard links counted once).
    pub inodes: u64,
}

/// The times one inode must end up with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimeFix {
    /// Absolute path in the filesystem (`/etc/passwd`).
    pub path: Vec<u8>,
    /// The access time: the (clamped) modification time. Reading a file or directory
    /// may change its access time between two builds; its modification time is stable.
    pub atime: i64,
    /// `Some(epoch)` when the modification time is later than the epoch.
    pub mtime: Option<i64>,
}

/// What [`scan`] learns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scan {
    pub content: Content,
    /// One per inode below the top (the top becomes the root inode, whose times mke2fs
    /// sets itself).
    pub fixes: Vec<TimeFix>,
}

/// Walks the tree at `root` without following links.
pub(crate) fn scan(root: &Path, epoch: i64) -> Result<Scan, ImageError> {
    let mut scan = Scan::default();
    let mut seen = HashSet::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry =
            entry.map_err(|e| ImageError::Tool(format!("reading {}: {e}", root.display())))?;
        let meta = entry
            .path()
            .symlink_metadata()
            .map_err(|e| ImageError::io(entry.path(), e))?;
        if meta.nlink() > 1 && !meta.is_dir() && !seen.insert(meta.ino()) {
            continue;
        }
        scan.content.inodes += 1;
        scan.content.bytes += data_bytes(&meta);
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry.path().strip_prefix(root).unwrap_or(entry.path());
        let mut path = b"/".to_vec();
        path.extend_from_slice(rel.as_os_str().as_bytes());
        scan.fixes.push(TimeFix {
            path,
            atime: meta.mtime().min(epoch),
            mtime: (meta.mtime() > epoch).then_some(epoch),
        });
    }
    Ok(scan)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set_mtime(path: &Path, secs: i64) {
        let t = nix::sys::time::TimeSpec::new(secs, 0);
        nix::sys::stat::utimensat(
            None,
            path,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    #[test]
    fn measures_once_per_inode_and_clamps_only_newer_times() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("c")).unwrap();
        set_mtime(&root.join("c"), 500);
        let scan = scan(root, 1_000_000).unwrap();
        // root dir + a (8 KiB) + c; b is a's inode.
        assert_eq!(scan.content.inodes, 3);
        assert_eq!(scan.content.bytes, 8192 + 4096);
        let paths: Vec<_> = scan.fixes.iter().map(|f| f.path.clone()).collect();
        assert_eq!(paths.len(), 2, "{paths:?}");
        let fix = |p: &[u8]| scan.fixes.iter().find(|f| f.path == p).unwrap().clone();
        assert_eq!(
            fix(b"/c"),
            TimeFix {
                path: b"/c".to_vec(),
                atime: 500,
                mtime: None
            }
        );
        let newer = scan.fixes.iter().find(|f| f.path != b"/c").unwrap();
        assert_eq!((newer.atime, newer.mtime), (1_000_000, Some(1_000_000)));
    }
}
