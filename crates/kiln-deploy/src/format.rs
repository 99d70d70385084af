//! The `.kzi` chunked image format. Pure: bytes in, structures out (and back); no I/O.
//!
//! ```text
//! [header: 128 bytes][chunk record 0][chunk record 1]…[index: one entry per chunk]
//! ```
//!
//! - The **header** names the image (`uuid`), the disk it restores (`disk_size`), the
//!   largest uncompressed chunk (`chunk_size`), where the index is, the image's
//!   **total hash** and a `meta_hash` over the header and the index together, so a
//!   truncated or altered file is refused before anything is written.
//! - Each **chunk record** is self-describing: its index, the `(offset, length)` ranges of
//!   the disk it covers, its hash and its zstd-compressed data. A receiver can check,
//!   decompress and write any chunk on its own, in any order.
//! - The **index** lists every record's position, length, hash and ranges (so a loader
//!   can check what a target already holds before receiving anything).
//!
//! The chunk hash is BLAKE3 over the chunk's index, its ranges and their uncompressed
//! data: it checks a record in transit and equally the ranges already on a target disk
//! (resuming). The total hash is BLAKE3 over the image's identity and every chunk hash in
//! order, so a target whose chunks all verify has the whole image.
//!
//! Every integer is little-endian. Parsers bound every length they read before using it.

use std::ops::Range;

/// First bytes of every `.kzi` file.
pub const MAGIC: [u8; 8] = *b"KILNKZI\0";
/// First bytes of every chunk record.
pub const CHUNK_MAGIC: [u8; 4] = *b"KZC1";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 128;
/// Size of one index entry without its ranges.
pub const INDEX_ENTRY_FIXED_LEN: usize = 52;
/// Fixed part of a chunk record before its ranges.
const CHUNK_FIXED_LEN: usize = 20;
/// One `(offset u64, length u32)` range.
const RANGE_LEN: usize = 12;
/// The largest chunk (uncompressed) any reader accepts: bounds memory per chunk.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// The most chunks an image may have (a 64 TiB disk of 4 MiB chunks).
pub const MAX_CHUNKS: u32 = 1 << 24;
/// The granularity of holes: ranges start and end on multiples of this (except at the
/// disk's end).
pub const BLOCK: u64 = 4096;

/// A 32-byte BLAKE3 digest.
pub type Hash = [u8; 32];

/// What is wrong with bytes that should be `.kzi`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("not a kiln image (.kzi): wrong magic bytes")]
    Foreign,
    #[error("unsupported .kzi version {0} (this kiln reads version {VERSION})")]
    Version(u32),
    #[error("truncated: {what} needs {need} bytes, only {have} present")]
    Truncated {
        what: &'static str,
        need: u64,
        have: u64,
    },
    #[error("corrupt {what}: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("chunk {index}: hash mismatch (damaged in transit or on disk)")]
    ChunkHash { index: u32 },
}

fn corrupt(what: &'static str, why: impl Into<String>) -> FormatError {
    FormatError::Corrupt {
        what,
        why: why.into(),
    }
}

/// Little-endian reader over a slice that reports truncation instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(FormatError::Truncated {
                what: self.what,
                need: (self.pos as u64).saturating_add(n as u64),
                have: self.buf.len() as u64,
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64, FormatError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn hash(&mut self) -> Result<Hash, FormatError> {
        Ok(self.take(32)?.try_into().unwrap_or_default())
    }
}

/// The fixed header at the start of a `.kzi` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub uuid: [u8; 16],
    /// Bytes of the disk this image restores.
    pub disk_size: u64,
    /// The most uncompressed bytes one chunk holds.
    pub chunk_size: u32,
    pub chunk_count: u32,
    /// Where the index starts in the file (right after the last chunk record).
    pub index_offset: u64,
    /// Bytes of the index.
    pub index_len: u64,
    /// See [`total_hash`].
    pub total_hash: Hash,
}

/// Where one chunk record lies in the file, its hash and the disk ranges it covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub offset: u64,
    pub record_len: u32,
    /// Uncompressed bytes (the sum of its ranges' lengths).
    pub data_len: u32,
    pub hash: Hash,
    pub ranges: Vec<DiskRange>,
}

