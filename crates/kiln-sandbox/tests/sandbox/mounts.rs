//! `kiln_sandbox::mount`: overlay and bind mounts in a private mount namespace. Runs in a
//! helper process so the namespace change does not outlive the test.

use std::path::{Path, PathBuf};

use kiln_sandbox::mount::{enter_private_mount_namespace, mount_lower_readonly, mount_root};
use kiln_sandbox::RootFs;
use nix::sys::stat::{makedev, mknod, stat, Mode, SFlag};

use crate::check;
use crate::fixture::{set, tree, Fixture, TestResult};
use crate::lifecycle::run_helper;

pub fn union_and_whiteouts(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_helper("mounts", &[&layer.dir.path().to_path_buf()])?;
    check!(out.trim() == "ok", "helper: {out}");
    Ok(())
}

fn io<T>(what: &str, r: std::io::Result<T>) -> Result<T, String> {
    r.map_err(|e| format!("{what}: {e}"))
}

fn whiteout(path: &Path) -> Result<(), String> {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .map_err(|e| format!("mknod {}: {e}", path.display()))
}

fn is_whiteout(path: &Path) -> bool {
    stat(path).is_ok_and(|st| {
        SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFCHR && st.st_rdev == 0
    })
}

fn is_mounted(path: &Path) -> bool {
    let target = path.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo").is_ok_and(|info| {
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(target.as_ref()))
    })
}

fn write_fails_read_only(path: &Path) -> bool {
    std::fs::write(path, "x").is_err_and(|e| e.raw_os_error() == Some(libc::EROFS))
}

/// Helper: exercises every public function of `mount` and prints "ok".
pub fn helper_mounts(args: &[String]) -> TestResult {
    let work = PathBuf::from(args.first().ok_or("expected a work dir")?).join("mount-api");
    enter_private_mount_namespace().map_err(|e| e.to_string())?;
    let (l1, l2) = (work.join("l1"), work.join("l2"));
    io("create l1", std::fs::create_dir_all(l1.join("etc")))?;
    io("create l2", std::fs::create_dir(&l2))?;
    for (path, text) in [
        (l1.join("a"), "a"),
        (l1.join("b"), "b"),
        (l1.join("etc/x"), "x"),
        (l2.join("c"), "c"),
    ] {
        io("write a layer file", std::fs::write(path, text))?;
    }
    whiteout(&l2.join("a"))?;

    // Two lower layers: a read-only overlay; l2's whiteout hides l1's a.
    let union = work.join("mnt/union");
    let guard =
        mount_lower_readonly(&[l2.clone(), l1.clone()], &union).map_err(|e| e.to_string())?;
    check!(
        guard.path() == union,
        "guard path {}",
        guard.path().display()
    );
    check!(
        tree(&union) == set(&["b", "c", "etc", "etc/x"]),
        "union: {:?}",
        tree(&union)
    );
    check!(
        write_fails_read_only(&union.join("new")),
        "union is writable"
    );
    check!(is_mounted(&union), "union not in mountinfo");
    drop(guard);
    check!(
        !is_mounted(&union) && !work.join("mnt").exists(),
        "drop left the mount or its mountpoint behind"
    );

    // One lower layer: a read-only bind mount.
    let single = work.join("single");
    let guard =
        mount_lower_readonly(std::slice::from_ref(&l1), &single).map_err(|e| e.to_string())?;
    check!(
        tree(&single) == set(&["a", "b", "etc", "etc/x"]),
        "single: {:?}",
        tree(&single)
    );
    check!(
        write_fails_read_only(&single.join("new")),
        "single layer is writable"
    );
    guard.unmount().map_err(|e| e.to_string())?;
    check!(
        !is_mounted(&single) && !single.exists(),
        "unmount left the mount or its mountpoint behind"
    );

    // A writable overlay root: writes and deletions land in upper, as files and whiteouts.
    let (upper, workdir) = (work.join("upper"), work.join("work"));
    io("create upper", std::fs::create_dir(&upper))?;
    io("create work", std::fs::create_dir(&workdir))?;
    whiteout(&upper.join("b"))?;
    let root = RootFs::Overlay {
        lower: vec![l2.clone(), l1.clone()],
        upper: upper.clone(),
        work: workdir,
    };
    let merged = work.join("merged");
    let guard = mount_root(&root, &merged).map_err(|e| e.to_string())?;
    check!(
        tree(&merged) == set(&["c", "etc", "etc/x"]),
        "merged: {:?}",
        tree(&merged)
    );
    io(
        "write through the overlay",
        std::fs::write(merged.join("new"), "n"),
    )?;
    io(
        "delete through the overlay",
        std::fs::remove_file(merged.join("c")),
    )?;
    guard.unmount().map_err(|e| e.to_string())?;
    check!(
        tree(&upper) == set(&["b", "c", "new"]),
        "upper: {:?}",
        tree(&upper)
    );
    check!(
        is_whiteout(&upper.join("c")) && is_whiteout(&upper.join("b")),
        "deletions are not whiteouts"
    );

    // A flat tree: a writable bind mount.
    let flat = work.join("flat");
    io("create flat", std::fs::create_dir(&flat))?;
    let bound = work.join("bound");
    let guard = mount_root(&RootFs::Dir(flat.clone()), &bound).map_err(|e| e.to_string())?;
    io(
        "write through the bind",
        std::fs::write(bound.join("g"), "g"),
    )?;
    drop(guard);
    check!(
        flat.join("g").exists() && !bound.exists(),
        "bind write lost or mountpoint left"
    );

    check!(
        mount_lower_readonly(&[], &work.join("none")).is_err(),
        "an empty chain mounted"
    );
    println!("ok");
    Ok(())
}
