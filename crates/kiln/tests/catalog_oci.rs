//! Catalogue images through an OCI registry (Debian's docker-registry on loopback):
//! `kiln image push ID oci://…` then `kiln image pull oci://…` into a second, empty
//! catalogue, verified on arrival; `skopeo` reads the artifact; unsigned, tampered and
//! untrusted artifacts are refused and leave nothing in the catalogue.

mod common;

use common::fault_proxy::FaultProxy;
use common::registry::{skopeo_raw, Registry};
use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// A small raw disk: 2 MiB of random data, then a 14 MiB hole, then 64 KiB of data.
fn raw_disk(path: &Path) {
    let mut random = vec![0u8; 2 << 20];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    let mut f = fs::File::create(path).unwrap();
    f.write_all(&random).unwrap();
    f.seek(SeekFrom::Start(16 << 20)).unwrap();
    f.write_all(&random[..64 << 10]).unwrap();
}

/// Writes the kiln manifest `kiln build -o` would write beside `file`: one partition
/// holding Debian 12 for amd64, so the metadata has an OS and an architecture.
fn manifest_for(file: &Path) {
    let d = kiln_image::manifest::hash_file(file).unwrap();
    let os = serde_json::json!({
        "id": "debian", "name": "Debian GNU/Linux", "version": "12",
        "pretty_name": "Debian GNU/Linux 12 (bookworm)", "arch": "amd64"
    });
    let manifest = serde_json::json!({
        "schema": "kiln-image-manifest/1", "name": "web",
        "file": file.file_name().unwrap().to_str().unwrap(),
        "format": "raw", "bytes": d.bytes, "virtual_size": d.bytes,
        "sha256": d.sha256, "sha512": d.sha512, "boot": "none",
        "default_partition": "root", "node_types": [], "arches": ["amd64"],
        "partitions": [{
            "name": "root", "label": "root", "index": 1, "partuuid": "", "fs_uuid": "",
            "offset": 1048576, "size": 15728640, "os": os
        }],
        "spec_sha256": "", "layer_id": "", "kiln_version": "test", "build_time": 0,
        "build_time_utc": "1970-01-01T00:00:00Z"
    });
    fs::write(
        kiln_image::manifest::manifest_path(file),
        manifest.to_string(),
    )
    .unwrap();
}

fn sha256_file(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Everything under `dir`, relative, sorted (directories included).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = walk(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().display().to_string())
        .collect();
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            }
        }
    }
    out
}

/// A catalogue that holds nothing: no entry, no download left in `partial/`.
fn assert_empty(catalog: &Path, k: &dyn Fn(&[&str]) -> Run) {
    assert_eq!(
        json(&k(&["image", "ls", "--json"]).ok()),
        serde_json::json!([])
    );
    for sub in ["entries", "partial"] {
        let left = files_under(&catalog.join(sub));
        assert!(left.is_empty(), "{sub}/ of the catalogue holds {left:?}");
    }
}

