//! `IMAGE.manifest.json`: what an image file is and what it holds. It is also the image
//! descriptor in DETERLab's sense (an Image ID with one OSID per partition): which
//! partition boots by default, which node types and architectures the image is for, and
//! one OS descriptor per partition. `IMAGE.spdx.json` beside it lists the packages.
//!
//! Both files are written next to the image (`web.qcow2` → `web.qcow2.manifest.json`,
//! `web.qcow2.spdx.json`), atomically: a reader sees the old file or the new one, never
//! half of one.
//!
//! # Schema (`kiln-image-manifest/1`)
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema` | string | always `kiln-image-manifest/1` |
//! | `name` | string | the image's name |
//! | `file` | string | the image's file name (the manifest is next to it) |
//! | `format` | string | `raw`, `qcow2`, `vmdk`, `vhdx`, `vdi`, `tar`, … |
//! | `bytes` | integer | size of the image file in bytes |
//! | `virtual_size` | integer | size of the disk the image holds, in bytes |
//! | `sha256`, `sha512` | string | lowercase hex digests of the image file |
//! | `boot` | string | how it boots: `uefi`, `kernel`, `none` |
//! | `default_partition` | string or null | `name` of the partition that boots by default |
//! | `node_types` | array of strings | testbed node types the image supports |
//! | `arches` | array of strings | Debian architectures the image supports |
//! | `partitions` | array | one object per partition, below |
//! | `spec_sha256` | string | sha256 of the spec the image was built from |
//! | `layer_id` | string | the store layer (or combo id) the image was made from |
//! | `kiln_version` | string | version of kiln that built it |
//! | `build_time` | integer | build time, seconds since 1970 (SOURCE_DATE_EPOCH) |
//! | `build_time_utc` | string | the same as RFC 3339 UTC |
//!
//! A partition has `name`, `label` (GPT partition name), `index` (1-based GPT index),
//! `partuuid`, `fs_uuid`, `offset` and `size` (bytes), and `os`: `id`, `name`, `version`,
//! `pretty_name` and `arch` (see [`crate::OsDescriptor`]).
//!
//! ```json
//! {
//!   "schema": "kiln-image-manifest/1",
//!   "name": "web",
//!   "file": "web.qcow2",
//!   "format": "qcow2",
//!   "bytes": 412090368,
//!   "virtual_size": 2147483648,
//!   "sha256": "5f3c…",
//!   "sha512": "9ab0…",
//!   "boot": "uefi",
//!   "default_partition": "root",
//!   "node_types": ["pc3000", "qemu"],
//!   "arches": ["amd64"],
//!   "partitions": [
//!     {
//!       "name": "root",
//!       "label": "root",
//!       "index": 2,
//!       "partuuid": "6b1f…",
//!       "fs_uuid": "0c7e…",
//!       "offset": 135266304,
//!       "size": 2012200448,
//!       "os": {
//!         "id": "debian",
//!         "name": "Debian GNU/Linux",
//!         "version": "12",
//!         "pretty_name": "Debian GNU/Linux 12 (bookworm)",
//!         "arch": "amd64"
//!       }
//!     }
//!   ],
//!   "spec_sha256": "e3b0…",
//!   "layer_id": "2c26…",
//!   "kiln_version": "0.1.0",
//!   "build_time": 1700000000,
//!   "build_time_utc": "2023-11-14T22:13:20Z"
//! }
//! ```

use crate::spdx::rfc3339_utc;
use crate::{ImageError, OsDescriptor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// The `schema` value of manifests this version writes.
pub const SCHEMA: &str = "kiln-image-manifest/1";

/// One partition of an image, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPartition {
    /// Name the spec gives the partition (what `default_partition` refers to).
    pub name: String,
    /// GPT partition name.
    pub label: String,
    /// 1-based GPT index.
    pub index: u32,
    pub partuuid: String,
    /// UUID of the filesystem in it (empty when it has none).
    pub fs_uuid: String,
    /// Start, in bytes from the beginning of the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// What OS it holds ([`crate::osinfo::os_descriptor`]).
    pub os: OsDescriptor,
}

