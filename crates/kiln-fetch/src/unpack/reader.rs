//! Reading a tar stream entry by entry, GNU long names and pax records applied.
//!
//! The headers are parsed by `tar-core`'s sans-I/O parser; this module only feeds it bytes
//! and hands out each entry's content. Not the `tar` crate's reader: that one (0.4.46)
//! splits a pax header at every newline before it reads the records' lengths, so a binary
//! value holding a 0x0A byte (a `security.capability`, an overlayfs file handle) breaks
//! the whole header, and the tail of such a value can pass for a record of its own (a
//! `linkpath` other readers never see). `tar-core` walks the records by their length.

use std::borrow::Cow;
use std::io::{self, Read};
use tar_core::parse::{Limits, ParseEvent, Parser};
use tar_core::{EntryType, PaxExtensions, SparseEntry};

/// One entry's header, every extension applied, owned.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub kind: EntryType,
    pub path: Vec<u8>,
    pub link: Option<Vec<u8>>,
    /// Permission bits and set-id bits (the header's type bits removed).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds and nanoseconds: a pax `mtime` keeps its fraction.
    pub mtime: (i64, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub device: (u32, u32),
    /// Bytes of content in the archive.
    pub size: u64,
    /// For a GNU sparse file: its data regions and its full length.
    pub sparse: Option<(Vec<SparseEntry>, u64)>,
}

/// Reads entries from a tar stream; [`TarReader::content`] reads the current one's data,
/// and whatever of it is left unread is skipped by the next [`TarReader::next_entry`].
pub(super) struct TarReader<R> {
    inner: R,
    parser: Parser,
    buf: Vec<u8>,
    /// Unconsumed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Content bytes of the current entry not read yet, then its padding.
    content_left: u64,
    padding_left: u64,
}

/// Largest pax header, GNU long name and long link together (tar-core's own default).
const MAX_METADATA: u32 = 1 << 20;
/// Linux's PATH_MAX: a longer path or link target could not be created anyway.
const MAX_PATH: u32 = 4096;
const BLOCK: u64 = 512;

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        let limits = Limits {
            max_metadata_size: MAX_METADATA,
            max_path_len: Some(MAX_PATH),
            ..Limits::default()
        };
        let mut parser = Parser::new(limits);
        // `./` and `/` name the root; the unpacker decides what an empty path means.
        parser.set_allow_empty_path(true);
        TarReader {
            inner,
            parser,
            buf: vec![0; 64 << 10],
            start: 0,
            end: 0,
            content_left: 0,
            padding_left: 0,
        }
    }

    /// The next entry, or `None` at the end of the archive (its zero blocks, or the end
    /// of the stream between two entries).
    pub fn next_entry(&mut self) -> io::Result<Option<Entry>> {
        self.skip_rest()?;
        loop {
            let event = self
                .parser
                .parse(&self.buf[self.start..self.end])
                .map_err(|e| invalid(format!("invalid tar header: {e}")))?;
            let (consumed, entry) = match event {
                ParseEvent::NeedData { min_bytes } => {
                    if !self.fill(min_bytes)? {
                        if self.start == self.end {
                            return Ok(None);
                        }
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the archive ends inside a header",
                        ));
                    }
                    continue;
                }
                ParseEvent::End { .. } => return Ok(None),
                ParseEvent::GlobalExtensions { consumed, .. } => {
                    // Global pax defaults: no layer or rootfs writer kiln reads uses them
                    // for anything it restores; skipped as they always were.
                    self.start += consumed;
                    continue;
                }
                ParseEvent::Entry { consumed, entry } => (consumed, owned(&entry, None)?),
                ParseEvent::SparseEntry {
                    consumed,
                    entry,
                    sparse_map,
                    real_size,
                } => (consumed, owned(&entry, Some((sparse_map, real_size)))?),
            };
            self.start += consumed;
            self.content_left = entry.size;
            self.padding_left = entry.size.next_multiple_of(BLOCK) - entry.size;
            return Ok(Some(entry));
        }
    }

    /// The current entry's content (for a sparse file, the data regions in order).
    pub fn content(&mut self) -> Content<'_, R> {
        Content { reader: self }
    }

    /// Makes at least `min` unconsumed bytes available; false at the end of the stream.
    fn fill(&mut self, min: usize) -> io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < min {
            self.buf.resize(min.next_power_of_two(), 0);
        }
        while self.end < min {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => return Ok(false),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Reads up to `out.len()` bytes of the stream, buffered ones first.
    fn read_raw(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start < self.end {
            let n = out.len().min(self.end - self.start);
            out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
            self.start += n;
            return Ok(n);
        }
        self.inner.read(out)
    }

    /// Skips the current entry's unread content and its padding.
    fn skip_rest(&mut self) -> io::Result<()> {
        let mut scratch = [0u8; 8192];
        while self.content_left + self.padding_left > 0 {
            let want = (self.content_left + self.padding_left).min(scratch.len() as u64) as usize;
            let n = self.read_raw(&mut scratch[..want])?;
            if n == 0 {
                return Err(truncated());
            }
            let from_content = (n as u64).min(self.content_left);
            self.content_left -= from_content;
            self.padding_left -= n as u64 - from_content;
        }
        Ok(())
    }
}

