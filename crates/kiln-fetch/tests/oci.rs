//! OCI bases against a real registry (`docker-registry`, Debian package `docker-registry`)
//! started on a free loopback port, with images pushed by the test through `oci-client`.
//! Docker Hub is played by such a registry too (`RegistrySettings::docker_hub`), one of
//! them behind token authentication with the test's own token server: no test ever
//! leaves loopback.

mod common;

use common::token_server::{TokenServer, ISSUER, SERVICE};
use common::{gzip, tree, zstd, TarBuilder, ROOT_0644, ROOT_0755};
use kiln_fetch::{
    parse_base, BaseSource, FetchError, Fetcher, RealFetcher, RegistrySettings, ResolvedBase,
};
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
    /// Holds the token certificate of a registry with token auth.
    _bundle_dir: Option<tempfile::TempDir>,
}

impl TestRegistry {
    /// A registry anyone may pull from and push to.
    fn start() -> Self {
        Self::start_with("")
    }

    /// A registry that wants bearer tokens from `tokens` (as Docker Hub does).
    fn start_with_token_auth(tokens: &TokenServer) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("token-ca.pem");
        std::fs::write(&bundle, &tokens.cert_pem).unwrap();
        let auth = format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            tokens.realm(),
            bundle.display()
        );
        let mut registry = Self::start_with(&auth);
        registry._bundle_dir = Some(dir);
        registry
    }

    /// A registry whose config ends with `extra` (YAML).
    fn start_with(extra: &str) -> Self {
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
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n{extra}",
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
        let mut registry = TestRegistry {
            child,
            dir,
            host,
            _bundle_dir: None,
        };
        registry.wait_ready();
        registry
    }

    /// Polls `GET /v2/` until it answers (200, or 401 when it wants a token), for at most 30 s.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("registry.log"))
                    .unwrap_or_default();
                panic!("docker-registry exited ({status}):\n{log}");
            }
            if matches!(http_get_status(&self.host, "/v2/"), Some(200 | 401)) {
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
    let auth = RegistryAuth::Anonymous;
    push_as(registry, &auth, repo_tag, layers, env, workdir, arch)
}

/// [`push`] with credentials (for a registry behind a token server).
fn push_as(
    registry: &TestRegistry,
    auth: &RegistryAuth,
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
    rt.block_on(client.push(&reference, &blobs, config, auth, None))
        .unwrap();
    rt.block_on(client.fetch_manifest_digest(&reference, auth))
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

/// A fetcher with `mirror` in front of Docker Hub, played by `docker_hub` or, when `None`,
/// by a loopback port nothing listens on (never the real Docker Hub). No config.json is read.
fn settings(mirror: Option<&str>, docker_hub: Option<&str>) -> RegistrySettings {
    RegistrySettings {
        mirror: mirror.map(String::from),
        docker_hub: Some(
            docker_hub.map_or_else(|| format!("127.0.0.1:{}", free_port()), String::from),
        ),
        ..RegistrySettings::default()
    }
}

fn fetcher_with(registries: RegistrySettings) -> RealFetcher {
    RealFetcher {
        deb_cache: std::env::temp_dir().join("kiln-fetch-unused-deb-cache"),
        registries,
    }
}

fn fetcher(mirror: Option<&str>) -> RealFetcher {
    fetcher_with(settings(mirror, None))
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

/// Resolves `from` to `digest`, fetches it, checks its `/version` says `version` and
/// returns the fetch log.
fn assert_pulls(fetcher: &RealFetcher, from: &str, digest: &str, version: &[u8]) -> String {
    let base = resolve(fetcher, from).unwrap();
    assert_eq!(base.pin.as_ref().unwrap().digest, digest);
    let (tmp, config, log) = fetch(fetcher, &base);
    config.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("rootfs/version")).unwrap(),
        version
    );
    log
}

