//! OCI bases against a real registry (`docker-registry`, Debian package `docker-registry`)
//! started on a free loopback port, with images pushed by the test through `oci-client`.

mod common;

use common::{gzip, tree, zstd, TarBuilder, ROOT_0644, ROOT_0755};
use kiln_fetch::{parse_base, BaseSource, FetchError, Fetcher, RealFetcher, ResolvedBase};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageIndex;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A registry process serving a temporary directory; killed on drop.
struct TestRegistry {
    child: Child,
    dir: tempfile::TempDir,
    host: String,
}

impl TestRegistry {
    fn start() -> Self {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: apt-get install -y docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let host = format!("127.0.0.1:{port}");
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = TestRegistry { child, dir, host };
        registry.wait_ready();
        registry
    }

    /// Polls `GET /v2/` until it answers 200, for at most 30 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!("docker-registry exited ({status}):\n{log}");
            }
            if http_get_status(&self.host, "/v2/") == Some(200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "docker-registry did not answer GET /v2/ on {} within 30 s",
            self.host
        );
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port nothing listens on (the listener is closed before returning).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn http_get_status(host: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split_whitespace().nth(1)?.parse().ok()
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn client() -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// The host's OCI architecture, and another one for decoy index entries.
fn arches() -> (&'static str, &'static str) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", "s390x"),
        "aarch64" => ("arm64", "amd64"),
        other => panic!("add the OCI name of {other} to this test"),
    }
}

/// A layer: (uncompressed tar, media-typed blob).
fn layer(tar: Vec<u8>, zst: bool) -> (Vec<u8>, ImageLayer) {
    let blob = if zst {
        ImageLayer::new(
            zstd(&tar),
            "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            None,
        )
    } else {
        ImageLayer::oci_v1_gzip(gzip(&tar), None)
    };
    (tar, blob)
}

/// Pushes an image and returns its manifest digest.
fn push(
    registry: &TestRegistry,
    repo_tag: &str,
    layers: Vec<(Vec<u8>, ImageLayer)>,
    env: &[&str],
    workdir: &str,
    arch: &str,
) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|(tar, _)| sha256(tar)).collect();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": { "Env": env, "WorkingDir": workdir, "User": "1000:1000" },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let blobs: Vec<ImageLayer> = layers.into_iter().map(|(_, blob)| blob).collect();
    let reference: Reference = format!("{}/{repo_tag}", registry.host).parse().unwrap();
    let client = client();
    let rt = runtime();
    rt.block_on(client.push(&reference, &blobs, config, &RegistryAuth::Anonymous, None))
        .unwrap();
    rt.block_on(client.fetch_manifest_digest(&reference, &RegistryAuth::Anonymous))
        .unwrap()
}

/// Pushes an image index under `repo_tag` pointing at `(digest, arch)` manifests.
fn push_index(registry: &TestRegistry, repo_tag: &str, entries: &[(&str, &str)]) -> String {
    let client = client();
    let rt = runtime();
    let reference: Reference = format!("{}/{repo_tag}", registry.host).parse().unwrap();
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(digest, arch)| {
            let by_digest = reference.clone_with_digest(digest.to_string());
            let (raw, _) = rt
                .block_on(client.pull_manifest_raw(
                    &by_digest,
                    &RegistryAuth::Anonymous,
                    &["application/vnd.oci.image.manifest.v1+json"],
                ))
                .unwrap();
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": raw.len(),
                "platform": { "architecture": arch, "os": "linux" },
            })
        })
        .collect();
    let index: OciImageIndex = serde_json::from_value(serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))
    .unwrap();
    rt.block_on(client.push_manifest_list(&reference, &RegistryAuth::Anonymous, index))
        .unwrap();
    rt.block_on(client.fetch_manifest_digest(&reference, &RegistryAuth::Anonymous))
        .unwrap()
}

/// Layer 1 (gzip): files that layer 2 deletes, hides or merges with.
fn lower_layer() -> (Vec<u8>, ImageLayer) {
    let tar = TarBuilder::new()
        .dir("etc", ROOT_0755)
        .file("etc/keep", b"keep", ROOT_0644)
        .file("etc/gone", b"gone", ROOT_0644)
        .dir("gonedir", ROOT_0755)
        .file("gonedir/inner", b"x", ROOT_0644)
        .dir("opq", ROOT_0755)
        .file("opq/lower1", b"x", ROOT_0644)
        .dir("opq/sub", ROOT_0755)
        .file("opq/sub/lower2", b"x", ROOT_0644)
        .dir("data", ROOT_0755)
        .file("data/a", b"a", ROOT_0644)
        .file("version", b"one", ROOT_0644)
        .finish();
    layer(tar, false)
}

