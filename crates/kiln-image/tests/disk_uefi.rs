//! UEFI disks: GPT + ESP with systemd-boot + ext4 root, checked with the real tools.

mod disk_support;

use disk_support::*;
use kiln_image::disk::{self, BootMode, ESP_TYPE, ROOT_X86_64_TYPE};
use kiln_image::formats::Format;
use kiln_image::tools::sfdisk;
use kiln_image::verify;
use std::fs;

#[test]
fn uefi_disk_has_esp_loader_entries_and_an_adjusted_root() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "Kiln Test 1 (uefi)",
            kernel: true,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let req = single(&rootfs, BootMode::Uefi, &scratch(tmp.path(), "scratch"));
    let layout = disk::assemble(&req, &raw).unwrap();

    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();
    assert_eq!(
        fs::read_dir(&req.scratch).unwrap().count(),
        0,
        "scratch left behind"
    );

    // Partition table: ESP first, then the root, with the reported ids.
    let table = sfdisk::read_table(&raw).unwrap();
    let esp = layout.esp.as_ref().unwrap();
    let root = &layout.partitions[0];
    assert_eq!(table.label_id, layout.disk_guid.to_uppercase());
    assert_eq!(table.partitions.len(), 2);
    assert_eq!(table.partitions[0].type_guid, ESP_TYPE);
    assert_eq!(table.partitions[0].start * 512, esp.offset);
    assert_eq!(table.partitions[0].uuid, esp.partuuid.to_uppercase());
    assert_eq!(table.partitions[1].type_guid, ROOT_X86_64_TYPE);
    assert_eq!(table.partitions[1].name, "ROOT");
    assert_eq!(table.partitions[1].uuid, root.partuuid.to_uppercase());
    assert_eq!((esp.index, root.index), (1, 2));
    assert_eq!(esp.offset, 1 << 20);
    assert!(esp.size >= 64 << 20);
    assert_eq!(layout.size, fs::metadata(&raw).unwrap().len());

    // The ESP: systemd-boot, loader.conf, one entry, kernel and initrd copied.
    let esp_img = esp_image(&raw, &layout, tmp.path());
    let fat = fat(&esp_img);
    let files = fat.list().unwrap();
    for path in [
        "/EFI/BOOT/BOOTX64.EFI",
        "/EFI/systemd/systemd-bootx64.efi",
        "/loader/loader.conf",
        "/loader/entries/root.conf",
        "/root/vmlinuz",
        "/root/initrd.img",
    ] {
        assert!(
            files.iter().any(|f| f == path),
            "{path} missing from {files:?}"
        );
    }
    let loader = String::from_utf8(fat.read("/loader/loader.conf").unwrap()).unwrap();
    assert!(
        loader.starts_with("default root.conf\ntimeout 0\n"),
        "{loader}"
    );
    let entry = String::from_utf8(fat.read("/loader/entries/root.conf").unwrap()).unwrap();
    assert!(entry.contains("title Kiln Test 1 (uefi)\n"), "{entry}");
    assert!(
        entry.contains("linux /root/vmlinuz\ninitrd /root/initrd.img\n"),
        "{entry}"
    );
    assert!(
        entry.contains(&format!("options root=PARTUUID={} rw", root.partuuid)),
        "{entry}"
    );
    assert_eq!(fat.read("/root/vmlinuz").unwrap(), kernel_bytes());
    assert_eq!(fat.read("/root/initrd.img").unwrap(), initrd_bytes());
    let efi = fat.read("/EFI/BOOT/BOOTX64.EFI").unwrap();
    assert_eq!(
        efi,
        fs::read("/usr/lib/systemd/boot/efi/systemd-bootx64.efi").unwrap()
    );
    assert_eq!(layout.boot_entries, vec!["root".to_string()]);
    assert_eq!(
        layout.cmdline,
        entry
            .lines()
            .find_map(|l| l.strip_prefix("options "))
            .unwrap()
    );

    // The root filesystem: fstab, machine id, leftovers, owners, modes, links, times.
    let fstab = String::from_utf8(cat(&raw, root, "/etc/fstab")).unwrap();
    assert!(
        fstab.contains(&format!("UUID={} / ext4", root.fs_uuid)),
        "{fstab}"
    );
    assert!(
        fstab.contains(&format!("UUID={} /boot/efi vfat", esp.fs_uuid)),
        "{fstab}"
    );
    assert_eq!(cat(&raw, root, "/etc/machine-id"), b"");
    assert_eq!(cat(&raw, root, "/var/log/dpkg.log"), b"");
    assert!(
        kiln_image::tools::debugfs::stat(&raw, root.offset, "/var/cache/ldconfig/aux-cache")
            .is_err()
    );
    assert!(
        kiln_image::tools::debugfs::stat(&raw, root.offset, "/var/log/apt/eipp.log.xz").is_err()
    );
    assert_eq!(cat(&raw, root, "/etc/hostname"), b"kiln-test\n");
    assert!(stat(&raw, root, "/boot/efi").contains("Type: directory"));
    let su = stat(&raw, root, "/usr/bin/su");
    assert_eq!(stat_field(&su, "Mode:"), "04755");
    assert_eq!(stat_field(&su, "User:"), "0");
    let home = stat(&raw, root, "/home-file");
    assert_eq!(
        (stat_field(&home, "User:"), stat_field(&home, "Group:")),
        ("1000", "1000")
    );
    let tool = stat(&raw, root, "/usr/bin/tool");
    assert_eq!(stat_field(&tool, "Links:"), "2");
    assert_eq!(
        stat_field(&tool, "Inode:"),
        stat_field(&stat(&raw, root, "/usr/bin/tool-again"), "Inode:")
    );
    assert!(stat(&raw, root, "/etc/host-link").contains("Fast link dest: \"/etc/passwd\""));
    assert!(stat(&raw, root, "/etc/long-link").contains("Type: symlink"));
    assert!(stat(&raw, root, "/dev/null").contains("Type: character special"));
    assert!(stat(&raw, root, "/dev/fifo").contains("Type: FIFO"));
    assert_eq!(stat_field(&stat(&raw, root, "/tmp"), "Mode:"), "01777");
    assert_eq!(
        cat(&raw, root, "/usr/share/doc/big"),
        fs::read(rootfs.join("usr/share/doc/big")).unwrap()
    );
    for path in [
        "/usr/bin/su",
        "/etc/fstab",
        "/etc",
        "/usr/bin",
        "/etc/long-link",
        "/",
    ] {
        let s = stat(&raw, root, path);
        for which in ["ctime", "mtime", "atime"] {
            assert_eq!(stat_time(&s, which), EPOCH, "{which} of {path}");
        }
    }
    let old = stat(&raw, root, "/usr/share/old");
    assert_eq!(
        (stat_time(&old, "mtime"), stat_time(&old, "ctime")),
        (OLD, EPOCH)
    );

    // What was removed or emptied left no bytes behind in free blocks.
    for secret in [
        "0123456789abcdef0123456789abcdef",
        "2026-01-01 12:00:00 install",
        "random bytes",
    ] {
        assert!(!contains(&raw, secret), "{secret} is still on the disk");
    }
    assert!(
        contains(&raw, "kiln-test"),
        "the search can find file contents"
    );

    // The source tree was not touched.
    assert!(!rootfs.join("etc/fstab").exists());
    assert!(fs::read(rootfs.join("etc/machine-id")).unwrap().len() > 10);
    assert!(rootfs.join("var/cache/ldconfig/aux-cache").exists());
}

