//! What an ELF file needs to run: its interpreter (`PT_INTERP`), the libraries it names
//! (`DT_NEEDED`) and where it asks for them to be looked up (`DT_RPATH`, `DT_RUNPATH`),
//! read with the `object` crate; and `/etc/ld.so.cache`, which the dynamic loader
//! consults before its default directories.

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use object::Endianness;

/// The dynamic-linking facts of one ELF file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    pub class64: bool,
    pub machine: u16,
    pub interp: Option<String>,
    pub needed: Vec<String>,
    pub rpath: Vec<String>,
    pub runpath: Vec<String>,
}

/// Parses `data` when it is an ELF file (else `None`).
pub fn parse(data: &[u8]) -> Option<ElfInfo> {
    match data.get(..5)? {
        [0x7f, b'E', b'L', b'F', 2] => parse_as::<elf::FileHeader64<Endianness>>(data, true),
        [0x7f, b'E', b'L', b'F', 1] => parse_as::<elf::FileHeader32<Endianness>>(data, false),
        _ => None,
    }
}

fn parse_as<H: FileHeader<Endian = Endianness>>(data: &[u8], class64: bool) -> Option<ElfInfo> {
    let header = H::parse(data).ok()?;
    let endian = header.endian().ok()?;
    let mut info = ElfInfo {
        class64,
        machine: header.e_machine(endian),
        ..ElfInfo::default()
    };
    for ph in header.program_headers(endian, data).ok()? {
        if ph.p_type(endian) == elf::PT_INTERP {
            let bytes = ph.data(endian, data).ok()?;
            info.interp = Some(c_string(bytes));
        }
    }
    let sections = header.sections(endian, data).ok()?;
    for section in sections.iter() {
        let Ok(Some((dyns, link))) = section.dynamic(endian, data) else {
            continue;
        };
        let Ok(strings) = sections.strings(endian, data, link) else {
            continue;
        };
        for d in dyns {
            let tag: u64 = d.d_tag(endian).into();
            let value: u64 = d.d_val(endian).into();
            let text = || {
                strings
                    .get(value as u32)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .ok()
            };
            match tag as u32 {
                elf::DT_NEEDED => info.needed.extend(text()),
                elf::DT_RPATH => info.rpath.extend(text().iter().flat_map(|t| split_path(t))),
                elf::DT_RUNPATH => info
                    .runpath
                    .extend(text().iter().flat_map(|t| split_path(t))),
                _ => {}
            }
        }
    }
    Some(info)
}

fn split_path(list: &str) -> Vec<String> {
    list.split(':')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The multiarch directory names the loader searches by default for a machine (Debian's
/// glibc builds them into ld.so along with /lib and /usr/lib).
pub fn default_dirs(info: &ElfInfo) -> Vec<String> {
    let triplet = match (info.machine, info.class64) {
        (elf::EM_X86_64, true) => Some("x86_64-linux-gnu"),
        (elf::EM_AARCH64, true) => Some("aarch64-linux-gnu"),
        (elf::EM_RISCV, true) => Some("riscv64-linux-gnu"),
        (elf::EM_386, false) => Some("i386-linux-gnu"),
        _ => None,
    };
    let mut dirs = Vec::new();
    if let Some(t) = triplet {
        dirs.push(format!("/lib/{t}"));
        dirs.push(format!("/usr/lib/{t}"));
    }
    if info.class64 {
        dirs.extend(["/lib64".to_string(), "/usr/lib64".to_string()]);
    }
    dirs.extend(["/lib".to_string(), "/usr/lib".to_string()]);
    dirs
}

/// `(library name, path)` pairs of an `ld.so.cache` in glibc's format ("glibc-ld.so.cache1.1",
/// alone or after the old "ld.so-1.7.0" table), in the cache's order. Unreadable input
/// gives an empty list: the loader then falls back to its default directories too.
pub fn parse_ld_cache(data: &[u8]) -> Vec<(String, String)> {
    const MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    const HEADER: usize = 48;
    const ENTRY: usize = 24;
    let Some(start) = data.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        return Vec::new();
    };
    let cache = &data[start..];
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(cache.get(at..at + 4)?.try_into().ok()?))
    };
    let Some(nlibs) = u32_at(20) else {
        return Vec::new();
    };
    // String offsets are relative to the new-format header.
    let string = |off: u32| -> Option<String> {
        let tail = cache.get(off as usize..)?;
        let end = tail.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&tail[..end]).into_owned())
    };
    (0..nlibs as usize)
        .filter_map(|i| {
            let at = HEADER + i * ENTRY;
            Some((string(u32_at(at + 4)?)?, string(u32_at(at + 8)?)?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_test_binary_and_the_hosts_ld_cache() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let info = parse(&me).expect("the test binary is ELF");
        assert!(info.class64);
        assert!(
            info.interp.as_deref().unwrap_or("").contains("ld-linux"),
            "{info:?}"
        );
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{info:?}"
        );
        assert!(parse(b"#!/bin/sh\n").is_none());
        let cache = std::fs::read("/etc/ld.so.cache").unwrap();
        let entries = parse_ld_cache(&cache);
        assert!(
            entries
                .iter()
                .any(|(name, path)| name == "libc.so.6" && path.ends_with("/libc.so.6")),
            "{entries:?}"
        );
        assert!(parse_ld_cache(b"garbage").is_empty());
        assert!(default_dirs(&info).contains(&"/usr/lib/x86_64-linux-gnu".to_string()));
    }
}
