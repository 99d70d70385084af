//! Committing, reading, chaining and deleting layers.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;

use common::{commit_files, commit_simple, id, names};
use kiln_store::{BaseConfig, BasePin, FsStore, Store, StoreError};

fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(&dir.path().join("store")).expect("open");
    (dir, store)
}

#[test]
fn open_creates_the_layout() {
    let (_dir, store) = store();
    let root = store.root().to_path_buf();
    for sub in [
        "result",
        "result-tmp",
        "l",
        "cache",
        "cache-tmp",
        "locks",
        "debs",
        "tmp",
        "trash",
    ] {
        assert!(root.join(sub).is_dir(), "{sub} missing");
    }
    assert!(root.join("index.sqlite").is_file());
    assert_eq!(store.deb_cache(), root.join("debs"));
    assert!(store.recovery().is_empty());
}

#[test]
fn commit_get_list_touch() {
    let (_dir, store) = store();
    let base = id(1, 0);
    assert!(store.get(&base).unwrap().is_none());

    let _lock = store.lock_step(&base).unwrap();
    let tmp = store.begin(&base, None, true).unwrap();
    assert!(tmp.rootfs.is_dir() && tmp.work.is_dir());
    fs::write(tmp.rootfs.join("a"), b"12345").unwrap();
    fs::write(tmp.rootfs.join("b"), b"123").unwrap();
    fs::hard_link(tmp.rootfs.join("a"), tmp.rootfs.join("a2")).unwrap();
    fs::write(&tmp.log, b"step output\n").unwrap();
    // overlayfs leaves work/work with mode 000
    fs::create_dir(tmp.work.join("work")).unwrap();
    fs::set_permissions(tmp.work.join("work"), fs::Permissions::from_mode(0o000)).unwrap();
    let config = BaseConfig {
        env: vec![("PATH".into(), "/bin".into())],
        workdir: Some("/".into()),
        user: None,
    };
    let info = store
        .commit(tmp, "debian bookworm", Some(config.clone()))
        .unwrap();

    assert_eq!(info.size, 8, "hardlinked file counted once");
    assert_eq!(info.children, 0);
    assert!(info.meta.flat);
    assert_eq!(info.meta.description, "debian bookworm");
    assert_eq!(info.meta.config, Some(config));
    let dir = store.root().join("result").join(base.as_str());
    assert_eq!(names(&dir), ["log", "meta.json", "rootfs"], "work/ removed");
    assert_eq!(fs::read(store.log_path(&base)).unwrap(), b"step output\n");
    assert!(names(&store.root().join("result-tmp")).is_empty());

    let got = store.get(&base).unwrap().expect("committed");
    assert_eq!(got, info);

    let child = id(1, 1);
    commit_simple(&store, &child, Some(&base));
    let listed = store.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(store.get(&base).unwrap().unwrap().children, 1);

    let before = store.get(&base).unwrap().unwrap().last_used;
    store.touch(&base).unwrap();
    assert!(store.get(&base).unwrap().unwrap().last_used >= before);
    assert!(matches!(
        store.touch(&id(9, 9)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn meta_json_records_the_layer() {
    let (_dir, store) = store();
    let base = id(2, 0);
    let child = id(2, 1);
    commit_simple(&store, &base, None);
    let info = commit_simple(&store, &child, Some(&base));
    let text = fs::read_to_string(
        store
            .root()
            .join("result")
            .join(child.as_str())
            .join("meta.json"),
    )
    .unwrap();
    let meta: kiln_store::LayerMeta = serde_json::from_str(&text).unwrap();
    assert_eq!(meta, info.meta);
    assert_eq!(meta.parent, Some(base));
    assert!(!meta.flat);
}

#[test]
fn committing_an_existing_id_returns_the_existing_layer() {
    let (_dir, store) = store();
    let base = id(3, 0);
    let first = commit_files(&store, &base, None, &[("who", "first")]);

    let tmp = store.begin(&base, None, true).unwrap();
    fs::write(tmp.rootfs.join("who"), "second").unwrap();
    let second = store.commit(tmp, "again", None).unwrap();

    assert_eq!(second.meta, first.meta);
    let rootfs = store
        .root()
        .join("result")
        .join(base.as_str())
        .join("rootfs");
    assert_eq!(fs::read_to_string(rootfs.join("who")).unwrap(), "first");
    assert!(
        names(&store.root().join("result-tmp")).is_empty(),
        "temp discarded"
    );
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn abort_leaves_nothing() {
    let (_dir, store) = store();
    let base = id(4, 0);
    let tmp = store.begin(&base, None, true).unwrap();
    fs::write(tmp.rootfs.join("x"), "x").unwrap();
    store.abort(tmp).unwrap();
    assert!(store.get(&base).unwrap().is_none());
    assert!(names(&store.root().join("result-tmp")).is_empty());
    assert!(names(&store.root().join("result")).is_empty());
    assert!(names(&store.root().join("l")).is_empty());
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn begin_replaces_a_stale_temp_and_checks_the_parent() {
    let (_dir, store) = store();
    let base = id(5, 0);
    let tmp = store.begin(&base, None, true).unwrap();
    fs::write(tmp.rootfs.join("stale"), "x").unwrap();
    drop(tmp);
    let tmp = store.begin(&base, None, true).unwrap();
    assert!(names(&tmp.rootfs).is_empty());

    assert!(matches!(
        store.begin(&id(5, 1), Some(&id(5, 2)), false),
        Err(StoreError::NotFound(_))
    ));
    assert!(
        store.begin(&id(5, 1), None, false).is_err(),
        "a parentless layer must be flat"
    );
}

#[test]
fn chain_stops_at_the_first_flat_layer() {
    let (_dir, store) = store();
    let base = id(6, 0);
    let a = id(6, 1);
    let flat = id(6, 2);
    let b = id(6, 3);
    let c = id(6, 4);
    commit_simple(&store, &base, None);
    commit_simple(&store, &a, Some(&base));
    // a flattened layer: full tree with a parent
    let tmp = store.begin(&flat, Some(&a), true).unwrap();
    fs::write(tmp.rootfs.join("file"), "flat").unwrap();
    store.commit(tmp, "flattened", None).unwrap();
    commit_simple(&store, &b, Some(&flat));
    commit_simple(&store, &c, Some(&b));

    let links = |ids: &[&kiln_store::LayerId]| -> Vec<std::path::PathBuf> {
        ids.iter()
            .map(|i| store.root().join("l").join(&i.as_str()[..16]))
            .collect()
    };
    assert_eq!(store.chain(&c).unwrap(), links(&[&c, &b, &flat]));
    assert_eq!(store.chain(&a).unwrap(), links(&[&a, &base]));
    assert_eq!(store.chain(&base).unwrap(), links(&[&base]));
    assert_eq!(store.chain_depth(&c).unwrap(), 3);
    assert_eq!(store.chain_depth(&base).unwrap(), 1);
    for (path, layer) in store.chain(&c).unwrap().iter().zip([&c, &b, &flat]) {
        assert_eq!(
            fs::read_to_string(path.join("file")).unwrap(),
            if layer == &flat {
                "flat"
            } else {
                layer.as_str()
            }
        );
    }
    assert!(matches!(
        store.chain(&id(6, 9)),
        Err(StoreError::NotFound(_))
    ));
}

#[test]
fn short_links_are_short_and_recreated() {
    let (_dir, store) = store();
    let base = id(7, 0);
    commit_simple(&store, &base, None);
    let link = store.chain(&base).unwrap().remove(0);
    let beyond_root = link.strip_prefix(store.root()).unwrap();
    assert!(
        beyond_root.as_os_str().len() < 40,
        "{}",
        beyond_root.display()
    );
    assert_eq!(
        fs::read_link(&link).unwrap(),
        std::path::Path::new("..")
            .join("result")
            .join(base.as_str())
            .join("rootfs")
    );

    fs::remove_file(&link).unwrap();
    assert_eq!(store.chain(&base).unwrap(), vec![link.clone()]);
    assert!(link.join("file").is_file());
}

#[test]
fn delete_removes_descendants_leaves_first() {
    let (_dir, store) = store();
    let base = id(8, 0);
    let a = id(8, 1);
    let a1 = id(8, 2);
    let a2 = id(8, 3);
    let a11 = id(8, 4);
    let other = id(8, 5);
    commit_simple(&store, &base, None);
    commit_simple(&store, &a, Some(&base));
    commit_simple(&store, &a1, Some(&a));
    commit_simple(&store, &a2, Some(&a));
    commit_simple(&store, &a11, Some(&a1));
    commit_simple(&store, &other, Some(&base));

    let deleted = store.delete(&a).unwrap();
    let mut sorted = deleted.clone();
    sorted.sort();
    let mut want = vec![a.clone(), a1.clone(), a2.clone(), a11.clone()];
    want.sort();
    assert_eq!(sorted, want);
    let pos = |x: &kiln_store::LayerId| deleted.iter().position(|d| d == x).unwrap();
    assert!(
        pos(&a11) < pos(&a1) && pos(&a1) < pos(&a) && pos(&a2) < pos(&a),
        "{deleted:?}"
    );

    let left: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.meta.id)
        .collect();
    assert_eq!(left.len(), 2);
    assert!(left.contains(&base) && left.contains(&other));
    let mut dirs = names(&store.root().join("result"));
    dirs.sort();
    let mut want = vec![base.to_string(), other.to_string()];
    want.sort();
    assert_eq!(dirs, want);
    assert_eq!(
        names(&store.root().join("l")).len(),
        2,
        "short links of deleted layers removed"
    );
    assert!(names(&store.root().join("trash")).is_empty());
    assert!(matches!(store.delete(&a), Err(StoreError::NotFound(_))));
}

#[test]
fn prune_removes_least_recently_used_leaves_and_skips_locked_ones() {
    let (_dir, store) = store();
    // base ── a ── a1      base ── b      base ── c
    let base = id(9, 0);
    let a = id(9, 1);
    let a1 = id(9, 2);
    let b = id(9, 3);
    let c = id(9, 4);
    let big = "x".repeat(1000);
    commit_files(&store, &base, None, &[("f", &big)]);
    for (layer, parent) in [(&a, &base), (&a1, &a), (&b, &base), (&c, &base)] {
        commit_files(&store, layer, Some(parent), &[("f", &big)]);
    }
    // Use order, oldest first: a1, c, a, b, base (touch order decides, not the clock).
    for layer in [&a1, &c, &a, &b, &base] {
        store.touch(layer).unwrap();
    }
    assert_eq!(store.total_size().unwrap(), 5000);

    // c is in use by a build: prune must skip it.
    let held = store.lock_step(&c).unwrap();
    let pruned = store.prune(3000).unwrap();
    // a1 is the LRU leaf; then c (skipped, locked); a became a leaf and is older than b.
    assert_eq!(pruned, vec![a1.clone(), a.clone()]);
    assert_eq!(store.total_size().unwrap(), 3000);

    let pruned = store.prune(1000).unwrap();
    assert_eq!(pruned, vec![b.clone()], "c locked, base has a child");
    assert!(store.get(&c).unwrap().is_some());
    drop(held);

    let pruned = store.prune(0).unwrap();
    assert_eq!(pruned, vec![c.clone(), base.clone()]);
    assert!(store.list().unwrap().is_empty());
    assert!(names(&store.root().join("result")).is_empty());
}

#[test]
fn prune_skips_pinned_layers() {
    let (_dir, store) = store();
    let base = id(10, 0);
    commit_simple(&store, &base, None);
    let pin = store.pin(&base).unwrap();
    let other = FsStore::open(store.root()).unwrap();
    let _second_pin = other.pin(&base).unwrap();
    assert!(store.prune(0).unwrap().is_empty());
    drop(pin);
    drop(_second_pin);
    assert_eq!(store.prune(0).unwrap(), vec![base]);
}

#[test]
fn clean_removes_everything_but_debs() {
    let (_dir, store) = store();
    let base = id(11, 0);
    commit_simple(&store, &base, None);
    commit_simple(&store, &id(11, 1), Some(&base));
    fs::write(store.deb_cache().join("x.deb"), "deb").unwrap();
    let lease = store.cache_acquire("apt").unwrap();
    fs::write(lease.dir.join("c"), "c").unwrap();
    store.cache_release(lease, true).unwrap();

    store.clean(false).unwrap();
    assert!(store.list().unwrap().is_empty());
    for sub in ["result", "l", "cache", "cache-tmp", "result-tmp", "trash"] {
        assert!(names(&store.root().join(sub)).is_empty(), "{sub} not empty");
    }
    assert!(store.deb_cache().join("x.deb").is_file());
    assert!(
        names(&store.cache_acquire("apt").unwrap().dir).is_empty(),
        "cache emptied"
    );

    store.clean(true).unwrap();
    assert!(store.deb_cache().is_dir());
    assert!(names(&store.deb_cache()).is_empty());
}

#[test]
fn healthcheck_reports_inconsistencies() {
    let (_dir, store) = store();
    let base = id(12, 0);
    let child = id(12, 1);
    commit_simple(&store, &base, None);
    commit_simple(&store, &child, Some(&base));
    assert_eq!(store.healthcheck().unwrap(), Vec::<String>::new());

    // Break the store behind its back.
    let result = store.root().join("result");
    fs::rename(result.join(base.as_str()), store.root().join("moved-away")).unwrap();
    fs::remove_file(store.root().join("l").join(&child.as_str()[..16])).unwrap();
    let problems = store.healthcheck().unwrap();
    assert!(
        problems
            .iter()
            .any(|p| p.contains(base.as_str()) && p.contains("no result/")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("parent") && p.contains(base.as_str())),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("short link")),
        "{problems:?}"
    );
}

#[test]
fn scratch_dirs_are_fresh_and_validated() {
    let (_dir, store) = store();
    let a = store.scratch_dir("export").unwrap();
    let b = store.scratch_dir("export").unwrap();
    assert_ne!(a, b);
    assert!(a.is_dir() && a.starts_with(store.root().join("tmp")));
    assert!(matches!(
        store.scratch_dir("../x"),
        Err(StoreError::BadScratchPrefix(_))
    ));
    assert!(matches!(
        store.scratch_dir(""),
        Err(StoreError::BadScratchPrefix(_))
    ));
    store.remove_scratch(&a).unwrap();
    assert!(!a.exists());
}

#[test]
fn concurrent_builders_of_the_same_steps_commit_each_once() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    FsStore::open(&root).unwrap();
    let ids: Vec<_> = (0..8).map(|n| id(13, n)).collect();
    let built = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                // One store per thread: separate lock descriptors, like separate processes.
                let store = FsStore::open(&root).unwrap();
                let mut parent = None;
                for layer in &ids {
                    let _lock = store.lock_step(layer).unwrap();
                    if store.get(layer).unwrap().is_none() {
                        let tmp = store.begin(layer, parent, parent.is_none()).unwrap();
                        fs::write(tmp.rootfs.join("file"), layer.as_str()).unwrap();
                        store.commit(tmp, "concurrent", None).unwrap();
                        built.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    parent = Some(layer);
                }
            });
        }
    });
    assert_eq!(
        built.into_inner(),
        ids.len(),
        "each step built exactly once"
    );
    let store = FsStore::open(&root).unwrap();
    assert_eq!(store.list().unwrap().len(), ids.len());
    assert_eq!(store.chain_depth(&ids[7]).unwrap(), 8);
}

