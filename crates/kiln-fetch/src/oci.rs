//! OCI image bases, pulled from a registry with `oci-client`.
//!
//! Resolving pins the reference to a manifest digest (tags cost one request, digests none);
//! the id hashes the pinned reference and the platform, so re-pushing a tag makes a new base.
//! Fetching pulls the manifest (choosing `linux/<host arch>` from an image index), the
//! config and each layer, verifying every blob's digest, and applies the layers in order
//! with OCI whiteouts. Layer blobs are staged in hidden temporary files next to the rootfs
//! (same filesystem, removed when done) so nothing unverified is ever unpacked.
//!
//! Docker Hub names (`busybox`, `ocaml/opam:tag`, `docker.io/…`) are pulled from Docker Hub
//! (`registry-1.docker.io`) with its anonymous bearer-token flow, or with credentials from
//! `$KILN_REGISTRY_AUTH` or `docker login`'s config.json (its credential helpers, run as
//! Docker runs them, else its `auths`). `$KILN_REGISTRY` names a mirror
//! asked first; whatever it cannot serve (not found, denied, unreachable) is asked of
//! Docker Hub, and the output says which one served. Loopback registries and those in
//! `$KILN_INSECURE_REGISTRIES` use plain HTTP. See [`RegistrySettings`].

pub mod artifact;
mod credentials;
mod reference;
mod registry;
pub mod remote;
mod settings;

pub use reference::{OciRef, ReferenceError, DOCKER_HUB_HOST};
pub use remote::{Remote, RemoteError, OCI_SCHEME};
pub use settings::{
    RegistrySettings, AUTH_ENV, DOCKER_CONFIG_ENV, DOCKER_HUB_HOST_ENV, INSECURE_ENV, MIRROR_ENV,
};

use crate::tarball::{Compression, DEFAULT_PATH};
use crate::unpack::{self, Whiteouts};
use crate::{BaseSource, FetchError, ResolvedBase};
use kiln_spec::hash;
use kiln_store::{BaseConfig, BasePin};
use oci_client::manifest::{
    ImageIndexEntry, OciDescriptor, OciImageIndex, OciImageManifest, OciManifest,
};
use registry::Registry;
use settings::{Endpoint, Role};
use std::io::{BufReader, Write};
use std::path::Path;

/// Resolves `text` to a pinned reference and its id. The id hashes the normalised
/// reference pinned to its digest, so it does not depend on which mirror answered.
pub(crate) fn resolve(text: &str, settings: &RegistrySettings) -> Result<ResolvedBase, FetchError> {
    let reference = parse(text)?;
    let pin = match &reference.digest {
        Some(digest) => BasePin {
            reference: reference.to_string(),
            digest: digest.clone(),
            registry: None,
            mirror: false,
        },
        None => registry::runtime(text)?.block_on(resolve_tag(text, &reference, settings))?,
    };
    let pinned = reference.pinned(&pin.digest);
    let id = hash::base_id("oci", &[("ref", &pinned), ("platform", &platform_name())]);
    Ok(ResolvedBase {
        source: BaseSource::Oci(pinned.clone()),
        id,
        description: pinned,
        pin: Some(pin),
    })
}

/// Looks the tag up in each registry that may serve it, in order, until one answers.
async fn resolve_tag(
    text: &str,
    reference: &OciRef,
    settings: &RegistrySettings,
) -> Result<BasePin, FetchError> {
    let tag = reference.tag.as_deref().unwrap_or("latest");
    let what = format!("resolving {}:{tag}", reference.repository);
    let endpoints = settings.endpoints(text, reference)?;
    let mut passed = Passed::default();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let registry = Registry::new(text, endpoint, settings)?;
        let target = registry.by_tag(&reference.repository, tag);
        match registry
            .client
            .fetch_manifest_digest(&target, &registry.auth)
            .await
        {
            Ok(digest) => {
                check_digest(text, &registry.host, &digest)?;
                tracing::info!(reference = %reference, %digest, registry = %endpoint.describe(), "resolved");
                return Ok(BasePin {
                    reference: reference.to_string(),
                    digest,
                    registry: Some(registry.host),
                    mirror: endpoint.role == Role::Mirror,
                });
            }
            Err(e) if i + 1 < endpoints.len() => {
                passed.record(endpoint, registry.explain(&what, &e), &endpoints[i + 1])
            }
            Err(e) => return Err(passed.annotate(registry.error(text, &what, e))),
        }
    }
    Err(no_registry(text))
}

/// The registries that could not serve an image before the one that did (or failed last).
#[derive(Default)]
struct Passed(Vec<String>);

