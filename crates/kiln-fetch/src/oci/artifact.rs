//! A kiln image as one OCI artifact: what `kiln artifact push|pull` move, and what the
//! catalogue's `kiln image push|pull` build on (it adds the metadata and the trust checks).
//!
//! The manifest (an OCI image manifest with `artifactType` [`IMAGE_ARTIFACT`]):
//! - config: the image's metadata, opaque JSON bytes ([`METADATA_MEDIA`]);
//! - layer 1: the disk, as qcow2 ([`QCOW2_MEDIA`]) or as a raw image compressed with zstd
//!   ([`RAW_ZSTD_MEDIA`], annotated with the raw image's size and sha256);
//! - layer 2, when signed: the signature bytes ([`SIGNATURE_MEDIA`], minisign's format),
//!   a plain layer rather than an OCI 1.1 referrer so registries without the referrers
//!   API (Debian's docker-registry 2.8 among them) keep it with the image;
//! - annotations: `org.opencontainers.image.title` and `.version`, [`OS_ANNOTATION`],
//!   [`ARCH_ANNOTATION`], and any others the caller adds.
//!
//! Pulling downloads each blob into `DEST/.kiln-partial/` (kept when interrupted, so the
//! next pull resumes it) and verifies it before anything appears under its final name;
//! a raw disk is decompressed into a sparse file and checked against its annotations.

use super::remote::{file_digest, BlobPush, HashingWriter, Progress, Remote, RemoteError};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The artifact type of a kiln image.
pub const IMAGE_ARTIFACT: &str = "application/vnd.kiln.image.v1";
/// The config blob: the image's metadata (JSON).
pub const METADATA_MEDIA: &str = "application/vnd.kiln.image.metadata.v1+json";
/// A qcow2 disk.
pub const QCOW2_MEDIA: &str = "application/vnd.kiln.disk.qcow2";
/// A raw disk compressed with zstd.
pub const RAW_ZSTD_MEDIA: &str = "application/vnd.kiln.disk.raw+zstd";
/// A minisign signature.
pub const SIGNATURE_MEDIA: &str = "application/vnd.kiln.signature.minisign";
/// Annotation: the image's title.
pub const TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Annotation: the image's version.
pub const VERSION_ANNOTATION: &str = "org.opencontainers.image.version";
/// Annotation: the operating system the image holds (`debian-12`, …).
pub const OS_ANNOTATION: &str = "dev.kiln.image.os";
/// Annotation: the architecture it runs on (`amd64`, …).
pub const ARCH_ANNOTATION: &str = "dev.kiln.image.arch";
/// Annotation of a raw disk blob: the uncompressed image's size in bytes.
pub const RAW_SIZE_ANNOTATION: &str = "dev.kiln.disk.raw.size";
/// Annotation of a raw disk blob: the uncompressed image's `sha256:…`.
pub const RAW_DIGEST_ANNOTATION: &str = "dev.kiln.disk.raw.digest";

/// The directory under the destination where downloads wait until verified.
pub const PARTIAL_DIR: &str = ".kiln-partial";

/// zstd level for raw disks: fast, and a sparse image's holes cost next to nothing.
const ZSTD_LEVEL: i32 = 3;

/// Runs of zeros at least this long are left as holes when a raw disk is written.
const HOLE: usize = 64 << 10;

/// How the disk travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// As it is, media type [`QCOW2_MEDIA`].
    Qcow2,
    /// A raw image, compressed with zstd on push ([`RAW_ZSTD_MEDIA`]) and written back
    /// sparse on pull.
    Raw,
}

impl DiskFormat {
    /// qcow2 when the file starts with qcow2's magic, raw otherwise.
    pub fn detect(path: &Path) -> io::Result<DiskFormat> {
        let mut magic = [0u8; 4];
        let mut file = fs::File::open(path)?;
        let n = file.read(&mut magic)?;
        Ok(if n == 4 && magic == *b"QFI\xfb" {
            DiskFormat::Qcow2
        } else {
            DiskFormat::Raw
        })
    }

