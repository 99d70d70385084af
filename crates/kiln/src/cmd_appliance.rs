//! `kiln appliance`: builds (or takes) a layer, checks what the appliance needs before
//! anything is written (a kernel, the `--run` program), runs each training command under
//! the sandbox's tracer in a throw-away layer, computes the closure of what was touched,
//! and writes the app directory (`vmlinuz`, `vmlinux` when the kernel has a PVH entry,
//! `initrd.cpio.*`, `cmdline`, `report.json`) through a staging directory swapped in whole.

use crate::cli::{ApplianceArgs, CompressionArg};
use crate::layers::resolve_id;
use anyhow::{bail, Context};
use kiln_appliance::assemble::{self, Request};
use kiln_appliance::closure::{self, Closure};
use kiln_appliance::root;
use kiln_build::{context, BuildOptions};
use kiln_image::cpio::{self, Compression};
use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_sandbox::{Outcome, RootFs, RunSpec, Sandbox};
use kiln_store::{FsStore, LayerId, Store};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The command line every appliance boots with (`kiln run DIR --append` adds to it):
/// the serial console, appliance mode, and QEMU user networking's guest address.
pub const CMDLINE: &str = "console=ttyS0,115200 kiln.appliance appIp=10.0.2.15/24 appGw=10.0.2.2";

/// The app directory's file names.
pub const REPORT: &str = "report.json";

