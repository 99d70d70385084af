//! Bootable whole-disk images: a GPT, an optional EFI system partition with systemd-boot,
//! and one ext4 filesystem per OS partition, all written into one raw file without
//! privileges (no loop devices, no mounts).
//!
//! ```text
//! [GPT][ESP: FAT32, systemd-boot, /<name>/vmlinuz, initrd.img, kiln-initrd.img][root 1: ext4]…[backup GPT]
//! ```
//!
//! A UEFI partition boots with kiln's boot initramfs when kiln-init can boot it (see
//! [`EspInitrd`]), with the image's own one entry further down the boot menu.
//!
//! Assembly ([`assemble`]):
//! 1. each partition's kernel is found in its tree; a partition asked to boot without one
//!    is an error that says which package to install;
//! 2. sizes are planned from the measured trees (automatic: content × 1.3 + 256 MiB, or
//!    the asked partition and disk sizes);
//! 3. `sfdisk` writes the GPT into a sparse file in the scratch directory;
//! 4. for each partition in turn, `mke2fs -d` copies its tree (read only, never copied
//!    to disk first) straight into the disk at the partition's offset; its inode times
//!    are fixed in the inode tables, and one `debugfs` run makes the edits: the image's
//!    `/etc/fstab`, the ESP's mount point, an empty `/etc/machine-id`, no build leftovers;
//! 5. meanwhile, the ESP is made as its own FAT image (mkfs.vfat + mtools); it is then
//!    copied in, sparse;
//! 6. the finished file is renamed to the output path.
//!
//! Reproducibility: the same trees, seed and `SOURCE_DATE_EPOCH` give the same bytes.
//! Every UUID, the ext4 directory hash seeds and the FAT volume id derive from the seed;
//! file times later than the epoch are clamped to it, inode change times set to it and
//! access times to the modification times; mke2fs, debugfs, mkfs.vfat and mtools take
//! "now" from the epoch; mke2fs reads directories in byte order; `/etc/machine-id` is
//! emptied and the files in [`REMOVED`] and [`EMPTIED`], which record when an image was
//! built, are removed or emptied (their blocks zeroed). Files a package fills
//! with random bytes at install time (SSH host keys, for one) are left alone: they are
//! the spec's business, and differ between two builds.
//!
//! The kernel command line names the root filesystem by PARTUUID (`root=PARTUUID=…`):
//! the kernel resolves that itself, so it works with or without an initrd, whatever the
//! disk is called in the guest (`vda`, `sda`); `root=UUID=…` would need an initrd.

mod ctime;
mod edits;
mod esp;
mod ext4;
mod freemap;
pub(crate) mod ids;
mod layout;
mod sparse;
mod tree;

pub use edits::{EMPTIED, REMOVED};

use crate::tools::sfdisk::{self, GptPartition, GptTable, SECTOR};
use crate::{ImageError, KernelFiles};
use esp::{BootEntry, EspContent};
use ids::{fat_uuid, Ids, PartitionIds};
use layout::{Extent, Want};
use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use tree::{Content, Scan};

/// GPT type of an EFI system partition.
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// GPT type of an x86-64 Linux root partition (Discoverable Partitions Specification).
pub const ROOT_X86_64_TYPE: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// The GPT name of the ESP (its FAT label is `ESP`).
pub const ESP_NAME: &str = "esp";

/// The command to suggest when a partition that must boot has no kernel.
const INSTALL_KERNEL_HINT: &str =
    "(run (network host) (shell \"apt-get install -y linux-image-amd64 systemd-sysv\"))";

/// How the disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootMode {
    /// An ESP with systemd-boot and every bootable partition's kernel and initrd; boots
    /// under UEFI firmware (OVMF in QEMU).
    #[default]
    Uefi,
    /// No boot loader: the runner passes the default partition's kernel, initrd and
    /// command line itself (QEMU `-kernel`, gem5).
    Kernel,
    /// Data only: nothing needs a kernel.
    None,
}

impl FromStr for BootMode {
    type Err = ImageError;
    fn from_str(s: &str) -> Result<Self, ImageError> {
        match s {
            "uefi" => Ok(BootMode::Uefi),
            "kernel" => Ok(BootMode::Kernel),
            "none" => Ok(BootMode::None),
            other => Err(ImageError::Tool(format!(
                "unknown boot mode `{other}`: use uefi, kernel or none"
            ))),
        }
    }
}