/// Layer 2 (zstd): a whiteout, a whited-out directory, an opaque directory whose marker
/// comes after one of its new files, and a merge.
fn upper_layer(version: &[u8]) -> (Vec<u8>, ImageLayer) {
    let tar = TarBuilder::new()
        .file("etc/.wh.gone", b"", ROOT_0644)
        .file(".wh.gonedir", b"", ROOT_0644)
        .dir("opq", ROOT_0755)
        .file("opq/new", b"new", ROOT_0644)
        .dir("opq/sub", ROOT_0755)
        .file("opq/sub/upper", b"up", ROOT_0644)
        .file("opq/.wh..wh..opq", b"", ROOT_0644)
        .file("opq/after", b"after", ROOT_0644)
        .file("data/b", b"b", ROOT_0644)
        .file("version", version, ROOT_0644)
        .finish();
    layer(tar, true)
}

fn fetcher(default_registry: Option<&str>) -> RealFetcher {
    RealFetcher {
        deb_cache: std::env::temp_dir().join("kiln-fetch-unused-deb-cache"),
        default_registry: default_registry.map(String::from),
    }
}

fn resolve(fetcher: &RealFetcher, from: &str) -> Result<ResolvedBase, FetchError> {
    let context = tempfile::tempdir().unwrap();
    fetcher.resolve(&parse_base(from, None, context.path()).unwrap())
}

fn fetch(
    fetcher: &RealFetcher,
    base: &ResolvedBase,
) -> (
    tempfile::TempDir,
    Result<kiln_store::BaseConfig, FetchError>,
    String,
) {
    // The rootfs sits in its own directory, like the store's result-tmp/<id>/rootfs.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("rootfs")).unwrap();
    let mut log = Vec::new();
    let result = fetcher.fetch(base, &tmp.path().join("rootfs"), None, &mut log);
    (tmp, result, String::from_utf8_lossy(&log).into_owned())
}

#[test]
fn layers_whiteouts_indexes_and_tags() {
    let registry = TestRegistry::start();
    let (host_arch, other_arch) = arches();
    let env = ["PATH=/opt/bin:/usr/bin:/bin", "GREETING=hello world"];
    let v1 = push(
        &registry,
        "kiln/test:v1",
        vec![lower_layer(), upper_layer(b"two")],
        &env,
        "/srv",
        host_arch,
    );
    let fetcher = fetcher(None);

    // By tag and by digest: same pinned reference, same id, stable across calls.
    let by_tag = resolve(&fetcher, &format!("{}/kiln/test:v1", registry.host)).unwrap();
    let pinned = format!("{}/kiln/test@{v1}", registry.host);
    assert_eq!(by_tag.source, BaseSource::Oci(pinned.clone()));
    assert_eq!(by_tag.description, pinned);
    assert_eq!(
        by_tag,
        resolve(&fetcher, &format!("{}/kiln/test:v1", registry.host)).unwrap()
    );
    assert_eq!(by_tag.id, resolve(&fetcher, &pinned).unwrap().id);

    let (tmp, config, log) = fetch(&fetcher, &by_tag);
    let config = config.unwrap();
    let root = tmp.path().join("rootfs");
    assert_eq!(
        tree(&root),
        [
            "data",
            "data/a",
            "data/b",
            "etc",
            "etc/keep",
            "opq",
            "opq/after",
            "opq/new",
            "opq/sub",
            "opq/sub/upper",
            "version"
        ]
    );
    assert_eq!(std::fs::read(root.join("version")).unwrap(), b"two");
    assert_eq!(
        config.env,
        vec![
            ("PATH".into(), "/opt/bin:/usr/bin:/bin".into()),
            ("GREETING".into(), "hello world".into())
        ]
    );
    assert_eq!(
        (config.workdir.as_deref(), config.user.as_deref()),
        (Some("/srv"), Some("1000:1000"))
    );
    assert!(
        log.contains("layer 1/2: sha256:") && log.contains("layer 2/2: sha256:"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "layer blobs were cleaned up"
    );

    // An image index: the host's platform is chosen, the decoy is not.
    let decoy = push(
        &registry,
        "kiln/test:decoy",
        vec![layer(
            TarBuilder::new()
                .file("platform", other_arch.as_bytes(), ROOT_0644)
                .finish(),
            false,
        )],
        &[],
        "",
        other_arch,
    );
    let native = push(
        &registry,
        "kiln/test:native",
        vec![layer(
            TarBuilder::new()
                .file("platform", host_arch.as_bytes(), ROOT_0644)
                .finish(),
            false,
        )],
        &[],
        "",
        host_arch,
    );
    let index = push_index(
        &registry,
        "kiln/test:multi",
        &[(&decoy, other_arch), (&native, host_arch)],
    );
    let multi = resolve(&fetcher, &format!("{}/kiln/test:multi", registry.host)).unwrap();
    assert_eq!(
        multi.description,
        format!("{}/kiln/test@{index}", registry.host)
    );
    let (tmp, config, log) = fetch(&fetcher, &multi);
    let config = config.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("rootfs/platform")).unwrap(),
        host_arch.as_bytes()
    );
    assert!(log.contains(&native), "{log}");
    assert_eq!(
        config.env[0].0, "PATH",
        "images without PATH get the default one"
    );

    // An index without this platform is refused with the platforms it has.
    push_index(&registry, "kiln/test:foreign", &[(&decoy, other_arch)]);
    let foreign = resolve(&fetcher, &format!("{}/kiln/test:foreign", registry.host)).unwrap();
    let (tmp, result, _) = fetch(&fetcher, &foreign);
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains(&format!("linux/{other_arch}")) && err.contains("has no"),
        "{err}"
    );
    assert!(tree(&tmp.path().join("rootfs")).is_empty());

    // Re-pushing the tag with other content gives another id; the pinned digest keeps its own.
    push(
        &registry,
        "kiln/test:v1",
        vec![lower_layer(), upper_layer(b"three")],
        &env,
        "/srv",
        host_arch,
    );
    let moved = resolve(&fetcher, &format!("{}/kiln/test:v1", registry.host)).unwrap();
    assert_ne!(moved.id, by_tag.id);
    assert_eq!(resolve(&fetcher, &pinned).unwrap().id, by_tag.id);
    let (tmp, config, _) = fetch(&fetcher, &moved);
    config.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("rootfs/version")).unwrap(),
        b"three"
    );
}

