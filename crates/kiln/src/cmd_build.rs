//! `kiln build`, `kiln export`, `kiln fmt`.

use crate::cli::{BuildArgs, ExportArgs, FmtArgs};
use crate::cmd_image;
use anyhow::{bail, Context};
use kiln_build::{BuildError, BuildOptions, Builder};
use kiln_fetch::RealFetcher;
use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_store::{FsStore, LayerId, Store};
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
    let options = BuildOptions {
        fast_sync: !args.no_fast_sync,
        secrets,
        cancelled: cancelled.clone(),
        source_date_epoch: Some(epoch),
        ..Default::default()
    };
    let mut out: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let built = build_all(&store, options, &spec, &args.file, &context, &mut out);
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
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Builds the spec and whatever its `(image …)` partitions need: its stages (already
/// built with it) and other spec files (built here, each with its own directory as context).
pub fn build_all(
    store: &FsStore,
    options: BuildOptions,
    spec: &kiln_spec::Spec,
    spec_file: &Path,
    context: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<(LayerId, BTreeMap<String, LayerId>)> {
    let fetcher = RealFetcher {
        deb_cache: store.deb_cache(),
        registries: kiln_fetch::RegistrySettings::from_env(),
    };
    // The flag also stops a running step when only kiln got the signal (kill -INT PID, systemd's SIGTERM).
    let sandbox = NamespaceSandbox::new().with_cancel_flag(options.cancelled.clone());
    let builder = Builder {
        store,
        sandbox: &sandbox,
        fetcher: &fetcher,
        options,
    };
    let (id, stages) = builder.build_with_stages(spec, context, out)?;
    let mut partitions = BTreeMap::new();
    if let Some(image) = &spec.image {
        let spec_dir = spec_file.parent().unwrap_or(Path::new("."));
        for part in &image.value.partitions {
            let layer = match &part.value.source {
                kiln_spec::PartitionSource::Build(stage) => {
                    stages.get(stage).cloned().with_context(|| {
                        format!("partition `{}`: no stage `{stage}`", part.value.name)
                    })?
                }
                kiln_spec::PartitionSource::Spec(file) => {
                    let path = spec_dir.join(file);
                    let text = fs::read_to_string(&path).with_context(|| {
                        format!(
                            "partition `{}`: reading spec {}",
                            part.value.name,
                            path.display()
                        )
                    })?;
                    let other = kiln_spec::parse_file(&text, &path.display().to_string())?;
                    let dir = path.parent().unwrap_or(Path::new("."));
                    builder
                        .build(&other, dir, out)
                        .map_err(|e| in_spec_file(e, &path))?
                }
            };
            partitions.insert(part.value.name.clone(), layer);
        }
    }
    Ok((id, partitions))
}

/// A build error of the spec in `file`: one whose message starts with LINE:COL gets the
/// file in front (the caller would otherwise name the top-level spec).
fn in_spec_file(e: BuildError, file: &Path) -> anyhow::Error {
    if e.leading_pos().is_some() {
        anyhow::anyhow!("{}:{e}", file.display())
    } else {
        e.into()
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let Some(output) = &args.image.output else {
        bail!("kiln export needs -o PATH (a .tar, a directory with --format dir, or a disk image)");
    };
    if output.as_os_str() == "-" {
        let scratch = store.scratch_dir("export")?;
        let root =
            kiln_sandbox::mount::mount_lower_readonly(&store.chain(&id)?, &scratch.join("root"));
        let written = root.map_err(anyhow::Error::from).and_then(|root| {
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
    let info = store
        .get(&id)?
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
    cmd_image::produce(&store, &source, &args.image)?;
    Ok(ExitCode::SUCCESS)
}

/// Writes the tree at `root` as a tar next to `output` and renames it into place, so a
/// failed export never leaves half a file. Shows progress on a terminal.
pub fn write_tar_atomically(root: &Path, output: &Path, id: &LayerId) -> anyhow::Result<()> {
    let tmp = output.with_extension("tar.kiln-tmp");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let bar =
        indicatif::ProgressBar::new_spinner().with_message(format!("exporting {}", id.short()));
    let mut progress = |entries: u64, bytes: u64| {
        if entries.is_multiple_of(256) {
            bar.set_message(format!(
                "exporting {}: {entries} entries, {}",
                id.short(),
                crate::size::human(bytes)
            ));
            bar.tick();
        }
    };
    let written = kiln_image::tar_export::write_tar_with_progress(
        root,
        std::io::BufWriter::new(file),
        &mut progress,
    );
    bar.finish_and_clear();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

/// Accepts a full id or a unique prefix of a stored one.
pub fn resolve_id(store: &dyn Store, text: &str) -> anyhow::Result<LayerId> {
    if let Ok(id) = LayerId::parse(text) {
        if store.get(&id)?.is_some() {
            return Ok(id);
        }
        bail!("layer {text} is not in the store (see `kiln ls`)");
    }
    if text.len() < 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{text}` is not a layer id or an id prefix of at least 4 hex digits");
    }
    let matches: Vec<LayerId> = store
        .list()?
        .into_iter()
        .map(|l| l.meta.id)
        .filter(|id| id.as_str().starts_with(text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no stored layer id starts with {text} (see `kiln ls`)"),
        many => bail!(
            "{} stored layers start with {text}; give more digits",
            many.len()
        ),
    }
}

pub fn fmt(args: FmtArgs) -> anyhow::Result<ExitCode> {
    let text = fs::read_to_string(&args.file)
        .with_context(|| format!("reading spec {}", args.file.display()))?;
    let spec = kiln_spec::parse_file(&text, &args.file.display().to_string())?;
    // Every comment is kept, next to what it annotates.
    let canonical = kiln_spec::print_with_comments(&spec, &text)
        .map_err(|e| e.in_file(&args.file.display().to_string()))?;
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