/// The token server handed `reader` a pull token for the private image.
fn assert_reader_got_a_token(tokens: &TokenServer) {
    assert!(
        tokens
            .requests()
            .iter()
            .any(|r| r.user.as_deref() == Some("reader")
                && r.scope == "repository:private/tool:pull"
                && r.status == 200),
        "{:?}",
        tokens.requests()
    );
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

/// A one-layer image whose `/name` file says `content`.
fn named_image(registry: &TestRegistry, repo_tag: &str, content: &str) -> String {
    let (host_arch, _) = arches();
    let tar = TarBuilder::new()
        .file("name", content.as_bytes(), ROOT_0644)
        .finish();
    push(
        registry,
        repo_tag,
        vec![layer(tar, false)],
        &["PATH=/bin"],
        "",
        host_arch,
    )
}

#[test]
fn docker_hub_names_ask_the_mirror_first_then_docker_hub() {
    let mirror = TestRegistry::start();
    let hub = TestRegistry::start();
    let mirrored = named_image(&mirror, "library/busybox:latest", "mirror");
    let upstream = named_image(&hub, "library/busybox:latest", "hub");
    let only_hub = named_image(&hub, "someone/tool:v1", "tool");
    let fetcher = fetcher_with(settings(Some(&mirror.host), Some(&hub.host)));

    // The mirror has it: it answers, and the pin says so.
    let base = resolve(&fetcher, "busybox").unwrap();
    assert_ne!(mirrored, upstream);
    assert_eq!(
        base.description,
        format!("registry-1.docker.io/library/busybox@{mirrored}")
    );
    let pin = base.pin.clone().unwrap();
    assert_eq!(
        (pin.reference.as_str(), pin.registry.as_deref(), pin.mirror),
        (
            "registry-1.docker.io/library/busybox:latest",
            Some(mirror.host.as_str()),
            true
        )
    );
    assert_eq!(
        base.resolution().unwrap(),
        format!(
            "busybox:latest resolved to {mirrored} (by {}, the mirror)",
            mirror.host
        )
    );
    let (tmp, config, log) = fetch(&fetcher, &base);
    config.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("rootfs/name")).unwrap(),
        b"mirror"
    );
    assert!(
        log.contains(&format!("from {} (mirror", mirror.host)),
        "{log}"
    );

    // The mirror lacks it: Docker Hub is asked next, for the tag and for the content.
    let base = resolve(&fetcher, "docker.io/someone/tool:v1").unwrap();
    let pin = base.pin.clone().unwrap();
    assert_eq!(
        (pin.digest.as_str(), pin.mirror),
        (only_hub.as_str(), false)
    );
    assert_eq!(pin.registry.as_deref(), Some(hub.host.as_str()));
    let (tmp, config, log) = fetch(&fetcher, &base);
    config.unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("rootfs/name")).unwrap(),
        b"tool"
    );
    assert!(
        log.contains("not found") && log.contains(&format!("from {} (Docker Hub)", hub.host)),
        "{log}"
    );

    // The id names the image, not who served it: without the mirror, Docker Hub's copy of
    // the same digest is the same base.
    let direct = fetcher_with(settings(None, Some(&hub.host)));
    assert_eq!(resolve(&direct, "someone/tool:v1").unwrap().id, base.id);
}

#[test]
fn docker_hub_down_is_a_clear_error() {
    let mirror = TestRegistry::start();
    let down = format!("127.0.0.1:{}", free_port());
    let err = resolve(&fetcher_with(settings(None, Some(&down))), "busybox").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Registry { .. }), "{text}");
    assert!(
        text.contains("base `busybox`")
            && text.contains(&format!("registry {down}"))
            && text.contains("library/busybox:latest")
            && text.contains("cannot connect")
            && text.contains("set KILN_REGISTRY to a registry mirror"),
        "{text}"
    );
    // With a mirror that lacks the image, the error says what the mirror said too.
    let fetcher = fetcher_with(settings(Some(&mirror.host), Some(&down)));
    let text = resolve(&fetcher, "busybox").unwrap_err().to_string();
    assert!(
        text.contains(&format!("registry {down}"))
            && text.contains(&format!("asked before it: {} (mirror", mirror.host))
            && text.contains("not found"),
        "{text}"
    );
    // A mirror that is down itself is passed over, as Docker does.
    let hub = TestRegistry::start();
    let digest = named_image(&hub, "library/busybox:latest", "hub");
    let fetcher = fetcher_with(settings(Some(&down), Some(&hub.host)));
    assert_eq!(
        resolve(&fetcher, "busybox").unwrap().pin.unwrap().digest,
        digest
    );
}

/// Credentials for the token server's users, as `docker login` writes them.
fn docker_config(dir: &Path, key: &str, user_password: &str) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_password);
    let json = serde_json::json!({ "auths": { key: { "auth": auth } } });
    std::fs::write(dir.join("config.json"), json.to_string()).unwrap();
}

