//! `kiln artifact push|pull`: disk images as OCI artifacts in a real registry (Debian's
//! docker-registry on loopback), inspected with skopeo.

mod common;

use common::registry::{skopeo_raw, Registry};
use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

/// sha256sum's digest of a file (coreutils: fast whatever this test's build profile).
fn file_sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Random bytes from the kernel.
fn random(n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// A 1 GiB sparse raw disk with data at its start, in its middle and at its end.
fn sparse_raw(path: &Path) {
    let mut f = fs::File::create(path).unwrap();
    f.set_len(1 << 30).unwrap();
    for offset in [0u64, 512 << 20, (1 << 30) - (1 << 20)] {
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&random(1 << 20)).unwrap();
    }
}

fn qcow2(dir: &Path) -> std::path::PathBuf {
    let raw = dir.join("small.raw");
    fs::write(&raw, random(24 << 20)).unwrap();
    let q = dir.join("small.qcow2");
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&q)
        .output()
        .expect("qemu-img (apt-get install qemu-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::remove_file(&raw).unwrap();
    q
}

#[test]
fn disks_round_trip_bit_exact_and_tampered_ones_are_refused() {
    let dir = test_dir("registry-artifact");
    let registry = Registry::start(&dir.join("registry"));
    let store = dir.join("store");
    let host = &registry.addr;
    fs::write(dir.join("meta.json"), r#"{"name":"demo","version":"1.0"}"#).unwrap();
    fs::write(dir.join("sig.minisig"), "untrusted comment: test\nRWQ...\n").unwrap();

    // A 1 GiB sparse raw disk: compressed on the way up, sparse again on the way down.
    let raw = dir.join("disk.raw");
    sparse_raw(&raw);
    let image = format!("{host}/kiln/images:raw");
    let pushed = kiln(
        &store,
        &dir,
        &[
            "artifact",
            "push",
            "disk.raw",
            &format!("oci://{image}"),
            "--metadata",
            "meta.json",
            "--signature",
            "sig.minisig",
            "--title",
            "demo",
            "--version",
            "1.0",
            "--os",
            "debian-12",
            "--arch",
            "amd64",
            "--json",
        ],
    )
    .ok();
    let pushed: serde_json::Value = serde_json::from_str(&pushed.stdout).unwrap();
    assert_eq!(pushed["disk_transfer"], "uploaded");
    let manifest = skopeo_raw(&image);
    assert_eq!(manifest["artifactType"], "application/vnd.kiln.image.v1");
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.kiln.image.metadata.v1+json"
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.kiln.disk.raw+zstd"
    );
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.kiln.signature.minisign"
    );
    let annotations = &manifest["annotations"];
    assert_eq!(annotations["org.opencontainers.image.title"], "demo");
    assert_eq!(annotations["org.opencontainers.image.version"], "1.0");
    assert_eq!(annotations["dev.kiln.image.os"], "debian-12");
    assert_eq!(annotations["dev.kiln.image.arch"], "amd64");
    // kiln's own inspect shows the same (skopeo's plain inspect refuses artifacts).
    let inspected = kiln(
        &store,
        &dir,
        &["artifact", "inspect", &format!("oci://{image}")],
    )
    .ok();
    let inspected: serde_json::Value = serde_json::from_str(&inspected.stdout).unwrap();
    assert_eq!(inspected["digest"], pushed["digest"]);
    assert_eq!(inspected["artifactType"], "application/vnd.kiln.image.v1");
    assert_eq!(inspected["annotations"]["dev.kiln.image.os"], "debian-12");
    assert_eq!(inspected["layers"].as_array().unwrap().len(), 2);
    // By digest, as the catalogue pins it.
    let by_digest = format!(
        "oci://{host}/kiln/images@{}",
        pushed["digest"].as_str().unwrap()
    );
    kiln(
        &store,
        &dir,
        &["artifact", "pull", &by_digest, "-o", "raw-out"],
    )
    .ok();
    let back = dir.join("raw-out/disk.raw");
    assert_eq!(fs::metadata(&back).unwrap().len(), 1 << 30);
    assert_eq!(
        file_sha256(&back),
        file_sha256(&raw),
        "the raw disk changed"
    );
    assert!(
        fs::metadata(&back).unwrap().blocks() * 512 < 64 << 20,
        "holes kept"
    );
    assert_eq!(
        fs::read_to_string(dir.join("raw-out/metadata.json")).unwrap(),
        r#"{"name":"demo","version":"1.0"}"#
    );
    assert!(dir.join("raw-out/signature.minisig").is_file());
    assert!(!dir.join("raw-out/.kiln-partial").exists());
    fs::remove_file(&raw).unwrap();
    fs::remove_dir_all(dir.join("raw-out")).unwrap();

    // A qcow2, pushed in chunks, then to a second repository where it is mounted.
    let q = qcow2(&dir);
    let q_image = format!("oci://{host}/kiln/images:qcow2");
    kiln(
        &store,
        &dir,
        &[
            "artifact",
            "push",
            "small.qcow2",
            &q_image,
            "--metadata",
            "meta.json",
            "--chunked",
        ],
    )
    .ok();
    kiln(&store, &dir, &["artifact", "pull", &q_image, "-o", "q-out"]).ok();
    assert_eq!(file_sha256(&dir.join("q-out/disk.qcow2")), file_sha256(&q));
    let mounted = kiln(
        &store,
        &dir,
        &[
            "artifact",
            "push",
            "small.qcow2",
            &format!("oci://{host}/kiln/other:v1"),
            "--metadata",
            "meta.json",
            "--mount-from",
            "kiln/images",
        ],
    )
    .ok();
    assert!(
        mounted.stdout.contains("mounted from kiln/images"),
        "{}",
        mounted.stdout
    );
    // Unsigned: refused when a signature is required.
    let unsigned = kiln(
        &store,
        &dir,
        &[
            "artifact",
            "pull",
            &format!("oci://{host}/kiln/other:v1"),
            "-o",
            "u-out",
            "--require-signature",
        ],
    );
    assert_ne!(unsigned.code, 0);
    assert!(unsigned.stderr.contains("unsigned"), "{}", unsigned.stderr);
    assert!(!dir.join("u-out/disk.qcow2").exists());

    // Tampered in the registry: refused, nothing kept.
    let disk_digest = skopeo_raw(&format!("{host}/kiln/images:qcow2"))["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = registry.blob_file(&disk_digest);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[4096] ^= 1;
    fs::write(&blob, &bytes).unwrap();
    let refused = kiln(&store, &dir, &["artifact", "pull", &q_image, "-o", "t-out"]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("was refused"), "{}", refused.stderr);
    assert!(refused.stderr.contains("tampered"), "{}", refused.stderr);
    assert!(!dir.join("t-out/disk.qcow2").exists());
    let leftovers: Vec<_> = fs::read_dir(dir.join("t-out/.kiln-partial"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().contains(&disk_digest[7..]))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "the tampered blob was kept");
    let _ = fs::remove_dir_all(&dir);
}

