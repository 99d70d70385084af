//! One root partition's ext4 filesystem, written in place into the raw disk.
//!
//! `mke2fs -d` copies the source tree (read only) straight into the partition; then the
//! result is made to depend only on the tree's contents, names, owners, modes and
//! modification times:
//! - every inode's change time becomes the epoch (mke2fs copies the source's ctimes,
//!   which are the times the tree was built and cannot be set by any system call),
//!   access times become the (clamped) modification times, and modification times
//!   later than the epoch become the epoch: all written straight into the inode tables
//!   by [`ctime`](super::ctime);
//! - the [`edits`](super::edits) are made in one debugfs run, with its clock set to the
//!   epoch.

use super::ctime;
use super::edits::{self, Edits};
use super::ids::PartitionIds;
use super::layout::{inode_count, Extent};
use super::tree::Scan;
use crate::tools::{debugfs, dumpe2fs, mke2fs};
use crate::ImageError;
use std::path::Path;

/// The root directory's inode; lower numbers are reserved and never hold files.
const ROOT_INODE: u32 = 2;
/// The first inode for files (lost+found), as in every ext4 kiln makes.
const FIRST_INODE: u32 = 11;

/// What goes where.
#[derive(Debug, Clone)]
pub(crate) struct Ext4Job<'a> {
    pub raw: &'a Path,
    pub extent: Extent,
    /// The partition's source tree (never modified).
    pub tree: &'a Path,
    pub scan: &'a Scan,
    pub edits: Edits<'a>,
    pub ids: &'a PartitionIds,
    pub label: &'a str,
    pub epoch: i64,
    /// A directory of this partition's own for temporary files.
    pub work_dir: &'a Path,
}

/// Makes the filesystem, then fixes times and makes the edits.
pub(crate) fn write(job: &Ext4Job) -> Result<(), ImageError> {
    let ops = edits::plan(job.tree, &job.edits, job.work_dir)?;
    mke2fs::make_ext4(&mke2fs::Ext4Options {
        source: job.tree,
        image: job.raw,
        offset: job.extent.offset,
        size: job.extent.size,
        uuid: &job.ids.fs_uuid,
        hash_seed: &job.ids.hash_seed,
        label: job.label,
        inodes: inode_count(job.extent.size, job.scan.content),
        now: job.epoch,
        work_dir: job.work_dir,
    })?;
    let offset = job.extent.offset;
    let used: Vec<_> = dumpe2fs::used_inodes(job.raw, offset)?
        .into_iter()
        .flat_map(|r| {
            // Inodes 1 and 3-10 are reserved: only the root directory among them is a file.
            let (start, end) = (*r.start(), *r.end());
            [
                (start <= ROOT_INODE && ROOT_INODE <= end).then_some(ROOT_INODE..=ROOT_INODE),
                (end >= FIRST_INODE).then_some(start.max(FIRST_INODE)..=end),
            ]
        })
        .flatten()
        .collect();
    ctime::fix_times(job.raw, offset, &used, job.epoch)?;
    let mut script = format!("set_current_time @{}\n", job.epoch).into_bytes();
    script.extend(edits::script(&ops, |path| {
        debugfs::blocks(job.raw, offset, path)
    })?);
    debugfs::run_script(job.raw, offset, &script, job.work_dir)
}
