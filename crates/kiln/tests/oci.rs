//! The OBuilder-style busybox example on an OCI image pulled from a real registry
//! (Debian's docker-registry, started on loopback by the test). Docker Hub is played by
//! another such registry (`KILN_DOCKERHUB_HOST`), or by nothing at all: never the real one.

mod common;

use common::registry::Registry;
use common::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The manifest digest a registry serves for `image` (`HOST/REPO:TAG`), as skopeo sees it.
fn registry_digest(image: &str) -> String {
    let info = common::registry::skopeo_inspect(image, &[]);
    info["Digest"].as_str().unwrap().to_string()
}

/// The pins recorded in the store's layers (`kiln ls --json`).
fn pins(store: &Path, dir: &Path) -> Vec<serde_json::Value> {
    let listed = kiln(store, dir, &["ls", "--json"]).ok();
    let layers: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout).unwrap();
    layers
        .iter()
        .filter_map(|l| l["meta"].get("pin").cloned())
        .collect()
}

/// Writes an OCI image layout with the busybox rootfs as layer 1 and a layer 2 that
/// deletes /bin/vi with a whiteout and adds /etc/motd.
fn oci_layout(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    let put = |bytes: &[u8]| {
        let digest = sha256_hex(bytes);
        fs::write(layout.join("blobs/sha256").join(&digest), bytes).unwrap();
        (format!("sha256:{digest}"), bytes.len())
    };
    let layer1 = fs::read(busybox_tar()).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "bin/.wh.vi", std::io::empty())
        .unwrap();
    let motd = b"welcome to busybox\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(motd.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "etc/motd", &motd[..]).unwrap();
    let layer2 = b.into_inner().unwrap();
    let (l1, s1) = put(&layer1);
    let (l2, s2) = put(&layer2);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "FROM_IMAGE=yes"], "WorkingDir": "/root" },
        "rootfs": { "type": "layers", "diff_ids": [l1, l2] }
    });
    let (c, cs) = put(config.to_string().as_bytes());
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": cs },
        "layers": [
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l1, "size": s1 },
            { "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l2, "size": s2 }
        ]
    });
    let (m, ms) = put(manifest.to_string().as_bytes());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m, "size": ms,
                        "annotations": { "org.opencontainers.image.ref.name": "latest" } }]
    });
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    layout
}

fn push(layout: &Path, dest: &str) {
    let out = Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn obuilder_busybox_example_builds_from_a_registry() {
    let dir = test_dir("oci");
    let registry = Registry::start(&dir);
    let image = format!("{}/library/busybox:latest", registry.addr);
    push(&oci_layout(&dir), &image);
    let digest = registry_digest(&image);
    let store = dir.join("store");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/busybox");
    // KILN_REGISTRY is a mirror in front of Docker Hub (here: nothing, see NO_DOCKER_HUB).
    let run = Command::new(KILN)
        .args([
            "--store",
            store.to_str().unwrap(),
            "build",
            "-f",
            "busybox.spec",
            ".",
        ])
        .current_dir(&example)
        .env("KILN_REGISTRY", &registry.addr)
        .env(NO_DOCKER_HUB.0, NO_DOCKER_HUB.1)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("hello world"), "{stdout}");
    // The tag is pinned: printed, and recorded in the base layer's metadata.
    assert!(
        stdout.contains(&format!(
            "(from busybox)\n---> busybox:latest resolved to {digest} (by {}, the mirror)\n",
            registry.addr
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("from {} (mirror", registry.addr)),
        "{stdout}"
    );
    let pins = pins(&store, &dir);
    assert_eq!(
        pins,
        [serde_json::json!({
            "reference": "registry-1.docker.io/library/busybox:latest",
            "digest": digest,
            "registry": registry.addr,
            "mirror": true,
        })]
    );
    let id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Got: \"").and_then(|r| r.strip_suffix('"')))
        .unwrap()
        .to_string();
    let tar = export_tar(&store, &dir, &id);
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert!(names.contains(&"bin/busybox".to_string()));
    assert!(
        !names.contains(&"bin/vi".to_string()),
        "whiteout in layer 2 not honoured"
    );
    assert_eq!(tar_read(&tar, "etc/motd").unwrap(), b"welcome to busybox\n");

    // The image's env and workdir are the defaults for steps.
    let spec = format!(
        "((from {}/library/busybox:latest)\n (run (shell \"echo {} $FROM_IMAGE $(pwd)\")))\n",
        registry.addr,
        nonce()
    );
    let run = build(&store, &dir, &spec, &[]).ok();
    assert!(run.stdout.contains("yes /root"), "{}", run.stdout);
}

#[test]
fn a_missing_image_or_registry_is_a_clear_error() {
    let dir = test_dir("oci-missing");
    let registry = Registry::start(&dir);
    let store = dir.join("store");
    let run = build(
        &store,
        &dir,
        &format!("((from {}/library/nothing:latest))\n", registry.addr),
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("library/nothing"), "{}", run.stderr);
    drop(registry);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let run = build(
        &store,
        &dir,
        &format!("((from 127.0.0.1:{port}/library/busybox:latest))\n"),
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.stderr
    );
    assert_eq!(
        kiln(&store, &dir, &["ls", "--json"]).ok().stdout.trim(),
        "[]"
    );
}

#[test]
fn docker_hub_after_the_mirror_and_a_clear_error_when_it_is_down() {
    let dir = test_dir("oci-hub");
    fs::create_dir_all(dir.join("mirror")).unwrap();
    fs::create_dir_all(dir.join("hub")).unwrap();
    let mirror = Registry::start(&dir.join("mirror"));
    let hub = Registry::start(&dir.join("hub"));
    let image = format!("{}/library/busybox:latest", hub.addr);
    push(&oci_layout(&dir), &image);
    let digest = registry_digest(&image);
    let store = dir.join("store");
    let spec = format!(
        "((from docker.io/busybox)\n (run (shell \"echo {}\")))\n",
        nonce()
    );
    fs::write(dir.join("build.spec"), &spec).unwrap();
    let args = ["build", "-f", "build.spec", "."];

    // The mirror lacks the image: Docker Hub serves it, and the output says so.
    let env = [
        ("KILN_REGISTRY", mirror.addr.as_str()),
        ("KILN_DOCKERHUB_HOST", hub.addr.as_str()),
    ];
    let run = kiln_env(&store, &dir, &args, &env).ok();
    assert!(
        run.stdout.contains(&format!(
            "---> busybox:latest resolved to {digest} (by {})\n",
            hub.addr
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("not found")
            && run.stdout.contains(&format!(
                "pulling registry-1.docker.io/library/busybox@{digest} from {} (Docker Hub)",
                hub.addr
            )),
        "{}",
        run.stdout
    );
    let pins = pins(&store, &dir);
    assert_eq!(pins.len(), 1, "{pins:?}");
    assert_eq!(
        (
            &pins[0]["digest"],
            &pins[0]["registry"],
            pins[0].get("mirror")
        ),
        (
            &serde_json::json!(digest),
            &serde_json::json!(hub.addr),
            None
        )
    );

    // Docker Hub down and no mirror: exit 1, naming the host, the image and KILN_REGISTRY.
    drop(hub);
    let down = format!("127.0.0.1:{}", free_port());
    let run = kiln_env(
        &store,
        &dir,
        &args,
        &[("KILN_DOCKERHUB_HOST", down.as_str())],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains(&format!("registry {down}"))
            && run.stderr.contains("docker.io/busybox")
            && run.stderr.contains("library/busybox:latest")
            && run
                .stderr
                .contains("set KILN_REGISTRY to a registry mirror"),
        "{}",
        run.stderr
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
