//! Finding the first difference between two trees, for `--check-reproducible`.

use kiln_image::repro::{file_digest, first_difference, DifferenceKind, FileKind, Side};
use nix::sys::stat::{utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

const EPOCH: i64 = 1_700_000_000;

fn set_mtime(path: &Path, secs: i64) {
    let t = TimeSpec::new(secs, 0);
    utimensat(None, path, &t, &t, UtimensatFlags::NoFollowSymlink).unwrap();
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: valid C strings and a value buffer of the given length.
    let rc = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
}

/// A small rootfs with every kind of entry the comparison looks at, all times clamped.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("etc/app")).unwrap();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    fs::create_dir_all(root.join("dev")).unwrap();
    fs::write(root.join("etc/ld.so.cache"), "cache v1").unwrap();
    fs::write(root.join("etc/app/conf"), "k=v\n").unwrap();
    fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(root.join("usr/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::hard_link(root.join("usr/bin/tool"), root.join("usr/bin/tool2")).unwrap();
    symlink("usr/bin", root.join("bin")).unwrap();
    set_xattr(&root.join("usr/bin/tool"), "user.kiln", b"cap");
    nix::sys::stat::mknod(
        &root.join("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        libc::makedev(1, 3),
    )
    .unwrap();
    nix::unistd::mkfifo(&root.join("dev/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
    clamp_times(root);
}

/// Sets every mtime (deepest first, so directories keep theirs) to EPOCH.
fn clamp_times(root: &Path) {
    let mut paths: Vec<_> = walk(root);
    paths.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in paths {
        set_mtime(&p, EPOCH);
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if fs::symlink_metadata(&path).unwrap().is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

struct Pair {
    _dir: tempfile::TempDir,
    a: std::path::PathBuf,
    b: std::path::PathBuf,
}

fn identical_pair() -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    fs::create_dir(&a).unwrap();
    fs::create_dir(&b).unwrap();
    build_tree(&a);
    build_tree(&b);
    Pair { _dir: dir, a, b }
}

/// Applies `change` to the second tree, re-clamps times unless `keep_times`, and returns
/// the reported difference as text.
fn report(change: impl FnOnce(&Path), keep_times: bool) -> (String, DifferenceKind) {
    let pair = identical_pair();
    change(&pair.b);
    if !keep_times {
        clamp_times(&pair.b);
    }
    let found = first_difference(&pair.a, &pair.b, None)
        .unwrap()
        .expect("a difference");
    (found.to_string(), found.kind)
}

#[test]
fn times_after_the_clamp_epoch_compare_equal() {
    let pair = identical_pair();
    set_mtime(&pair.a.join("usr/bin/tool"), EPOCH + 50);
    set_mtime(&pair.b.join("usr/bin/tool"), EPOCH + 1);
    assert_eq!(
        first_difference(&pair.a, &pair.b, Some(EPOCH)).unwrap(),
        None
    );
    assert!(first_difference(&pair.a, &pair.b, None).unwrap().is_some());
    // Before the epoch, times are kept by the image, so they still count.
    set_mtime(&pair.b.join("usr/bin/tool"), EPOCH - 10);
    let found = first_difference(&pair.a, &pair.b, Some(EPOCH))
        .unwrap()
        .expect("a difference");
    assert!(matches!(found.kind, DifferenceKind::Mtime(..)), "{found}");
}

#[test]
fn identical_trees_have_no_difference() {
    let pair = identical_pair();
    assert_eq!(first_difference(&pair.a, &pair.b, None).unwrap(), None);
}

#[test]
fn content_same_size() {
    let (text, kind) = report(
        |b| fs::write(b.join("etc/ld.so.cache"), "cache v2").unwrap(),
        false,
    );
    assert!(
        text.starts_with("/etc/ld.so.cache: content differs (sha256 "),
        "{text}"
    );
    assert!(!text.contains("bytes"), "same size: {text}");
    let DifferenceKind::Content((x, 8), (y, 8)) = kind else {
        panic!("{kind:?}")
    };
    assert_ne!(x, y);
}

#[test]
fn content_different_size() {
    let (text, _) = report(
        |b| fs::write(b.join("etc/app/conf"), "k=value\n").unwrap(),
        false,
    );
    assert!(text.starts_with("/etc/app/conf: content differs"), "{text}");
    assert!(text.ends_with(", 4 vs 8 bytes)"), "{text}");
}

#[test]
fn mode_owner_and_mtime() {
    let (text, _) = report(
        |b| fs::set_permissions(b.join("etc/app/conf"), fs::Permissions::from_mode(0o600)).unwrap(),
        false,
    );
    assert_eq!(text, "/etc/app/conf: mode differs (0644 vs 0600)");
    let (text, _) = report(
        |b| std::os::unix::fs::lchown(b.join("bin"), Some(1000), Some(1001)).unwrap(),
        false,
    );
    assert_eq!(text, "/bin: owner differs (0:0 vs 1000:1001)");
    let (text, _) = report(|b| set_mtime(&b.join("usr/bin/tool"), EPOCH + 1), true);
    assert_eq!(
        text,
        "/usr/bin/tool: mtime differs (1700000000 vs 1700000001)"
    );
}

#[test]
fn symlink_target_and_type() {
    let (text, _) = report(
        |b| {
            fs::remove_file(b.join("bin")).unwrap();
            symlink("/usr/bin", b.join("bin")).unwrap();
        },
        false,
    );
    assert_eq!(text, "/bin: symlink target differs (usr/bin vs /usr/bin)");
    let (text, kind) = report(
        |b| {
            fs::remove_file(b.join("etc/app/conf")).unwrap();
            fs::create_dir(b.join("etc/app/conf")).unwrap();
        },
        false,
    );
    assert_eq!(
        kind,
        DifferenceKind::Type(FileKind::File, FileKind::Directory)
    );
    assert_eq!(
        text,
        "/etc/app/conf: type differs (regular file vs directory)"
    );
}

#[test]
fn missing_on_either_side() {
    let (text, kind) = report(
        |b| fs::remove_file(b.join("etc/ld.so.cache")).unwrap(),
        false,
    );
    assert_eq!(kind, DifferenceKind::OnlyIn(Side::First));
    assert_eq!(text, "/etc/ld.so.cache: only in the first tree");
    let (text, _) = report(|b| fs::write(b.join("etc/app/extra"), "").unwrap(), false);
    assert_eq!(text, "/etc/app/extra: only in the second tree");
}

#[test]
fn xattrs_devices_and_hard_links() {
    let (text, _) = report(
        |b| set_xattr(&b.join("usr/bin/tool"), "user.kiln", b"cap2"),
        false,
    );
    assert_eq!(
        text,
        "/usr/bin/tool: extended attribute user.kiln differs (\"cap\" vs \"cap2\")"
    );
    let (text, _) = report(
        |b| {
            fs::remove_file(b.join("dev/null")).unwrap();
            nix::sys::stat::mknod(
                &b.join("dev/null"),
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                libc::makedev(1, 5),
            )
            .unwrap();
        },
        false,
    );
    assert_eq!(text, "/dev/null: device numbers differ (1:3 vs 1:5)");
    let (text, _) = report(
        |b| {
            // Same content, but no longer a hard link.
            fs::remove_file(b.join("usr/bin/tool2")).unwrap();
            fs::copy(b.join("usr/bin/tool"), b.join("usr/bin/tool2")).unwrap();
        },
        false,
    );
    assert_eq!(text, "/usr/bin/tool: hard link count differs (2 vs 1)");
}

#[test]
fn inner_difference_reported_before_directory_mtime() {
    // Rewriting a file changes its directory's mtime too; the file is the answer.
    let (text, _) = report(|b| fs::write(b.join("etc/app/new"), "").unwrap(), true);
    assert_eq!(text, "/etc/app/new: only in the second tree");
    let (text, _) = report(|b| set_mtime(&b.join("etc/app"), EPOCH + 5), true);
    assert_eq!(text, "/etc/app: mtime differs (1700000000 vs 1700000005)");
}

#[test]
fn earliest_path_in_sorted_order_wins() {
    let (text, _) = report(
        |b| {
            fs::write(b.join("usr/bin/tool"), "changed\n").unwrap();
            fs::write(b.join("etc/app/conf"), "changed\n").unwrap();
        },
        false,
    );
    assert!(text.starts_with("/etc/app/conf:"), "{text}");
}

#[test]
fn digest_of_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    fs::write(&path, "abc").unwrap();
    assert_eq!(
        file_digest(&path).unwrap(),
        (
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(),
            3
        )
    );
    let err = file_digest(&dir.path().join("nope"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
}