impl Passed {
    /// Logs that `endpoint` failed with `why` and `next` is asked instead.
    fn record(&mut self, endpoint: &Endpoint, why: String, next: &Endpoint) {
        tracing::info!(registry = %endpoint.describe(), next = %next.describe(), "{why}; asking the next registry");
        self.0.push(format!("{}: {why}", endpoint.describe()));
    }

    /// Adds to the last registry's error what the ones before it said.
    fn annotate(&self, mut error: FetchError) -> FetchError {
        if let (FetchError::Registry { message, .. }, false) = (&mut error, self.0.is_empty()) {
            message.push_str(&format!(" (asked before it: {})", self.0.join("; ")));
        }
        error
    }
}

/// [`RegistrySettings::endpoints`] never returns an empty list; this covers it anyway.
fn no_registry(text: &str) -> FetchError {
    FetchError::base(text, "internal error: no registry to ask for this image")
}

/// Pulls the image `text` (normally pinned by [`resolve`]) into `rootfs`.
pub(crate) fn fetch(
    text: &str,
    rootfs: &Path,
    progress: &mut dyn Write,
    settings: &RegistrySettings,
) -> Result<BaseConfig, FetchError> {
    let reference = parse(text)?;
    let runtime = registry::runtime(text)?;
    runtime.block_on(pull(text, settings, &reference, rootfs, progress))
}

fn parse(text: &str) -> Result<OciRef, FetchError> {
    OciRef::parse(text)
        .map_err(|e| FetchError::base(text, format!("not a valid OCI image reference: {e}")))
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
    settings: &RegistrySettings,
    reference: &OciRef,
    rootfs: &Path,
    progress: &mut dyn Write,
) -> Result<BaseConfig, FetchError> {
    let (registry, target, manifest, digest) =
        first_manifest(text, settings, reference, progress).await?;
    let registry = &registry;
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

/// The image's manifest from the first registry that serves it, that registry, and the
/// manifest's reference and digest there. Everything else is pulled from the same registry.
async fn first_manifest(
    text: &str,
    settings: &RegistrySettings,
    reference: &OciRef,
    progress: &mut dyn Write,
) -> Result<(Registry, oci_client::Reference, OciManifest, String), FetchError> {
    let endpoints = settings.endpoints(text, reference)?;
    let mut passed = Passed::default();
    for (i, endpoint) in endpoints.iter().enumerate() {
        let registry = Registry::new(text, endpoint, settings)?;
        let target = match (&reference.digest, &reference.tag) {
            (Some(digest), _) => registry.by_digest(&reference.repository, digest),
            (None, tag) => {
                registry.by_tag(&reference.repository, tag.as_deref().unwrap_or("latest"))
            }
        };
        match registry.client.pull_manifest(&target, &registry.auth).await {
            Ok((manifest, digest)) => {
                let _ = writeln!(progress, "pulling {reference} from {}", endpoint.describe());
                return Ok((registry, target, manifest, digest));
            }
            Err(e) if i + 1 < endpoints.len() => {
                let why = registry.explain("pulling the manifest", &e);
                let next = &endpoints[i + 1];
                let _ = writeln!(
                    progress,
                    "{}: {why}; trying {}",
                    endpoint.describe(),
                    next.describe()
                );
                passed.record(endpoint, why, next);
            }
            Err(e) => return Err(passed.annotate(registry.error(text, "pulling the manifest", e))),
        }
    }
    Err(no_registry(text))
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

    fn no_network() -> RegistrySettings {
        // Port 9 (discard) has nothing listening: a network call would fail.
        RegistrySettings {
            mirror: Some("127.0.0.1:9".into()),
            docker_hub: Some("127.0.0.1:9".into()),
            ..RegistrySettings::default()
        }
    }

    #[test]
    fn digest_pinned_references_resolve_offline() {
        let digest = format!("sha256:{}", "b".repeat(64));
        let a = resolve(&format!("127.0.0.1:9/app@{digest}"), &no_network()).unwrap();
        let b = resolve(&format!("busybox@{digest}"), &no_network()).unwrap();
        assert_eq!(
            a.source,
            BaseSource::Oci(format!("127.0.0.1:9/app@{digest}"))
        );
        assert_eq!(
            b.description,
            format!("registry-1.docker.io/library/busybox@{digest}")
        );
        assert_ne!(a.id, b.id);
        let pin = b.pin.unwrap();
        assert_eq!((pin.digest, pin.registry), (digest.clone(), None));
        // The same image by any Docker Hub spelling, with or without a mirror: one id.
        let c = resolve(
            &format!("docker.io/library/busybox@{digest}"),
            &RegistrySettings::default(),
        )
        .unwrap();
        assert_eq!(c.id, b.id);
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
