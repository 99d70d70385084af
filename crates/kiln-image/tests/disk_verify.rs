//! The checks in `verify` catch broken images (so a passing check means something).

mod disk_support;

use disk_support::*;
use kiln_image::disk::{self, BootMode};
use kiln_image::formats::{self, Format};
use kiln_image::verify;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    let f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn read_u64_be(path: &Path, offset: u64) -> u64 {
    let mut b = [0u8; 8];
    fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut b, offset)
        .unwrap();
    u64::from_be_bytes(b)
}

#[test]
fn each_check_fails_on_the_damage_it_looks_for() {
    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tmp.path().join("rootfs");
    make_tree(
        &rootfs,
        &Tree {
            pretty_name: "v",
            kernel: true,
        },
    );
    let raw = tmp.path().join("disk.raw");
    let layout = disk::assemble(
        &single(&rootfs, BootMode::Uefi, &scratch(tmp.path(), "s")),
        &raw,
    )
    .unwrap();
    verify::verify_image(&raw, Format::Raw, &layout, tmp.path()).unwrap();
    let root = &layout.partitions[0];
    let esp = layout.esp.as_ref().unwrap();

    // A damaged primary GPT header: sfdisk falls back to the backup, and says so.
    let gpt = tmp.path().join("gpt.raw");
    formats::convert(&raw, Format::Raw, &gpt, "x").unwrap();
    overwrite(&gpt, 512 + 16, &[0xff; 4]);
    let err = verify::sfdisk_verify(&gpt).unwrap_err().to_string();
    assert!(err.contains("corrupt") || err.contains("problems"), "{err}");

    // Zeroed ext4 group descriptors.
    let ext = tmp.path().join("ext.raw");
    formats::convert(&raw, Format::Raw, &ext, "x").unwrap();
    overwrite(&ext, root.offset + 4096, &[0u8; 4096]);
    let err = verify::e2fsck_partition(&ext, root)
        .unwrap_err()
        .to_string();
    assert!(err.contains("e2fsck") && err.contains("`root`"), "{err}");

    // A zeroed FAT in the ESP (the first FAT starts after 32 reserved sectors).
    let fat = tmp.path().join("fat.raw");
    formats::convert(&raw, Format::Raw, &fat, "x").unwrap();
    overwrite(&fat, esp.offset + 32 * 512, &[0u8; 4096]);
    let err = verify::fsck_esp(&fat, esp).unwrap_err().to_string();
    assert!(err.contains("fsck.vfat"), "{err}");
    assert!(verify::verify_image(&fat, Format::Raw, &layout, tmp.path()).is_err());

    // A qcow2 whose first refcount block is zeroed: clusters in use with refcount 0.
    let qcow = tmp.path().join("disk.qcow2");
    formats::convert(&raw, Format::Qcow2 { compressed: false }, &qcow, "x").unwrap();
    verify::qemu_img_check(&qcow, Format::Qcow2 { compressed: false }).unwrap();
    let refcount_table = read_u64_be(&qcow, 48);
    let refcount_block = read_u64_be(&qcow, refcount_table);
    overwrite(&qcow, refcount_block, &[0u8; 64]);
    let err = verify::qemu_img_check(&qcow, Format::Qcow2 { compressed: false })
        .unwrap_err()
        .to_string();
    assert!(err.contains("corrupt") || err.contains("leaked"), "{err}");

    // A raw disk handed over as qcow2 is not one.
    assert!(verify::qemu_img_check(&raw, Format::Qcow2 { compressed: false }).is_err());
    // A disk of the wrong size for its layout.
    let short = tmp.path().join("short.raw");
    formats::convert(&raw, Format::Raw, &short, "x").unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(layout.size - (1 << 20))
        .unwrap();
    let err = verify::verify_image(&short, Format::Raw, &layout, tmp.path())
        .unwrap_err()
        .to_string();
    assert!(err.contains("holds"), "{err}");
}