    /// The file name a pulled disk gets.
    pub fn file_name(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "disk.qcow2",
            DiskFormat::Raw => "disk.raw",
        }
    }

    /// The media type its blob has.
    pub fn media_type(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => QCOW2_MEDIA,
            DiskFormat::Raw => RAW_ZSTD_MEDIA,
        }
    }
}

/// An image to push.
#[derive(Debug, Clone)]
pub struct ImageArtifact<'a> {
    pub disk: &'a Path,
    pub format: DiskFormat,
    /// The metadata, opaque JSON bytes (the catalogue's entry).
    pub metadata: &'a [u8],
    /// The signature bytes, if the image is signed.
    pub signature: Option<&'a [u8]>,
    /// Manifest annotations (title, version, os, arch, …).
    pub annotations: BTreeMap<String, String>,
}

/// How to push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Repositories of the same registry to mount the disk from when one holds it.
    pub mount_from: Vec<String>,
    /// Where the compressed raw disk and the small blobs are staged.
    pub scratch: PathBuf,
}

/// What a push did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushedImage {
    /// `HOST/REPO:TAG`.
    pub reference: String,
    /// The manifest's `sha256:…`: pull `HOST/REPO@DIGEST` for exactly this image.
    pub digest: String,
    /// The disk blob's `sha256:…` and size.
    pub disk_digest: String,
    pub disk_size: u64,
    /// `uploaded`, `present` or `mounted from REPO`.
    pub disk_transfer: String,
}

/// A pulled and verified image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PulledImage {
    /// The manifest's `sha256:…`.
    pub digest: String,
    /// The disk, in the destination directory.
    pub disk: PathBuf,
    #[serde(skip)]
    pub format: DiskFormat,
    #[serde(skip)]
    pub metadata: Vec<u8>,
    #[serde(skip)]
    pub signature: Option<Vec<u8>>,
    pub annotations: BTreeMap<String, String>,
}

/// Pushes `image` to `remote` under `tag`.
pub fn push_image(
    remote: &Remote,
    tag: &str,
    image: &ImageArtifact<'_>,
    options: &PushOptions,
    progress: Option<Progress>,
) -> Result<PushedImage, RemoteError> {
    let io = |action, path: &Path, source| RemoteError::Io {
        reference: remote.tagged(tag),
        action,
        path: path.to_path_buf(),
        source,
    };
    fs::create_dir_all(&options.scratch).map_err(|e| io("creating", &options.scratch, e))?;
    let metadata = small_blob(
        &options.scratch,
        "metadata.json",
        image.metadata,
        METADATA_MEDIA,
    )
    .map_err(|(p, e)| io("writing", &p, e))?;
    let signature = image
        .signature
        .map(|s| small_blob(&options.scratch, "signature.minisig", s, SIGNATURE_MEDIA))
        .transpose()
        .map_err(|(p, e)| io("writing", &p, e))?;
    let (disk_path, disk) = match image.format {
        DiskFormat::Qcow2 => {
            let (digest, size) =
                file_digest(image.disk).map_err(|e| io("reading", image.disk, e))?;
            let mut desc = descriptor(QCOW2_MEDIA, digest, size);
            desc.annotations = Some(BTreeMap::from([(
                TITLE_ANNOTATION.to_string(),
                DiskFormat::Qcow2.file_name().to_string(),
            )]));
            (image.disk.to_path_buf(), desc)
        }
        DiskFormat::Raw => {
            let staged = options.scratch.join("disk.raw.zst");
            let desc =
                compress_raw(image.disk, &staged).map_err(|(p, e)| io("compressing", &p, e))?;
            (staged, desc)
        }
    };
    remote.push_blob(&metadata.0, &metadata.1, &[], None)?;
    let transfer = remote.push_blob(&disk_path, &disk, &options.mount_from, progress)?;
    let mut layers = vec![disk.clone()];
    if let Some((path, desc)) = &signature {
        remote.push_blob(path, desc, &[], None)?;
        layers.push(desc.clone());
    }
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
        config: metadata.1.clone(),
        layers,
        subject: None,
        artifact_type: Some(IMAGE_ARTIFACT.to_string()),
        annotations: Some(image.annotations.clone()),
    };
    let digest = remote.put_manifest(tag, &manifest)?;
    if image.format == DiskFormat::Raw {
        let _ = fs::remove_file(&disk_path);
    }
    Ok(PushedImage {
        reference: remote.tagged(tag),
        digest,
        disk_digest: disk.digest,
        disk_size: disk.size as u64,
        disk_transfer: match transfer {
            BlobPush::Present => "present".into(),
            BlobPush::Mounted(from) => format!("mounted from {from}"),
            BlobPush::Uploaded => "uploaded".into(),
        },
    })
}

