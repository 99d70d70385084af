//! VDI: the image UUID and last-modification UUID qemu-img draws at random (VirtualBox
//! refuses to register two disks with the same image UUID, so they stay seed-specific).

use super::{derived_uuid, open_rw, read_at, unexpected, write_at};
use crate::ImageError;
use std::path::Path;

const SIGNATURE: u32 = 0xbeda_107f;
/// Offsets of the image UUID and the last-modification UUID in a version 1.1 header.
const UUID_IMAGE: u64 = 0x188;
const UUID_MODIFY: u64 = 0x198;

/// Replaces both UUIDs with ones derived from `seed`.
pub(super) fn stamp(path: &Path, seed: &str) -> Result<(), ImageError> {
    let file = open_rw(path)?;
    let header = read_at(&file, path, 0, 0x200)?;
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    if word(0x40) != SIGNATURE {
        return Err(unexpected(path, "vdi", "no VDI signature"));
    }
    if word(0x44) != 0x0001_0001 || word(0x48) < 0x180 {
        return Err(unexpected(path, "vdi", "not a version 1.1 header"));
    }
    write_at(
        &file,
        path,
        UUID_IMAGE,
        &derived_uuid(seed, "vdi image uuid"),
    )?;
    write_at(
        &file,
        path,
        UUID_MODIFY,
        &derived_uuid(seed, "vdi modification uuid"),
    )
}