pub fn appliance(store_dir: &Path, mut args: ApplianceArgs) -> anyhow::Result<ExitCode> {
    with_spec_form(&mut args)?;
    let run = args.run.clone().unwrap_or_default();
    let run_argv: Vec<&str> = run.split_whitespace().collect();
    let Some(&program) = run_argv.first() else {
        bail!("no command to run: give --run COMMAND or (appliance (run \"COMMAND\")) in the spec");
    };
    let includes = closure::globs(&args.include, "--include").map_err(anyhow::Error::msg)?;
    let excludes = closure::globs(&args.exclude, "--exclude").map_err(anyhow::Error::msg)?;
    if let Some(k) = &args.kernel {
        if !k.is_file() {
            bail!("--kernel {}: no such file", k.display());
        }
    }
    check_output(&args.output)?;
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let (id, epoch) = layer(&store, &args)?;
    let _pin = store.pin(&id)?;
    let chain = store.chain(&id)?;
    let scratch = store.scratch_dir("appliance")?;
    let result = make(
        &store, &id, &chain, &scratch, epoch, &args, program, &includes, &excludes,
    );
    let _ = store.remove_scratch(&scratch);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

/// Adds the spec's `(appliance …)` form to the command line's choices: its training
/// commands and globs come first, its run, prerun, postrun and compression apply unless
/// the command line gives them.
fn with_spec_form(args: &mut ApplianceArgs) -> anyhow::Result<()> {
    let Some(file) = &args.file else {
        return Ok(());
    };
    let text =
        fs::read_to_string(file).with_context(|| format!("reading spec {}", file.display()))?;
    let spec = kiln_spec::parse_file(&text, &file.display().to_string())?;
    let Some(form) = spec.appliance.map(|a| a.value) else {
        return Ok(());
    };
    let first = |spec: Vec<String>, cli: &mut Vec<String>| {
        let mut all = spec;
        all.append(cli);
        *cli = all;
    };
    first(form.train, &mut args.train);
    first(form.include, &mut args.include);
    first(form.exclude, &mut args.exclude);
    args.run = args.run.take().or(Some(form.run));
    args.prerun = args.prerun.take().or(form.prerun);
    args.postrun = args.postrun.take().or(form.postrun);
    if args.compress.is_none() {
        args.compress = match form.compress.as_deref() {
            Some("gzip") => Some(CompressionArg::Gzip),
            Some("none") => Some(CompressionArg::None),
            _ => Some(CompressionArg::Zstd),
        };
    }
    Ok(())
}

/// The layer to make the appliance from, and the epoch of its files' times.
fn layer(store: &FsStore, args: &ApplianceArgs) -> anyhow::Result<(LayerId, i64)> {
    if let Some(text) = &args.layer {
        let epoch = crate::cmd_image::source_date_epoch("")?;
        return Ok((resolve_id(store, text)?, epoch));
    }
    let Some(file) = &args.file else {
        bail!("give the layer: -f SPEC [CONTEXT] or --layer ID");
    };
    let text =
        fs::read_to_string(file).with_context(|| format!("reading spec {}", file.display()))?;
    let spec = kiln_spec::parse_file(&text, &file.display().to_string())?;
    let context = fs::canonicalize(&args.context)
        .with_context(|| format!("build context {}", args.context.display()))?;
    let epoch = crate::cmd_image::source_date_epoch(&text)?;
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let options = BuildOptions {
        fast_sync: true,
        cancelled,
        source_date_epoch: Some(epoch),
        ..Default::default()
    };
    let vm = crate::cli::VmArgs {
        sandbox: crate::cli::SandboxArg::Chroot,
        qemu_cpus: 2,
        qemu_memory: 1024,
    };
    let mut out = std::io::stderr();
    let (id, _) = crate::builder::build_all(store, options, &vm, &spec, file, &context, &mut out)?;
    Ok((id, epoch))
}

#[allow(clippy::too_many_arguments)]
fn make(
    store: &FsStore,
    id: &LayerId,
    chain: &[PathBuf],
    scratch: &Path,
    epoch: i64,
    args: &ApplianceArgs,
    program: &str,
    includes: &closure::GlobSet,
    excludes: &closure::GlobSet,
) -> anyhow::Result<serde_json::Value> {
    let view_dir = scratch.join("layer");
    let view = kiln_sandbox::mount::mount_lower_readonly(chain, &view_dir)?;
    let view_root = view.path().to_path_buf();

    // Everything that can be wrong with the inputs, before the first command runs.
    let kernel = kiln_image::kernel::find_kernel(&view_root)?;
    if kernel.is_none() && args.kernel.is_none() {
        bail!(
            "layer {id} has no kernel (/boot/vmlinuz-*) and no --kernel was given: install \
             one in the layer (e.g. linux-image-amd64) or pass --kernel FILE; nothing was written"
        );
    }
    let env = layer_env(store, id, chain)?;
    let program_path = find_program(&view_root, program, &env).with_context(|| {
        format!(
            "--run {}: nothing was written",
            args.run.as_deref().unwrap_or("")
        )
    })?;

    let mut traced = BTreeSet::new();
    for (n, cmd) in args.train.iter().enumerate() {
        eprintln!("kiln: training {}/{}: {cmd}", n + 1, args.train.len());
        traced.extend(train(store, id, chain, scratch, cmd, &env)?);
    }

    let mut c = Closure::new(&view_root);
    c.add(&program_path);
    c.add("/bin/sh"); // the /app scripts' interpreter
    c.add("/etc/passwd");
    c.add("/etc/group");
    for p in &traced {
        c.add(p);
    }
    let matched = c.add_matching(includes);
    if !args.include.is_empty() && matched == 0 {
        bail!(
            "--include {}: matches nothing in the layer; nothing was written",
            args.include.join(" ")
        );
    }
    c.exclude(excludes);

    let release = kernel.as_ref().map(|k| k.release.clone());
    let req = Request {
        run: args.run.clone().unwrap_or_default(),
        prerun: args.prerun.clone(),
        postrun: args.postrun.clone(),
        release: release.clone(),
        mtime: epoch,
    };
    let built = assemble::assemble(&view_root, &c.paths, &req)?;
    let (layer_files, layer_bytes) = assemble::tree_size(&view_root);

    let compression = match args.compress {
        Some(CompressionArg::None) => Compression::None,
        Some(CompressionArg::Gzip) => Compression::Gzip,
        Some(CompressionArg::Zstd) | None => Compression::Zstd,
    };
    let stage = staging(&args.output)?;
    let written = (|| -> anyhow::Result<serde_json::Value> {
        fs::create_dir_all(&stage).with_context(|| format!("creating {}", stage.display()))?;
        let initrd_name = format!("initrd.{}", compression.extension());
        let initrd_bytes =
            cpio::write_file(&built.entries, &stage.join(&initrd_name), compression)?;
        match (&args.kernel, &kernel) {
            (Some(file), _) => {
                fs::copy(file, stage.join("vmlinuz"))
                    .with_context(|| format!("copying --kernel {}", file.display()))?;
            }
            (None, Some(files)) => {
                kiln_image::kernel::extract(files, &view_root, &stage, epoch)?;
                // The layer's own initramfs is not the appliance's.
                let _ = fs::remove_file(stage.join("initrd.img"));
            }
            (None, None) => unreachable!("checked above"),
        }
        fs::write(stage.join("cmdline"), format!("{CMDLINE}\n"))?;
        let report = serde_json::json!({
            "layer": { "id": id.as_str(), "files": layer_files, "bytes": layer_bytes },
            "appliance": {
                "files": built.files,
                "bytes": built.bytes,
                "entries": built.entries.len(),
                "modules": built.modules,
                "initrd": initrd_name,
                "initrd_bytes": initrd_bytes,
            },
            "reduction": layer_bytes as f64 / built.bytes.max(1) as f64,
            "reduction_compressed": layer_bytes as f64 / initrd_bytes.max(1) as f64,
            "kernel_release": release,
            "run": args.run,
            "train": args.train,
            "traced": traced,
            "files": c.paths,
        });
        fs::write(
            stage.join(REPORT),
            serde_json::to_string_pretty(&report)? + "\n",
        )?;
        Ok(report)
    })();
    drop(view);
    let report = match written {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_dir_all(&stage);
            return Err(e);
        }
    };
    swap_in(&stage, &args.output)?;
    eprintln!(
        "kiln: appliance {}: {} files, {} bytes ({} compressed), {:.0}x smaller than the layer's {} bytes",
        args.output.display(),
        built.files,
        built.bytes,
        report["appliance"]["initrd_bytes"],
        report["reduction"].as_f64().unwrap_or(0.0),
        layer_bytes
    );
    Ok(report)
}

