//! [`QemuSandbox`]: build steps in a QEMU VM, behind [`kiln_sandbox::Sandbox`].
//!
//! A layer is `disk.qcow2` (one ext4 filesystem, no partition table) backed by its
//! parent's; a VM base also has `boot/` ([`BootFiles`]): the kernel, kiln's boot initramfs
//! and the command line. Each step boots the VM from its own overlay with kiln-init in
//! agent mode ([`crate::agent`]), runs the command, and powers the guest off cleanly, so
//! the overlay holds exactly what the step changed. Caches are extra qcow2 disks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kiln_image::tools::{debugfs, mke2fs, qemu_img};
use kiln_init::agent_proto::{self, ExitStatus, RunRequest, SecretFile};
use kiln_sandbox::{
    BootFiles, CopyEntry, DiskView, Outcome, Payload, RootFs, RunSpec, Sandbox, SandboxError,
};

use crate::accel::Accel;
use crate::agent::AgentVm;
use crate::error::VmError;
use crate::qemu::{pvh, Boot, ExtraDisk, Network, VmConfig};

/// The kernel command line a VM base boots with (the agent's parameters are added per
/// boot): the disk is the root, read-write, and the console is the first serial port.
pub const BASE_CMDLINE: &str = "root=/dev/vda rw console=ttyS0 quiet";
/// The virtual size of a new cache disk (sparse: it costs what is written).
pub const CACHE_DISK_SIZE: u64 = 16 << 30;
/// A cache disk's file inside its cache directory.
pub const CACHE_DISK: &str = "disk.qcow2";
const GIB: u64 = 1 << 30;

/// Runs steps in QEMU VMs.
#[derive(Debug, Clone)]
pub struct QemuSandbox {
    pub cpus: u32,
    pub memory_mb: u32,
    /// `None`: detected (KVM when it works, else TCG).
    pub accel: Option<Accel>,
    /// How long a guest may take to boot and report ready.
    pub ready_timeout: Duration,
    /// How long a guest may take to power off after a step.
    pub shutdown_grace: Duration,
    /// Set by kiln's Ctrl-C/SIGTERM handling: stops a running step (QEMU is killed and
    /// the run returns `Interrupted`).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for QemuSandbox {
    /// 2 CPUs, 1024 MiB, detected accelerator, 120 s to boot (TCG is slow), 30 s to stop.
    fn default() -> Self {
        QemuSandbox {
            cpus: 2,
            memory_mb: 1024,
            accel: None,
            ready_timeout: Duration::from_secs(120),
            shutdown_grace: Duration::from_secs(30),
            cancel: None,
        }
    }
}

impl QemuSandbox {
    /// The VM booting the step disk `disk` with the base's `boot` files.
    fn config(&self, disk: &Path, boot: &Path, params: &str) -> Result<VmConfig, SandboxError> {
        let cmdline_path = boot.join(BootFiles::CMDLINE);
        let base_cmdline = std::fs::read_to_string(&cmdline_path)
            .map_err(|e| SandboxError::sys(format!("reading {}", cmdline_path.display()), e))?;
        let mut cfg = VmConfig::with_image(
            Boot::Kernel {
                kernel: pvh::fastest_kernel(boot),
                initrd: Some(boot.join(BootFiles::INITRD)),
                // panic=-1 with -no-reboot: a guest that panics ends QEMU at once.
                cmdline: format!("{} {params} panic=-1", base_cmdline.trim()),
            },
            disk,
        );
        cfg.format = "qcow2".into();
        cfg.cpus = self.cpus;
        cfg.memory_mb = self.memory_mb;
        cfg.accel = self.accel;
        cfg.shutdown_grace = self.shutdown_grace;
        cfg.no_reboot = true;
        cfg.agent = true;
        Ok(cfg)
    }