/// The metadata's file name in a pull's destination.
pub const METADATA_FILE: &str = "metadata.json";
/// The signature's file name in a pull's destination.
pub const SIGNATURE_FILE: &str = "signature.minisig";

/// How to pull.
#[derive(Debug, Clone, Copy, Default)]
pub struct PullOptions {
    /// Refuse an artifact without a signature layer before downloading anything.
    pub require_signature: bool,
}

/// A check of an artifact's metadata and signature (when signed), made once they are
/// downloaded and before the disk is: the catalogue's trust policy. `Err` says why the
/// image is refused.
pub type MetadataCheck<'a> = &'a dyn Fn(&[u8], Option<&[u8]>) -> Result<(), String>;

/// Pulls the image `tag_or_digest` of `remote` into the directory `dest`. Once every blob
/// is verified, [`METADATA_FILE`] and [`SIGNATURE_FILE`] (when signed) are put in place,
/// then the disk under [`DiskFormat::file_name`]: a disk in `dest` means a complete pull.
pub fn pull_image(
    remote: &Remote,
    tag_or_digest: &str,
    dest: &Path,
    options: PullOptions,
    progress: Option<Progress>,
) -> Result<PulledImage, RemoteError> {
    pull_image_checked(remote, tag_or_digest, dest, options, None, progress)
}