/// The layer's environment (PATH for finding `--run`).
fn layer_env(
    store: &FsStore,
    id: &LayerId,
    chain: &[PathBuf],
) -> anyhow::Result<Vec<(String, String)>> {
    let bottom = chain.last().cloned().unwrap_or_default();
    let ctx = context::initial(&crate::cmd_shell::base_config(store, id)?, &bottom);
    Ok(ctx.env)
}

/// The in-root path of the `--run` program: as given when it has a `/`, else looked up
/// in the layer's PATH. It must be an executable file of the layer.
fn find_program(root: &Path, program: &str, env: &[(String, String)]) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let candidates: Vec<String> = if program.starts_with('/') {
        vec![program.to_string()]
    } else if program.contains('/') {
        bail!("{program}: give an absolute path or a name looked up in PATH");
    } else {
        let path = env.iter().rev().find(|(k, _)| k == "PATH").map_or(
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            |(_, v)| v,
        );
        path.split(':').map(|d| format!("{d}/{program}")).collect()
    };
    for c in &candidates {
        if let Some(real) = root::resolve(root, c).target {
            let m = fs::metadata(root::host(root, &real));
            if m.is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
                return Ok(c.clone());
            }
        }
    }
    bail!("{program} is not an executable file in the layer")
}

/// Runs one training command traced, in a temporary layer dropped afterwards; its paths.
fn train(
    store: &FsStore,
    parent: &LayerId,
    chain: &[PathBuf],
    scratch: &Path,
    cmd: &str,
    env: &[(String, String)],
) -> anyhow::Result<Vec<String>> {
    let tmp_id = crate::cmd_shell::captured_id(parent, "appliance training")?;
    let _lock = store.lock_step(&tmp_id)?;
    let tmp = store.begin(&tmp_id, Some(parent), false)?;
    let trace_file = scratch.join("traced");
    let spec = RunSpec {
        root: RootFs::Overlay {
            lower: chain.to_vec(),
            upper: tmp.rootfs.clone(),
            work: tmp.work.clone(),
        },
        argv: vec!["/bin/sh".into(), "-c".into(), cmd.into()],
        env: env.to_vec(),
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        host_network: false,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "kiln".into(),
        fast_sync: true,
        interactive: false,
        trace: Some(trace_file.clone()),
    };
    let mut log = Vec::new();
    let outcome = NamespaceSandbox::new().run(&spec, &mut log);
    store.abort(tmp)?;
    let outcome = outcome?;
    let log = String::from_utf8_lossy(&log);
    let how = match outcome {
        Outcome::Exited(0) => None,
        Outcome::Exited(code) => Some(format!("exit status {code}")),
        Outcome::Signalled(sig) => Some(format!("killed by signal {sig}")),
    };
    if let Some(how) = how {
        bail!("training command `{cmd}` failed ({how}); nothing was written. Its output:\n{log}");
    }
    let bytes = fs::read(&trace_file)
        .with_context(|| format!("reading the traced paths {}", trace_file.display()))?;
    Ok(bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect())
}

/// `OUT.kiln-tmp` beside OUT (same filesystem, for the rename).
fn staging(output: &Path) -> anyhow::Result<PathBuf> {
    let name = output
        .file_name()
        .with_context(|| format!("-o {}: name a directory", output.display()))?;
    let stage = output.with_file_name(format!(".{}.kiln-tmp", name.to_string_lossy()));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    Ok(stage)
}

/// An existing OUT must be an app directory (it holds report.json) or empty: kiln never
/// replaces anything else.
fn check_output(output: &Path) -> anyhow::Result<()> {
    if output.exists() {
        let is_app = output.join(REPORT).is_file();
        let empty = fs::read_dir(output)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !is_app && !empty {
            bail!(
                "-o {}: exists and is not an app directory (no {REPORT}); nothing was written",
                output.display()
            );
        }
    }
    Ok(())
}

/// Puts the staged directory in place of OUT (checked by [`check_output`]).
fn swap_in(stage: &Path, output: &Path) -> anyhow::Result<()> {
    if output.exists() {
        let old = output.with_file_name(format!(
            ".{}.kiln-old",
            output.file_name().unwrap_or_default().to_string_lossy()
        ));
        let _ = fs::remove_dir_all(&old);
        fs::rename(output, &old)?;
        fs::rename(stage, output)?;
        let _ = fs::remove_dir_all(&old);
    } else {
        fs::rename(stage, output)
            .with_context(|| format!("moving the appliance to {}", output.display()))?;
    }
    Ok(())
}
