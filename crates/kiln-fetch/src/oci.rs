//! OCI image bases, pulled from a registry with `oci-client`.
//!
//! Resolving pins the reference to a manifest digest (tags cost one request, digests none);
//! the id hashes the pinned reference and the platform, so re-pushing a tag makes a new base.
//! Fetching pulls the manifest (choosing `linux/<host arch>` from an image index), the
//! config and each layer, verifying every blob's digest, and applies the layers in order
//! with OCI whiteouts. Layer blobs are staged in hidden temporary files next to the rootfs
//! (same filesystem, removed when done) so nothing unverified is ever unpacked.
//!
//! Docker Hub is not reachable from kiln's machines: Docker Hub names (`busybox`) are served
//! from `$KILN_REGISTRY`. Loopback registries and those in `$KILN_INSECURE_REGISTRIES` use
//! plain HTTP; `$KILN_REGISTRY_AUTH=user:password` enables basic authentication.

mod reference;
mod registry;

pub use reference::{OciRef, ReferenceError};
pub use registry::{AUTH_ENV, INSECURE_ENV};

use crate::tarball::{Compression, DEFAULT_PATH};
use crate::unpack::{self, Whiteouts};
use crate::{BaseSource, FetchError, ResolvedBase};
use kiln_spec::hash;
use kiln_store::BaseConfig;
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest,
};
use registry::Registry;
use std::io::{BufReader, Write};
use std::path::Path;

/// The environment variable naming the registry that serves Docker Hub names.
pub const DEFAULT_REGISTRY_ENV: &str = "KILN_REGISTRY";

/// Resolves `text` to a pinned reference and its id.
pub(crate) fn resolve(
    text: &str,
    default_registry: Option<&str>,
) -> Result<ResolvedBase, FetchError> {
    let reference = parse(text)?;
    let host = registry_for(text, &reference, default_registry)?;
    let digest = match (&reference.digest, &reference.tag) {
        (Some(digest), _) => digest.clone(),
        (None, tag) => {
            let tag = tag.as_deref().unwrap_or("latest");
            let registry = Registry::new(text, &host)?;
            let target = registry.by_tag(&reference.repository, tag);
            let digest = registry::runtime(text)?
                .block_on(
                    registry
                        .client
                        .fetch_manifest_digest(&target, &registry.auth),
                )
                .map_err(|e| {
                    registry.error(
                        text,
                        &format!("resolving {}:{tag}", reference.repository),
                        e,
                    )
                })?;
            check_digest(text, &host, &digest)?;
            digest
        }
    };
    let pinned = reference.pinned(&host, &digest);
    let id = hash::base_id("oci", &[("ref", &pinned), ("platform", &platform_name())]);
    Ok(ResolvedBase {
        source: BaseSource::Oci(pinned.clone()),
        id,
        description: pinned,
    })
}

/// Pulls the image `text` (normally pinned by [`resolve`]) into `rootfs`.
pub(crate) fn fetch(
    text: &str,
    rootfs: &Path,
    progress: &mut dyn Write,
) -> Result<BaseConfig, FetchError> {
    let reference = parse(text)?;
    let Some(host) = reference.registry.clone() else {
        return Err(FetchError::base(
            text,
            "the reference has no registry; resolve it before fetching",
        ));
    };
    let registry = Registry::new(text, &host)?;
    let runtime = registry::runtime(text)?;
    runtime.block_on(pull(text, &registry, &reference, rootfs, progress))
}

fn parse(text: &str) -> Result<OciRef, FetchError> {
    OciRef::parse(text)
        .map_err(|e| FetchError::base(text, format!("not a valid OCI image reference: {e}")))
}

/// The registry serving `reference`: its own, or `$KILN_REGISTRY` for Docker Hub names.
fn registry_for(
    text: &str,
    reference: &OciRef,
    default_registry: Option<&str>,
) -> Result<String, FetchError> {
    match (&reference.registry, default_registry) {
        (Some(host), _) => Ok(host.clone()),
        (None, Some(host)) if !host.is_empty() => Ok(host.to_string()),
        (None, _) => Err(FetchError::base(
            text,
            format!(
                "this is a Docker Hub image ({}), but Docker Hub is not reachable from kiln; set \
                 {DEFAULT_REGISTRY_ENV} to a registry that holds it (e.g. {DEFAULT_REGISTRY_ENV}=127.0.0.1:5000) \
                 or write the registry in the reference (REGISTRY/NAME:TAG)",
                reference.repository
            ),
        )),
    }
}

fn check_digest(text: &str, host: &str, digest: &str) -> Result<(), FetchError> {
    let valid = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')));
    if valid {
        Ok(())
    } else {
        Err(FetchError::Registry {
            base: text.to_string(),
            registry: host.to_string(),
            message: format!(
                "the registry returned the digest `{digest}`, which is not a sha256 digest"
            ),
        })
    }
}

