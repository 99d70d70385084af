//! The image catalogue end to end: `kiln key`, `kiln image …`, `kiln serve`, with the
//! stock `minisign` checking kiln's signatures and headless Chromium reading the web page.
//! Images are small busybox disks kiln builds (under a second each); the server is the
//! real binary on a loopback port, driven by `kiln image push|pull` and by raw HTTP
//! requests written here (so that malformed and hostile requests can be sent as they are).

mod common;

use common::*;
use kiln_catalog::metadata::{Describe, Metadata};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- helpers

/// Builds a busybox disk image (qcow2, no boot) holding `mib` MiB of random data, so
/// that each call gives a new image id.
fn small_image(store: &Path, dir: &Path, name: &str, mib: u32, extra_shell: &str) -> PathBuf {
    let spec = format!(
        "((from file:{})\n (run (shell \"head -c {} /dev/urandom > /data && echo {} > /etc/stamp && echo ID=busybox > /etc/os-release && echo VERSION_ID=1.36 >> /etc/os-release{}\")))\n",
        busybox_tar().display(),
        mib << 20,
        nonce(),
        extra_shell
    );
    let image = dir.join(name);
    build(
        store,
        dir,
        &spec,
        &["-o", image.to_str().unwrap(), "--boot", "none"],
    )
    .ok();
    image
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex_string(&sha2::Sha256::digest(data))
}

fn hex_string(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A `kiln serve` on a free loopback port; killed (SIGKILL) when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(data: &Path, extra: &[&str]) -> Server {
        let log = fs::File::create(data.with_extension("log")).unwrap();
        let mut child = Command::new(KILN)
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("starting kiln serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("kiln serve: listening on http://")
            .unwrap_or_else(|| panic!("kiln serve printed {line:?}"))
            .to_string();
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 exchange over a fresh connection: status and body. A body is sent after
/// `Expect: 100-continue` is answered, as curl does, so that a request refused on its
/// headers gets its answer without the body being pushed into a closed socket.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "PUT" {
        head.push_str(&format!(
            "Content-Length: {}\r\nExpect: 100-continue\r\n",
            body.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(s.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    if status_line.contains(" 100 ") {
        let mut blank = String::new();
        reader.read_line(&mut blank).unwrap();
        s.write_all(body).unwrap();
        status_line.clear();
        reader.read_line(&mut status_line).unwrap();
    }
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest).into_owned();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status_line:?}"));
    let body = rest
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A TCP proxy in front of the server that records each request head and, while `cut`
/// is set, closes a connection after that many response bytes (an interrupted transfer).
struct Proxy {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
    cut: Arc<Mutex<Option<usize>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Mutex::new(None));
        let (h, c, up) = (heads.clone(), cut.clone(), upstream.to_string());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let server = TcpStream::connect(&up).unwrap();
                let limit = *c.lock().unwrap();
                let heads = h.clone();
                let (mut c_in, mut s_out) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    // Clients send only request heads here (no uploads): record all of it.
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = c_in.read(&mut buf) {
                        if n == 0 || s_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        heads
                            .lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                    }
                    let _ = s_out.shutdown(Shutdown::Write);
                });
                let (mut s_in, mut c_out) = (server, client);
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    let mut sent = 0usize;
                    while let Ok(n) = s_in.read(&mut buf) {
                        let n = match limit {
                            Some(l) => n.min(l - sent),
                            None => n,
                        };
                        if n == 0 || c_out.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = c_out.shutdown(Shutdown::Both);
                    let _ = s_in.shutdown(Shutdown::Both);
                });
            }
        });
        Proxy { addr, heads, cut }
    }
}

/// A key made by the library (what `kiln key generate` writes).
fn new_key(dir: &Path, name: &str) -> kiln_catalog::sign::SigningKey {
    kiln_catalog::sign::generate(&dir.join(format!("{name}.key")), "", name).unwrap()
}

/// Signed canonical metadata for an arbitrary file, as `kiln image add` would make it
/// (the server does not need a kiln manifest, only metadata and bytes).
fn signed_metadata(
    file: &Path,
    key: &kiln_catalog::sign::SigningKey,
    email: &str,
    title: &str,
) -> (Metadata, Vec<u8>, String) {
    let d = kiln_image::manifest::hash_file(file).unwrap();
    let manifest = kiln_image::manifest::Manifest {
        schema: kiln_image::manifest::SCHEMA.into(),
        name: "blob".into(),
        file: file.file_name().unwrap().to_string_lossy().into_owned(),
        format: "raw".into(),
        bytes: d.bytes,
        virtual_size: d.bytes,
        sha256: d.sha256,
        sha512: d.sha512,
        boot: "none".into(),
        default_partition: None,
        node_types: vec![],
        arches: vec![],
        partitions: vec![],
        spec_sha256: String::new(),
        layer_id: String::new(),
        kiln_version: "test".into(),
        build_time: 0,
        build_time_utc: String::new(),
    };
    let meta = Metadata::from_manifest(
        &manifest,
        &Describe {
            title: title.into(),
            version: "1".into(),
            endorser_email: email.into(),
            endorser_key_id: key.key_id.clone(),
            created: chrono::Utc::now(),
            valid_for: chrono::Duration::days(30),
            ..Describe::default()
        },
    )
    .unwrap();
    let bytes = meta.canonical_json();
    let sig = kiln_catalog::sign::sign(key, &bytes, "test").unwrap();
    (meta, bytes, sig)
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn upload_headers(token: &str, meta: &[u8], sig: &str) -> Vec<(&'static str, String)> {
    vec![
        ("Authorization", format!("Bearer {token}")),
        ("Kiln-Metadata", b64(meta)),
        ("Kiln-Signature", b64(sig.as_bytes())),
    ]
}

fn random_file(path: &Path, bytes: usize) {
    let mut data = vec![0u8; bytes];
    fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    fs::write(path, data).unwrap();
}

/// Files under `dir` (recursively), as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| e.path().strip_prefix(dir).unwrap().display().to_string())
        .collect()
}

