//! A build cache shared through an OCI registry: `kiln build --cache-to oci://HOST/REPO`
//! pushes each layer a build made or used, `--cache-from` pulls a step's layer instead of
//! running it.
//!
//! A layer is one manifest in the repository, tagged with its step id (64 hex digits), of
//! artifact type [`LAYER_ARTIFACT`]:
//! - config: the layer's `meta.json`, byte for byte ([`META_MEDIA`]);
//! - layer 1: its `rootfs/` (the overlay upper dir, or the full tree of a flat layer) as a
//!   deterministic tar compressed with zstd ([`ROOTFS_MEDIA`]): sorted entries, the root
//!   itself, owners, modes, nanosecond mtimes, xattrs (overlayfs' opaque markers among
//!   them) and whiteouts as the character devices overlayfs reads, so extracting it gives
//!   the same upper dir back;
//! - layer 2, when the step printed anything: its log ([`LOG_MEDIA`]), replayed on a hit.
//!
//! A pulled layer is checked before it enters the store: every blob against its digest
//! (a tampered or truncated one is refused and the step is built instead), its meta.json
//! against the step id and parent the build computed. It is unpacked into the step's
//! temporary layer and committed with the store's usual atomic rename, so an interrupted
//! pull leaves nothing the next open of the store does not purge.
//!
//! The registry is trusted as the local store is: whoever can push to the repository
//! decides what a step id holds. Use a repository only trusted builders push to.

use kiln_fetch::oci::remote::{FetchedManifest, HashingWriter, Remote};
use kiln_fetch::oci::RemoteError;
use kiln_fetch::RegistrySettings;
use kiln_image::tar_export::{write_tar_with, TarOptions};
use kiln_store::{LayerId, LayerMeta, Store, TmpLayer, DISK_FILE};
use oci_client::manifest::{OciDescriptor, OciImageManifest, OCI_IMAGE_MEDIA_TYPE};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// The artifact type of a cached layer's manifest.
pub const LAYER_ARTIFACT: &str = "application/vnd.kiln.layer.v1";
/// The config blob: the layer's meta.json.
pub const META_MEDIA: &str = "application/vnd.kiln.layer.meta.v1+json";
/// The layer's rootfs as a tar compressed with zstd.
pub const ROOTFS_MEDIA: &str = "application/vnd.kiln.layer.v1.tar+zstd";
/// The payload of a disk layer (QEMU sandbox): its `disk.qcow2` (an overlay whose backing
/// file is named relative to the store, `../../result/PARENT/disk.qcow2`) and, for a VM
/// base, its `boot/`, as a tar compressed with zstd.
pub const DISK_MEDIA: &str = "application/vnd.kiln.layer.v1.disk.tar+zstd";
/// The step's log.
pub const LOG_MEDIA: &str = "application/vnd.kiln.layer.log.v1";
/// Annotation naming the layer's id (also its tag).
pub const ID_ANNOTATION: &str = "dev.kiln.layer.id";
/// Annotation naming the layer's parent.
pub const PARENT_ANNOTATION: &str = "dev.kiln.layer.parent";

/// zstd level of rootfs blobs: fast, and the same bytes for the same tree.
const ZSTD_LEVEL: i32 = 3;

/// Why a layer could not be pulled or pushed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The registry holds something under the step id that is not a usable kiln layer.
    #[error("{cache}: layer {id}: {problem}")]
    Invalid {
        cache: String,
        id: String,
        problem: String,
    },
    /// A local file of the layer could not be read or written.
    #[error("{cache}: layer {id}: {action} {}: {message}", path.display())]
    Local {
        cache: String,
        id: String,
        action: &'static str,
        path: std::path::PathBuf,
        message: String,
    },
}

impl CacheError {
    /// True when the registry's content was refused (digest, size, or meta.json): the
    /// cache as a whole may still be fine.
    pub fn is_refusal(&self) -> bool {
        match self {
            CacheError::Remote(e) => e.is_tampered(),
            CacheError::Invalid { .. } => true,
            CacheError::Local { .. } => false,
        }
    }
}

/// A cached layer found in the registry, not yet pulled.
pub struct CachedLayer {
    /// Its meta.json (verified against its digest).
    pub meta: LayerMeta,
    manifest: FetchedManifest,
}

/// What pushing a layer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    /// The repository had it already.
    Present,
    /// It was uploaded (`bytes`: the rootfs blob's size).
    Uploaded { bytes: u64 },
}

/// A registry repository used as a build cache.
pub struct RegistryCache {
    remote: Remote,
    /// `oci://HOST/REPO`, for messages.
    shown: String,
    /// Set once the registry failed for a reason other than refused content: the rest of
    /// the build does not ask it again.
    disabled: AtomicBool,
}

impl std::fmt::Debug for RegistryCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCache")
            .field("repository", &self.shown)
            .finish()
    }
}