/// What the caller knows about an image; [`write_manifest`] adds the file's size and hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInput {
    pub image_name: String,
    /// `raw`, `qcow2`, `vmdk`, `vhdx`, `vdi`, `tar`, …
    pub format: String,
    /// Size of the disk the image holds, in bytes.
    pub virtual_size: u64,
    pub partitions: Vec<ManifestPartition>,
    /// `name` of the partition that boots by default.
    pub default_partition: Option<String>,
    pub node_types: Vec<String>,
    pub arches: Vec<String>,
    /// `uefi`, `kernel` or `none`.
    pub boot: String,
    pub spec_sha256: String,
    pub layer_id: String,
    pub kiln_version: String,
    /// Seconds since 1970 (the build's SOURCE_DATE_EPOCH, so that it is reproducible).
    pub build_time: i64,
}

/// A manifest as written to and read from `IMAGE.manifest.json` (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: String,
    pub name: String,
    pub file: String,
    pub format: String,
    pub bytes: u64,
    pub virtual_size: u64,
    pub sha256: String,
    pub sha512: String,
    pub boot: String,
    pub default_partition: Option<String>,
    pub node_types: Vec<String>,
    pub arches: Vec<String>,
    pub partitions: Vec<ManifestPartition>,
    pub spec_sha256: String,
    pub layer_id: String,
    pub kiln_version: String,
    pub build_time: i64,
    pub build_time_utc: String,
}

/// `IMAGE.manifest.json` for `image`.
pub fn manifest_path(image: &Path) -> PathBuf {
    with_suffix(image, ".manifest.json")
}

/// `IMAGE.spdx.json` for `image`.
pub fn sbom_path(image: &Path) -> PathBuf {
    with_suffix(image, ".spdx.json")
}

fn with_suffix(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

/// Hashes `image` (sha256 and sha512 in one read), writes `IMAGE.manifest.json` next to it
/// and returns the manifest as JSON.
///
/// Fails, writing nothing, when `default_partition` names no partition or two partitions
/// share a name.
pub fn write_manifest(
    image: &Path,
    input: &ManifestInput,
) -> Result<serde_json::Value, ImageError> {
    check_input(image, input)?;
    let digests = hash_file(image)?;
    let file = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            ImageError::Tool(format!(
                "{}: an image path must end in a file name",
                image.display()
            ))
        })?;
    let manifest = Manifest {
        schema: SCHEMA.to_string(),
        name: input.image_name.clone(),
        file,
        format: input.format.clone(),
        bytes: digests.bytes,
        virtual_size: input.virtual_size,
        sha256: digests.sha256,
        sha512: digests.sha512,
        boot: input.boot.clone(),
        default_partition: input.default_partition.clone(),
        node_types: input.node_types.clone(),
        arches: input.arches.clone(),
        partitions: input.partitions.clone(),
        spec_sha256: input.spec_sha256.clone(),
        layer_id: input.layer_id.clone(),
        kiln_version: input.kiln_version.clone(),
        build_time: input.build_time,
        build_time_utc: rfc3339_utc(input.build_time),
    };
    let path = manifest_path(image);
    write_json_atomic(&path, &manifest)?;
    serde_json::to_value(&manifest)
        .map_err(|e| ImageError::Tool(format!("{}: encoding the manifest: {e}", path.display())))
}

/// Writes an SBOM (from [`crate::spdx::sbom`]) to `IMAGE.spdx.json`; returns that path.
pub fn write_sbom(image: &Path, sbom: &serde_json::Value) -> Result<PathBuf, ImageError> {
    let path = sbom_path(image);
    write_json_atomic(&path, sbom)?;
    Ok(path)
}

/// Reads a manifest written by [`write_manifest`].
pub fn read_manifest(path: &Path) -> Result<Manifest, ImageError> {
    let text = fs::read(path).map_err(|e| ImageError::io(path, e))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        ImageError::Tool(format!(
            "{}: not a kiln image manifest ({e}); rebuild the image to write a new one",
            path.display()
        ))
    })?;
    if manifest.schema != SCHEMA {
        return Err(ImageError::Tool(format!(
            "{}: manifest schema {:?} is not {SCHEMA:?}; use the kiln version that wrote it, \
             or rebuild the image",
            path.display(),
            manifest.schema
        )));
    }
    Ok(manifest)
}

