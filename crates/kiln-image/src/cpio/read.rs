//! Reading newc archives: one [`Entry`] at a time, hard links resolved, several archives
//! concatenated (as the kernel accepts them) read as one.

use super::{Entry, Kind, MAGIC, MAGIC_CRC, TRAILER};
use std::collections::HashMap;
use std::io::{self, Read};

/// Longest name accepted: the kernel's `PATH_MAX`. A header claiming more is corrupt.
const MAX_NAME: usize = 4096;

/// Reads entries from a (decompressed) newc stream.
pub struct Reader<R: Read> {
    input: R,
    /// Bytes consumed so far, for error messages and alignment.
    offset: u64,
    done: bool,
}

fn bad(offset: u64, what: impl std::fmt::Display) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("not a valid newc cpio archive at byte {offset}: {what}"),
    )
}

/// A header as stored, before its entry is built.
struct Raw {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    size: u32,
    rdev: (u32, u32),
    name: String,
}

impl<R: Read> Reader<R> {
    pub fn new(input: R) -> Reader<R> {
        Reader {
            input,
            offset: 0,
            done: false,
        }
    }

    /// The next entry with its inode number and link count, or `None` after the last
    /// archive's trailer.
    fn next_raw(&mut self) -> io::Result<Option<(Raw, Vec<u8>)>> {
        loop {
            if self.done {
                return Ok(None);
            }
            let Some(header) = self.header()? else {
                self.done = true;
                return Ok(None);
            };
            let at = self.offset;
            // Read as it arrives rather than allocating what a (possibly corrupt) header
            // claims: a 4 GiB size in a 1 KiB file must fail, not allocate.
            let mut data = Vec::new();
            (&mut self.input)
                .take(u64::from(header.size))
                .read_to_end(&mut data)?;
            if data.len() != header.size as usize {
                return Err(bad(at, format!("{}: data cut short", header.name)));
            }
            self.offset += u64::from(header.size);
            self.skip_padding()?;
            if header.name == TRAILER {
                continue;
            }
            return Ok(Some((header, data)));
        }
    }

    /// Reads one header; `None` at the end of input (only zeros, the padding some
    /// writers append, may follow a trailer).
    fn header(&mut self) -> io::Result<Option<Raw>> {
        let at = self.offset;
        let mut magic = [0u8; 6];
        let mut got = 0;
        // Skip NUL padding between concatenated archives, 4 bytes at a time.
        loop {
            let n = self.input.read(&mut magic[got..])?;
            if n == 0 {
                return match got {
                    0 => Ok(None),
                    _ if magic[..got].iter().all(|&b| b == 0) => Ok(None),
                    _ => Err(bad(at, "truncated header")),
                };
            }
            got += n;
            if got < 6 {
                continue;
            }
            if magic[..4] == [0; 4] {
                magic.copy_within(4.., 0);
                got = 2;
                self.offset += 4;
                continue;
            }
            break;
        }
        let at = self.offset;
        if magic != MAGIC.as_bytes() && magic != MAGIC_CRC.as_bytes() {
            return Err(bad(
                at,
                format!(
                    "magic {:?} (only newc, \"070701\", is supported)",
                    String::from_utf8_lossy(&magic)
                ),
            ));
        }
        let mut fields = [0u8; 104];
        self.input
            .read_exact(&mut fields)
            .map_err(|_| bad(at, "truncated header"))?;
        let field = |i: usize| -> io::Result<u32> {
            let text = std::str::from_utf8(&fields[8 * i..8 * i + 8])
                .map_err(|_| bad(at, "a header field is not hex"))?;
            u32::from_str_radix(text, 16).map_err(|_| bad(at, "a header field is not hex"))
        };
        let name_size = field(11)? as usize;
        if name_size == 0 || name_size > MAX_NAME + 1 {
            return Err(bad(at, format!("name size {name_size}")));
        }
        let mut name = vec![0; name_size];
        self.input
            .read_exact(&mut name)
            .map_err(|_| bad(at, "truncated name"))?;
        self.offset += 110 + name_size as u64;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(bad(at, "a name not ended by exactly one NUL"));
        }
        let name = String::from_utf8(name).map_err(|_| bad(at, "a name that is not UTF-8 text"))?;
        self.skip_padding()?;
        Ok(Some(Raw {
            ino: field(0)?,
            mode: field(1)?,
            uid: field(2)?,
            gid: field(3)?,
            nlink: field(4)?,
            mtime: field(5)?,
            size: field(6)?,
            rdev: (field(9)?, field(10)?),
            name,
        }))
    }

    fn skip_padding(&mut self) -> io::Result<()> {
        let pad = ((4 - self.offset % 4) % 4) as usize;
        let mut buf = [0u8; 3];
        self.input
            .read_exact(&mut buf[..pad])
            .map_err(|_| bad(self.offset, "truncated padding"))?;
        self.offset += pad as u64;
        Ok(())
    }
}

/// The entry a header and its data describe.
fn entry(raw: Raw, data: Vec<u8>, offset: u64) -> io::Result<Entry> {
    let kind = match raw.mode & 0o170000 {
        0o040000 => Kind::Dir,
        0o100000 => Kind::File(data),
        0o120000 => Kind::Symlink(String::from_utf8(data).map_err(|_| {
            bad(
                offset,
                format!("{}: a link target that is not UTF-8", raw.name),
            )
        })?),
        0o020000 => Kind::CharDevice(raw.rdev.0, raw.rdev.1),
        0o060000 => Kind::BlockDevice(raw.rdev.0, raw.rdev.1),
        0o010000 => Kind::Fifo,
        other => {
            return Err(bad(
                offset,
                format!("{}: unsupported file type {other:o}", raw.name),
            ))
        }
    };
    Ok(Entry {
        path: raw.name,
        perm: raw.mode & 0o7777,
        uid: raw.uid,
        gid: raw.gid,
        mtime: raw.mtime,
        kind,
    })
}