    fn boot(&self, cfg: VmConfig) -> Result<AgentVm, SandboxError> {
        let mut vm = AgentVm::boot(cfg, self.ready_timeout).map_err(guest)?;
        if let Some(flag) = &self.cancel {
            vm.set_cancel_flag(flag.clone());
        }
        Ok(vm)
    }
}

/// A VM error as the sandbox reports it: guest failures keep their console lines.
pub(crate) fn guest(e: VmError) -> SandboxError {
    match e {
        VmError::Guest { what, console } => SandboxError::Guest { what, console },
        // Reported as the Ctrl-C it stands for, as the namespace sandbox does.
        VmError::Cancelled => SandboxError::Interrupted {
            signal: libc::SIGINT,
        },
        VmError::QemuExited { .. } | VmError::ConsoleTimeout { .. } => SandboxError::Guest {
            what: e.to_string(),
            console: String::new(),
        },
        other => SandboxError::Setup(other.to_string()),
    }
}

fn image_error(e: kiln_image::ImageError) -> SandboxError {
    SandboxError::Setup(e.to_string())
}

fn disk_root(root: &RootFs) -> Result<(&Path, &Path), SandboxError> {
    match root {
        RootFs::Disk { disk, boot } => Ok((disk, boot)),
        _ => Err(SandboxError::Unsupported(
            "a root other than a VM disk in the QEMU sandbox",
        )),
    }
}

impl Sandbox for QemuSandbox {
    fn run(&self, spec: &RunSpec, output: &mut dyn Write) -> Result<Outcome, SandboxError> {
        let (disk, boot) = disk_root(&spec.root)?;
        if let Some(base) = crate::ssh_runner::ssh_base(boot)? {
            return self.ssh_run(&base, disk, boot, spec, output);
        }
        let mut params = format!(
            "{} kiln.hostname={}",
            agent_proto::CMDLINE_FLAG,
            spec.hostname
        );
        if spec.host_network {
            params.push_str(" kiln.net=user");
        }
        let mut cfg = self.config(disk, boot, &params)?;
        cfg.network = if spec.host_network {
            Network::Full
        } else {
            Network::Restricted
        };
        let mut mounts = Vec::new();
        for (i, m) in spec.mounts.iter().enumerate() {
            let path = cache_disk(&m.source)?;
            cfg.extra_disks.push(ExtraDisk {
                path,
                format: "qcow2".into(),
            });
            mounts.push(agent_proto::Mount {
                // vda is the root; the caches follow in order.
                device: format!("/dev/vd{}", (b'b' + i as u8) as char),
                target: m.target.clone(),
                fstype: "ext4".into(),
            });
        }
        let req = RunRequest {
            argv: spec.argv.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid,
            gid: spec.gid,
            mounts,
            secrets: spec
                .secrets
                .iter()
                .map(|s| SecretFile {
                    target: s.target.clone(),
                    value: s.value.clone(),
                })
                .collect(),
            stdin: false,
        };
        let mut vm = self.boot(cfg)?;
        // `kiln shell --sandbox qemu`: kiln's stdin goes to the command.
        let stdin: Option<Box<dyn std::io::Read + Send>> = match spec.interactive {
            true => Some(Box::new(std::io::stdin())),
            false => None,
        };
        let status = vm.run(&req, output, stdin).map_err(guest)?;
        vm.shutdown().map_err(guest)?;
        Ok(match status {
            ExitStatus::Code(c) => Outcome::Exited(c),
            ExitStatus::Signal(s) => Outcome::Signalled(s),
        })
    }

    fn payload(&self) -> Payload {
        Payload::Disk
    }

    /// The agent (kiln-init) decides what a step leaves on the disk, and is in every
    /// base's initramfs: a new build of it makes new bases.
    fn base_key(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(kiln_init::BINARY);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("kiln-init sha256:{hex}")
    }

