//! `file:PATH` bases: a root filesystem tarball (`.tar`, `.tar.gz`/`.tgz`, `.tar.zst`).
//!
//! The id is the sha256 of the file's bytes, so editing the tarball makes a new base. The
//! bytes are hashed again while unpacking and must still match the id.

use crate::unpack::{self, Whiteouts};
use crate::FetchError;
use kiln_spec::{hash, LayerId};
use kiln_store::BaseConfig;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

/// The default `PATH` of a base that does not say otherwise.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How a tarball is compressed, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of `path` judged by its extension; `None` for an unsupported name.
    pub fn from_path(path: &Path) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        if name.ends_with(".tar") {
            Some(Compression::None)
        } else if name.ends_with(".tar.gz") || name.ends_with(".tgz") {
            Some(Compression::Gzip)
        } else if name.ends_with(".tar.zst") {
            Some(Compression::Zstd)
        } else {
            None
        }
    }
}

/// The supported extensions, for error messages.
pub const SUPPORTED_EXTENSIONS: &str = ".tar, .tar.gz, .tgz or .tar.zst";

/// The base id of the tarball at `path` (sha256 of its bytes, streamed) and that digest.
pub fn base_id(base: &str, path: &Path) -> Result<(LayerId, String), FetchError> {
    let file =
        File::open(path).map_err(|e| FetchError::io(base, "opening the tarball", path, e))?;
    let mut reader = HashingReader::new(file);
    io::copy(&mut reader, &mut io::sink())
        .map_err(|e| FetchError::io(base, "reading the tarball", path, e))?;
    let digest = reader.hex_digest();
    Ok((id_from_digest(&digest), digest))
}

fn id_from_digest(hex: &str) -> LayerId {
    hash::base_id("tar", &[("sha256", hex)])
}

/// Unpacks the tarball at `path` into `rootfs`, checking that its bytes still hash to `id`.
pub fn fetch(
    base: &str,
    path: &Path,
    id: &LayerId,
    rootfs: &Path,
    progress: &mut dyn Write,
) -> Result<BaseConfig, FetchError> {
    let compression = Compression::from_path(path).ok_or_else(|| {
        FetchError::base(
            base,
            format!(
                "{} is not a tarball kiln can read; use {SUPPORTED_EXTENSIONS}",
                path.display()
            ),
        )
    })?;
    let file =
        File::open(path).map_err(|e| FetchError::io(base, "opening the tarball", path, e))?;
    let _ = writeln!(progress, "unpacking {} ({compression:?})", path.display());
    let mut hashing = HashingReader::new(file);
    let buffered = BufReader::with_capacity(1 << 20, &mut hashing);
    let stats = unpack::unpack_compressed(buffered, compression, rootfs, Whiteouts::Literal)
        .map_err(|e| archive_error(base, path, e))?;
    // Read what the decompressor left (padding after the end-of-archive blocks) so the
    // digest covers the whole file.
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| FetchError::io(base, "reading the tarball", path, e))?;
    if id_from_digest(&hashing.hex_digest()) != *id {
        return Err(FetchError::base(
            base,
            format!(
                "{} changed while kiln was reading it; run the build again",
                path.display()
            ),
        ));
    }
    let _ = writeln!(progress, "unpacked {} entries", stats.entries);
    if stats.skipped_xattrs > 0 {
        let _ = writeln!(
            progress,
            "warning: {} extended attributes not supported by the target filesystem were skipped",
            stats.skipped_xattrs
        );
    }
    Ok(BaseConfig {
        env: vec![("PATH".into(), DEFAULT_PATH.into())],
        workdir: None,
        user: None,
    })
}

fn archive_error(base: &str, path: &Path, e: unpack::UnpackError) -> FetchError {
    FetchError::Archive {
        base: base.to_string(),
        archive: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Passes bytes through while hashing them with sha256.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    pub(crate) fn hex_digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_follows_the_extension() {
        assert_eq!(
            Compression::from_path(Path::new("a/root.tar")),
            Some(Compression::None)
        );
        assert_eq!(
            Compression::from_path(Path::new("root.tar.gz")),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_path(Path::new("root.tgz")),
            Some(Compression::Gzip)
        );
        assert_eq!(
            Compression::from_path(Path::new("root.tar.zst")),
            Some(Compression::Zstd)
        );
        assert_eq!(Compression::from_path(Path::new("root.tar.xz")), None);
        assert_eq!(Compression::from_path(Path::new("root.zip")), None);
    }
}
