//! `kiln run` and `kiln test`: boot an image under QEMU, interactively or against the
//! spec's `(test …)` checks.

use crate::cli::{FirmwareArg, InitrdArg, NetworkArg, RunArgs, TestArgs};
use anyhow::{bail, Context};
use kiln_vm::{Boot, ConsoleMode, ExtraDisk, Forward, Network, VmConfig};
use std::path::Path;
use std::process::ExitCode;

/// The two ways `kiln run`/`kiln test` start an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BootKind {
    /// The kernel, initramfs and cmdline staged in `IMAGE.boot/`, entered directly.
    Kernel,
    /// OVMF, then the image's own ESP (systemd-boot).
    Uefi,
}

/// Which boot `flag` picks for an image whose manifest says `manifest_boot`, with or
/// without an `IMAGE.boot/` (`boot_dir`) beside it. Pure: the caller looks at the files.
fn choose_boot(
    image: &Path,
    manifest_boot: &str,
    boot_dir: &Path,
    has_boot_dir: bool,
    flag: FirmwareArg,
) -> anyhow::Result<BootKind> {
    let missing = || {
        anyhow::anyhow!(
            "{} does not exist: it holds the kernel, initramfs and cmdline a direct boot \
             of {} needs. `kiln build -o IMAGE` and `kiln export` write it for --boot \
             kernel images and for --boot uefi images of kiln-init's architecture; \
             rebuild the image, or use --firmware auto",
            boot_dir.display(),
            image.display()
        )
    };
    match (flag, manifest_boot) {
        (FirmwareArg::Bios, _) => bail!(
            "--firmware bios: kiln images have no legacy (BIOS) boot loader, only an ESP \
             with systemd-boot (--boot uefi) or none; use --firmware auto, uefi or kernel"
        ),
        (FirmwareArg::Uefi, "uefi") => Ok(BootKind::Uefi),
        (FirmwareArg::Uefi, other) => bail!(
            "{}: --firmware uefi needs an ESP, and this is a --boot {other} image, which \
             has none; use --firmware auto, or rebuild it with --boot uefi",
            image.display()
        ),
        (FirmwareArg::Kernel | FirmwareArg::Auto, _) if has_boot_dir => Ok(BootKind::Kernel),
        (FirmwareArg::Kernel, _) | (FirmwareArg::Auto, "kernel") => Err(missing()),
        (FirmwareArg::Auto, "uefi") => Ok(BootKind::Uefi),
        (FirmwareArg::Auto, other) => bail!(
            "{}: an image with boot `{other}` cannot be booted (it has neither an ESP nor \
             {}); rebuild it with --boot uefi or --boot kernel",
            image.display(),
            boot_dir.display()
        ),
    }
}

/// How an image boots, from its manifest (`IMAGE.manifest.json`), the `IMAGE.boot/`
/// beside it and `firmware`; and a one-line description of that boot for the output.
/// A direct boot enters the uncompressed `vmlinux` when QEMU can (it starts seconds
/// sooner under TCG than `vmlinuz`, which decompresses itself first), with kiln's
/// initramfs unless `initrd` asks for the image's own.
fn boot_of(
    image: &Path,
    initrd: InitrdArg,
    firmware: FirmwareArg,
) -> anyhow::Result<(Boot, String)> {
    let manifest_path = kiln_image::manifest::manifest_path(image);
    let manifest_boot = if manifest_path.exists() {
        kiln_image::manifest::read_manifest(&manifest_path)?.boot
    } else {
        // Not made by kiln: assume a UEFI disk, the most common kind today.
        "uefi".to_string()
    };
    let dir = crate::cmd_image::boot_dir(image);
    match choose_boot(image, &manifest_boot, &dir, dir.is_dir(), firmware)? {
        BootKind::Uefi => Ok((Boot::Uefi, "uefi (OVMF, the image's systemd-boot)".into())),
        BootKind::Kernel => direct_boot(&dir, initrd),
    }
}

