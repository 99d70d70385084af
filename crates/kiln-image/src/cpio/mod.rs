//! cpio archives in the "newc" format, the one the Linux kernel unpacks as an initramfs:
//! a writer ([`Writer`]), a reader ([`Reader`], `read.rs`), compression by magic number
//! (`compress.rs`) and the file-system side of `kiln cpio` (`tree.rs`: `unpack`, which
//! refuses entries that would land outside the target, `pack` and `merge`).
//!
//! Archives kiln writes are deterministic: entries in the order given (parents first),
//! inode numbers counted from 1, and the times and owners the caller chose.
//!
//! Written here rather than with a crate: the format is a fixed ASCII header per entry,
//! and the cpio crates on crates.io either read only or take their times and inode
//! numbers from the host files, which would make the output differ between builds.

mod compress;
mod read;
mod tree;

pub use compress::{open as open_archive, Compression};
pub use read::{read_all, Reader};
pub use tree::{merge, normalize, pack, paths, unpack, write_file, Unpacked};

use std::io::{self, Write};

pub(crate) const MAGIC: &str = "070701";
/// The variant with a checksum field (which readers may ignore, as the kernel does).
pub(crate) const MAGIC_CRC: &str = "070702";
pub(crate) const TRAILER: &str = "TRAILER!!!";

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A character device node: (major, minor).
    CharDevice(u32, u32),
    /// A block device node: (major, minor).
    BlockDevice(u32, u32),
    /// A symbolic link to this target.
    Symlink(String),
    Fifo,
}

impl Kind {
    /// The file-type bits of `st_mode`.
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::Dir => 0o040000,
            Kind::File(_) => 0o100000,
            Kind::CharDevice(..) => 0o020000,
            Kind::BlockDevice(..) => 0o060000,
            Kind::Symlink(_) => 0o120000,
            Kind::Fifo => 0o010000,
        }
    }

    /// The bytes stored after the header: a file's contents, a link's target.
    pub fn data(&self) -> &[u8] {
        match self {
            Kind::File(data) => data,
            Kind::Symlink(target) => target.as_bytes(),
            _ => &[],
        }
    }
}

/// One archive entry as read or to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// As stored (kiln writes paths relative, without `./`).
    pub path: String,
    /// Permission bits (`0o7777`).
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
    pub kind: Kind,
}

impl Entry {
    /// An entry owned by root (0:0).
    pub fn root_owned(path: impl Into<String>, perm: u32, mtime: u32, kind: Kind) -> Entry {
        Entry {
            path: path.into(),
            perm,
            uid: 0,
            gid: 0,
            mtime,
            kind,
        }
    }

    /// `ls -l`-style mode text: `drwxr-xr-x`.
    pub fn mode_text(&self) -> String {
        let t = match self.kind {
            Kind::Dir => 'd',
            Kind::File(_) => '-',
            Kind::CharDevice(..) => 'c',
            Kind::BlockDevice(..) => 'b',
            Kind::Symlink(_) => 'l',
            Kind::Fifo => 'p',
        };
        let mut s = String::from(t);
        for shift in [6, 3, 0] {
            let bits = (self.perm >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        s
    }
}

/// A newc archive being written to `out`.
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

/// Seconds since the epoch clamped to the format's 32-bit field.
pub fn clamp_time(t: i64) -> u32 {
    t.clamp(0, u32::MAX.into()) as u32
}

impl<W: Write> Writer<W> {
    /// Entries added with [`Writer::add`] get `mtime` (seconds since the epoch, clamped
    /// to the format's range) and owner root.
    pub fn new(out: W, mtime: i64) -> Writer<W> {
        Writer {
            out,
            mtime: clamp_time(mtime),
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds `path` (relative, no leading `/`) with permission bits `perm`, owned by root.
    pub fn add(&mut self, path: &str, perm: u32, kind: &Kind) -> io::Result<()> {
        self.write_entry(path, perm, (0, 0), self.mtime, kind)
    }

    /// Adds `entry` with its own owner and time.
    pub fn add_entry(&mut self, entry: &Entry) -> io::Result<()> {
        self.write_entry(
            &entry.path,
            entry.perm,
            (entry.uid, entry.gid),
            entry.mtime,
            &entry.kind,
        )
    }

    fn write_entry(
        &mut self,
        path: &str,
        perm: u32,
        owner: (u32, u32),
        mtime: u32,
        kind: &Kind,
    ) -> io::Result<()> {
        if path.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path:?}: a NUL byte in a name"),
            ));
        }
        let rdev = match kind {
            Kind::CharDevice(major, minor) | Kind::BlockDevice(major, minor) => (*major, *minor),
            _ => (0, 0),
        };
        let data = kind.data();
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: larger than 4 GiB"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if matches!(kind, Kind::Dir) { 2 } else { 1 };
        let header = Header {
            ino,
            mode: kind.type_bits() | (perm & 0o7777),
            uid: owner.0,
            gid: owner.1,
            nlink,
            mtime,
            size,
            rdev,
        };
        self.entry(path, &header)?;
        self.write_padded(data)
    }