/// The JSON member `name` of a tar.
fn tar_json(tar: &Path, name: &str) -> serde_json::Value {
    let bytes = tar_read(tar, name).unwrap_or_else(|| panic!("{name} missing"));
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn a_containerdisk_has_one_layer_with_the_disk_owned_by_qemu() {
    let dir = test_dir("containerdisk");
    let registry = Registry::start(&dir.join("registry"));
    let store = dir.join("store");
    let spec = format!(
        "((from file:{})\n (run (shell \"echo {} > /etc/motd\")))\n",
        busybox_tar().display(),
        nonce()
    );
    let id = build(&store, &dir, &spec, &[]).ok().got();
    let target = format!("{}/kiln/containerdisk:v1", registry.addr);
    kiln(
        &store,
        &dir,
        &[
            "export",
            &id,
            "--format",
            "containerdisk",
            "--boot",
            "none",
            "-o",
            "cd.tar",
            "--push",
            &format!("oci://{target}"),
        ],
    )
    .ok();
    // The OCI archive: one manifest, one layer, the disk at /disk/ owned by 107:107.
    let archive = dir.join("cd.tar");
    assert_eq!(
        tar_json(&archive, "oci-layout")["imageLayoutVersion"],
        "1.0.0"
    );
    let index = tar_json(&archive, "index.json");
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest = tar_json(&archive, &format!("blobs/sha256/{}", &manifest_digest[7..]));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    let layer_digest = layers[0]["digest"].as_str().unwrap();
    let layer = dir.join("layer.tar");
    fs::write(
        &layer,
        tar_read(&archive, &format!("blobs/sha256/{}", &layer_digest[7..])).unwrap(),
    )
    .unwrap();
    assert_eq!(format!("sha256:{}", file_sha256(&layer)), layer_digest);
    let entries = tar_entries(&layer);
    let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(paths, ["disk/", "disk/disk.qcow2"]);
    for e in &entries {
        assert_eq!(
            (e.1, e.2),
            (107, 107),
            "{} must be owned by qemu (107)",
            e.0
        );
    }
    let disk = dir.join("disk.qcow2");
    fs::write(&disk, tar_read(&layer, "disk/disk.qcow2").unwrap()).unwrap();
    let info = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        info.status.success(),
        "{}",
        String::from_utf8_lossy(&info.stdout)
    );
    // skopeo reads both the archive and the pushed image as ordinary one-layer images.
    for source in [
        format!("oci-archive:{}", archive.display()),
        format!("docker://{target}"),
    ] {
        let out = Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(&source)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{source}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            info["Layers"].as_array().unwrap().len(),
            1,
            "{source}: {info}"
        );
        assert_eq!(info["Layers"][0], layer_digest);
        assert_eq!(info["Os"], "linux");
    }
    let _ = fs::remove_dir_all(&dir);
}
