//! `mkfs.vfat` (dosfstools): the FAT32 filesystem of an EFI system partition.

use super::Program;
use crate::ImageError;
use std::path::Path;

pub(crate) const MKFS_VFAT: Program = Program::new("mkfs.vfat", "dosfstools");

/// Formats the whole of `image` (a file of the filesystem's size) as FAT32.
///
/// `--invariant` fixes the values mkfs.fat would otherwise take from the clock; it also
/// sets a volume id of its own, so `-i` must come after it. `hidden_sectors` is the
/// partition's first sector, recorded in the boot sector as firmware expects.
pub fn format_fat32(
    image: &Path,
    volume_id: u32,
    label: &str,
    hidden_sectors: u64,
) -> Result<(), ImageError> {
    let mut cmd = MKFS_VFAT.command()?;
    cmd.args(["--invariant", "-F", "32", "-S", "512"])
        .args(["-i", &format!("{volume_id:08X}"), "-n", label])
        .args(["-h", &hidden_sectors.to_string()])
        .arg(image);
    MKFS_VFAT.run(
        &mut cmd,
        &format!(
            "making the FAT32 filesystem `{label}` in {}",
            image.display()
        ),
    )?;
    Ok(())
}
