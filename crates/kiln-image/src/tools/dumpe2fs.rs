//! `dumpe2fs` (e2fsprogs): which inodes of an ext4 filesystem are in use.

use super::{e2fs_device_arg, split_image_path, Program};
use crate::ImageError;
use std::ops::RangeInclusive;
use std::path::Path;

pub(crate) const DUMPE2FS: Program = Program::new("dumpe2fs", "e2fsprogs");

/// The inode numbers in use in the ext4 filesystem at `offset` in `image`, as sorted
/// ranges (read from the per-group free-inode lists).
pub fn used_inodes(image: &Path, offset: u64) -> Result<Vec<RangeInclusive<u32>>, ImageError> {
    let (dir, name) = split_image_path(image)?;
    let mut cmd = DUMPE2FS.command()?;
    cmd.current_dir(&dir).arg(e2fs_device_arg(&name, offset));
    let doing = format!(
        "listing the inodes of {} at offset {offset}",
        image.display()
    );
    let output = DUMPE2FS.run(&mut cmd, &doing)?;
    parse_used_inodes(&String::from_utf8_lossy(&output.stdout))
        .ok_or_else(|| ImageError::Tool(format!("{doing}: unexpected dumpe2fs output")))
}

/// Parses `dumpe2fs` output: `Inodes per group:`, then each `Group N:` with its
/// `Free inodes: a-b, c` line. `None` when the output lacks them.
fn parse_used_inodes(text: &str) -> Option<Vec<RangeInclusive<u32>>> {
    let per_group: u32 = header_value(text, "Inodes per group:")?;
    let mut used = Vec::new();
    let mut group: Option<u32> = None;
    let mut groups = 0;
    for line in text.lines() {
        if let Some(number) = group_number(line) {
            group = Some(number);
        } else if let (Some(g), Some(list)) = (group, line.strip_prefix("  Free inodes:")) {
            // (Indented: the superblock's own `Free inodes:` count is not a group's list.)
            group = None;
            groups += 1;
            let first = g.checked_mul(per_group)?.checked_add(1)?;
            let last = first.checked_add(per_group - 1)?;
            used.extend(complement(first..=last, &parse_ranges(list)?));
        }
    }
    (groups > 0).then_some(used)
}

/// `N` of a `Group N: (Blocks …)` line (not of header lines like `Group descriptor size:`).
fn group_number(line: &str) -> Option<u32> {
    line.strip_prefix("Group ")?.split(':').next()?.parse().ok()
}

fn header_value(text: &str, key: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().parse().ok())
}

/// `"12-20, 25, 30-31"` → ranges; an empty list is no range.
fn parse_ranges(list: &str) -> Option<Vec<RangeInclusive<u32>>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match item.split_once('-') {
            Some((a, b)) => Some(a.parse().ok()?..=b.parse().ok()?),
            None => {
                let n = item.parse().ok()?;
                Some(n..=n)
            }
        })
        .collect()
}

/// The parts of `whole` not covered by the sorted, disjoint `holes`.
fn complement(
    whole: RangeInclusive<u32>,
    holes: &[RangeInclusive<u32>],
) -> Vec<RangeInclusive<u32>> {
    let mut out = Vec::new();
    let mut next = *whole.start();
    for hole in holes {
        if *hole.start() > next {
            out.push(next..=hole.start() - 1);
        }
        next = next.max(hole.end().saturating_add(1));
    }
    if next <= *whole.end() {
        out.push(next..=*whole.end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn used_is_the_complement_of_free() {
        let text = "Group descriptor size:    64\n\
                    Free inodes:              12657\n\
                    Inodes per group:         100\n\
                    Group 0: (Blocks 0-10)\n  Free inodes: 13-20, 25, 30-100\n\
                    Group 1: (Blocks 11-20)\n  Free inodes: \n\
                    Group 2: (Blocks 21-30)\n  Free inodes: 201-300\n";
        assert_eq!(
            parse_used_inodes(text).unwrap(),
            vec![1..=12, 21..=24, 26..=29, 101..=200]
        );
    }

    #[test]
    fn garbage_is_rejected() {
        assert!(parse_used_inodes("nothing here").is_none());
        assert!(parse_used_inodes("Inodes per group: 8\nFree inodes: 3\n").is_none());
        assert!(parse_used_inodes("Inodes per group: 8\nGroup 0:\n  Free inodes: x-y\n").is_none());
    }
}
