//! Turning a layer's merged root filesystem into something people use.
//!
//! So far: a rootfs tar ([`tar_export`]) and a plain directory copy ([`dir_export`]).

mod error;
pub mod tar_export;

pub use error::ImageError;

use std::path::Path;
use std::process::Command;

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
