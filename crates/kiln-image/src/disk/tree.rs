//! Reading a partition's source tree (never changing it): how much it holds.

use crate::ImageError;
use std::collections::HashSet;
use std::fs;
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

/// What [`scan`] learns.
#[derive(Debug, Clone, Default)]
pub(crate) struct Scan {
    pub content: Content,
}

/// Walks the tree at `root` without following links.
pub(crate) fn scan(root: &Path) -> Result<Scan, ImageError> {
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

    #[test]
    fn measures_once_per_inode() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::write(root.join("a"), vec![1u8; 5000]).unwrap();
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        std::os::unix::fs::symlink("a", root.join("c")).unwrap();
        let scan = scan(root).unwrap();
        // root dir + a (8 KiB) + c; b is a's inode.
        assert_eq!(scan.content.inodes, 3);
        assert_eq!(scan.content.bytes, 8192 + 4096);
    }
}
