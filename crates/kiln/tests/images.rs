//! Disk images end to end: the bundled examples built into images, checked with
//! qemu-img/sfdisk/e2fsck, booted under QEMU (TCG here) and tested with their own
//! `(test …)` forms. Shares the Debian store with tests/debian.rs's kind of tests.

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

fn manifest(image: &Path) -> serde_json::Value {
    let mut p = image.as_os_str().to_owned();
    p.push(".manifest.json");
    serde_json::from_slice(&std::fs::read(PathBuf::from(p)).expect("manifest next to the image"))
        .expect("manifest is JSON")
}

#[test]
fn webserver_example_boots_under_uefi_and_serves_its_page() {
    let store = shared_store();
    let dir = test_dir("web-image");
    let image = dir.join("web.qcow2");
    let ex = example("webserver");
    let junit = dir.join("junit.xml");
    let run = kiln(
        &store,
        &ex,
        &[
            "build",
            "-f",
            "web.spec",
            ".",
            "-o",
            image.to_str().unwrap(),
            "--test",
            "--junit",
            junit.to_str().unwrap(),
        ],
    )
    .ok();
    // The export staged web.qcow2.boot/, so --test entered its kernel directly.
    assert!(
        run.stdout
            .contains("boot: kernel (web.qcow2.boot, PVH vmlinux, kiln-init)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("PASS cloud-page"), "{}", run.stdout);
    assert!(run.stdout.contains("2 passed, 0 failed"), "{}", run.stdout);
    let xml = std::fs::read_to_string(&junit).unwrap();
    assert!(
        xml.contains("tests=\"2\"") && xml.contains("failures=\"0\""),
        "{xml}"
    );

    // The image descriptor: one partition, its OS, hashes that match the file.
    let m = manifest(&image);
    assert_eq!(m["format"], "qcow2");
    assert_eq!(m["boot"], "uefi");
    assert_eq!(m["partitions"][0]["os"]["id"], "debian");
    assert_eq!(m["partitions"][0]["os"]["version"], "12");
    // The direct boot's cmdline is the loader entry's: root by the partition's PARTUUID.
    let cmdline = std::fs::read_to_string(dir.join("web.qcow2.boot/cmdline")).unwrap();
    let partuuid = m["partitions"][0]["partuuid"].as_str().unwrap();
    assert!(
        cmdline.starts_with(&format!("root=PARTUUID={partuuid} rw ")),
        "{cmdline}"
    );
    // The example's /etc/kernel/cmdline is in it, before the consoles.
    assert!(
        cmdline.contains(" rw cryptomgr.notests=1 console="),
        "{cmdline}"
    );
    let sha = std::process::Command::new("sha256sum")
        .arg(&image)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sha.stdout).starts_with(m["sha256"].as_str().unwrap()));
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    // The same image through OVMF and its own systemd-boot still passes the checks; its
    // default entry boots kiln's initramfs (kiln-init), as the direct boot does.
    let uefi_console = dir.join("uefi-console.log");
    let uefi = kiln(
        &store,
        &ex,
        &[
            "test",
            image.to_str().unwrap(),
            "-f",
            "web.spec",
            "--firmware",
            "uefi",
            "--serial-log",
            uefi_console.to_str().unwrap(),
        ],
    );
    assert_eq!(uefi.code, 0, "{}\n{}", uefi.stdout, uefi.stderr);
    assert!(uefi.stdout.contains("boot: uefi (OVMF"), "{}", uefi.stdout);
    let console = String::from_utf8_lossy(&std::fs::read(&uefi_console).unwrap()).into_owned();
    assert!(
        console.contains("EFI stub") && console.contains("kiln-init: root"),
        "the UEFI boot did not go through the EFI stub to kiln-init:\n{console}"
    );
    assert!(
        uefi.stdout.contains("2 passed, 0 failed"),
        "{}",
        uefi.stdout
    );

    // A broken expectation fails with a clear report and exit status 1. The page is
    // the first check, so it waits for the boot: a shorter boot timeout ends it sooner.
    let broken = dir.join("broken.spec");
    let text = std::fs::read_to_string(ex.join("web.spec"))
        .unwrap()
        .replace("Cloudy Weather Expected", "Sunny Weather Expected")
        .replace("(test (http", "(test (boot-timeout 60) (http");
    assert!(text.contains("(boot-timeout 60)"), "{text}");
    std::fs::write(&broken, text).unwrap();
    let failed = kiln(
        &store,
        &dir,
        &[
            "test",
            image.to_str().unwrap(),
            "-f",
            broken.to_str().unwrap(),
        ],
    );
    assert_eq!(failed.code, 1, "{}", failed.stdout);
    assert!(
        failed.stdout.contains("FAIL cloud-page")
            && failed.stdout.contains("Sunny Weather Expected"),
        "{}",
        failed.stdout
    );
}

