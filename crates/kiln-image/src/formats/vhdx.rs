//! VHDX: the identifiers qemu-img draws at random, replaced by derived ones.
//!
//! Both headers (at 64 and 128 KiB) get derived file-write and data-write GUIDs and
//! sequence numbers 1 and 2 in their original order (the higher one is current), and
//! fresh CRC-32C checksums. The log must be unused (zero log GUID): its stale entries,
//! which carry a random log GUID, are zeroed. The virtual disk id (the `Page83Data`
//! metadata item) is replaced too.

use super::{derived_uuid, open_rw, read_at, unexpected, write_at};
use crate::ImageError;
use std::fs::File;
use std::path::Path;

const HEADERS: [u64; 2] = [64 << 10, 128 << 10];
const HEADER_SIZE: usize = 4096;
const REGION_TABLE: u64 = 192 << 10;
const REGION_TABLE_SIZE: usize = 64 << 10;
/// Region GUID of the metadata region, on-disk (mixed-endian) bytes.
const METADATA_REGION: &str = "8B7CA206-4790-4B9A-B8FE-575F050F886E";
/// Metadata item GUID of the virtual disk id.
const PAGE83_ITEM: &str = "BECA12AB-B2E6-4523-93EF-C309E000C746";

/// Replaces the random identifiers of the VHDX at `path` with ones derived from `seed`.
pub(super) fn stamp(path: &Path, seed: &str) -> Result<(), ImageError> {
    let file = open_rw(path)?;
    let mut headers = Vec::new();
    for offset in HEADERS {
        let h = read_at(&file, path, offset, HEADER_SIZE)?;
        if &h[0..4] != b"head" {
            return Err(unexpected(path, "vhdx", "no header signature"));
        }
        if h[48..64].iter().any(|&b| b != 0) {
            return Err(unexpected(path, "vhdx", "the log is in use"));
        }
        headers.push(h);
    }
    let (log_offset, log_length) = (le64(&headers[0], 72), le32(&headers[0], 68));
    let first_is_newer = le64(&headers[0], 8) > le64(&headers[1], 8);
    for (i, (offset, mut h)) in HEADERS.into_iter().zip(headers).enumerate() {
        let newer = (i == 0) == first_is_newer;
        h[8..16].copy_from_slice(&(1 + u64::from(newer)).to_le_bytes());
        h[16..32].copy_from_slice(&derived_uuid(seed, "vhdx file write guid"));
        h[32..48].copy_from_slice(&derived_uuid(seed, &format!("vhdx data write guid {i}")));
        set_checksum(&mut h);
        write_at(&file, path, offset, &h)?;
    }
    zero(&file, path, log_offset, u64::from(log_length))?;
    stamp_disk_id(&file, path, seed)
}

/// Writes the derived virtual disk id into the `Page83Data` metadata item.
fn stamp_disk_id(file: &File, path: &Path, seed: &str) -> Result<(), ImageError> {
    let table = read_at(file, path, REGION_TABLE, REGION_TABLE_SIZE)?;
    if &table[0..4] != b"regi" {
        return Err(unexpected(path, "vhdx", "no region table"));
    }
    let count = le32(&table, 8) as usize;
    let metadata_guid = guid_bytes(METADATA_REGION);
    let region = (0..count.min(2047))
        .map(|i| &table[16 + 32 * i..48 + 32 * i])
        .find(|entry| entry[0..16] == metadata_guid)
        .map(|entry| le64(entry, 16))
        .ok_or_else(|| unexpected(path, "vhdx", "no metadata region"))?;
    let meta = read_at(file, path, region, 64 << 10)?;
    if &meta[0..8] != b"metadata" {
        return Err(unexpected(path, "vhdx", "no metadata table"));
    }
    let entries = usize::from(u16::from_le_bytes([meta[10], meta[11]]));
    let page83 = guid_bytes(PAGE83_ITEM);
    let item = (0..entries.min(2047))
        .map(|i| &meta[32 + 32 * i..64 + 32 * i])
        .find(|entry| entry[0..16] == page83)
        .ok_or_else(|| unexpected(path, "vhdx", "no virtual disk id"))?;
    if le32(item, 20) != 16 {
        return Err(unexpected(path, "vhdx", "virtual disk id is not 16 bytes"));
    }
    let at = region + u64::from(le32(item, 16));
    write_at(file, path, at, &derived_uuid(seed, "vhdx virtual disk id"))
}

fn zero(file: &File, path: &Path, offset: u64, len: u64) -> Result<(), ImageError> {
    if len > 256 << 20 {
        return Err(unexpected(path, "vhdx", "log larger than 256 MiB"));
    }
    write_at(file, path, offset, &vec![0u8; len as usize])
}

fn set_checksum(header: &mut [u8]) {
    header[4..8].fill(0);
    let sum = crc32c(header);
    header[4..8].copy_from_slice(&sum.to_le_bytes());
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

/// A GUID string in Microsoft's on-disk layout: the first three groups little-endian.
fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// CRC-32C (Castagnoli), as VHDX checksums use.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn guid_layout_is_mixed_endian() {
        let b = guid_bytes("8B7CA206-4790-4B9A-B8FE-575F050F886E");
        assert_eq!(&b[..8], &[0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B]);
        assert_eq!(&b[8..], &[0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E]);
    }
}