/// Sets up a marketplace data dir trusting `keys` (public key files) with token `tok`.
fn market_data(dir: &Path, name: &str, keys: &[&Path]) -> PathBuf {
    let data = dir.join(name);
    fs::create_dir_all(data.join("trust")).unwrap();
    for k in keys {
        fs::copy(k, data.join("trust").join(k.file_name().unwrap())).unwrap();
    }
    fs::write(dir.join("token"), "tok-123\n").unwrap();
    data
}

// ---------------------------------------------------------------- acceptance 1

#[test]
fn add_sign_serve_search_resumed_pull_and_verify() {
    let dir = test_dir("catalog-e2e");
    let store = dir.join("store");
    small_image(&store, &dir, "web.qcow2", 6, "");
    let cat = dir.join("cat");
    let cat_s = cat.to_str().unwrap();
    let k = |args: &[&str]| kiln_env(&store, &dir, args, &[("KILN_CATALOG", cat_s)]);

    // Keys: minisign format, public key beside the secret one.
    let key = json(
        &k(&[
            "key",
            "generate",
            "-o",
            "me.key",
            "--comment",
            "me@lab.org",
            "--json",
        ])
        .ok(),
    );
    let key_id = key["key_id"].as_str().unwrap().to_string();
    assert!(fs::read_to_string(dir.join("me.pub"))
        .unwrap()
        .starts_with("untrusted comment:"));
    fails(
        k(&["key", "generate", "-o", "me.key"]),
        "does not overwrite",
    );
    let trust = dir.join("trust");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(dir.join("me.pub"), trust.join("me@lab.org.pub")).unwrap();
    let trust_s = trust.to_str().unwrap();

    // add: metadata from the manifest, signed; oci:// locations kept as plain URLs.
    let added = json(
        &k(&[
            "image",
            "add",
            "web.qcow2",
            "--title",
            "Web base",
            "--version",
            "1.0",
            "--valid-for",
            "180d",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
            "--description",
            "busybox web base",
            "--location",
            "oci://registry.example/lab/web:1.0",
            "--json",
        ])
        .ok(),
    );
    let id = added["id"].as_str().unwrap().to_string();
    let short = added["short_id"].as_str().unwrap().to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(dir.join("web.qcow2.manifest.json")).unwrap()).unwrap();
    assert_eq!(id, manifest["sha256"]);
    assert_eq!(added["checksums"]["sha512"], manifest["sha512"]);
    assert_eq!(added["bytes"], manifest["bytes"]);
    assert_eq!(added["virtual_size"], manifest["virtual_size"]);
    assert_eq!(added["partitions"][0]["os"], "busybox");
    assert_eq!(added["partitions"][0]["arch"], "amd64");
    assert_eq!(added["default_partition"], "root");
    assert_eq!(added["spec_sha256"], manifest["spec_sha256"]);
    assert_eq!(added["endorser"]["key_id"], key_id.as_str());
    assert_eq!(added["locations"][0], "oci://registry.example/lab/web:1.0");
    assert_eq!(added["validity"], "valid");
    assert_eq!(short.len(), 16);

    // ls, search, show.
    let ls = json(&k(&["image", "ls", "--json"]).ok());
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(
        json(&k(&["image", "search", "web base", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        json(&k(&["image", "search", "--os", "busybox", "--arch", "amd64", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert!(json(&k(&["image", "search", "fedora", "--json"]).ok())
        .as_array()
        .unwrap()
        .is_empty());
    assert!(
        json(&k(&["image", "search", "--endorser", "you@lab.org", "--json"]).ok())
            .as_array()
            .unwrap()
            .is_empty()
    );
    let show = k(&["image", "show", &short[..8]]).ok();
    assert!(
        show.stdout.contains(&id) && show.stdout.contains("Web base 1.0"),
        "{}",
        show.stdout
    );

    // The stock minisign verifies kiln's signature over the stored metadata.
    let entry = cat.join("entries").join(&id);
    let meta_path = entry.join("metadata.json");
    let minisign = |pubkey: &Path| {
        Command::new("minisign")
            .arg("-V")
            .arg("-p")
            .arg(pubkey)
            .arg("-m")
            .arg(&meta_path)
            .output()
            .expect("minisign is missing: apt-get install minisign (scripts/setup.sh does)")
    };
    let out = minisign(&dir.join("me.pub"));
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!("Trusted comment: kiln image {short} {id}")),
        "{said}"
    );

    // verify: ok; untrusted, wrongly bound, flipped bytes refused.
    let ok = k(&["image", "verify", &short, "--trust", trust_s]).ok();
    assert!(ok.stdout.starts_with("ok: "), "{}", ok.stdout);
    let empty = dir.join("no-trust");
    fs::create_dir_all(&empty).unwrap();
    fails(
        k(&[
            "image",
            "verify",
            &short,
            "--trust",
            empty.to_str().unwrap(),
        ]),
        "is not trusted",
    );
    let bound = dir.join("bound");
    fs::create_dir_all(&bound).unwrap();
    fs::copy(dir.join("me.pub"), bound.join("other@lab.org.pub")).unwrap();
    fails(
        k(&[
            "image",
            "verify",
            &short,
            "--trust",
            bound.to_str().unwrap(),
        ]),
        "trusted for other@lab.org",
    );
    let stored = entry.join("web.qcow2");
    let original = fs::read(&stored).unwrap();
    let mut flipped = original.clone();
    flipped[original.len() / 2] ^= 0x01;
    fs::write(&stored, &flipped).unwrap();
    fails(
        k(&["image", "verify", &short, "--trust", trust_s]),
        "checksum refused",
    );
    fs::write(&stored, &original).unwrap();
    let meta_original = fs::read(&meta_path).unwrap();
    let meta_text = String::from_utf8(meta_original.clone()).unwrap();
    fs::write(
        &meta_path,
        meta_text.replace("\"Web base\"", "\"Web basf\""),
    )
    .unwrap();
    fails(
        k(&["image", "verify", &id, "--trust", trust_s]),
        "signature refused",
    );
    assert!(
        !minisign(&dir.join("me.pub")).status.success(),
        "minisign accepted tampered metadata"
    );
    fs::write(&meta_path, &meta_original).unwrap();
    k(&["image", "verify", &id, "--trust", trust_s]).ok();

    // An expired endorsement is refused unless --allow-expired.
    small_image(&store, &dir, "old.qcow2", 1, "");
    let old = json(
        &k(&[
            "image",
            "add",
            "old.qcow2",
            "--title",
            "Old",
            "--valid-for",
            "1s",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
            "--json",
        ])
        .ok(),
    );
    let old_id = old["id"].as_str().unwrap().to_string();
    // Waits for the wall clock to pass valid_until (this is the behaviour under test).
    std::thread::sleep(Duration::from_millis(2100));
    fails(
        k(&["image", "verify", &old_id, "--trust", trust_s]),
        "--allow-expired",
    );
    let late = k(&[
        "image",
        "verify",
        &old_id,
        "--trust",
        trust_s,
        "--allow-expired",
    ])
    .ok();
    assert!(late.stderr.contains("expired"), "{}", late.stderr);
    assert!(json(&k(&["image", "search", "Old", "--json"]).ok())
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        json(&k(&["image", "search", "Old", "--include-expired", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The marketplace.
    let data = market_data(&dir, "market", &[&dir.join("me.pub")]);
    let server = Server::start(
        &data,
        &["--token-file", dir.join("token").to_str().unwrap()],
    );
    let market = server.url();
    let with_token = |args: &[&str], token: &str| {
        kiln_env(
            &store,
            &dir,
            args,
            &[("KILN_CATALOG", cat_s), ("KILN_MARKETPLACE_TOKEN", token)],
        )
    };
    fails(
        with_token(&["image", "push", &short, &market], "wrong"),
        "wrong bearer token",
    );
    fails(
        with_token(&["image", "push", &old_id, &market], "tok-123"),
        "expired",
    );
    let pushed = with_token(&["image", "push", &short, &market], "tok-123").ok();
    assert!(
        pushed
            .stdout
            .contains(&format!("kiln image pull {market}/{short}")),
        "{}",
        pushed.stdout
    );
    // oci:// goes to the registry transport (tests/catalog_oci.rs), which checks the
    // reference before it connects anywhere.
    fails(
        with_token(
            &["image", "push", &short, "oci://127.0.0.1:1/Lab/Web:1.0"],
            "tok-123",
        ),
        "not a valid OCI reference",
    );
    // Pushing again is nothing to do.
    with_token(&["image", "push", &short, &market], "tok-123").ok();
    let found = json(&k(&["image", "search", "web", "--remote", &market, "--json"]).ok());
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], id.as_str());
    let (status, body) = http(
        &server.addr,
        "GET",
        "/api/images?os=busybox&arch=arm64",
        &[],
        b"",
    );
    assert_eq!((status, body.contains(&id)), (200, false), "{body}");

    // Pull through a proxy that breaks the transfer after 2 MiB, then resume.
    let proxy = Proxy::start(&server.addr);
    *proxy.cut.lock().unwrap() = Some(2 << 20);
    let cat2 = dir.join("cat2");
    let cat2_s = cat2.to_str().unwrap();
    let k2 = |args: &[&str]| kiln_env(&store, &dir, args, &[("KILN_CATALOG", cat2_s)]);
    let via_proxy = format!("http://{}/{short}", proxy.addr);
    // The metadata and signature requests go through the proxy too: cut only the download.
    fails(
        k2(&["image", "pull", &via_proxy, "--trust", trust_s]),
        "run the same pull again to resume",
    );
    let part = cat2.join("partial").join(format!("{id}.part"));
    let kept = fs::metadata(&part)
        .expect("a partial download is kept")
        .len();
    assert!(kept > 0 && kept < original.len() as u64, "kept {kept}");
    assert!(
        !cat2.join("entries").join(&id).exists(),
        "an unverified image became visible"
    );
    *proxy.cut.lock().unwrap() = None;
    proxy.heads.lock().unwrap().clear();
    let resumed = json(&k2(&["image", "pull", &via_proxy, "--trust", trust_s, "--json"]).ok());
    assert_eq!(resumed["resumed_from"], kept);
    let heads = proxy.heads.lock().unwrap().join("\n");
    assert!(heads.contains(&format!("range: bytes={kept}-")), "{heads}");
    assert!(!part.exists());
    assert_eq!(
        fs::read(cat2.join("entries").join(&id).join("web.qcow2")).unwrap(),
        original
    );
    k2(&["image", "verify", &short, "--trust", trust_s]).ok();

    // A flipped byte on the server is refused on arrival, leaving nothing.
    let served = data.join("entries").join(&id).join("web.qcow2");
    fs::write(&served, &flipped).unwrap();
    let cat3 = dir.join("cat3");
    let pulled_bad = kiln_env(
        &store,
        &dir,
        &[
            "image",
            "pull",
            &format!("{market}/{id}"),
            "--trust",
            trust_s,
        ],
        &[("KILN_CATALOG", cat3.to_str().unwrap())],
    );
    fails(pulled_bad, "checksum refused");
    assert!(files_under(&cat3).is_empty(), "{:?}", files_under(&cat3));
    fs::write(&served, &original).unwrap();
    // An untrusted endorser is refused before any download.
    let pulled_untrusted = kiln_env(
        &store,
        &dir,
        &[
            "image",
            "pull",
            &format!("{market}/{id}"),
            "--trust",
            empty.to_str().unwrap(),
        ],
        &[("KILN_CATALOG", cat3.to_str().unwrap())],
    );
    fails(pulled_untrusted, "is not trusted");
    assert!(files_under(&cat3).is_empty());

    // Deprecation by the endorser reaches the marketplace; pulls warn.
    let other = dir.join("other.key");
    k(&["key", "generate", "-o", other.to_str().unwrap()]).ok();
    fails(
        k(&[
            "image",
            "deprecate",
            &short,
            "--reason",
            "x",
            "--key",
            other.to_str().unwrap(),
        ]),
        "only that key",
    );
    with_token(
        &[
            "image",
            "deprecate",
            &short,
            "--reason",
            "CVE-2026-0001 in busybox",
            "--key",
            "me.key",
            "--remote",
            &market,
        ],
        "tok-123",
    )
    .ok();
    let (_, listing) = http(&server.addr, "GET", "/api/images?q=web", &[], b"");
    assert!(
        listing.contains("CVE-2026-0001") && listing.contains("\"validity\":\"deprecated\""),
        "{listing}"
    );
    let warned = k2(&[
        "image",
        "pull",
        &format!("{market}/{short}"),
        "--trust",
        trust_s,
    ])
    .ok();
    assert!(
        warned.stderr.contains("deprecated") && warned.stderr.contains("CVE-2026-0001"),
        "{}",
        warned.stderr
    );
    k2(&["image", "verify", &short, "--trust", trust_s]).ok();

    // Removal: only the endorser, then gone.
    fails(
        with_token(
            &[
                "image",
                "rm",
                &id,
                "--remote",
                &market,
                "--key",
                other.to_str().unwrap(),
            ],
            "tok-123",
        ),
        "only the endorser",
    );
    with_token(
        &["image", "rm", &id, "--remote", &market, "--key", "me.key"],
        "tok-123",
    )
    .ok();
    assert_eq!(
        http(&server.addr, "GET", &format!("/api/images/{id}"), &[], b"").0,
        404
    );
    k(&["image", "rm", &short]).ok();
    assert_eq!(
        json(&k(&["image", "ls", "--json"]).ok())
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

// ---------------------------------------------------------------- acceptance 2

#[test]
fn uploads_with_bad_checksum_signature_endorser_size_or_name_are_refused_and_leave_nothing() {
    let dir = test_dir("catalog-uploads");
    let me = new_key(&dir, "me");
    let stranger = new_key(&dir, "stranger");
    let data = market_data(&dir, "market", &[&dir.join("me.pub")]);
    let server = Server::start(
        &data,
        &[
            "--token-file",
            dir.join("token").to_str().unwrap(),
            "--max-upload",
            "3M",
        ],
    );
    let addr = server.addr.clone();
    let blob = dir.join("blob.raw");
    random_file(&blob, 2 << 20);
    let body = fs::read(&blob).unwrap();
    let (meta, bytes, sig) = signed_metadata(&blob, &me, "me@lab.org", "Blob");
    let put = |path: &str, headers: Vec<(&str, String)>, body: &[u8]| {
        http(&addr, "PUT", path, &headers, body)
    };
    let path = format!("/api/images/{}", meta.id);
    let expect = |got: (u16, String), status: u16, needle: &str| {
        assert_eq!(got.0, status, "{}", got.1);
        assert!(got.1.contains(needle), "expected {needle:?} in {}", got.1);
        let v: serde_json::Value = serde_json::from_str(&got.1).expect("errors are JSON");
        assert!(v["error"].is_string());
    };

    expect(put(&path, vec![], &body), 401, "Bearer");
    expect(
        put(&path, upload_headers("nope", &bytes, &sig), &body),
        401,
        "wrong bearer token",
    );
    // Bad checksum: the metadata is signed, but the body is other bytes of the same size.
    let mut other = body.clone();
    other[12345] ^= 0xff;
    expect(
        put(&path, upload_headers("tok-123", &bytes, &sig), &other),
        422,
        "checksum refused",
    );
    // Bad signature: the signature of other metadata.
    let (_, _, other_sig) = signed_metadata(&blob, &me, "me@lab.org", "Another title");
    expect(
        put(&path, upload_headers("tok-123", &bytes, &other_sig), &body),
        403,
        "signature",
    );
    // Untrusted endorser.
    let (_, s_bytes, s_sig) = signed_metadata(&blob, &stranger, "stranger@evil.org", "Blob");
    expect(
        put(&path, upload_headers("tok-123", &s_bytes, &s_sig), &body),
        403,
        "is not trusted",
    );
    // Oversize: the server takes at most 3 MiB.
    let big = dir.join("big.raw");
    random_file(&big, 4 << 20);
    let (big_meta, big_bytes, big_sig) = signed_metadata(&big, &me, "me@lab.org", "Big");
    expect(
        put(
            &format!("/api/images/{}", big_meta.id),
            upload_headers("tok-123", &big_bytes, &big_sig),
            &fs::read(&big).unwrap(),
        ),
        413,
        "at most",
    );
    // A body longer than the metadata says.
    let mut longer = body.clone();
    longer.extend_from_slice(b"trailing");
    expect(
        put(&path, upload_headers("tok-123", &bytes, &sig), &longer),
        400,
        "bytes",
    );
    // Traversal names: in the path, and as the metadata's file name (signed as such).
    expect(
        put(
            "/api/images/..%2F..%2Fetc%2Fpasswd",
            upload_headers("tok-123", &bytes, &sig),
            &body,
        ),
        400,
        "not an image id",
    );
    let evil_text = String::from_utf8(bytes.clone())
        .unwrap()
        .replace("\"file\":\"blob.raw\"", "\"file\":\"../../evil\"");
    assert_ne!(evil_text.as_bytes(), &bytes[..]);
    let evil_sig = kiln_catalog::sign::sign(&me, evil_text.as_bytes(), "t").unwrap();
    expect(
        put(
            &path,
            upload_headers("tok-123", evil_text.as_bytes(), &evil_sig),
            &body,
        ),
        400,
        "not a plain file name",
    );
    expect(
        put(&path, upload_headers("tok-123", b"{not json", &sig), &body),
        400,
        "not kiln image metadata",
    );

    // Nothing of any of these is left: no entry, no temporary file, nothing outside.
    assert!(
        files_under(&data.join("entries")).is_empty(),
        "{:?}",
        files_under(&data)
    );
    assert!(
        files_under(&data.join("tmp")).is_empty(),
        "{:?}",
        files_under(&data)
    );
    assert!(!dir.join("evil").exists() && !data.join("evil").exists());

    // The good upload is accepted and served.
    let (status, created) = put(&path, upload_headers("tok-123", &bytes, &sig), &body);
    assert_eq!(status, 201, "{created}");
    let (status, listing) = http(&addr, "GET", "/api/images?q=blob", &[], b"");
    assert!(status == 200 && listing.contains(&meta.id), "{listing}");
    expect(
        put(&path, upload_headers("tok-123", &bytes, &sig), &body),
        409,
        "already here",
    );
    assert!(files_under(&data.join("tmp")).is_empty());
}

// ---------------------------------------------------------------- acceptance 6

#[test]
fn server_survives_many_slow_and_malformed_clients_and_a_kill_mid_upload() {
    let dir = test_dir("catalog-robust");
    let me = new_key(&dir, "me");
    let data = market_data(&dir, "market", &[&dir.join("me.pub")]);
    let token_arg = dir.join("token");
    let args = ["--token-file", token_arg.to_str().unwrap()];
    let mut server = Server::start(&data, &args);
    let blob = dir.join("blob.raw");
    random_file(&blob, 4 << 20);
    let body = fs::read(&blob).unwrap();
    let (meta, bytes, sig) = signed_metadata(&blob, &me, "me@lab.org", "Blob");
    let (status, text) = http(
        &server.addr,
        "PUT",
        &format!("/api/images/{}", meta.id),
        &upload_headers("tok-123", &bytes, &sig),
        &body,
    );
    assert_eq!(status, 201, "{text}");

    // Slow clients: 20 connections that send half a request line and stall, and one
    // download nobody reads; they stay open during everything below.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(&server.addr).unwrap();
        s.write_all(b"GET /api/ima").unwrap();
        stalled.push(s);
    }
    let mut unread = TcpStream::connect(&server.addr).unwrap();
    unread
        .write_all(
            format!(
                "GET /api/images/{}/download HTTP/1.1\r\nHost: x\r\n\r\n",
                meta.id
            )
            .as_bytes(),
        )
        .unwrap();

    // 200 concurrent downloads, each checked byte for byte.
    let want = sha256_hex(&body);
    let started = Instant::now();
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let addr = server.addr.clone();
            let id = meta.id.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
                s.write_all(format!("GET /api/images/{id}/download HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).unwrap();
                let mut all = Vec::new();
                s.read_to_end(&mut all).unwrap();
                let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                assert!(all.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&all[..split]));
                sha256_hex(&all[split..])
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), want);
    }
    eprintln!("200 concurrent downloads of 4 MiB: {:?}", started.elapsed());

    // Malformed requests get clear 4xx answers.
    let auth = vec![("Authorization", "Bearer tok-123".to_string())];
    let (status, text) = http(
        &server.addr,
        "PUT",
        &format!("/api/images/{}/metadata", meta.id),
        &auth,
        b"{\"metadata\": 12, ",
    );
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("not the JSON"), "{text}");
    let mut bad_b64 = upload_headers("tok-123", &bytes, &sig);
    bad_b64[1].1 = "%%%not base64%%%".into();
    let (status, text) = http(
        &server.addr,
        "PUT",
        &format!("/api/images/{}", "0".repeat(64)),
        &bad_b64,
        &body,
    );
    assert_eq!(status, 400, "{text}");
    let mut raw = TcpStream::connect(&server.addr).unwrap();
    raw.write_all(b"HELLO THERE\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer:?}");
    // Oversize headers: 200 KB of them.
    let huge = vec![("X-Junk", "a".repeat(200 * 1024))];
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut head = "GET /healthz HTTP/1.1\r\nHost: x\r\n".to_string();
    for (k, v) in &huge {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes());
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{:?}",
        &answer[..answer.len().min(200)]
    );
    // Still serving, the stalled clients notwithstanding.
    assert_eq!(http(&server.addr, "GET", "/healthz", &[], b"").0, 200);
    drop(stalled);
    drop(unread);

    // kill -9 in the middle of an upload: nothing of it is visible after a restart.
    let blob2 = dir.join("blob2.raw");
    random_file(&blob2, 4 << 20);
    let body2 = fs::read(&blob2).unwrap();
    let (meta2, bytes2, sig2) = signed_metadata(&blob2, &me, "me@lab.org", "Second");
    let mut s = TcpStream::connect(&server.addr).unwrap();
    let mut head = format!(
        "PUT /api/images/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        meta2.id,
        body2.len()
    );
    for (k, v) in upload_headers("tok-123", &bytes2, &sig2) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body2[..1 << 20]).unwrap();
    // Wait until the server has written part of the upload to its temporary file.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let partial: u64 = fs::read_dir(data.join("tmp"))
            .unwrap()
            .flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        if partial > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never reached the server's tmp/"
        );
        std::thread::yield_now();
    }
    server.kill9();
    drop(s);
    assert!(!data.join("entries").join(&meta2.id).exists());
    let server = Server::start(&data, &args);
    assert!(
        files_under(&data.join("tmp")).is_empty(),
        "{:?}",
        files_under(&data.join("tmp"))
    );
    let entries: Vec<_> = fs::read_dir(data.join("entries"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(entries, vec![std::ffi::OsString::from(&meta.id)]);
    let (status, listing) = http(&server.addr, "GET", "/api/images", &[], b"");
    assert!(
        status == 200 && listing.contains(&meta.id) && !listing.contains(&meta2.id),
        "{listing}"
    );
    let (status, text) = http(
        &server.addr,
        "PUT",
        &format!("/api/images/{}", meta2.id),
        &upload_headers("tok-123", &bytes2, &sig2),
        &body2,
    );
    assert_eq!(status, 201, "{text}");
}

// ---------------------------------------------------------------- acceptance 3

/// Runs Debian's headless Chromium with the flags that work on a closed network.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("chromium is missing: apt-get install chromium (scripts/setup.sh does)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn web_page_lists_images_with_validity_search_and_pull_commands_in_chromium() {
    let dir = test_dir("catalog-page");
    let me = new_key(&dir, "me");
    let data = market_data(&dir, "market", &[&dir.join("me.pub")]);
    let server = Server::start(
        &data,
        &["--token-file", dir.join("token").to_str().unwrap()],
    );
    let mut ids = Vec::new();
    for title in ["Alpha web base", "Beta <b>db</b> base"] {
        let file = dir.join(format!("{}.raw", &title[..4].to_lowercase()));
        random_file(&file, 64 << 10);
        let (meta, bytes, sig) = signed_metadata(&file, &me, "me@lab.org", title);
        let (status, text) = http(
            &server.addr,
            "PUT",
            &format!("/api/images/{}", meta.id),
            &upload_headers("tok-123", &bytes, &sig),
            &fs::read(&file).unwrap(),
        );
        assert_eq!(status, 201, "{text}");
        ids.push(meta);
    }
    // Beta is deprecated by its endorser.
    let mut beta = ids[1].clone();
    beta.deprecated = Some(kiln_catalog::metadata::Deprecation {
        reason: "superseded by Alpha".into(),
        at: "2026-12-01T00:00:00Z".into(),
    });
    let beta_bytes = beta.canonical_json();
    let beta_sig = kiln_catalog::sign::sign(&me, &beta_bytes, "t").unwrap();
    let body =
        serde_json::json!({"metadata": b64(&beta_bytes), "signature": b64(beta_sig.as_bytes())})
            .to_string();
    let auth = vec![
        ("Authorization", "Bearer tok-123".to_string()),
        ("Content-Type", "application/json".to_string()),
    ];
    assert_eq!(
        http(
            &server.addr,
            "PUT",
            &format!("/api/images/{}/metadata", beta.id),
            &auth,
            body.as_bytes()
        )
        .0,
        200
    );
    // An expired entry, placed directly (uploads of expired metadata are refused).
    let gamma_file = dir.join("gamma.raw");
    random_file(&gamma_file, 64 << 10);
    let (mut gamma, _, _) = signed_metadata(&gamma_file, &me, "me@lab.org", "Gamma old base");
    gamma.created = "2020-01-01T00:00:00Z".into();
    gamma.valid_until = "2021-01-01T00:00:00Z".into();
    let g_bytes = gamma.canonical_json();
    let g_sig = kiln_catalog::sign::sign(&me, &g_bytes, "t").unwrap();
    kiln_catalog::catalog::Catalog::open_existing(&data)
        .put(
            &gamma,
            &g_bytes,
            &g_sig,
            kiln_catalog::catalog::ImageSource::Copy(&gamma_file),
        )
        .unwrap();

    let profile = dir.join("chromium-profile");
    let dom = chromium(&profile, &["--dump-dom", &server.url()]);
    let base = server.url();
    assert!(dom.contains("Alpha web base"), "{dom}");
    // Markup in a title is shown as text, not interpreted.
    assert!(dom.contains("Beta &lt;b&gt;db&lt;/b&gt; base"), "{dom}");
    assert!(dom.contains("deprecated: superseded by Alpha"), "{dom}");
    assert!(dom.contains("class=\"state valid\""), "{dom}");
    assert!(
        !dom.contains("Gamma old base"),
        "an expired image is listed by default"
    );
    assert!(dom.contains("2 of 3 images"), "{dom}");
    for m in &ids {
        assert!(
            dom.contains(&format!("value=\"kiln image pull {base}/{}\"", m.short_id)),
            "{dom}"
        );
    }
    let searched = chromium(&profile, &["--dump-dom", &format!("{base}/?q=alpha")]);
    assert!(
        searched.contains("Alpha web base") && !searched.contains("superseded"),
        "{searched}"
    );
    assert!(searched.contains("1 of 3 images"), "{searched}");
    let expired = chromium(
        &profile,
        &["--dump-dom", &format!("{base}/?include_expired=1")],
    );
    assert!(
        expired.contains("Gamma old base") && expired.contains("class=\"state expired\""),
        "{expired}"
    );
    // The screenshot of the run.
    let shot = dir.join("marketplace.png");
    chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1400,700",
            &base,
        ],
    );
    let png = fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("screenshot: {}", shot.display());
    let _ = fs::remove_dir_all(&profile);
}