impl fmt::Display for BootMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootMode::Uefi => "uefi",
            BootMode::Kernel => "kernel",
            BootMode::None => "none",
        })
    }
}

/// Which initramfs a UEFI image's default boot entries load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EspInitrd {
    /// kiln's boot initramfs ([`crate::boot_initrd`]: kiln-init, the disk and network
    /// drivers) for each partition of the architecture kiln-init is built for, and an
    /// entry `<name>-initramfs` with the image's own; other partitions boot their own.
    #[default]
    Kiln,
    /// The image's own initramfs only.
    Image,
}

/// One OS partition to put on the disk.
#[derive(Debug, Clone)]
pub struct PartitionInput {
    /// `[A-Za-z0-9._-]+`, unique in the image (ignoring case: it names ESP directories).
    pub name: String,
    /// Filesystem label and GPT partition name: at most 16 bytes.
    pub label: String,
    /// The merged root tree. Read only: assembly works on a copy.
    pub rootfs: PathBuf,
    /// Partition size in bytes (rounded up to a MiB); `None`: automatic.
    pub size: Option<u64>,
}

/// Everything [`assemble`] needs.
#[derive(Debug, Clone)]
pub struct DiskRequest {
    pub partitions: Vec<PartitionInput>,
    /// Index in `partitions` of the partition that boots by default.
    pub default: usize,
    pub boot: BootMode,
    /// Whole disk size in bytes (rounded up to a MiB): the last partition without a size
    /// takes what the others leave. `None`: the sum of the partitions.
    pub disk_size: Option<u64>,
    /// The image id: every identifier on the disk derives from it.
    pub seed: String,
    /// `SOURCE_DATE_EPOCH`: later file times are clamped to it.
    pub source_date_epoch: i64,
    /// The initramfs UEFI boot entries load.
    pub esp_initrd: EspInitrd,
    /// An existing directory on the output's filesystem for temporary files (chiefly
    /// the disk itself until it is renamed into place).
    pub scratch: PathBuf,
}

/// What [`assemble`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    /// GPT disk GUID (lower case).
    pub disk_guid: String,
    /// Bytes.
    pub size: u64,
    /// The OS partitions, in request order.
    pub partitions: Vec<PartitionReport>,
    /// The ESP (UEFI images only).
    pub esp: Option<PartitionReport>,
    /// Index in `partitions` of the default one.
    pub default: usize,
    /// Kernel command line of the default partition: for a UEFI disk, its loader entry's
    /// options (the same string), so a direct boot of the disk passes the same.
    pub cmdline: String,
    /// The default partition's kernel and initrd: host paths in its (source) tree.
    pub kernel: Option<KernelFiles>,
    /// Names of the partitions with a boot menu entry (UEFI images).
    pub boot_entries: Vec<String>,
}

/// One partition of the disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionReport {
    pub name: String,
    pub label: String,
    /// 1-based GPT entry number (`/dev/vda<index>`).
    pub index: u32,
    /// Unique partition GUID (lower case).
    pub partuuid: String,
    /// Filesystem UUID (ext4) or volume id `XXXX-XXXX` (FAT).
    pub fs_uuid: String,
    /// Bytes from the start of the disk.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// The kernel command line for a root filesystem on the partition `root_partuuid`. The
/// serial console comes last, so it is `/dev/console` (where systemd and `kiln test`
/// read and write); the screen still gets the kernel's messages.
pub fn default_cmdline(root_partuuid: &str) -> String {
    cmdline_with(root_partuuid, &[])
}

/// The file in which a tree keeps kernel parameters of its own: the one systemd's
/// `kernel-install` reads, so a spec writes it as it would for any Debian system.
pub const KERNEL_CMDLINE_FILE: &str = "etc/kernel/cmdline";

/// The kernel command line for the tree `rootfs` on the partition `root_partuuid`:
/// [`default_cmdline`] with the parameters of the tree's [`KERNEL_CMDLINE_FILE`] (when it
/// has one) after `rw` and before the consoles. A `root=` there is dropped with a warning:
/// the root is the partition kiln made, and the kernel would take the last one given.
pub fn partition_cmdline(rootfs: &Path, root_partuuid: &str) -> Result<String, ImageError> {
    let text = crate::osinfo::read_in_root(rootfs, Path::new(KERNEL_CMDLINE_FILE))?;
    let extra: Vec<&str> = text
        .as_deref()
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(str::split_whitespace)
        .filter(|word| {
            let root = word.starts_with("root=");
            if root {
                tracing::warn!(
                    "ignoring `{word}` in /{KERNEL_CMDLINE_FILE}: the root is partition {root_partuuid}"
                );
            }
            !root
        })
        .collect();
    Ok(cmdline_with(root_partuuid, &extra))
}

