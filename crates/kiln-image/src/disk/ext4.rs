//! One root partition's ext4 filesystem, written in place into the raw disk.

use super::ids::PartitionIds;
use super::layout::{inode_count, Extent};
use super::stage::Content;
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
    /// The staged tree.
    pub stage: &'a Path,
    pub ids: &'a PartitionIds,
    pub label: &'a str,
    pub content: Content,
    pub epoch: i64,
    pub work_dir: &'a Path,
}

/// Runs mke2fs into the partition, then sets every inode's change time to `epoch`.
///
/// `mke2fs -d` copies each file's ctime from the staged copy, where it is the time of
/// the copy (no system call can set it), so it is fixed afterwards in the image.
pub(crate) fn write(job: &Ext4Job) -> Result<(), ImageError> {
    mke2fs::make_ext4(&mke2fs::Ext4Options {
        source: job.stage,
        image: job.raw,
        offset: job.extent.offset,
        size: job.extent.size,
        uuid: &job.ids.fs_uuid,
        hash_seed: &job.ids.hash_seed,
        label: job.label,
        inodes: inode_count(job.extent.size, job.content),
        now: job.epoch,
        work_dir: job.work_dir,
    })?;
    let used: Vec<_> = dumpe2fs::used_inodes(job.raw, job.extent.offset)?
        .into_iter()
        .filter_map(|r| {
            let start = (*r.start()).max(FIRST_INODE);
            (start <= *r.end()).then(|| start..=*r.end())
        })
        .chain(std::iter::once(ROOT_INODE..=ROOT_INODE))
        .collect();
    debugfs::set_ctimes(job.raw, job.extent.offset, &used, job.epoch, job.work_dir)
}
