//! Step locks: a second locker of the same id waits for the first; other ids do not.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::id;
use kiln_store::{FsStore, Store};

#[test]
fn lock_step_blocks_a_second_locker_until_release() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::open(&root).unwrap();
    let step = id(30, 0);
    let held = store.lock_step(&step).unwrap();

    let released = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let waiter = {
        let (root, step, released) = (root.clone(), step.clone(), released.clone());
        std::thread::spawn(move || {
            let other = FsStore::open(&root).unwrap();
            tx.send("waiting").unwrap();
            let lock = other.lock_step(&step).unwrap();
            // Got it: the first holder must have let go before.
            tx.send(if released.load(Ordering::SeqCst) {
                "acquired after release"
            } else {
                "acquired early"
            })
            .unwrap();
            drop(lock);
        })
    };
    assert_eq!(rx.recv().unwrap(), "waiting");
    // While we hold the lock the waiter cannot report (bounded wait for a negative).
    assert_eq!(
        rx.recv_timeout(Duration::from_millis(300)),
        Err(mpsc::RecvTimeoutError::Timeout)
    );
    released.store(true, Ordering::SeqCst);
    drop(held);
    assert_eq!(rx.recv().unwrap(), "acquired after release");
    waiter.join().unwrap();
}

#[test]
fn try_lock_step_does_not_wait_and_ids_are_independent() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(&dir.path().join("store")).unwrap();
    let a = id(31, 0);
    let b = id(31, 1);
    let held = store.lock_step(&a).unwrap();
    assert!(store.try_lock_step(&a).unwrap().is_none(), "a is held");
    let other = store.try_lock_step(&b).unwrap();
    assert!(other.is_some(), "b is independent of a");
    drop(held);
    assert!(store.try_lock_step(&a).unwrap().is_some());
}

#[test]
fn a_waiter_survives_the_lock_file_being_removed() {
    // Whoever holds a lock may delete its file (reopening does, for crashed builds). A
    // waiter blocked on the old file must notice and lock the new one, or two builders
    // of one step would both think they hold the lock.
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let store = FsStore::open(&root).unwrap();
    let step = id(32, 0);
    let lock_path = root.join("locks").join(format!("{step}.lock"));
    let held = store.lock_step(&step).unwrap();
    let inode = std::fs::metadata(&lock_path).unwrap().ino();

    let (tx, rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let waiter = {
        let (root, step) = (root.clone(), step.clone());
        std::thread::spawn(move || {
            let other = FsStore::open(&root).unwrap();
            let lock = other.lock_step(&step).unwrap();
            tx.send(()).unwrap();
            release_rx.recv().unwrap();
            drop(lock);
        })
    };
    // Wait until the kernel lists the waiter as blocked on the old file.
    while !blocked_on(inode) {
        std::thread::yield_now();
    }
    std::fs::remove_file(&lock_path).unwrap();
    drop(held);
    rx.recv().unwrap();
    let third = FsStore::open(&root).unwrap();
    assert!(
        third.try_lock_step(&step).unwrap().is_none(),
        "the waiter must hold the lock at the path"
    );
    release_tx.send(()).unwrap();
    waiter.join().unwrap();
    assert!(third.try_lock_step(&step).unwrap().is_some());
}

/// Whether /proc/locks shows a process waiting for a lock on inode `ino`.
fn blocked_on(ino: u64) -> bool {
    let locks = std::fs::read_to_string("/proc/locks").unwrap();
    let suffix = format!(":{ino}");
    locks
        .lines()
        .any(|l| l.contains("->") && l.split_whitespace().any(|f| f.ends_with(&suffix)))
}
