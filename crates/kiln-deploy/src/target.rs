//! The disk a `.kzi` image is written to: a block device or a (sparse) file.
//!
//! Opening checks everything that can be checked before a byte is written: the target
//! is not mounted (block devices are opened `O_EXCL`, which the kernel refuses while a
//! filesystem on them is mounted), it is large enough, it is writable.

use crate::format::{Chunk, ChunkHasher, IndexEntry, Meta};
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// The size of a regular file or of a block device.
pub fn file_or_device_size(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size = 0u64;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
        unsafe { blkgetsize64(file.as_raw_fd(), &mut size) }.map_err(io::Error::from)?;
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// An opened target.
pub struct Target {
    file: File,
    path: PathBuf,
    is_device: bool,
    /// Created by this open: holds nothing yet, so there is nothing to resume.
    fresh: bool,
}

impl Target {
    /// Opens `path` to receive a disk of `disk_size` bytes. A missing file is created; an
    /// existing file is kept (its content may be resumed from) and sized to the disk.
    pub fn open(path: &Path, disk_size: u64) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("target {}", path.display())),
        };
        let is_device = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &meta {
            if !is_device && !m.is_file() {
                bail!(
                    "target {} is neither a block device nor a regular file",
                    path.display()
                );
            }
        }
        if let Some(mount) = mounted_at(path)? {
            bail!(
                "target {} is mounted ({mount}); unmount it first: nothing was written",
                path.display()
            );
        }
        let mut options = OpenOptions::new();
        options.read(true).write(true);
        if is_device {
            options.custom_flags(libc::O_EXCL);
        } else {
            options.create(true);
        }
        let file = options.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                anyhow::anyhow!(
                    "target {} is in use (mounted, or held by another program): nothing was written",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("opening target {}", path.display()))
            }
        })?;
        if is_device {
            let size = file_or_device_size(&file)
                .with_context(|| format!("reading the size of {}", path.display()))?;
            if size < disk_size {
                bail!(
                    "target {} is too small: {size} bytes, the image needs {disk_size}; nothing was written",
                    path.display()
                );
            }
        } else {
            file.set_len(disk_size)
                .with_context(|| format!("sizing {} to {disk_size} bytes", path.display()))?;
        }
        Ok(Target {
            file,
            path: path.to_path_buf(),
            is_device,
            fresh: meta.is_none(),
        })
    }

    /// Whether this target was created by [`Target::open`] (nothing to resume).
    pub fn is_fresh(&self) -> bool {
        self.fresh
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes a decoded (and so verified) chunk.
    pub fn write_chunk(&self, chunk: &Chunk) -> Result<()> {
        for (offset, bytes) in chunk.pieces() {
            self.file
                .write_all_at(bytes, offset)
                .with_context(|| format!("writing {} at {offset}", self.path.display()))?;
        }
        Ok(())
    }

    /// Whether chunk `index` (`entry`) is already on the target, by its hash.
    pub fn holds_chunk(&self, index: u32, entry: &IndexEntry, buf: &mut Vec<u8>) -> Result<bool> {
        let mut hasher = ChunkHasher::new(index, &entry.ranges);
        for r in &entry.ranges {
            buf.resize(r.len as usize, 0);
            self.file
                .read_exact_at(buf, r.offset)
                .with_context(|| format!("reading {} at {}", self.path.display(), r.offset))?;
            hasher.update(buf);
        }
        Ok(hasher.finish() == entry.hash)
    }

    /// Finishes the target: on a file, every byte outside the image's ranges becomes a
    /// hole (so a resumed or reused file holds exactly the image, and stays sparse); on
    /// a device those bytes are zeroed only with `zero_rest`. Then flushes.
    pub fn finish(&self, meta: &Meta, zero_rest: bool) -> Result<()> {
        if !self.is_device || zero_rest {
            let mut at = 0u64;
            let gaps = meta
                .index
                .iter()
                .flat_map(|e| e.ranges.iter())
                .map(|r| {
                    let gap = at..r.offset;
                    at = r.end();
                    gap
                })
                .collect::<Vec<_>>();
            let tail = at..meta.header.disk_size;
            for gap in gaps.into_iter().chain([tail]).filter(|g| !g.is_empty()) {
                self.clear(gap.start, gap.end - gap.start)?;
            }
        }
        self.file
            .sync_all()
            .with_context(|| format!("flushing {}", self.path.display()))
    }

    /// Makes `len` bytes at `offset` read as zeros: a hole in a file; on a device, a
    /// discard-free zeroing write.
    fn clear(&self, offset: u64, len: u64) -> Result<()> {
        if self.fresh {
            return Ok(());
        }
        if !self.is_device {
            let flags = nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
            if nix::fcntl::fallocate(self.file.as_raw_fd(), flags, offset as i64, len as i64)
                .is_ok()
            {
                return Ok(());
            }
        }
        let zeros = vec![0u8; 1 << 20];
        let mut at = offset;
        while at < offset + len {
            let n = ((offset + len - at) as usize).min(zeros.len());
            self.file
                .write_all_at(&zeros[..n], at)
                .with_context(|| format!("zeroing {} at {at}", self.path.display()))?;
            at += n as u64;
        }
        Ok(())
    }

    /// Reads every chunk back and checks its hash: the total hash, verified on the disk.
    pub fn verify_all(&self, meta: &Meta) -> Result<()> {
        let mut buf = Vec::new();
        for (i, entry) in meta.index.iter().enumerate() {
            if !self.holds_chunk(i as u32, entry, &mut buf)? {
                bail!(
                    "{}: chunk {i} does not match the image after writing (failing disk?)",
                    self.path.display()
                );
            }
        }
        Ok(())
    }
}

/// Where `path` is mounted, if it is: a mount point itself (a bind-mounted file), or the
/// source of a mount (a block device).
fn mounted_at(path: &Path) -> Result<Option<String>> {
    let Ok(canonical) = std::fs::canonicalize(path) else {
        return Ok(None);
    };
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Ok(None);
    };
    let wanted = canonical.to_string_lossy();
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let mount_point = unescape(fields.get(4).copied().unwrap_or_default());
        let source = unescape(fields.get(sep + 2).copied().unwrap_or_default());
        if mount_point == wanted {
            return Ok(Some(format!("bind-mounted at {mount_point}")));
        }
        if source == wanted {
            return Ok(Some(format!("mounted on {mount_point}")));
        }
    }
    Ok(None)
}

/// mountinfo escapes spaces, tabs, newlines and backslashes as octal.
fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