fn cmdline_with(root_partuuid: &str, extra: &[&str]) -> String {
    let mut words = vec![format!("root=PARTUUID={root_partuuid}"), "rw".to_string()];
    words.extend(extra.iter().map(|w| w.to_string()));
    words.extend([
        "console=tty0".to_string(),
        "console=ttyS0,115200".to_string(),
    ]);
    words.join(" ")
}

/// The `/etc/fstab` of a root filesystem, with the ESP at `/boot/efi` when there is one.
pub fn fstab(root_fs_uuid: &str, esp_fs_uuid: Option<&str>) -> String {
    let mut text = format!(
        "# /etc/fstab: written by kiln when it made the disk image.\n\
         # <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID={root_fs_uuid} / ext4 errors=remount-ro 0 1\n"
    );
    if let Some(esp) = esp_fs_uuid {
        text.push_str(&format!(
            "UUID={esp} /boot/efi vfat umask=0077,nofail 0 2\n"
        ));
    }
    text
}

/// Builds the disk described by `req` into the raw file `out_raw` (replaced if it
/// exists; written only when everything succeeded).
pub fn assemble(req: &DiskRequest, out_raw: &Path) -> Result<DiskLayout, ImageError> {
    validate(req)?;
    let work = tempfile::Builder::new()
        .prefix("kiln-disk-")
        .tempdir_in(&req.scratch)
        .map_err(|e| ImageError::io(&req.scratch, e))?;
    let ids = Ids::new(&req.seed);
    let part_ids: Vec<PartitionIds> = req
        .partitions
        .iter()
        .map(|p| ids.partition(&p.name))
        .collect();
    let kernels = find_kernels(req)?;
    let cmdlines = req
        .partitions
        .iter()
        .zip(&part_ids)
        .map(|(p, ids)| partition_cmdline(&p.rootfs, &ids.partuuid))
        .collect::<Result<Vec<_>, _>>()?;
    let esp_content = match req.boot {
        BootMode::Uefi => Some(esp_content(req, &kernels, &cmdlines, work.path())?),
        _ => None,
    };
    let scans = req
        .partitions
        .iter()
        .map(|p| scan(p, req))
        .collect::<Result<Vec<_>, _>>()?;
    let wants: Vec<Want> = req
        .partitions
        .iter()
        .zip(&scans)
        .map(|(p, scan)| Want {
            name: p.name.clone(),
            content: scan.content,
            size: p.size,
        })
        .collect();
    let esp_size = match &esp_content {
        Some(c) => Some(layout::esp_size(esp::payload_bytes(c)?)),
        None => None,
    };
    let plan = layout::plan(esp_size, &wants, req.disk_size)?;
    let report = report(
        req,
        &ids,
        &part_ids,
        &plan,
        &kernels,
        &cmdlines,
        esp_content.as_ref(),
    );

    let raw = work.path().join("disk.raw");
    create_sparse(&raw, plan.disk_size)?;
    sfdisk::write_gpt(&raw, &gpt_table(&report))?;
    // The ESP is made in a file of its own while the root filesystems are written.
    let esp = std::thread::scope(|s| {
        let esp_job = match (&esp_content, &report.esp) {
            (Some(content), Some(part)) => {
                Some(s.spawn(|| build_esp(req, &ids, content, part, work.path())))
            }
            _ => None,
        };
        let roots = req
            .partitions
            .iter()
            .enumerate()
            .try_for_each(|(i, input)| {
                write_partition(
                    req,
                    &report.partitions[i],
                    input,
                    &part_ids[i],
                    &scans[i],
                    &raw,
                    work.path(),
                )
            });
        let esp = esp_job
            .map(|job| {
                job.join().unwrap_or_else(|_| {
                    Err(ImageError::Tool(
                        "building the EFI system partition panicked".into(),
                    ))
                })
            })
            .transpose();
        roots.and(esp)
    })?;
    if let (Some(image), Some(part)) = (esp, &report.esp) {
        copy_into(&image, part, &raw)?;
    }
    move_into_place(&raw, out_raw)?;
    Ok(report)
}

