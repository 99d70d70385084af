//! `file:` bases: rootfs tarballs unpacked with owners, modes, times, xattrs, links and
//! device nodes intact; malicious archives refused without writing outside the root.

mod common;

use common::{gzip, tree, zstd, Owner, TarBuilder, MTIME, ROOT_0644, ROOT_0755};
use kiln_fetch::{parse_base, FetchError, Fetcher, RealFetcher};
use kiln_store::BaseConfig;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use tar::EntryType;

fn fetcher(dir: &Path) -> RealFetcher {
    RealFetcher {
        deb_cache: dir.join("debs"),
        registries: Default::default(),
    }
}

/// Writes `bytes` to `context/name`, then resolves and fetches it into a fresh root.
fn fetch_bytes(
    context: &Path,
    name: &str,
    bytes: &[u8],
) -> (tempfile::TempDir, Result<BaseConfig, FetchError>, String) {
    std::fs::write(context.join(name), bytes).unwrap();
    let fetcher = fetcher(context);
    let source = parse_base(&format!("file:{name}"), None, context).unwrap();
    let base = fetcher.resolve(&source).unwrap();
    let root = tempfile::tempdir().unwrap();
    let mut log = Vec::new();
    let result = fetcher.fetch(&base, root.path(), None, &mut log);
    (root, result, String::from_utf8_lossy(&log).into_owned())
}

fn rootfs_tar() -> Vec<u8> {
    let user = Owner {
        uid: 1000,
        gid: 1001,
        mode: 0o700,
    };
    TarBuilder::new()
        .dir("./", ROOT_0755)
        .dir("etc", ROOT_0755)
        .file("etc/hostname", b"kiln\n", ROOT_0644)
        .dir("usr", ROOT_0755)
        .dir("usr/bin", ROOT_0755)
        .file(
            "usr/bin/su",
            b"#!/bin/sh\n",
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o4755,
            },
        )
        .hardlink("usr/bin/su-again", "usr/bin/su")
        .symlink("bin", "usr/bin")
        .symlink("etc/dangling", "/does/not/exist")
        .dir("home", ROOT_0755)
        .dir("home/user", user)
        .file_with_xattr(
            "home/user/notes",
            b"secret",
            Owner {
                mode: 0o600,
                ..user
            },
            "user.kiln",
            b"yes",
        )
        .dir("dev", ROOT_0755)
        .device(
            "dev/null",
            EntryType::Char,
            1,
            3,
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o666,
            },
        )
        .device(
            "dev/loop9",
            EntryType::Block,
            7,
            9,
            Owner {
                uid: 0,
                gid: 6,
                mode: 0o660,
            },
        )
        .device(
            "run-fifo",
            EntryType::Fifo,
            0,
            0,
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o620,
            },
        )
        .file("implicit/parent/file", b"x", ROOT_0644)
        .finish()
}

fn lstat(root: &Path, rel: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn check_rootfs(root: &Path) {
    let m = lstat(root, "etc/hostname");
    assert_eq!(
        (m.uid(), m.gid(), m.mode() & 0o7777, m.mtime()),
        (0, 0, 0o644, MTIME as i64)
    );
    assert_eq!(std::fs::read(root.join("etc/hostname")).unwrap(), b"kiln\n");
    let su = lstat(root, "usr/bin/su");
    assert_eq!(su.mode() & 0o7777, 0o4755, "set-uid bit kept");
    let again = lstat(root, "usr/bin/su-again");
    assert_eq!(
        (again.ino(), su.nlink()),
        (su.ino(), 2),
        "hard link shares the inode"
    );
    let bin = lstat(root, "bin");
    assert!(bin.file_type().is_symlink());
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        PathBuf::from("usr/bin")
    );
    assert_eq!(
        bin.mtime(),
        MTIME as i64,
        "symlink mtime set without following it"
    );
    assert_eq!(
        std::fs::read_link(root.join("etc/dangling")).unwrap(),
        PathBuf::from("/does/not/exist")
    );
    let home = lstat(root, "home/user");
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777, home.mtime()),
        (1000, 1001, 0o700, MTIME as i64)
    );
    let notes = lstat(root, "home/user/notes");
    assert_eq!(
        (notes.uid(), notes.gid(), notes.mode() & 0o7777),
        (1000, 1001, 0o600)
    );
    assert_eq!(
        xattr(&root.join("home/user/notes"), "user.kiln"),
        Some(b"yes".to_vec())
    );
    let null = lstat(root, "dev/null");
    assert!(null.file_type().is_char_device());
    assert_eq!(
        (null.rdev(), null.mode() & 0o7777),
        (libc::makedev(1, 3), 0o666)
    );
    let lp = lstat(root, "dev/loop9");
    assert!(lp.file_type().is_block_device());
    assert_eq!((lp.rdev(), lp.gid()), (libc::makedev(7, 9), 6));
    let fifo = lstat(root, "run-fifo");
    assert!(fifo.file_type().is_fifo());
    assert_eq!(fifo.mode() & 0o7777, 0o620);
    assert_eq!(
        lstat(root, "etc").mtime(),
        MTIME as i64,
        "directory mtimes survive their children"
    );
    assert_eq!(lstat(root, ".").mode() & 0o7777, 0o755);
    assert!(lstat(root, "implicit/parent").is_dir());
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn plain_gzip_and_zstd_tarballs_unpack_identically() {
    let context = tempfile::tempdir().unwrap();
    let tar = rootfs_tar();
    let mut trees = Vec::new();
    for (name, bytes) in [
        ("root.tar", tar.clone()),
        ("root.tar.gz", gzip(&tar)),
        ("root.tgz", gzip(&tar)),
        ("root.tar.zst", zstd(&tar)),
    ] {
        let (root, result, log) = fetch_bytes(context.path(), name, &bytes);
        let config = result.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            config.env,
            vec![(
                "PATH".to_string(),
                kiln_fetch::tarball::DEFAULT_PATH.to_string()
            )]
        );
        assert!(log.contains("unpacked"), "{log}");
        check_rootfs(root.path());
        trees.push(tree(root.path()));
    }
    assert!(trees.windows(2).all(|w| w[0] == w[1]));
}

