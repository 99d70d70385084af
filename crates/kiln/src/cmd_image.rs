//! From a stored layer to an output people use: tar, directory, or a disk image with
//! its manifest, SBOM and (on request) extracted kernel.

use crate::cli::{BootArg, EspInitrdArg, ImageArgs, OutputFormat};
use anyhow::{bail, Context};
use kiln_build::view::TreeView;
use kiln_image::disk::{self, BootMode, DiskRequest, EspInitrd, PartitionInput};
use kiln_image::formats::{self, Format};
use kiln_image::manifest::{self, ManifestInput, ManifestPartition};
use kiln_spec::{ImageSpec, LayerId, PartitionSource};
use kiln_store::{FsStore, Store};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// What an image is made of, beyond the layer: the spec's facts for the manifest.
pub struct ImageSource<'a> {
    /// The layer of the main spec (the only partition without an `(image …)` form).
    pub layer: LayerId,
    pub image: Option<&'a ImageSpec>,
    /// Layers of the spec's `(build …)` stages and of `(partition (spec …))` files.
    pub partitions: BTreeMap<String, LayerId>,
    pub spec_sha256: String,
    pub source_date_epoch: i64,
}

/// The output format asked for, from `--format` or the output's extension.
pub fn output_format(args: &ImageArgs, output: &Path) -> anyhow::Result<OutputFormat> {
    if let Some(f) = args.format {
        return Ok(f);
    }
    let ext = output.extension().and_then(|e| e.to_str()).unwrap_or("");
    Ok(match ext {
        "raw" | "img" => OutputFormat::Raw,
        "qcow2" => OutputFormat::Qcow2,
        "vmdk" => OutputFormat::Vmdk,
        "vhdx" => OutputFormat::Vhdx,
        "vdi" => OutputFormat::Vdi,
        "tar" => OutputFormat::Tar,
        _ => bail!(
            "cannot tell the format of {} from its extension: use .raw, .img, .qcow2, .vmdk, .vhdx, .vdi or .tar, or --format",
            output.display()
        ),
    })
}

/// The default SOURCE_DATE_EPOCH: derived from the spec's hash, so the same spec always
/// gets the same one (a date in 2020–2024, never in the future).
pub fn epoch_from_spec(spec_sha256: &[u8; 32]) -> i64 {
    let n = u32::from_be_bytes([
        spec_sha256[0],
        spec_sha256[1],
        spec_sha256[2],
        spec_sha256[3],
    ]);
    1_577_836_800 + i64::from(n % (5 * 365 * 86_400))
}

/// `SOURCE_DATE_EPOCH` from the environment, else from the spec.
pub fn source_date_epoch(spec_text: &str) -> anyhow::Result<i64> {
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        return v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v} is not a number of seconds"));
    }
    Ok(epoch_from_spec(
        &Sha256::digest(spec_text.as_bytes()).into(),
    ))
}

/// Writes `source` as `args.output` in the asked format. The caller has entered a
/// private mount namespace.
pub fn produce(
    store: &FsStore,
    source: &ImageSource,
    args: &ImageArgs,
) -> anyhow::Result<Option<kiln_image::manifest::Manifest>> {
    produce_or_push(store, source, args, None)
}

/// [`produce`], and with `push` (`oci://…`, `--format containerdisk` only) the image is
/// also pushed to a registry; `args.output` may then be absent.
pub fn produce_or_push(
    store: &FsStore,
    source: &ImageSource,
    args: &ImageArgs,
    push: Option<&str>,
) -> anyhow::Result<Option<kiln_image::manifest::Manifest>> {
    let format = match (&args.output, args.format) {
        (Some(output), _) => output_format(args, output)?,
        (None, Some(OutputFormat::ContainerDisk)) if push.is_some() => OutputFormat::ContainerDisk,
        (None, _) if push.is_some() => bail!("--push is for --format containerdisk"),
        (None, _) => return Ok(None),
    };
    if push.is_some() && format != OutputFormat::ContainerDisk {
        bail!("--push is for --format containerdisk");
    }
    let scratch = store.scratch_dir("image")?;
    let result = if format == OutputFormat::ContainerDisk {
        produce_containerdisk(store, source, args, push, &scratch)
    } else {
        let output = args.output.as_deref().unwrap_or(Path::new(""));
        produce_in(store, source, args, output, format, &scratch)
    };
    let _ = fs::remove_dir_all(&scratch);
    result
}

