//! Reproducibility: the same trees, seed and epoch give byte-identical disks in every
//! format, and every format passes its checks.

mod disk_support;

use disk_support::*;
use kiln_image::disk::{self, BootMode, DiskLayout};
use kiln_image::formats::{self, Format};
use kiln_image::tools::qemu_img;
use kiln_image::verify;
use std::fs;
use std::path::{Path, PathBuf};

const FORMATS: [(Format, &str); 5] = [
    (Format::Qcow2 { compressed: false }, "qcow2"),
    (Format::Qcow2 { compressed: true }, "c.qcow2"),
    (Format::Vmdk, "vmdk"),
    (Format::Vhdx, "vhdx"),
    (Format::Vdi, "vdi"),
];

/// Builds a fresh tree in `dir` and a UEFI disk from it; returns the raw path and layout.
fn build(dir: &Path, seed: &str) -> (PathBuf, DiskLayout) {
    let rootfs = dir.join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "Repro 1",
            kernel: true,
        },
    );
    let raw = dir.join("disk.raw");
    let mut req = single(&rootfs, BootMode::Uefi, &scratch(dir, "scratch"));
    req.seed = seed.to_string();
    (raw.clone(), disk::assemble(&req, &raw).unwrap())
}

#[test]
fn same_inputs_give_identical_disks_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let (raw1, layout1) = build(&one, "image-a");
    let (raw2, layout2) = build(&two, "image-a");
    assert_eq!(layout1.disk_guid, layout2.disk_guid);
    assert_eq!(layout1.partitions, layout2.partitions);
    assert_eq!(sha256(&raw1), sha256(&raw2), "raw disks differ");

    for (format, ext) in FORMATS {
        let (out1, out2) = (
            one.join(format!("disk.{ext}")),
            two.join(format!("disk.{ext}")),
        );
        formats::convert(&raw1, format, &out1, "image-a").unwrap();
        formats::convert(&raw2, format, &out2, "image-a").unwrap();
        assert_eq!(sha256(&out1), sha256(&out2), "{ext} outputs differ");
        verify::qemu_img_check(&out1, format).unwrap();
        let info = qemu_img::info(&out1).unwrap();
        assert_eq!(
            (info.format.as_str(), info.virtual_size),
            (format.qemu_name(), layout1.size)
        );
    }
    // Content survives the round trip through each format (checked on a raw copy).
    for (format, ext) in FORMATS {
        verify::verify_image(
            &one.join(format!("disk.{ext}")),
            format,
            &layout1,
            tmp.path(),
        )
        .unwrap();
    }

    // A raw "conversion" is a sparse copy.
    let copy = one.join("copy.raw");
    formats::convert(&raw1, Format::Raw, &copy, "image-a").unwrap();
    assert_eq!(sha256(&copy), sha256(&raw1));
    verify::qemu_img_check(&copy, Format::Raw).unwrap();

    // Another image id gives other identifiers, hence another disk.
    let three = tmp.path().join("three");
    let (raw3, layout3) = build(&three, "image-b");
    assert_ne!(layout3.disk_guid, layout1.disk_guid);
    assert_ne!(layout3.partitions[0].fs_uuid, layout1.partitions[0].fs_uuid);
    assert_ne!(sha256(&raw3), sha256(&raw1));
    let (vdi1, vdi3) = (one.join("disk.vdi"), three.join("disk.vdi"));
    formats::convert(&raw3, Format::Vdi, &vdi3, "image-b").unwrap();
    assert_ne!(read_at(&vdi1, 0x188, 32), read_at(&vdi3, 0x188, 32));
}

fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(path).unwrap(), &mut buf, offset)
        .unwrap();
    buf
}

#[test]
fn every_time_in_the_root_filesystem_is_at_most_the_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, layout) = build(tmp.path(), "image-t");
    let root = &layout.partitions[0];
    // Every inode: `debugfs -R "ls -l -p"` cannot show ctime, so stat a sample of each kind.
    for path in [
        "/",
        "/etc",
        "/etc/fstab",
        "/etc/machine-id",
        "/usr/bin/tool",
        "/usr/bin/short-link",
        "/dev/null",
        "/dev/fifo",
        "/lost+found",
        "/boot/efi",
        "/var/log/dpkg.log",
    ] {
        let s = stat(&raw, root, path);
        for which in ["ctime", "atime", "mtime", "crtime"] {
            assert!(
                stat_time(&s, which) <= EPOCH,
                "{which} of {path} is after the epoch:\n{s}"
            );
        }
    }
}