#[test]
fn docker_hub_token_flow_anonymous_and_logged_in() {
    let tokens = TokenServer::start(&[("pusher", "push-pw"), ("reader", "read-pw")]);
    let hub = TestRegistry::start_with_token_auth(&tokens);
    let (host_arch, _) = arches();
    let pusher = RegistryAuth::Basic("pusher".into(), "push-pw".into());
    let env = ["PATH=/usr/bin:/bin"];
    let public = push_as(
        &hub,
        &pusher,
        "library/busybox:latest",
        vec![lower_layer(), upper_layer(b"two")],
        &env,
        "/",
        host_arch,
    );
    let private = push_as(
        &hub,
        &pusher,
        "private/tool:v1",
        vec![lower_layer(), upper_layer(b"secret")],
        &env,
        "/",
        host_arch,
    );

    // Anonymous: the registry refuses, kiln gets an anonymous token from its realm and pulls.
    let anonymous = fetcher_with(settings(None, Some(&hub.host)));
    let log = assert_pulls(&anonymous, "busybox", &public, b"two");
    assert!(log.contains("layer 2/2"), "{log}");
    let asked: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.user.is_none())
        .collect();
    assert!(
        asked
            .iter()
            .any(|r| r.scope == "repository:library/busybox:pull" && r.status == 200),
        "{asked:?}"
    );

    // A private image needs a login.
    let text = resolve(&anonymous, "private/tool:v1")
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("access denied")
            && text.contains("docker login")
            && text.contains("KILN_REGISTRY_AUTH"),
        "{text}"
    );

    // `docker login`'s config.json, found through DOCKER_CONFIG's directory.
    let config_dir = tempfile::tempdir().unwrap();
    docker_config(
        config_dir.path(),
        "https://index.docker.io/v1/",
        "reader:read-pw",
    );
    let logged_in = fetcher_with(RegistrySettings {
        docker_config_dir: Some(config_dir.path().to_path_buf()),
        ..settings(None, Some(&hub.host))
    });
    assert_pulls(&logged_in, "private/tool:v1", &private, b"secret");
    assert_reader_got_a_token(&tokens);

    // KILN_REGISTRY_AUTH wins over config.json; wrong credentials are refused.
    let wrong = fetcher_with(RegistrySettings {
        auth: Some("reader:wrong".into()),
        docker_config_dir: Some(config_dir.path().to_path_buf()),
        ..settings(None, Some(&hub.host))
    });
    let text = resolve(&wrong, "private/tool:v1").unwrap_err().to_string();
    assert!(
        text.contains("access denied") && text.contains("credentials from KILN_REGISTRY_AUTH"),
        "{text}"
    );
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.user.as_deref() == Some("reader") && r.status == 401));
    let right = fetcher_with(RegistrySettings {
        auth: Some("reader:read-pw".into()),
        ..settings(None, Some(&hub.host))
    });
    assert_eq!(
        resolve(&right, "private/tool:v1")
            .unwrap()
            .pin
            .unwrap()
            .digest,
        private
    );
}

/// Writes `docker-credential-NAME` into `dir`: a script speaking the credential helpers'
/// protocol that answers `(server URL, user, password)` from `answers`, says "not found" for
/// any other server URL, and appends each server URL it is asked about to `dir/NAME.asked`.
fn credential_helper(dir: &Path, name: &str, answers: &[(&str, &str, &str)]) {
    use std::os::unix::fs::PermissionsExt;
    let cases: String = answers
        .iter()
        .map(|(url, user, password)| {
            let json =
                serde_json::json!({ "ServerURL": url, "Username": user, "Secret": password });
            format!("  '{url}') echo '{json}' ;;\n")
        })
        .collect();
    let asked = dir.join(format!("{name}.asked"));
    let script = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r url\necho \"$url\" >> '{}'\ncase \"$url\" in\n{cases}  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n",
        asked.display()
    );
    let file = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&file, script).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The server URLs helper `name` in `dir` was asked about, in order.
fn helper_asked(dir: &Path, name: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join(format!("{name}.asked")))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// `dir` in front of this process's `PATH` (which the test leaves alone).
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