/// [`pull_image`], with `check` run on the metadata and signature before the disk is
/// downloaded: a refused image costs two small blobs, and leaves nothing in `dest`.
pub fn pull_image_checked(
    remote: &Remote,
    tag_or_digest: &str,
    dest: &Path,
    options: PullOptions,
    check: Option<MetadataCheck<'_>>,
    progress: Option<Progress>,
) -> Result<PulledImage, RemoteError> {
    let shown = remote.tagged(tag_or_digest);
    let io = |action, path: &Path, source| RemoteError::Io {
        reference: shown.clone(),
        action,
        path: path.to_path_buf(),
        source,
    };
    let refused = |what: &str, problem: String| RemoteError::Tampered {
        registry: remote.registry().to_string(),
        reference: shown.clone(),
        what: what.to_string(),
        problem,
    };
    let fetched = remote
        .manifest(tag_or_digest)?
        .ok_or_else(|| RemoteError::Registry {
            registry: remote.registry().to_string(),
            reference: shown.clone(),
            message: "not found; check the repository and tag".into(),
        })?;
    let m = &fetched.manifest;
    if m.artifact_type.as_deref() != Some(IMAGE_ARTIFACT) || m.config.media_type != METADATA_MEDIA {
        return Err(RemoteError::Reference {
            reference: shown.clone(),
            message: format!(
                "not a kiln image (artifact type {:?}, config {}; kiln images have {IMAGE_ARTIFACT})",
                m.artifact_type, m.config.media_type
            ),
        });
    }
    let disk = m
        .layers
        .iter()
        .find(|d| d.media_type == QCOW2_MEDIA || d.media_type == RAW_ZSTD_MEDIA)
        .ok_or_else(|| refused("the manifest", "it has no disk layer".into()))?;
    let signature_desc = m.layers.iter().find(|d| d.media_type == SIGNATURE_MEDIA);
    if options.require_signature && signature_desc.is_none() {
        return Err(RemoteError::Reference {
            reference: shown.clone(),
            message: "the artifact is unsigned and a signature is required; nothing was downloaded"
                .into(),
        });
    }
    let format = if disk.media_type == QCOW2_MEDIA {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    };
    let partial = dest.join(PARTIAL_DIR);
    fs::create_dir_all(&partial).map_err(|e| io("creating", &partial, e))?;
    let part = |d: &OciDescriptor| partial.join(d.digest.replace(':', "-"));
    let metadata_path = part(&m.config);
    remote.pull_blob(&m.config, &metadata_path, None)?;
    let metadata = fs::read(&metadata_path).map_err(|e| io("reading", &metadata_path, e))?;
    if serde_json::from_slice::<serde_json::Value>(&metadata).is_err() {
        return Err(refused("the metadata", "it is not JSON".into()));
    }
    let signature = match signature_desc {
        Some(d) => {
            let path = part(d);
            remote.pull_blob(d, &path, None)?;
            Some(fs::read(&path).map_err(|e| io("reading", &path, e))?)
        }
        None => None,
    };
    if let Some(check) = check {
        if let Err(problem) = check(&metadata, signature.as_deref()) {
            let _ = fs::remove_dir_all(&partial);
            return Err(RemoteError::Reference {
                reference: shown.clone(),
                message: format!("refused before its disk was downloaded: {problem}"),
            });
        }
    }
    let disk_part = part(disk);
    remote.pull_blob(disk, &disk_part, progress)?;
    let target = dest.join(format.file_name());
    let place = |from: &Path, name: &str| {
        let to = dest.join(name);
        fs::rename(from, &to).map_err(|e| io("renaming into place", &to, e))
    };
    place(&metadata_path, METADATA_FILE)?;
    if let Some(d) = signature_desc {
        place(&part(d), SIGNATURE_FILE)?;
    }
    match format {
        DiskFormat::Qcow2 => {
            fs::rename(&disk_part, &target).map_err(|e| io("renaming into place", &target, e))?
        }
        DiskFormat::Raw => {
            let staged = partial.join("disk.raw");
            let (digest, size) =
                decompress_raw(&disk_part, &staged).map_err(|(p, e)| io("decompressing", &p, e))?;
            let expected = disk.annotations.as_ref();
            let want_size = expected.and_then(|a| a.get(RAW_SIZE_ANNOTATION));
            let want_digest = expected.and_then(|a| a.get(RAW_DIGEST_ANNOTATION));
            if want_size.is_some_and(|s| *s != size.to_string())
                || want_digest.is_some_and(|d| *d != digest)
            {
                let _ = fs::remove_file(&staged);
                let _ = fs::remove_file(&disk_part);
                return Err(refused(
                    "the raw disk",
                    format!("it decompresses to {size} bytes hashing to {digest}, not what its annotations say"),
                ));
            }
            fs::rename(&staged, &target).map_err(|e| io("renaming into place", &target, e))?;
            let _ = fs::remove_file(&disk_part);
        }
    }
    let _ = fs::remove_dir_all(&partial);
    Ok(PulledImage {
        digest: fetched.digest.clone(),
        disk: target,
        format,
        metadata,
        signature,
        annotations: m.annotations.clone().unwrap_or_default(),
    })
}

/// Writes `bytes` to `scratch/name` and describes them.
fn small_blob(
    scratch: &Path,
    name: &str,
    bytes: &[u8],
    media_type: &str,
) -> Result<(PathBuf, OciDescriptor), (PathBuf, io::Error)> {
    let path = scratch.join(name);
    fs::write(&path, bytes).map_err(|e| (path.clone(), e))?;
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
    Ok((path, descriptor(media_type, digest, bytes.len() as u64)))
}

