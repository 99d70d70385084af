//! What opening a store repairs after a crash, and what it must leave alone.

mod common;

use std::fs;
use std::sync::Mutex;

use common::{commit_simple, id, names};
use kiln_store::{FsStore, Store};

/// Held while a test spawns a child process, and by tests that expect a dropped store's
/// locks to be free at once: between fork and exec the child shares every open file of
/// this test process, flocks included, so a lock "released" meanwhile is still held.
static SPAWNING: Mutex<()> = Mutex::new(());

fn no_spawning() -> std::sync::MutexGuard<'static, ()> {
    SPAWNING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn reopen_purges_stale_temporaries_but_not_live_ones() {
    let _no_children = no_spawning();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::open(&root).unwrap();

    // A build that died: its temp dir exists, nobody holds its lock.
    let dead = id(20, 0);
    let tmp = store.begin(&dead, None, true).unwrap();
    fs::write(tmp.rootfs.join("half"), "written").unwrap();
    drop(tmp);
    // A live build: holds the step lock of its temp dir.
    let live = id(20, 1);
    let live_lock = store.lock_step(&live).unwrap();
    let live_tmp = store.begin(&live, None, true).unwrap();
    fs::write(live_tmp.rootfs.join("in-progress"), "yes").unwrap();
    // A live cache lease and scratch dir, and dead ones.
    let lease = store.cache_acquire("ccache").unwrap();
    let scratch = store.scratch_dir("export").unwrap();
    fs::create_dir(root.join("cache-tmp").join("dead.1")).unwrap();
    fs::create_dir(root.join("tmp").join("dead.2")).unwrap();

    // Another process opens the store meanwhile (a second open file description
    // conflicts with our flocks exactly as another process's would).
    let other = FsStore::open(&root).unwrap();
    let purged = &other.recovery().purged;
    assert!(
        purged.contains(&root.join("result-tmp").join(dead.as_str())),
        "{purged:?}"
    );
    assert!(
        purged.contains(&root.join("cache-tmp").join("dead.1")),
        "{purged:?}"
    );
    assert!(
        purged.contains(&root.join("tmp").join("dead.2")),
        "{purged:?}"
    );
    assert_eq!(names(&root.join("result-tmp")), vec![live.to_string()]);
    assert!(live_tmp.rootfs.join("in-progress").is_file());
    assert!(lease.dir.is_dir());
    assert!(scratch.is_dir());
    assert_eq!(other.recovery().in_use.len(), 3, "{:?}", other.recovery());

    // The live build finishes normally.
    let info = store.commit(live_tmp, "live", None).unwrap();
    drop(live_lock);
    assert!(other.get(&info.meta.id).unwrap().is_some());
    store.cache_release(lease, true).unwrap();

    // Once their owner is gone, the rest goes too.
    drop(store);
    drop(other);
    let third = FsStore::open(&root).unwrap();
    assert!(
        third.recovery().purged.contains(&scratch),
        "{:?}",
        third.recovery()
    );
    assert!(names(&root.join("tmp")).is_empty());
    assert!(names(&root.join("cache-tmp")).is_empty());
}

#[test]
fn reopen_purges_temporaries_whose_owner_process_died() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    FsStore::open(&root).unwrap();
    let layer = id(21, 0);
    // A child process holds the step lock while we reopen, then exits. It says when it
    // holds the lock; probing with our own attempts would race with it (a lock file
    // released by kiln is unlinked, and flock(1) may be waiting on the old inode).
    let spawning = no_spawning();
    let mut child = std::process::Command::new("flock")
        .arg(root.join("locks").join(format!("{layer}.lock")))
        .args(["-c", "echo locked && read line"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("flock(1) from util-linux");
    drop(spawning);
    let mut said = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut said,
    )
    .unwrap();
    assert_eq!(said, "locked\n");
    fs::create_dir_all(root.join("result-tmp").join(layer.as_str()).join("rootfs")).unwrap();
    let while_alive = FsStore::open(&root).unwrap();
    assert_eq!(
        names(&root.join("result-tmp")),
        vec![layer.to_string()],
        "{:?}",
        while_alive.recovery()
    );
    drop(child.stdin.take()); // EOF ends `read`, the child exits, the kernel drops its lock
    child.wait().unwrap();
    let after = FsStore::open(&root).unwrap();
    assert!(
        names(&root.join("result-tmp")).is_empty(),
        "{:?}",
        after.recovery()
    );
}

