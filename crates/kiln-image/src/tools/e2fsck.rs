//! `e2fsck` (e2fsprogs): a read-only, forced check of an ext4 filesystem in an image.

use super::{e2fs_device_arg, split_image_path, Program};
use crate::ImageError;
use std::path::Path;

pub(crate) const E2FSCK: Program = Program::new("e2fsck", "e2fsprogs");

/// Runs `e2fsck -fn` on the filesystem at `offset` in `image`; any problem it finds
/// (exit status other than 0) is an error carrying its report.
pub fn check_readonly(image: &Path, offset: u64) -> Result<(), ImageError> {
    let (dir, name) = split_image_path(image)?;
    let mut cmd = E2FSCK.command()?;
    cmd.current_dir(&dir)
        .args(["-f", "-n"])
        .arg(e2fs_device_arg(&name, offset));
    E2FSCK.run(
        &mut cmd,
        &format!(
            "checking the ext4 filesystem at offset {offset} of {}",
            image.display()
        ),
    )?;
    Ok(())
}