/// Compresses the raw disk `src` into `dest` with zstd in one pass, hashing both sides.
fn compress_raw(src: &Path, dest: &Path) -> Result<OciDescriptor, (PathBuf, io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let input = fs::File::open(src).map_err(at(src))?;
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let out = fs::File::create(dest).map_err(at(dest))?;
    let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, out));
    let mut encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(at(dest))?;
    let mut raw = Sha256::new();
    let mut raw_size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(at(src))?;
        if n == 0 {
            break;
        }
        raw.update(&buf[..n]);
        raw_size += n as u64;
        encoder.write_all(&buf[..n]).map_err(at(dest))?;
    }
    let (mut writer, digest, size) = encoder.finish().map_err(at(dest))?.finish();
    writer.flush().map_err(at(dest))?;
    let mut desc = descriptor(RAW_ZSTD_MEDIA, digest, size);
    desc.annotations = Some(BTreeMap::from([
        (
            TITLE_ANNOTATION.to_string(),
            DiskFormat::Raw.file_name().to_string(),
        ),
        (RAW_SIZE_ANNOTATION.to_string(), raw_size.to_string()),
        (
            RAW_DIGEST_ANNOTATION.to_string(),
            format!("sha256:{}", hex::encode(raw.finalize())),
        ),
    ]));
    Ok(desc)
}

/// Decompresses `src` into the sparse file `dest` (zero runs of [`HOLE`] bytes are holes);
/// returns the raw image's `sha256:…` and size.
fn decompress_raw(src: &Path, dest: &Path) -> Result<(String, u64), (PathBuf, io::Error)> {
    let at = |p: &Path| {
        let p = p.to_path_buf();
        move |e| (p, e)
    };
    let input = fs::File::open(src).map_err(at(src))?;
    let mut decoder = zstd::stream::read::Decoder::new(input).map_err(at(src))?;
    let mut out = fs::File::create(dest).map_err(at(dest))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; HOLE];
    loop {
        let n = read_full(&mut decoder, &mut buf).map_err(at(src))?;
        if n == 0 {
            break;
        }
        let chunk = &buf[..n];
        hasher.update(chunk);
        size += n as u64;
        if chunk.iter().all(|b| *b == 0) {
            out.seek(SeekFrom::Current(n as i64)).map_err(at(dest))?;
        } else {
            out.write_all(chunk).map_err(at(dest))?;
        }
    }
    out.set_len(size).map_err(at(dest))?;
    out.sync_all().map_err(at(dest))?;
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// Reads until `buf` is full or the stream ends.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn descriptor(media_type: &str, digest: String, size: u64) -> OciDescriptor {
    OciDescriptor {
        media_type: media_type.to_string(),
        digest,
        size: size as i64,
        urls: None,
        annotations: None,
        artifact_type: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn raw_disks_round_trip_through_zstd_and_stay_sparse() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        let mut f = fs::File::create(&raw).unwrap();
        f.set_len(64 << 20).unwrap();
        f.seek(SeekFrom::Start(40 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
        drop(f);
        let zst = dir.path().join("disk.raw.zst");
        let desc = compress_raw(&raw, &zst).unwrap();
        assert!(desc.size < 1 << 20, "zeros compress: {}", desc.size);
        let back = dir.path().join("back.raw");
        let (digest, size) = decompress_raw(&zst, &back).unwrap();
        let annotations = desc.annotations.unwrap();
        assert_eq!(annotations[RAW_DIGEST_ANNOTATION], digest);
        assert_eq!(size, 64 << 20);
        assert_eq!(fs::read(&back).unwrap(), fs::read(&raw).unwrap());
        assert!(
            fs::metadata(&back).unwrap().blocks() * 512 < 1 << 20,
            "holes kept"
        );
    }

    #[test]
    fn qcow2_is_told_from_raw_by_its_magic() {
        let dir = tempfile::tempdir().unwrap();
        let q = dir.path().join("q");
        fs::write(&q, b"QFI\xfb\0\0\0\x03").unwrap();
        let r = dir.path().join("r");
        fs::write(&r, b"\0\0").unwrap();
        assert_eq!(DiskFormat::detect(&q).unwrap(), DiskFormat::Qcow2);
        assert_eq!(DiskFormat::detect(&r).unwrap(), DiskFormat::Raw);
    }
}
