//! `(cache …)` mounts: private working copies, last successful release wins.

use std::fs;

use kiln_store::{FsStore, Store, StoreError};

fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(&dir.path().join("store")).expect("open");
    (dir, store)
}

fn contents(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read_to_string(e.path()).unwrap_or_default(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn first_use_is_empty_and_kept_releases_persist() {
    let (_dir, store) = store();
    let lease = store.cache_acquire("apt-lists").unwrap();
    assert!(contents(&lease.dir).is_empty());
    assert!(lease.dir.starts_with(store.root().join("cache-tmp")));
    fs::write(lease.dir.join("kept"), "1").unwrap();
    store.cache_release(lease, true).unwrap();
    assert!(fs::read_dir(store.root().join("cache-tmp"))
        .unwrap()
        .next()
        .is_none());

    let lease = store.cache_acquire("apt-lists").unwrap();
    assert_eq!(contents(&lease.dir), vec![("kept".into(), "1".into())]);
    fs::write(lease.dir.join("discarded"), "2").unwrap();
    fs::remove_file(lease.dir.join("kept")).unwrap();
    store.cache_release(lease, false).unwrap();
    assert!(fs::read_dir(store.root().join("cache-tmp"))
        .unwrap()
        .next()
        .is_none());

    let lease = store.cache_acquire("apt-lists").unwrap();
    assert_eq!(
        contents(&lease.dir),
        vec![("kept".into(), "1".into())],
        "a failed step changes nothing"
    );
    store.cache_release(lease, false).unwrap();

    // Only the current version is kept on disk.
    let mut versions: Vec<String> = fs::read_dir(store.root().join("cache/apt-lists"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions.contains(&"current".to_string()));
}

#[test]
fn caches_are_independent_by_name() {
    let (_dir, store) = store();
    let a = store.cache_acquire("a").unwrap();
    fs::write(a.dir.join("x"), "a").unwrap();
    store.cache_release(a, true).unwrap();
    let b = store.cache_acquire("b").unwrap();
    assert!(contents(&b.dir).is_empty());
}

#[test]
fn concurrent_leases_see_the_old_version_and_the_last_release_wins() {
    let (_dir, store) = store();
    let seed = store.cache_acquire("ccache").unwrap();
    fs::write(seed.dir.join("v"), "old").unwrap();
    store.cache_release(seed, true).unwrap();

    // A second store instance stands for another process.
    let other = FsStore::open(store.root()).unwrap();
    let first = store.cache_acquire("ccache").unwrap();
    let second = other.cache_acquire("ccache").unwrap();
    assert_ne!(first.dir, second.dir);
    assert_eq!(first.base_version, second.base_version);
    assert_eq!(contents(&first.dir), vec![("v".into(), "old".into())]);
    assert_eq!(contents(&second.dir), vec![("v".into(), "old".into())]);

    fs::write(first.dir.join("v"), "first").unwrap();
    fs::write(second.dir.join("v"), "second").unwrap();
    // The first writer's change does not leak into the second's copy.
    assert_eq!(fs::read_to_string(second.dir.join("v")).unwrap(), "second");
    store.cache_release(first, true).unwrap();
    other.cache_release(second, true).unwrap();

    let after = store.cache_acquire("ccache").unwrap();
    assert_eq!(contents(&after.dir), vec![("v".into(), "second".into())]);
    assert!(after.base_version > 1);
}

#[test]
fn copies_keep_modes_symlinks_and_hardlinks() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (_dir, store) = store();
    let lease = store.cache_acquire("tree").unwrap();
    fs::create_dir(lease.dir.join("sub")).unwrap();
    fs::write(lease.dir.join("sub/exe"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(lease.dir.join("sub/exe"), fs::Permissions::from_mode(0o751)).unwrap();
    fs::hard_link(lease.dir.join("sub/exe"), lease.dir.join("link")).unwrap();
    std::os::unix::fs::symlink("sub/exe", lease.dir.join("sym")).unwrap();
    store.cache_release(lease, true).unwrap();

    let lease = store.cache_acquire("tree").unwrap();
    let exe = fs::metadata(lease.dir.join("sub/exe")).unwrap();
    assert_eq!(exe.permissions().mode() & 0o7777, 0o751);
    assert_eq!(
        fs::metadata(lease.dir.join("link")).unwrap().ino(),
        exe.ino()
    );
    assert_eq!(
        fs::read_link(lease.dir.join("sym")).unwrap(),
        std::path::Path::new("sub/exe")
    );
}

#[test]
fn bad_cache_names_are_refused() {
    let (_dir, store) = store();
    for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
        assert!(
            matches!(store.cache_acquire(bad), Err(StoreError::BadCacheName(_))),
            "{bad:?}"
        );
    }
    for good in ["a", "A-b_c.d", "..x", "0"] {
        assert!(store.cache_acquire(good).is_ok(), "{good:?}");
    }
}
