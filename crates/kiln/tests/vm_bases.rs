//! VM bases end to end (TCG here): `kiln base import` of a kiln-made Debian image with
//! sshd, steps on it over SSH, `kiln base build`, `kiln base ls|rm`, `(from vm:NAME)`
//! and `kiln shell --sandbox qemu --save`.

mod common;

use common::*;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A Debian image with a kernel, DHCP and sshd, where `tester` logs in with the test's
/// key and has passwordless sudo.
const SSH_IMAGE: &str = r#"((from debian:bookworm)
 (run (network host)
      (cache (apt-lists (target /var/lib/apt/lists)))
      (shell "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 systemd-sysv udev openssh-server sudo && apt-get clean"))
 (copy (src 80-dhcp.network) (dst /etc/systemd/network/80-dhcp.network))
 (copy (src authorized_keys) (dst /etc/kiln-test/authorized_keys))
 (run (shell "useradd -m -s /bin/bash tester && usermod -p '*' tester && install -d -m 700 -o tester -g tester /home/tester/.ssh && install -m 600 -o tester -g tester /etc/kiln-test/authorized_keys /home/tester/.ssh/authorized_keys && echo 'tester ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/tester && chmod 644 /etc/systemd/network/80-dhcp.network && systemctl enable systemd-networkd ssh")))
"#;

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "kiln-test", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen (openssh-client) must be installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The image, its directory and the key `tester` accepts; made once per run.
fn ssh_image() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = test_dir("vm-bases-image");
        let key = dir.join("id_ed25519");
        keygen(&key);
        fs::copy(key.with_extension("pub"), dir.join("authorized_keys")).unwrap();
        fs::write(
            dir.join("80-dhcp.network"),
            "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n",
        )
        .unwrap();
        let image = dir.join("base.qcow2");
        let started = Instant::now();
        build(
            &shared_store(),
            &dir,
            SSH_IMAGE,
            &["-o", image.to_str().unwrap()],
        )
        .ok();
        eprintln!(
            "the SSH image took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        (image, key)
    })
}

fn base_ls(store: &Path, dir: &Path) -> serde_json::Value {
    let ls = kiln(store, dir, &["base", "ls", "--json"]).ok();
    serde_json::from_str(&ls.stdout).unwrap()
}

/// `kiln base import NAME IMAGE --user tester --key KEY --timeout SECS`.
fn import_as_tester(
    store: &Path,
    dir: &Path,
    name: &str,
    image: &Path,
    key: &Path,
    secs: &str,
) -> Run {
    kiln(
        store,
        dir,
        &[
            "base",
            "import",
            name,
            image.to_str().unwrap(),
            "--user",
            "tester",
            "--key",
            key.to_str().unwrap(),
            "--timeout",
            secs,
        ],
    )
}