/// The direct boot from `dir` (`IMAGE.boot/`) and its description.
fn direct_boot(dir: &Path, initrd: InitrdArg) -> anyhow::Result<(Boot, String)> {
    let cmdline = std::fs::read_to_string(dir.join("cmdline")).with_context(|| {
        format!(
            "{}: the kernel command line of a direct boot",
            dir.display()
        )
    })?;
    let kiln = dir.join(crate::cmd_image::KILN_INITRD);
    let own = dir.join("initrd.img");
    let (initrd, init) = match initrd {
        InitrdArg::Kiln if kiln.exists() => (Some(kiln), "kiln-init"),
        _ if own.exists() => (Some(own), "the image's initrd"),
        _ => (None, "no initrd"),
    };
    let kernel = kiln_vm::qemu::pvh::fastest_kernel(dir);
    let entry = match kernel.file_name().and_then(|n| n.to_str()) {
        Some("vmlinux") => "PVH vmlinux",
        _ => "vmlinuz",
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let described = format!("kernel ({name}, {entry}, {init})");
    let boot = Boot::Kernel {
        kernel,
        initrd,
        cmdline: cmdline.trim().to_string(),
    };
    Ok((boot, described))
}

/// The boot of an app directory (`kiln appliance`: `cmdline`, `initrd.cpio*`, a kernel),
/// with `append` added to its command line; `None` when `dir` is not one.
pub fn app_dir_boot(
    dir: &Path,
    append: Option<&str>,
) -> anyhow::Result<Option<(VmConfig, String)>> {
    if !dir.is_dir() || !dir.join("cmdline").is_file() {
        return Ok(None);
    }
    let initrd = ["initrd.cpio.zst", "initrd.cpio.gz", "initrd.cpio"]
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "{}: an app directory without initrd.cpio[.zst|.gz]",
                dir.display()
            )
        })?;
    let mut cmdline = std::fs::read_to_string(dir.join("cmdline"))
        .with_context(|| format!("{}/cmdline", dir.display()))?
        .trim()
        .to_string();
    if let Some(extra) = append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let kernel = kiln_vm::qemu::pvh::fastest_kernel(dir);
    if !kernel.is_file() {
        bail!("{}: an app directory without vmlinuz", dir.display());
    }
    let described = format!(
        "appliance ({}, {})",
        kernel.file_name().unwrap_or_default().to_string_lossy(),
        initrd.file_name().unwrap_or_default().to_string_lossy()
    );
    let boot = Boot::Kernel {
        kernel,
        initrd: Some(initrd),
        cmdline,
    };
    Ok(Some((VmConfig::new(boot), described)))
}

fn config(
    image: &Path,
    initrd: InitrdArg,
    firmware: FirmwareArg,
) -> anyhow::Result<(VmConfig, String)> {
    if !image.exists() {
        bail!("{} does not exist", image.display());
    }
    let (boot, described) = boot_of(image, initrd, firmware)?;
    Ok((VmConfig::with_image(boot, image), described))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let (mut cfg, described) = match app_dir_boot(&args.image, args.append.as_deref())? {
        Some(found) => found,
        None => {
            if args.append.is_some() {
                bail!("--append is for app directories (kiln appliance); a disk image boots its own command line");
            }
            config(&args.image, args.initrd, args.firmware)?
        }
    };
    cfg.memory_mb = args.memory;
    cfg.cpus = args.cpus;
    cfg.snapshot = args.snapshot;
    cfg.serial_log = args.serial_log.clone();
    cfg.console = ConsoleMode::Interactive;
    for p in &args.publish {
        let (host, guest) = p
            .split_once(':')
            .and_then(|(h, g)| Some((h.parse::<u16>().ok()?, g.parse::<u16>().ok()?)))
            .with_context(|| format!("-p {p}: expected HOST:GUEST ports, e.g. 8080:80"))?;
        cfg.forwards.push(Forward { host, guest });
    }
    for disk in &args.disks {
        cfg.extra_disks.push(extra_disk(disk)?);
    }
    if args.network == Some(NetworkArg::Host) {
        cfg.network = Network::Full;
    }
    eprintln!(
        "kiln: booting {} (serial console below; Ctrl-A X quits)",
        args.image.display()
    );
    eprintln!("boot: {described}");
    let vm = kiln_vm::Vm::start(cfg)?;
    let status = vm.wait();
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `--disk FILE`: qcow2 when the file says so (its magic), else raw.
fn extra_disk(path: &Path) -> anyhow::Result<ExtraDisk> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut file =
        std::fs::File::open(path).with_context(|| format!("--disk {}", path.display()))?;
    let read = file.read(&mut magic).unwrap_or(0);
    let format = if read == 4 && magic == *b"QFI\xfb" {
        "qcow2"
    } else {
        "raw"
    };
    Ok(ExtraDisk {
        path: path.to_path_buf(),
        format: format.into(),
    })
}

pub fn test(args: TestArgs) -> anyhow::Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading spec {}", args.file.display()))?;
    let spec = kiln_spec::parse_file(&text, &args.file.display().to_string())?;
    let Some(test) = spec.test else {
        bail!(
            "{} has no (test …) form: add checks, e.g. (test (port (port 22)))",
            args.file.display()
        );
    };
    run_checks(
        &args.image,
        &test.value,
        args.junit.as_deref(),
        args.serial_log.as_deref(),
        args.json,
        args.initrd,
        args.firmware,
    )
}