// ---------------------------------------------------------------- acceptance 5

#[test]
fn lint_flags_each_planted_item_and_passes_a_clean_kiln_image() {
    let dir = test_dir("catalog-lint");
    let store = dir.join("store");
    // A test image with everything a public image must not carry: a bare ext4 filesystem
    // made with mke2fs -d from a planted tree, as qcow2.
    let root = dir.join("planted");
    let plant = |rel: &str, text: &str| {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    };
    plant("etc/os-release", "ID=test\n");
    plant("root/.ssh/id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n");
    plant(
        "etc/ssh/ssh_host_ecdsa_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    plant(
        "root/.bash_history",
        "curl -u admin:hunter2 https://intranet\n",
    );
    plant("etc/machine-id", "4a8e2c1b9d7f4e3a8b6c5d4e3f2a1b0c\n");
    plant(
        "var/lib/dhcp/dhclient.enp1s0.leases",
        "lease { fixed-address 10.1.2.3; }\n",
    );
    plant(
        "etc/shadow",
        "root:$y$j9T$abcdefgh$0123456789abcdefghijklmnopqrstuvwxyzABCDE:19700:0:99999:7:::\n",
    );
    let raw = dir.join("planted.raw");
    let mk = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-d"])
        .arg(&root)
        .arg(&raw)
        .arg("16M")
        .status()
        .unwrap();
    assert!(mk.success());
    let planted = dir.join("planted.qcow2");
    assert!(Command::new("qemu-img")
        .args(["convert", "-O", "qcow2"])
        .arg(&raw)
        .arg(&planted)
        .status()
        .unwrap()
        .success());
    fs::remove_file(&raw).unwrap();

    let lint = kiln(
        &store,
        &dir,
        &[
            "image",
            "lint",
            planted.to_str().unwrap(),
            "--strict",
            "--json",
        ],
    );
    assert_eq!(lint.code, 1, "{}\n{}", lint.stdout, lint.stderr);
    let findings = json(&lint);
    let got: Vec<(String, String)> = findings
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("machine-id", "/etc/machine-id"),
        ("root-password", "/etc/shadow"),
        ("ssh-host-key", "/etc/ssh/ssh_host_ecdsa_key"),
        ("shell-history", "/root/.bash_history"),
        ("private-key", "/root/.ssh/id_ed25519"),
        ("dhcp-lease", "/var/lib/dhcp/dhclient.enp1s0.leases"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(k, p)| (k.to_string(), p.to_string()))
        .collect();
    assert_eq!(got, want);
    // Without --strict it reports and succeeds.
    let lenient = kiln(&store, &dir, &["image", "lint", planted.to_str().unwrap()]).ok();
    assert!(
        lenient.stdout.contains("root-password"),
        "{}",
        lenient.stdout
    );

    // A clean image kiln built passes; kiln empties its machine-id itself.
    let clean = small_image(
        &store,
        &dir,
        "clean.qcow2",
        1,
        "; echo 0123456789abcdef0123456789abcdef > /etc/machine-id",
    );
    let ok = kiln(
        &store,
        &dir,
        &["image", "lint", clean.to_str().unwrap(), "--strict"],
    )
    .ok();
    assert!(ok.stdout.starts_with("clean"), "{}", ok.stdout);

    // `image add` runs the check; with --strict it refuses, adding nothing.
    small_image(
        &store,
        &dir,
        "dirty.qcow2",
        1,
        "; mkdir -p /root && echo 'rm -rf /tmp/x' > /root/.ash_history",
    );
    kiln(&store, &dir, &["key", "generate", "-o", "me.key"]).ok();
    let cat = dir.join("cat");
    let env = [("KILN_CATALOG", cat.to_str().unwrap())];
    let refused = kiln_env(
        &store,
        &dir,
        &[
            "image",
            "add",
            "dirty.qcow2",
            "--title",
            "Dirty",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
            "--strict",
        ],
        &env,
    );
    let refused = fails(refused, "hygiene check found 1 problem");
    assert!(
        refused.stderr.contains("shell-history /root/.ash_history"),
        "{}",
        refused.stderr
    );
    assert!(files_under(&cat.join("entries")).is_empty());
    let warned = kiln_env(
        &store,
        &dir,
        &[
            "image",
            "add",
            "dirty.qcow2",
            "--title",
            "Dirty",
            "--endorser",
            "me@lab.org",
            "--key",
            "me.key",
        ],
        &env,
    )
    .ok();
    assert!(warned.stderr.contains("shell-history"), "{}", warned.stderr);
}

