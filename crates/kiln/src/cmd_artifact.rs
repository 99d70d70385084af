//! `kiln artifact push|pull`: disk images as OCI artifacts in any registry (the layer the
//! catalogue's `kiln image push|pull` wraps with its metadata and trust checks).

use crate::cli::{ArtifactCommand, ArtifactInspectArgs, ArtifactPullArgs, ArtifactPushArgs};
use anyhow::{bail, Context};
use kiln_fetch::oci::artifact::{
    self, DiskFormat, ImageArtifact, PushOptions, ARCH_ANNOTATION, OS_ANNOTATION, TITLE_ANNOTATION,
    VERSION_ANNOTATION,
};
use kiln_fetch::oci::remote::{Progress, Remote, UploadMode};
use kiln_fetch::oci::OCI_SCHEME;
use kiln_fetch::RegistrySettings;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

pub fn artifact(cmd: ArtifactCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ArtifactCommand::Push(args) => push(args),
        ArtifactCommand::Pull(args) => pull(args),
        ArtifactCommand::Inspect(args) => inspect(args),
    }
}

/// The registry reference of `text` (`oci://…`), its tag or digest, and a client for it.
pub fn open_remote(text: &str) -> anyhow::Result<(Remote, String)> {
    let bare = text.strip_prefix(OCI_SCHEME).with_context(|| {
        format!("{text}: a registry reference is written oci://HOST[:PORT]/REPO:TAG")
    })?;
    let mut remote = Remote::open(bare, &RegistrySettings::from_env())?;
    remote.notices = Some(Arc::new(|notice: &str| eprintln!("kiln: {notice}")));
    let r = remote.reference();
    let at = r
        .digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    Ok((remote, at))
}

