//! Partition sizes and positions. Pure arithmetic: no I/O.
//!
//! Every partition starts on a MiB boundary; the first at 1 MiB (after the protective
//! MBR and the primary GPT), and the disk keeps its last MiB for the backup GPT.

use super::tree::Content;
use crate::ImageError;

pub(crate) const MIB: u64 = 1 << 20;
/// Room before the first partition and after the last.
const GPT_ROOM: u64 = MIB;
/// Smallest ESP: comfortably above FAT32's minimum cluster count with 512-byte clusters.
pub(crate) const ESP_MIN: u64 = 64 * MIB;
/// Free room in an ESP beyond its kernels and initrds (a kernel upgrade fits).
const ESP_SPARE: u64 = 32 * MIB;
/// Free room a root filesystem gets when its size is automatic.
const HEADROOM: u64 = 256 * MIB;
/// Bytes of filesystem per inode, as mke2fs' default `inode_ratio`.
const BYTES_PER_INODE: u64 = 16384;

pub(crate) fn round_up_mib(bytes: u64) -> u64 {
    bytes.div_ceil(MIB) * MIB
}

/// Human-readable MiB for messages.
pub(crate) fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes.div_ceil(MIB))
}

/// The ESP size for boot files totalling `payload` bytes.
pub(crate) fn esp_size(payload: u64) -> u64 {
    round_up_mib(payload + ESP_SPARE).max(ESP_MIN)
}

/// Inodes to give a filesystem of `size` bytes holding `content`: mke2fs' default
/// ratio, or more when the tree has many small files.
pub(crate) fn inode_count(size: u64, content: Content) -> u64 {
    (size / BYTES_PER_INODE).max(content.inodes + content.inodes / 4 + 1024)
}

/// The journal mke2fs adds to a filesystem of `size` bytes (its default sizes, for 4 KiB
/// blocks).
fn journal_bytes(size: u64) -> u64 {
    let blocks = size / 4096;
    let journal_blocks = match blocks {
        b if b < 32768 => 1024,
        b if b < 256 * 1024 => 4096,
        b if b < 512 * 1024 => 8192,
        b if b < 4096 * 1024 => 16384,
        b if b < 8192 * 1024 => 32768,
        b if b < 16384 * 1024 => 65536,
        b if b < 32768 * 1024 => 131072,
        _ => 262144,
    };
    journal_blocks * 4096
}

/// The smallest ext4 filesystem `mke2fs -d` can fill with `content`: its data plus 5%
/// for extent and directory index blocks, the inode tables, the journal, group
/// metadata, and 16 MiB of slack.
pub(crate) fn min_fs_size(content: Content) -> u64 {
    let data = content.bytes + content.bytes / 20 + 16 * MIB;
    let mut size = data;
    for _ in 0..4 {
        let inodes = inode_count(size, content);
        size = data + inodes * 256 + journal_bytes(size) + size / 128;
    }
    round_up_mib(size)
}

/// The automatic size: content × 1.3 plus headroom, and at least the minimum.
pub(crate) fn auto_fs_size(content: Content) -> u64 {
    round_up_mib(content.bytes + content.bytes * 3 / 10 + HEADROOM).max(min_fs_size(content))
}

/// What one root partition needs.
#[derive(Debug, Clone)]
pub(crate) struct Want {
    pub name: String,
    pub content: Content,
    /// The size asked for, if any.
    pub size: Option<u64>,
}

/// Where a partition lies on the disk, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Extent {
    pub offset: u64,
    pub size: u64,
}

/// The disk: the ESP (if any) first, then the root partitions in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    pub esp: Option<Extent>,
    pub roots: Vec<Extent>,
    pub disk_size: u64,
}

/// Sizes every partition and places them. Without `disk_size` each root partition gets
/// its asked size or its automatic size. With it, the last root partition without an
/// asked size takes all remaining space (if every size was asked, the rest of the disk
/// stays unallocated). Sizes are rounded up to whole MiB.
pub(crate) fn plan(
    esp: Option<u64>,
    wants: &[Want],
    disk_size: Option<u64>,
) -> Result<Plan, ImageError> {
    let mut sizes = Vec::with_capacity(wants.len());
    for want in wants {
        sizes.push(asked_or_auto(want)?);
    }
    let esp = esp.map(round_up_mib);
    let fixed = |sizes: &[u64]| 2 * GPT_ROOM + esp.unwrap_or(0) + sizes.iter().sum::<u64>();
    let disk_size = match disk_size.map(round_up_mib) {
        None => fixed(&sizes),
        Some(disk) => {
            if let Some(grower) = wants.iter().rposition(|w| w.size.is_none()) {
                let min = min_fs_size(wants[grower].content);
                sizes[grower] = 0;
                let others = fixed(&sizes);
                if disk < others + min {
                    return Err(too_small(disk, others + min, &wants[grower].name, min));
                }
                sizes[grower] = disk - others;
            } else if disk < fixed(&sizes) {
                return Err(ImageError::Tool(format!(
                    "the disk size {} is smaller than its partitions: they need {} in all; \
                     give a larger disk size or smaller partitions",
                    mib(disk),
                    mib(fixed(&sizes))
                )));
            }
            disk
        }
    };
    let mut offset = GPT_ROOM;
    let mut place = |size: u64| {
        let extent = Extent { offset, size };
        offset += size;
        extent
    };
    let esp = esp.map(&mut place);
    let roots = sizes.into_iter().map(place).collect();
    Ok(Plan {
        esp,
        roots,
        disk_size,
    })
}

