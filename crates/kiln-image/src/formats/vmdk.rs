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
    let area = (sectors * 512) as usize;
    let descriptor = read_at(&file, path, offset * 512, area)?;
    let text_len = descriptor.iter().position(|&b| b == 0).unwrap_or(area);
    let text = with_cid(&descriptor[..text_len], &cid(seed))
        .ok_or_else(|| unexpected(path, "vmdk", "no CID line"))?;
    if text.len() > area {
        return Err(unexpected(path, "vmdk", "descriptor full"));
    }
    // The text is followed by zeros up to the end of its area; qemu writes the id
    // without leading zeros, so the text may grow or shrink by a few bytes.
    let mut padded = text;
    padded.resize(area, 0);
    write_at(&file, path, offset * 512, &padded)
}

/// The descriptor `text` with the value of its `CID=` line replaced by `cid`.
fn with_cid(text: &[u8], cid: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 8);
    let mut found = false;
    for (i, line) in text.split(|&b| b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        if !found && line.starts_with(b"CID=") {
            out.extend_from_slice(b"CID=");
            out.extend_from_slice(cid.as_bytes());
            found = true;
        } else {
            out.extend_from_slice(line);
        }
    }
    found.then_some(out)
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
    fn replaces_cid_of_any_length_not_parent_cid() {
        let d = b"# Disk DescriptorFile\nversion=1\nCID=ee799f9\nparentCID=ffffffff\n";
        let out = with_cid(d, "0123abcd").unwrap();
        assert_eq!(
            out,
            b"# Disk DescriptorFile\nversion=1\nCID=0123abcd\nparentCID=ffffffff\n"
        );
        assert!(with_cid(b"parentCID=ffffffff\n", "x").is_none());
        assert_eq!(cid("x").len(), 8);
    }
}