#[test]
fn base_pins_are_recorded_and_old_meta_without_them_still_reads() {
    let (dir, store) = store();
    let base = id(3, 0);
    let pin = BasePin {
        reference: "registry-1.docker.io/library/busybox:latest".into(),
        digest: format!("sha256:{}", "e".repeat(64)),
        registry: Some("127.0.0.1:5000".into()),
        mirror: true,
    };
    let _lock = store.lock_step(&base).unwrap();
    let tmp = store.begin(&base, None, true).unwrap();
    let info = store
        .commit_base(tmp, "busybox", BaseConfig::default(), Some(pin.clone()))
        .unwrap();
    assert_eq!(info.meta.pin.as_ref(), Some(&pin));
    assert_eq!(store.get(&base).unwrap().unwrap().meta.pin, Some(pin));
    let path = store
        .root()
        .join("result")
        .join(base.as_str())
        .join("meta.json");
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"pin\"") && text.contains("\"mirror\": true"),
        "{text}"
    );

    // A layer written before pins existed: its meta.json has no `pin`; a reopened store
    // indexes it (as an orphan directory) and reads it with no pin.
    let old = id(3, 1);
    let old_dir = store.root().join("result").join(old.as_str());
    fs::create_dir_all(old_dir.join("rootfs")).unwrap();
    fs::write(old_dir.join("log"), b"").unwrap();
    let old_meta = format!(
        r#"{{"id":"{}","parent":null,"flat":true,"created":1,"description":"old","config":null}}"#,
        old.as_str()
    );
    fs::write(old_dir.join("meta.json"), old_meta).unwrap();
    drop(_lock);
    drop(store);
    let store = FsStore::open(&dir.path().join("store")).unwrap();
    let got = store.get(&old).unwrap().expect("old layer indexed");
    assert_eq!((got.meta.description.as_str(), got.meta.pin), ("old", None));
    assert!(store.get(&base).unwrap().unwrap().meta.pin.is_some());
}
