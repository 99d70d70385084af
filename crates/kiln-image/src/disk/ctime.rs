//! Making the times of every used inode of a fresh ext4 filesystem reproducible, in place.
//!
//! `mke2fs -d` copies each source file's times. The change time is the moment the build
//! wrote the file and the access time the last read, so two builds of the same tree
//! differ there; a modification time may be later than the epoch. So, per inode:
//! - ctime becomes the epoch (no system call could have set it in the tree);
//! - mtime is clamped to the epoch;
//! - atime becomes the (clamped) mtime.
//!
//! debugfs takes about 100 µs per inode for this (a second and a half for a Debian
//! root), so this reads each block group's inode table once, sets the fields (with
//! their `_extra` words: epoch bits, nanoseconds), recomputes the inode checksum when
//! the filesystem has `metadata_csum`, and writes the table back. It changes nothing
//! else: block and group checksums do not cover inode tables.

use crate::ImageError;
use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SUPERBLOCK_OFFSET: u64 = 1024;
const EXT4_MAGIC: u16 = 0xEF53;
const INCOMPAT_64BIT: u32 = 0x80;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
/// Size of the original (rev 0) inode; larger inodes carry `i_extra_isize` bytes more.
const GOOD_OLD_INODE_SIZE: usize = 128;

/// Inode field offsets (ext4 on-disk layout).
const I_ATIME: usize = 0x08;
const I_CTIME: usize = 0x0C;
const I_MTIME: usize = 0x10;
const I_GENERATION: usize = 0x64;
const I_CHECKSUM_LO: usize = 0x7C;
const I_EXTRA_ISIZE: usize = 0x80;
const I_CHECKSUM_HI: usize = 0x82;
const I_CTIME_EXTRA: usize = 0x84;
const I_MTIME_EXTRA: usize = 0x88;
const I_ATIME_EXTRA: usize = 0x8C;

/// What the superblock says about where inodes are and how they are checksummed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub block_size: u64,
    pub inodes_per_group: u32,
    pub inode_size: usize,
    pub first_data_block: u64,
    pub desc_size: usize,
    pub is_64bit: bool,
    /// `Some(seed)` when inodes carry checksums.
    pub csum_seed: Option<u32>,
}

impl Geometry {
    /// Reads the superblock (1024 bytes starting at byte 1024 of the filesystem).
    pub(crate) fn parse(sb: &[u8]) -> Option<Geometry> {
        let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap_or_default());
        if sb.len() < 1024 || u16_at(0x38) != EXT4_MAGIC {
            return None;
        }
        let incompat = u32_at(0x60);
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let csum_seed = (u32_at(0x64) & RO_COMPAT_METADATA_CSUM != 0).then(|| {
            if incompat & INCOMPAT_CSUM_SEED != 0 {
                u32_at(0x270)
            } else {
                crc32c_raw(!0, &sb[0x68..0x78])
            }
        });
        let inode_size = match u32_at(0x4C) {
            0 => GOOD_OLD_INODE_SIZE,
            _ => u16_at(0x58) as usize,
        };
        let geometry = Geometry {
            block_size: 1024u64 << u32_at(0x18).min(6),
            inodes_per_group: u32_at(0x28),
            inode_size,
            first_data_block: u32_at(0x14).into(),
            desc_size: if is_64bit {
                u16_at(0xFE).max(32) as usize
            } else {
                32
            },
            is_64bit,
            csum_seed,
        };
        (geometry.inodes_per_group > 0 && inode_size >= GOOD_OLD_INODE_SIZE).then_some(geometry)
    }
}

/// Fixes the times (see the module documentation) of the inodes in `used` in the ext4
/// filesystem that starts at byte `offset` of `raw`.
pub(crate) fn fix_times(
    raw: &Path,
    offset: u64,
    used: &[RangeInclusive<u32>],
    epoch: i64,
) -> Result<(), ImageError> {
    let file = File::options()
        .read(true)
        .write(true)
        .open(raw)
        .map_err(|e| ImageError::io(raw, e))?;
    let io = |e| ImageError::io(raw, e);
    let mut sb = vec![0u8; 1024];
    file.read_exact_at(&mut sb, offset + SUPERBLOCK_OFFSET)
        .map_err(io)?;
    let g = Geometry::parse(&sb).ok_or_else(|| {
        ImageError::Tool(format!(
            "{}: no ext4 superblock at offset {offset}",
            raw.display()
        ))
    })?;
    let mut groups: Vec<u32> = used
        .iter()
        .flat_map(|r| {
            let first = (r.start().max(&1) - 1) / g.inodes_per_group;
            let last = (r.end().max(&1) - 1) / g.inodes_per_group;
            first..=last
        })
        .collect();
    groups.dedup();
    let table_bytes = g.inodes_per_group as usize * g.inode_size;
    let mut table = vec![0u8; table_bytes];
    for group in groups {
        let at = offset + inode_table_block(&file, offset, &g, group).map_err(io)? * g.block_size;
        file.read_exact_at(&mut table, at).map_err(io)?;
        let first_ino = group * g.inodes_per_group + 1;
        for (i, inode) in table.chunks_exact_mut(g.inode_size).enumerate() {
            let ino = first_ino + i as u32;
            if used.iter().any(|r| r.contains(&ino)) {
                fix_inode_times(inode, ino, epoch, g.csum_seed);
            }
        }
        file.write_all_at(&table, at).map_err(io)?;
    }
    Ok(())
}

