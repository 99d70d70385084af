//! `qemu-img` (qemu-utils): format conversion, consistency checks and image facts.

use super::Program;
use crate::ImageError;
use std::path::Path;

pub(crate) const QEMU_IMG: Program = Program::new("qemu-img", "qemu-utils");

/// What `qemu-img info` says about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// qemu's format name (`raw`, `qcow2`, `vmdk`, `vhdx`, `vdi`).
    pub format: String,
    /// Size of the disk the image holds, in bytes.
    pub virtual_size: u64,
    /// Bytes the file occupies on the host (sparse files use less than their length).
    pub actual_size: u64,
}

/// Converts the raw image `src` to `dst` in qemu's format `format`, compressing the
/// clusters when `compress` (qcow2 only). Writes in order (no `-W`), which keeps the
/// output reproducible.
///
/// The output is not flushed to disk (`-t unsafe`): like any file kiln writes for the
/// user it reaches the disk with the rest of the page cache, and waiting for it here
/// costs seconds while the disk is still busy with the build's own writes.
pub fn convert(src: &Path, dst: &Path, format: &str, compress: bool) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["convert", "-q", "-t", "unsafe", "-f", "raw", "-O", format]);
    if compress {
        cmd.arg("-c");
    }
    cmd.arg(src).arg(dst);
    QEMU_IMG.run(
        &mut cmd,
        &format!(
            "converting {} to {format} at {}",
            src.display(),
            dst.display()
        ),
    )?;
    Ok(())
}

/// `qemu-img check`: the image's metadata is consistent, with no leaked clusters.
pub fn check(image: &Path, format: &str) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["check", "-q", "-U", "-f", format]).arg(image);
    let doing = format!("checking {} ({format})", image.display());
    let output = cmd.output().map_err(|e| QEMU_IMG.spawn_error(&doing, e))?;
    match output.status.code() {
        Some(0) => Ok(()),
        Some(2) => Err(ImageError::Tool(format!(
            "{doing}: the image is corrupt:\n{}",
            String::from_utf8_lossy(&output.stdout).trim()
        ))),
        Some(3) => Err(ImageError::Tool(format!(
            "{doing}: the image has leaked clusters:\n{}",
            String::from_utf8_lossy(&output.stdout).trim()
        ))),
        Some(63) => Err(ImageError::Tool(format!(
            "{doing}: qemu-img cannot check the {format} format"
        ))),
        _ => Err(QEMU_IMG.failure(&doing, &output)),
    }
}

/// `qemu-img info --output=json`.
pub fn info(image: &Path) -> Result<ImageInfo, ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["info", "-U", "--output=json"]).arg(image);
    let doing = format!("reading the image facts of {}", image.display());
    let output = QEMU_IMG.run(&mut cmd, &doing)?;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|e| ImageError::Tool(format!("{doing}: {e}")))?;
    let number = |key: &str| {
        json[key]
            .as_u64()
            .ok_or_else(|| ImageError::Tool(format!("{doing}: qemu-img gave no `{key}`")))
    };
    Ok(ImageInfo {
        format: json["format"].as_str().unwrap_or_default().to_string(),
        virtual_size: number("virtual-size")?,
        actual_size: number("actual-size")?,
    })
}

/// The first `sectors` 512-byte sectors of the disk in `src` (qemu's format `format`)
/// as a raw file at `dst` (`qemu-img dd`): enough to read its partition table.
pub fn read_head(src: &Path, format: &str, dst: &Path, sectors: u64) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["dd", "-U", "-f", format, "-O", "raw", "bs=512"])
        .arg(format!("count={sectors}"))
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", dst.display()));
    QEMU_IMG.run(
        &mut cmd,
        &format!("reading the first sectors of {} ({format})", src.display()),
    )?;
    Ok(())
}

/// Converts `src` (in qemu's format `format`) back to a raw disk at `dst`.
pub fn convert_to_raw(src: &Path, format: &str, dst: &Path) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["convert", "-q", "-U", "-f", format, "-O", "raw"])
        .arg(src)
        .arg(dst);
    QEMU_IMG.run(
        &mut cmd,
        &format!(
            "converting {} ({format}) to raw at {}",
            src.display(),
            dst.display()
        ),
    )?;
    Ok(())
}

/// `qemu-img create -f qcow2 -b BACKING -F FORMAT DISK`: a qcow2 overlay on `backing`.
/// `backing` is recorded exactly as given; a relative path is resolved (now and by QEMU
/// later) from `disk`'s directory.
pub fn create_overlay(backing: &Path, backing_format: &str, disk: &Path) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["create", "-q", "-f", "qcow2", "-b"])
        .arg(backing)
        .args(["-F", backing_format])
        .arg(disk);
    QEMU_IMG.run(
        &mut cmd,
        &format!(
            "creating {} backed by {}",
            disk.display(),
            backing.display()
        ),
    )?;
    Ok(())
}

/// Converts `src` (in `src_format`, its backing chain included) into a self-contained
/// `dst` in `dst_format`.
pub fn convert_format(
    src: &Path,
    src_format: &str,
    dst: &Path,
    dst_format: &str,
) -> Result<(), ImageError> {
    let mut cmd = QEMU_IMG.command()?;
    cmd.args(["convert", "-q", "-U", "-t", "unsafe", "-f", src_format])
        .args(["-O", dst_format])
        .arg(src)
        .arg(dst);
    QEMU_IMG.run(
        &mut cmd,
        &format!(
            "converting {} ({src_format}) to {dst_format} at {}",
            src.display(),
            dst.display()
        ),
    )?;
    Ok(())
}