#[test]
fn an_imported_base_builds_a_two_step_spec_over_ssh_and_rm_unregisters_it() {
    let (image, key) = ssh_image();
    let store = shared_store();
    let dir = test_dir("vm-bases-import");
    let name = format!("imported-{}", &nonce()[..8]);
    let started = Instant::now();
    let import = import_as_tester(&store, &dir, &name, image, key, "300").ok();
    eprintln!(
        "import: {:.0} s\n{}",
        started.elapsed().as_secs_f64(),
        import.stdout
    );
    let ls = base_ls(&store, &dir);
    let row = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} not in {ls}"));
    assert_eq!(row["kind"], "ssh");
    assert_eq!(row["user"], "tester");
    assert_eq!(row["firmware"], "uefi");
    let sha = hex_sha256(&fs::read(image).unwrap());
    assert_eq!(row["sha256"], sha.as_str());
    let stored_key = PathBuf::from(row["key"].as_str().unwrap());
    let mode = fs::metadata(&stored_key).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );

    let n = nonce();
    let spec = format!(
        "((from vm:{name})\n (run (shell \"echo first {n} > /root/first.txt && id -un > /root/who.txt\"))\n (workdir /srv)\n (env GREETING hi)\n (run (shell \"echo $GREETING second {n} > second.txt && cat /root/first.txt >> second.txt\")))\n"
    );
    let started = Instant::now();
    let built = build(&store, &dir, &spec, &[]).ok();
    eprintln!("2 steps over SSH: {:.0} s", started.elapsed().as_secs_f64());
    let tar = export_tar(&store, &dir, &built.got());
    assert_eq!(
        String::from_utf8(tar_read(&tar, "root/first.txt").expect("first step's file")).unwrap(),
        format!("first {n}\n")
    );
    assert_eq!(
        String::from_utf8(tar_read(&tar, "root/who.txt").unwrap()).unwrap(),
        "root\n"
    );
    assert_eq!(
        String::from_utf8(tar_read(&tar, "srv/second.txt").expect("second step's file")).unwrap(),
        format!("hi second {n}\nfirst {n}\n")
    );
    // Built again: every step comes from the store.
    let again = build(&store, &dir, &spec, &[]).ok();
    assert_eq!(again.got(), built.got());

    // copy over SSH is byte-exact; a secret reaches the step and no layer.
    let payload: Vec<u8> = (0..(3u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    fs::write(dir.join("payload.bin"), &payload).unwrap();
    let secret = format!("ssh-secret-{n}");
    fs::write(dir.join("tok"), &secret).unwrap();
    let secret_spec = format!(
        "((from vm:{name})\n (copy (src payload.bin) (dst /opt/))\n (run (secrets (tok (target /run/secrets/tok))) (shell \"sha256sum < /opt/payload.bin > /opt/payload.sha && sha256sum < /run/secrets/tok > /opt/tok.sha\")))\n"
    );
    fs::write(dir.join("secret.spec"), &secret_spec).unwrap();
    let copied = kiln(
        &store,
        &dir,
        &["build", "--secret", "tok:tok", "-f", "secret.spec", "."],
    )
    .ok();
    let tar = export_tar(&store, &dir, &copied.got());
    assert_eq!(tar_read(&tar, "opt/payload.bin").unwrap(), payload);
    let want = |bytes: &[u8]| format!("{}  -\n", hex_sha256(bytes));
    assert_eq!(
        String::from_utf8(tar_read(&tar, "opt/payload.sha").unwrap()).unwrap(),
        want(&payload)
    );
    assert_eq!(
        String::from_utf8(tar_read(&tar, "opt/tok.sha").unwrap()).unwrap(),
        want(secret.as_bytes())
    );
    let layer = store.join("result").join(copied.got());
    assert!(
        tree_contains(&layer, secret.as_bytes()).is_none(),
        "the secret is in the layer"
    );

    // A cache disk carries a file from one step to the next; the network is the host's
    // loopback at 10.0.2.2 with (network host) and nothing without it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = format!("from-host-{n}");
    let reply = served.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
        }
    });
    let net_spec = format!(
        "((from vm:{name})\n (run (cache (ssh-c-{n} (target /var/cache/c))) (shell \"echo {n} > /var/cache/c/note; if timeout 10 bash -c 'echo > /dev/tcp/10.0.2.2/{port}'; then echo REACHED; exit 1; fi; echo isolated-{n}\"))\n (run (network host) (cache (ssh-c-{n} (target /var/cache/c))) (shell \"cat /var/cache/c/note > /from-cache && timeout 20 bash -c 'exec 3<>/dev/tcp/10.0.2.2/{port}; cat <&3' > /from-host\")))\n"
    );
    fs::write(dir.join("net.spec"), &net_spec).unwrap();
    let networked = kiln(&store, &dir, &["build", "-f", "net.spec", "."]).ok();
    assert!(
        networked.stdout.contains(&format!("isolated-{n}")),
        "{}",
        networked.stdout
    );
    let tar = export_tar(&store, &dir, &networked.got());
    assert_eq!(
        tar_read(&tar, "from-cache").unwrap(),
        format!("{n}\n").as_bytes()
    );
    assert_eq!(tar_read(&tar, "from-host").unwrap(), served.as_bytes());
    assert!(
        tar_read(&tar, "var/cache/c/note").is_none(),
        "the cache is not in the layer"
    );

    kiln(&store, &dir, &["base", "rm", &name]).ok();
    assert!(!base_ls(&store, &dir)
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == name.as_str()));
    let failed = build(&store, &dir, &spec, &[]);
    assert_ne!(failed.code, 0);
    assert!(
        failed.stderr.contains("build.spec:1:8") && failed.stderr.contains("kiln base ls"),
        "{}",
        failed.stderr
    );
}

