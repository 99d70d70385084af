//! Kernel discovery and extraction on trees laid out like Debian's.
//!
//! `real_debian_kernel` runs against a real kernel package when `KILN_TEST_KERNEL_ROOT`
//! names a directory it was unpacked into:
//!
//! ```sh
//! cd "$(mktemp -d)" && apt-get download 'linux-image-6.1.0-*-amd64' && dpkg-deb -x linux-image-*.deb root
//! KILN_TEST_KERNEL_ROOT=$PWD/root cargo test -p kiln-image --test meta_kernel
//! ```

use kiln_image::kernel::{extract, find_kernel, Compression, VmlinuxSource};
use kiln_image::KernelFiles;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

const EPOCH: i64 = 1_700_000_000;

fn tiny_elf() -> Vec<u8> {
    let mut elf = vec![0u8; 64];
    elf[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
    elf[18] = 62;
    elf.extend((0..5000u32).flat_map(|i| i.to_le_bytes()));
    elf
}

/// A boot sector, then a gzip-compressed ELF, then trailing code.
fn fake_vmlinuz(elf: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 1024];
    image[0x202..0x206].copy_from_slice(b"HdrS");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(elf).unwrap();
    image.extend(gz.finish().unwrap());
    image.extend_from_slice(&[0x90; 300]);
    image
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

#[test]
fn newest_kernel_by_debian_version_order() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for release in ["6.1.0-9-amd64", "6.1.0-26-amd64", "6.1.0-10-amd64"] {
        write(root, &format!("boot/vmlinuz-{release}"), b"k");
        write(root, &format!("boot/initrd.img-{release}"), b"i");
    }
    write(root, "boot/vmlinuz-6.1.0-99-amd64.dpkg-tmp", b"partial");
    write(root, "boot/config-6.1.0-99-amd64", b"c");
    let found = find_kernel(root).unwrap().unwrap();
    assert_eq!(found.release, "6.1.0-26-amd64");
    assert_eq!(found.vmlinuz, root.join("boot/vmlinuz-6.1.0-26-amd64"));
    assert_eq!(
        found.initrd,
        Some(root.join("boot/initrd.img-6.1.0-26-amd64"))
    );
}

#[test]
fn kernel_without_initrd_and_tree_without_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    assert_eq!(find_kernel(root).unwrap(), None);
    fs::create_dir(root.join("boot")).unwrap();
    assert_eq!(find_kernel(root).unwrap(), None);
    write(root, "boot/vmlinuz-5.10.0-1-arm64", b"k");
    let found = find_kernel(root).unwrap().unwrap();
    assert_eq!(found.release, "5.10.0-1-arm64");
    assert_eq!(found.initrd, None);
}

#[test]
fn vmlinuz_links_name_the_default_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    for release in ["6.1.0-9-amd64", "6.1.0-26-amd64"] {
        write(root, &format!("boot/vmlinuz-{release}"), b"k");
        write(root, &format!("boot/initrd.img-{release}"), b"i");
    }
    // Absolute links, as Debian makes them: they must resolve inside the tree.
    symlink("/boot/vmlinuz-6.1.0-9-amd64", root.join("vmlinuz")).unwrap();
    symlink("boot/initrd.img-6.1.0-9-amd64", root.join("initrd.img")).unwrap();
    let found = find_kernel(root).unwrap().unwrap();
    assert_eq!(found.release, "6.1.0-9-amd64");
    assert_eq!(found.vmlinuz, root.join("boot/vmlinuz-6.1.0-9-amd64"));
    assert_eq!(
        found.initrd,
        Some(root.join("boot/initrd.img-6.1.0-9-amd64"))
    );

    // A dangling link (kernel removed) falls back to the newest installed kernel.
    fs::remove_file(root.join("vmlinuz")).unwrap();
    symlink("/boot/vmlinuz-5.0.0-1-amd64", root.join("vmlinuz")).unwrap();
    assert_eq!(
        find_kernel(root).unwrap().unwrap().release,
        "6.1.0-26-amd64"
    );
}

#[test]
fn link_in_boot_convention() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "boot/vmlinuz-6.1.0-9-amd64", b"k");
    write(root, "boot/vmlinuz-6.1.0-26-amd64", b"k");
    symlink("vmlinuz-6.1.0-9-amd64", root.join("boot/vmlinuz")).unwrap();
    let found = find_kernel(root).unwrap().unwrap();
    assert_eq!(found.release, "6.1.0-9-amd64");
    assert_eq!(found.initrd, None);
}

