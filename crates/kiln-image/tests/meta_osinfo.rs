//! OS descriptors and dpkg databases read from trees laid out like Debian's.

use kiln_image::osinfo::{debian_arch, installed_packages, os_descriptor, os_release};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

fn write(root: &Path, rel: &str, data: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

const BOOKWORM: &str = r#"PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"#;

const STATUS: &str = "\
Package: base-files
Essential: yes
Status: install ok installed
Priority: required
Maintainer: Santiago Vila <sanvila@debian.org>
Architecture: arm64
Version: 12.4+deb12u5
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy of a Debian system, and
 several important miscellaneous files.

Package: old-removed
Status: deinstall ok config-files
Architecture: arm64
Version: 1.0-1

Package: libc6
Status: hold ok installed
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>

Package: being-removed
Status: deinstall ok installed
Architecture: all
Source: being-removed (1.0-1)
Version: 1:1.0-1

Package: half
Status: install reinstreq half-installed
Architecture: arm64
Version: 3
";

#[test]
fn debian_tree_with_absolute_os_release_link() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "usr/lib/os-release",
        BOOKWORM.replace("debian", "kilntest").as_str(),
    );
    fs::create_dir_all(root.join("etc")).unwrap();
    // Resolved on the host, this link would read the build machine's own os-release.
    symlink("/usr/lib/os-release", root.join("etc/os-release")).unwrap();
    write(root, "var/lib/dpkg/status", STATUS);
    let os = os_descriptor(root).unwrap();
    assert_eq!(os.id, "kilntest");
    assert_eq!(os.name, "Debian GNU/Linux");
    assert_eq!(os.version, "12");
    assert_eq!(os.pretty_name, "Debian GNU/Linux 12 (bookworm)");
    assert_eq!(
        os.arch, "arm64",
        "from base-files in the tree's dpkg status"
    );
}

#[test]
fn etc_takes_precedence_and_usr_lib_is_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(root, "usr/lib/os-release", "ID=fallback\n");
    assert_eq!(os_descriptor(root).unwrap().id, "fallback");
    write(root, "etc/os-release", "ID=etc\n");
    assert_eq!(os_descriptor(root).unwrap().id, "etc");
    let fields = os_release(root).unwrap().unwrap();
    assert_eq!(fields.len(), 1);
}

#[test]
fn defaults_when_fields_or_file_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let os = os_descriptor(root).unwrap();
    assert_eq!(os.id, "unknown");
    assert_eq!(os.name, "");
    assert_eq!(os.arch, "unknown");
    write(root, "etc/os-release", "VERSION_ID=1\n");
    let os = os_descriptor(root).unwrap();
    assert_eq!((os.id.as_str(), os.name.as_str()), ("linux", "Linux"));
    assert_eq!(os.pretty_name, "Linux");
}

#[test]
fn arch_from_dpkg_arch_file_when_no_status() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "var/lib/dpkg/arch", "riscv64\ni386\n");
    assert_eq!(debian_arch(dir.path()).unwrap().as_deref(), Some("riscv64"));
}

/// The host's own shell, in a usr-merged tree with relative and absolute links.
#[test]
fn arch_from_the_elf_machine_of_bin_sh() {
    let host_arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("add the Debian name of {other} to this test"),
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    let shell = fs::canonicalize("/bin/sh").unwrap();
    fs::copy(&shell, root.join("usr/bin/dash")).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    symlink("/usr/bin/dash", root.join("usr/bin/sh")).unwrap();
    assert_eq!(debian_arch(root).unwrap().as_deref(), Some(host_arch));
}

#[test]
fn only_installed_packages_are_listed() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "var/lib/dpkg/status", STATUS);
    let packages = installed_packages(dir.path()).unwrap();
    let names: Vec<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["base-files", "libc6", "being-removed"]);
    let libc = &packages[1];
    assert_eq!(libc.version, "2.36-9+deb12u4");
    assert_eq!(libc.arch, "i386");
    assert_eq!(libc.source.as_deref(), Some("glibc"));
    assert_eq!(
        libc.maintainer.as_deref(),
        Some("GNU Libc Maintainers <debian-glibc@lists.debian.org>")
    );
    assert_eq!(
        packages[2].source, None,
        "Source equal to the name is dropped"
    );
    assert_eq!(packages[2].version, "1:1.0-1");
}

#[test]
fn damaged_status_is_an_error_that_says_where() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "var/lib/dpkg/status",
        "Package: a\nStatus: install ok installed\nthis line is not a field\n",
    );
    let err = installed_packages(dir.path()).unwrap_err().to_string();
    assert!(err.contains("var/lib/dpkg/status"), "{err}");
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("status-old"), "{err}");
}
