//! Helpers shared by the integration tests: building tar archives entry by entry,
//! including entries the `tar` crate's safe API refuses to write.

#![allow(dead_code)]

pub mod token_server;

use std::io::Write;
use tar::{EntryType, Header};

/// A tar archive under construction, in memory.
pub struct TarBuilder {
    builder: tar::Builder<Vec<u8>>,
}

/// Owner and mode of an entry.
#[derive(Clone, Copy)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
}

pub const ROOT_0755: Owner = Owner {
    uid: 0,
    gid: 0,
    mode: 0o755,
};
pub const ROOT_0644: Owner = Owner {
    uid: 0,
    gid: 0,
    mode: 0o644,
};

/// The mtime every test entry gets unless it says otherwise.
pub const MTIME: u64 = 1_600_000_000;

fn header(kind: EntryType, owner: Owner, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_uid(owner.uid);
    h.set_gid(owner.gid);
    h.set_mode(owner.mode);
    h.set_mtime(MTIME);
    h.set_size(size);
    h
}

impl Default for TarBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl TarBuilder {
    pub fn new() -> Self {
        TarBuilder {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub fn dir(&mut self, path: &str, owner: Owner) -> &mut Self {
        let mut h = header(EntryType::Directory, owner, 0);
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .unwrap();
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8], owner: Owner) -> &mut Self {
        let mut h = header(EntryType::Regular, owner, data.len() as u64);
        self.builder.append_data(&mut h, path, data).unwrap();
        self
    }

    /// A file with one extended attribute, carried in a pax header.
    pub fn file_with_xattr(
        &mut self,
        path: &str,
        data: &[u8],
        owner: Owner,
        key: &str,
        value: &[u8],
    ) -> &mut Self {
        let name = format!("SCHILY.xattr.{key}");
        self.builder
            .append_pax_extensions([(name.as_str(), value)])
            .unwrap();
        self.file(path, data, owner)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(
            EntryType::Symlink,
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o777,
            },
            0,
        );
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = header(EntryType::Link, ROOT_0644, 0);
        self.builder.append_link(&mut h, path, target).unwrap();
        self
    }

    pub fn device(
        &mut self,
        path: &str,
        kind: EntryType,
        major: u32,
        minor: u32,
        owner: Owner,
    ) -> &mut Self {
        let mut h = header(kind, owner, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.builder
            .append_data(&mut h, path, std::io::empty())
            .unwrap();
        self
    }

    /// An entry whose name is written verbatim (`../x`, `/abs`): what an attacker would do.
    pub fn raw(
        &mut self,
        name: &[u8],
        kind: EntryType,
        data: &[u8],
        link: Option<&[u8]>,
    ) -> &mut Self {
        let mut h = header(kind, ROOT_0644, data.len() as u64);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        }
        h.set_cksum();
        self.builder.append(&h, data).unwrap();
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let builder = std::mem::replace(&mut self.builder, tar::Builder::new(Vec::new()));
        builder.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(data).unwrap();
    encoder.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// Every path under `root` (relative), sorted.
pub fn tree(root: &std::path::Path) -> Vec<String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            out.push(path.strip_prefix(root).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}