/// `--format containerdisk`: the qcow2 disk in a one-layer OCI image (KubeVirt's layout,
/// `kiln_image::containerdisk`), written as an OCI archive to `-o` and/or pushed.
fn produce_containerdisk(
    store: &FsStore,
    source: &ImageSource,
    args: &ImageArgs,
    push: Option<&str>,
    scratch: &Path,
) -> anyhow::Result<Option<kiln_image::manifest::Manifest>> {
    let qcow2 = scratch.join("disk.qcow2");
    let manifest = produce_in(store, source, args, &qcow2, OutputFormat::Qcow2, scratch)?;
    let layer = scratch.join("layer.tar");
    let mtime = u64::try_from(source.source_date_epoch).unwrap_or(0);
    let image = kiln_image::containerdisk::write_layer(&qcow2, &layer, mtime)?;
    fs::remove_file(&qcow2).with_context(|| format!("removing {}", qcow2.display()))?;
    if let Some(output) = &args.output {
        let tmp = tmp_sibling(output, "containerdisk");
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let written = kiln_image::containerdisk::write_oci_archive(
            &image,
            &layer,
            "latest",
            std::io::BufWriter::with_capacity(1 << 20, file),
            mtime,
        );
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    }
    if let Some(target) = push {
        crate::cmd_artifact::push_containerdisk(target, &image, &layer, scratch)?;
    }
    Ok(manifest)
}

