//! Committing is O(what the step changed): it never reads the parent chain.

mod common;

use std::time::{Duration, Instant};

use common::id;
use kiln_store::{Durability, FsStore, Store, StoreOptions};

#[test]
fn commit_of_a_small_layer_is_fast_over_a_200_mb_parent() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let base = id(40, 0);
    {
        // The base itself need not reach the disk for this test.
        let store = FsStore::open_with(
            &root,
            StoreOptions {
                durability: Durability::MetadataOnly,
            },
        )
        .unwrap();
        let tmp = store.begin(&base, None, true).unwrap();
        let block = vec![0xa5u8; 1 << 20];
        for i in 0..200 {
            std::fs::write(tmp.rootfs.join(format!("blob{i}")), &block).unwrap();
        }
        let info = store.commit(tmp, "200 MB base", None).unwrap();
        assert_eq!(info.size, 200 << 20);
    }
    let store = FsStore::open(&root).unwrap();
    let mut parent = base;
    let mut times = Vec::new();
    for n in 1..=9 {
        let layer = id(40, n);
        let tmp = store.begin(&layer, Some(&parent), false).unwrap();
        for f in 0..5 {
            std::fs::write(tmp.rootfs.join(format!("f{f}")), format!("{layer} {f}\n")).unwrap();
        }
        let started = Instant::now();
        store.commit(tmp, "small step", None).unwrap();
        times.push(started.elapsed());
        parent = layer;
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!(
        "commit of 5 small files over a 200 MB parent: min {:?}, median {median:?}, max {:?}",
        times[0],
        times[times.len() - 1]
    );
    assert!(
        median < Duration::from_millis(50),
        "median commit took {median:?}: {times:?}"
    );
}
