//! The wrapper around `qemu-system-x86_64`: what a VM is made of ([`VmConfig`]),
//! how that becomes a command line, and the running VM ([`Vm`]).
//!
//! Submodules: `args` (pure command-line building), `process` (the supervised
//! QEMU child), `console` (the captured serial console), `qmp` (the control
//! socket), `vm` (the lifecycle tying them together).

mod args;
mod console;
mod process;
pub mod pvh;
mod qmp;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::accel::Accel;
use crate::error::{Result, VmError};

pub(crate) use args::escape_opt;
pub use console::clean_text;
pub use qmp::GuestSocket;
pub use vm::Vm;

/// The QEMU binary used when the configuration names none.
pub const DEFAULT_QEMU: &str = "qemu-system-x86_64";

/// Where Debian's `ovmf` package puts the firmware, preferred first.
const OVMF_CANDIDATES: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Everything needed to boot one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The disk image, attached as a virtio-blk drive. `None` boots without a
    /// disk (a kernel with an initramfs that holds the whole system).
    pub image: Option<PathBuf>,
    /// The image's format as QEMU names it (`raw`, `qcow2`, `vmdk`, …).
    pub format: String,
    pub boot: Boot,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Host ports forwarded to guest ports (TCP, loopback only).
    pub forwards: Vec<Forward>,
    /// Writes go to a temporary overlay; the image file never changes.
    pub snapshot: bool,
    /// Also append everything the serial console prints to this file.
    pub serial_log: Option<PathBuf>,
    pub console: ConsoleMode,
    /// `None`: detect (see [`crate::accel::detection`]).
    pub accel: Option<Accel>,
    /// The QEMU binary: a name looked up in `PATH`, or a path.
    pub qemu: PathBuf,
    /// UEFI firmware; `None`: Debian's OVMF.
    pub firmware: Option<Firmware>,
    /// How long [`Vm::shutdown`] lets the guest power off before killing QEMU.
    pub shutdown_grace: Duration,
    /// A virtio-serial port named `kiln.agent` (kiln-init's agent mode), backed by a
    /// unix socket in the VM's temporary directory ([`Vm::agent_socket`]).
    pub agent: bool,
    /// More virtio disks after `image` (`/dev/vdb`, `/dev/vdc`, … in a Linux guest).
    pub extra_disks: Vec<ExtraDisk>,
    pub network: Network,
    /// QEMU exits when the guest reboots (a panicking guest with `panic=-1` stops at once).
    pub no_reboot: bool,
}

/// One more disk attached to the VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraDisk {
    pub path: PathBuf,
    /// QEMU's format name (`qcow2`, `raw`).
    pub format: String,
}

/// What the guest's user-mode network reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// `restrict=on`: nothing outside the VM, only the forwarded ports come in.
    #[default]
    Restricted,
    /// Everything the host reaches, the host's loopback as 10.0.2.2 included.
    Full,
}

impl VmConfig {
    /// A configuration with the defaults: 1024 MiB, 2 CPUs, no forwards,
    /// captured console, detected accelerator, Debian's QEMU and firmware.
    pub fn new(boot: Boot) -> Self {
        VmConfig {
            image: None,
            format: "raw".into(),
            boot,
            memory_mb: 1024,
            cpus: 2,
            forwards: Vec::new(),
            snapshot: false,
            serial_log: None,
            console: ConsoleMode::Capture,
            accel: None,
            qemu: PathBuf::from(DEFAULT_QEMU),
            firmware: None,
            shutdown_grace: Duration::from_secs(30),
            agent: false,
            extra_disks: Vec::new(),
            network: Network::Restricted,
            no_reboot: false,
        }
    }

    /// A configuration booting `image`, its format guessed from its extension.
    pub fn with_image(boot: Boot, image: impl Into<PathBuf>) -> Self {
        let image = image.into();
        let mut cfg = VmConfig::new(boot);
        cfg.format = format_from_extension(&image).to_string();
        cfg.image = Some(image);
        cfg
    }

    /// Adds a forward unless one already targets `guest`.
    pub fn ensure_forward(&mut self, guest: u16) {
        if !self.forwards.iter().any(|f| f.guest == guest) {
            self.forwards.push(Forward { host: 0, guest });
        }
    }
}

/// How the VM boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// OVMF firmware (code read-only, a private copy of the variable store).
    Uefi,
    /// QEMU loads the kernel and initrd itself; no bootloader (gem5 style).
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        cmdline: String,
    },
    /// Legacy BIOS (SeaBIOS) boot from the disk.
    Disk,
}

/// A TCP port forward from `127.0.0.1:host` to the guest's `guest` port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    /// 0: QEMU binds a free loopback port (see [`Vm::host_port`]).
    pub host: u16,
    pub guest: u16,
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleMode {
    /// Read by [`Vm`] (for waits and checks), and logged when asked.
    #[default]
    Capture,
    /// On the terminal, multiplexed with QEMU's monitor: Ctrl-A X quits.
    Interactive,
}

/// UEFI firmware: code (mapped read-only) and the variable store template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub code: PathBuf,
    pub vars: PathBuf,
}