#[test]
fn an_image_that_never_answers_on_ssh_fails_within_its_timeout_with_console_lines() {
    let (image, _) = ssh_image();
    let store = shared_store();
    let dir = test_dir("vm-bases-silent");
    // tester does not accept this key: sshd answers, the login never succeeds.
    let stranger = dir.join("stranger");
    keygen(&stranger);
    let name = format!("silent-{}", &nonce()[..8]);
    let started = Instant::now();
    let run = import_as_tester(&store, &dir, &name, image, &stranger, "45");
    let took = started.elapsed();
    assert_ne!(run.code, 0, "{}", run.stdout);
    assert!(took < Duration::from_secs(45 + 40), "took {took:?}");
    assert!(
        run.stderr.contains("did not answer") && run.stderr.contains("last console lines"),
        "{}",
        run.stderr
    );
    let console = run.stderr.split("last console lines").nth(1).unwrap_or("");
    assert!(console.trim().lines().count() >= 3, "{}", run.stderr);
    assert!(!base_ls(&store, &dir)
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["name"] == name.as_str()));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn shell_in_a_vm_saves_a_disk_layer_that_a_later_spec_builds_from() {
    let store = shared_store();
    let dir = test_dir("vm-bases-shell");
    let base = build(
        &store,
        &dir,
        &format!("((from file:{}))\n", busybox_tar().display()),
        &[],
    )
    .ok()
    .got();
    let name = format!("vm-captured-{}", &nonce()[..8]);
    let n = nonce();
    let started = Instant::now();
    let shell = kiln_stdin(
        &store,
        &dir,
        &[
            "shell",
            &base,
            "--sandbox",
            "qemu",
            "--save",
            &name,
            "--json",
        ],
        &format!("echo captured {n} > /root/cap.txt\nuname -s\nexit 0\n"),
    );
    assert_eq!(shell.code, 0, "{}\n{}", shell.stdout, shell.stderr);
    eprintln!(
        "kiln shell --sandbox qemu: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert!(shell.stderr.contains("Linux"), "{}", shell.stderr);
    let report: serde_json::Value = serde_json::from_str(shell.stdout.trim()).unwrap();
    assert_eq!(report["saved"], true);
    let spec =
        format!("((from layer:{name})\n (run (shell \"cat /root/cap.txt > /root/again.txt\")))\n");
    let built = build(&store, &dir, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &built.got());
    let expected = format!("captured {n}\n");
    assert_eq!(tar_read(&tar, "root/cap.txt").unwrap(), expected.as_bytes());
    assert_eq!(
        tar_read(&tar, "root/again.txt").unwrap(),
        expected.as_bytes()
    );
    // A failing shell saves nothing.
    let failed = kiln_stdin(
        &store,
        &dir,
        &[
            "shell",
            &base,
            "--sandbox",
            "qemu",
            "--save",
            &format!("{name}-no"),
        ],
        "exit 3\n",
    );
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    let names = kiln(&store, &dir, &["names", "--json"]).ok();
    assert!(
        !names.stdout.contains(&format!("{name}-no")),
        "{}",
        names.stdout
    );
}

#[test]
fn base_build_makes_a_careful_base_that_specs_build_on() {
    let store = shared_store();
    let dir = test_dir("vm-bases-build");
    let name = format!("built-{}", &nonce()[..8]);
    let started = Instant::now();
    let made = kiln(
        &store,
        &dir,
        &["base", "build", &name, "--from", "debian:bookworm"],
    )
    .ok();
    eprintln!("kiln base build: {:.0} s", started.elapsed().as_secs_f64());
    let row = base_ls(&store, &dir)
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed after\n{}", made.stdout));
    assert_eq!(row["kind"], "agent");
    let key = PathBuf::from(row["key"].as_str().expect("a generated key"));
    assert!(key.is_file());
    let spec = format!("((from vm:{name})\n (run (shell \"echo on-base > /root/on-base.txt\")))\n");
    let built = build(&store, &dir, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &built.got());
    assert_eq!(tar_read(&tar, "root/on-base.txt").unwrap(), b"on-base\n");
    assert_eq!(tar_read(&tar, "etc/machine-id").unwrap(), b"");
    let entries = tar_entries(&tar);
    let paths: Vec<String> = entries.iter().map(|e| e.0.clone()).collect();
    assert!(
        !paths.iter().any(|p| p.contains("etc/ssh/ssh_host_")),
        "host keys baked in"
    );
    for wanted in [
        "home/build/.ssh/authorized_keys",
        "etc/sudoers.d/90-kiln-build",
        "etc/systemd/system/kiln-ssh-hostkeys.service",
        "etc/systemd/network/80-kiln-dhcp.network",
    ] {
        assert!(
            paths.iter().any(|p| p.trim_start_matches("./") == wanted),
            "{wanted} missing"
        );
    }
    let public = fs::read(key.with_extension("key.pub")).unwrap();
    assert_eq!(
        tar_read(&tar, "home/build/.ssh/authorized_keys").unwrap(),
        public
    );
    kiln(&store, &dir, &["base", "rm", &name]).ok();
    assert!(!key.exists());
}