#[test]
fn docker_credential_helpers_log_in_or_leave_kiln_anonymous() {
    let tokens = TokenServer::start(&[("pusher", "push-pw"), ("reader", "read-pw")]);
    let hub = TestRegistry::start_with_token_auth(&tokens);
    let (host_arch, _) = arches();
    let pusher = RegistryAuth::Basic("pusher".into(), "push-pw".into());
    let private = push_as(
        &hub,
        &pusher,
        "private/tool:v1",
        vec![lower_layer(), upper_layer(b"secret")],
        &["PATH=/usr/bin:/bin"],
        "/",
        host_arch,
    );
    let helpers = tempfile::tempdir().unwrap();
    credential_helper(
        helpers.path(),
        "kilntest",
        &[
            ("https://index.docker.io/v1/", "reader", "read-pw"),
            (&hub.host, "reader", "read-pw"),
        ],
    );
    credential_helper(helpers.path(), "kilntest-empty", &[]);
    // `credsStore` names the helper; the `auths` entry is the empty stub Docker leaves.
    let with_config = |json: serde_json::Value| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json.to_string()).unwrap();
        let settings = RegistrySettings {
            docker_config_dir: Some(dir.path().to_path_buf()),
            helper_path: Some(path_with(helpers.path())),
            ..settings(None, Some(&hub.host))
        };
        (dir, fetcher_with(settings))
    };

    // Docker Hub's credentials, from the `credsStore` helper asked with Docker Hub's URL.
    let (_config, store) = with_config(serde_json::json!({
        "credsStore": "kilntest",
        "auths": { "https://index.docker.io/v1/": {} },
    }));
    assert_pulls(&store, "private/tool:v1", &private, b"secret");
    assert_eq!(
        helper_asked(helpers.path(), "kilntest"),
        ["https://index.docker.io/v1/"; 2],
        "asked once to resolve, once to fetch"
    );
    assert_reader_got_a_token(&tokens);

    // A `credHelpers` entry for the registry's host wins over `credsStore`, and is asked
    // with the host.
    let (_config, per_host) = with_config(serde_json::json!({
        "credsStore": "kilntest-empty",
        "credHelpers": { hub.host.clone(): "kilntest" },
    }));
    let pinned = resolve(&per_host, &format!("{}/private/tool:v1", hub.host)).unwrap();
    assert_eq!(pinned.pin.unwrap().digest, private);
    assert_eq!(
        helper_asked(helpers.path(), "kilntest").last(),
        Some(&hub.host)
    );
    assert!(helper_asked(helpers.path(), "kilntest-empty").is_empty());

    // A helper without credentials for Docker Hub: kiln asks anonymously and is refused
    // with the usual advice, saying which helper had nothing.
    let (_config, empty) = with_config(serde_json::json!({ "credsStore": "kilntest-empty" }));
    let text = resolve(&empty, "private/tool:v1").unwrap_err().to_string();
    assert!(
        text.contains("access denied")
            && text.contains("docker-credential-kilntest-empty (`credsStore` of ")
            && text.contains("has no credentials for https://index.docker.io/v1/")
            && text.contains("docker login")
            && text.contains("KILN_REGISTRY_AUTH"),
        "{text}"
    );
    assert_eq!(
        helper_asked(helpers.path(), "kilntest-empty"),
        ["https://index.docker.io/v1/"]
    );

    // A helper that is not installed is an error naming it, before any request.
    let asked_before = tokens.requests().len();
    let (_config, missing) = with_config(serde_json::json!({ "credsStore": "kilntest-missing" }));
    let err = resolve(&missing, "private/tool:v1").unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Registry { .. }), "{text}");
    assert!(
        text.contains("`docker-credential-kilntest-missing`")
            && text.contains("not installed")
            && text.contains("remove `credsStore`"),
        "{text}"
    );
    assert_eq!(tokens.requests().len(), asked_before);
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