/// Boots `image`, runs `test`'s checks, prints a report; exit 1 if any check failed.
pub fn run_checks(
    image: &Path,
    test: &kiln_spec::TestSpec,
    junit: Option<&Path>,
    serial_log: Option<&Path>,
    json: bool,
    initrd: InitrdArg,
    firmware: FirmwareArg,
) -> anyhow::Result<ExitCode> {
    let (mut cfg, described) = config(image, initrd, firmware)?;
    cfg.snapshot = true;
    cfg.serial_log = serial_log.map(Path::to_path_buf);
    let report = kiln_vm::run_test(cfg, test)?;
    if let Some(path) = junit {
        let suite = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        kiln_vm::junit::write_junit(&report, &suite, path)?;
    }
    if json {
        let mut value = serde_json::to_value(&report)?;
        if let Some(fields) = value.as_object_mut() {
            fields.insert("boot".into(), described.into());
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("boot: {described}");
        print_report(&report);
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_report(report: &kiln_vm::TestReport) {
    for c in &report.checks {
        if c.passed {
            println!("PASS {} ({:.1} s)", c.name, c.elapsed.as_secs_f64());
        } else {
            println!(
                "FAIL {} ({:.1} s): {}",
                c.name,
                c.elapsed.as_secs_f64(),
                c.message
            );
        }
    }
    match report.boot_time {
        Some(t) => println!(
            "boot to first passing check: {:.1} s ({})",
            t.as_secs_f64(),
            report.accel.as_str()
        ),
        None => println!("no check passed ({})", report.accel.as_str()),
    }
    let failed = report.failures();
    println!("{} passed, {} failed", report.checks.len() - failed, failed);
    if failed > 0 && !report.serial_log_tail.is_empty() {
        println!(
            "--- last lines of the serial console ---\n{}",
            report.serial_log_tail
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The choice for an image booting `manifest_boot`, with or without IMAGE.boot/.
    fn choice(manifest_boot: &str, has_dir: bool, flag: FirmwareArg) -> Result<BootKind, String> {
        let (image, dir) = (Path::new("web.qcow2"), Path::new("web.qcow2.boot"));
        choose_boot(image, manifest_boot, dir, has_dir, flag).map_err(|e| e.to_string())
    }

    #[test]
    fn auto_boots_the_staged_kernel_when_there_is_one() {
        use BootKind::*;
        assert_eq!(choice("uefi", true, FirmwareArg::Auto), Ok(Kernel));
        assert_eq!(choice("uefi", false, FirmwareArg::Auto), Ok(Uefi));
        assert_eq!(choice("kernel", true, FirmwareArg::Auto), Ok(Kernel));
    }

    #[test]
    fn explicit_firmware_is_obeyed_or_refused_with_the_reason() {
        use BootKind::*;
        assert_eq!(choice("uefi", true, FirmwareArg::Uefi), Ok(Uefi));
        assert_eq!(choice("uefi", true, FirmwareArg::Kernel), Ok(Kernel));
        assert_eq!(choice("kernel", true, FirmwareArg::Kernel), Ok(Kernel));
        let no_esp = choice("kernel", true, FirmwareArg::Uefi).unwrap_err();
        assert!(
            no_esp.contains("--boot kernel image, which has none"),
            "{no_esp}"
        );
        let no_esp = choice("none", false, FirmwareArg::Uefi).unwrap_err();
        assert!(no_esp.contains("--boot none image"), "{no_esp}");
        for manifest_boot in ["uefi", "kernel"] {
            let bios = choice(manifest_boot, true, FirmwareArg::Bios).unwrap_err();
            assert!(bios.contains("no legacy (BIOS) boot loader"), "{bios}");
        }
    }

    #[test]
    fn a_missing_boot_dir_is_named_with_how_to_get_it() {
        for (manifest_boot, flag) in [
            ("uefi", FirmwareArg::Kernel),
            ("kernel", FirmwareArg::Kernel),
            ("kernel", FirmwareArg::Auto),
        ] {
            let e = choice(manifest_boot, false, flag).unwrap_err();
            assert!(
                e.starts_with("web.qcow2.boot does not exist") && e.contains("kiln build -o"),
                "{e}"
            );
        }
        let none = choice("none", false, FirmwareArg::Auto).unwrap_err();
        assert!(none.contains("cannot be booted"), "{none}");
    }
}
