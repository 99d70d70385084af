//! util-linux's `mount`, used only for what the mount(2) call alone cannot do: attach a
//! loop device to an image file.

use crate::SandboxError;
use std::path::Path;
use std::process::Command;

/// `mount -t ext4 -o ro,loop,noload IMAGE TARGET`: the ext4 filesystem in a raw image
/// read-only through a loop device, which the kernel frees when it is unmounted
/// (`mount` sets autoclear). `noload` skips journal replay, so the image is never written.
pub fn mount_ext4_loop_readonly(image: &Path, target: &Path) -> Result<(), SandboxError> {
    mount_ext4_loop_readonly_at(image, 0, target)
}

/// [`mount_ext4_loop_readonly`] of the filesystem starting `offset` bytes into `image`
/// (a partition of a whole-disk image).
pub fn mount_ext4_loop_readonly_at(
    image: &Path,
    offset: u64,
    target: &Path,
) -> Result<(), SandboxError> {
    let options = match offset {
        0 => "ro,loop,noload".to_string(),
        n => format!("ro,loop,noload,offset={n}"),
    };
    let output = Command::new("mount")
        .args(["-t", "ext4", "-o", &options])
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
