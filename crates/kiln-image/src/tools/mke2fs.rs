//! `mke2fs` (e2fsprogs): an ext4 filesystem filled from a directory (`-d`), written
//! into a region of an image file, without mounting anything.

use super::{e2fs_device_arg, split_image_path, Program};
use crate::ImageError;
use std::path::Path;

pub(crate) const MKE2FS: Program = Program::new("mke2fs", "e2fsprogs");

/// The block size of every filesystem kiln makes.
pub const BLOCK_SIZE: u64 = 4096;
/// The inode size of every filesystem kiln makes.
pub const INODE_SIZE: u64 = 256;

/// kiln's own `mke2fs.conf`: Debian 12's ext4 defaults, fixed here so that the host's
/// `/etc/mke2fs.conf` (or a newer e2fsprogs' built-in defaults, such as `orphan_file`,
/// which older guests' e2fsck reject) cannot change the filesystem kiln writes.
const CONFIG: &str = "\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

/// What [`make_ext4`] makes.
#[derive(Debug, Clone)]
pub struct Ext4Options<'a> {
    /// Directory copied into the new filesystem (its owners, modes, times, xattrs).
    pub source: &'a Path,
    /// Image file written in place (not truncated).
    pub image: &'a Path,
    /// Where the filesystem starts in `image`, in bytes.
    pub offset: u64,
    /// Filesystem size in bytes (a multiple of [`BLOCK_SIZE`]).
    pub size: u64,
    pub uuid: &'a str,
    /// Seed of the directory-index hash (otherwise random).
    pub hash_seed: &'a str,
    pub label: &'a str,
    pub inodes: u64,
    /// Seconds since the epoch used as "now" (superblock, root and lost+found times).
    pub now: i64,
    /// Directory for kiln's `mke2fs.conf`.
    pub work_dir: &'a Path,
}

/// Runs `mke2fs -t ext4 -d SOURCE` into `image` at `offset`.
///
/// The result depends only on the options and the source tree. Times are taken from the
/// source, ctimes included (no program can set those on the source, so the caller fixes
/// them afterwards with [`super::debugfs::run_script`]).
pub fn make_ext4(o: &Ext4Options) -> Result<(), ImageError> {
    let config = o.work_dir.join("kiln-mke2fs.conf");
    std::fs::write(&config, CONFIG).map_err(|e| ImageError::io(&config, e))?;
    let (dir, name) = split_image_path(o.image)?;
    let mut extended = format!(
        "hash_seed={},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=1",
        o.hash_seed
    );
    if o.offset != 0 {
        extended.push_str(&format!(",offset={}", o.offset));
    }
    let mut cmd = MKE2FS.command()?;
    cmd.current_dir(&dir)
        .env("MKE2FS_CONFIG", &config)
        .env("E2FSPROGS_FAKE_TIME", o.now.to_string())
        .args(["-q", "-F", "-t", "ext4"])
        .args(["-b", &BLOCK_SIZE.to_string(), "-I", &INODE_SIZE.to_string()])
        .args(["-N", &o.inodes.to_string(), "-L", o.label, "-U", o.uuid])
        .args(["-E", &extended, "-d"])
        .arg(o.source)
        .arg(e2fs_device_arg(&name, 0))
        .arg((o.size / BLOCK_SIZE).to_string());
    MKE2FS
        .run(
            &mut cmd,
            &format!(
                "making the ext4 filesystem `{}` from {}",
                o.label,
                o.source.display()
            ),
        )
        .map_err(|e| explain_full(e, o))?;
    Ok(())
}

/// `mke2fs -d` runs out of blocks or inodes when the estimate was too tight: say so.
fn explain_full(err: ImageError, o: &Ext4Options) -> ImageError {
    let text = err.to_string();
    let full = [
        "Could not allocate block",
        "No space left",
        "Could not allocate inode",
    ]
    .iter()
    .any(|needle| text.contains(needle));
    if full {
        ImageError::Tool(format!(
            "the filesystem `{}` ({} MiB, {} inodes) is too small for {}: give the partition \
             or the disk a larger size\n{text}",
            o.label,
            o.size >> 20,
            o.inodes,
            o.source.display()
        ))
    } else {
        err
    }
}
