//! Reading `.kzi` files, and `kiln deploy unpack`: a `.kzi` onto a disk or a file.

use crate::format::{self, Header, Meta, HEADER_LEN};
use crate::target::Target;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An opened `.kzi` file whose header and index were checked.
pub struct Kzi {
    file: File,
    path: PathBuf,
    pub meta: Meta,
}

impl Kzi {
    /// Opens and checks `path`: magic, version, length, meta hash, index, total hash.
    pub fn open(path: &Path) -> Result<Kzi> {
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        let bad = |e: format::FormatError| anyhow::anyhow!("{}: {e}", path.display());
        let mut head = vec![0u8; HEADER_LEN.min(len as usize)];
        file.read_exact_at(&mut head, 0)
            .with_context(|| format!("reading {}", path.display()))?;
        let header = Header::parse(&head).map_err(bad)?;
        if len < header.file_len() {
            return Err(bad(format::FormatError::Truncated {
                what: "file",
                need: header.file_len(),
                have: len,
            }));
        }
        let mut index = vec![0u8; header.index_len as usize];
        file.read_exact_at(&mut index, header.index_offset)
            .with_context(|| format!("reading the index of {}", path.display()))?;
        let meta = Meta::parse_parts(&header, &head, &index).map_err(bad)?;
        Ok(Kzi {
            file,
            path: path.to_path_buf(),
            meta,
        })
    }

    /// The raw record of chunk `index`.
    pub fn record(&self, index: u32) -> Result<Vec<u8>> {
        let e = &self.meta.index[index as usize];
        let mut buf = vec![0u8; e.record_len as usize];
        self.file
            .read_exact_at(&mut buf, e.offset)
            .with_context(|| format!("reading chunk {index} of {}", self.path.display()))?;
        Ok(buf)
    }

    /// Reads `buf.len()` bytes of the file at `offset` (a range of a record).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes chunk `index`, verifying it.
    pub fn chunk(&self, index: u32) -> Result<format::Chunk> {
        let record = self.record(index)?;
        let h = &self.meta.header;
        let entry = &self.meta.index[index as usize];
        format::decode_chunk(&record, h.disk_size, h.chunk_size, Some((index, entry)))
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.path.display()))
    }
}

/// What unpacking did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UnpackReport {
    pub disk_size: u64,
    pub chunks: u32,
    /// Chunks already on the target (verified) and so not written again.
    pub chunks_present: u32,
    pub bytes_written: u64,
}

/// Writes the image `kzi` to `target`, verifying every chunk before writing it. An
/// existing target's chunks that already match are kept (an interrupted unpack resumes).
/// `progress(done, total)` counts chunks.
pub fn unpack(
    kzi: &Path,
    target: &Path,
    zero_rest: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<UnpackReport> {
    let kzi = Kzi::open(kzi)?;
    let meta = &kzi.meta;
    let target = Target::open(target, meta.header.disk_size)?;
    let total = meta.header.chunk_count;
    let mut present = 0;
    let mut written = 0u64;
    let mut buf = Vec::new();
    for index in 0..total {
        let entry = &meta.index[index as usize];
        if !target.is_fresh() && target.holds_chunk(index, entry, &mut buf)? {
            present += 1;
        } else {
            let chunk = kzi.chunk(index)?;
            target.write_chunk(&chunk)?;
            written += entry.data_len as u64;
        }
        progress(index as u64 + 1, total as u64);
    }
    target.finish(meta, zero_rest)?;
    Ok(UnpackReport {
        disk_size: meta.header.disk_size,
        chunks: total,
        chunks_present: present,
        bytes_written: written,
    })
}