    /// Writes the trailer and returns the output and the archive's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        let trailer = Header {
            nlink: 1,
            ..Header::default()
        };
        self.entry(TRAILER, &trailer)?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(&mut self, name: &str, h: &Header) -> io::Result<()> {
        let name_size = name.len() + 1;
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.size,
            0,
            0,
            h.rdev.0,
            h.rdev.1,
            name_size as u32,
            0,
        ];
        let mut header = String::with_capacity(110 + name_size);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        header.push_str(name);
        header.push('\0');
        self.write_padded(header.as_bytes())
    }

    /// Writes `bytes`, then zeros up to a multiple of 4 (headers start 4-aligned, and a
    /// header plus its name is padded the same way as file data).
    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        let pad = (4 - bytes.len() % 4) % 4;
        self.out.write_all(&[0; 3][..pad])?;
        self.written += (bytes.len() + pad) as u64;
        Ok(())
    }
}

/// The header fields kiln writes (the device of the archived file stays 0).
#[derive(Debug, Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, mode, rdev, data) of one entry.
    type Entry = (String, u32, (u32, u32), Vec<u8>);

    /// Reads back every entry before the trailer.
    fn entries(mut a: &[u8]) -> Vec<Entry> {
        let field = |h: &[u8], i: usize| {
            u32::from_str_radix(std::str::from_utf8(&h[6 + 8 * i..14 + 8 * i]).unwrap(), 16)
                .unwrap()
        };
        let mut out = Vec::new();
        loop {
            assert_eq!(&a[..6], MAGIC.as_bytes());
            let (mode, size, name_size) =
                (field(a, 1), field(a, 6) as usize, field(a, 11) as usize);
            let rdev = (field(a, 9), field(a, 10));
            let name = std::str::from_utf8(&a[110..110 + name_size - 1])
                .unwrap()
                .to_string();
            let data_at = (110 + name_size).div_ceil(4) * 4;
            let next = (data_at + size).div_ceil(4) * 4;
            if name == TRAILER {
                assert_eq!(next, a.len(), "nothing after the trailer");
                return out;
            }
            out.push((name, mode, rdev, a[data_at..data_at + size].to_vec()));
            a = &a[next..];
        }
    }

    #[test]
    fn round_trip_of_every_kind_with_alignment() {
        let mut w = Writer::new(Vec::new(), 1_700_000_000);
        w.add("dev", 0o755, &Kind::Dir).unwrap();
        w.add("dev/console", 0o600, &Kind::CharDevice(5, 1))
            .unwrap();
        w.add("init", 0o755, &Kind::File(b"#!x".to_vec())).unwrap();
        w.add(
            "etc/a-longer-name.conf",
            0o644,
            &Kind::File(b"12345".to_vec()),
        )
        .unwrap();
        let (bytes, size) = w.finish().unwrap();
        assert_eq!(size as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        let got = entries(&bytes);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], ("dev".into(), 0o040755, (0, 0), vec![]));
        assert_eq!(got[1], ("dev/console".into(), 0o020600, (5, 1), vec![]));
        assert_eq!(got[2], ("init".into(), 0o100755, (0, 0), b"#!x".to_vec()));
        assert_eq!(got[3].3, b"12345");
    }

    #[test]
    fn same_input_same_bytes() {
        let make = || {
            let mut w = Writer::new(Vec::new(), 42);
            w.add("a", 0o644, &Kind::File(vec![1, 2, 3])).unwrap();
            w.finish().unwrap().0
        };
        assert_eq!(make(), make());
        let mut w = Writer::new(Vec::new(), -5);
        w.add("a", 0o644, &Kind::Dir).unwrap();
        let bytes = w.finish().unwrap().0;
        assert_eq!(
            &bytes[6 + 8 * 5..14 + 8 * 5],
            b"00000000",
            "times before 1970 clamp to 0"
        );
    }
}
