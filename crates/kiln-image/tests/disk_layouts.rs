//! Kernel-mode, data-only and combo disks, sizes, and the errors a user can hit.

mod disk_support;

use disk_support::*;
use kiln_image::disk::{self, BootMode, DiskRequest, PartitionInput};
use kiln_image::formats::Format;
use kiln_image::tools::sfdisk;
use kiln_image::verify;
use std::fs;
use std::path::Path;

const MIB: u64 = 1 << 20;

#[test]
fn kernel_mode_has_no_esp_and_reports_kernel_and_cmdline() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "k",
            kernel: true,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let layout = disk::assemble(
        &single(&rootfs, BootMode::Kernel, &scratch(tmp.path(), "s")),
        &raw,
    )
    .unwrap();
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();
    assert!(layout.esp.is_none());
    let root = &layout.partitions[0];
    assert_eq!((root.index, root.offset), (1, MIB));
    assert_eq!(sfdisk::read_table(&raw).unwrap().partitions.len(), 1);
    assert_eq!(
        layout.cmdline,
        format!(
            "root=PARTUUID={} rw console=tty0 console=ttyS0,115200",
            root.partuuid
        )
    );
    let kernel = layout.kernel.as_ref().unwrap();
    assert_eq!(
        kernel.vmlinuz,
        rootfs.join(format!("boot/vmlinuz-{RELEASE}"))
    );
    assert_eq!(
        kernel.initrd.as_deref(),
        Some(rootfs.join(format!("boot/initrd.img-{RELEASE}")).as_path())
    );
    assert_eq!(kernel.release, RELEASE);
    let fstab = String::from_utf8(cat(&raw, root, "/etc/fstab")).unwrap();
    assert!(
        fstab.contains(&format!("UUID={} / ext4", root.fs_uuid)),
        "{fstab}"
    );
    assert!(!fstab.contains("/boot/efi"), "{fstab}");
    assert!(kiln_image::tools::debugfs::stat(&raw, root.offset, "/boot/efi").is_err());
}

#[test]
fn a_kernelless_tree_asked_to_boot_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "n",
            kernel: false,
        },
    );
    for boot in [BootMode::Uefi, BootMode::Kernel] {
        let raw = tmp.path().join("disk.raw");
        let err = disk::assemble(&single(&rootfs, boot, &scratch(tmp.path(), "s")), &raw)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the image has no kernel"), "{err}");
        assert!(
            err.contains("apt-get install -y linux-image-amd64 systemd-sysv"),
            "{err}"
        );
        assert!(err.contains(&format!("--boot {boot}")), "{err}");
        assert!(!raw.exists());
    }
    // Data only is fine without a kernel.
    let raw = tmp.path().join("data.raw");
    let layout = disk::assemble(
        &single(&rootfs, BootMode::None, &scratch(tmp.path(), "s")),
        &raw,
    )
    .unwrap();
    assert!(layout.kernel.is_none() && layout.esp.is_none());
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();
}

fn combo(a: &Path, b: &Path, default: usize, scratch: &Path) -> DiskRequest {
    let part = |name: &str, label: &str, rootfs: &Path| PartitionInput {
        name: name.into(),
        label: label.into(),
        rootfs: rootfs.to_path_buf(),
        size: None,
    };
    DiskRequest {
        partitions: vec![part("web", "WEB", a), part("db", "DB", b)],
        default,
        ..single(a, BootMode::Uefi, scratch)
    }
}