    fn make_base(
        &self,
        tree: &Path,
        kernel_tree: &Path,
        dest: &Path,
        output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        let _ = writeln!(output, "kiln: making the VM disk from {}", tree.display());
        make_root_disk(tree, &dest.join("disk.qcow2"))?;
        let _ = writeln!(
            output,
            "kiln: taking the kernel from {}",
            kernel_tree.display()
        );
        let release = write_boot_files(kernel_tree, &dest.join("boot"))?;
        let _ = writeln!(output, "kiln: VM base ready (kernel {release})");
        Ok(())
    }

    fn make_disk(&self, parent: &Path, disk: &Path, flatten: bool) -> Result<(), SandboxError> {
        if flatten {
            // `parent` is relative to the disk's directory, as QEMU resolves backing files.
            let dir = disk.parent().unwrap_or(Path::new("."));
            qemu_img::convert_format(&dir.join(parent), "qcow2", disk, "qcow2")
        } else {
            qemu_img::create_overlay(parent, "qcow2", disk)
        }
        .map_err(image_error)
    }

    fn copy_in(
        &self,
        root: &RootFs,
        entries: &[CopyEntry],
        uid: u32,
        gid: u32,
        output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        let (disk, boot) = disk_root(root)?;
        let _ = writeln!(
            output,
            "kiln: copying {} entries into the VM disk",
            entries.len()
        );
        if let Some(base) = crate::ssh_runner::ssh_base(boot)? {
            return self.ssh_copy_in(&base, disk, boot, entries, uid, gid);
        }
        let cfg = self.config(disk, boot, agent_proto::CMDLINE_FLAG)?;
        let mut vm = self.boot(cfg)?;
        vm.put(entries, uid, gid).map_err(guest)?;
        vm.shutdown().map_err(guest)
    }

    fn open_disk(&self, disk: &Path, scratch: &Path) -> Result<DiskView, SandboxError> {
        crate::disk_view::open(disk, scratch)
    }
}

/// `dest`: a qcow2 disk holding one ext4 filesystem with exactly `tree` in it.
fn make_root_disk(tree: &Path, dest: &Path) -> Result<(), SandboxError> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".kiln-disk-")
        .tempdir_in(dir)
        .map_err(|e| {
            SandboxError::sys(format!("creating a work directory in {}", dir.display()), e)
        })?;
    let (bytes, inodes) = tree_usage(tree)?;
    // Room for the step's own writes: the disk is sparse, so headroom costs nothing.
    let size = (2 * bytes + GIB).div_ceil(mke2fs::BLOCK_SIZE) * mke2fs::BLOCK_SIZE;
    let raw = work.path().join("disk.raw");
    make_ext4(tree, &raw, size, 2 * inodes + 65536, work.path())?;
    if !tree.join("lost+found").exists() {
        // mke2fs adds it; the disk must hold exactly the tree.
        debugfs::run_script(&raw, 0, b"rmdir lost+found\n", work.path()).map_err(image_error)?;
    }
    qemu_img::convert(&raw, dest, "qcow2", false).map_err(image_error)
}

/// A sparse raw file of `size` bytes with an ext4 filesystem filled from `source`.
fn make_ext4(
    source: &Path,
    raw: &Path,
    size: u64,
    inodes: u64,
    work: &Path,
) -> Result<(), SandboxError> {
    let file = std::fs::File::create(raw)
        .and_then(|f| f.set_len(size))
        .map_err(|e| SandboxError::sys(format!("creating {}", raw.display()), e));
    file?;
    let uuid = random_uuid()?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    mke2fs::make_ext4(&mke2fs::Ext4Options {
        source,
        image: raw,
        offset: 0,
        size,
        uuid: &uuid,
        hash_seed: &uuid,
        label: "kiln-root",
        inodes,
        now,
        work_dir: work,
    })
    .map_err(image_error)
}

fn random_uuid() -> Result<String, SandboxError> {
    let path = "/proc/sys/kernel/random/uuid";
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| SandboxError::sys(format!("reading {path}"), e))
}

