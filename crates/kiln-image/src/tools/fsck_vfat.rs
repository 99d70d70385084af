//! `fsck.vfat` (dosfstools): a read-only check of a FAT filesystem image.

use super::Program;
use crate::ImageError;
use std::path::Path;

pub(crate) const FSCK_VFAT: Program = Program::new("fsck.vfat", "dosfstools");

/// `fsck.vfat -n image`: any problem found is an error carrying its report.
pub fn check_readonly(image: &Path) -> Result<(), ImageError> {
    let mut cmd = FSCK_VFAT.command()?;
    cmd.arg("-n").arg(image);
    FSCK_VFAT.run(
        &mut cmd,
        &format!("checking the FAT filesystem {}", image.display()),
    )?;
    Ok(())
}
