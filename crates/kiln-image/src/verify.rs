//! Checks of a finished disk image with the programs that know each layer best:
//! `qemu-img check` (the container format), `sfdisk --verify` (the GPT),
//! `e2fsck -fn` (each ext4 filesystem, read only) and `fsck.vfat -n` (the ESP).

use crate::disk::{DiskLayout, PartitionReport};
use crate::formats::Format;
use crate::tools::{e2fsck, fsck_vfat, qemu_img, sfdisk};
use crate::ImageError;
use std::path::Path;

/// `qemu-img check` of `image` in `format`: metadata consistent, no leaked clusters.
/// A raw image has no metadata to check; it only has to be readable as raw.
pub fn qemu_img_check(image: &Path, format: Format) -> Result<(), ImageError> {
    match format {
        Format::Raw => {
            let info = qemu_img::info(image)?;
            if info.format == "raw" {
                Ok(())
            } else {
                Err(ImageError::Tool(format!(
                    "{} is a {} image, not raw",
                    image.display(),
                    info.format
                )))
            }
        }
        other => qemu_img::check(image, other.qemu_name()),
    }
}

/// `sfdisk --verify` of a raw disk; warnings (a fallback to the backup GPT, a wrong
/// protective MBR) count as failures.
pub fn sfdisk_verify(raw: &Path) -> Result<(), ImageError> {
    sfdisk::verify(raw)
}

/// `e2fsck -fn` of the ext4 filesystem of `part` in the raw disk `raw`, read in place
/// (e2fsprogs opens a filesystem at an offset in a file). When the file's name holds a
/// `?`, which e2fsprogs would take for its option separator, the partition is first
/// copied (sparse) to a temporary file.
pub fn e2fsck_partition(raw: &Path, part: &PartitionReport) -> Result<(), ImageError> {
    let name_has_question_mark = raw
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains('?'));
    if !name_has_question_mark {
        return e2fsck::check_readonly(raw, part.offset).map_err(|e| in_partition(e, part));
    }
    let tmp = tempfile::tempdir().map_err(|e| ImageError::io(std::env::temp_dir(), e))?;
    let copy = tmp.path().join("partition.img");
    crate::disk::extract_region(raw, part.offset, part.size, &copy)?;
    e2fsck::check_readonly(&copy, 0).map_err(|e| in_partition(e, part))
}

/// `fsck.vfat -n` of the EFI system partition `esp` of the raw disk `raw` (copied out,
/// sparse, to a temporary file: dosfstools cannot read at an offset).
pub fn fsck_esp(raw: &Path, esp: &PartitionReport) -> Result<(), ImageError> {
    let tmp = tempfile::tempdir().map_err(|e| ImageError::io(std::env::temp_dir(), e))?;
    let copy = tmp.path().join("esp.img");
    crate::disk::extract_region(raw, esp.offset, esp.size, &copy)?;
    fsck_vfat::check_readonly(&copy).map_err(|e| in_partition(e, esp))
}

fn in_partition(err: ImageError, part: &PartitionReport) -> ImageError {
    ImageError::Tool(format!("partition {} (`{}`): {err}", part.index, part.name))
}

/// Every check on an image written by kiln: `qemu-img check`, then (on the image itself
/// when raw, else on a raw copy made in `scratch`) `sfdisk --verify`, `e2fsck -fn` of
/// each OS partition of `layout` and `fsck.vfat -n` of its ESP.
pub fn verify_image(
    image: &Path,
    format: Format,
    layout: &DiskLayout,
    scratch: &Path,
) -> Result<(), ImageError> {
    qemu_img_check(image, format)?;
    let tmp;
    let raw = if format == Format::Raw {
        image.to_path_buf()
    } else {
        tmp = tempfile::tempdir_in(scratch).map_err(|e| ImageError::io(scratch, e))?;
        let raw = tmp.path().join("disk.raw");
        qemu_img::convert_to_raw(image, format.qemu_name(), &raw)?;
        raw
    };
    let size = std::fs::metadata(&raw)
        .map_err(|e| ImageError::io(&raw, e))?
        .len();
    if size != layout.size {
        return Err(ImageError::Tool(format!(
            "{}: the disk holds {size} bytes but was made with {}",
            image.display(),
            layout.size
        )));
    }
    sfdisk_verify(&raw)?;
    for part in &layout.partitions {
        e2fsck_partition(&raw, part)?;
    }
    if let Some(esp) = &layout.esp {
        fsck_esp(&raw, esp)?;
    }
    Ok(())
}
