//! Writing cpio archives in the "newc" format, the one the Linux kernel unpacks as an
//! initramfs. Archives are deterministic: entries in the order given (parents first),
//! inode numbers counted from 1, owner root, one modification time for everything.
//!
//! Written here rather than with a crate: the format is a fixed ASCII header per entry,
//! and the cpio crates on crates.io either read only or take their times and inode
//! numbers from the host files, which would make the output differ between builds.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// What one archive entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File(Vec<u8>),
    /// A character device node: (major, minor).
    CharDevice(u32, u32),
}

/// A newc archive being written to `out`.
pub struct Writer<W: Write> {
    out: W,
    mtime: u32,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    /// Every entry gets `mtime` (seconds since the epoch, clamped to the format's range).
    pub fn new(out: W, mtime: i64) -> Writer<W> {
        Writer {
            out,
            mtime: mtime.clamp(0, u32::MAX.into()) as u32,
            next_ino: 1,
            written: 0,
        }
    }

    /// Adds `path` (relative, no leading `/`) with permission bits `perm`.
    pub fn add(&mut self, path: &str, perm: u32, kind: &Kind) -> io::Result<()> {
        let (type_bits, data, rdev): (u32, &[u8], (u32, u32)) = match kind {
            Kind::Dir => (0o040000, &[], (0, 0)),
            Kind::File(data) => (0o100000, data, (0, 0)),
            Kind::CharDevice(major, minor) => (0o020000, &[], (*major, *minor)),
        };
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: larger than 4 GiB"),
            )
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if matches!(kind, Kind::Dir) { 2 } else { 1 };
        self.entry(path, ino, type_bits | (perm & 0o7777), nlink, size, rdev)?;
        self.write_padded(data)
    }

    /// Writes the trailer and returns the output and the archive's size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.entry(TRAILER, 0, 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok((self.out, self.written))
    }

    fn entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name_size = name.len() + 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
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
