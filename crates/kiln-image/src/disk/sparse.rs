//! Copying between image files without filling their holes: only blocks that hold
//! something other than zeros are written, so a raw disk stays sparse.

use crate::ImageError;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Granularity of the zero test: a filesystem block.
const BLOCK: usize = 4096;
/// Bytes read at a time.
const CHUNK: usize = 1 << 20;

/// Copies `len` bytes of `src` starting at `src_offset` to `dst` at `dst_offset`,
/// skipping the holes of `src` and every all-zero block. `dst` must hold zeros (or
/// holes) there already.
pub(crate) fn copy_region(
    src: &File,
    src_offset: u64,
    len: u64,
    dst: &File,
    dst_offset: u64,
) -> io::Result<()> {
    let end = src_offset + len;
    let mut pos = src_offset;
    let mut buf = vec![0u8; CHUNK];
    while pos < end {
        let Some(data) = next_data(src, pos)? else {
            break;
        };
        if data >= end {
            break;
        }
        let hole = next_hole(src, data)?.min(end);
        let mut at = data;
        while at < hole {
            let n = ((hole - at) as usize).min(CHUNK);
            src.read_exact_at(&mut buf[..n], at)?;
            write_nonzero(dst, &buf[..n], dst_offset + (at - src_offset))?;
            at += n as u64;
        }
        pos = hole;
    }
    Ok(())
}

/// Writes the runs of non-zero blocks of `buf` at `offset`.
fn write_nonzero(dst: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, block) in buf.chunks(BLOCK).enumerate() {
        let zero = block.iter().all(|&b| b == 0);
        match (zero, run_start) {
            (false, None) => run_start = Some(i * BLOCK),
            (true, Some(start)) => {
                dst.write_all_at(&buf[start..i * BLOCK], offset + start as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        dst.write_all_at(&buf[start..], offset + start as u64)?;
    }
    Ok(())
}

/// The data extents of the first `len` bytes of `file` (its holes left out), as the
/// filesystem reports them with `SEEK_DATA`/`SEEK_HOLE`.
pub(crate) fn data_extents(file: &File, len: u64) -> io::Result<Vec<std::ops::Range<u64>>> {
    let mut extents = Vec::new();
    let mut pos = 0;
    while pos < len {
        let Some(data) = next_data(file, pos)? else {
            break;
        };
        if data >= len {
            break;
        }
        let hole = next_hole(file, data)?.min(len);
        extents.push(data..hole);
        pos = hole;
    }
    Ok(extents)
}

fn next_data(file: &File, from: u64) -> io::Result<Option<u64>> {
    seek(file, from, libc::SEEK_DATA)
}

fn next_hole(file: &File, from: u64) -> io::Result<u64> {
    // Every file has an implicit hole at its end.
    Ok(seek(file, from, libc::SEEK_HOLE)?.unwrap_or(u64::MAX))
}

/// `lseek` with `SEEK_DATA`/`SEEK_HOLE`; `None` past the end (ENXIO). File systems
/// without hole support report all data, which is still correct.
fn seek(file: &File, from: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    let offset = libc::off_t::try_from(from)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek on a valid, owned descriptor; it only moves the file position,
    // which this module never relies on (all I/O is positional).
    let r = unsafe { libc::lseek(file.as_raw_fd(), offset, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(err)
    }
}

/// Copies the whole of `src` to a new file `dst` (replacing it), sparse.
pub(crate) fn copy_file(src: &Path, dst: &Path) -> Result<(), ImageError> {
    let input = File::open(src).map_err(|e| ImageError::io(src, e))?;
    let len = input.metadata().map_err(|e| ImageError::io(src, e))?.len();
    let output = File::create(dst).map_err(|e| ImageError::io(dst, e))?;
    output.set_len(len).map_err(|e| ImageError::io(dst, e))?;
    copy_region(&input, 0, len, &output, 0).map_err(|e| ImageError::io(dst, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn copies_data_and_keeps_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let src_path = tmp.path().join("src");
        let src = File::create(&src_path).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(b"head", 0).unwrap();
        src.write_all_at(&[0u8; 3 * BLOCK], 1 << 20).unwrap(); // explicit zeros
        src.write_all_at(b"middle", (32 << 20) + 5).unwrap();
        src.write_all_at(b"tail", (64 << 20) - 4).unwrap();
        drop(src);
        let dst_path = tmp.path().join("dst");
        copy_file(&src_path, &dst_path).unwrap();
        assert_eq!(
            std::fs::read(&src_path).unwrap(),
            std::fs::read(&dst_path).unwrap()
        );
        // Three written blocks, not 64 MiB (nor the explicit zeros).
        assert!(std::fs::metadata(&dst_path).unwrap().blocks() * 512 <= 3 * 4096 * 4);
    }

    #[test]
    fn copies_a_region_to_an_offset() {
        let tmp = tempfile::tempdir().unwrap();
        let rw = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(tmp.path().join(name))
                .unwrap()
        };
        let src = rw("s");
        src.write_all_at(b"xxABCDyy", 0).unwrap();
        let dst = rw("d");
        dst.set_len(16).unwrap();
        copy_region(&src, 2, 4, &dst, 10).unwrap();
        let mut out = [0u8; 16];
        dst.read_exact_at(&mut out, 0).unwrap();
        assert_eq!(&out[10..14], b"ABCD");
        assert_eq!(&out[..10], &[0u8; 10]);
    }
}