fn validate(req: &DiskRequest) -> Result<(), ImageError> {
    if req.partitions.is_empty() {
        return Err(ImageError::Tool(
            "a disk image needs at least one partition".into(),
        ));
    }
    if req.default >= req.partitions.len() {
        return Err(ImageError::Tool(format!(
            "the default partition is number {} but the image has {}",
            req.default + 1,
            req.partitions.len()
        )));
    }
    if req.source_date_epoch < 0 {
        return Err(ImageError::Tool(format!(
            "SOURCE_DATE_EPOCH {} is before 1970: give a time in seconds since 1970",
            req.source_date_epoch
        )));
    }
    if req.seed.is_empty() {
        return Err(ImageError::Tool("the disk seed (image id) is empty".into()));
    }
    let mut names = HashSet::new();
    for p in &req.partitions {
        validate_partition(p)?;
        if !names.insert(p.name.to_ascii_lowercase()) {
            return Err(ImageError::Tool(format!(
                "two partitions are named `{}` (names are compared ignoring case): rename one",
                p.name
            )));
        }
    }
    for p in &req.partitions {
        let lower = p.name.to_ascii_lowercase();
        if let Some(stem) = lower.strip_suffix(esp::IMAGE_INITRD_ENTRY_SUFFIX) {
            if names.contains(stem) {
                return Err(ImageError::Tool(format!(
                    "partition name `{}` is taken by the boot entry that boots partition \
                     `{stem}` with its own initramfs: rename it",
                    p.name
                )));
            }
        }
    }
    if !req.scratch.is_dir() {
        return Err(ImageError::Tool(format!(
            "the scratch directory {} does not exist",
            req.scratch.display()
        )));
    }
    Ok(())
}

fn validate_partition(p: &PartitionInput) -> Result<(), ImageError> {
    let identifier = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    };
    if !identifier(&p.name) || p.name.len() > 64 || p.name.starts_with('.') {
        return Err(ImageError::Tool(format!(
            "partition name `{}`: use 1 to 64 letters, digits, `.`, `_` or `-`, not starting with `.`",
            p.name
        )));
    }
    if ["efi", "loader"].contains(&p.name.to_ascii_lowercase().as_str()) {
        return Err(ImageError::Tool(format!(
            "partition name `{}` is taken by the EFI system partition's own directories: rename it",
            p.name
        )));
    }
    if !identifier(&p.label) || p.label.len() > 16 {
        return Err(ImageError::Tool(format!(
            "partition `{}`: label `{}` must be 1 to 16 letters, digits, `.`, `_` or `-` \
             (ext4 labels hold 16 bytes)",
            p.name, p.label
        )));
    }
    if !p.rootfs.is_dir() {
        return Err(ImageError::Tool(format!(
            "partition `{}`: its root tree {} is not a directory",
            p.name,
            p.rootfs.display()
        )));
    }
    Ok(())
}

/// Each partition's kernel (when boot needs one, the default partition must have one).
fn find_kernels(req: &DiskRequest) -> Result<Vec<Option<KernelFiles>>, ImageError> {
    let kernels = req
        .partitions
        .iter()
        .map(|p| crate::kernel::find_kernel(&p.rootfs))
        .collect::<Result<Vec<_>, _>>()?;
    let default = &req.partitions[req.default];
    if req.boot != BootMode::None && kernels[req.default].is_none() {
        return Err(ImageError::Tool(format!(
            "the image has no kernel: partition `{}` ({}) has no /boot/vmlinuz-*, so it cannot \
             boot with --boot {}; install one in the spec, e.g. {INSTALL_KERNEL_HINT}, \
             or build a data-only disk with --boot none",
            default.name,
            default.rootfs.display(),
            req.boot
        )));
    }
    Ok(kernels)
}