fn check_input(image: &Path, input: &ManifestInput) -> Result<(), ImageError> {
    let mut names = BTreeSet::new();
    for partition in &input.partitions {
        if !names.insert(partition.name.as_str()) {
            return Err(ImageError::Tool(format!(
                "{}: two partitions are named {:?}; give each partition its own name",
                image.display(),
                partition.name
            )));
        }
    }
    if let Some(default) = &input.default_partition {
        if !names.contains(default.as_str()) {
            let known: Vec<&str> = names.into_iter().collect();
            return Err(ImageError::Tool(format!(
                "{}: the default partition {default:?} is not one of the image's partitions \
                 ({}); name one of them as the default",
                image.display(),
                if known.is_empty() {
                    "it has none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    Ok(())
}

/// Size and digests of a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
    /// Lowercase hex.
    pub sha512: String,
}

/// Hashes `path` with SHA-256 and SHA-512 on two threads, each reading the file (the
/// second read comes from the page cache): SHA-512 alone takes about as long as both
/// did on one thread, and an image is hundreds of megabytes. aws-lc's assembly does
/// SHA-512 ~15% faster than the sha2 crate here (SHA-256 is as fast with either, both
/// use the CPU's SHA extensions).
pub fn hash_file(path: &Path) -> Result<FileDigests, ImageError> {
    use aws_lc_rs::digest::{Algorithm, Context, SHA256, SHA512};
    fn digest(path: &Path, algorithm: &'static Algorithm) -> Result<(u64, String), ImageError> {
        let mut context = Context::new(algorithm);
        let bytes = for_each_chunk(path, |chunk| context.update(chunk))?;
        Ok((bytes, hex::encode(context.finish())))
    }
    let ((bytes, sha256), (bytes512, sha512)) = std::thread::scope(|s| {
        let sha512 = s.spawn(|| digest(path, &SHA512));
        let sha256 = digest(path, &SHA256);
        let sha512 = sha512
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Ok::<_, ImageError>((sha256?, sha512?))
    })?;
    if bytes != bytes512 {
        return Err(ImageError::Tool(format!(
            "{}: changed while it was being hashed ({bytes} then {bytes512} bytes)",
            path.display()
        )));
    }
    Ok(FileDigests {
        bytes,
        sha256,
        sha512,
    })
}

/// Writes `value` as pretty JSON plus a newline to `path` through a temporary file in the
/// same directory, synced, then renamed over `path`.
fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<(), ImageError> {
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|e| ImageError::Tool(format!("{}: encoding JSON: {e}", path.display())))?;
    text.push(b'\n');
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.kiln-tmp-{}", std::process::id()));
    let written = fs::File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(&text)?;
            f.sync_all()
        })
        .map_err(|e| ImageError::io(&tmp, e))
        .and_then(|()| fs::rename(&tmp, path).map_err(|e| ImageError::io(path, e)));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Streams `path` in 1 MiB chunks to `f`; returns the number of bytes read.
pub(crate) fn for_each_chunk(path: &Path, mut f: impl FnMut(&[u8])) -> Result<u64, ImageError> {
    let mut file = fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => return Ok(bytes),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ImageError::io(path, e)),
        };
        f(&buf[..n]);
        bytes += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sidecar_paths_append_to_the_full_name() {
        assert_eq!(
            manifest_path(Path::new("out/web.qcow2")),
            Path::new("out/web.qcow2.manifest.json")
        );
        assert_eq!(
            sbom_path(Path::new("/x/disk.raw")),
            Path::new("/x/disk.raw.spdx.json")
        );
    }

    #[test]
    fn digests_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        fs::write(&path, "abc").unwrap();
        let d = hash_file(&path).unwrap();
        assert_eq!(d.bytes, 3);
        assert_eq!(
            d.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(d.sha512.starts_with("ddaf35a193617aba"));
        assert_eq!(d.sha512.len(), 128);
    }
}
