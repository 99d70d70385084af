//! VMDK (monolithic sparse): the descriptor's content id (`CID=`) qemu-img draws at random.

use super::{derived_uuid, open_rw, read_at, unexpected, write_at};
use crate::ImageError;
use std::path::Path;

/// Replaces the content id with one derived from `seed`.
pub(super) fn stamp(path: &Path, seed: &str) -> Result<(), ImageError> {
    let file = open_rw(path)?;
    let header = read_at(&file, path, 0, 512)?;
    if &header[0..4] != b"KDMV" {
        return Err(unexpected(path, "vmdk", "no KDMV magic"));
    }
    let field = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let (offset, sectors) = (field(28), field(36));
    if offset == 0 || sectors == 0 || sectors > 2048 {
        return Err(unexpected(path, "vmdk", "no embedded descriptor"));
    }
    let descriptor = read_at(&file, path, offset * 512, (sectors * 512) as usize)?;
    let at = cid_position(&descriptor).ok_or_else(|| unexpected(path, "vmdk", "no CID line"))?;
    write_at(&file, path, offset * 512 + at as u64, cid(seed).as_bytes())
}

/// Where the 8 hex digits of the `CID=` line start.
fn cid_position(descriptor: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    for line in descriptor.split(|&b| b == b'\n') {
        if line.starts_with(b"CID=") && line.len() >= 12 {
            return Some(line_start + 4);
        }
        line_start += line.len() + 1;
    }
    None
}

/// A content id; `ffffffff` and `fffffffe` mean "no parent" and "unlinked" to VMware.
fn cid(seed: &str) -> String {
    let b = derived_uuid(seed, "vmdk cid");
    let value = u32::from_be_bytes([b[0], b[1], b[2], b[3]]).min(0xfff0_0000);
    format!("{value:08x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cid_not_parent_cid() {
        let d = b"# Disk DescriptorFile\nversion=1\nCID=dee799f9\nparentCID=ffffffff\n";
        let at = cid_position(d).unwrap();
        assert_eq!(&d[at..at + 8], b"dee799f9");
        assert!(cid_position(b"parentCID=ffffffff\n").is_none());
        assert_eq!(cid("x").len(), 8);
    }
}