/// The ESP's boot loader and one entry per partition that has a kernel; kiln's boot
/// initramfs, where it is wanted, is written into `work`.
fn esp_content(
    req: &DiskRequest,
    kernels: &[Option<KernelFiles>],
    cmdlines: &[String],
    work: &Path,
) -> Result<EspContent, ImageError> {
    let several = kernels.iter().filter(|k| k.is_some()).count() > 1;
    let mut entries = Vec::new();
    for ((input, cmdline), kernel) in req.partitions.iter().zip(cmdlines).zip(kernels) {
        let Some(kernel) = kernel else { continue };
        let pretty = crate::osinfo::os_release(&input.rootfs)?
            .and_then(|fields| fields.get("PRETTY_NAME").cloned())
            .filter(|name| !name.trim().is_empty())
            .unwrap_or_else(|| "Linux".to_string());
        let kiln_initrd = kiln_initrd(req, input, kernel, work)?;
        entries.push(BootEntry {
            kiln_initrd,
            name: input.name.clone(),
            title: if several {
                format!("{pretty} ({})", input.name)
            } else {
                pretty
            },
            kernel: kernel.clone(),
            options: cmdline.clone(),
        });
    }
    let default = &req.partitions[req.default];
    Ok(EspContent {
        loader: esp::find_systemd_boot(&default.rootfs)?,
        entries,
        default: default.name.clone(),
    })
}

/// kiln's boot initramfs for `input`'s kernel, written into `work`, when the request
/// wants it and kiln-init runs on the partition's architecture.
fn kiln_initrd(
    req: &DiskRequest,
    input: &PartitionInput,
    kernel: &KernelFiles,
    work: &Path,
) -> Result<Option<PathBuf>, ImageError> {
    if req.esp_initrd != EspInitrd::Kiln {
        return Ok(None);
    }
    let arch = crate::osinfo::debian_arch(&input.rootfs)?;
    if arch.is_none() || arch.as_deref() != crate::boot_initrd::init_architecture() {
        return Ok(None);
    }
    let dest = work.join(format!("{}-{}", input.name, esp::KILN_INITRD));
    crate::boot_initrd::write(&input.rootfs, &kernel.release, &dest, req.source_date_epoch)?;
    Ok(Some(dest))
}

/// Scans one partition's tree; its content counts what the edits add (fstab, the ESP's
/// mount point and its parent).
fn scan(input: &PartitionInput, req: &DiskRequest) -> Result<Scan, ImageError> {
    let mut scan = tree::scan(&input.rootfs)?;
    let added = if req.boot == BootMode::Uefi { 3 } else { 1 };
    scan.content = Content {
        bytes: scan.content.bytes + added * 4096,
        inodes: scan.content.inodes + added,
    };
    Ok(scan)
}

fn report(
    req: &DiskRequest,
    ids: &Ids,
    part_ids: &[PartitionIds],
    plan: &layout::Plan,
    kernels: &[Option<KernelFiles>],
    cmdlines: &[String],
    esp: Option<&EspContent>,
) -> DiskLayout {
    let first_root = u32::from(plan.esp.is_some()) + 1;
    let partitions = req
        .partitions
        .iter()
        .zip(part_ids)
        .zip(&plan.roots)
        .enumerate()
        .map(|(i, ((input, pids), extent))| PartitionReport {
            name: input.name.clone(),
            label: input.label.clone(),
            index: first_root + i as u32,
            partuuid: pids.partuuid.clone(),
            fs_uuid: pids.fs_uuid.clone(),
            offset: extent.offset,
            size: extent.size,
        })
        .collect();
    let esp_report = plan.esp.map(|Extent { offset, size }| PartitionReport {
        name: ESP_NAME.to_string(),
        label: esp::ESP_LABEL.to_string(),
        index: 1,
        partuuid: ids.esp_partuuid(),
        fs_uuid: fat_uuid(ids.esp_volume_id()),
        offset,
        size,
    });
    DiskLayout {
        disk_guid: ids.disk_guid(),
        size: plan.disk_size,
        partitions,
        esp: esp_report,
        default: req.default,
        cmdline: default_entry_cmdline(esp).unwrap_or_else(|| cmdlines[req.default].clone()),
        kernel: kernels[req.default].clone(),
        boot_entries: esp
            .map(|c| c.entries.iter().map(|e| e.name.clone()).collect())
            .unwrap_or_default(),
    }
}

/// The options of the ESP's default loader entry: what a UEFI boot passes the kernel,
/// and so what `DiskLayout::cmdline` (and a direct boot of the image) must use too.
fn default_entry_cmdline(esp: Option<&EspContent>) -> Option<String> {
    let esp = esp?;
    let entry = esp.entries.iter().find(|e| e.name == esp.default)?;
    Some(entry.options.clone())
}