fn push(args: ArtifactPushArgs) -> anyhow::Result<ExitCode> {
    let (mut remote, tag) = open_remote(&args.reference)?;
    if tag.starts_with("sha256:") {
        bail!("{}: push to a tag (…:TAG), not a digest", args.reference);
    }
    if args.chunked {
        remote.upload = UploadMode::Chunked;
    }
    let metadata = fs::read(&args.metadata)
        .with_context(|| format!("--metadata: reading {}", args.metadata.display()))?;
    serde_json::from_slice::<serde_json::Value>(&metadata)
        .with_context(|| format!("--metadata: {} is not JSON", args.metadata.display()))?;
    let signature = args
        .signature
        .as_ref()
        .map(|p| fs::read(p).with_context(|| format!("--signature: reading {}", p.display())))
        .transpose()?;
    let format = DiskFormat::detect(&args.disk)
        .with_context(|| format!("reading {}", args.disk.display()))?;
    let mut annotations = BTreeMap::new();
    for (key, value) in [
        (TITLE_ANNOTATION, &args.title),
        (VERSION_ANNOTATION, &args.version),
        (OS_ANNOTATION, &args.os),
        (ARCH_ANNOTATION, &args.arch),
    ] {
        if let Some(v) = value {
            annotations.insert(key.to_string(), v.clone());
        }
    }
    for pair in &args.annotations {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--annotation {pair}: expected KEY=VALUE"))?;
        annotations.insert(k.to_string(), v.to_string());
    }
    let scratch = tempfile::Builder::new()
        .prefix(".kiln-push-")
        .tempdir_in(
            args.disk
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )
        .context("creating a scratch directory beside the disk")?;
    let image = ImageArtifact {
        disk: &args.disk,
        format,
        metadata: &metadata,
        signature: signature.as_deref(),
        annotations,
    };
    let options = PushOptions {
        mount_from: args.mount_from.clone(),
        scratch: scratch.path().to_path_buf(),
    };
    let bar = bar(&args.disk, "pushing");
    let pushed = artifact::push_image(&remote, &tag, &image, &options, Some(progress(&bar)))
        .with_context(|| format!("pushing {}", args.disk.display()));
    bar.finish_and_clear();
    let pushed = pushed?;
    if args.json {
        println!("{}", serde_json::to_string(&pushed)?);
    } else {
        println!(
            "pushed {}@{} (disk {} bytes, {})",
            pushed.reference, pushed.digest, pushed.disk_size, pushed.disk_transfer
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn pull(args: ArtifactPullArgs) -> anyhow::Result<ExitCode> {
    let (remote, at) = open_remote(&args.reference)?;
    fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    let bar = indicatif::ProgressBar::new(0).with_message("pulling");
    bar.set_style(style());
    let options = artifact::PullOptions {
        require_signature: args.require_signature,
    };
    let pulled = artifact::pull_image(&remote, &at, &args.output, options, Some(progress(&bar)));
    bar.finish_and_clear();
    let pulled = pulled?;
    if args.json {
        println!("{}", serde_json::to_string(&pulled)?);
    } else {
        println!(
            "pulled {}/{}@{} into {} ({})",
            remote.registry(),
            remote.reference().repository,
            pulled.digest,
            args.output.display(),
            pulled.disk.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{msg} {bytes}/{total_bytes} {bytes_per_sec}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

fn bar(file: &Path, what: &str) -> indicatif::ProgressBar {
    let len = fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(len).with_message(what.to_string());
    bar.set_style(style());
    bar
}

fn progress(bar: &indicatif::ProgressBar) -> Progress {
    let bar = bar.clone();
    Arc::new(move |done| bar.set_position(done))
}

/// Pushes a containerDisk image (`kiln export --format containerdisk --push oci://…`):
/// its layer from the file `layer`, its config and manifest from `image`.
pub fn push_containerdisk(
    text: &str,
    image: &kiln_image::containerdisk::ContainerDisk,
    layer: &Path,
    scratch: &Path,
) -> anyhow::Result<()> {
    use kiln_fetch::oci::remote::{OciDescriptor, OciImageManifest};
    use kiln_image::containerdisk::{CONFIG_MEDIA, LAYER_MEDIA};
    let (remote, tag) = open_remote(text)?;
    if tag.starts_with("sha256:") {
        bail!("--push {text}: push to a tag (…:TAG), not a digest");
    }
    let descriptor = |media: &str, blob: &kiln_image::containerdisk::Blob| OciDescriptor {
        media_type: media.to_string(),
        digest: blob.digest.clone(),
        size: blob.size as i64,
        urls: None,
        annotations: None,
        artifact_type: None,
    };
    let config_path = scratch.join("config.json");
    fs::write(&config_path, &image.config.0)
        .with_context(|| format!("writing {}", config_path.display()))?;
    let bar = bar(layer, "pushing");
    let pushed = remote.push_blob(
        layer,
        &descriptor(LAYER_MEDIA, &image.layer),
        &[],
        Some(progress(&bar)),
    );
    bar.finish_and_clear();
    pushed?;
    remote.push_blob(
        &config_path,
        &descriptor(CONFIG_MEDIA, &image.config.1),
        &[],
        None,
    )?;
    let manifest: OciImageManifest = serde_json::from_slice(&image.manifest.0)?;
    let digest = remote.put_manifest(&tag, &manifest)?;
    println!("pushed {}@{digest}", remote.tagged(&tag));
    Ok(())
}

/// `kiln artifact inspect`: what `skopeo inspect --raw` shows, with the digest, as JSON
/// (skopeo's plain `inspect` refuses artifacts whose config is not an image config).
fn inspect(args: ArtifactInspectArgs) -> anyhow::Result<ExitCode> {
    let (remote, at) = open_remote(&args.reference)?;
    let fetched = remote
        .manifest(&at)?
        .with_context(|| format!("{}: not found in the registry", args.reference))?;
    let manifest: serde_json::Value = serde_json::from_slice(&fetched.raw)?;
    let out = serde_json::json!({
        "reference": format!("{}/{}@{}", remote.registry(), remote.reference().repository, fetched.digest),
        "digest": fetched.digest,
        "artifactType": manifest.get("artifactType"),
        "annotations": manifest.get("annotations"),
        "config": manifest.get("config"),
        "layers": manifest.get("layers"),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}