#[test]
fn image_artifacts_push_with_a_bearer_token_and_pull_anonymously() {
    use kiln_fetch::oci::artifact::{
        pull_image, push_image, DiskFormat, ImageArtifact, PushOptions,
    };
    use kiln_fetch::oci::Remote;
    let tokens = TokenServer::start(&[("pusher", "push-pw")]);
    let registry = TestRegistry::start_with_token_auth(&tokens);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.extend((0..3u32 << 20).map(|i| (i % 251) as u8));
    std::fs::write(&disk, &bytes).unwrap();
    let image = ImageArtifact {
        disk: &disk,
        format: DiskFormat::Qcow2,
        metadata: br#"{"name":"tokens"}"#,
        signature: Some(b"signature bytes"),
        annotations: [(
            "org.opencontainers.image.title".to_string(),
            "t".to_string(),
        )]
        .into(),
    };
    let options = PushOptions {
        mount_from: Vec::new(),
        scratch: dir.path().join("scratch"),
    };
    let reference = format!("{}/kiln/images:v1", registry.host);

    // Anonymous: the token it gets grants no push, and the error says how to log in.
    let anonymous = Remote::open(&reference, &RegistrySettings::default()).unwrap();
    let refused = push_image(&anonymous, "v1", &image, &options, None)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains(&format!("registry {}", registry.host))
            && refused.contains("access denied")
            && refused.contains("KILN_REGISTRY_AUTH"),
        "{refused}"
    );

    // KILN_REGISTRY_AUTH's credentials get a push token from the realm.
    let settings = RegistrySettings {
        auth: Some("pusher:push-pw".into()),
        ..RegistrySettings::default()
    };
    let pusher = Remote::open(&reference, &settings).unwrap();
    let pushed = push_image(&pusher, "v1", &image, &options, None).unwrap();
    assert!(tokens
        .requests()
        .iter()
        .any(|r| r.user.as_deref() == Some("pusher")
            && r.scope == "repository:kiln/images:pull,push"
            && r.status == 200));

    // Anyone may pull it (a public repository), by tag or by the pushed digest.
    let out = dir.path().join("out");
    let pulled = pull_image(&anonymous, &pushed.digest, &out, Default::default(), None).unwrap();
    assert_eq!(std::fs::read(&pulled.disk).unwrap(), bytes);
    assert_eq!(pulled.metadata, br#"{"name":"tokens"}"#);
    assert_eq!(pulled.signature.as_deref(), Some(&b"signature bytes"[..]));
    assert_eq!(pulled.annotations["org.opencontainers.image.title"], "t");
    assert_eq!(
        std::fs::read(out.join("metadata.json")).unwrap(),
        pulled.metadata
    );
    assert_eq!(
        std::fs::read(out.join("signature.minisig")).unwrap(),
        b"signature bytes"
    );
}

#[test]
fn image_artifacts_with_http_basic_authentication() {
    use kiln_fetch::oci::artifact::{
        pull_image, push_image, DiskFormat, ImageArtifact, PushOptions,
    };
    use kiln_fetch::oci::Remote;
    // docker-registry's htpasswd auth wants bcrypt entries: Debian's htpasswd writes them.
    let users = tempfile::tempdir().unwrap();
    let file = users.path().join("htpasswd");
    let out = Command::new("htpasswd")
        .args(["-Bbc"])
        .arg(&file)
        .args(["builder", "build-pw"])
        .output()
        .expect("htpasswd (apt-get install apache2-utils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let auth = format!(
        "auth:\n  htpasswd:\n    realm: kiln-basic\n    path: {}\n",
        file.display()
    );
    let mut registry = TestRegistry::start_with(&auth);
    registry._bundle_dir = Some(users);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.qcow2");
    std::fs::write(&disk, b"QFI\xfb basic").unwrap();
    let image = ImageArtifact {
        disk: &disk,
        format: DiskFormat::Qcow2,
        metadata: b"{}",
        signature: None,
        annotations: Default::default(),
    };
    let options = PushOptions {
        mount_from: Vec::new(),
        scratch: dir.path().join("scratch"),
    };
    let reference = format!("{}/kiln/basic:v1", registry.host);
    let anonymous = Remote::open(&reference, &RegistrySettings::default()).unwrap();
    let refused = push_image(&anonymous, "v1", &image, &options, None)
        .unwrap_err()
        .to_string();
    assert!(refused.contains("access denied"), "{refused}");
    let settings = RegistrySettings {
        auth: Some("builder:build-pw".into()),
        ..RegistrySettings::default()
    };
    let builder = Remote::open(&reference, &settings).unwrap();
    push_image(&builder, "v1", &image, &options, None).unwrap();
    let pulled = pull_image(
        &builder,
        "v1",
        &dir.path().join("out"),
        Default::default(),
        None,
    )
    .unwrap();
    assert_eq!(std::fs::read(&pulled.disk).unwrap(), b"QFI\xfb basic");
    let refused = pull_image(
        &anonymous,
        "v1",
        &dir.path().join("anon"),
        Default::default(),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(refused.contains("access denied"), "{refused}");
}