fn gpt_table(report: &DiskLayout) -> GptTable {
    let entry = |p: &PartitionReport, type_guid: &str, name: &str| GptPartition {
        start: p.offset / SECTOR,
        size: p.size / SECTOR,
        type_guid: type_guid.to_string(),
        uuid: p.partuuid.to_ascii_uppercase(),
        name: name.to_string(),
    };
    let esp = report.esp.iter().map(|p| entry(p, ESP_TYPE, ESP_NAME));
    let roots = report
        .partitions
        .iter()
        .map(|p| entry(p, ROOT_X86_64_TYPE, &p.label));
    GptTable {
        label_id: report.disk_guid.to_ascii_uppercase(),
        partitions: esp.chain(roots).collect(),
    }
}

fn create_sparse(path: &Path, size: u64) -> Result<(), ImageError> {
    let file = fs::File::create(path).map_err(|e| ImageError::io(path, e))?;
    file.set_len(size).map_err(|e| ImageError::io(path, e))
}

/// Writes one partition's filesystem into the disk.
fn write_partition(
    req: &DiskRequest,
    part: &PartitionReport,
    input: &PartitionInput,
    ids: &PartitionIds,
    scan: &Scan,
    raw: &Path,
    work: &Path,
) -> Result<(), ImageError> {
    let esp_uuid =
        (req.boot == BootMode::Uefi).then(|| fat_uuid(Ids::new(&req.seed).esp_volume_id()));
    let fstab = fstab(&ids.fs_uuid, esp_uuid.as_deref());
    let mount_points: &[&str] = if esp_uuid.is_some() {
        &["boot/efi"]
    } else {
        &[]
    };
    let work_dir = work.join(format!("partition-{}", part.index));
    fs::create_dir(&work_dir).map_err(|e| ImageError::io(&work_dir, e))?;
    ext4::write(&ext4::Ext4Job {
        raw,
        extent: Extent {
            offset: part.offset,
            size: part.size,
        },
        tree: &input.rootfs,
        scan,
        edits: edits::Edits {
            fstab: &fstab,
            mount_points,
        },
        ids,
        label: &part.label,
        epoch: req.source_date_epoch,
        work_dir: &work_dir,
    })
}

/// Makes the ESP as a FAT image file in `work`; returns its path.
fn build_esp(
    req: &DiskRequest,
    ids: &Ids,
    content: &EspContent,
    part: &PartitionReport,
    work: &Path,
) -> Result<PathBuf, ImageError> {
    let dir = work.join("esp");
    fs::create_dir(&dir).map_err(|e| ImageError::io(&dir, e))?;
    let image = dir.join("esp.img");
    esp::build(
        &image,
        part.size,
        ids.esp_volume_id(),
        part.offset / SECTOR,
        content,
        req.source_date_epoch,
        &dir,
    )?;
    Ok(image)
}

/// Copies the filesystem image `image` into the partition `part` of the disk `raw`.
fn copy_into(image: &Path, part: &PartitionReport, raw: &Path) -> Result<(), ImageError> {
    let src = fs::File::open(image).map_err(|e| ImageError::io(image, e))?;
    let dst = fs::OpenOptions::new()
        .write(true)
        .open(raw)
        .map_err(|e| ImageError::io(raw, e))?;
    sparse::copy_region(&src, 0, part.size, &dst, part.offset).map_err(|e| ImageError::io(raw, e))
}

/// Renames the finished disk to `out`; across filesystems, copies it (sparse) next to
/// `out` first, so `out` never holds half a disk.
fn move_into_place(raw: &Path, out: &Path) -> Result<(), ImageError> {
    match fs::rename(raw, out) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            let mut tmp = out.as_os_str().to_owned();
            tmp.push(".kiln-tmp");
            let tmp = PathBuf::from(tmp);
            let copied = sparse::copy_file(raw, &tmp)
                .and_then(|()| fs::rename(&tmp, out).map_err(|e| ImageError::io(out, e)));
            if copied.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            copied
        }
        Err(e) => Err(ImageError::io(out, e)),
    }
}

/// Copies `len` bytes from `src_offset` of the file `src` into a new sparse file `dst`.
pub(crate) fn extract_region(
    src: &Path,
    src_offset: u64,
    len: u64,
    dst: &Path,
) -> Result<(), ImageError> {
    let input = fs::File::open(src).map_err(|e| ImageError::io(src, e))?;
    let output = fs::File::create(dst).map_err(|e| ImageError::io(dst, e))?;
    output.set_len(len).map_err(|e| ImageError::io(dst, e))?;
    sparse::copy_region(&input, src_offset, len, &output, 0).map_err(|e| ImageError::io(dst, e))
}

