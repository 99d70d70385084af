//! Shared by the disk tests: small fake root trees and readers for what ends up on disk.
#![allow(dead_code)]

use kiln_image::disk::{
    BootMode, DiskLayout, DiskRequest, EspInitrd, PartitionInput, PartitionReport,
};
use kiln_image::tools::debugfs;
use kiln_image::tools::mtools::FatImage;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

/// `SOURCE_DATE_EPOCH` of every test image (2023-11-14).
pub const EPOCH: i64 = 1_700_000_000;
/// An mtime older than [`EPOCH`], which must survive.
pub const OLD: i64 = 1_000_000_000;
/// The kernel release in the fake trees.
pub const RELEASE: &str = "6.1.0-test";

/// What a fake tree holds.
pub struct Tree {
    pub pretty_name: &'static str,
    pub kernel: bool,
}

/// Makes a small root tree at `root`: os-release, a machine id, a setuid program, a file
/// owned by 1000:1000, a hard link, short and long symlinks (one absolute, pointing at the
/// host's /etc), a device node, a fifo, an xattr, build leftovers, and optionally a fake
/// kernel and initrd in /boot. Times: everything "now" except `usr/share/old` ([`OLD`]).
pub fn make_tree(root: &Path, tree: &Tree) {
    for dir in [
        "etc",
        "usr/bin",
        "usr/share/doc",
        "var/log/apt",
        "var/cache/ldconfig",
        "boot",
        "dev",
        "tmp",
    ] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::write(
        root.join("etc/os-release"),
        format!(
            "NAME=\"Kiln Test\"\nID=kilntest\nVERSION_ID=\"1\"\nPRETTY_NAME=\"{}\"\n",
            tree.pretty_name
        ),
    )
    .unwrap();
    fs::write(
        root.join("etc/machine-id"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    fs::write(root.join("etc/hostname"), "kiln-test\n").unwrap();
    fs::write(root.join("usr/bin/tool"), b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(root.join("usr/bin/su"), vec![0x7fu8; 3000]).unwrap();
    fs::set_permissions(root.join("usr/bin/su"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool-again")).unwrap();
    let big: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    fs::write(root.join("usr/share/doc/big"), big).unwrap();
    fs::write(root.join("home-file"), "mine").unwrap();
    std::os::unix::fs::chown(root.join("home-file"), Some(1000), Some(1000)).unwrap();
    symlink("tool", root.join("usr/bin/short-link")).unwrap();
    symlink(
        "/etc/hostname-but-a-very-long-target-name-that-does-not-fit-in-an-inode",
        root.join("etc/long-link"),
    )
    .unwrap();
    symlink("/etc/passwd", root.join("etc/host-link")).unwrap();
    mknod(
        &root.join("dev/null"),
        libc::S_IFCHR | 0o666,
        libc::makedev(1, 3),
    );
    mknod(&root.join("dev/fifo"), libc::S_IFIFO | 0o600, 0);
    set_xattr(&root.join("usr/bin/tool"), "user.kiln", b"yes");
    fs::write(root.join("var/cache/ldconfig/aux-cache"), "random bytes").unwrap();
    fs::write(
        root.join("var/log/dpkg.log"),
        "2026-01-01 12:00:00 install x\n",
    )
    .unwrap();
    fs::write(root.join("var/log/apt/eipp.log.xz"), "xz").unwrap();
    // A sparse cache in ten pieces: more extents than an inode holds, so it has an
    // extent tree block, which removing it must free too.
    fs::create_dir_all(root.join("var/cache/apt")).unwrap();
    let cache = fs::File::create(root.join("var/cache/apt/pkgcache.bin")).unwrap();
    for i in 0..10u64 {
        std::os::unix::fs::FileExt::write_all_at(&cache, &[0xAB; 8192], i * 65536).unwrap();
    }
    fs::write(root.join("usr/share/old"), "old").unwrap();
    set_mtime(&root.join("usr/share/old"), OLD);
    if tree.kernel {
        fs::write(root.join(format!("boot/vmlinuz-{RELEASE}")), kernel_bytes()).unwrap();
        fs::write(
            root.join(format!("boot/initrd.img-{RELEASE}")),
            initrd_bytes(),
        )
        .unwrap();
    }
}

pub fn kernel_bytes() -> Vec<u8> {
    b"MZ fake kernel ".repeat(1000)
}

pub fn initrd_bytes() -> Vec<u8> {
    b"070701 fake initrd ".repeat(2000)
}

fn mknod(path: &Path, mode: libc::mode_t, dev: libc::dev_t) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path; mknod has no memory effects.
    let r = unsafe { libc::mknod(c.as_ptr(), mode, dev) };
    assert_eq!(
        r,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a buffer of the given length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(
        r,
        0,
        "setxattr {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

fn set_mtime(path: &Path, secs: i64) {
    let t = nix::sys::time::TimeSpec::new(secs, 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// A request for one partition named `root` built from `rootfs`.
pub fn single(rootfs: &Path, boot: BootMode, scratch: &Path) -> DiskRequest {
    DiskRequest {
        partitions: vec![PartitionInput {
            name: "root".into(),
            label: "ROOT".into(),
            rootfs: rootfs.to_path_buf(),
            size: None,
        }],
        default: 0,
        boot,
        disk_size: None,
        seed: "test-image-id".into(),
        source_date_epoch: EPOCH,
        esp_initrd: EspInitrd::Kiln,
        scratch: scratch.to_path_buf(),
    }
}

/// A fresh scratch directory under `base`.
pub fn scratch(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A file of the filesystem of `part`.
pub fn cat(raw: &Path, part: &PartitionReport, path: &str) -> Vec<u8> {
    debugfs::cat(raw, part.offset, path).unwrap()
}

pub fn stat(raw: &Path, part: &PartitionReport, path: &str) -> String {
    debugfs::stat(raw, part.offset, path).unwrap()
}

/// A field of `debugfs stat` output, e.g. `Mode:` → `04755`.
pub fn stat_field<'a>(stat: &'a str, key: &str) -> &'a str {
    let at = stat
        .find(key)
        .unwrap_or_else(|| panic!("no {key} in {stat}"))
        + key.len();
    stat[at..].split_whitespace().next().unwrap()
}

/// The seconds of a time line of `debugfs stat` (` mtime: 0x6553f100:00000000 -- …`).
pub fn stat_time(stat: &str, which: &str) -> i64 {
    let line = stat
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{which}:")))
        .unwrap_or_else(|| panic!("no {which} in {stat}"));
    let hex = line.split_whitespace().nth(1).unwrap();
    let secs = hex.trim_start_matches("0x").split(':').next().unwrap();
    i64::from_str_radix(secs, 16).unwrap()
}

/// Copies the ESP of `layout` out of `raw` into `dir/esp.img`.
pub fn esp_image(raw: &Path, layout: &DiskLayout, dir: &Path) -> PathBuf {
    let esp = layout.esp.as_ref().expect("an ESP");
    let out = dir.join("esp.img");
    let mut data = vec![0u8; esp.size as usize];
    std::os::unix::fs::FileExt::read_exact_at(&fs::File::open(raw).unwrap(), &mut data, esp.offset)
        .unwrap();
    fs::write(&out, &data).unwrap();
    out
}

pub fn fat(path: &Path) -> FatImage<'_> {
    FatImage { path, time: EPOCH }
}

/// sha256 of a file, by coreutils' `sha256sum` (the `sha2` crate unoptimised, as tests
/// build it, takes seconds per disk).
pub fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
