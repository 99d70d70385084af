//! `kiln deploy pack`: a raw (or qcow2) disk into a `.kzi` file.
//!
//! Only allocated data goes in: the holes the filesystem reports (`SEEK_DATA`/
//! `SEEK_HOLE`) are never read, all-zero blocks are dropped as they are read, and so are
//! the blocks the disk's ext4 filesystems mark free ([`crate::scan`]). Chunks are
//! compressed on every core, written in order to a temporary file next to the output,
//! and the file is renamed into place only once complete.

use crate::format::{self, DiskRange, Header, IndexEntry, BLOCK, HEADER_LEN};
use crate::scan;
use crate::target;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// How to pack.
#[derive(Debug, Clone)]
pub struct PackOptions {
    /// Uncompressed bytes per chunk.
    pub chunk_size: u32,
    /// zstd level.
    pub level: i32,
    /// Skip the blocks ext4 filesystems on the disk mark free.
    pub skip_fs_free: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            chunk_size: 1 << 20,
            level: 3,
            skip_fs_free: true,
        }
    }
}

/// What packing did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackReport {
    pub disk_size: u64,
    /// Bytes of data packed (uncompressed).
    pub data_bytes: u64,
    /// Bytes of the `.kzi` file.
    pub file_bytes: u64,
    pub chunks: u32,
    /// Bytes skipped because an ext4 filesystem has them free.
    pub fs_free_bytes: u64,
    /// `disk_size / file_bytes`.
    pub ratio: f64,
}

/// Packs `src` into `out`. `progress(done, total)` is called as the disk is read.
pub fn pack(
    src: &Path,
    out: &Path,
    opts: &PackOptions,
    progress: &dyn Fn(u64, u64),
) -> Result<PackReport> {
    if opts.chunk_size < BLOCK as u32 || opts.chunk_size > format::MAX_CHUNK_SIZE {
        bail!(
            "chunk size {} out of range ({} to {} bytes)",
            opts.chunk_size,
            BLOCK,
            format::MAX_CHUNK_SIZE
        );
    }
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    let converted = scan::raw_input(src, dir)?;
    let raw = converted.path();
    let file = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    let disk_size = target::file_or_device_size(&file)
        .with_context(|| format!("reading the size of {}", raw.display()))?;
    if disk_size == 0 {
        bail!("{}: the disk is empty", src.display());
    }
    let extents = kiln_image::disk::data_extents(&file, disk_size)
        .with_context(|| format!("finding the data of {}", raw.display()))?;
    let free = if opts.skip_fs_free {
        scan::ext4_free_ranges(raw)
            .with_context(|| format!("reading ext4 free-block bitmaps of {}", raw.display()))?
    } else {
        Vec::new()
    };
    let to_read: u64 = extents.iter().map(|r| r.end - r.start).sum();

    let mut tmp = tempfile::Builder::new()
        .prefix(".kzi-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let mut writer = Writer {
        out: std::io::BufWriter::with_capacity(4 << 20, tmp.as_file_mut()),
        pos: HEADER_LEN as u64,
        index: Vec::new(),
        level: opts.level,
        batch: Vec::new(),
    };
    writer.out.write_all(&[0u8; HEADER_LEN])?;
    let mut builder = Builder::new(opts.chunk_size);
    let mut free_cursor = FreeCursor::new(&free);
    let mut fs_free_bytes = 0u64;
    let mut done = 0u64;
    let mut buf = vec![0u8; 4 << 20];
    for extent in &extents {
        let mut at = extent.start;
        while at < extent.end {
            let n = ((extent.end - at) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..n], at)
                .with_context(|| format!("reading {} at {at}", raw.display()))?;
            for (i, block) in buf[..n].chunks(BLOCK as usize).enumerate() {
                let offset = at + (i as u64) * BLOCK;
                if free_cursor.is_free(offset, block.len() as u64) {
                    fs_free_bytes += block.len() as u64;
                    continue;
                }
                if block.iter().all(|&b| b == 0) {
                    continue;
                }
                if let Some(chunk) = builder.push(offset, block) {
                    writer.add(chunk)?;
                }
            }
            at += n as u64;
            done += n as u64;
            progress(done, to_read);
        }
    }
    if let Some(chunk) = builder.finish() {
        writer.add(chunk)?;
    }
    writer.flush_batch()?;
    let index = std::mem::take(&mut writer.index);
    let index_offset = writer.pos;
    let index_bytes = format::encode_index(&index);
    writer.out.write_all(&index_bytes)?;
    writer.out.flush()?;
    drop(writer);
    let mut header = Header {
        uuid: new_uuid(),
        disk_size,
        chunk_size: opts.chunk_size,
        chunk_count: index.len() as u32,
        index_offset,
        index_len: index_bytes.len() as u64,
        total_hash: [0; 32],
    };
    header.total_hash = format::total_hash(&header, index.iter().map(|e| &e.hash));
    tmp.as_file()
        .write_all_at(&header.encode(&index_bytes), 0)
        .context("writing the header")?;
    tmp.as_file().sync_all().context("flushing the image")?;
    tmp.persist(out)
        .with_context(|| format!("renaming the image to {}", out.display()))?;
    let file_bytes = header.file_len();
    Ok(PackReport {
        disk_size,
        data_bytes: index.iter().map(|e| e.data_len as u64).sum(),
        file_bytes,
        chunks: index.len() as u32,
        fs_free_bytes,
        ratio: disk_size as f64 / file_bytes as f64,
    })
}

