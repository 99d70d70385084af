//! `kiln build`, `kiln export`, `kiln fmt`.

use crate::builder::{build_all, sha256_hex};
use crate::cli::{BuildArgs, ExportArgs, FmtArgs};
use crate::cmd_image;
use crate::layers::resolve_id;
use anyhow::{bail, Context};
use kiln_build::layer_cache::RegistryCache;
use kiln_build::{BuildError, BuildOptions};
use kiln_fetch::oci::OCI_SCHEME;
use kiln_store::{FsStore, Store};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub fn build(store_dir: &Path, args: BuildArgs) -> anyhow::Result<ExitCode> {
    let text = fs::read_to_string(&args.file)
        .with_context(|| format!("reading spec {}", args.file.display()))?;
    let spec = kiln_spec::parse_file(&text, &args.file.display().to_string())?;
    let secrets = read_secrets(&args.secrets)?;
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let context = fs::canonicalize(&args.context)
        .with_context(|| format!("build context {}", args.context.display()))?;
    if args.test && spec.test.is_none() {
        bail!(
            "--test: {} has no (test …) form to run",
            args.file.display()
        );
    }
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let epoch = cmd_image::source_date_epoch(&text)?;
    if args.check_reproducible {
        return crate::cmd_repro::check(store_dir, &args, &spec, &text, &context, secrets, epoch);
    }
    let store = FsStore::open(store_dir)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let (cache_from, cache_to) = registry_caches(&args)?;
    let options = BuildOptions {
        fast_sync: !args.no_fast_sync,
        secrets,
        cancelled: cancelled.clone(),
        source_date_epoch: Some(epoch),
        sandbox: args.vm.sandbox.kind(),
        cache_from,
        cache_to,
        ..Default::default()
    };
    let mut out: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let built = build_all(
        &store, options, &args.vm, &spec, &args.file, &context, &mut out,
    );
    drop(out);
    let (id, partitions) = match built {
        Ok(v) => v,
        Err(_) if cancelled.load(Ordering::SeqCst) => {
            eprintln!("kiln: build cancelled; the step in progress was discarded");
            return Ok(ExitCode::from(130));
        }
        Err(e) => match e.downcast::<BuildError>() {
            Ok(e @ BuildError::StepFailed { .. }) => {
                eprintln!("kiln: {}: {e}", args.file.display());
                return Ok(ExitCode::from(1));
            }
            // The message starts with LINE:COL; with the file it reads as spec errors do.
            Ok(e) if e.leading_pos().is_some() => {
                eprintln!("kiln: {}:{e}", args.file.display());
                return Ok(ExitCode::from(1));
            }
            Ok(e) => return Err(e.into()),
            Err(e) => return Err(e),
        },
    };
    let source = cmd_image::ImageSource {
        layer: id.clone(),
        image: spec.image.as_ref().map(|i| &i.value),
        partitions,
        spec_sha256: sha256_hex(text.as_bytes()),
        source_date_epoch: epoch,
    };
    let manifest = cmd_image::produce(&store, &source, &args.image)?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "id": id.as_str(), "manifest": manifest })
        );
    }
    if args.test {
        let output = args.image.output.as_deref().unwrap_or(Path::new(""));
        let test = spec
            .test
            .as_ref()
            .map(|t| &t.value)
            .cloned()
            .unwrap_or_default();
        return crate::cmd_vm::run_checks(
            output,
            &test,
            args.junit.as_deref(),
            None,
            false,
            crate::cli::InitrdArg::Kiln,
            args.firmware,
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--cache-from` and `--cache-to`: one client when both name the same repository.
type Caches = (Option<Arc<RegistryCache>>, Option<Arc<RegistryCache>>);

fn registry_caches(args: &BuildArgs) -> anyhow::Result<Caches> {
    let settings = kiln_fetch::RegistrySettings::from_env();
    let open = |text: &str, flag: &str| -> anyhow::Result<Arc<RegistryCache>> {
        let text = text.strip_prefix(OCI_SCHEME).with_context(|| {
            format!("{flag} {text}: a registry repository is written oci://HOST[:PORT]/REPO")
        })?;
        Ok(Arc::new(
            RegistryCache::open(text, &settings).with_context(|| flag.to_string())?,
        ))
    };
    let from = args
        .cache_from
        .as_deref()
        .map(|t| open(t, "--cache-from"))
        .transpose()?;
    let to = match (&args.cache_to, &from) {
        (Some(t), Some(f)) if args.cache_from.as_deref() == Some(t) => Some(f.clone()),
        (Some(t), _) => Some(open(t, "--cache-to")?),
        (None, _) => None,
    };
    Ok((from, to))
}

/// `ID:FILE` pairs into id → contents.
fn read_secrets(pairs: &[String]) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut secrets = BTreeMap::new();
    for pair in pairs {
        let Some((id, file)) = pair.split_once(':') else {
            bail!("--secret {pair}: expected ID:FILE");
        };
        if id.is_empty() {
            bail!("--secret {pair}: the secret id is empty");
        }
        let value = fs::read(file).with_context(|| format!("--secret {id}: reading {file}"))?;
        secrets.insert(id.to_string(), value);
    }
    Ok(secrets)
}

pub fn export(store_dir: &Path, args: ExportArgs) -> anyhow::Result<ExitCode> {
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let id = resolve_id(&store, &args.id)?;
    if args.image.output.is_none() && args.push.is_some() {
        return export_image(&store, &id, &args);
    }
    let Some(output) = &args.image.output else {
        bail!("kiln export needs -o PATH (a .tar, a directory with --format dir, or a disk image)");
    };
    if output.as_os_str() == "-" {
        let scratch = store.scratch_dir("export")?;
        let root = crate::layers::open_layer(&store, &id, &scratch.join("view"));
        let written = root.and_then(|root| {
            kiln_image::tar_export::write_tar(
                root.path(),
                std::io::BufWriter::new(std::io::stdout().lock()),
            )
            .map_err(anyhow::Error::from)
        });
        let _ = fs::remove_dir_all(&scratch);
        written?;
        return Ok(ExitCode::SUCCESS);
    }
    export_image(&store, &id, &args)
}

/// `kiln export` of a file, a directory or a disk image (and a containerDisk's push).
fn export_image(
    store: &FsStore,
    id: &kiln_store::LayerId,
    args: &ExportArgs,
) -> anyhow::Result<ExitCode> {
    let info = store
        .get(id)?
        .with_context(|| format!("layer {id} vanished"))?;
    let source = cmd_image::ImageSource {
        layer: id.clone(),
        image: None,
        partitions: BTreeMap::new(),
        spec_sha256: String::new(),
        source_date_epoch: match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v}"))?,
            Err(_) => info.meta.created,
        },
    };
    cmd_image::produce_or_push(store, &source, &args.image, args.push.as_deref())?;
    Ok(ExitCode::SUCCESS)
}

pub fn fmt(args: FmtArgs) -> anyhow::Result<ExitCode> {
    let text = fs::read_to_string(&args.file)
        .with_context(|| format!("reading spec {}", args.file.display()))?;
    let spec = kiln_spec::parse_file(&text, &args.file.display().to_string())?;
    // Every comment is kept, next to what it annotates.
    let canonical = kiln_spec::print_with_comments(&spec, &text)
        .map_err(|e| e.in_file(args.file.display().to_string()))?;
    if args.check {
        if canonical == text {
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!(
            "{} is not in canonical layout (run `kiln fmt {}`)",
            args.file.display(),
            args.file.display()
        );
        return Ok(ExitCode::from(1));
    }
    print!("{canonical}");
    Ok(ExitCode::SUCCESS)
}