async fn pull(
    text: &str,
    registry: &Registry,
    reference: &OciRef,
    rootfs: &Path,
    progress: &mut dyn Write,
) -> Result<BaseConfig, FetchError> {
    let target = match (&reference.digest, &reference.tag) {
        (Some(digest), _) => registry.by_digest(&reference.repository, digest),
        (None, tag) => registry.by_tag(&reference.repository, tag.as_deref().unwrap_or("latest")),
    };
    let (manifest, digest) = registry
        .client
        .pull_manifest(&target, &registry.auth)
        .await
        .map_err(|e| registry.error(text, "pulling the manifest", e))?;
    let image = match manifest {
        OciManifest::Image(image) => image,
        OciManifest::ImageIndex(index) => {
            let entry = select_platform(text, &index)?;
            let _ = writeln!(
                progress,
                "image index {digest}: using {} manifest {}",
                platform_name(),
                entry.digest
            );
            let by_digest = registry.by_digest(&reference.repository, &entry.digest);
            match registry
                .client
                .pull_manifest(&by_digest, &registry.auth)
                .await
            {
                Ok((OciManifest::Image(image), _)) => image,
                Ok((OciManifest::ImageIndex(_), _)) => {
                    return Err(FetchError::base(
                        text,
                        format!(
                            "the index entry {} is itself an index; kiln needs an image manifest",
                            entry.digest
                        ),
                    ))
                }
                Err(e) => return Err(registry.error(text, "pulling the platform manifest", e)),
            }
        }
    };
    let compressions = layer_compressions(text, &image)?;
    let config = pull_config(text, registry, &target, &image).await?;
    let count = image.layers.len();
    for (i, (layer, compression)) in image.layers.iter().zip(compressions).enumerate() {
        let _ = writeln!(
            progress,
            "layer {}/{count}: {} ({} bytes, {compression:?})",
            i + 1,
            layer.digest,
            layer.size
        );
        apply_layer(
            text,
            registry,
            &target,
            layer,
            compression,
            rootfs,
            progress,
        )
        .await?;
    }
    Ok(config)
}

/// `linux/<arch>[/<variant>]` of this machine in OCI terms.
fn platform_name() -> String {
    let (arch, variant) = host_platform();
    match variant {
        Some(v) => format!("linux/{arch}/{v}"),
        None => format!("linux/{arch}"),
    }
}

/// The host's OCI architecture and preferred variant.
fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "x86" => ("386", None),
        "aarch64" => ("arm64", Some("v8")),
        "arm" => ("arm", Some("v7")),
        "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
        "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
        "loongarch64" => ("loong64", None),
        other => (other, None),
    }
}

/// The index entry for linux on this architecture, preferring the matching variant.
fn select_platform<'a>(
    text: &str,
    index: &'a OciImageIndex,
) -> Result<&'a ImageIndexEntry, FetchError> {
    let (arch, variant) = host_platform();
    let candidates: Vec<&ImageIndexEntry> = index
        .manifests
        .iter()
        .filter(|e| {
            e.platform
                .as_ref()
                .is_some_and(|p| p.os.to_string() == "linux" && p.architecture.to_string() == arch)
        })
        .collect();
    let preferred = candidates.iter().find(|e| {
        let v = e.platform.as_ref().and_then(|p| p.variant.as_deref());
        v.is_none() || v == variant
    });
    if let Some(entry) = preferred.or(candidates.first()) {
        return Ok(entry);
    }
    let available: Vec<String> = index
        .manifests
        .iter()
        .filter_map(|e| e.platform.as_ref())
        .map(|p| match &p.variant {
            Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
            None => format!("{}/{}", p.os, p.architecture),
        })
        .collect();
    Err(FetchError::base(
        text,
        format!(
            "the image has no {} variant (it has: {}); pick an image built for this machine",
            platform_name(),
            available.join(", ")
        ),
    ))
}

/// How each layer is compressed, refusing unknown media types before downloading anything.
fn layer_compressions(
    text: &str,
    image: &OciImageManifest,
) -> Result<Vec<Compression>, FetchError> {
    image
        .layers
        .iter()
        .map(|layer| {
            let media = layer.media_type.as_str();
            if media.ends_with(".tar") {
                Ok(Compression::None)
            } else if media.ends_with("tar+gzip") || media.ends_with("tar.gzip") {
                Ok(Compression::Gzip)
            } else if media.ends_with("tar+zstd") {
                Ok(Compression::Zstd)
            } else {
                Err(FetchError::base(
                    text,
                    format!("layer {} has media type `{media}`; kiln reads tar, tar+gzip and tar+zstd layers", layer.digest),
                ))
            }
        })
        .collect()
}