/// A random version-4 UUID.
fn new_uuid() -> [u8; 16] {
    let mut uuid = [0u8; 16];
    fastrand::fill(&mut uuid);
    uuid[6] = (uuid[6] & 0x0f) | 0x40;
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    uuid
}

/// Gathers non-zero blocks into chunks of at most `chunk_size` bytes.
struct Builder {
    chunk_size: usize,
    ranges: Vec<DiskRange>,
    data: Vec<u8>,
}

impl Builder {
    fn new(chunk_size: u32) -> Self {
        Builder {
            chunk_size: chunk_size as usize,
            ranges: Vec::new(),
            data: Vec::with_capacity(chunk_size as usize),
        }
    }

    /// Adds a block at `offset`; returns the finished chunk when this one would not fit.
    fn push(&mut self, offset: u64, block: &[u8]) -> Option<(Vec<DiskRange>, Vec<u8>)> {
        let full = (self.data.len() + block.len() > self.chunk_size)
            .then(|| self.finish())
            .flatten();
        match self.ranges.last_mut() {
            Some(last) if last.end() == offset => last.len += block.len() as u32,
            _ => self.ranges.push(DiskRange {
                offset,
                len: block.len() as u32,
            }),
        }
        self.data.extend_from_slice(block);
        full
    }

    fn finish(&mut self) -> Option<(Vec<DiskRange>, Vec<u8>)> {
        if self.data.is_empty() {
            return None;
        }
        let data = std::mem::replace(&mut self.data, Vec::with_capacity(self.chunk_size));
        Some((std::mem::take(&mut self.ranges), data))
    }
}

/// Walks sorted free ranges alongside increasing block offsets.
struct FreeCursor<'a> {
    free: &'a [Range<u64>],
    at: usize,
}

impl<'a> FreeCursor<'a> {
    fn new(free: &'a [Range<u64>]) -> Self {
        FreeCursor { free, at: 0 }
    }

    /// Whether `offset..offset+len` lies wholly in a free range (offsets only increase).
    fn is_free(&mut self, offset: u64, len: u64) -> bool {
        while self.at < self.free.len() && self.free[self.at].end <= offset {
            self.at += 1;
        }
        self.free
            .get(self.at)
            .is_some_and(|r| r.start <= offset && offset + len <= r.end)
    }
}

/// Compresses batches of chunks on every core and writes them in order.
struct Writer<'a> {
    out: std::io::BufWriter<&'a mut File>,
    pos: u64,
    index: Vec<IndexEntry>,
    level: i32,
    batch: Vec<(Vec<DiskRange>, Vec<u8>)>,
}

impl Writer<'_> {
    fn add(&mut self, chunk: (Vec<DiskRange>, Vec<u8>)) -> Result<()> {
        self.batch.push(chunk);
        if self.batch.len() >= 4 * threads() {
            self.flush_batch()?;
        }
        Ok(())
    }

    fn flush_batch(&mut self) -> Result<()> {
        let first = self.index.len() as u32;
        let batch = std::mem::take(&mut self.batch);
        let level = self.level;
        let per = batch.len().div_ceil(threads()).max(1);
        let records: Vec<std::io::Result<(Vec<u8>, format::Hash)>> = std::thread::scope(|s| {
            let handles: Vec<_> = batch
                .chunks(per)
                .enumerate()
                .map(|(t, group)| {
                    s.spawn(move || {
                        group
                            .iter()
                            .enumerate()
                            .map(|(i, (ranges, data))| {
                                let n = first + (t * per + i) as u32;
                                format::encode_chunk(n, ranges, data, level)
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("compression thread panicked"))
                .collect()
        });
        for ((ranges, data), record) in batch.into_iter().zip(records) {
            let (record, hash) = record.context("compressing a chunk")?;
            self.out.write_all(&record).context("writing a chunk")?;
            self.index.push(IndexEntry {
                offset: self.pos,
                record_len: record.len() as u32,
                data_len: data.len() as u32,
                hash,
                ranges,
            });
            self.pos += record.len() as u64;
        }
        Ok(())
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_merges_adjacent_blocks_and_cuts_at_chunk_size() {
        let mut b = Builder::new(8192);
        assert!(b.push(0, &[1; 4096]).is_none());
        assert!(b.push(4096, &[2; 4096]).is_none());
        let (ranges, data) = b.push(12288, &[3; 4096]).unwrap();
        assert_eq!(
            ranges,
            vec![DiskRange {
                offset: 0,
                len: 8192
            }]
        );
        assert_eq!(data.len(), 8192);
        let (ranges, _) = b.finish().unwrap();
        assert_eq!(
            ranges,
            vec![DiskRange {
                offset: 12288,
                len: 4096
            }]
        );
        assert!(b.finish().is_none());
    }

    #[test]
    fn free_cursor_only_skips_whole_blocks_in_free_ranges() {
        let free = [4096..12288, 20000..30000];
        let mut c = FreeCursor::new(&free);
        assert!(!c.is_free(0, 4096));
        assert!(c.is_free(4096, 4096));
        assert!(c.is_free(8192, 4096));
        assert!(!c.is_free(16384, 4096));
        assert!(!c.is_free(20480 - 4096, 4096));
        assert!(c.is_free(20480, 4096));
        assert!(!c.is_free(28672, 4096));
    }
}
