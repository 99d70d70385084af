//! `kiln build --cache-to/--cache-from oci://…`: a build cache shared through a real
//! registry (Debian's docker-registry, started on loopback by the test).

mod common;

use common::registry::Registry;
use common::*;
use std::fs;
use std::path::Path;

/// Six steps on a busybox base: random bytes (so a rerun would show), a copy from the
/// context, a whiteout, an opaque directory, modes and owners, and a step that prints.
fn spec(n: &str) -> String {
    format!(
        "((from file:{base})
 (run (shell \"head -c 64 /dev/urandom > /random && mkdir -p /data/old && echo {n} > /data/old/f\"))
 (copy (src payload.txt) (dst /srv/payload.txt))
 (run (shell \"rm /bin/vi && chown 1000:1000 /srv/payload.txt && chmod 4750 /srv/payload.txt\"))
 (run (shell \"rm -rf /data && mkdir /data && echo fresh > /data/new\"))
 (env GREETING hello-from-the-cache)
 (workdir /work)
 (run (shell \"echo $GREETING; echo $GREETING > greeting; ln -s greeting link\"))
 (run (shell \"head -c 3000000 /dev/urandom > big.bin\")))
",
        base = busybox_tar().display()
    )
}

/// The step ids pushed, in order.
fn pushed(run: &Run) -> Vec<String> {
    run.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("---> pushed \""))
        .map(|r| r.split('"').next().unwrap_or_default().to_string())
        .collect()
}

/// The digest of the rootfs blob of layer `id` in the cache, read with skopeo.
fn rootfs_blob(cache: &str, id: &str) -> String {
    let manifest = common::registry::skopeo_raw(&format!("{cache}:{id}"));
    assert_eq!(manifest["artifactType"], "application/vnd.kiln.layer.v1");
    assert_eq!(manifest["annotations"]["dev.kiln.layer.id"], id);
    let layer = &manifest["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.kiln.layer.v1.tar+zstd");
    layer["digest"].as_str().unwrap().to_string()
}

fn no_temporaries(store: &Path) {
    let left = fs::read_dir(store.join("result-tmp"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(left, 0, "a temporary layer was left in {}", store.display());
}

#[test]
fn a_second_store_builds_everything_from_the_registry_and_refuses_tampered_layers() {
    let dir = test_dir("registry-cache");
    let registry = Registry::start(&dir.join("registry"));
    let cache = format!("{}/kiln/cache", registry.addr);
    let flag = format!("oci://{cache}");
    fs::write(dir.join("payload.txt"), "payload\n").unwrap();
    let text = spec(&nonce());

    // The first store builds the six steps and pushes them with the base.
    let first_store = dir.join("store-1");
    let first = build(&first_store, &dir, &text, &["--cache-to", &flag]).ok();
    assert_eq!(first.count("---> saved as"), 7, "{}", first.stdout);
    let ids = pushed(&first);
    assert_eq!(ids.len(), 7, "base + six steps pushed:\n{}", first.stdout);
    // Pushing again sends nothing: the registry has every layer.
    let again = build(&first_store, &dir, &text, &["--cache-to", &flag]).ok();
    assert_eq!(
        (again.count("from cache"), pushed(&again).len()),
        (7, 0),
        "{}",
        again.stdout
    );

    // A second, empty store runs no step: every layer comes from the registry, logs replayed.
    let second_store = dir.join("store-2");
    let second = build(&second_store, &dir, &text, &["--cache-from", &flag]).ok();
    assert_eq!(second.count("---> saved as"), 0, "{}", second.stdout);
    assert_eq!(second.count("---> pulled"), 7, "{}", second.stdout);
    assert!(
        second.stdout.contains("hello-from-the-cache"),
        "log replayed:\n{}",
        second.stdout
    );
    assert_eq!(second.got(), first.got());
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::create_dir_all(dir.join("b")).unwrap();
    let a_tar = export_tar(&first_store, &dir.join("a"), &first.got());
    let b_tar = export_tar(&second_store, &dir.join("b"), &second.got());
    assert!(
        fs::read(&a_tar).unwrap() == fs::read(&b_tar).unwrap(),
        "the two stores export different trees"
    );
    let entries = tar_entries(&b_tar);
    assert!(
        !entries.iter().any(|e| e.0 == "bin/vi"),
        "the whiteout was lost"
    );
    assert!(
        !entries.iter().any(|e| e.0.starts_with("data/old")),
        "the opaque dir was lost"
    );
    assert_eq!(find_entry(&entries, "srv/payload.txt").1, 1000);
    assert_eq!(find_entry(&entries, "srv/payload.txt").3, 0o4750);
    // The layers keep their sub-second times, so every export format agrees too.
    let first_new = fs::metadata(
        first_store
            .join("result")
            .join(&ids[4])
            .join("rootfs/data/new"),
    );
    let second_new = fs::metadata(
        second_store
            .join("result")
            .join(&ids[4])
            .join("rootfs/data/new"),
    );
    use std::os::unix::fs::MetadataExt;
    let (first_new, second_new) = (first_new.unwrap(), second_new.unwrap());
    assert_eq!(
        (second_new.mtime(), second_new.mtime_nsec()),
        (first_new.mtime(), first_new.mtime_nsec()),
        "layer {}",
        ids[4]
    );
    no_temporaries(&second_store);

    // Tamper with step 1's rootfs blob (same size) and truncate step 5's: a third store
    // refuses both, builds those two steps itself, and pulls the others.
    let tampered = registry.blob_file(&rootfs_blob(&cache, &ids[1]));
    let mut bytes = fs::read(&tampered).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&tampered, &bytes).unwrap();
    let truncated = registry.blob_file(&rootfs_blob(&cache, &ids[5]));
    let len = fs::metadata(&truncated).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let third_store = dir.join("store-3");
    let third = build(&third_store, &dir, &text, &["--cache-from", &flag]).ok();
    assert_eq!(third.count("---> saved as"), 2, "{}", third.stdout);
    assert_eq!(third.count("---> pulled"), 5, "{}", third.stdout);
    assert_eq!(third.count("was refused"), 2, "{}", third.stdout);
    assert!(
        third.stdout.contains("tampered with or corrupted"),
        "{}",
        third.stdout
    );
    assert_eq!(third.got(), first.got());
    no_temporaries(&third_store);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_cache_is_a_warning_for_cache_from_and_an_error_for_cache_to() {
    let dir = test_dir("registry-cache-down");
    let store = dir.join("store");
    // Port 9 (discard): nothing listens there.
    let down = "oci://127.0.0.1:9/kiln/cache";
    let spec = format!(
        "((from file:{})\n (run (shell \"echo {} > /a\"))\n (run (shell \"echo b > /b\")))\n",
        busybox_tar().display(),
        nonce()
    );
    fs::write(dir.join("build.spec"), &spec).unwrap();
    let args = ["build", "-f", "build.spec", ".", "--cache-from", down];
    let from = kiln_env(&store, &dir, &args, &[("KILN_REGISTRY_ATTEMPTS", "2")]).ok();
    assert_eq!(from.count("---> saved as"), 3, "{}", from.stdout);
    // Said once, then the build goes on without the cache.
    assert_eq!(
        from.count("building without it from here on"),
        1,
        "{}",
        from.stdout
    );
    assert!(
        from.stdout.contains("registry 127.0.0.1:9"),
        "{}",
        from.stdout
    );

    let args = ["build", "-f", "build.spec", ".", "--cache-to", down];
    let to = kiln_env(&store, &dir, &args, &[("KILN_REGISTRY_ATTEMPTS", "2")]);
    assert_eq!(to.code, 1, "{}\n{}", to.stdout, to.stderr);
    assert!(
        to.stderr.contains("--cache-to") && to.stderr.contains("registry 127.0.0.1:9"),
        "{}",
        to.stderr
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn qemu_sandbox_layers_come_from_the_registry_too() {
    let dir = test_dir("registry-cache-qemu");
    let registry = Registry::start(&dir.join("registry"));
    let flag = format!("oci://{}/kiln/vm-cache", registry.addr);
    let spec = format!(
        "((from file:{})\n (sandbox qemu)\n (run (shell \"echo {} > /etc/motd\"))\n (run (shell \"head -c 100000 /dev/urandom > /random\")))\n",
        busybox_tar().display(),
        nonce()
    );
    // The tree base, Debian's kernel package (busybox has no kernel), the VM base and
    // two steps, each a disk layer whose qcow2 is backed by its parent's.
    let first_store = dir.join("store-1");
    let first = build(&first_store, &dir, &spec, &["--cache-to", &flag]).ok();
    assert_eq!(pushed(&first).len(), 5, "{}", first.stdout);
    let second_store = dir.join("store-2");
    let second = build(&second_store, &dir, &spec, &["--cache-from", &flag]).ok();
    assert_eq!(
        second.count("---> saved as"),
        0,
        "no VM may run:\n{}",
        second.stdout
    );
    assert_eq!(second.count("---> pulled"), 5, "{}", second.stdout);
    assert_eq!(second.got(), first.got());
    fs::create_dir_all(dir.join("a")).unwrap();
    fs::create_dir_all(dir.join("b")).unwrap();
    let a = export_tar(&first_store, &dir.join("a"), &first.got());
    let b = export_tar(&second_store, &dir.join("b"), &second.got());
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "exports differ"
    );
    assert!(tar_read(&b, "random").is_some_and(|r| r.len() == 100000));
    no_temporaries(&second_store);
    let _ = fs::remove_dir_all(&dir);
}