/// The image config's runtime defaults (`Env`, `WorkingDir`, `User`).
#[derive(Debug, Default, serde::Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<RuntimeConfig>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RuntimeConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

async fn pull_config(
    text: &str,
    registry: &Registry,
    target: &oci_client::Reference,
    image: &OciImageManifest,
) -> Result<BaseConfig, FetchError> {
    let mut data = Vec::new();
    registry
        .client
        .pull_blob(target, &image.config, &mut data)
        .await
        .map_err(|e| registry.error(text, "pulling the image config", e))?;
    let file: ImageConfigFile = serde_json::from_slice(&data).map_err(|e| {
        FetchError::base(
            text,
            format!(
                "the image config {} is not valid JSON: {e}",
                image.config.digest
            ),
        )
    })?;
    Ok(base_config(file.config.unwrap_or_default()))
}

/// Converts the image's runtime config; images without `PATH` get the usual default, as
/// container engines do.
fn base_config(runtime: RuntimeConfig) -> BaseConfig {
    let mut env: Vec<(String, String)> = runtime
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|entry| {
            entry
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".to_string(), DEFAULT_PATH.to_string()));
    }
    BaseConfig {
        env,
        workdir: runtime.working_dir.filter(|w| !w.is_empty()),
        user: runtime.user.filter(|u| !u.is_empty()),
    }
}

/// Downloads one layer to a temporary file (digest verified by `oci-client`), then unpacks it.
async fn apply_layer(
    text: &str,
    registry: &Registry,
    target: &oci_client::Reference,
    layer: &OciDescriptor,
    compression: Compression,
    rootfs: &Path,
    progress: &mut dyn Write,
) -> Result<(), FetchError> {
    let staging = rootfs.parent().unwrap_or_else(|| Path::new("/tmp"));
    let blob = tempfile::Builder::new()
        .prefix(".kiln-layer-")
        .tempfile_in(staging)
        .map_err(|e| {
            FetchError::io(text, "creating a temporary file for a layer in", staging, e)
        })?;
    let io_err = |action, e| FetchError::io(text, action, blob.path(), e);
    let mut out = tokio::fs::File::from_std(blob.reopen().map_err(|e| io_err("opening", e))?);
    registry
        .client
        .pull_blob(target, layer, &mut out)
        .await
        .map_err(|e| registry.error(text, &format!("pulling layer {}", layer.digest), e))?;
    drop(out);
    let size = blob
        .as_file()
        .metadata()
        .map_err(|e| io_err("inspecting", e))?
        .len();
    if i64::try_from(size).ok() != Some(layer.size) {
        return Err(FetchError::base(
            text,
            format!(
                "layer {} is {size} bytes but its manifest says {}",
                layer.digest, layer.size
            ),
        ));
    }
    let reader =
        BufReader::with_capacity(1 << 20, blob.reopen().map_err(|e| io_err("opening", e))?);
    let stats =
        unpack::unpack_compressed(reader, compression, rootfs, Whiteouts::Apply).map_err(|e| {
            FetchError::Archive {
                base: text.to_string(),
                archive: format!("layer {}", layer.digest),
                message: e.to_string(),
            }
        })?;
    if stats.skipped_xattrs > 0 {
        let _ = writeln!(
            progress,
            "warning: {} extended attributes not supported by the target filesystem were skipped",
            stats.skipped_xattrs
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_names_need_a_default_registry() {
        let err = resolve("busybox", None).unwrap_err().to_string();
        assert!(
            err.contains("Docker Hub") && err.contains(DEFAULT_REGISTRY_ENV),
            "{err}"
        );
    }

    #[test]
    fn digest_pinned_references_resolve_offline() {
        let digest = format!("sha256:{}", "b".repeat(64));
        // Port 9 (discard) has nothing listening: a network call would fail.
        let a = resolve(&format!("127.0.0.1:9/app@{digest}"), None).unwrap();
        let b = resolve(&format!("busybox@{digest}"), Some("127.0.0.1:9")).unwrap();
        assert_eq!(
            a.source,
            BaseSource::Oci(format!("127.0.0.1:9/app@{digest}"))
        );
        assert_eq!(
            b.description,
            format!("127.0.0.1:9/library/busybox@{digest}")
        );
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn config_env_workdir_user() {
        let runtime = RuntimeConfig {
            env: Some(vec!["A=1".into(), "B=x=y".into(), "broken".into()]),
            working_dir: Some("/srv".into()),
            user: Some(String::new()),
        };
        let config = base_config(runtime);
        assert_eq!(config.env[0].0, "PATH");
        assert!(config.env.contains(&("B".into(), "x=y".into())));
        assert_eq!(config.workdir.as_deref(), Some("/srv"));
        assert_eq!(config.user, None);
    }
}
