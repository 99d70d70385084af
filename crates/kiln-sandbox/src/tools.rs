//! util-linux's `mount`, used only for what the mount(2) call alone cannot do: attach a
//! loop device to an image file.

use crate::SandboxError;
use std::path::Path;
use std::process::Command;

/// `mount -t ext4 -o ro,loop,noload IMAGE TARGET`: the ext4 filesystem in a raw image
/// read-only through a loop device, which the kernel frees when it is unmounted
/// (`mount` sets autoclear). `noload` skips journal replay, so the image is never written.
pub fn mount_ext4_loop_readonly(image: &Path, target: &Path) -> Result<(), SandboxError> {
    let output = Command::new("mount")
        .args(["-t", "ext4", "-o", "ro,loop,noload"])
        .arg(image)
        .arg(target)
        .output()
        .map_err(|e| {
            SandboxError::Setup(format!(
                "running mount (Debian package mount) for {}: {e}",
                image.display()
            ))
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Setup(format!(
            "mount -o ro,loop {} {} failed ({}): {}",
            image.display(),
            target.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}