fn produce_in(
    store: &FsStore,
    source: &ImageSource,
    args: &ImageArgs,
    output: &Path,
    format: OutputFormat,
    scratch: &Path,
) -> anyhow::Result<Option<kiln_image::manifest::Manifest>> {
    let main_root = mount_layer(store, &source.layer, &scratch.join("main"))?;
    if let Some(dir) = &args.kernel_out {
        extract_kernel(main_root.path(), dir, dir, source.source_date_epoch)?;
    }
    match format {
        OutputFormat::Tar => {
            crate::layers::write_tar_atomically(main_root.path(), output, &source.layer)?;
            return Ok(None);
        }
        OutputFormat::Dir => {
            kiln_image::dir_export(main_root.path(), output)?;
            return Ok(None);
        }
        _ => {}
    }
    // Every partition's merged tree, mounted read-only.
    let parts = partitions(source)?;
    let mut mounts: Vec<TreeView> = Vec::new();
    let mut inputs = Vec::new();
    for (i, (name, label, layer, size)) in parts.iter().enumerate() {
        let root = mount_layer(store, layer, &scratch.join(format!("part{i}")))?;
        inputs.push(PartitionInput {
            name: name.clone(),
            label: label.clone(),
            rootfs: root.path().to_path_buf(),
            size: *size,
        });
        mounts.push(root);
    }
    let default = source
        .image
        .and_then(|i| i.default.as_ref())
        .and_then(|d| parts.iter().position(|p| &p.0 == d))
        .unwrap_or(0);
    let boot = match args.boot {
        BootArg::Uefi => BootMode::Uefi,
        BootArg::Kernel => BootMode::Kernel,
        BootArg::None => BootMode::None,
    };
    let seed = image_seed(source, args);
    let staging = scratch.join("staging");
    fs::create_dir_all(&staging)?;
    let request = DiskRequest {
        partitions: inputs,
        default,
        boot,
        disk_size: args.size,
        seed: seed.clone(),
        source_date_epoch: source.source_date_epoch,
        esp_initrd: match args.esp_initrd {
            EspInitrdArg::Kiln => EspInitrd::Kiln,
            EspInitrdArg::Image => EspInitrd::Image,
        },
        scratch: staging,
    };
    let raw = tmp_sibling(output, "raw");
    eprintln!(
        "assembling {} partition(s) into {}",
        request.partitions.len(),
        output.display()
    );
    let image_name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // The disk is made by single-threaded tools (mke2fs, debugfs, qemu-img); what only
    // reads the trees is done meanwhile on a second thread.
    let (disk, side) = std::thread::scope(|s| {
        let side = s.spawn(|| side_outputs(&request, boot, output, &image_name, &seed));
        let disk = assemble_and_convert(&request, &raw, output, format, args, &seed);
        let side = side
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (disk, side)
    });
    let ((layout, _raw_removal), side) = match (disk, side) {
        (Ok(disk), Ok(side)) => (disk, side),
        (Err(e), Ok(side)) => {
            if let Some(staged) = side.boot_dir {
                let _ = fs::remove_dir_all(staged);
            }
            return Err(e);
        }
        (Err(e), Err(_)) | (Ok(_), Err(e)) => return Err(e),
    };
    if let Some(staged) = &side.boot_dir {
        fs::write(staged.join("cmdline"), format!("{}\n", layout.cmdline))?;
        replace_dir(staged, &boot_dir(output))?;
    }
    // raw and qcow2 keep the disk's size exactly; the other formats may round it up.
    let virtual_size = match format {
        OutputFormat::Raw | OutputFormat::Qcow2 => layout.size,
        _ => kiln_image::tools::qemu_img::info(output)?.virtual_size,
    };
    let mut mparts = Vec::new();
    for (report, os) in layout.partitions.iter().zip(side.os) {
        mparts.push(ManifestPartition {
            name: report.name.clone(),
            label: report.label.clone(),
            index: report.index,
            partuuid: report.partuuid.clone(),
            fs_uuid: report.fs_uuid.clone(),
            offset: report.offset,
            size: report.size,
            os,
        });
    }
    let arches = match source
        .image
        .map(|i| i.arches.clone())
        .filter(|a| !a.is_empty())
    {
        Some(a) => a,
        None => mparts
            .iter()
            .map(|p| p.os.arch.clone())
            .filter(|a| !a.is_empty())
            .take(1)
            .collect(),
    };
    let input = ManifestInput {
        image_name,
        format: format_name(format).into(),
        virtual_size,
        default_partition: mparts.get(default).map(|p| p.name.clone()),
        partitions: mparts,
        node_types: source
            .image
            .map(|i| i.node_types.clone())
            .unwrap_or_default(),
        arches,
        boot: match boot {
            BootMode::Uefi => "uefi",
            BootMode::Kernel => "kernel",
            BootMode::None => "none",
        }
        .into(),
        spec_sha256: source.spec_sha256.clone(),
        layer_id: source.layer.to_string(),
        kiln_version: env!("CARGO_PKG_VERSION").into(),
        build_time: source.source_date_epoch,
    };
    let written = manifest::write_manifest(output, &input)?;
    manifest::write_sbom(output, &side.sbom)?;
    drop(mounts);
    Ok(Some(serde_json::from_value(written)?))
}

/// Writes the raw disk, then converts it to `output` in `format`.
fn assemble_and_convert(
    request: &DiskRequest,
    raw: &Path,
    output: &Path,
    format: OutputFormat,
    args: &ImageArgs,
    seed: &str,
) -> anyhow::Result<(disk::DiskLayout, Option<BackgroundRemoval>)> {
    let layout = disk::assemble(request, raw)?;
    match format {
        OutputFormat::Raw => {
            fs::rename(raw, output).with_context(|| format!("writing {}", output.display()))?;
        }
        other => {
            let fmt = match other {
                OutputFormat::Qcow2 => Format::Qcow2 {
                    compressed: args.compress,
                },
                OutputFormat::Vmdk => Format::Vmdk,
                OutputFormat::Vhdx => Format::Vhdx,
                _ => Format::Vdi,
            };
            // convert() writes next to `output` and renames into place itself (a VMDK
            // records its own file name, so it must be written under its final name).
            let converted = formats::convert(raw, fmt, output, seed);
            let removal = BackgroundRemoval::start(raw);
            converted?;
            return Ok((layout, Some(removal)));
        }
    }
    Ok((layout, None))
}