impl RegistryCache {
    /// The cache at `text` (`oci://HOST[:PORT]/REPO`; a tag or digest is refused: the
    /// cache's tags are step ids).
    pub fn open(text: &str, settings: &RegistrySettings) -> Result<Self, CacheError> {
        let remote = Remote::open(text, settings)?;
        let r = remote.reference();
        let explicit_tag = text
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':'));
        if r.digest.is_some() || explicit_tag {
            return Err(CacheError::Remote(RemoteError::Reference {
                reference: text.to_string(),
                message: "a build cache is a repository (oci://HOST/REPO), without a tag or digest: kiln tags each layer with its step id".into(),
            }));
        }
        let shown = format!("oci://{}/{}", remote.registry(), r.repository);
        Ok(RegistryCache {
            remote,
            shown,
            disabled: AtomicBool::new(false),
        })
    }

    /// `oci://HOST/REPO`.
    pub fn describe(&self) -> &str {
        &self.shown
    }

    /// Stops asking the registry for the rest of this build.
    pub fn disable(&self) {
        self.disabled.store(true, Ordering::SeqCst);
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled.load(Ordering::SeqCst)
    }

    /// The layer `id` if the cache has it; its meta.json is pulled (into `scratch`) and
    /// checked to name `id`.
    pub fn lookup(&self, id: &LayerId, scratch: &Path) -> Result<Option<CachedLayer>, CacheError> {
        let Some(manifest) = self.remote.manifest(id.as_str())? else {
            return Ok(None);
        };
        let m = &manifest.manifest;
        if m.artifact_type.as_deref() != Some(LAYER_ARTIFACT) || m.config.media_type != META_MEDIA {
            return Err(self.invalid(
                id,
                format!(
                    "the manifest tagged with it is not a kiln layer (artifact type {:?}, config {})",
                    m.artifact_type, m.config.media_type
                ),
            ));
        }
        let path = scratch.join("meta.json");
        self.remote.pull_blob(&m.config, &path, None)?;
        let bytes = fs::read(&path).map_err(|e| self.local(id, "reading", &path, e))?;
        let meta: LayerMeta = serde_json::from_slice(&bytes)
            .map_err(|e| self.invalid(id, format!("its meta.json is invalid: {e}")))?;
        if meta.id != *id {
            return Err(self.invalid(id, format!("its meta.json names layer {}", meta.id)));
        }
        if meta.parent.is_none() && !meta.flat {
            return Err(self.invalid(
                id,
                "its meta.json has neither a parent nor a full tree".into(),
            ));
        }
        Ok(Some(CachedLayer { meta, manifest }))
    }

    /// Pulls `layer`'s rootfs and log into `tmp` (a temporary layer begun for its id),
    /// each blob downloaded to `scratch` and verified before it is unpacked.
    pub fn fetch(
        &self,
        layer: &CachedLayer,
        tmp: &TmpLayer,
        scratch: &Path,
    ) -> Result<(), CacheError> {
        let id = &layer.meta.id;
        let m = &layer.manifest.manifest;
        // A tree layer's blob is its rootfs/; a disk layer's holds the files of its directory.
        let (media, into) = if layer.meta.disk {
            (DISK_MEDIA, &tmp.dir)
        } else {
            (ROOTFS_MEDIA, &tmp.rootfs)
        };
        let rootfs = match m.layers.as_slice() {
            [rootfs, ..] if rootfs.media_type == media => rootfs,
            _ => return Err(self.invalid(id, format!("its manifest has no {media} blob"))),
        };
        let blob = scratch.join("rootfs.tar.zst");
        self.remote.pull_blob(rootfs, &blob, None)?;
        let file = fs::File::open(&blob).map_err(|e| self.local(id, "opening", &blob, e))?;
        let decoder = zstd::stream::read::Decoder::new(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| self.local(id, "reading", &blob, e))?;
        kiln_fetch::unpack_tree(decoder, into).map_err(|message| CacheError::Local {
            cache: self.shown.clone(),
            id: id.to_string(),
            action: "unpacking",
            path: blob.clone(),
            message,
        })?;
        let _ = fs::remove_file(&blob);
        if let Some(log) = m.layers.iter().find(|d| d.media_type == LOG_MEDIA) {
            self.remote.pull_blob(log, &tmp.log, None)?;
        }
        Ok(())
    }

    /// Pushes the committed layer `id` of `store` unless the cache has it; its rootfs blob
    /// is written to `scratch` first (hashed as it is written).
    pub fn push(
        &self,
        store: &dyn Store,
        id: &LayerId,
        scratch: &Path,
    ) -> Result<Pushed, CacheError> {
        let dir = store.layer_dir(id);
        let meta_path = dir.join("meta.json");
        let meta_bytes =
            fs::read(&meta_path).map_err(|e| self.local(id, "reading", &meta_path, e))?;
        let meta: LayerMeta = serde_json::from_slice(&meta_bytes)
            .map_err(|e| self.invalid(id, format!("the stored meta.json is invalid: {e}")))?;
        if self.remote.manifest(id.as_str())?.is_some() {
            return Ok(Pushed::Present);
        }
        let meta_blob = scratch.join("meta.json");
        fs::write(&meta_blob, &meta_bytes).map_err(|e| self.local(id, "writing", &meta_blob, e))?;
        let config = self.descriptor(id, &meta_blob, META_MEDIA)?;
        let rootfs_blob = scratch.join("rootfs.tar.zst");
        let rootfs = if meta.disk {
            let payload = scratch.join("payload");
            link_disk_payload(&dir, &payload).map_err(|e| self.local(id, "linking", &dir, e))?;
            self.write_rootfs(id, &payload, &rootfs_blob, DISK_MEDIA)?
        } else {
            self.write_rootfs(id, &dir.join("rootfs"), &rootfs_blob, ROOTFS_MEDIA)?
        };
        let mut blobs = vec![(rootfs_blob.clone(), rootfs.clone())];
        let log = store.log_path(id);
        if fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            blobs.push((log.clone(), self.descriptor(id, &log, LOG_MEDIA)?));
        }
        self.remote.push_blob(&meta_blob, &config, &[], None)?;
        for (path, desc) in &blobs {
            self.remote.push_blob(path, desc, &[], None)?;
        }
        let _ = fs::remove_file(&rootfs_blob);
        let mut annotations = BTreeMap::new();
        annotations.insert(ID_ANNOTATION.to_string(), id.to_string());
        if let Some(parent) = &meta.parent {
            annotations.insert(PARENT_ANNOTATION.to_string(), parent.to_string());
        }
        annotations.insert(
            "org.opencontainers.image.description".to_string(),
            meta.description.clone(),
        );
        let manifest = OciImageManifest {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_string()),
            config,
            layers: blobs.into_iter().map(|(_, d)| d).collect(),
            subject: None,
            artifact_type: Some(LAYER_ARTIFACT.to_string()),
            annotations: Some(annotations),
        };
        self.remote.put_manifest(id.as_str(), &manifest)?;
        Ok(Pushed::Uploaded {
            bytes: rootfs.size as u64,
        })
    }

    /// Archives `rootfs` into `blob` (tar, zstd), returning its descriptor.
    fn write_rootfs(
        &self,
        id: &LayerId,
        rootfs: &Path,
        blob: &Path,
        media_type: &str,
    ) -> Result<OciDescriptor, CacheError> {
        let io = |e: std::io::Error| self.local(id, "writing", blob, e);
        let file = fs::File::create(blob).map_err(io)?;
        let hashing = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let mut encoder = zstd::stream::write::Encoder::new(hashing, ZSTD_LEVEL).map_err(io)?;
        let options = TarOptions {
            root_entry: media_type == ROOTFS_MEDIA,
            exact_times: true,
        };
        write_tar_with(rootfs, &mut encoder, options, &mut |_, _| {}).map_err(|e| {
            CacheError::Local {
                cache: self.shown.clone(),
                id: id.to_string(),
                action: "archiving",
                path: rootfs.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let hashing = encoder.finish().map_err(io)?;
        let (mut writer, digest, size) = hashing.finish();
        writer.flush().map_err(io)?;
        Ok(descriptor(media_type, digest, size))
    }

    fn descriptor(
        &self,
        id: &LayerId,
        path: &Path,
        media_type: &str,
    ) -> Result<OciDescriptor, CacheError> {
        let (digest, size) = kiln_fetch::oci::remote::file_digest(path)
            .map_err(|e| self.local(id, "reading", path, e))?;
        Ok(descriptor(media_type, digest, size))
    }

    fn invalid(&self, id: &LayerId, problem: String) -> CacheError {
        CacheError::Invalid {
            cache: self.shown.clone(),
            id: id.to_string(),
            problem,
        }
    }

    fn local(
        &self,
        id: &LayerId,
        action: &'static str,
        path: &Path,
        e: std::io::Error,
    ) -> CacheError {
        CacheError::Local {
            cache: self.shown.clone(),
            id: id.to_string(),
            action,
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

/// Makes `payload` a directory of hard links to a disk layer's `disk.qcow2` and `boot/`
/// (what its blob holds; meta.json, the log and the empty rootfs/ travel otherwise).
fn link_disk_payload(layer: &Path, payload: &Path) -> std::io::Result<()> {
    fs::create_dir(payload)?;
    fs::hard_link(layer.join(DISK_FILE), payload.join(DISK_FILE))?;
    let boot = layer.join("boot");
    if boot.is_dir() {
        link_tree(&boot, &payload.join("boot"))?;
    }
    Ok(())
}

/// Recreates the directories of `from` under `to`, hard-linking its files and copying its
/// symlinks.
fn link_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir(to)?;
    let meta = fs::metadata(from)?;
    fs::set_permissions(to, meta.permissions())?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            link_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else {
            fs::hard_link(&src, &dst)?;
        }
    }
    Ok(())
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