#[test]
fn reopen_reindexes_orphan_dirs_and_drops_orphan_rows() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let base = id(22, 0);
    let child = id(22, 1);
    let gone = id(22, 2);
    {
        let store = FsStore::open(&root).unwrap();
        commit_simple(&store, &base, None);
        commit_simple(&store, &child, Some(&base));
        commit_simple(&store, &gone, Some(&base));
    }
    // Lose the row of `child` (as if killed between rename and insert) and its short link,
    // and lose the directory of `gone` (its row stays).
    let conn = rusqlite::Connection::open(root.join("index.sqlite")).unwrap();
    conn.execute("DELETE FROM layers WHERE id = ?1", [child.as_str()])
        .unwrap();
    drop(conn);
    fs::remove_file(root.join("l").join(&child.as_str()[..16])).unwrap();
    fs::rename(
        root.join("result").join(gone.as_str()),
        dir.path().join("elsewhere"),
    )
    .unwrap();

    let store = FsStore::open(&root).unwrap();
    assert_eq!(store.recovery().reindexed, vec![child.clone()]);
    assert_eq!(store.recovery().dropped_rows, vec![gone.to_string()]);
    let listed: Vec<_> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.meta.id)
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(listed.contains(&base) && listed.contains(&child));
    let info = store.get(&child).unwrap().unwrap();
    assert_eq!(info.meta.parent, Some(base.clone()));
    assert_eq!(info.size, 64);
    assert!(
        root.join("l")
            .join(&child.as_str()[..16])
            .join("file")
            .is_file(),
        "short link recreated"
    );
    assert_eq!(store.get(&base).unwrap().unwrap().children, 1);
    assert!(
        store.healthcheck().unwrap().is_empty(),
        "{:?}",
        store.healthcheck()
    );
}

#[test]
fn get_finds_a_layer_committed_by_a_process_that_died_before_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::open(&root).unwrap();
    let base = id(23, 0);
    commit_simple(&store, &base, None);
    let conn = rusqlite::Connection::open(root.join("index.sqlite")).unwrap();
    conn.execute("DELETE FROM layers", []).unwrap();
    drop(conn);
    // No reopen: the live store must still see it.
    assert_eq!(store.get(&base).unwrap().unwrap().meta.id, base);
    store.touch(&base).unwrap();
}

#[test]
fn reopen_deletes_result_dirs_without_valid_meta() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let good = id(24, 0);
    let bad_json = id(24, 1);
    let no_meta = id(24, 2);
    let wrong_id = id(24, 3);
    {
        let store = FsStore::open(&root).unwrap();
        for layer in [&good, &bad_json, &wrong_id] {
            commit_simple(&store, layer, None);
        }
    }
    let result = root.join("result");
    fs::write(
        result.join(bad_json.as_str()).join("meta.json"),
        "{ not json",
    )
    .unwrap();
    fs::create_dir_all(result.join(no_meta.as_str()).join("rootfs")).unwrap();
    fs::rename(
        result.join(wrong_id.as_str()),
        result.join(id(24, 4).as_str()),
    )
    .unwrap();
    fs::create_dir(result.join("not-an-id")).unwrap();

    let store = FsStore::open(&root).unwrap();
    let quarantined: Vec<&str> = store
        .recovery()
        .quarantined
        .iter()
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(quarantined.len(), 4, "{:?}", store.recovery().quarantined);
    assert_eq!(names(&result), vec![good.to_string()]);
    assert_eq!(store.list().unwrap().len(), 1);
    assert!(names(&root.join("trash")).is_empty());
    assert!(
        store.healthcheck().unwrap().is_empty(),
        "{:?}",
        store.healthcheck()
    );
}

#[test]
fn reopen_empties_the_trash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    FsStore::open(&root).unwrap();
    fs::create_dir_all(root.join("trash").join("x.1").join("deep")).unwrap();
    FsStore::open(&root).unwrap();
    assert!(names(&root.join("trash")).is_empty());
}