/// The header and the index: everything a reader needs before the chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub header: Header,
    pub index: Vec<IndexEntry>,
}

impl Header {
    /// Encodes the header, with `meta_hash` computed over it and `index_bytes`.
    pub fn encode(&self, index_bytes: &[u8]) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&VERSION.to_le_bytes());
        // 12..16: flags, none defined.
        out[16..32].copy_from_slice(&self.uuid);
        out[32..40].copy_from_slice(&self.disk_size.to_le_bytes());
        out[40..44].copy_from_slice(&self.chunk_size.to_le_bytes());
        out[44..48].copy_from_slice(&self.chunk_count.to_le_bytes());
        out[48..56].copy_from_slice(&self.index_offset.to_le_bytes());
        out[56..88].copy_from_slice(&self.total_hash);
        out[88..96].copy_from_slice(&self.index_len.to_le_bytes());
        let meta_hash = meta_hash(&out[..96], index_bytes);
        out[96..128].copy_from_slice(&meta_hash);
        out
    }

    /// Parses the fixed header (without checking `meta_hash`: that needs the index; see
    /// [`Meta::parse`]).
    pub fn parse(bytes: &[u8]) -> Result<Header, FormatError> {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(FormatError::Foreign);
        }
        let mut r = Reader::new(bytes, "header");
        r.take(HEADER_LEN)?;
        r.pos = 8;
        let version = r.u32()?;
        if version != VERSION {
            return Err(FormatError::Version(version));
        }
        let flags = r.u32()?;
        if flags != 0 {
            return Err(corrupt("header", format!("unknown flags {flags:#x}")));
        }
        let uuid: [u8; 16] = r.take(16)?.try_into().unwrap_or_default();
        let header = Header {
            uuid,
            disk_size: r.u64()?,
            chunk_size: r.u32()?,
            chunk_count: r.u32()?,
            index_offset: r.u64()?,
            total_hash: r.hash()?,
            index_len: r.u64()?,
        };
        if header.chunk_size == 0 || header.chunk_size > MAX_CHUNK_SIZE {
            return Err(corrupt(
                "header",
                format!("chunk size {} out of range", header.chunk_size),
            ));
        }
        if header.chunk_count > MAX_CHUNKS {
            return Err(corrupt(
                "header",
                format!("{} chunks is more than {MAX_CHUNKS}", header.chunk_count),
            ));
        }
        if header.index_offset < HEADER_LEN as u64 {
            return Err(corrupt("header", "index inside the header"));
        }
        let min_index = header.chunk_count as u64 * (INDEX_ENTRY_FIXED_LEN + RANGE_LEN) as u64;
        if header.index_len < min_index
            || header.index_offset.checked_add(header.index_len).is_none()
        {
            return Err(corrupt(
                "header",
                format!("index length {}", header.index_len),
            ));
        }
        Ok(header)
    }

    /// The length a complete file with this header has.
    pub fn file_len(&self) -> u64 {
        self.index_offset + self.index_len
    }
}

fn meta_hash(header_fields: &[u8], index_bytes: &[u8]) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(header_fields);
    h.update(index_bytes);
    *h.finalize().as_bytes()
}

impl IndexEntry {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.record_len.to_le_bytes());
        out.extend_from_slice(&self.data_len.to_le_bytes());
        out.extend_from_slice(&(self.ranges.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.hash);
        encode_ranges(&self.ranges, out);
    }
}