#[test]
fn ids_follow_the_bytes() {
    let context = tempfile::tempdir().unwrap();
    let fetcher = fetcher(context.path());
    let id = |bytes: &[u8]| {
        std::fs::write(context.path().join("r.tar"), bytes).unwrap();
        fetcher
            .resolve(&parse_base("file:r.tar", None, context.path()).unwrap())
            .unwrap()
            .id
    };
    let a = id(&rootfs_tar());
    assert_eq!(a, id(&rootfs_tar()));
    let other = TarBuilder::new().file("x", b"y", ROOT_0644).finish();
    assert_ne!(a, id(&other));
}

#[test]
fn a_tarball_changed_after_resolve_is_refused() {
    let context = tempfile::tempdir().unwrap();
    let fetcher = fetcher(context.path());
    std::fs::write(context.path().join("r.tar"), rootfs_tar()).unwrap();
    let base = fetcher
        .resolve(&parse_base("file:r.tar", None, context.path()).unwrap())
        .unwrap();
    std::fs::write(
        context.path().join("r.tar"),
        TarBuilder::new().file("x", b"y", ROOT_0644).finish(),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let err = fetcher
        .fetch(&base, root.path(), None, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed while kiln was reading it"), "{err}");
    assert!(
        tree(root.path()).is_empty(),
        "a failed fetch leaves the root empty"
    );
}

#[test]
fn a_non_empty_target_is_refused() {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("r.tar"), rootfs_tar()).unwrap();
    let fetcher = fetcher(context.path());
    let base = fetcher
        .resolve(&parse_base("file:r.tar", None, context.path()).unwrap())
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("precious"), b"keep").unwrap();
    let err = fetcher
        .fetch(&base, root.path(), None, &mut Vec::new())
        .unwrap_err()
        .to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert_eq!(
        std::fs::read(root.path().join("precious")).unwrap(),
        b"keep"
    );
}

#[test]
fn malicious_tarballs_are_refused_and_write_nothing_outside() {
    let context = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let outside_abs = outside.path().join("abs-target");
    let mut absolute = outside_abs.to_string_lossy().into_owned().into_bytes();
    absolute.truncate(100);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot.tar",
            TarBuilder::new()
                .file("ok", b"1", ROOT_0644)
                .raw(b"../escaped", EntryType::Regular, b"x", None)
                .finish(),
            "`..`",
        ),
        (
            "nested-dotdot.tar",
            TarBuilder::new()
                .raw(b"a/../../escaped", EntryType::Regular, b"x", None)
                .finish(),
            "`..`",
        ),
        (
            "absolute.tar",
            TarBuilder::new()
                .raw(&absolute, EntryType::Regular, b"x", None)
                .finish(),
            "absolute path",
        ),
        (
            "through-symlink.tar",
            TarBuilder::new()
                .symlink("evil", &outside.path().to_string_lossy())
                .raw(b"evil/pwned", EntryType::Regular, b"x", None)
                .finish(),
            "is a symlink or not a directory",
        ),
        (
            "relative-symlink.tar",
            TarBuilder::new()
                .dir("a", ROOT_0755)
                .symlink("a/up", "../..")
                .raw(b"a/up/escaped", EntryType::Regular, b"x", None)
                .finish(),
            "is a symlink",
        ),
        (
            "hardlink-out.tar",
            TarBuilder::new()
                .raw(b"stolen", EntryType::Link, b"", Some(b"../../etc/passwd"))
                .finish(),
            "`..`",
        ),
        (
            "hardlink-abs.tar",
            TarBuilder::new()
                .raw(b"stolen", EntryType::Link, b"", Some(b"/etc/passwd"))
                .finish(),
            "absolute path",
        ),
    ];
    for (name, bytes, expected) in cases {
        let (root, result, _) = fetch_bytes(context.path(), name, &bytes);
        let err = result.expect_err(name);
        let text = err.to_string();
        assert!(matches!(err, FetchError::Archive { .. }), "{name}: {text}");
        assert!(
            text.contains(expected),
            "{name}: expected `{expected}` in {text}"
        );
        assert!(
            text.contains(name),
            "{name}: the error names the archive: {text}"
        );
        assert!(
            tree(root.path()).is_empty(),
            "{name}: root emptied after the refusal"
        );
        let parent = root.path().parent().unwrap();
        assert!(
            !parent.join("escaped").exists(),
            "{name}: wrote outside the root"
        );
        assert!(
            tree(outside.path()).is_empty(),
            "{name}: wrote through a symlink: {:?}",
            tree(outside.path())
        );
        assert!(!outside_abs.exists(), "{name}: wrote an absolute path");
    }
}

#[test]
fn a_corrupt_tarball_is_a_clear_error() {
    let context = tempfile::tempdir().unwrap();
    let mut bytes = gzip(&rootfs_tar());
    bytes.truncate(bytes.len() / 2);
    let (root, result, _) = fetch_bytes(context.path(), "cut.tar.gz", &bytes);
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Archive { .. }), "{text}");
    assert!(
        text.contains("cut.tar.gz") && text.contains("reading the archive failed"),
        "{text}"
    );
    assert!(tree(root.path()).is_empty());
}