/// The current entry's content; ends early with an error if the stream does.
pub(super) struct Content<'r, R> {
    reader: &'r mut TarReader<R>,
}

impl<R: Read> Read for Content<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = self.reader.content_left;
        if left == 0 || out.is_empty() {
            return Ok(0);
        }
        let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.reader.read_raw(&mut out[..want])?;
        if n == 0 {
            return Err(truncated());
        }
        self.reader.content_left -= n as u64;
        Ok(n)
    }
}

/// A sparse file's full content: zeros between and after its data regions.
pub(super) struct Expanded<'a, R> {
    data: R,
    regions: &'a [SparseEntry],
    /// Position in the logical file.
    at: u64,
    size: u64,
}

impl<'a, R: Read> Expanded<'a, R> {
    /// Fails when the regions overlap, go backwards or pass the end of the file.
    pub fn new(data: R, regions: &'a [SparseEntry], size: u64) -> io::Result<Self> {
        let mut end = 0;
        for r in regions {
            let stop = r.offset.checked_add(r.length).filter(|&s| s <= size);
            match stop {
                Some(stop) if r.offset >= end => end = stop,
                _ => {
                    return Err(invalid(
                        "sparse map regions overlap or exceed the file".into(),
                    ))
                }
            }
        }
        Ok(Expanded {
            data,
            regions,
            at: 0,
            size,
        })
    }
}

impl<R: Read> Read for Expanded<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while let Some(region) = self.regions.first() {
            if self.at >= region.offset + region.length {
                self.regions = &self.regions[1..];
                continue;
            }
            if self.at < region.offset {
                let n = zeros(out, region.offset - self.at);
                self.at += n as u64;
                return Ok(n);
            }
            let left = region.offset + region.length - self.at;
            let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self.data.read(&mut out[..want])?;
            if n == 0 && want > 0 {
                return Err(truncated());
            }
            self.at += n as u64;
            return Ok(n);
        }
        let n = zeros(out, self.size - self.at);
        self.at += n as u64;
        Ok(n)
    }
}

fn zeros(out: &mut [u8], up_to: u64) -> usize {
    let n = out.len().min(usize::try_from(up_to).unwrap_or(usize::MAX));
    out[..n].fill(0);
    n
}

fn owned(
    e: &tar_core::parse::ParsedEntry<'_>,
    sparse: Option<(Vec<SparseEntry>, u64)>,
) -> io::Result<Entry> {
    let mtime = match pax_value(e.pax, "mtime") {
        Some(text) => parse_pax_time(text)?,
        None => (
            i64::try_from(e.mtime).map_err(|_| invalid("mtime out of range".into()))?,
            0,
        ),
    };
    Ok(Entry {
        kind: e.entry_type,
        path: e.path.to_vec(),
        link: e.link_target.as_ref().map(|l| l.to_vec()),
        mode: e.mode & 0o7777,
        uid: e.uid,
        gid: e.gid,
        mtime,
        xattrs: e
            .xattrs
            .iter()
            .map(|(k, v)| (Cow::as_ref(k).to_vec(), Cow::as_ref(v).to_vec()))
            .collect(),
        device: (e.dev_major.unwrap_or(0), e.dev_minor.unwrap_or(0)),
        size: e.size,
        sparse,
    })
}

/// A pax record's value, by key.
fn pax_value<'a>(pax: Option<&'a [u8]>, key: &str) -> Option<&'a [u8]> {
    PaxExtensions::new(pax?)
        .flatten()
        .find(|ext| ext.key_bytes() == key.as_bytes())
        .map(|ext| ext.value_bytes())
}

/// Parses a pax time such as `1700000000` or `1700000000.25`.
pub(super) fn parse_pax_time(value: &[u8]) -> io::Result<(i64, u32)> {
    let bad = || {
        invalid(format!(
            "invalid pax mtime `{}`",
            String::from_utf8_lossy(value)
        ))
    };
    let text = std::str::from_utf8(value).map_err(|_| bad())?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = secs.parse().map_err(|_| bad())?;
    let digits: String = frac.chars().take(9).collect();
    let nanos = if digits.is_empty() {
        0
    } else {
        let n: u32 = digits.parse().map_err(|_| bad())?;
        n * 10_u32.pow(9 - digits.len() as u32)
    };
    Ok((secs, nanos))
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn truncated() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the archive ends inside an entry's data",
    )
}