/// A file being deleted on another thread; dropping this waits for it. Deleting the
/// raw disk waits for its pages still being written back (a few tenths of a second),
/// which can overlap the hashing that follows.
struct BackgroundRemoval(Option<std::thread::JoinHandle<()>>);

impl BackgroundRemoval {
    fn start(path: &Path) -> Self {
        let path = path.to_path_buf();
        let handle = std::thread::spawn(move || {
            if let Err(e) = fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
        });
        BackgroundRemoval(Some(handle))
    }
}

impl Drop for BackgroundRemoval {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

/// What is made from the partitions' trees alone, beside the disk.
struct SideOutputs {
    /// A staged `IMAGE.boot/` (kernel, initrds) of a `--boot kernel` image, or of a
    /// `--boot uefi` image of kiln-init's architecture.
    boot_dir: Option<PathBuf>,
    /// One OS descriptor per partition.
    os: Vec<kiln_image::OsDescriptor>,
    sbom: serde_json::Value,
}

fn side_outputs(
    request: &DiskRequest,
    boot: BootMode,
    output: &Path,
    image_name: &str,
    seed: &str,
) -> anyhow::Result<SideOutputs> {
    let default = &request.partitions[request.default].rootfs;
    let os = request
        .partitions
        .iter()
        .map(|p| kiln_image::osinfo::os_descriptor(&p.rootfs))
        .collect::<Result<Vec<_>, _>>()?;
    let image_arch = &os[request.default].arch;
    // A UEFI image gets IMAGE.boot/ too when kiln-init can boot it: `kiln run`/`kiln
    // test` then enter its kernel directly, about twice as fast under TCG as OVMF.
    let direct = match boot {
        BootMode::Kernel => true,
        BootMode::Uefi => kiln_image::boot_initrd::init_architecture() == Some(image_arch.as_str()),
        BootMode::None => false,
    };
    let boot_dir = match direct {
        true => {
            let staged = tmp_sibling(&boot_dir(output), "staged");
            let _ = fs::remove_dir_all(&staged);
            let made = stage_boot_dir(
                default,
                image_arch,
                &staged,
                &boot_dir(output),
                request.source_date_epoch,
            );
            if made.is_err() {
                let _ = fs::remove_dir_all(&staged);
            }
            made?;
            Some(staged)
        }
        false => None,
    };
    let sbom = kiln_image::spdx::sbom(default, image_name, seed, request.source_date_epoch)?;
    Ok(SideOutputs { boot_dir, os, sbom })
}

/// Kernel, the image's initrd and kiln's boot initramfs (for an image of `image_arch`,
/// the default partition's Debian architecture), written into `dir` (to become `shown`).
fn stage_boot_dir(
    rootfs: &Path,
    image_arch: &str,
    dir: &Path,
    shown: &Path,
    epoch: i64,
) -> anyhow::Result<()> {
    let release = extract_kernel(rootfs, dir, shown, epoch)?;
    // kiln-init is an executable for this machine: an image of another architecture
    // boots with its own initrd only.
    let init_arch = kiln_image::boot_initrd::init_architecture();
    if init_arch != Some(image_arch) {
        eprintln!(
            "no {KILN_INITRD}: the image is {image_arch}, kiln-init is built for {}",
            init_arch.unwrap_or(std::env::consts::ARCH)
        );
        return Ok(());
    }
    let made = kiln_image::boot_initrd::write(rootfs, &release, &dir.join(KILN_INITRD), epoch)?;
    eprintln!(
        "boot initramfs {KILN_INITRD}: kiln-init + {} modules, {} KiB",
        made.modules,
        made.bytes >> 10
    );
    Ok(())
}

/// Puts the complete directory `staged` where `dir` was (an older one is removed first).
fn replace_dir(staged: &Path, dir: &Path) -> anyhow::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("replacing {}", dir.display()));
        }
        _ => {}
    }
    fs::rename(staged, dir).with_context(|| format!("writing {}", dir.display()))
}

