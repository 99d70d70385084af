//! KubeVirt containerDisks: a container image of one layer holding the VM's disk at
//! `/disk/disk.qcow2`, owned by uid/gid 107 (the `qemu` user KubeVirt's virt-launcher runs
//! as) and read-only, as KubeVirt's documentation asks.
//!
//! [`write_layer`] writes that layer (an uncompressed tar, hashed as it is written);
//! [`write_oci_archive`] wraps it in an OCI image layout archive (`oci-layout`,
//! `index.json`, `blobs/sha256/…`), which `skopeo copy oci-archive:…` and `podman load`
//! read. Pushing the same blobs to a registry is the caller's (kiln-fetch's registry code).

use crate::ImageError;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use tar::{EntryType, Header};

/// The owner KubeVirt expects of the disk (the `qemu` user and group).
pub const QEMU_ID: u64 = 107;
/// The directory holding the disk.
pub const DISK_DIR: &str = "disk";
/// The disk's name in it.
pub const DISK_NAME: &str = "disk.qcow2";
/// Media types of what [`write_oci_archive`] writes.
pub const LAYER_MEDIA: &str = "application/vnd.oci.image.layer.v1.tar";
pub const CONFIG_MEDIA: &str = "application/vnd.oci.image.config.v1+json";
pub const MANIFEST_MEDIA: &str = "application/vnd.oci.image.manifest.v1+json";

/// A blob: its `sha256:…` and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub size: u64,
}

/// The three blobs of a containerDisk image.
#[derive(Debug, Clone)]
pub struct ContainerDisk {
    pub layer: Blob,
    /// The image config's bytes and blob.
    pub config: (Vec<u8>, Blob),
    /// The manifest's bytes and blob.
    pub manifest: (Vec<u8>, Blob),
}

/// Writes the layer tar (`disk/`, `disk/disk.qcow2`, both 107:107, times `mtime`) for the
/// qcow2 file `qcow2` to `out`, and describes the image around it.
pub fn write_layer(qcow2: &Path, out: &Path, mtime: u64) -> Result<ContainerDisk, ImageError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| ImageError::io(&path, e)
    };
    let disk = fs::File::open(qcow2).map_err(io(qcow2))?;
    let size = disk.metadata().map_err(io(qcow2))?.len();
    let file = fs::File::create(out).map_err(io(out))?;
    let mut builder = tar::Builder::new(Hashing::new(BufWriter::with_capacity(1 << 20, file)));
    let mut dir = header(EntryType::Directory, 0o555, 0, mtime);
    builder
        .append_data(&mut dir, format!("{DISK_DIR}/"), io::empty())
        .map_err(io(out))?;
    let mut file_header = header(EntryType::Regular, 0o440, size, mtime);
    builder
        .append_data(&mut file_header, format!("{DISK_DIR}/{DISK_NAME}"), disk)
        .map_err(io(out))?;
    let hashing = builder.into_inner().map_err(io(out))?;
    let (mut inner, layer) = hashing.finish();
    inner.flush().map_err(io(out))?;
    let config = serde_json::json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {},
        "rootfs": { "type": "layers", "diff_ids": [layer.digest] },
    });
    let config = serde_json::to_vec(&config).map_err(|e| ImageError::Tool(e.to_string()))?;
    let config_blob = blob_of(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA,
        "config": { "mediaType": CONFIG_MEDIA, "digest": config_blob.digest, "size": config_blob.size },
        "layers": [ { "mediaType": LAYER_MEDIA, "digest": layer.digest, "size": layer.size } ],
    });
    let manifest = serde_json::to_vec(&manifest).map_err(|e| ImageError::Tool(e.to_string()))?;
    let manifest_blob = blob_of(&manifest);
    Ok(ContainerDisk {
        layer,
        config: (config, config_blob),
        manifest: (manifest, manifest_blob),
    })
}

