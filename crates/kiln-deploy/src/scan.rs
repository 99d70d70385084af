//! What of a disk to pack: its raw form (qcow2 and other qemu formats are converted
//! first) and the blocks its ext4 filesystems have free.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// A raw disk to read: the input itself, or a raw copy of it that goes away when dropped.
pub enum RawInput {
    Original(PathBuf),
    Converted(tempfile::TempPath),
}

impl RawInput {
    pub fn path(&self) -> &Path {
        match self {
            RawInput::Original(p) => p,
            RawInput::Converted(t) => t,
        }
    }
}

/// qcow2's magic bytes.
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// `src` as a raw disk. A qcow2 image is converted (sparse, with `qemu-img` from
/// qemu-utils) into a temporary file in `scratch_dir`; anything else is read as raw.
pub fn raw_input(src: &Path, scratch_dir: &Path) -> Result<RawInput> {
    let mut magic = [0u8; 4];
    let mut file = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let n = file.read(&mut magic).unwrap_or(0);
    if n < 4 || &magic != QCOW2_MAGIC {
        return Ok(RawInput::Original(src.to_path_buf()));
    }
    let tmp = tempfile::Builder::new()
        .prefix(".kzi-raw-")
        .tempfile_in(scratch_dir)
        .with_context(|| format!("creating a scratch file in {}", scratch_dir.display()))?
        .into_temp_path();
    kiln_image::tools::qemu_img::convert_to_raw(src, "qcow2", &tmp)?;
    Ok(RawInput::Converted(tmp))
}

/// The free byte ranges of the ext4 filesystems on the raw disk `raw` (sorted).
pub fn ext4_free_ranges(raw: &Path) -> Result<Vec<Range<u64>>> {
    Ok(kiln_image::disk::ext4_free_ranges(raw)?)
}