/// Bytes allocated and entries in `tree` (not following symlinks).
fn tree_usage(tree: &Path) -> Result<(u64, u64), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    let mut bytes = 0;
    let mut entries = 0;
    let mut pending = vec![tree.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let list = std::fs::read_dir(&dir)
            .map_err(|e| SandboxError::sys(format!("listing {}", dir.display()), e))?;
        for entry in list {
            let entry =
                entry.map_err(|e| SandboxError::sys(format!("listing {}", dir.display()), e))?;
            let meta = entry
                .metadata()
                .map_err(|e| SandboxError::sys(format!("{}", entry.path().display()), e))?;
            bytes += meta.blocks() * 512;
            entries += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            }
        }
    }
    Ok((bytes, entries))
}

/// Writes the base's `boot/`: the kernel (`vmlinux` when it has a PVH entry, and always
/// `vmlinuz`), kiln's boot initramfs for it, and [`BASE_CMDLINE`]. Returns the release.
fn write_boot_files(kernel_tree: &Path, boot: &Path) -> Result<String, SandboxError> {
    let files = kiln_image::kernel::find_kernel(kernel_tree)
        .map_err(image_error)?
        .ok_or_else(|| {
            SandboxError::Setup(format!(
                "{} has no kernel in /boot: install one (e.g. linux-image-amd64) in the base",
                kernel_tree.display()
            ))
        })?;
    std::fs::create_dir_all(boot)
        .map_err(|e| SandboxError::sys(format!("creating {}", boot.display()), e))?;
    let extracted =
        kiln_image::kernel::extract(&files, kernel_tree, boot, 0).map_err(image_error)?;
    // The distribution's initrd is not used: kiln's own takes its place below.
    if let Some(initrd) = extracted.initrd {
        let _ = std::fs::remove_file(initrd);
    }
    let vmlinux = boot.join(BootFiles::VMLINUX);
    if extracted.vmlinux.is_some() && !pvh::has_pvh_entry(&vmlinux).unwrap_or(false) {
        let _ = std::fs::remove_file(&vmlinux);
    }
    kiln_image::boot_initrd::write(
        kernel_tree,
        &files.release,
        &boot.join(BootFiles::INITRD),
        0,
    )
    .map_err(image_error)?;
    let cmdline = boot.join(BootFiles::CMDLINE);
    std::fs::write(&cmdline, format!("{BASE_CMDLINE}\n"))
        .map_err(|e| SandboxError::sys(format!("writing {}", cmdline.display()), e))?;
    Ok(files.release)
}

/// The cache directory's disk, made (empty ext4, sparse) on first use.
pub(crate) fn cache_disk(dir: &Path) -> Result<PathBuf, SandboxError> {
    let disk = dir.join(CACHE_DISK);
    if disk.is_file() {
        return Ok(disk);
    }
    std::fs::create_dir_all(dir)
        .map_err(|e| SandboxError::sys(format!("creating {}", dir.display()), e))?;
    let work = tempfile::Builder::new()
        .prefix(".kiln-cache-")
        .tempdir_in(dir)
        .map_err(|e| {
            SandboxError::sys(format!("creating a work directory in {}", dir.display()), e)
        })?;
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty)
        .map_err(|e| SandboxError::sys(format!("creating {}", empty.display()), e))?;
    let raw = work.path().join("disk.raw");
    // Few inodes: mke2fs writes every inode table up front.
    make_ext4(&empty, &raw, CACHE_DISK_SIZE, 1 << 18, work.path())?;
    let tmp = work.path().join(CACHE_DISK);
    qemu_img::convert(&raw, &tmp, "qcow2", false).map_err(image_error)?;
    std::fs::rename(&tmp, &disk).map_err(|e| {
        SandboxError::sys(format!("moving the cache disk to {}", disk.display()), e)
    })?;
    Ok(disk)
}