fn encode_ranges(ranges: &[DiskRange], out: &mut Vec<u8>) {
    for r in ranges {
        out.extend_from_slice(&r.offset.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
    }
}

/// Reads `count` ranges, checking they are non-empty, sorted, disjoint, on a disk of
/// `disk_size` bytes and add up to `data_len`.
fn parse_ranges(
    r: &mut Reader,
    count: u32,
    disk_size: u64,
    data_len: u32,
) -> Result<Vec<DiskRange>, FormatError> {
    let what = r.what;
    if count == 0 || count > data_len {
        return Err(corrupt(
            what,
            format!("{count} ranges for {data_len} bytes"),
        ));
    }
    // Bounded by the bytes present, whatever `count` claims.
    let mut ranges = Vec::with_capacity((count as usize).min(r.buf.len() / RANGE_LEN));
    let mut sum = 0u64;
    let mut prev_end = 0u64;
    for _ in 0..count {
        let range = DiskRange {
            offset: r.u64()?,
            len: r.u32()?,
        };
        let end = range.offset.checked_add(range.len as u64);
        if range.len == 0 || range.offset < prev_end || end.is_none_or(|e| e > disk_size) {
            return Err(corrupt(
                what,
                format!(
                    "range {}+{} is out of order or off the disk",
                    range.offset, range.len
                ),
            ));
        }
        prev_end = range.end();
        sum += range.len as u64;
        ranges.push(range);
    }
    if sum != data_len as u64 {
        return Err(corrupt(what, "ranges do not add up to the data length"));
    }
    Ok(ranges)
}

/// Encodes an index.
pub fn encode_index(index: &[IndexEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(index.len() * (INDEX_ENTRY_FIXED_LEN + RANGE_LEN));
    for e in index {
        e.encode_into(&mut out);
    }
    out
}

impl Meta {
    /// Header and index as one blob (what the multicast server sends first).
    pub fn encode(&self) -> Vec<u8> {
        let index = encode_index(&self.index);
        let mut out = self.header.encode(&index).to_vec();
        out.extend_from_slice(&index);
        out
    }

    /// Parses a header followed by its index (`bytes` = the blob of [`Meta::encode`]),
    /// checking the meta hash, the total hash and that the records tile the file.
    pub fn parse(bytes: &[u8]) -> Result<Meta, FormatError> {
        let header = Header::parse(bytes)?;
        let index_bytes = bytes.get(HEADER_LEN..).unwrap_or_default();
        Meta::parse_parts(&header, &bytes[..HEADER_LEN], index_bytes)
    }

    /// Like [`Meta::parse`], with the header (already parsed from `header_bytes`) and the
    /// index read from separate places (the index sits at the end of a file).
    pub fn parse_parts(
        header: &Header,
        header_bytes: &[u8],
        index_bytes: &[u8],
    ) -> Result<Meta, FormatError> {
        let need = header.index_len;
        if (index_bytes.len() as u64) < need {
            return Err(FormatError::Truncated {
                what: "index",
                need,
                have: index_bytes.len() as u64,
            });
        }
        let index_bytes = &index_bytes[..need as usize];
        if meta_hash(&header_bytes[..96], index_bytes)[..] != header_bytes[96..HEADER_LEN] {
            return Err(corrupt("header or index", "meta hash mismatch"));
        }
        let mut r = Reader::new(index_bytes, "index");
        let mut index = Vec::with_capacity(header.chunk_count as usize);
        let mut expect_offset = HEADER_LEN as u64;
        let mut prev_end = 0u64;
        for i in 0..header.chunk_count {
            let offset = r.u64()?;
            let record_len = r.u32()?;
            let data_len = r.u32()?;
            let range_count = r.u32()?;
            let hash = r.hash()?;
            if offset != expect_offset {
                return Err(corrupt("index", format!("chunk {i} is not where expected")));
            }
            if data_len == 0 || data_len > header.chunk_size {
                return Err(corrupt("index", format!("chunk {i} has a bad data length")));
            }
            let ranges = parse_ranges(&mut r, range_count, header.disk_size, data_len)?;
            if ranges[0].offset < prev_end {
                return Err(corrupt(
                    "index",
                    format!("chunk {i} overlaps the one before"),
                ));
            }
            prev_end = ranges[ranges.len() - 1].end();
            expect_offset += record_len as u64;
            index.push(IndexEntry {
                offset,
                record_len,
                data_len,
                hash,
                ranges,
            });
        }
        if r.pos != index_bytes.len() {
            return Err(corrupt("index", "trailing bytes"));
        }
        if expect_offset != header.index_offset {
            return Err(corrupt("index", "chunk records do not end at the index"));
        }
        let total = total_hash(header, index.iter().map(|e| &e.hash));
        if total != header.total_hash {
            return Err(corrupt(
                "header",
                "total hash does not match the chunk hashes",
            ));
        }
        Ok(Meta {
            header: header.clone(),
            index,
        })
    }

    /// Bytes of disk data the image holds (uncompressed).
    pub fn data_bytes(&self) -> u64 {
        self.index.iter().map(|e| e.data_len as u64).sum()
    }
}

/// The image's total hash: its identity and every chunk hash, in order.
pub fn total_hash<'a>(header: &Header, hashes: impl IntoIterator<Item = &'a Hash>) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(b"kzi-total");
    h.update(&header.uuid);
    h.update(&header.disk_size.to_le_bytes());
    h.update(&header.chunk_size.to_le_bytes());
    let mut n = 0u32;
    for hash in hashes {
        h.update(hash);
        n += 1;
    }
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

/// A disk range a chunk covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskRange {
    pub offset: u64,
    pub len: u32,
}

