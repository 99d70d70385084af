//! Whether an uncompressed kernel can be booted through its PVH entry point.
//!
//! QEMU boots an ELF `vmlinux` directly when it carries Xen's PVH entry note: no
//! real-mode setup and, above all, no self-decompression, which under TCG costs
//! seconds for a distribution kernel. A `vmlinux` without the note makes QEMU
//! refuse to start, so the note is checked before the file is chosen.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use object::elf::{FileHeader64, PT_NOTE};
use object::read::elf::{FileHeader, ProgramHeader};
use object::{Endianness, ReadCache};

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the 32-bit physical entry point QEMU jumps to.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// True when `path` is a 64-bit ELF kernel with a PVH entry note. Reads only the
/// headers and note segments, not the whole (often 60 MB) file.
pub fn has_pvh_entry(path: &Path) -> io::Result<bool> {
    let cache = ReadCache::new(File::open(path)?);
    let Ok(header) = FileHeader64::<Endianness>::parse(&cache) else {
        return Ok(false);
    };
    let invalid = |e: object::Error| io::Error::new(io::ErrorKind::InvalidData, e.to_string());
    let endian = header.endian().map_err(invalid)?;
    for segment in header.program_headers(endian, &cache).map_err(invalid)? {
        if segment.p_type(endian) != PT_NOTE {
            continue;
        }
        let Some(mut notes) = segment.notes(endian, &cache).map_err(invalid)? else {
            continue;
        };
        while let Some(note) = notes.next().map_err(invalid)? {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

/// The kernel to boot from a directory holding `vmlinuz` and perhaps `vmlinux`:
/// `vmlinux` when it has a PVH entry (faster to start), else `vmlinuz`.
pub fn fastest_kernel(dir: &Path) -> PathBuf {
    let vmlinux = dir.join("vmlinux");
    match has_pvh_entry(&vmlinux) {
        Ok(true) => vmlinux,
        Ok(false) => dir.join("vmlinuz"),
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}; booting vmlinuz instead", vmlinux.display());
            }
            dir.join("vmlinuz")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal little-endian ELF64 file with one PT_NOTE segment holding `note`.
    fn elf_with_note(name: &[u8], n_type: u32) -> Vec<u8> {
        let mut desc_note = Vec::new();
        let namesz = name.len() as u32 + 1;
        desc_note.extend_from_slice(&namesz.to_le_bytes());
        desc_note.extend_from_slice(&4u32.to_le_bytes());
        desc_note.extend_from_slice(&n_type.to_le_bytes());
        desc_note.extend_from_slice(name);
        desc_note.push(0);
        while desc_note.len() % 4 != 0 {
            desc_note.push(0);
        }
        desc_note.extend_from_slice(&0x0100_0000u32.to_le_bytes());

        let (ehsize, phentsize) = (64u16, 56u16);
        let note_offset = (ehsize + phentsize) as u64;
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // entry
        f.extend_from_slice(&(ehsize as u64).to_le_bytes()); // phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // flags
        f.extend_from_slice(&ehsize.to_le_bytes());
        f.extend_from_slice(&phentsize.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes()); // phnum
        f.extend_from_slice(&64u16.to_le_bytes()); // shentsize
        f.extend_from_slice(&0u16.to_le_bytes()); // shnum
        f.extend_from_slice(&0u16.to_le_bytes()); // shstrndx
        f.extend_from_slice(&PT_NOTE.to_le_bytes());
        f.extend_from_slice(&4u32.to_le_bytes()); // flags
        f.extend_from_slice(&note_offset.to_le_bytes());
        f.extend_from_slice(&0u64.to_le_bytes()); // vaddr
        f.extend_from_slice(&0u64.to_le_bytes()); // paddr
        f.extend_from_slice(&(desc_note.len() as u64).to_le_bytes());
        f.extend_from_slice(&(desc_note.len() as u64).to_le_bytes());
        f.extend_from_slice(&4u64.to_le_bytes()); // align
        f.extend_from_slice(&desc_note);
        f
    }

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn finds_the_xen_pvh_note() {
        let dir = tempfile::tempdir().unwrap();
        let pvh = write(dir.path(), "pvh", &elf_with_note(b"Xen", 18));
        assert!(has_pvh_entry(&pvh).unwrap());
        let other_type = write(dir.path(), "t", &elf_with_note(b"Xen", 17));
        assert!(!has_pvh_entry(&other_type).unwrap());
        let other_name = write(dir.path(), "n", &elf_with_note(b"GNU", 18));
        assert!(!has_pvh_entry(&other_name).unwrap());
        let not_elf = write(dir.path(), "bz", b"MZ\x90\0 a bzImage, not an ELF file");
        assert!(!has_pvh_entry(&not_elf).unwrap());
    }

    #[test]
    fn prefers_vmlinux_only_when_it_can_be_booted() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(fastest_kernel(dir.path()), dir.path().join("vmlinuz"));
        write(dir.path(), "vmlinux", &elf_with_note(b"Xen", 17));
        assert_eq!(fastest_kernel(dir.path()), dir.path().join("vmlinuz"));
        write(dir.path(), "vmlinux", &elf_with_note(b"Xen", 18));
        assert_eq!(fastest_kernel(dir.path()), dir.path().join("vmlinux"));
    }
}