#[test]
fn memcached_example_boots_as_raw_plus_kernel_and_answers() {
    let store = shared_store();
    let dir = test_dir("memcached-image");
    let image = dir.join("memcached.raw");
    let boot = dir.join("boot");
    let ex = example("memcached");
    kiln(
        &store,
        &ex,
        &[
            "build",
            "-f",
            "memcached.spec",
            ".",
            "-o",
            image.to_str().unwrap(),
            "--boot",
            "kernel",
            "--kernel-out",
            boot.to_str().unwrap(),
        ],
    )
    .ok();
    assert!(boot.join("vmlinuz").exists() && boot.join("initrd.img").exists());
    let vmlinux = std::fs::read(boot.join("vmlinux")).expect("vmlinux extracted for gem5");
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    // kiln run/test enter it directly (PVH): seconds sooner under TCG than vmlinuz.
    assert!(kiln_vm::qemu::pvh::has_pvh_entry(&boot.join("vmlinux")).unwrap());
    let initrd = std::fs::metadata(boot.join("initrd.img")).unwrap().len();
    assert!(
        initrd < 16 << 20,
        "the example's MODULES=list initrd is {initrd} bytes"
    );
    assert_eq!(manifest(&image)["boot"], "kernel");
    let sfdisk = std::process::Command::new("sfdisk")
        .arg("--verify")
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        sfdisk.status.success(),
        "{}",
        String::from_utf8_lossy(&sfdisk.stdout)
    );
    // `kiln test` of the image plus `extra` arguments: the run and its serial console.
    let image_boot = dir.join("memcached.raw.boot");
    let serial = dir.join("serial.log");
    let kiln_test = |extra: &[&str]| {
        let mut args = vec!["test", image.to_str().unwrap(), "-f", "memcached.spec"];
        args.extend(["--serial-log", serial.to_str().unwrap()]);
        args.extend_from_slice(extra);
        let run = kiln(&store, &ex, &args);
        let console = String::from_utf8_lossy(&std::fs::read(&serial).unwrap()).into_owned();
        (run, console)
    };
    // kiln test boots it with kiln's initramfs (kiln-init) by default…
    assert!(image_boot.join("kiln-initrd.img").exists());
    let (test, console) = kiln_test(&[]);
    assert_eq!(test.code, 0, "{}\n{}", test.stdout, test.stderr);
    assert!(
        test.stdout.contains("PASS store-and-read-back"),
        "{}",
        test.stdout
    );
    // The kernel's own messages share the serial port and can land inside a line.
    assert!(
        without_kernel_messages(&console).contains("kiln-init: root /dev/vda1 mounted rw"),
        "{console}"
    );
    // …and with the image's own on request.
    let (own, console) = kiln_test(&["--initrd", "image"]);
    assert_eq!(own.code, 0, "{}\n{}", own.stdout, own.stderr);
    assert!(!console.contains("kiln-init"), "{console}");

    // A root that never appears: kiln-init says so and powers off, the test fails fast.
    let cmdline = image_boot.join("cmdline");
    let good = std::fs::read_to_string(&cmdline).unwrap();
    let bad = good
        .split_whitespace()
        .map(|w| match w.starts_with("root=") {
            true => "root=PARTUUID=00000000-0000-4000-8000-000000000000",
            false => w,
        })
        .collect::<Vec<_>>()
        .join(" ");
    std::fs::write(&cmdline, format!("{bad} kiln.rootwait=2\n")).unwrap();
    let started = std::time::Instant::now();
    let (broken, console) = kiln_test(&[]);
    std::fs::write(&cmdline, good).unwrap();
    assert_ne!(broken.code, 0, "{}", broken.stdout);
    assert!(
        console.contains(
            "kiln-init: error: root PARTUUID=00000000-0000-4000-8000-000000000000 did not appear within 2 s"
        ) && console.contains("block devices: vda vda1"),
        "{console}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the VM powered off instead of waiting for the checks' timeouts"
    );
}