#[test]
fn extract_writes_deterministic_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let elf = tiny_elf();
    write(&root, "boot/vmlinuz-6.1.0-26-amd64", &fake_vmlinuz(&elf));
    write(&root, "boot/initrd.img-6.1.0-26-amd64", b"initramfs");
    fs::set_permissions(
        root.join("boot/vmlinuz-6.1.0-26-amd64"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let files = find_kernel(&root).unwrap().unwrap();
    let out = dir.path().join("out/boot");
    let got = extract(&files, &root, &out, EPOCH).unwrap();
    assert!(matches!(
        got.vmlinux_source,
        VmlinuxSource::Decompressed {
            compression: Compression::Gzip,
            offset: 1024
        }
    ));
    assert_eq!(fs::read(out.join("vmlinux")).unwrap(), elf);
    assert_eq!(fs::read(out.join("initrd.img")).unwrap(), b"initramfs");
    assert_eq!(
        fs::read(out.join("vmlinuz")).unwrap(),
        fs::read(root.join("boot/vmlinuz-6.1.0-26-amd64")).unwrap()
    );
    for name in ["vmlinuz", "initrd.img", "vmlinux"] {
        let meta = fs::metadata(out.join(name)).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o644, "{name}");
        assert_eq!(meta.mtime(), EPOCH, "{name}");
    }
    let mut names: Vec<_> = fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["initrd.img", "vmlinux", "vmlinuz"],
        "no temp files left"
    );
}

#[test]
fn extract_prefers_shipped_vmlinux_and_accepts_in_tree_paths() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let release = "6.1.0-26-amd64";
    write(
        &root,
        &format!("boot/vmlinuz-{release}"),
        &fake_vmlinuz(&tiny_elf()),
    );
    let mut debug_elf = tiny_elf();
    debug_elf.extend_from_slice(b"with debug info");
    write(
        &root,
        &format!("usr/lib/debug/boot/vmlinux-{release}"),
        &debug_elf,
    );
    let files = KernelFiles {
        vmlinuz: format!("/boot/vmlinuz-{release}").into(),
        initrd: None,
        release: release.to_string(),
    };
    let out = dir.path().join("out");
    // A stale initrd from an earlier export must not survive.
    write(&out, "initrd.img", b"stale");
    let got = extract(&files, &root, &out, EPOCH).unwrap();
    assert_eq!(
        got.vmlinux_source,
        VmlinuxSource::Shipped(format!("usr/lib/debug/boot/vmlinux-{release}").into())
    );
    assert_eq!(fs::read(out.join("vmlinux")).unwrap(), debug_elf);
    assert_eq!(got.initrd, None);
    assert!(!out.join("initrd.img").exists());
}

#[test]
fn extract_without_elf_payload_writes_no_vmlinux() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    write(
        &root,
        "boot/vmlinuz-6.1.0-26-arm64",
        b"MZ\0\0 arm64 Image, not ELF",
    );
    let files = find_kernel(&root).unwrap().unwrap();
    let out = dir.path().join("out");
    write(&out, "vmlinux", b"stale");
    let got = extract(&files, &root, &out, EPOCH).unwrap();
    assert_eq!(got.vmlinux_source, VmlinuxSource::NotFound);
    assert_eq!(got.vmlinux, None);
    assert!(!out.join("vmlinux").exists());
    assert!(out.join("vmlinuz").exists());
}

#[test]
fn extract_reports_missing_kernel_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = KernelFiles {
        vmlinuz: "/boot/vmlinuz-1".into(),
        initrd: None,
        release: "1".into(),
    };
    let err = extract(&files, dir.path(), &dir.path().join("out"), EPOCH).unwrap_err();
    assert!(err.to_string().contains("/boot/vmlinuz-1"), "{err}");
}

/// Runs only when `KILN_TEST_KERNEL_ROOT` points at an unpacked Debian kernel package.
#[test]
fn real_debian_kernel() {
    let Some(root) = std::env::var_os("KILN_TEST_KERNEL_ROOT") else {
        eprintln!("KILN_TEST_KERNEL_ROOT not set: skipping the real-kernel test");
        return;
    };
    let root = Path::new(&root);
    let files = find_kernel(root)
        .unwrap()
        .expect("a kernel in KILN_TEST_KERNEL_ROOT");
    let out = tempfile::tempdir().unwrap();
    let got = extract(&files, root, out.path(), EPOCH).unwrap();
    let VmlinuxSource::Decompressed { compression, .. } = got.vmlinux_source else {
        panic!(
            "expected a decompressed vmlinux, got {:?}",
            got.vmlinux_source
        );
    };
    if files.release.ends_with("-amd64") {
        // Debian's x86 kernels are built with CONFIG_KERNEL_XZ.
        assert_eq!(compression, Compression::Xz);
    }
    let vmlinux = fs::read(got.vmlinux.unwrap()).unwrap();
    assert_eq!(&vmlinux[..4], b"\x7fELF");
    assert!(
        vmlinux.len() > 10 << 20,
        "vmlinux is {} bytes",
        vmlinux.len()
    );
    // The kernel's version string is in the uncompressed image.
    let banner = format!("Linux version {}", files.release);
    assert!(
        vmlinux
            .windows(banner.len())
            .any(|w| w == banner.as_bytes()),
        "no {banner:?} in vmlinux"
    );
}
