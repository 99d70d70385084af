//! Turning a layer's merged root filesystem into something people use: a rootfs tar
//! ([`tar_export`]), a directory ([`dir_export`]), or a bootable disk image ([`disk`]) in
//! raw/qcow2/vmdk/vhdx/vdi ([`formats`]), with its kernel extracted ([`kernel`]), an OS
//! descriptor per partition ([`osinfo`]), a manifest ([`manifest`]) and an SPDX SBOM ([`spdx`]).
//!
//! Assembly is unprivileged: no loop devices and no mounts. The root filesystem is made
//! with `mke2fs -d`, the ESP with `mkfs.vfat` + mtools, the GPT with `sfdisk` on a file.

pub mod boot_initrd;
pub mod containerdisk;
pub mod cpio;
pub mod disk;
mod error;
pub mod formats;
pub mod kernel;
pub mod manifest;
pub mod osinfo;
pub mod repro;
pub mod spdx;
pub mod tar_export;
pub mod tools;
pub mod verify;

pub use error::ImageError;

use std::path::{Path, PathBuf};
use std::process::Command;

/// What one OS partition holds, from its `/etc/os-release` and dpkg (DETERLab's OSID).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OsDescriptor {
    /// `ID` (e.g. `debian`).
    pub id: String,
    /// `NAME` (e.g. `Debian GNU/Linux`).
    pub name: String,
    /// `VERSION_ID` (e.g. `12`), empty when absent (testing/sid).
    pub version: String,
    /// `PRETTY_NAME`.
    pub pretty_name: String,
    /// Debian architecture (e.g. `amd64`), from dpkg's database or the ELF of /bin/sh.
    pub arch: String,
}

/// Kernel and initrd found in a root filesystem (absolute host paths inside it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFiles {
    /// e.g. `/boot/vmlinuz-6.1.0-26-amd64`.
    pub vmlinuz: PathBuf,
    pub initrd: Option<PathBuf>,
    /// Kernel release, e.g. `6.1.0-26-amd64`.
    pub release: String,
}

/// Copies the tree at `root` to `dest` (created if missing) with owners, modes, times,
/// hardlinks and xattrs, via `cp -a` from coreutils.
pub fn dir_export(root: &Path, dest: &Path) -> Result<(), ImageError> {
    std::fs::create_dir_all(dest).map_err(|e| ImageError::io(dest, e))?;
    let status = Command::new("cp")
        .arg("-a")
        .arg(root.join("."))
        .arg(dest)
        .status()
        .map_err(|e| ImageError::Tool(format!("running cp (Debian package coreutils): {e}")))?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!(
            "cp -a {} {} failed: {status}",
            root.display(),
            dest.display()
        )))
    }
}
