//! `kiln image push ID oci://…` and `kiln image pull oci://…`: catalogue images through an
//! OCI registry. The CLI composes the two crates so that neither depends on the other:
//! `kiln-fetch`'s artifact layer moves the bytes (disk, metadata JSON as the config,
//! minisign signature as a layer), and `kiln-catalog`'s admission checks them exactly as
//! it checks a marketplace pull before anything enters the catalogue.

use crate::cmd_artifact::open_remote;
use anyhow::{bail, Context};
use kiln_catalog::admit::{admit_downloaded, check_offer, Offered, Pulled};
use kiln_catalog::catalog::{Catalog, Entry};
use kiln_catalog::metadata::Metadata;
use kiln_catalog::trust::Trust;
use kiln_catalog::verify::verify_image_file;
use kiln_fetch::oci::artifact::{
    self, DiskFormat, ImageArtifact, PullOptions, PushOptions, PushedImage, ARCH_ANNOTATION,
    OS_ANNOTATION, TITLE_ANNOTATION, VERSION_ANNOTATION,
};
use kiln_fetch::oci::remote::Progress;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The manifest annotations of a catalogue image: title and version, and the OS and
/// architecture of its default partition (else its first one), when it has partitions.
pub fn annotations(m: &Metadata) -> BTreeMap<String, String> {
    let mut out = BTreeMap::from([
        (TITLE_ANNOTATION.to_string(), m.title.clone()),
        (VERSION_ANNOTATION.to_string(), m.version.clone()),
    ]);
    let partition = m
        .partitions
        .iter()
        .find(|p| m.default_partition.as_deref() == Some(p.name.as_str()))
        .or_else(|| m.partitions.first());
    if let Some(p) = partition {
        let os = match (p.os.as_str(), p.os_version.as_str()) {
            ("", _) => String::new(),
            (os, "") => os.to_string(),
            (os, version) => format!("{os}-{version}"),
        };
        for (key, value) in [(OS_ANNOTATION, os), (ARCH_ANNOTATION, p.arch.clone())] {
            if !value.is_empty() {
                out.insert(key.to_string(), value);
            }
        }
    }
    out
}

