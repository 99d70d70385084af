//! The OBuilder-style busybox example on an OCI image pulled from a real registry
//! (Debian's docker-registry, started on loopback by the test).

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A docker-registry process on 127.0.0.1, killed on drop.
struct Registry {
    child: Child,
    addr: String,
}

impl Registry {
    fn start(dir: &Path) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "apt-get install docker-registry (scripts/setup.sh does)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.join("data").display()),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry { child, addr }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
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
    push(
        &oci_layout(&dir),
        &format!("{}/library/busybox:latest", registry.addr),
    );
    let store = dir.join("store");
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/busybox");
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
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("hello world"), "{stdout}");
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
