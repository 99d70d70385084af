//! `kiln run` and `kiln test`: boot an image under QEMU, interactively or against the
//! spec's `(test …)` checks.

use crate::cli::{InitrdArg, RunArgs, TestArgs};
use anyhow::{bail, Context};
use kiln_vm::{Boot, ConsoleMode, Forward, VmConfig};
use std::path::Path;
use std::process::ExitCode;

/// How an image boots, from its manifest (`IMAGE.manifest.json`) and, for
/// `--boot kernel` images, the kernel, initrd and cmdline in `IMAGE.boot/` (the
/// uncompressed `vmlinux` when QEMU can enter it directly: it starts seconds sooner
/// under TCG than `vmlinuz`, which decompresses itself first), booted with kiln's
/// initramfs unless `initrd` asks for the image's own.
fn boot_of(image: &Path, initrd: InitrdArg) -> anyhow::Result<Boot> {
    let manifest_path = kiln_image::manifest::manifest_path(image);
    let boot = if manifest_path.exists() {
        kiln_image::manifest::read_manifest(&manifest_path)?.boot
    } else {
        // Not made by kiln: assume a UEFI disk, the most common kind today.
        "uefi".to_string()
    };
    Ok(match boot.as_str() {
        "kernel" => {
            let dir = crate::cmd_image::boot_dir(image);
            let cmdline = std::fs::read_to_string(dir.join("cmdline")).with_context(|| {
                format!(
                    "{}: the kernel command line of this --boot kernel image",
                    dir.display()
                )
            })?;
            let kiln = dir.join(crate::cmd_image::KILN_INITRD);
            let own = dir.join("initrd.img");
            let initrd = match initrd {
                InitrdArg::Kiln if kiln.exists() => Some(kiln),
                _ => own.exists().then_some(own),
            };
            Boot::Kernel {
                kernel: kiln_vm::qemu::pvh::fastest_kernel(&dir),
                initrd,
                cmdline: cmdline.trim().to_string(),
            }
        }
        "uefi" => Boot::Uefi,
        other => bail!(
            "{}: an image with boot `{other}` cannot be booted",
            image.display()
        ),
    })
}

fn config(image: &Path, initrd: InitrdArg) -> anyhow::Result<VmConfig> {
    if !image.exists() {
        bail!("{} does not exist", image.display());
    }
    Ok(VmConfig::with_image(boot_of(image, initrd)?, image))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut cfg = config(&args.image, args.initrd)?;
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
    eprintln!(
        "kiln: booting {} (serial console below; Ctrl-A X quits)",
        args.image.display()
    );
    let vm = kiln_vm::Vm::start(cfg)?;
    let status = vm.wait();
    Ok(if status.success() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
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
) -> anyhow::Result<ExitCode> {
    let mut cfg = config(image, initrd)?;
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
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
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