#[test]
fn xattrs_survive() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "x",
            kernel: false,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let layout = disk::assemble(
        &single(&rootfs, BootMode::None, &scratch(tmp.path(), "s")),
        &raw,
    )
    .unwrap();
    let root = &layout.partitions[0];
    let out = std::process::Command::new("debugfs")
        .arg("-R")
        .arg("ea_get /usr/bin/tool user.kiln")
        .arg(format!("{}?offset={}", raw.display(), root.offset))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "user.kiln (3) = \"yes\"",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the bytes of `needle` occur in the file (GNU grep: fast, unlike an unoptimised
/// test build scanning hundreds of MiB).
fn contains(file: &std::path::Path, needle: &str) -> bool {
    let status = std::process::Command::new("grep")
        .args(["-q", "-a", "-F", "--", needle])
        .arg(file)
        .status()
        .unwrap();
    assert!(
        status.code() == Some(0) || status.code() == Some(1),
        "grep failed: {status}"
    );
    status.success()
}

/// An amd64 tree (kiln-init's architecture here) boots with kiln's initramfs by default;
/// the image's own stays on the ESP, in an entry of its own. `EspInitrd::Image` keeps
/// the image's alone, and a partition may not take the second entry's name.
#[test]
fn uefi_entries_boot_kilns_initramfs_and_keep_the_images_own() {
    if kiln_image::boot_initrd::init_architecture() != Some("amd64") {
        eprintln!("skipped: kiln-init is not built for amd64 here");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "Kiln Test 2 (uefi)",
            kernel: true,
        },
    );
    fs::create_dir_all(rootfs.join("var/lib/dpkg")).unwrap();
    fs::write(rootfs.join("var/lib/dpkg/arch"), "amd64\n").unwrap();

    let raw = tmp.path().join("kiln.raw");
    let req = single(&rootfs, BootMode::Uefi, &scratch(tmp.path(), "scratch"));
    let layout = disk::assemble(&req, &raw).unwrap();
    let esp_img = esp_image(&raw, &layout, tmp.path());
    let fat = fat(&esp_img);
    let entry = |name: &str| {
        String::from_utf8(fat.read(&format!("/loader/entries/{name}.conf")).unwrap()).unwrap()
    };
    let default = entry("root");
    assert!(default.contains("title Kiln Test 2 (uefi)\n"), "{default}");
    assert!(
        default.contains("linux /root/vmlinuz\ninitrd /root/kiln-initrd.img\n"),
        "{default}"
    );
    let own = entry("root-initramfs");
    assert!(
        own.contains("title Kiln Test 2 (uefi) (its own initramfs)\n"),
        "{own}"
    );
    assert!(own.contains("initrd /root/initrd.img\n"), "{own}");
    let options = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("options "))
            .map(String::from)
    };
    assert_eq!(options(&default), options(&own));
    assert_eq!(fat.read("/root/initrd.img").unwrap(), initrd_bytes());
    // kiln-init is the archive's /init.
    let kiln = fat.read("/root/kiln-initrd.img").unwrap();
    let entries = kiln_image::cpio::read_all(&kiln[..]).unwrap();
    let init = entries.iter().find(|e| e.path == "init").expect("no /init");
    assert_eq!(
        init.kind.data(),
        kiln_init::BINARY,
        "the ESP's kiln initramfs does not run kiln-init"
    );
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();

    let raw = tmp.path().join("image.raw");
    let mut req = single(&rootfs, BootMode::Uefi, &scratch(tmp.path(), "scratch2"));
    req.esp_initrd = disk::EspInitrd::Image;
    let layout = disk::assemble(&req, &raw).unwrap();
    let esp_img = esp_image(&raw, &layout, tmp.path());
    let files = disk_support::fat(&esp_img).list().unwrap();
    assert!(
        !files
            .iter()
            .any(|f| f.contains("kiln-initrd") || f.contains("-initramfs")),
        "{files:?}"
    );

    let mut req = single(&rootfs, BootMode::Uefi, &scratch(tmp.path(), "scratch3"));
    let mut other = req.partitions[0].clone();
    other.name = "ROOT-initramfs".into();
    other.label = "OTHER".into();
    req.partitions.push(other);
    let err = disk::assemble(&req, &tmp.path().join("clash.raw")).unwrap_err();
    assert!(
        err.to_string().contains("`ROOT-initramfs` is taken"),
        "{err}"
    );
}