fn asked_or_auto(want: &Want) -> Result<u64, ImageError> {
    let min = min_fs_size(want.content);
    match want.size.map(round_up_mib) {
        Some(size) if size < min => Err(ImageError::Tool(format!(
            "partition `{}`: its size {} is too small for its {} of files; \
             it needs at least {} (or leave its size out for an automatic one)",
            want.name,
            mib(size),
            mib(want.content.bytes),
            mib(min)
        ))),
        Some(size) => Ok(size),
        None => Ok(auto_fs_size(want.content)),
    }
}

fn too_small(disk: u64, needed: u64, name: &str, min: u64) -> ImageError {
    ImageError::Tool(format!(
        "the disk size {} is too small: partition `{name}` needs at least {}, so the disk \
         needs at least {}; give a size of {} or more (or none for an automatic size)",
        mib(disk),
        mib(min),
        mib(needed),
        mib(needed)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(name: &str, mib_content: u64, size: Option<u64>) -> Want {
        Want {
            name: name.into(),
            content: Content {
                bytes: mib_content * MIB,
                inodes: 1000,
            },
            size,
        }
    }

    #[test]
    fn automatic_sizes_are_content_times_1_3_plus_headroom() {
        let p = plan(Some(64 * MIB), &[want("root", 100, None)], None).unwrap();
        assert_eq!(
            p.esp,
            Some(Extent {
                offset: MIB,
                size: 64 * MIB
            })
        );
        assert_eq!(
            p.roots,
            vec![Extent {
                offset: 65 * MIB,
                size: 386 * MIB
            }]
        );
        assert_eq!(p.disk_size, 65 * MIB + 386 * MIB + MIB);
    }

    #[test]
    fn disk_size_goes_to_the_last_unsized_partition() {
        let wants = [
            want("a", 10, None),
            want("b", 10, None),
            want("c", 10, Some(100 * MIB)),
        ];
        let p = plan(None, &wants, Some(2048 * MIB)).unwrap();
        let auto_a = auto_fs_size(wants[0].content);
        assert_eq!(p.roots[0].size, auto_a);
        assert_eq!(p.roots[2].size, 100 * MIB);
        assert_eq!(p.roots[1].size, 2048 * MIB - 2 * MIB - auto_a - 100 * MIB);
        assert_eq!(p.roots[2].offset + p.roots[2].size + MIB, p.disk_size);
    }

    #[test]
    fn too_small_disk_says_how_much_is_needed() {
        let err = plan(Some(64 * MIB), &[want("root", 500, None)], Some(300 * MIB))
            .unwrap_err()
            .to_string();
        assert!(err.contains("too small") && err.contains("root"), "{err}");
        let min = min_fs_size(want("root", 500, None).content);
        let needed = 2 * MIB + 64 * MIB + min;
        assert!(err.contains(&mib(needed)), "{err}");
        assert!(plan(Some(64 * MIB), &[want("root", 500, None)], Some(needed)).is_ok());
        assert!(plan(
            Some(64 * MIB),
            &[want("root", 500, None)],
            Some(needed - MIB)
        )
        .is_err());
    }

    #[test]
    fn too_small_partition_is_refused() {
        let err = plan(None, &[want("data", 500, Some(100 * MIB))], None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("partition `data`") && err.contains("at least"),
            "{err}"
        );
    }

    #[test]
    fn minimum_grows_with_content_and_inodes() {
        let small = min_fs_size(Content {
            bytes: 0,
            inodes: 10,
        });
        assert!(small >= 16 * MIB);
        let many_inodes = min_fs_size(Content {
            bytes: 0,
            inodes: 1_000_000,
        });
        assert!(many_inodes > small + 256 * MIB);
        let big = min_fs_size(Content {
            bytes: 10 << 30,
            inodes: 10,
        });
        assert!(big > (10 << 30) + (10 << 30) / 20);
    }

    #[test]
    fn esp_has_a_floor() {
        assert_eq!(esp_size(0), ESP_MIN);
        assert_eq!(esp_size(100 * MIB), 132 * MIB);
    }
}