/// The data extents of the first `len` bytes of `file`: everything but its holes.
pub fn data_extents(file: &fs::File, len: u64) -> std::io::Result<Vec<std::ops::Range<u64>>> {
    sparse::data_extents(file, len)
}

/// The byte ranges of the disk `path` that its ext4 filesystems mark free, sorted: those
/// of every partition of its GPT, or of a filesystem filling the whole disk.
pub fn ext4_free_ranges(path: &Path) -> Result<Vec<std::ops::Range<u64>>, ImageError> {
    let file = fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut signature = [0u8; 8];
    let has_gpt = file.read_exact_at(&mut signature, SECTOR).is_ok() && &signature == b"EFI PART";
    let offsets = if has_gpt {
        let mut starts: Vec<u64> = sfdisk::read_table(path)?
            .partitions
            .iter()
            .map(|p| p.start * SECTOR)
            .collect();
        starts.sort_unstable();
        starts
    } else {
        vec![0]
    };
    let mut free = Vec::new();
    for offset in offsets {
        free.extend(freemap::free_ranges(&file, offset).map_err(|e| ImageError::io(path, e))?);
    }
    Ok(free)
}

/// Copies the file `src` to `dst`, keeping it sparse (holes and zero blocks are not written).
pub fn copy_sparse(src: &Path, dst: &Path) -> Result<(), ImageError> {
    sparse::copy_file(src, dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_mode_round_trips() {
        for mode in [BootMode::Uefi, BootMode::Kernel, BootMode::None] {
            assert_eq!(mode.to_string().parse::<BootMode>().unwrap(), mode);
        }
        assert!("bios".parse::<BootMode>().is_err());
    }

    #[test]
    fn fstab_mounts_root_and_esp_by_uuid() {
        let text = fstab("abc", Some("1234-ABCD"));
        assert!(
            text.contains("UUID=abc / ext4 errors=remount-ro 0 1\n"),
            "{text}"
        );
        assert!(text.contains("UUID=1234-ABCD /boot/efi vfat"), "{text}");
        assert!(!fstab("abc", None).contains("/boot/efi"));
    }

    #[test]
    fn cmdline_uses_partuuid_and_serial_console_last() {
        let c = default_cmdline("p-u");
        assert!(c.starts_with("root=PARTUUID=p-u rw "), "{c}");
        assert!(c.ends_with("console=ttyS0,115200"), "{c}");
    }

    #[test]
    fn tree_parameters_go_between_root_and_consoles() {
        let tree = tempfile::tempdir().unwrap();
        let none = partition_cmdline(tree.path(), "p-u").unwrap();
        assert_eq!(none, default_cmdline("p-u"));
        std::fs::create_dir_all(tree.path().join("etc/kernel")).unwrap();
        std::fs::write(
            tree.path().join(KERNEL_CMDLINE_FILE),
            "# emulated machines\nroot=/dev/sda1 quiet\n  cryptomgr.notests=1\n",
        )
        .unwrap();
        let c = partition_cmdline(tree.path(), "p-u").unwrap();
        assert_eq!(
            c,
            "root=PARTUUID=p-u rw quiet cryptomgr.notests=1 console=tty0 console=ttyS0,115200"
        );
    }

    #[test]
    fn a_cmdline_link_out_of_the_tree_is_not_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("cmdline"), "evil=1").unwrap();
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("etc/kernel")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("cmdline"),
            tree.path().join(KERNEL_CMDLINE_FILE),
        )
        .unwrap();
        let c = partition_cmdline(tree.path(), "p-u").unwrap();
        assert!(!c.contains("evil"), "{c}");
    }

    fn input(name: &str, label: &str) -> PartitionInput {
        PartitionInput {
            name: name.into(),
            label: label.into(),
            rootfs: "/".into(),
            size: None,
        }
    }

    #[test]
    fn bad_names_and_labels_are_refused() {
        assert!(validate_partition(&input("root", "root")).is_ok());
        for (name, label) in [
            ("", "x"),
            ("a b", "x"),
            ("EFI", "x"),
            ("loader", "x"),
            (".hidden", "x"),
            ("ok", "seventeen-chars-x"),
            ("ok", "a\"b"),
        ] {
            assert!(
                validate_partition(&input(name, label)).is_err(),
                "{name} {label}"
            );
        }
    }
}