impl Firmware {
    /// Debian's OVMF, or an error naming the `ovmf` package.
    pub fn locate() -> Result<Firmware> {
        OVMF_CANDIDATES
            .iter()
            .map(|(code, vars)| Firmware {
                code: code.into(),
                vars: vars.into(),
            })
            .find(|fw| fw.code.is_file() && fw.vars.is_file())
            .ok_or_else(|| VmError::FirmwareMissing {
                path: PathBuf::from(OVMF_CANDIDATES[0].0),
            })
    }

    /// Checks that both files exist.
    fn verify(&self) -> Result<()> {
        for path in [&self.code, &self.vars] {
            if !path.is_file() {
                return Err(VmError::FirmwareMissing { path: path.clone() });
            }
        }
        Ok(())
    }
}

/// QEMU's name for an image format, from the file's extension (`raw` otherwise).
pub fn format_from_extension(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("qcow2") | Some("qcow") => "qcow2",
        Some("vmdk") => "vmdk",
        Some("vhdx") => "vhdx",
        Some("vdi") => "vdi",
        Some("vpc") | Some("vhd") => "vpc",
        _ => "raw",
    }
}

/// Resolves the QEMU binary, or says which Debian package provides it.
pub fn locate_qemu(cfg: &VmConfig) -> Result<PathBuf> {
    let name = &cfg.qemu;
    let uefi_hint = if cfg.boot == Boot::Uefi {
        " (and `apt-get install ovmf` for UEFI boot)"
    } else {
        ""
    };
    let missing = |where_| VmError::QemuMissing {
        binary: name.clone(),
        where_,
        uefi_hint,
    };
    if name.components().count() > 1 {
        return if is_executable(name) {
            Ok(name.clone())
        } else {
            Err(missing(" at that path"))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| missing(" in PATH"))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Checks what QEMU itself would only report later, less clearly.
fn validate(cfg: &VmConfig) -> Result<()> {
    if cfg.memory_mb < 16 {
        return Err(VmError::Config(format!(
            "memory of {} MiB is too small: give at least 16 MiB",
            cfg.memory_mb
        )));
    }
    if cfg.cpus == 0 {
        return Err(VmError::Config("0 CPUs: give at least 1".into()));
    }
    match (&cfg.boot, &cfg.image) {
        (Boot::Disk, None) => {
            return Err(VmError::Config(
                "booting from disk needs a disk image".into(),
            ))
        }
        (Boot::Kernel { kernel, initrd, .. }, _) => {
            for path in std::iter::once(kernel).chain(initrd) {
                if !path.is_file() {
                    return Err(VmError::Config(format!(
                        "{} does not exist: give the kernel (and initrd) extracted from the image",
                        path.display()
                    )));
                }
            }
        }
        _ => {}
    }
    for disk in &cfg.extra_disks {
        if !disk.path.is_file() {
            return Err(VmError::Config(format!(
                "extra disk {} does not exist",
                disk.path.display()
            )));
        }
    }
    if let Some(image) = &cfg.image {
        if !image.is_file() {
            return Err(VmError::Config(format!(
                "disk image {} does not exist",
                image.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_follow_extensions() {
        assert_eq!(format_from_extension(Path::new("a/web.QCOW2")), "qcow2");
        assert_eq!(format_from_extension(Path::new("web.vhdx")), "vhdx");
        assert_eq!(format_from_extension(Path::new("web.img")), "raw");
        assert_eq!(format_from_extension(Path::new("web")), "raw");
    }

    #[test]
    fn missing_binary_names_packages() {
        let mut cfg = VmConfig::new(Boot::Uefi);
        cfg.qemu = "/nonexistent/qemu-system-x86_64".into();
        let msg = locate_qemu(&cfg).unwrap_err().to_string();
        assert!(msg.contains("qemu-system-x86"), "{msg}");
        assert!(msg.contains("ovmf"), "{msg}");
        cfg.boot = Boot::Disk;
        cfg.qemu = "kiln-no-such-qemu".into();
        let msg = locate_qemu(&cfg).unwrap_err().to_string();
        assert!(msg.contains("in PATH") && !msg.contains("ovmf"), "{msg}");
    }

    #[test]
    fn validation_catches_missing_pieces() {
        let cfg = VmConfig::new(Boot::Disk);
        assert!(validate(&cfg)
            .unwrap_err()
            .to_string()
            .contains("disk image"));
        let cfg = VmConfig::new(Boot::Kernel {
            kernel: "/nonexistent/vmlinuz".into(),
            initrd: None,
            cmdline: String::new(),
        });
        assert!(validate(&cfg).unwrap_err().to_string().contains("vmlinuz"));
        let mut cfg = VmConfig::new(Boot::Uefi);
        cfg.cpus = 0;
        assert!(validate(&cfg).is_err());
    }

    #[test]
    fn missing_firmware_names_ovmf() {
        let fw = Firmware {
            code: "/nonexistent/CODE.fd".into(),
            vars: "/nonexistent/VARS.fd".into(),
        };
        assert!(fw.verify().unwrap_err().to_string().contains("ovmf"));
    }
}