#[test]
fn catalogue_images_round_trip_through_a_registry_and_bad_ones_are_refused() {
    let dir = test_dir("catalog-oci");
    let registry = Registry::start(&dir.join("registry"));
    let host = registry.addr.clone();
    let store = dir.join("store");
    let with_catalog = |cat: PathBuf| {
        let store = store.clone();
        let dir = dir.clone();
        move |args: &[&str]| {
            kiln_env(
                &store,
                &dir,
                args,
                &[("KILN_CATALOG", cat.to_str().unwrap())],
            )
        }
    };
    let first = with_catalog(dir.join("first"));
    let second_dir = dir.join("second");
    let second = with_catalog(second_dir.clone());

    // Two endorsers; the second catalogue trusts only "me".
    first(&["key", "generate", "-o", "me.key"]).ok();
    first(&["key", "generate", "-o", "other.key"]).ok();
    let trust = dir.join("trust");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(dir.join("me.pub"), trust.join("me@lab.org.pub")).unwrap();
    let trust_s = trust.to_str().unwrap();

    // add → push oci://
    let disk = dir.join("web.raw");
    raw_disk(&disk);
    manifest_for(&disk);
    let added = json(
        &first(&[
            "image",
            "add",
            "web.raw",
            "--title",
            "Web base",
            "--version",
            "1.0",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
            "--no-lint",
            "--json",
        ])
        .ok(),
    );
    let id = added["id"].as_str().unwrap().to_string();
    let image = format!("{host}/lab/web:1.0");
    let pushed = json(&first(&["image", "push", &id, &format!("oci://{image}"), "--json"]).ok());
    let digest = pushed["digest"].as_str().unwrap().to_string();
    assert_eq!(pushed["id"], id.as_str());
    assert_eq!(
        pushed["pull"].as_str().unwrap(),
        format!("oci://{host}/lab/web@{digest}")
    );

    // skopeo sees a kiln artifact with the metadata's annotations and a signature layer.
    let manifest = skopeo_raw(&image);
    assert_eq!(manifest["artifactType"], "application/vnd.kiln.image.v1");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.image.metadata.v1+json"
    );
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        layers,
        [
            "application/vnd.kiln.disk.raw+zstd",
            "application/vnd.kiln.signature.minisign"
        ]
    );
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "Web base");
    assert_eq!(annotations["org.opencontainers.image.version"], "1.0");
    assert_eq!(annotations["dev.kiln.image.os"], "debian-12");
    assert_eq!(annotations["dev.kiln.image.arch"], "amd64");
    // The config blob is the catalogue's signed metadata, byte for byte.
    let entry_dir = dir.join("first/entries").join(&id);
    let metadata = fs::read(entry_dir.join("metadata.json")).unwrap();
    let signature = fs::read(entry_dir.join("metadata.json.minisig")).unwrap();
    assert_eq!(
        fs::read(registry.blob_file(manifest["config"]["digest"].as_str().unwrap())).unwrap(),
        metadata
    );

    // An untrusted endorser's artifact: refused, the second catalogue stays empty.
    assert_empty(&second_dir, &second);
    let others = dir.join("others");
    fs::create_dir_all(&others).unwrap();
    fs::copy(dir.join("other.pub"), others.join("other@lab.org.pub")).unwrap();
    fails(
        second(&[
            "image",
            "pull",
            &format!("oci://{image}"),
            "--trust",
            others.to_str().unwrap(),
        ]),
        "refused before its disk was downloaded: endorser refused",
    );
    assert_empty(&second_dir, &second);

    // Pull by tag into the second, empty catalogue: verified, then bit-exact.
    let pulled = json(
        &second(&[
            "image",
            "pull",
            &format!("oci://{image}"),
            "--trust",
            trust_s,
            "--json",
        ])
        .ok(),
    );
    assert_eq!(pulled["id"], id.as_str());
    assert_eq!(pulled["manifest_digest"], digest.as_str());
    assert_eq!(pulled["already_present"], false);
    let held = PathBuf::from(pulled["image_path"].as_str().unwrap());
    assert!(held.starts_with(&second_dir), "{}", held.display());
    assert_eq!(sha256_file(&held), sha256_file(&disk), "the disk changed");
    assert_eq!(fs::metadata(&held).unwrap().len(), 16 << 20 | 64 << 10);
    assert_eq!(
        fs::read(second_dir.join("entries").join(&id).join("metadata.json")).unwrap(),
        metadata,
        "the signed metadata must arrive unchanged"
    );
    second(&["image", "verify", &id, "--trust", trust_s]).ok();
    assert!(files_under(&second_dir.join("partial")).is_empty());
    // Pinned by digest, again: already there, nothing added twice.
    let again = json(
        &second(&[
            "image",
            "pull",
            &format!("oci://{host}/lab/web@{digest}"),
            "--trust",
            trust_s,
            "--json",
        ])
        .ok(),
    );
    assert_eq!(again["already_present"], true);
    assert_eq!(
        json(&second(&["image", "ls", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // A deprecated image comes with a warning; an expired one is refused unless
    // --allow-expired, before its disk is downloaded.
    let fourth_dir = dir.join("fourth");
    let fourth = with_catalog(fourth_dir.clone());
    first(&[
        "image",
        "deprecate",
        &id,
        "--reason",
        "superseded by 2.0",
        "--key",
        "me.key",
    ])
    .ok();
    let deprecated = format!("oci://{host}/lab/web:deprecated");
    first(&["image", "push", &id, &deprecated]).ok();
    let run = fourth(&["image", "pull", &deprecated, "--trust", trust_s]).ok();
    assert!(
        run.stderr.contains("warning") && run.stderr.contains("superseded by 2.0"),
        "{}",
        run.stderr
    );
    let old = dir.join("old.raw");
    raw_disk(&old);
    manifest_for(&old);
    let old_id = json(
        &first(&[
            "image",
            "add",
            "old.raw",
            "--title",
            "Old",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
            "--valid-for",
            "1s",
            "--no-lint",
            "--json",
        ])
        .ok(),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    let expired = format!("oci://{host}/lab/old:1");
    first(&["image", "push", &old_id, &expired]).ok();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    fails(
        fourth(&["image", "pull", &expired, "--trust", trust_s]),
        "refused before its disk was downloaded: expired",
    );
    assert_eq!(
        json(&fourth(&["image", "ls", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let run = fourth(&[
        "image",
        "pull",
        &expired,
        "--trust",
        trust_s,
        "--allow-expired",
    ])
    .ok();
    assert!(run.stderr.contains("--allow-expired"), "{}", run.stderr);
    assert_eq!(
        sha256_file(&fourth_dir.join("entries").join(&old_id).join("old.raw")),
        sha256_file(&old)
    );

    // Bad artifacts, pushed with the artifact layer directly; each is refused by a
    // third catalogue that trusts "me", and leaves it empty.
    let third_dir = dir.join("third");
    let third = with_catalog(third_dir.clone());
    fs::write(dir.join("meta.json"), &metadata).unwrap();
    fs::write(dir.join("sig.minisig"), &signature).unwrap();
    let other_disk = dir.join("other.raw");
    raw_disk(&other_disk);
    let artifact_push = |tag: &str, disk: &str, extra: &[&str]| {
        let target = format!("oci://{host}/lab/bad:{tag}");
        let mut args = vec!["artifact", "push", disk, &target, "--metadata", "meta.json"];
        args.extend_from_slice(extra);
        first(&args).ok();
        target
    };
    let pull_refused = |target: &str, needle: &str| {
        fails(
            third(&["image", "pull", target, "--trust", trust_s]),
            needle,
        );
        assert_empty(&third_dir, &third);
    };
    // Unsigned.
    let unsigned = artifact_push("unsigned", "web.raw", &[]);
    pull_refused(&unsigned, "unsigned");
    // Signed metadata over a different disk: the checksum does not match.
    let swapped = artifact_push("swapped", "other.raw", &["--signature", "sig.minisig"]);
    pull_refused(&swapped, "checksum refused");
    // Metadata changed after signing (its title): the signature does not match.
    let forged = String::from_utf8(metadata.clone()).unwrap().replacen(
        "\"title\":\"Web base\"",
        "\"title\":\"Web base (patched)\"",
        1,
    );
    assert_ne!(forged.as_bytes(), metadata.as_slice());
    fs::write(dir.join("meta.json"), forged).unwrap();
    let tampered = artifact_push("tampered", "web.raw", &["--signature", "sig.minisig"]);
    pull_refused(
        &tampered,
        "refused before its disk was downloaded: signature refused",
    );
    // Signed by a key the catalogue does not trust.
    first(&["image", "rm", &id]).ok();
    first(&[
        "image",
        "add",
        "web.raw",
        "--title",
        "Web base",
        "--endorser",
        "me@lab.org",
        "--key",
        "other.key",
        "--no-lint",
    ])
    .ok();
    first(&["image", "push", &id, &format!("oci://{host}/lab/bad:other")]).ok();
    pull_refused(
        &format!("oci://{host}/lab/bad:other"),
        "refused before its disk was downloaded: endorser refused",
    );

    drop(registry);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn a_catalogue_pull_killed_halfway_leaves_nothing_visible_and_resumes() {
    let dir = test_dir("catalog-oci-resume");
    let registry = Registry::start(&dir.join("registry"));
    let proxy = FaultProxy::start(&registry.addr);
    let store = dir.join("store");
    let first_cat = dir.join("first");
    let second_cat = dir.join("second");
    let with = |cat: &Path, args: &[&str]| {
        kiln_env(
            &store,
            &dir,
            args,
            &[("KILN_CATALOG", cat.to_str().unwrap())],
        )
    };
    with(&first_cat, &["key", "generate", "-o", "me.key"]).ok();
    let trust = dir.join("trust");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(dir.join("me.pub"), trust.join("me.pub")).unwrap();
    let trust_s = trust.to_str().unwrap();
    // 16 MiB of random bytes: zstd cannot shrink them, so the transfer takes a while.
    let disk = dir.join("big.raw");
    let mut random = vec![0u8; 16 << 20];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut random)
        .unwrap();
    fs::write(&disk, &random).unwrap();
    manifest_for(&disk);
    let id = json(
        &with(
            &first_cat,
            &[
                "image",
                "add",
                "big.raw",
                "--title",
                "Big",
                "--endorser",
                "me@lab.org",
                "--key",
                "me.key",
                "--no-lint",
                "--json",
            ],
        )
        .ok(),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Pushed straight to the registry, pulled through the slow proxy.
    let pushed = format!("oci://{}/lab/big:1", registry.addr);
    with(&first_cat, &["image", "push", &id, &pushed]).ok();
    let through_proxy = format!("oci://{}/lab/big:1", proxy.addr);

    proxy
        .faults
        .delay_us_per_64k
        .store(15_000, Ordering::SeqCst);
    let mut child = Command::new(KILN)
        .arg("--store")
        .arg(&store)
        .args(["image", "pull", &through_proxy, "--trust", trust_s])
        .env("KILN_CATALOG", &second_cat)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = second_cat.join("partial");
    let largest = || {
        walk(&partial)
            .into_iter()
            .filter(|p| p.is_file())
            .max_by_key(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while largest()
        .and_then(|p| fs::metadata(p).ok())
        .is_none_or(|m| m.len() < 4 << 20)
    {
        assert!(Instant::now() < deadline, "the pull never got 4 MiB down");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Killed: nothing in the catalogue, the partial download kept.
    assert!(files_under(&second_cat.join("entries")).is_empty());
    let kept = fs::metadata(largest().unwrap()).unwrap().len();
    assert!(kept >= 4 << 20);
    assert_eq!(
        json(&with(&second_cat, &["image", "ls", "--json"]).ok()),
        serde_json::json!([])
    );

    // Run again: it resumes where the first stopped, and the image arrives verified.
    proxy.faults.ranges.lock().unwrap().clear();
    proxy.faults.delay_us_per_64k.store(0, Ordering::SeqCst);
    with(
        &second_cat,
        &["image", "pull", &through_proxy, "--trust", trust_s],
    )
    .ok();
    assert!(
        proxy.range_starts().iter().any(|&start| start >= 4 << 20),
        "the second pull started over: ranges {:?}",
        proxy.faults.ranges.lock().unwrap()
    );
    with(&second_cat, &["image", "verify", &id, "--trust", trust_s]).ok();
    assert_eq!(
        sha256_file(&second_cat.join("entries").join(&id).join("big.raw")),
        sha256_file(&disk)
    );
    assert!(
        files_under(&partial).is_empty(),
        "{:?}",
        files_under(&partial)
    );

    drop(registry);
    let _ = fs::remove_dir_all(&dir);
}
