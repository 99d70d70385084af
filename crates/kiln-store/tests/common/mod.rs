//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;

use kiln_store::{FsStore, LayerId, LayerInfo, Store};

/// A distinct layer id per `(group, n)`: a scrambled 16-digit prefix (like a real hash,
/// so short links differ), then `group` and `n` (so `&id[16..]` sorts by creation).
pub fn id(group: u64, n: u64) -> LayerId {
    let mut x = group.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ n.wrapping_add(0x632b_e59b_d9b4_e019);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    LayerId::parse(&format!("{x:016x}{group:016x}{n:032x}")).expect("64 hex digits")
}

/// Builds and commits a layer whose rootfs holds `files` (name, content).
pub fn commit_files(
    store: &FsStore,
    id: &LayerId,
    parent: Option<&LayerId>,
    files: &[(&str, &str)],
) -> LayerInfo {
    let _lock = store.lock_step(id).expect("lock");
    let tmp = store.begin(id, parent, parent.is_none()).expect("begin");
    for (name, content) in files {
        let path = tmp.rootfs.join(name);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(path, content).expect("write");
    }
    store
        .commit(tmp, &format!("test layer {}", id.short()), None)
        .expect("commit")
}

/// A simple layer: one file named after the id.
pub fn commit_simple(store: &FsStore, id: &LayerId, parent: Option<&LayerId>) -> LayerInfo {
    commit_files(store, id, parent, &[("file", id.as_str())])
}

/// The deterministic contents the crash test writes for a layer: `(relative path, bytes)`.
pub fn expected_files(id: &LayerId) -> Vec<(String, Vec<u8>)> {
    let count = 3 + (id.as_str().as_bytes()[63] % 8) as usize;
    (0..count)
        .map(|i| {
            (
                format!("f{i}"),
                format!("{id} {i}\n").repeat(i * 40 + 1).into_bytes(),
            )
        })
        .collect()
}

/// Writes [`expected_files`] plus a hardlink `d/h` to `f0` and a symlink `s` to `f0`.
pub fn write_expected(rootfs: &Path, id: &LayerId) {
    for (name, data) in expected_files(id) {
        fs::write(rootfs.join(name), data).expect("write");
    }
    fs::create_dir(rootfs.join("d")).expect("mkdir");
    fs::hard_link(rootfs.join("f0"), rootfs.join("d/h")).expect("hardlink");
    symlink("f0", rootfs.join("s")).expect("symlink");
}

/// Checks a committed rootfs holds exactly what [`write_expected`] wrote.
pub fn check_expected(rootfs: &Path, id: &LayerId) -> Result<(), String> {
    let files = expected_files(id);
    let mut names: Vec<String> = fs::read_dir(rootfs)
        .map_err(|e| format!("{}: {e}", rootfs.display()))?
        .map(|e| {
            e.map(|e| e.file_name().to_string_lossy().into_owned())
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, _>>()?;
    names.sort();
    let mut want: Vec<String> = files
        .iter()
        .map(|(n, _)| n.clone())
        .chain(["d".into(), "s".into()])
        .collect();
    want.sort();
    if names != want {
        return Err(format!("{id}: entries {names:?}, expected {want:?}"));
    }
    for (name, data) in &files {
        let got = fs::read(rootfs.join(name)).map_err(|e| format!("{id}/{name}: {e}"))?;
        if &got != data {
            return Err(format!(
                "{id}/{name}: {} bytes, expected {}",
                got.len(),
                data.len()
            ));
        }
    }
    let h = fs::read(rootfs.join("d/h")).map_err(|e| format!("{id}/d/h: {e}"))?;
    if h != files[0].1 {
        return Err(format!("{id}/d/h: wrong contents"));
    }
    let s = fs::read_link(rootfs.join("s")).map_err(|e| format!("{id}/s: {e}"))?;
    if s != Path::new("f0") {
        return Err(format!("{id}/s points to {}", s.display()));
    }
    Ok(())
}

/// Names of the entries of `dir`, sorted (empty if missing).
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}