#[test]
fn one_build_exports_to_every_disk_format() {
    let store = shared_store();
    let dir = test_dir("formats");
    let ex = example("webserver");
    let id = kiln(&store, &ex, &["build", "-f", "web.spec", "."])
        .ok()
        .got();
    for ext in ["raw", "qcow2", "vmdk", "vhdx", "vdi"] {
        let image = dir.join(format!("web.{ext}"));
        kiln(
            &store,
            &dir,
            &["export", &id, "-o", image.to_str().unwrap()],
        )
        .ok();
        let format = if ext == "raw" { "raw" } else { ext };
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-f", format])
            .arg(&image)
            .output()
            .unwrap();
        // qemu-img check does not support raw; for it the partition table is verified.
        if ext == "raw" {
            let v = std::process::Command::new("sfdisk")
                .arg("--verify")
                .arg(&image)
                .output()
                .unwrap();
            assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
        } else {
            assert!(
                check.status.success(),
                "{ext}: {}",
                String::from_utf8_lossy(&check.stdout)
            );
        }
        assert_eq!(manifest(&image)["format"], ext);
        // The manifest's virtual size is the one QEMU sees.
        let info = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", "-f", format])
            .arg(&image)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(
            manifest(&image)["virtual_size"],
            info["virtual-size"],
            "{ext}"
        );
    }
    // The root filesystem of the raw image passes e2fsck.
    let raw = dir.join("web.raw");
    let m = manifest(&raw);
    let part = &m["partitions"][0];
    let (offset, size) = (
        part["offset"].as_u64().unwrap(),
        part["size"].as_u64().unwrap(),
    );
    let fs = dir.join("root.ext4");
    let dd = std::process::Command::new("dd")
        .arg(format!("if={}", raw.display()))
        .arg(format!("of={}", fs.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", offset / 1_048_576))
        .arg(format!("count={}", size / 1_048_576))
        .status()
        .unwrap();
    assert!(dd.success());
    let fsck = std::process::Command::new("e2fsck")
        .args(["-fn"])
        .arg(&fs)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

#[test]
fn combo_example_boots_its_default_partition_and_describes_both() {
    let store = shared_store();
    let dir = test_dir("combo-image");
    let image = dir.join("combo.qcow2");
    let run = kiln(
        &store,
        &example("combo"),
        &[
            "build",
            "-f",
            "combo.spec",
            ".",
            "-o",
            image.to_str().unwrap(),
            "--test",
        ],
    )
    .ok();
    // The check waits for trixie's console banner: booting bookworm (partition 1) fails it.
    assert!(
        run.stdout
            .contains("PASS console shows \"Debian GNU/Linux 13\""),
        "{}",
        run.stdout
    );
    let m = manifest(&image);
    assert_eq!(m["default_partition"], "trixie");
    assert_eq!(m["node_types"], serde_json::json!(["pc3000", "d710"]));
    assert_eq!(m["arches"], serde_json::json!(["amd64"]));
    let parts = m["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2, "{m}");
    for (part, (name, label, version, codename)) in parts.iter().zip([
        ("bookworm", "debian12", "12", "bookworm"),
        ("trixie", "debian13", "13", "trixie"),
    ]) {
        assert_eq!(part["name"], name);
        assert_eq!(part["label"], label);
        assert_eq!(part["os"]["id"], "debian");
        assert_eq!(part["os"]["version"], version);
        assert_eq!(part["os"]["arch"], "amd64");
        assert!(
            part["os"]["pretty_name"]
                .as_str()
                .is_some_and(|p| p.contains(codename)),
            "{part}"
        );
    }
    // Partition 1 is the ESP; the OS partitions follow in spec order, on the disk too.
    assert_eq!(parts[0]["index"], 2);
    assert_eq!(parts[1]["index"], 3);
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&image)
        .output()
        .unwrap();
    assert!(check.status.success());
}

/// Acceptance: both shipped examples rebuild bit for bit (raw and qcow2) from scratch.
#[test]
fn both_examples_are_reproducible_from_scratch() {
    let store = shared_store();
    let dir = test_dir("repro-examples");
    for (name, spec) in [("memcached", "memcached.spec"), ("webserver", "web.spec")] {
        let image = dir.join(format!("{name}.qcow2"));
        let run = kiln(
            &store,
            &example(name),
            &[
                "build",
                "-f",
                spec,
                ".",
                "-o",
                image.to_str().unwrap(),
                "--check-reproducible",
            ],
        );
        assert_eq!(run.code, 0, "{name}:\n{}\n{}", run.stdout, run.stderr);
        for ext in ["raw", "qcow2"] {
            assert!(
                run.stdout.contains(&format!("reproducible {ext}: sha256 ")),
                "{name}: {}",
                run.stdout
            );
        }
        assert_eq!(manifest(&image)["name"], format!("{name}.qcow2"));
        std::fs::remove_file(&image).unwrap();
    }
}

/// `console` without the kernel's `[    1.234567] …` messages, wherever they landed.
fn without_kernel_messages(console: &str) -> String {
    let mut out = String::with_capacity(console.len());
    let mut rest = console;
    while let Some(start) = rest.find('[') {
        out.push_str(&rest[..start]);
        let tail = &rest[start + 1..];
        let stamp = tail.trim_start();
        let digits = stamp.find(']').map(|end| &stamp[..end]);
        let is_stamp = digits.is_some_and(|d| {
            !d.is_empty() && d.contains('.') && d.chars().all(|c| c.is_ascii_digit() || c == '.')
        });
        if is_stamp {
            rest = match tail.find('\n') {
                Some(nl) => &tail[nl + 1..],
                None => "",
            };
        } else {
            out.push('[');
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

#[test]
fn kernel_messages_inside_a_line_are_removed() {
    let console =
        "kiln-init: root [    2.491603] Not activating MAC.\n/dev/vda1 mounted rw\n[ OK ] x\n";
    assert_eq!(
        without_kernel_messages(console),
        "kiln-init: root /dev/vda1 mounted rw\n[ OK ] x\n"
    );
}