#[test]
fn docker_hub_names_come_from_the_default_registry() {
    let registry = TestRegistry::start();
    let (host_arch, _) = arches();
    let tar = TarBuilder::new()
        .dir("bin", ROOT_0755)
        .file("bin/busybox", b"\x7fELF", ROOT_0644)
        .finish();
    let digest = push(
        &registry,
        "library/busybox:latest",
        vec![layer(tar, false)],
        &["PATH=/bin"],
        "",
        host_arch,
    );

    let err = resolve(&fetcher(None), "busybox").unwrap_err().to_string();
    assert!(
        err.contains("Docker Hub is not reachable") && err.contains("KILN_REGISTRY"),
        "{err}"
    );

    let fetcher = fetcher(Some(&registry.host));
    let base = resolve(&fetcher, "busybox").unwrap();
    assert_eq!(
        base.description,
        format!("{}/library/busybox@{digest}", registry.host)
    );
    let (tmp, config, _) = fetch(&fetcher, &base);
    assert_eq!(config.unwrap().workdir, None);
    assert!(tmp.path().join("rootfs/bin/busybox").is_file());
}

#[test]
fn missing_images_and_bad_layers_are_clear_errors() {
    let registry = TestRegistry::start();
    let (host_arch, _) = arches();
    let fetcher = fetcher(None);
    for missing in [
        format!("{}/kiln/test:nope", registry.host),
        format!("{}/no/such/repo:v1", registry.host),
    ] {
        let err = resolve(&fetcher, &missing).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, FetchError::Registry { .. }), "{text}");
        assert!(
            text.contains(&missing) && text.contains(&format!("registry {}", registry.host)),
            "{text}"
        );
        assert!(text.contains("not found"), "{text}");
    }

    // A layer trying to escape the root fails the fetch and leaves the root empty.
    let evil = TarBuilder::new()
        .file("fine", b"1", ROOT_0644)
        .raw(b"../escaped", tar::EntryType::Regular, b"x", None)
        .finish();
    push(
        &registry,
        "kiln/evil:v1",
        vec![layer(evil, false)],
        &[],
        "",
        host_arch,
    );
    let base = resolve(&fetcher, &format!("{}/kiln/evil:v1", registry.host)).unwrap();
    let (tmp, result, _) = fetch(&fetcher, &base);
    let err = result.unwrap_err();
    assert!(
        matches!(err, FetchError::Archive { .. }) && err.to_string().contains("`..`"),
        "{err}"
    );
    assert!(tree(&tmp.path().join("rootfs")).is_empty());
    assert!(!tmp.path().join("escaped").exists());
}

#[test]
fn an_unreachable_registry_is_a_clear_error() {
    let host = format!("127.0.0.1:{}", free_port());
    let from = format!("{host}/kiln/test:v1");
    let err = resolve(&fetcher(None), &from).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Registry { .. }), "{text}");
    assert!(
        text.contains(&from)
            && text.contains(&format!("registry {host}"))
            && text.contains("cannot connect"),
        "{text}"
    );
}

#[test]
fn digest_references_resolve_without_the_network() {
    let host = format!("127.0.0.1:{}", free_port());
    let digest = format!("sha256:{}", "c".repeat(64));
    let base = resolve(&fetcher(None), &format!("{host}/kiln/test@{digest}")).unwrap();
    assert_eq!(base.description, format!("{host}/kiln/test@{digest}"));
    // Fetching does need the registry, and says so.
    let (tmp, result, _) = fetch(&fetcher(None), &base);
    assert!(result.unwrap_err().to_string().contains("cannot connect"));
    assert!(tree(&tmp.path().join("rootfs")).is_empty());
}