/// One partition to assemble: `(name, label, layer, size)`.
type PartitionPlan = (String, String, LayerId, Option<u64>);

/// The partitions to assemble.
fn partitions(source: &ImageSource) -> anyhow::Result<Vec<PartitionPlan>> {
    let Some(image) = source.image else {
        return Ok(vec![(
            "root".into(),
            "root".into(),
            source.layer.clone(),
            None,
        )]);
    };
    image
        .partitions
        .iter()
        .map(|p| {
            let p = &p.value;
            let layer = source.partitions.get(&p.name).cloned().with_context(|| {
                let what = match &p.source {
                    PartitionSource::Build(b) => format!("build stage `{b}`"),
                    PartitionSource::Spec(s) => format!("spec {s}"),
                };
                format!("partition `{}`: {what} was not built", p.name)
            })?;
            Ok((
                p.name.clone(),
                p.label.clone().unwrap_or_else(|| p.name.clone()),
                layer,
                p.size,
            ))
        })
        .collect()
}

/// What every UUID and hash seed of the image derives from: the content and the layout.
fn image_seed(source: &ImageSource, args: &ImageArgs) -> String {
    let mut h = Sha256::new();
    h.update(source.layer.as_str());
    for (name, layer) in &source.partitions {
        h.update(name);
        h.update(layer.as_str());
    }
    // Not the format: web.raw and web.qcow2 of one build hold the same disk.
    h.update(format!("{:?}{:?}", args.boot, args.size));
    hex_string(&h.finalize())
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn format_name(format: OutputFormat) -> &'static str {
    match format {
        OutputFormat::Raw => "raw",
        OutputFormat::Qcow2 => "qcow2",
        OutputFormat::Vmdk => "vmdk",
        OutputFormat::Vhdx => "vhdx",
        OutputFormat::Vdi => "vdi",
        OutputFormat::Tar => "tar",
        OutputFormat::Dir => "dir",
        OutputFormat::ContainerDisk => "containerdisk",
    }
}

fn mount_layer(store: &FsStore, layer: &LayerId, at: &Path) -> anyhow::Result<TreeView> {
    crate::layers::open_layer(store, layer, at)
}

/// Extracts the kernel (and its initrd) into `dir`; returns the kernel's release. The
/// message names `shown` (where the files end up when `dir` is a staging directory).
fn extract_kernel(rootfs: &Path, dir: &Path, shown: &Path, epoch: i64) -> anyhow::Result<String> {
    let Some(files) = kiln_image::kernel::find_kernel(rootfs)? else {
        bail!(
            "the image has no kernel in /boot: install one in the spec, e.g. \
             (run (network host) (shell \"apt-get update && apt-get install -y linux-image-amd64 systemd-sysv\"))"
        );
    };
    let out = kiln_image::kernel::extract(&files, rootfs, dir, epoch)?;
    eprintln!(
        "kernel {} written to {}{}",
        files.release,
        shown.display(),
        if out.vmlinux.is_some() {
            " (with vmlinux)"
        } else {
            ""
        }
    );
    Ok(files.release)
}

/// kiln's boot initramfs in `IMAGE.boot/` (kiln-init; see `kiln_image::boot_initrd`).
pub const KILN_INITRD: &str = "kiln-initrd.img";

/// `IMAGE.boot/`: kernel, initrds and cmdline of a `--boot kernel` image, or of a
/// `--boot uefi` image of kiln-init's architecture (its loader entry's cmdline).
pub fn boot_dir(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".boot");
    PathBuf::from(name)
}

fn tmp_sibling(output: &Path, what: &str) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(format!(".kiln-{what}-tmp"));
    PathBuf::from(name)
}
