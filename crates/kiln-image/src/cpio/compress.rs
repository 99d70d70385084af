//! Compressed archives: gzip and zstd (the two every Debian kernel unpacks), recognised
//! by their magic numbers when read, chosen by name or flag when written.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// How an archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// From a file name: `.gz` → gzip, `.zst` → zstd, anything else uncompressed.
    pub fn from_path(path: &Path) -> Compression {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gz") => Compression::Gzip,
            Some("zst") | Some("zstd") => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// From the first bytes of an archive.
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The name `--compress` takes and the extension kiln gives the file.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "cpio",
            Compression::Gzip => "cpio.gz",
            Compression::Zstd => "cpio.zst",
        }
    }

    /// Compresses `data` (level 19 for zstd, best for gzip: initrds are written once and
    /// read at every boot).
    pub fn compress(self, data: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip => {
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
                enc.write_all(data)?;
                enc.finish()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 19),
        }
    }
}

/// Opens `path` for reading its entries, decompressing as its magic number says.
pub fn open(path: &Path) -> io::Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path)?);
    let head = {
        use std::io::BufRead;
        file.fill_buf()?.get(..4).unwrap_or_default().to_vec()
    };
    Ok(match Compression::sniff(&head) {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(file)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_compression_round_trips_and_is_recognised() {
        let data = b"070701 pretend archive".repeat(50);
        for c in [Compression::None, Compression::Gzip, Compression::Zstd] {
            let packed = c.compress(&data).unwrap();
            assert_eq!(Compression::sniff(&packed), c);
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("a");
            std::fs::write(&path, &packed).unwrap();
            let mut back = Vec::new();
            open(&path).unwrap().read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
        }
        assert_eq!(
            Compression::from_path(Path::new("x/initrd.cpio.zst")),
            Compression::Zstd
        );
        assert_eq!(Compression::from_path(Path::new("a.gz")), Compression::Gzip);
        assert_eq!(
            Compression::from_path(Path::new("a.img")),
            Compression::None
        );
    }
}