impl DiskRange {
    pub fn end(&self) -> u64 {
        self.offset + self.len as u64
    }
}

/// Streaming chunk hash: feed the ranges' data in order with [`ChunkHasher::update`].
pub struct ChunkHasher(blake3::Hasher);

impl ChunkHasher {
    pub fn new(index: u32, ranges: &[DiskRange]) -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"kzi-chunk");
        h.update(&index.to_le_bytes());
        h.update(&(ranges.len() as u32).to_le_bytes());
        for r in ranges {
            h.update(&r.offset.to_le_bytes());
            h.update(&r.len.to_le_bytes());
        }
        ChunkHasher(h)
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(self) -> Hash {
        *self.0.finalize().as_bytes()
    }
}

/// The hash of chunk `index` covering `ranges` whose data (concatenated) is `data`.
pub fn chunk_hash(index: u32, ranges: &[DiskRange], data: &[u8]) -> Hash {
    let mut h = ChunkHasher::new(index, ranges);
    h.update(data);
    h.finish()
}

/// A decoded chunk: where its data goes on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub index: u32,
    pub ranges: Vec<DiskRange>,
    /// The ranges' data, concatenated.
    pub data: Vec<u8>,
}

impl Chunk {
    /// `(disk offset, bytes)` for each range.
    pub fn pieces(&self) -> impl Iterator<Item = (u64, &[u8])> {
        let mut at = 0usize;
        self.ranges.iter().map(move |r| {
            let piece = &self.data[at..at + r.len as usize];
            at += r.len as usize;
            (r.offset, piece)
        })
    }
}

/// Encodes a chunk record: compresses `data` with zstd at `level`.
pub fn encode_chunk(
    index: u32,
    ranges: &[DiskRange],
    data: &[u8],
    level: i32,
) -> std::io::Result<(Vec<u8>, Hash)> {
    let hash = chunk_hash(index, ranges, data);
    let compressed = zstd::bulk::compress(data, level)?;
    let mut out =
        Vec::with_capacity(CHUNK_FIXED_LEN + ranges.len() * RANGE_LEN + 32 + compressed.len());
    out.extend_from_slice(&CHUNK_MAGIC);
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&(compressed.len() as u32).to_le_bytes());
    encode_ranges(ranges, &mut out);
    out.extend_from_slice(&hash);
    out.extend_from_slice(&compressed);
    Ok((out, hash))
}

/// Decodes and checks a chunk record against the image it belongs to: the record is
/// complete, its ranges are sorted, disjoint and on the disk, its data decompresses to
/// their total length, and the hash of what came out equals both the record's own hash
/// and `expect` (chunk number and index entry), whose ranges it must also have.
/// Nothing of a record that fails is returned.
pub fn decode_chunk(
    record: &[u8],
    disk_size: u64,
    chunk_size: u32,
    expect: Option<(u32, &IndexEntry)>,
) -> Result<Chunk, FormatError> {
    let mut r = Reader::new(record, "chunk record");
    if r.take(4)? != CHUNK_MAGIC {
        return Err(corrupt("chunk record", "wrong magic bytes"));
    }
    let index = r.u32()?;
    let range_count = r.u32()?;
    let data_len = r.u32()?;
    let comp_len = r.u32()?;
    if data_len == 0 || data_len > chunk_size.min(MAX_CHUNK_SIZE) {
        return Err(corrupt("chunk record", format!("data length {data_len}")));
    }
    if let Some((want, _)) = expect {
        if index != want {
            return Err(corrupt(
                "chunk record",
                format!("holds chunk {index}, expected {want}"),
            ));
        }
    }
    let ranges = parse_ranges(&mut r, range_count, disk_size, data_len)?;
    let own_hash = r.hash()?;
    let compressed = r.take(comp_len as usize)?;
    if r.pos != record.len() {
        return Err(corrupt("chunk record", "trailing bytes"));
    }
    if let Some((_, want)) = expect {
        if own_hash != want.hash || ranges != want.ranges {
            return Err(FormatError::ChunkHash { index });
        }
    }
    let data = zstd::bulk::decompress(compressed, data_len as usize)
        .map_err(|_| FormatError::ChunkHash { index })?;
    if data.len() != data_len as usize || chunk_hash(index, &ranges, &data) != own_hash {
        return Err(FormatError::ChunkHash { index });
    }
    Ok(Chunk {
        index,
        ranges,
        data,
    })
}

