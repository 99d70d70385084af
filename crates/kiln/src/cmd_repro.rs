//! `kiln build --check-reproducible`: two builds from scratch, compared bit for bit.

use crate::builder::{build_all, sha256_hex};
use crate::cli::{BuildArgs, ImageArgs, OutputFormat};
use crate::cmd_image::{self, ImageSource};
use anyhow::Context;
use kiln_build::BuildOptions;
use kiln_spec::{LayerId, Spec};
use kiln_store::{FsStore, Store};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// One clean build: its store, final layer and outputs.
struct Run {
    store: FsStore,
    layer: LayerId,
    outputs: Vec<PathBuf>,
}

pub fn check(
    store_dir: &Path,
    args: &BuildArgs,
    spec: &Spec,
    text: &str,
    context: &Path,
    secrets: BTreeMap<String, Vec<u8>>,
    epoch: i64,
) -> anyhow::Result<ExitCode> {
    let main = FsStore::open(store_dir)?;
    let work = main.scratch_dir("repro")?;
    let result = compare(&main, &work, args, spec, text, context, secrets, epoch);
    let _ = fs::remove_dir_all(&work);
    result
}

#[allow(clippy::too_many_arguments)]
fn compare(
    main: &FsStore,
    work: &Path,
    args: &BuildArgs,
    spec: &Spec,
    text: &str,
    context: &Path,
    secrets: BTreeMap<String, Vec<u8>>,
    epoch: i64,
) -> anyhow::Result<ExitCode> {
    let formats = compared_formats(args)?;
    let stem = args
        .image
        .output
        .as_deref()
        .and_then(Path::file_stem)
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let mut runs = Vec::new();
    for name in ["a", "b"] {
        eprintln!("--check-reproducible: clean build {name} of 2");
        let root = work.join(name);
        let store = FsStore::open(&root.join("store"))?;
        share_deb_cache(main, &store)?;
        let options = BuildOptions {
            secrets: secrets.clone(),
            source_date_epoch: Some(epoch),
            fast_sync: !args.no_fast_sync,
            sandbox: args.vm.sandbox.kind(),
            ..Default::default()
        };
        let mut out = std::io::stderr();
        let (layer, partitions) = build_all(
            &store, options, &args.vm, spec, &args.file, context, &mut out,
        )?;
        let mut outputs = Vec::new();
        for (format, ext) in &formats {
            // Named as the asked output, so the manifest (and a VMDK's own header) name it.
            let path = root.join(format!("{stem}.{ext}"));
            let image_args = ImageArgs {
                output: Some(path.clone()),
                format: Some(*format),
                ..args.image.clone()
            };
            let source = ImageSource {
                layer: layer.clone(),
                image: spec.image.as_ref().map(|i| &i.value),
                partitions: partitions.clone(),
                spec_sha256: sha256_hex(text.as_bytes()),
                source_date_epoch: epoch,
            };
            cmd_image::produce(&store, &source, &image_args)?;
            outputs.push(path);
        }
        runs.push(Run {
            store,
            layer,
            outputs,
        });
    }
    let (a, b) = (&runs[0], &runs[1]);
    let mut same = true;
    for (pa, pb) in a.outputs.iter().zip(&b.outputs) {
        let (da, _) = kiln_image::repro::file_digest(pa)?;
        let (db, _) = kiln_image::repro::file_digest(pb)?;
        let ext = pa
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        if da == db {
            println!("reproducible {ext}: sha256 {da}");
        } else {
            println!("NOT reproducible {ext}: sha256 {da} vs {db}");
            same = false;
        }
    }
    if !same {
        report_first_difference(a, b, work, epoch)?;
        return Ok(ExitCode::from(1));
    }
    if let (Some(out), Some(first)) = (&args.image.output, a.outputs.last()) {
        move_file(first, out)?;
        for suffix in [".manifest.json", ".spdx.json"] {
            let mut from = first.as_os_str().to_owned();
            from.push(suffix);
            let mut to = out.as_os_str().to_owned();
            to.push(suffix);
            let from = PathBuf::from(from);
            if from.exists() {
                move_file(&from, Path::new(&to))?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Which outputs to compare: the raw disk always (when a disk is asked for), plus the
/// asked format; a tar when the output is a tar; the layer trees otherwise.
fn compared_formats(args: &BuildArgs) -> anyhow::Result<Vec<(OutputFormat, &'static str)>> {
    let asked = match &args.image.output {
        Some(out) => cmd_image::output_format(&args.image, out)?,
        None => OutputFormat::Tar,
    };
    Ok(match asked {
        OutputFormat::Tar => vec![(OutputFormat::Tar, "tar")],
        OutputFormat::Dir => anyhow::bail!(
            "--check-reproducible compares files: write a .tar or a disk image instead of --format dir"
        ),
        OutputFormat::Raw => vec![(OutputFormat::Raw, "raw")],
        OutputFormat::Qcow2 => vec![(OutputFormat::Raw, "raw"), (OutputFormat::Qcow2, "qcow2")],
        OutputFormat::Vmdk => vec![(OutputFormat::Raw, "raw"), (OutputFormat::Vmdk, "vmdk")],
        OutputFormat::Vhdx => vec![(OutputFormat::Raw, "raw"), (OutputFormat::Vhdx, "vhdx")],
        OutputFormat::ContainerDisk => vec![(OutputFormat::Raw, "raw"), (OutputFormat::Qcow2, "qcow2")],
        OutputFormat::Vdi => vec![(OutputFormat::Raw, "raw"), (OutputFormat::Vdi, "vdi")],
    })
}

/// Names the first file that differs between the two builds' trees.
fn report_first_difference(a: &Run, b: &Run, work: &Path, epoch: i64) -> anyhow::Result<()> {
    let ma = crate::layers::open_layer(&a.store, &a.layer, &work.join("tree-a"))?;
    let mb = crate::layers::open_layer(&b.store, &b.layer, &work.join("tree-b"))?;
    match kiln_image::repro::first_difference(ma.path(), mb.path(), Some(epoch))? {
        Some(diff) => println!("first difference: {diff}"),
        None => println!(
            "the two root trees are identical: the difference is in how the image was assembled \
             (filesystem or partition metadata)"
        ),
    }
    Ok(())
}

/// Downloads are not build inputs: the fresh stores reuse the main store's .deb and
/// apt-list cache, hard-linked (`cp -al`, coreutils).
fn share_deb_cache(main: &FsStore, fresh: &FsStore) -> anyhow::Result<()> {
    let (from, to) = (main.deb_cache(), fresh.deb_cache());
    fs::create_dir_all(&to)?;
    if !from.is_dir() {
        return Ok(());
    }
    let status = std::process::Command::new("cp")
        .arg("-al")
        .arg(from.join("."))
        .arg(&to)
        .status()
        .context("running cp (Debian package coreutils)")?;
    anyhow::ensure!(
        status.success(),
        "cp -al {} {} failed",
        from.display(),
        to.display()
    );
    Ok(())
}

/// Renames `from` to `to`, copying when they are on different filesystems (a rename keeps
/// a raw image sparse; the copy is the fallback).
fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if fs::rename(from, to).is_ok() {
        return Ok(());
    }
    fs::copy(from, to).with_context(|| format!("writing {}", to.display()))?;
    Ok(())
}