/// Pushes catalogue entry `entry` (its disk, metadata and signature) to `location`
/// (`oci://HOST/REPO:TAG`) as one artifact. Returns what the push did and the
/// reference pinned by digest (`oci://HOST/REPO@sha256:…`) to pull exactly this image.
pub fn push(
    catalog: &Catalog,
    entry: &Entry,
    location: &str,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(PushedImage, String)> {
    let (remote, tag) = open_remote(location)?;
    if tag.starts_with("sha256:") {
        bail!("{location}: push to a tag (…:TAG), not a digest");
    }
    let disk = entry.image.as_deref().with_context(|| {
        format!(
            "the catalogue holds only the metadata of {}; pull the image first",
            entry.metadata.short_id
        )
    })?;
    // What is pushed is what the signature vouches for, as a marketplace push checks.
    verify_image_file(&entry.metadata, disk)?;
    let format = DiskFormat::detect(disk).with_context(|| format!("reading {}", disk.display()))?;
    // Staged in the catalogue's tmp/, which the next open cleans if this process dies.
    let scratch = catalog.tmp_name("oci-push");
    bar.set_length(entry.metadata.bytes);
    let pushed = artifact::push_image(
        &remote,
        &tag,
        &ImageArtifact {
            disk,
            format,
            metadata: &entry.metadata_bytes,
            signature: Some(entry.signature.as_bytes()),
            annotations: annotations(&entry.metadata),
        },
        &PushOptions {
            mount_from: Vec::new(),
            scratch: scratch.clone(),
        },
        Some(progress(bar)),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    let pushed =
        pushed.with_context(|| format!("pushing {} to {location}", entry.metadata.short_id))?;
    let pinned = format!(
        "oci://{}/{}@{}",
        remote.registry(),
        remote.reference().repository,
        pushed.digest
    );
    Ok((pushed, pinned))
}

/// Pulls `location` (`oci://HOST/REPO:TAG[@sha256:…]`) and admits it into `catalog`
/// only if its signature, endorser, validity and bytes pass, as a marketplace pull.
///
/// The artifact lands in `CATALOG/partial/oci-<hash of the location>/`, where an
/// interrupted download stays to be resumed; once admitted or refused, that directory
/// is removed, so a refused artifact leaves nothing behind.
pub fn pull(
    catalog: &Catalog,
    location: &str,
    trust: &Trust,
    allow_expired: bool,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<(Pulled, String)> {
    let (remote, at) = open_remote(location)?;
    let staging = staging_dir(catalog, location);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    // Two pulls of one location would write the same partial files: one at a time.
    let lock_path = staging.join(".lock");
    let lock = std::fs::File::create(&lock_path)
        .with_context(|| format!("creating {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "{location}: another kiln is pulling it into this catalogue (it holds {}); wait for it",
            lock_path.display()
        );
    }
    // An unsigned artifact is refused before its disk is downloaded.
    let options = PullOptions {
        require_signature: true,
    };
    // The trust policy runs on the metadata and signature before the disk is fetched,
    // and again (with the disk's checksums) in `admit` once it is.
    let check = |metadata: &[u8], signature: Option<&[u8]>| {
        let signature = signature.ok_or("the artifact is unsigned")?;
        let signature = std::str::from_utf8(signature)
            .map_err(|_| "its signature layer is not minisign text".to_string())?;
        let offer = Offered {
            metadata_bytes: metadata,
            signature,
            origin: location,
        };
        check_offer(offer, trust, allow_expired)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let pulled = artifact::pull_image_checked(
        &remote,
        &at,
        &staging,
        options,
        Some(&check),
        Some(progress(bar)),
    );
    let pulled = match pulled {
        Ok(pulled) => pulled,
        Err(e) => {
            // Keep a partial download for the next attempt to resume; nothing else.
            if !holds_data(&staging) {
                let _ = std::fs::remove_dir_all(&staging);
            }
            return Err(anyhow::Error::new(e).context(format!("pulling {location}")));
        }
    };
    let admitted = admit(catalog, location, &pulled, trust, allow_expired);
    let _ = std::fs::remove_dir_all(&staging);
    Ok((admitted?, pulled.digest))
}

fn admit(
    catalog: &Catalog,
    location: &str,
    pulled: &artifact::PulledImage,
    trust: &Trust,
    allow_expired: bool,
) -> anyhow::Result<Pulled> {
    let signature = pulled
        .signature
        .as_deref()
        .with_context(|| format!("{location}: the artifact is unsigned: refused"))?;
    let signature = std::str::from_utf8(signature)
        .with_context(|| format!("{location}: its signature layer is not minisign text"))?;
    let offer = Offered {
        metadata_bytes: &pulled.metadata,
        signature,
        origin: location,
    };
    admit_downloaded(catalog, offer, &pulled.disk, trust, allow_expired)
        .with_context(|| format!("{location}: refused; nothing was added to the catalogue"))
}

/// Whether any non-empty file lies under `dir` (a download worth resuming).
/// (Two levels at most: the artifact layer's `.kiln-partial/` and the blobs in it.)
fn holds_data(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| match e.file_type() {
        Ok(t) if t.is_dir() => holds_data(&e.path()),
        Ok(t) if t.is_file() => e.metadata().is_ok_and(|m| m.len() > 0),
        _ => false,
    })
}

/// The staging directory of a pull of `location`: stable across runs, so that a
/// second attempt resumes the first one's download.
fn staging_dir(catalog: &Catalog, location: &str) -> PathBuf {
    let hash = format!("{:x}", Sha256::digest(location.as_bytes()));
    catalog
        .dir
        .join("partial")
        .join(format!("oci-{}", &hash[..24]))
}

/// The artifact layer's progress callback, moving `bar`.
fn progress(bar: &indicatif::ProgressBar) -> Progress {
    let bar = bar.clone();
    Arc::new(move |done| bar.set_position(done))
}
