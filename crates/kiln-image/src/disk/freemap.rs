//! The blocks an ext4 filesystem does not use, from its block bitmaps: what a disk copier
//! may skip (a used-then-deleted file's blocks cost nothing).
//!
//! Only groups whose bitmap is initialised count: a group flagged `BLOCK_UNINIT` is
//! treated as used, which is never wrong, only less thorough.

use super::ctime::Geometry;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

const SUPERBLOCK_OFFSET: u64 = 1024;
/// `bg_flags`: the group's block bitmap was never written.
const BG_BLOCK_UNINIT: u16 = 0x2;

/// Free byte ranges (relative to the disk, sorted) of the ext4 filesystem starting at
/// byte `offset` of `disk`; empty when there is no ext4 superblock there.
pub(crate) fn free_ranges(disk: &File, offset: u64) -> io::Result<Vec<Range<u64>>> {
    let mut sb = vec![0u8; 1024];
    if disk
        .read_exact_at(&mut sb, offset + SUPERBLOCK_OFFSET)
        .is_err()
    {
        return Ok(Vec::new());
    }
    let Some(g) = Geometry::parse(&sb) else {
        return Ok(Vec::new());
    };
    let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap_or_default());
    let blocks_per_group = u32_at(0x20) as u64;
    let blocks_count = u32_at(0x04) as u64
        | if g.is_64bit {
            (u32_at(0x150) as u64) << 32
        } else {
            0
        };
    if blocks_per_group == 0 || blocks_per_group > 8 * g.block_size {
        return Ok(Vec::new());
    }
    let data_blocks = blocks_count.saturating_sub(g.first_data_block);
    let groups = data_blocks.div_ceil(blocks_per_group);
    let gdt = offset + (g.first_data_block + 1) * g.block_size;
    let mut descs = vec![0u8; groups as usize * g.desc_size];
    disk.read_exact_at(&mut descs, gdt)?;
    let mut bitmap = vec![0u8; g.block_size as usize];
    let mut free: Vec<Range<u64>> = Vec::new();
    for (group, desc) in descs.chunks_exact(g.desc_size).enumerate() {
        let word = |o: usize| u32::from_le_bytes(desc[o..o + 4].try_into().unwrap_or_default());
        let flags = u16::from_le_bytes([desc[0x12], desc[0x13]]);
        if flags & BG_BLOCK_UNINIT != 0 {
            continue;
        }
        let hi = if g.is_64bit && g.desc_size >= 0x24 {
            (word(0x20) as u64) << 32
        } else {
            0
        };
        let bitmap_block = hi | word(0x0) as u64;
        if bitmap_block == 0 || bitmap_block >= blocks_count {
            continue;
        }
        disk.read_exact_at(&mut bitmap, offset + bitmap_block * g.block_size)?;
        let first = g.first_data_block + group as u64 * blocks_per_group;
        let count = blocks_per_group.min(blocks_count - first);
        for bit in 0..count {
            if bitmap[(bit / 8) as usize] & (1 << (bit % 8)) != 0 {
                continue;
            }
            let start = offset + (first + bit) * g.block_size;
            match free.last_mut() {
                Some(last) if last.end == start => last.end += g.block_size,
                _ => free.push(start..start + g.block_size),
            }
        }
    }
    Ok(free)
}
