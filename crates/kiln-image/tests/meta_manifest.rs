//! Image manifests (the image descriptor) and SBOM files written next to an image.

use kiln_image::manifest::{
    manifest_path, read_manifest, sbom_path, write_manifest, write_sbom, ManifestInput,
    ManifestPartition,
};
use kiln_image::OsDescriptor;
use sha2::{Digest, Sha256, Sha512};
use std::fs;
use std::path::Path;

fn os(id: &str, version: &str) -> OsDescriptor {
    OsDescriptor {
        id: id.into(),
        name: format!("{id} Linux"),
        version: version.into(),
        pretty_name: format!("{id} {version}"),
        arch: "amd64".into(),
    }
}

fn partition(name: &str, index: u32, os: OsDescriptor) -> ManifestPartition {
    ManifestPartition {
        name: name.into(),
        label: format!("{name}-label"),
        index,
        partuuid: format!("0000000{index}-aaaa-4bbb-8ccc-dddddddddddd"),
        fs_uuid: format!("1111111{index}-aaaa-4bbb-8ccc-dddddddddddd"),
        offset: u64::from(index) << 20,
        size: 64 << 20,
        os,
    }
}

fn combo_input() -> ManifestInput {
    ManifestInput {
        image_name: "combo".into(),
        format: "raw".into(),
        virtual_size: 256 << 20,
        partitions: vec![
            partition("bookworm", 2, os("debian", "12")),
            partition("trixie", 3, os("debian", "13")),
        ],
        default_partition: Some("trixie".into()),
        node_types: vec!["pc3000".into(), "qemu".into()],
        arches: vec!["amd64".into()],
        boot: "uefi".into(),
        spec_sha256: "ab".repeat(32),
        layer_id: "cd".repeat(32),
        kiln_version: "0.1.0".into(),
        build_time: 1_700_000_000,
    }
}

fn image(dir: &Path, content: &[u8]) -> std::path::PathBuf {
    let path = dir.join("combo.raw");
    fs::write(&path, content).unwrap();
    path
}

#[test]
fn manifest_records_hashes_and_descriptor() {
    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
    let img = image(dir.path(), &content);
    let value = write_manifest(&img, &combo_input()).unwrap();
    assert_eq!(
        manifest_path(&img),
        dir.path().join("combo.raw.manifest.json")
    );
    assert_eq!(value["sha256"], hex::encode(Sha256::digest(&content)));
    assert_eq!(value["sha512"], hex::encode(Sha512::digest(&content)));
    assert_eq!(value["bytes"], content.len() as u64);
    assert_eq!(value["file"], "combo.raw");
    assert_eq!(value["schema"], "kiln-image-manifest/1");
    assert_eq!(value["default_partition"], "trixie");
    assert_eq!(value["build_time_utc"], "2023-11-14T22:13:20Z");
    assert_eq!(value["partitions"][1]["os"]["version"], "13");
    assert_eq!(value["partitions"][0]["index"], 2);

    let on_disk: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest_path(&img)).unwrap()).unwrap();
    assert_eq!(on_disk, value);
    let typed = read_manifest(&manifest_path(&img)).unwrap();
    assert_eq!(typed.partitions, combo_input().partitions);
    assert_eq!(typed.node_types, ["pc3000", "qemu"]);

    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn manifest_bytes_are_reproducible_and_follow_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), b"first image");
    write_manifest(&img, &combo_input()).unwrap();
    let first = fs::read(manifest_path(&img)).unwrap();
    write_manifest(&img, &combo_input()).unwrap();
    assert_eq!(fs::read(manifest_path(&img)).unwrap(), first);
    assert!(first.ends_with(b"}\n"));

    fs::write(&img, b"second image").unwrap();
    let value = write_manifest(&img, &combo_input()).unwrap();
    assert_eq!(
        value["sha256"],
        hex::encode(Sha256::digest(b"second image"))
    );
    assert_ne!(fs::read(manifest_path(&img)).unwrap(), first);
}

#[test]
fn unknown_default_partition_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), b"x");
    let mut input = combo_input();
    input.default_partition = Some("bullseye".into());
    let err = write_manifest(&img, &input).unwrap_err().to_string();
    assert!(err.contains("\"bullseye\""), "{err}");
    assert!(err.contains("bookworm, trixie"), "{err}");
    assert!(!manifest_path(&img).exists());

    let mut input = combo_input();
    input.partitions[1].name = "bookworm".into();
    input.default_partition = None;
    let err = write_manifest(&img, &input).unwrap_err().to_string();
    assert!(
        err.contains("two partitions are named \"bookworm\""),
        "{err}"
    );
}

#[test]
fn single_disk_without_partitions_or_default() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rootfs.tar");
    fs::write(&img, b"").unwrap();
    let input = ManifestInput {
        format: "tar".into(),
        partitions: Vec::new(),
        default_partition: None,
        boot: "none".into(),
        ..combo_input()
    };
    let value = write_manifest(&img, &input).unwrap();
    assert_eq!(value["bytes"], 0);
    assert_eq!(
        value["sha256"],
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
    assert!(value["default_partition"].is_null());
}

#[test]
fn missing_image_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("absent.qcow2");
    let err = write_manifest(&img, &combo_input())
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.qcow2"), "{err}");
}

#[test]
fn sbom_file_next_to_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let img = image(dir.path(), b"x");
    let doc = serde_json::json!({"spdxVersion": "SPDX-2.3", "name": "combo"});
    let path = write_sbom(&img, &doc).unwrap();
    assert_eq!(path, sbom_path(&img));
    assert_eq!(path, dir.path().join("combo.raw.spdx.json"));
    let back: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, doc);
}

#[test]
fn read_manifest_rejects_other_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.manifest.json");
    fs::write(&path, "{\"spdxVersion\": \"SPDX-2.3\"}").unwrap();
    let err = read_manifest(&path).unwrap_err().to_string();
    assert!(err.contains("not a kiln image manifest"), "{err}");
}
