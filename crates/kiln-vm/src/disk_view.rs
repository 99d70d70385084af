//! The files of a QEMU-built layer, read on the host: the layer's qcow2 chain is
//! converted to one sparse raw file (QEMU reads the chain; only allocated data is
//! written) and its root filesystem mounted read-only through a loop device. Used to
//! look up a step's user, to copy from a VM-built stage, and by `kiln export`.
//!
//! The disk is a bare ext4 filesystem (kiln's own VM bases) or a partitioned disk (an
//! imported base, a kiln image): then the root is the ext partition holding
//! `/etc/os-release` (see [`crate::partitions`]), mounted at its offset.

use kiln_image::tools::qemu_img;
use kiln_sandbox::mount::{mount_ext4_image_readonly, mount_ext4_partition_readonly};
use kiln_sandbox::{DiskView, SandboxError};
use std::path::Path;

/// A read-only view of `disk` (qcow2, with its backing chain) at `scratch/root`; the
/// raw copy lives in `scratch` (which the caller removes after dropping the view).
pub fn open(disk: &Path, scratch: &Path) -> Result<DiskView, SandboxError> {
    open_format(disk, "qcow2", scratch)
}

/// [`open`] for a disk in any format qemu-img reads (`raw`, `vmdk`, …).
pub fn open_format(disk: &Path, format: &str, scratch: &Path) -> Result<DiskView, SandboxError> {
    let raw = scratch.join("disk.raw");
    qemu_img::convert_to_raw(disk, format, &raw)
        .map_err(|e| SandboxError::Setup(format!("reading the VM disk {}: {e}", disk.display())))?;
    let raw = RemoveOnDrop(raw);
    let root = scratch.join("root");
    let candidates = crate::partitions::ext_filesystems(&raw.0).map_err(|e| {
        SandboxError::sys(
            format!("reading the partition table of {}", raw.0.display()),
            e,
        )
    })?;
    match candidates.as_slice() {
        [] => Err(SandboxError::Setup(format!(
            "the VM disk {} holds neither an ext4 filesystem nor a partition table with one: \
             kiln reads ext2/3/4 roots only",
            disk.display()
        ))),
        [only] if only.offset == 0 => {
            let mount = mount_ext4_image_readonly(&raw.0, &root)?;
            Ok(DiskView {
                path: root,
                guard: Box::new((mount, raw)),
            })
        }
        several => {
            for fs in several {
                let mount = mount_ext4_partition_readonly(&raw.0, fs.offset, &root)?;
                if root.join("etc/os-release").symlink_metadata().is_ok() {
                    return Ok(DiskView {
                        path: root,
                        guard: Box::new((mount, raw)),
                    });
                }
                drop(mount);
            }
            Err(SandboxError::Setup(format!(
                "the VM disk {} has {} ext partitions and none holds /etc/os-release: \
                 which is its root is unknown",
                disk.display(),
                several.len()
            )))
        }
    }
}

/// A file deleted on drop (after the mount declared before it is detached).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