#[test]
fn stalled_headers_and_stalled_uploads_are_dropped_after_the_configured_timeouts() {
    let dir = test_dir("catalog-timeouts");
    let me = new_key(&dir, "me");
    let data = market_data(&dir, "market", &[&dir.join("me.pub")]);
    fs::write(
        data.join("config.json"),
        format!(
            r#"{{"token_file": "{}", "header_timeout_secs": 2, "body_idle_timeout_secs": 2}}"#,
            dir.join("token").display()
        ),
    )
    .unwrap();
    let server = Server::start(&data, &[]);

    // Half a request head, then nothing: the server closes the connection.
    let started = Instant::now();
    let mut slow = TcpStream::connect(&server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"GET /api/images HTTP/1.1\r\nHo").unwrap();
    let mut answer = Vec::new();
    let _ = slow.read_to_end(&mut answer);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(20),
        "{waited:?}"
    );

    // An upload that stops sending: dropped, its temporary file removed.
    let blob = dir.join("blob.raw");
    random_file(&blob, 2 << 20);
    let body = fs::read(&blob).unwrap();
    let (meta, bytes, sig) = signed_metadata(&blob, &me, "me@lab.org", "Blob");
    let mut s = TcpStream::connect(&server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "PUT /api/images/{} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        meta.id,
        body.len()
    );
    for (k, v) in upload_headers("tok-123", &bytes, &sig) {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..64 << 10]).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("sent nothing for 2 s"), "{answer:?}");
    assert!(
        files_under(&data.join("tmp")).is_empty(),
        "{:?}",
        files_under(&data.join("tmp"))
    );
    assert!(files_under(&data.join("entries")).is_empty());
    assert_eq!(http(&server.addr, "GET", "/healthz", &[], b"").0, 200);
}

