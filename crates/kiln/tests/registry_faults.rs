//! A registry that fails: HTTP 500s, dropped connections, a killed pull. A fault-injecting
//! proxy on loopback (`common::fault_proxy`) stands in front of a real docker-registry.

mod common;

use common::fault_proxy::FaultProxy;
use common::registry::Registry;
use common::*;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// Waits until `path()` names a file of at least `bytes`, or panics after 60 s.
fn wait_for_file(what: &str, bytes: u64, path: impl Fn() -> Option<PathBuf>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if path()
            .and_then(|p| fs::metadata(p).ok())
            .is_some_and(|m| m.len() >= bytes)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} never reached {bytes} bytes"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `kiln --store STORE ARGS…` in `dir` without waiting for it.
fn spawn_kiln(store: &Path, dir: &Path, args: &[&str]) -> std::process::Child {
    Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(dir)
        .env(NO_DOCKER_HUB.0, NO_DOCKER_HUB.1)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("running kiln")
}

#[test]
fn retries_give_up_clearly_and_interrupted_pulls_resume() {
    let dir = test_dir("registry-faults");
    let registry = Registry::start(&dir.join("registry"));
    let proxy = FaultProxy::start(&registry.addr);
    let faults = &proxy.faults;
    let store = dir.join("store");
    fs::write(dir.join("meta.json"), "{}").unwrap();
    let mut disk = b"QFI\xfb".to_vec();
    disk.extend(random(32 << 20));
    fs::write(dir.join("disk.qcow2"), &disk).unwrap();
    let image = format!("oci://{}/kiln/faults:v1", proxy.addr);

    // Three 500s: retried with backoff, then the push goes through.
    faults.fail_next.store(6, Ordering::SeqCst);
    let pushed = kiln(
        &store,
        &dir,
        &[
            "artifact",
            "push",
            "disk.qcow2",
            &image,
            "--metadata",
            "meta.json",
        ],
    )
    .ok();
    assert_eq!(faults.failed.load(Ordering::SeqCst), 6);
    assert!(
        pushed.stderr.contains("HTTP 500"),
        "stderr: {}",
        pushed.stderr
    );
    assert!(pushed.stderr.contains("retrying in"), "{}", pushed.stderr);

    // Two connections cut in the middle of the disk: the pull resumes where each broke off.
    faults.cut_after.store(5 << 20, Ordering::SeqCst);
    faults.cuts_left.store(2, Ordering::SeqCst);
    kiln(&store, &dir, &["artifact", "pull", &image, "-o", "cut"]).ok();
    assert_eq!(fs::read(dir.join("cut/disk.qcow2")).unwrap(), disk);
    assert!(
        proxy.range_starts().iter().any(|&start| start > 0),
        "no resumed range in {:?}",
        faults.ranges.lock().unwrap()
    );
    faults.cut_after.store(0, Ordering::SeqCst);

    // A registry that only fails: a few attempts, then an error naming it and the image.
    faults.always_fail.store(true, Ordering::SeqCst);
    let failed = kiln_env(
        &store,
        &dir,
        &["artifact", "pull", &image, "-o", "failed"],
        &[("KILN_REGISTRY_ATTEMPTS", "3")],
    );
    assert_ne!(failed.code, 0);
    let registry_named = format!("registry {}: {}/kiln/faults:v1", proxy.addr, proxy.addr);
    assert!(failed.stderr.contains(&registry_named), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("gave up after 3 attempts"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("HTTP 500"), "{}", failed.stderr);
    assert!(!dir.join("failed/disk.qcow2").exists());
    faults.always_fail.store(false, Ordering::SeqCst);

    // kiln killed in the middle of a pull: the next pull takes up the partial download.
    faults.ranges.lock().unwrap().clear();
    faults.delay_us_per_64k.store(15_000, Ordering::SeqCst);
    let mut child = spawn_kiln(&store, &dir, &["artifact", "pull", &image, "-o", "killed"]);
    let partial = dir.join("killed/.kiln-partial");
    let largest = || {
        fs::read_dir(&partial)
            .ok()?
            .flatten()
            .max_by_key(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
            .map(|e| e.path())
    };
    wait_for_file("the partial download", 4 << 20, largest);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !dir.join("killed/disk.qcow2").exists(),
        "an unverified disk appeared"
    );
    let kept = fs::metadata(largest().unwrap()).unwrap().len();
    faults.delay_us_per_64k.store(0, Ordering::SeqCst);
    kiln(&store, &dir, &["artifact", "pull", &image, "-o", "killed"]).ok();
    assert_eq!(fs::read(dir.join("killed/disk.qcow2")).unwrap(), disk);
    assert!(
        proxy
            .range_starts()
            .iter()
            .any(|&start| start >= kept.min(4 << 20)),
        "the second pull started over: ranges {:?}, {kept} bytes kept",
        faults.ranges.lock().unwrap()
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_cache_pull_killed_halfway_leaves_the_store_consistent() {
    let dir = test_dir("registry-cache-kill");
    let registry = Registry::start(&dir.join("registry"));
    let proxy = FaultProxy::start(&registry.addr);
    let spec = format!(
        "((from file:{})\n (run (shell \"head -c 24000000 /dev/urandom > /big && echo {}\")))\n",
        busybox_tar().display(),
        nonce()
    );
    let direct = format!("oci://{}/kiln/cache", registry.addr);
    let proxied = format!("oci://{}/kiln/cache", proxy.addr);
    let first = build(&dir.join("store-1"), &dir, &spec, &["--cache-to", &direct]).ok();

    // The second store pulls through a slow proxy and is killed in the middle of the big layer.
    let second = dir.join("store-2");
    proxy
        .faults
        .delay_us_per_64k
        .store(15_000, Ordering::SeqCst);
    fs::write(dir.join("build.spec"), &spec).unwrap();
    let mut child = spawn_kiln(
        &second,
        &dir,
        &["build", "-f", "build.spec", ".", "--cache-from", &proxied],
    );
    let staged = || {
        let tmp = fs::read_dir(second.join("tmp")).ok()?;
        tmp.flatten()
            .map(|e| e.path().join("rootfs.tar.zst"))
            .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
    };
    wait_for_file("the layer download", 4 << 20, staged);
    child.kill().unwrap();
    child.wait().unwrap();
    proxy.faults.delay_us_per_64k.store(0, Ordering::SeqCst);

    // The store holds the base only; the next build pulls the layer whole.
    let listed = kiln(&second, &dir, &["ls", "--json"]).ok();
    let layers: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    assert_eq!(layers.len(), 1, "{}", listed.stdout);
    let left = fs::read_dir(second.join("result-tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "a temporary layer survived the next open");
    let again = build(&second, &dir, &spec, &["--cache-from", &proxied]).ok();
    assert_eq!(again.count("---> pulled"), 1, "{}", again.stdout);
    assert_eq!(again.count("---> saved as"), 0, "{}", again.stdout);
    assert_eq!(again.got(), first.got());
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::create_dir_all(dir.join("b")).unwrap();
    let a = export_tar(&dir.join("store-1"), &dir.join("a"), &first.got());
    let b = export_tar(&second, &dir.join("b"), &again.got());
    assert!(
        fs::read(a).unwrap() == fs::read(b).unwrap(),
        "exports differ"
    );
    let _ = fs::remove_dir_all(&dir);
}