/// Every entry of `input` in archive order. Hard links (regular files sharing an inode,
/// newc stores the data only with the last one) all get the data.
pub fn read_all(input: impl Read) -> io::Result<Vec<Entry>> {
    let mut reader = Reader::new(input);
    let mut out: Vec<Entry> = Vec::new();
    // inode → indices of its links still waiting for data
    let mut waiting: HashMap<u32, Vec<usize>> = HashMap::new();
    while let Some((raw, data)) = reader.next_raw()? {
        let (ino, nlink, is_file) = (raw.ino, raw.nlink, raw.mode & 0o170000 == 0o100000);
        let has_data = !data.is_empty();
        let e = entry(raw, data, reader.offset)?;
        if is_file && nlink > 1 {
            if has_data {
                for i in waiting.remove(&ino).unwrap_or_default() {
                    out[i].kind = e.kind.clone();
                }
            } else {
                waiting.entry(ino).or_default().push(out.len());
            }
        }
        out.push(e);
    }
    Ok(out)
}

impl<R: Read> Iterator for Reader<R> {
    type Item = io::Result<Entry>;

    /// Entries one by one (hard links as stored: use [`read_all`] to resolve them).
    fn next(&mut self) -> Option<io::Result<Entry>> {
        match self.next_raw() {
            Ok(Some((raw, data))) => Some(entry(raw, data, self.offset)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Writer;
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new(Vec::new(), 7);
        w.add("d", 0o750, &Kind::Dir).unwrap();
        w.add("d/f", 0o644, &Kind::File(b"hello".to_vec())).unwrap();
        w.add("l", 0o777, &Kind::Symlink("d/f".into())).unwrap();
        w.add("c", 0o600, &Kind::CharDevice(5, 1)).unwrap();
        w.add_entry(&Entry {
            path: "owned".into(),
            perm: 0o4755,
            uid: 1000,
            gid: 100,
            mtime: 99,
            kind: Kind::File(vec![1; 13]),
        })
        .unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn reads_back_what_the_writer_wrote() {
        let got = read_all(&sample()[..]).unwrap();
        let names: Vec<&str> = got.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["d", "d/f", "l", "c", "owned"]);
        assert_eq!(got[0].perm, 0o750);
        assert_eq!(got[1].kind, Kind::File(b"hello".to_vec()));
        assert_eq!(got[1].mtime, 7);
        assert_eq!(got[2].kind, Kind::Symlink("d/f".into()));
        assert_eq!(got[3].kind, Kind::CharDevice(5, 1));
        assert_eq!((got[4].uid, got[4].gid, got[4].mtime), (1000, 100, 99));
        assert_eq!(got[4].perm, 0o4755);
        assert_eq!(got[4].mode_text(), "-rwxr-xr-x");
    }

    #[test]
    fn concatenated_archives_with_padding_read_as_one() {
        let mut two = sample();
        two.extend_from_slice(&[0; 512]);
        two.extend(sample());
        two.extend_from_slice(&[0; 8]);
        assert_eq!(read_all(&two[..]).unwrap().len(), 10);
    }

    #[test]
    fn corrupt_input_is_an_error_naming_the_offset() {
        let mut bytes = sample();
        bytes[0] = b'X';
        let e = read_all(&bytes[..]).unwrap_err().to_string();
        assert!(e.contains("at byte 0") && e.contains("magic"), "{e}");
        let bytes = sample();
        let e = read_all(&bytes[..bytes.len() - 200])
            .unwrap_err()
            .to_string();
        assert!(e.contains("newc"), "{e}");
        let e = read_all(&b"070701zzzz"[..]).unwrap_err().to_string();
        assert!(e.contains("truncated") || e.contains("hex"), "{e}");
    }

    /// Every truncation and many single-byte corruptions of a valid archive: an error or
    /// entries, never a panic or a huge allocation.
    #[test]
    fn damaged_archives_are_errors_not_panics() {
        let good = sample();
        for len in 0..good.len() {
            let _ = read_all(&good[..len]);
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..4000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut bad = good.clone();
            let at = (state % bad.len() as u64) as usize;
            bad[at] = (state >> 32) as u8;
            let _ = read_all(&bad[..]);
        }
        // A header claiming 4 GiB of data in a short file.
        let mut huge = good.clone();
        huge[54..62].copy_from_slice(b"ffffffff");
        assert!(read_all(&huge[..]).is_err());
    }

    #[test]
    fn hard_links_share_the_data_of_the_last_link() {
        // Written by hand: two links of inode 5, data only with the second (as cpio -H newc does).
        let mut a = Vec::new();
        for (name, size, data) in [("a", 0u32, &b""[..]), ("b", 3, &b"xyz"[..])] {
            let mut h = String::from("070701");
            for f in [
                5,
                0o100644,
                0,
                0,
                2,
                0,
                size,
                0,
                0,
                0,
                0,
                name.len() as u32 + 1,
                0,
            ] {
                h.push_str(&format!("{f:08x}"));
            }
            h.push_str(name);
            h.push('\0');
            while h.len() % 4 != 0 {
                h.push('\0');
            }
            a.extend_from_slice(h.as_bytes());
            a.extend_from_slice(data);
            while a.len() % 4 != 0 {
                a.push(0);
            }
        }
        let w = Writer::new(Vec::new(), 0);
        a.extend(w.finish().unwrap().0);
        let got = read_all(&a[..]).unwrap();
        assert_eq!(got[0].kind, Kind::File(b"xyz".to_vec()));
        assert_eq!(got[1].kind, Kind::File(b"xyz".to_vec()));
    }
}