/// Writes `image` (its layer in the file `layer`) as an OCI image layout archive to `out`,
/// its manifest named `tag` in `index.json`.
pub fn write_oci_archive(
    image: &ContainerDisk,
    layer: &Path,
    tag: &str,
    out: impl Write,
    mtime: u64,
) -> Result<(), ImageError> {
    let io = |e| ImageError::io(layer, e);
    let mut builder = tar::Builder::new(out);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST_MEDIA,
            "digest": image.manifest.1.digest,
            "size": image.manifest.1.size,
            "annotations": { "org.opencontainers.image.ref.name": tag },
        }],
    });
    let index = serde_json::to_vec(&index).map_err(|e| ImageError::Tool(e.to_string()))?;
    for dir in ["blobs/", "blobs/sha256/"] {
        let mut h = header(EntryType::Directory, 0o755, 0, mtime);
        h.set_uid(0);
        h.set_gid(0);
        builder.append_data(&mut h, dir, io::empty()).map_err(io)?;
    }
    let small: [(&str, &[u8]); 2] = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
    ];
    for (name, bytes) in small {
        append_bytes(&mut builder, name, bytes, mtime).map_err(io)?;
    }
    for (bytes, blob) in [&image.config, &image.manifest] {
        append_bytes(&mut builder, &blob_path(blob), bytes, mtime).map_err(io)?;
    }
    let file = fs::File::open(layer).map_err(io)?;
    let mut h = root_header(EntryType::Regular, 0o644, image.layer.size, mtime);
    builder
        .append_data(&mut h, blob_path(&image.layer), file)
        .map_err(io)?;
    builder.into_inner().map_err(io)?.flush().map_err(io)
}

fn blob_path(blob: &Blob) -> String {
    format!("blobs/sha256/{}", blob.digest.trim_start_matches("sha256:"))
}

fn append_bytes<W: Write>(
    builder: &mut tar::Builder<W>,
    name: &str,
    bytes: &[u8],
    mtime: u64,
) -> io::Result<()> {
    let mut h = root_header(EntryType::Regular, 0o644, bytes.len() as u64, mtime);
    builder.append_data(&mut h, name, bytes)
}

/// A header owned by 107:107.
fn header(kind: EntryType, mode: u32, size: u64, mtime: u64) -> Header {
    let mut h = root_header(kind, mode, size, mtime);
    h.set_uid(QEMU_ID);
    h.set_gid(QEMU_ID);
    h
}

fn root_header(kind: EntryType, mode: u32, size: u64, mtime: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn blob_of(bytes: &[u8]) -> Blob {
    Blob {
        digest: format!("sha256:{}", hex::encode(Sha256::digest(bytes))),
        size: bytes.len() as u64,
    }
}

/// The OCI name of this machine's architecture (the disk's, as kiln builds for the host).
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A writer that hashes and counts what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    size: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn finish(self) -> (W, Blob) {
        let blob = Blob {
            digest: format!("sha256:{}", hex::encode(self.hasher.finalize())),
            size: self.size,
        };
        (self.inner, blob)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn one_layer_with_the_disk_owned_by_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("d.qcow2");
        fs::write(&disk, b"QFI\xfbqcow2 bytes").unwrap();
        let layer = dir.path().join("layer.tar");
        let image = write_layer(&disk, &layer, 1_600_000_000).unwrap();
        let bytes = fs::read(&layer).unwrap();
        assert_eq!(image.layer, blob_of(&bytes));
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().display().to_string(),
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap(),
            ));
            let mut content = Vec::new();
            e.read_to_end(&mut content).unwrap();
            if !content.is_empty() {
                assert_eq!(content, b"QFI\xfbqcow2 bytes");
            }
        }
        assert_eq!(
            seen,
            [
                ("disk/".into(), 107, 107, 0o555),
                ("disk/disk.qcow2".into(), 107, 107, 0o440)
            ]
        );
        let manifest: serde_json::Value = serde_json::from_slice(&image.manifest.0).unwrap();
        assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
        let mut out = Vec::new();
        write_oci_archive(&image, &layer, "latest", &mut out, 0).unwrap();
        let names: Vec<String> = tar::Archive::new(out.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert!(names.contains(&"index.json".to_string()));
        assert!(names.contains(&blob_path(&image.layer)));
    }
}
