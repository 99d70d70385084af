//! The store's paths work as real overlayfs options: a step's upper and work dirs from
//! `begin`, lower dirs from `chain`, whiteouts and overlayfs's mode-000 `work/work`
//! survive commit. Needs root and overlayfs; the mounts live in a private mount
//! namespace of one thread, so nothing leaks to the host even if the test fails.

use std::fs;
use std::path::Path;

use kiln_store::{FsStore, LayerId, Store};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

fn id(n: u64) -> LayerId {
    LayerId::parse(&format!(
        "{:016x}{:048x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
        n
    ))
    .unwrap()
}

fn overlay(lowers: &[std::path::PathBuf], upper: Option<(&Path, &Path)>, target: &Path) {
    let lower = lowers
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":");
    let mut data = format!("lowerdir={lower}");
    if let Some((upper, work)) = upper {
        data += &format!(",upperdir={},workdir={}", upper.display(), work.display());
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .unwrap_or_else(|e| panic!("mount overlay {data}: {e}"));
}

#[test]
fn layers_stack_as_real_overlay_mounts() {
    let overlay_listed = fs::read_to_string("/proc/filesystems")
        .map(|s| s.lines().any(|l| l.ends_with("overlay")))
        .unwrap_or(false);
    if !nix::unistd::geteuid().is_root() || !overlay_listed {
        eprintln!("skipped: needs root and overlayfs");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(&dir.path().join("store")).unwrap();
    let merged = dir.path().join("merged");
    fs::create_dir(&merged).unwrap();

    let base = id(1);
    let tmp = store.begin(&base, None, true).unwrap();
    fs::write(tmp.rootfs.join("keep"), "base").unwrap();
    fs::write(tmp.rootfs.join("change"), "base").unwrap();
    fs::write(tmp.rootfs.join("remove"), "base").unwrap();
    fs::create_dir(tmp.rootfs.join("d")).unwrap();
    fs::write(tmp.rootfs.join("d/x"), "base").unwrap();
    store.commit(tmp, "base", None).unwrap();

    let step = id(2);
    let lowers = store.chain(&base).unwrap();
    let tmp = store.begin(&step, Some(&base), false).unwrap();
    let (merged_ref, tmp_ref) = (&merged, &tmp);
    std::thread::scope(|s| {
        s.spawn(move || {
            unshare(CloneFlags::CLONE_NEWNS).expect("private mount namespace");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            // A one-lower overlay needs an upper; this is how a step runs.
            overlay(&lowers, Some((&tmp_ref.rootfs, &tmp_ref.work)), merged_ref);
            fs::write(merged_ref.join("change"), "step").unwrap();
            fs::remove_file(merged_ref.join("remove")).unwrap();
            fs::write(merged_ref.join("new"), "step").unwrap();
            umount2(merged_ref.as_path(), MntFlags::empty()).unwrap();
        })
        .join()
        .unwrap();
    });
    assert!(
        tmp.work.join("work").exists(),
        "overlayfs made its work/work"
    );
    let info = store.commit(tmp, "step", None).unwrap();
    assert_eq!(
        info.size, 8,
        "only the upper dir is measured: `change` and `new`"
    );

    let chain = store.chain(&step).unwrap();
    assert_eq!(chain.len(), 2);
    std::thread::scope(|s| {
        s.spawn(|| {
            unshare(CloneFlags::CLONE_NEWNS).expect("private mount namespace");
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .unwrap();
            overlay(&chain, None, &merged);
            let read = |name: &str| fs::read_to_string(merged.join(name)).ok();
            assert_eq!(read("keep").as_deref(), Some("base"));
            assert_eq!(read("change").as_deref(), Some("step"));
            assert_eq!(read("new").as_deref(), Some("step"));
            assert_eq!(read("d/x").as_deref(), Some("base"));
            assert!(
                !merged.join("remove").exists(),
                "whiteout hides the deleted file"
            );
            umount2(merged.as_path(), MntFlags::empty()).unwrap();
        })
        .join()
        .unwrap();
    });
}