#[test]
fn combo_image_boots_its_default_and_lists_every_kernel() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
    );
    make_tree(
        &a,
        &Tree {
            pretty_name: "Web OS 1",
            kernel: true,
        },
    );
    make_tree(
        &b,
        &Tree {
            pretty_name: "DB OS 2",
            kernel: true,
        },
    );
    make_tree(
        &c,
        &Tree {
            pretty_name: "Data",
            kernel: false,
        },
    );
    let raw = tmp.path().join("combo.raw");
    let layout = disk::assemble(&combo(&a, &b, 1, &scratch(tmp.path(), "s")), &raw).unwrap();
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();

    let [web, db] = &layout.partitions[..] else {
        panic!("two partitions")
    };
    assert_eq!((web.index, db.index), (2, 3));
    assert_eq!((web.label.as_str(), db.label.as_str()), ("WEB", "DB"));
    assert_ne!(web.fs_uuid, db.fs_uuid);
    assert_eq!(layout.default, 1);
    assert_eq!(layout.cmdline, disk::default_cmdline(&db.partuuid));
    assert_eq!(
        layout.kernel.as_ref().unwrap().vmlinuz,
        b.join(format!("boot/vmlinuz-{RELEASE}"))
    );
    let names: Vec<_> = sfdisk::read_table(&raw)
        .unwrap()
        .partitions
        .into_iter()
        .map(|p| p.name)
        .collect();
    assert_eq!(names, ["esp", "WEB", "DB"]);

    let esp = esp_image(&raw, &layout, tmp.path());
    let esp_fat = fat(&esp);
    let loader = String::from_utf8(esp_fat.read("/loader/loader.conf").unwrap()).unwrap();
    assert!(loader.starts_with("default db.conf\n"), "{loader}");
    for (name, title, part) in [("web", "Web OS 1 (web)", web), ("db", "DB OS 2 (db)", db)] {
        let entry = String::from_utf8(
            esp_fat
                .read(&format!("/loader/entries/{name}.conf"))
                .unwrap(),
        )
        .unwrap();
        assert!(entry.contains(&format!("title {title}\n")), "{entry}");
        assert!(
            entry.contains(&format!("linux /{name}/vmlinuz\n")),
            "{entry}"
        );
        assert!(
            entry.contains(&format!("root=PARTUUID={} ", part.partuuid)),
            "{entry}"
        );
        // Each root's fstab names its own filesystem.
        let fstab = String::from_utf8(cat(&raw, part, "/etc/fstab")).unwrap();
        assert!(
            fstab.contains(&format!("UUID={} / ", part.fs_uuid)),
            "{fstab}"
        );
        let os = String::from_utf8(cat(&raw, part, "/etc/os-release")).unwrap();
        assert!(os.contains(title.split(" (").next().unwrap()), "{os}");
    }

    // A partition without a kernel gets no entry; the default still boots.
    let raw2 = tmp.path().join("combo2.raw");
    let layout = disk::assemble(&combo(&a, &c, 0, &scratch(tmp.path(), "s")), &raw2).unwrap();
    assert_eq!(layout.boot_entries, ["web"]);
    let esp = esp_image(&raw2, &layout, tmp.path());
    let files = fat(&esp).list().unwrap();
    assert!(files.iter().all(|f| !f.contains("db")), "{files:?}");
    // …but a kernel-less default cannot boot.
    let err = disk::assemble(&combo(&a, &c, 1, &scratch(tmp.path(), "s")), &raw2).unwrap_err();
    assert!(err.to_string().contains("partition `db`"), "{err}");
}

#[test]
fn disk_size_fills_the_last_partition_and_too_small_says_what_is_needed() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "s",
            kernel: true,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let mut req = single(&rootfs, BootMode::Kernel, &scratch(tmp.path(), "s"));
    req.disk_size = Some(600 * MIB);
    let layout = disk::assemble(&req, &raw).unwrap();
    assert_eq!(layout.size, 600 * MIB);
    assert_eq!(fs::metadata(&raw).unwrap().len(), 600 * MIB);
    assert_eq!(layout.partitions[0].size, 598 * MIB);
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();
    // A sparse file: far less is allocated than its length.
    let allocated = std::os::unix::fs::MetadataExt::blocks(&fs::metadata(&raw).unwrap()) * 512;
    assert!(allocated < 64 * MIB, "{allocated} bytes allocated");

    req.disk_size = Some(4 * MIB);
    let err = disk::assemble(&req, &raw).unwrap_err().to_string();
    assert!(
        err.contains("too small") && err.contains("needs at least"),
        "{err}"
    );
    // The size the message names is enough.
    let needed: u64 = err
        .split("the disk needs at least ")
        .nth(1)
        .and_then(|rest| rest.split(" MiB").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size in {err}"));
    req.disk_size = Some(needed * MIB);
    let layout = disk::assemble(&req, &raw).unwrap();
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();

    // An explicit partition size smaller than the content is refused before any work.
    req.disk_size = None;
    req.partitions[0].size = Some(MIB);
    let err = disk::assemble(&req, &raw).unwrap_err().to_string();
    assert!(
        err.contains("partition `root`") && err.contains("too small"),
        "{err}"
    );
}

#[test]
fn bad_requests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "b",
            kernel: true,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let base = combo(&rootfs, &rootfs, 0, &scratch(tmp.path(), "s"));
    let mut dup = base.clone();
    dup.partitions[1].name = "WEB".into();
    let mut default = base.clone();
    default.default = 2;
    let mut missing = base.clone();
    missing.partitions[0].rootfs = tmp.path().join("nope");
    for (req, needle) in [
        (dup, "two partitions"),
        (default, "default partition"),
        (missing, "not a directory"),
    ] {
        let err = disk::assemble(&req, &raw).unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    }
    assert!(!raw.exists());
}
