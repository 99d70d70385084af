//! Layer names: set atomically, moved by re-saving, kept by prune, refused by delete.

mod common;

use common::{commit_files, commit_simple, id};
use kiln_store::{FsStore, Store, StoreError};

fn store() -> (tempfile::TempDir, FsStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = FsStore::open(&dir.path().join("store")).expect("open");
    (dir, store)
}

#[test]
fn a_name_points_at_a_layer_and_resaving_moves_it() {
    let (_dir, store) = store();
    let (base, a, b) = (id(1, 0), id(1, 1), id(1, 2));
    commit_simple(&store, &base, None);
    commit_simple(&store, &a, Some(&base));
    commit_simple(&store, &b, Some(&base));
    assert_eq!(store.lookup_name("dev").unwrap(), None);
    assert_eq!(store.set_name("dev", &a).unwrap(), None);
    assert_eq!(Store::lookup_name(&store, "dev").unwrap(), Some(a.clone()));
    assert_eq!(store.set_name("dev", &b).unwrap(), Some(a.clone()));
    assert_eq!(store.lookup_name("dev").unwrap(), Some(b.clone()));
    let listed = store.names().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].name.as_str(), &listed[0].id), ("dev", &b));
    // The update is one rename: nothing staged is left beside the name.
    let entries: Vec<_> = std::fs::read_dir(store.root().join("names"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from("dev")]);
    assert_eq!(store.remove_name("dev").unwrap(), Some(b));
    assert!(store.names().unwrap().is_empty());
}

#[test]
fn names_are_checked_and_must_point_at_a_stored_layer() {
    let (_dir, store) = store();
    let missing = id(2, 0);
    assert!(matches!(
        store.set_name("dev", &missing),
        Err(StoreError::NotFound(_))
    ));
    assert!(matches!(
        store.set_name("../x", &missing),
        Err(StoreError::BadLayerName(_))
    ));
    assert!(store.names().unwrap().is_empty());
}

#[test]
fn a_staged_name_left_by_a_crash_is_removed_at_open() {
    let (dir, store) = store();
    let base = id(3, 0);
    commit_simple(&store, &base, None);
    store.set_name("kept", &base).unwrap();
    let names = store.root().join("names");
    std::os::unix::fs::symlink("../result/whatever", names.join(".new.123-abc-0")).unwrap();
    drop(store);
    let store = FsStore::open(&dir.path().join("store")).unwrap();
    assert!(!names.join(".new.123-abc-0").exists());
    assert_eq!(store.lookup_name("kept").unwrap(), Some(base));
}

#[test]
fn prune_keeps_named_layers_and_their_parents_and_delete_refuses_them() {
    let (_dir, store) = store();
    let (base, named, loose) = (id(4, 0), id(4, 1), id(4, 2));
    commit_simple(&store, &base, None);
    commit_files(&store, &named, Some(&base), &[("big", &"x".repeat(10_000))]);
    commit_simple(&store, &loose, Some(&base));
    store.set_name("keep-me", &named).unwrap();
    let deleted = store.prune(0).unwrap();
    assert_eq!(deleted, vec![loose.clone()]);
    assert!(store.get(&named).unwrap().is_some());
    assert!(store.get(&base).unwrap().is_some());
    // Deleting the base would take the named layer with it.
    let refused = store.delete(&base).unwrap_err();
    assert!(
        matches!(&refused, StoreError::Named { id, names } if id == named.as_str() && names == "keep-me"),
        "{refused}"
    );
    assert!(store.get(&named).unwrap().is_some());
    // Once the name is gone, the layers go as any other.
    store.remove_name("keep-me").unwrap();
    assert_eq!(store.prune(0).unwrap(), vec![named, base]);
}

#[test]
fn clean_removes_names_with_their_layers() {
    let (_dir, store) = store();
    let base = id(5, 0);
    commit_simple(&store, &base, None);
    store.set_name("gone", &base).unwrap();
    store.clean(false).unwrap();
    assert!(store.names().unwrap().is_empty());
}