/// Where group `group`'s inode table starts (a block number), from its descriptor.
fn inode_table_block(file: &File, offset: u64, g: &Geometry, group: u32) -> io::Result<u64> {
    let gdt = (g.first_data_block + 1) * g.block_size;
    let mut desc = vec![0u8; g.desc_size];
    file.read_exact_at(&mut desc, offset + gdt + group as u64 * g.desc_size as u64)?;
    let lo = u32::from_le_bytes(desc[0x8..0xC].try_into().unwrap_or_default()) as u64;
    let hi = if g.is_64bit && g.desc_size >= 0x2C {
        u32::from_le_bytes(desc[0x28..0x2C].try_into().unwrap_or_default()) as u64
    } else {
        0
    };
    Ok(hi << 32 | lo)
}

/// Fixes one inode's times and, with `csum_seed`, its checksum. Pure.
pub(crate) fn fix_inode_times(inode: &mut [u8], ino: u32, epoch: i64, csum_seed: Option<u32>) {
    let extra = if inode.len() > GOOD_OLD_INODE_SIZE {
        u16::from_le_bytes([inode[I_EXTRA_ISIZE], inode[I_EXTRA_ISIZE + 1]]) as usize
    } else {
        0
    };
    // Whether the extra part holds the 4-byte field at `at`.
    let holds = |at: usize| extra >= at + 4 - GOOD_OLD_INODE_SIZE;
    let word = |inode: &[u8], at: usize| {
        u32::from_le_bytes(inode[at..at + 4].try_into().unwrap_or_default())
    };
    let set =
        |inode: &mut [u8], at: usize, v: u32| inode[at..at + 4].copy_from_slice(&v.to_le_bytes());
    // Bits 0-1 of an `_extra` word extend the seconds past 2038; bits 2-31 are nanoseconds.
    let epoch_bits = ((epoch - (epoch as i32) as i64) >> 32) as u32 & 3;

    set(inode, I_CTIME, epoch as u32);
    if holds(I_CTIME_EXTRA) {
        set(inode, I_CTIME_EXTRA, epoch_bits);
    }
    let mut mtime = word(inode, I_MTIME) as i32 as i64;
    if holds(I_MTIME_EXTRA) {
        mtime += ((word(inode, I_MTIME_EXTRA) & 3) as i64) << 32;
    }
    if mtime > epoch {
        set(inode, I_MTIME, epoch as u32);
        if holds(I_MTIME_EXTRA) {
            set(inode, I_MTIME_EXTRA, epoch_bits);
        }
    }
    set(inode, I_ATIME, word(inode, I_MTIME));
    if holds(I_ATIME_EXTRA) {
        let mtime_extra = if holds(I_MTIME_EXTRA) {
            word(inode, I_MTIME_EXTRA)
        } else {
            epoch_bits
        };
        set(inode, I_ATIME_EXTRA, mtime_extra);
    }
    let Some(seed) = csum_seed else {
        return;
    };
    let has_hi = extra >= I_CHECKSUM_HI + 2 - GOOD_OLD_INODE_SIZE;
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
    }
    let mut crc = crc32c_raw(seed, &ino.to_le_bytes());
    crc = crc32c_raw(crc, &inode[I_GENERATION..I_GENERATION + 4]);
    crc = crc32c_raw(crc, inode);
    inode[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].copy_from_slice(&(crc as u16).to_le_bytes());
    if has_hi {
        inode[I_CHECKSUM_HI..I_CHECKSUM_HI + 2]
            .copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
    }
}