/// Splits the disk's data `extents` (sorted, disjoint) into chunks of at most
/// `chunk_size` bytes each; extents larger than that are cut. Every range stays within
/// one chunk, so chunks are independent.
pub fn plan_chunks(extents: &[Range<u64>], chunk_size: u32) -> Vec<Vec<DiskRange>> {
    let mut chunks = Vec::new();
    let mut current: Vec<DiskRange> = Vec::new();
    let mut filled = 0u64;
    for extent in extents {
        let mut at = extent.start;
        while at < extent.end {
            let room = chunk_size as u64 - filled;
            let len = (extent.end - at).min(room);
            current.push(DiskRange {
                offset: at,
                len: len as u32,
            });
            filled += len;
            at += len;
            if filled == chunk_size as u64 {
                chunks.push(std::mem::take(&mut current));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn image(chunks: &[(Vec<DiskRange>, Vec<u8>)], disk_size: u64) -> (Vec<u8>, Meta) {
        let mut body = Vec::new();
        let mut index = Vec::new();
        for (i, (ranges, data)) in chunks.iter().enumerate() {
            let (record, hash) = encode_chunk(i as u32, ranges, data, 1).unwrap();
            index.push(IndexEntry {
                offset: (HEADER_LEN + body.len()) as u64,
                record_len: record.len() as u32,
                data_len: data.len() as u32,
                hash,
                ranges: ranges.clone(),
            });
            body.extend_from_slice(&record);
        }
        let mut header = Header {
            uuid: [7; 16],
            disk_size,
            chunk_size: 1 << 20,
            chunk_count: index.len() as u32,
            index_offset: (HEADER_LEN + body.len()) as u64,
            index_len: encode_index(&index).len() as u64,
            total_hash: [0; 32],
        };
        header.total_hash = total_hash(&header, index.iter().map(|e| &e.hash));
        let meta = Meta { header, index };
        let blob = meta.encode();
        let mut file = blob[..HEADER_LEN].to_vec();
        file.extend_from_slice(&body);
        file.extend_from_slice(&blob[HEADER_LEN..]);
        (file, meta)
    }

    fn sample() -> (Vec<u8>, Meta) {
        let r = |offset, len| DiskRange { offset, len };
        image(
            &[
                (vec![r(0, 4096), r(8192, 100)], vec![1u8; 4196]),
                (vec![r(65536, 3)], b"abc".to_vec()),
            ],
            1 << 20,
        )
    }

    fn meta_of(file: &[u8]) -> Result<Meta, FormatError> {
        let header = Header::parse(file)?;
        let idx = file.get(header.index_offset as usize..).unwrap_or_default();
        Meta::parse_parts(&header, &file[..HEADER_LEN], idx)
    }

    #[test]
    fn round_trip() {
        let (file, meta) = sample();
        let parsed = meta_of(&file).unwrap();
        assert_eq!(parsed, meta);
        assert_eq!(Meta::parse(&meta.encode()).unwrap(), meta);
        let e = &meta.index[1];
        let rec = &file[e.offset as usize..][..e.record_len as usize];
        let chunk = decode_chunk(rec, 1 << 20, 1 << 20, Some((1, e))).unwrap();
        assert_eq!(chunk.data, b"abc");
        assert_eq!(chunk.pieces().next(), Some((65536, &b"abc"[..])));
    }

    #[test]
    fn foreign_truncated_and_corrupt_files_are_refused() {
        let (file, meta) = sample();
        assert_eq!(
            meta_of(b"PK\x03\x04 zip file.........").unwrap_err(),
            FormatError::Foreign
        );
        assert!(matches!(
            meta_of(&file[..60]).unwrap_err(),
            FormatError::Truncated { .. }
        ));
        assert!(matches!(
            meta_of(&file[..file.len() - 1]).unwrap_err(),
            FormatError::Truncated { what: "index", .. }
        ));
        let mut bad = file.clone();
        bad[40] ^= 1; // chunk size
        assert!(meta_of(&bad).is_err());
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1; // a chunk hash in the index
        assert!(matches!(
            meta_of(&bad).unwrap_err(),
            FormatError::Corrupt { .. }
        ));
        let mut v2 = file.clone();
        v2[8] = 2;
        assert_eq!(meta_of(&v2).unwrap_err(), FormatError::Version(2));
        // A flipped bit anywhere in a record is caught, or (a bit zstd's frame header
        // does not use) changes nothing that comes out.
        let e = &meta.index[0];
        let good = &file[e.offset as usize..][..e.record_len as usize];
        let want = decode_chunk(good, 1 << 20, 1 << 20, Some((0, e))).unwrap();
        for at in 0..e.record_len as usize {
            let mut rec = good.to_vec();
            rec[at] ^= 0x10;
            if let Ok(got) = decode_chunk(&rec, 1 << 20, 1 << 20, Some((0, e))) {
                assert_eq!(got, want, "flip at {at} gave other data");
            }
        }
    }

    #[test]
    fn plan_cuts_extents_at_chunk_size() {
        let chunks = plan_chunks(&[0..10, 20..45, 50..51], 16);
        let lens: Vec<Vec<(u64, u32)>> = chunks
            .iter()
            .map(|c| c.iter().map(|r| (r.offset, r.len)).collect())
            .collect();
        assert_eq!(
            lens,
            vec![
                vec![(0, 10), (20, 6)],
                vec![(26, 16)],
                vec![(42, 3), (50, 1)]
            ]
        );
    }

    proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Meta::parse(&bytes);
            let _ = Header::parse(&bytes);
            let _ = decode_chunk(&bytes, u64::MAX, MAX_CHUNK_SIZE, None);
        }

        #[test]
        fn mutated_images_never_panic_nor_pass(at in 0usize..2000, xor in 1u8..=255) {
            let (file, meta) = sample();
            let at = at % file.len();
            let mut bad = file.clone();
            bad[at] ^= xor;
            // Either the meta is refused, or (a flip inside a record) that record is.
            if let Ok(m) = meta_of(&bad) {
                prop_assert_eq!(&m, &meta);
                let hit = m.index.iter().enumerate().find(|(_, e)| {
                    (e.offset as usize..(e.offset + e.record_len as u64) as usize).contains(&at)
                });
                let (i, e) = hit.expect("a flip outside records changes the meta");
                let rec = &bad[e.offset as usize..][..e.record_len as usize];
                let good = &file[e.offset as usize..][..e.record_len as usize];
                let want = decode_chunk(good, 1 << 20, 1 << 20, Some((i as u32, e)));
                if let Ok(got) = decode_chunk(rec, 1 << 20, 1 << 20, Some((i as u32, e))) {
                    prop_assert_eq!(Ok(got), want);
                }
            }
        }

        #[test]
        fn plan_covers_extents_exactly(
            lens in proptest::collection::vec((0u64..5000, 1u64..5000), 0..40),
            chunk_size in 1u32..10000,
        ) {
            let mut extents = Vec::new();
            let mut at = 0;
            for (gap, len) in lens {
                extents.push(at + gap..at + gap + len);
                at += gap + len + 1;
            }
            let chunks = plan_chunks(&extents, chunk_size);
            let mut flat: Vec<Range<u64>> = Vec::new();
            for c in &chunks {
                let total: u64 = c.iter().map(|r| r.len as u64).sum();
                prop_assert!(total <= chunk_size as u64 && total > 0);
                for r in c {
                    match flat.last_mut() {
                        Some(last) if last.end == r.offset => last.end = r.end(),
                        _ => flat.push(r.offset..r.end()),
                    }
                }
            }
            // Adjacent extents (gap 0 after +1) never touch, so merging gives the input back.
            prop_assert_eq!(flat, extents);
        }
    }
}
