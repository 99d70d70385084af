//! Where the root filesystem of a whole-disk image is: a bare ext4 filesystem (a disk
//! kiln made for the QEMU sandbox) or a partition of an MBR or GPT disk (an imported
//! base, a kiln image). Read from the raw bytes; nothing is mounted or written.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

const SECTOR: u64 = 512;
/// ext4's magic (`s_magic`), 1024 + 56 bytes into the filesystem.
const EXT_MAGIC_OFFSET: u64 = 1024 + 56;
/// The GPT type of an x86-64 root partition (Discoverable Partitions Specification).
const ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The GPT type of generic Linux data.
const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// A partition (or the whole disk, at offset 0) holding an ext2/3/4 filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtFs {
    /// Bytes from the start of the disk.
    pub offset: u64,
    pub size: u64,
    /// GPT type GUID (upper case), MBR type as `0xNN`, or empty for a bare filesystem.
    pub kind: String,
}

/// Every ext filesystem of `disk` (a raw image), the likeliest root first: a bare
/// filesystem, else GPT x86-64 root partitions, then Linux data partitions, then any
/// other, each group largest first.
pub fn ext_filesystems(disk: &Path) -> std::io::Result<Vec<ExtFs>> {
    let mut file = File::open(disk)?;
    let len = file.metadata()?.len();
    if has_ext_magic(&mut file, 0)? {
        return Ok(vec![ExtFs {
            offset: 0,
            size: len,
            kind: String::new(),
        }]);
    }
    let mut found = Vec::new();
    for (offset, size, kind) in partitions(&mut file)? {
        if offset + EXT_MAGIC_OFFSET + 2 <= len && has_ext_magic(&mut file, offset)? {
            found.push(ExtFs { offset, size, kind });
        }
    }
    let rank = |fs: &ExtFs| match fs.kind.as_str() {
        ROOT_X86_64 => 0,
        LINUX_DATA | "0x83" => 1,
        _ => 2,
    };
    found.sort_by(|a, b| rank(a).cmp(&rank(b)).then(b.size.cmp(&a.size)));
    Ok(found)
}

fn read_at(file: &mut File, offset: u64, buf: &mut [u8]) -> std::io::Result<bool> {
    file.seek(SeekFrom::Start(offset))?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

fn has_ext_magic(file: &mut File, offset: u64) -> std::io::Result<bool> {
    let mut magic = [0u8; 2];
    Ok(read_at(file, offset + EXT_MAGIC_OFFSET, &mut magic)? && magic == [0x53, 0xEF])
}

/// (offset, size, type) of each partition of the MBR, or of the GPT behind a
/// protective MBR.
fn partitions(file: &mut File) -> std::io::Result<Vec<(u64, u64, String)>> {
    let mut mbr = [0u8; 512];
    if !read_at(file, 0, &mut mbr)? || mbr[510..512] != [0x55, 0xAA] {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for i in 0..4 {
        let e = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let kind = e[4];
        if kind == 0xEE {
            return gpt(file);
        }
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]) as u64;
        let count = u32::from_le_bytes([e[12], e[13], e[14], e[15]]) as u64;
        if kind != 0 && count != 0 {
            out.push((start * SECTOR, count * SECTOR, format!("0x{kind:02x}")));
        }
    }
    Ok(out)
}

fn gpt(file: &mut File) -> std::io::Result<Vec<(u64, u64, String)>> {
    let mut header = [0u8; 92];
    if !read_at(file, SECTOR, &mut header)? || &header[..8] != b"EFI PART" {
        return Ok(Vec::new());
    }
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let table = u64_at(&header, 72) * SECTOR;
    let count = u32_at(&header, 80).min(1024) as usize;
    let size = u32_at(&header, 84) as usize;
    if size < 128 {
        return Ok(Vec::new());
    }
    let mut entries = vec![0u8; count * size];
    if !read_at(file, table, &mut entries)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in entries.chunks(size) {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let first = u64_at(e, 32);
        let last = u64_at(e, 40);
        if last < first {
            continue;
        }
        out.push((first * SECTOR, (last - first + 1) * SECTOR, guid(&e[..16])));
    }
    Ok(out)
}

/// A GPT GUID (mixed-endian on disk) as upper-case text.
fn guid(b: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_read_mixed_endian() {
        // The x86-64 root type as it lies on disk.
        let raw = [
            0xE3, 0xBC, 0x68, 0x4F, 0xCD, 0xE8, 0xB1, 0x4D, 0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84,
            0xB7, 0x09,
        ];
        assert_eq!(guid(&raw), ROOT_X86_64);
    }

    #[test]
    fn finds_an_ext_partition_of_an_mbr_disk_and_a_bare_filesystem() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.raw");
        let mut bytes = vec![0u8; 4 << 20];
        bytes[510] = 0x55;
        bytes[511] = 0xAA;
        let e = &mut bytes[446..462];
        e[4] = 0x83;
        e[8..12].copy_from_slice(&2048u32.to_le_bytes());
        e[12..16].copy_from_slice(&4096u32.to_le_bytes());
        let off = 2048 * 512 + EXT_MAGIC_OFFSET as usize;
        bytes[off] = 0x53;
        bytes[off + 1] = 0xEF;
        std::fs::write(&disk, &bytes).unwrap();
        let found = ext_filesystems(&disk).unwrap();
        assert_eq!(
            found,
            vec![ExtFs {
                offset: 2048 * 512,
                size: 4096 * 512,
                kind: "0x83".into()
            }]
        );
        let mut bare = vec![0u8; 1 << 20];
        bare[EXT_MAGIC_OFFSET as usize] = 0x53;
        bare[EXT_MAGIC_OFFSET as usize + 1] = 0xEF;
        std::fs::write(&disk, &bare).unwrap();
        assert_eq!(ext_filesystems(&disk).unwrap()[0].offset, 0);
        std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
        assert!(ext_filesystems(&disk).unwrap().is_empty());
    }
}