/// Writes a kiln manifest for an arbitrary file (what `kiln build -o` writes beside an image).
fn fake_manifest(file: &Path) {
    let d = kiln_image::manifest::hash_file(file).unwrap();
    let manifest = serde_json::json!({
        "schema": "kiln-image-manifest/1", "name": "blob", "file": file.file_name().unwrap().to_str().unwrap(),
        "format": "raw", "bytes": d.bytes, "virtual_size": d.bytes, "sha256": d.sha256, "sha512": d.sha512,
        "boot": "none", "default_partition": null, "node_types": [], "arches": [], "partitions": [],
        "spec_sha256": "", "layer_id": "", "kiln_version": "test", "build_time": 0,
        "build_time_utc": "1970-01-01T00:00:00Z"
    });
    fs::write(
        kiln_image::manifest::manifest_path(file),
        manifest.to_string(),
    )
    .unwrap();
}

#[test]
fn keys_made_by_the_stock_minisign_sign_for_kiln() {
    let dir = test_dir("catalog-stock-keys");
    let store = dir.join("store");
    let blob = dir.join("blob.raw");
    random_file(&blob, 64 << 10);
    fake_manifest(&blob);
    let gen = Command::new("minisign")
        .args(["-G", "-W", "-p", "stock.pub", "-s", "stock.key"])
        .current_dir(&dir)
        .output()
        .expect("minisign is missing: apt-get install minisign (scripts/setup.sh does)");
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let env = [("KILN_CATALOG", dir.join("cat"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.to_str().unwrap())).collect();
    let added = json(
        &kiln_env(
            &store,
            &dir,
            &[
                "image",
                "add",
                "blob.raw",
                "--title",
                "Blob",
                "--endorser",
                "me@lab.org",
                "--key",
                "stock.key",
                "--no-lint",
                "--json",
            ],
            &env,
        )
        .ok(),
    );
    let trust = dir.join("trust");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(dir.join("stock.pub"), trust.join("stock.pub")).unwrap();
    let id = added["id"].as_str().unwrap();
    kiln_env(
        &store,
        &dir,
        &["image", "verify", id, "--trust", trust.to_str().unwrap()],
        &env,
    )
    .ok();
    // A damaged key is refused when loaded, not at verification time.
    let text = fs::read_to_string(dir.join("stock.key")).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    let mut key: Vec<char> = lines[1].chars().collect();
    key[120] = if key[120] == 'A' { 'B' } else { 'A' };
    lines[1] = key.into_iter().collect();
    fs::write(dir.join("bad.key"), lines.join("\n") + "\n").unwrap();
    fails(
        kiln_env(
            &store,
            &dir,
            &[
                "image",
                "add",
                "blob.raw",
                "--title",
                "Blob",
                "--endorser",
                "me@lab.org",
                "--key",
                "bad.key",
                "--no-lint",
            ],
            &env,
        ),
        "bad.key",
    );
}
