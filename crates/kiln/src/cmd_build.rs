//! `kiln build`, `kiln export`, `kiln fmt`.

use crate::cli::{BuildArgs, ExportArgs, ExportFormat, FmtArgs};
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
    let spec = read_spec(&args.file)?;
    let secrets = read_secrets(&args.secrets)?;
    if !args.context.is_dir() {
        bail!(
            "build context {} is not a directory",
            args.context.display()
        );
    }
    let context = fs::canonicalize(&args.context)
        .with_context(|| format!("build context {}", args.context.display()))?;
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let fetcher = RealFetcher {
        deb_cache: store.deb_cache(),
        default_registry: std::env::var("KILN_REGISTRY")
            .ok()
            .filter(|r| !r.is_empty()),
    };
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .context("installing the Ctrl-C handler")?;
    }
    // The flag also stops a running step when only kiln got the signal (kill -INT PID, systemd's SIGTERM).
    let sandbox = NamespaceSandbox::new().with_cancel_flag(cancelled.clone());
    let options = BuildOptions {
        fast_sync: !args.no_fast_sync,
        secrets,
        cancelled: cancelled.clone(),
        ..Default::default()
    };
    let builder = Builder {
        store: &store,
        sandbox: &sandbox,
        fetcher: &fetcher,
        options,
    };
    let mut out: Box<dyn Write> = if args.json {
        Box::new(std::io::stderr())
    } else {
        Box::new(std::io::stdout())
    };
    let result = builder.build(&spec, &context, &mut out);
    drop(out);
    match result {
        Ok(id) => {
            if args.json {
                println!("{}", serde_json::json!({ "id": id.as_str() }));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(_) if cancelled.load(Ordering::SeqCst) => {
            eprintln!("kiln: build cancelled; the step in progress was discarded");
            Ok(ExitCode::from(130))
        }
        Err(e @ BuildError::StepFailed { .. }) => {
            eprintln!("kiln: {}: {e}", args.file.display());
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn read_spec(file: &Path) -> anyhow::Result<kiln_spec::Spec> {
    let text =
        fs::read_to_string(file).with_context(|| format!("reading spec {}", file.display()))?;
    Ok(kiln_spec::parse_file(&text, &file.display().to_string())?)
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
    let scratch = store.scratch_dir("export")?;
    let result = export_from(&store, &id, &scratch, &args);
    let _ = fs::remove_dir_all(&scratch);
    result?;
    Ok(ExitCode::SUCCESS)
}

fn export_from(
    store: &FsStore,
    id: &LayerId,
    scratch: &Path,
    args: &ExportArgs,
) -> anyhow::Result<()> {
    let root = kiln_sandbox::mount::mount_lower_readonly(&store.chain(id)?, &scratch.join("root"))?;
    match args.format {
        ExportFormat::Dir => kiln_image::dir_export(root.path(), &args.output)?,
        ExportFormat::Tar if args.output.as_os_str() == "-" => {
            kiln_image::tar_export::write_tar(
                root.path(),
                std::io::BufWriter::new(std::io::stdout().lock()),
            )?;
        }
        ExportFormat::Tar => {
            // Write next to the target and rename, so a failed export never leaves half a file.
            let tmp = args.output.with_extension("tar.kiln-tmp");
            let file =
                fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            let bar = indicatif::ProgressBar::new_spinner()
                .with_message(format!("exporting {}", id.short()));
            let mut progress = |entries: u64, bytes: u64| {
                if entries % 256 == 0 {
                    bar.set_message(format!(
                        "exporting {}: {entries} entries, {}",
                        id.short(),
                        crate::size::human(bytes)
                    ));
                    bar.tick();
                }
            };
            let written = kiln_image::tar_export::write_tar_with_progress(
                root.path(),
                std::io::BufWriter::new(file),
                &mut progress,
            );
            bar.finish_and_clear();
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e.into());
            }
            fs::rename(&tmp, &args.output)
                .with_context(|| format!("writing {}", args.output.display()))?;
        }
    }
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
    let canonical = kiln_spec::print(&spec);
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