/// CRC-32C continued from `crc` without the usual pre- and post-inversion, the form
/// ext4 (and e2fsprogs' `ext2fs_crc32c_le`) uses for metadata checksums.
fn crc32c_raw(crc: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!crc, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_crc_matches_ext4_convention() {
        // crc32c("123456789") is 0xE3069283 with the standard inversions.
        assert_eq!(!crc32c_raw(!0, b"123456789"), 0xE306_9283);
        // Continuing is the same as one pass.
        let whole = crc32c_raw(7, b"abcdef");
        assert_eq!(crc32c_raw(crc32c_raw(7, b"abc"), b"def"), whole);
    }

    fn inode(mtime: u32, mtime_nsec: u32) -> Vec<u8> {
        let mut inode = vec![0xAAu8; 256];
        inode[I_EXTRA_ISIZE..I_EXTRA_ISIZE + 2].copy_from_slice(&32u16.to_le_bytes());
        inode[I_MTIME..I_MTIME + 4].copy_from_slice(&mtime.to_le_bytes());
        inode[I_MTIME_EXTRA..I_MTIME_EXTRA + 4].copy_from_slice(&(mtime_nsec << 2).to_le_bytes());
        inode
    }

    fn word(inode: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(inode[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn times_and_checksum_fields() {
        let epoch = 1_700_000_000;
        // Modified after the epoch: clamped, nanoseconds dropped; atime follows.
        let mut late = inode(1_800_000_000, 12345);
        fix_inode_times(&mut late, 12, epoch, Some(0x1234_5678));
        for (field, extra) in [
            (I_CTIME, I_CTIME_EXTRA),
            (I_MTIME, I_MTIME_EXTRA),
            (I_ATIME, I_ATIME_EXTRA),
        ] {
            assert_eq!(word(&late, field), epoch as u32);
            assert_eq!(word(&late, extra), 0, "no nanoseconds, no epoch bits");
        }
        // Modified before: kept, with its nanoseconds; atime is the same time.
        let mut early = inode(1_000_000_000, 777);
        fix_inode_times(&mut early, 13, epoch, None);
        assert_eq!(word(&early, I_MTIME), 1_000_000_000);
        assert_eq!(word(&early, I_ATIME), 1_000_000_000);
        assert_eq!(word(&early, I_ATIME_EXTRA), 777 << 2);
        assert_eq!(word(&early, I_CTIME), epoch as u32);
        // The stored checksum is the CRC of the inode with its checksum fields zeroed.
        let lo = u16::from_le_bytes([late[I_CHECKSUM_LO], late[I_CHECKSUM_LO + 1]]) as u32;
        let hi = u16::from_le_bytes([late[I_CHECKSUM_HI], late[I_CHECKSUM_HI + 1]]) as u32;
        let mut zeroed = late.clone();
        zeroed[I_CHECKSUM_LO..I_CHECKSUM_LO + 2].fill(0);
        zeroed[I_CHECKSUM_HI..I_CHECKSUM_HI + 2].fill(0);
        let mut crc = crc32c_raw(0x1234_5678, &12u32.to_le_bytes());
        crc = crc32c_raw(crc, &zeroed[I_GENERATION..I_GENERATION + 4]);
        crc = crc32c_raw(crc, &zeroed);
        assert_eq!(hi << 16 | lo, crc);
        // After 2038 the extra words carry the epoch bits.
        let mut future = inode(5, 0);
        fix_inode_times(&mut future, 12, 1 << 32, None);
        assert_eq!(word(&future, I_CTIME_EXTRA), 1);
        // A small (128-byte) inode has no extra words and no high checksum half.
        let mut small = vec![0u8; 128];
        fix_inode_times(&mut small, 11, epoch, Some(1));
        assert_eq!(word(&small, I_CTIME), epoch as u32);
    }

    #[test]
    fn superblock_geometry() {
        let mut sb = vec![0u8; 1024];
        assert_eq!(Geometry::parse(&sb), None);
        sb[0x38..0x3A].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        sb[0x18] = 2; // 4096-byte blocks
        sb[0x28..0x2C].copy_from_slice(&8192u32.to_le_bytes());
        sb[0x4C] = 1;
        sb[0x58..0x5A].copy_from_slice(&256u16.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
        sb[0x64..0x68].copy_from_slice(&RO_COMPAT_METADATA_CSUM.to_le_bytes());
        sb[0xFE..0x100].copy_from_slice(&64u16.to_le_bytes());
        let g = Geometry::parse(&sb).unwrap();
        assert_eq!((g.block_size, g.inode_size, g.desc_size), (4096, 256, 64));
        assert_eq!(g.csum_seed, Some(crc32c_raw(!0, &[0; 16])));
    }
}
