//! Disk image formats: raw (sparse) and, through `qemu-img convert`, qcow2 (optionally
//! compressed), vmdk, vhdx and vdi.
//!
//! qemu-img writes qcow2 (compressed or not) and raw deterministically. The other formats
//! carry identifiers it draws at random: the VMDK content id, the VDI image and
//! modification UUIDs, and the VHDX write GUIDs, header sequence numbers, virtual disk id
//! and log entries. [`convert`] replaces them with values derived from the image's seed
//! (and empties the VHDX log, which is not in use once qemu-img has finished), so that
//! every format is reproducible. A VMDK also records its own file name: the same image
//! written under another name differs in those bytes.

mod vdi;
mod vhdx;
mod vmdk;

use crate::tools::qemu_img;
use crate::ImageError;
use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

/// An output format for a disk image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A sparse raw disk.
    Raw,
    /// QEMU's copy-on-write format; `compressed` deflates every cluster (smaller, slower
    /// to write, and clusters the guest rewrites are stored uncompressed).
    Qcow2 { compressed: bool },
    /// VMware (monolithic sparse).
    Vmdk,
    /// Hyper-V (dynamic).
    Vhdx,
    /// VirtualBox (dynamic).
    Vdi,
}

/// Names accepted by [`Format::from_str`].
pub const FORMAT_NAMES: &[&str] = &["raw", "qcow2", "vmdk", "vhdx", "vdi"];

impl Format {
    /// The format a file name asks for by its extension: `.raw` and `.img` are raw,
    /// `.qcow2`, `.vmdk`, `.vhdx`, `.vdi` as named (case-insensitive). `None` otherwise.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "img" => Some(Format::Raw),
            other => other.parse().ok(),
        }
    }

    /// qemu-img's name for the format.
    pub fn qemu_name(&self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 { .. } => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhdx => "vhdx",
            Format::Vdi => "vdi",
        }
    }
}

impl FromStr for Format {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2 { compressed: false }),
            "vmdk" => Ok(Format::Vmdk),
            "vhdx" => Ok(Format::Vhdx),
            "vdi" => Ok(Format::Vdi),
            other => Err(ImageError::Tool(format!(
                "unknown disk image format `{other}`: use one of {}",
                FORMAT_NAMES.join(", ")
            ))),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

/// Writes the raw disk `raw` as `out` in `format`. Identifiers the format needs are
/// derived from `seed` (the image id), so the same raw disk and seed give the same file.
///
/// The file is made in a new directory next to `out` under its final name (a VMDK
/// records it), then renamed into place: `out` never holds half an image. A raw output
/// is a sparse copy (or nothing at all when `out` is `raw` itself).
pub fn convert(raw: &Path, format: Format, out: &Path, seed: &str) -> Result<(), ImageError> {
    if format == Format::Raw && same_file(raw, out) {
        return Ok(());
    }
    let name = out
        .file_name()
        .ok_or_else(|| ImageError::Tool(format!("{}: not a file name", out.display())))?;
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".kiln-convert-")
        .tempdir_in(dir)
        .map_err(|e| ImageError::io(dir, e))?;
    let tmp = staging.path().join(name);
    match format {
        Format::Raw => crate::disk::copy_sparse(raw, &tmp)?,
        Format::Qcow2 { compressed } => qemu_img::convert(raw, &tmp, "qcow2", compressed)?,
        Format::Vmdk => {
            qemu_img::convert(raw, &tmp, "vmdk", false)?;
            vmdk::stamp(&tmp, seed)?;
        }
        Format::Vhdx => {
            qemu_img::convert(raw, &tmp, "vhdx", false)?;
            vhdx::stamp(&tmp, seed)?;
        }
        Format::Vdi => {
            qemu_img::convert(raw, &tmp, "vdi", false)?;
            vdi::stamp(&tmp, seed)?;
        }
    }
    fs::rename(&tmp, out).map_err(|e| ImageError::io(out, e))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// A 16-byte identifier derived from `seed` for `purpose`, as a version 4 UUID.
fn derived_uuid(seed: &str, purpose: &str) -> [u8; 16] {
    let text = crate::disk::ids::Ids::new(seed).uuid(purpose);
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut out = [0u8; 16];
    // `uuid` always yields 32 hex digits.
    if let Ok(bytes) = hex::decode(hex) {
        out.copy_from_slice(&bytes[..16]);
    }
    out
}

/// Reads `len` bytes at `offset`, failing with a message naming the format.
fn read_at(file: &fs::File, path: &Path, offset: u64, len: usize) -> Result<Vec<u8>, ImageError> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| ImageError::io(path, e))?;
    Ok(buf)
}

fn write_at(file: &fs::File, path: &Path, offset: u64, bytes: &[u8]) -> Result<(), ImageError> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(bytes, offset)
        .map_err(|e| ImageError::io(path, e))
}

fn open_rw(path: &Path) -> Result<fs::File, ImageError> {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ImageError::io(path, e))
}

/// The error for a file whose layout is not what qemu-img writes.
fn unexpected(path: &Path, format: &str, what: &str) -> ImageError {
    ImageError::Tool(format!(
        "{}: not the {format} layout kiln expects from qemu-img ({what}); \
         this qemu-img version is not supported for reproducible {format} output",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_extensions() {
        for name in FORMAT_NAMES {
            assert_eq!(name.parse::<Format>().unwrap().to_string(), *name);
        }
        assert!("qcow3"
            .parse::<Format>()
            .unwrap_err()
            .to_string()
            .contains("qcow2"));
        assert_eq!(
            Format::from_extension(Path::new("a/web.QCOW2")),
            Some(Format::Qcow2 { compressed: false })
        );
        assert_eq!(
            Format::from_extension(Path::new("disk.img")),
            Some(Format::Raw)
        );
        assert_eq!(
            Format::from_extension(Path::new("disk.raw")),
            Some(Format::Raw)
        );
        assert_eq!(
            Format::from_extension(Path::new("disk.vhdx")),
            Some(Format::Vhdx)
        );
        assert_eq!(Format::from_extension(Path::new("disk.tar")), None);
        assert_eq!(Format::from_extension(Path::new("disk")), None);
    }

    #[test]
    fn derived_uuids_differ_by_purpose() {
        assert_ne!(derived_uuid("s", "a"), derived_uuid("s", "b"));
        assert_eq!(derived_uuid("s", "a"), derived_uuid("s", "a"));
        assert_eq!(derived_uuid("s", "a")[6] >> 4, 4);
    }
}
