//! The QEMU sandbox end to end: stages built in a VM per step (under TCG here) from the
//! shared Debian bookworm base, compared with the namespace sandbox, with caches,
//! secrets, the network switch, and QEMU or kiln killed mid-step.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Five steps that touch what a VM step must get right: the network with apt, a copy,
/// a new user (a name resolved from the disk's /etc/passwd), env and workdir.
const FIVE_STEPS: &str = r#"((from debian:bookworm)
 (run (network host)
      (cache (apt-lists (target /var/lib/apt/lists)))
      (shell "apt-get update -q && apt-get install -y -q --no-install-recommends jq && apt-get clean"))
 (copy (src hello.txt tools) (dst /srv/))
 (run (shell "useradd --uid 1234 --create-home --shell /bin/bash app"))
 (user (name app))
 (workdir /home/app)
 (env GREETING "hi there")
 (run (shell "echo \"$GREETING from $(id -un) in $PWD\" > greeting.txt && jq -n '{a: 1}' > a.json && ln -s greeting.txt link"))
 (user (uid 0) (gid 0))
 (run (shell "chmod 0640 /home/app/a.json && mkdir -p /opt/empty && sha256sum /srv/tools/big.bin > /srv/big.sha")))
"#;

fn five_step_context(dir: &Path) -> PathBuf {
    let ctx = dir.join("ctx");
    fs::create_dir_all(ctx.join("tools/sub")).unwrap();
    fs::write(ctx.join("hello.txt"), "hello\n").unwrap();
    fs::write(ctx.join("tools/sub/run.sh"), "#!/bin/sh\necho run\n").unwrap();
    fs::set_permissions(
        ctx.join("tools/sub/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut big = vec![0u8; 3 << 20];
    for (i, b) in big.iter_mut().enumerate() {
        *b = (i * 7 % 251) as u8;
    }
    fs::write(ctx.join("tools/big.bin"), big).unwrap();
    fs::write(ctx.join("build.spec"), FIVE_STEPS).unwrap();
    ctx
}

/// Every member of an export: owner, mode, kind and content (or link target), without
/// times. Logs (/var/log) differ by their timestamps and are left out, as the issue says.
fn fingerprint(tar: &Path) -> BTreeMap<String, String> {
    let mut archive = tar::Archive::new(fs::File::open(tar).unwrap());
    let mut out = BTreeMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let path = e
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if path.starts_with("var/log/") || path == "var/cache/ldconfig/aux-cache" {
            continue;
        }
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().to_string());
        let what = format!(
            "{:?} {}:{} {:o} {} {}",
            h.entry_type(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mode().unwrap() & 0o7777,
            hex(&Sha256::digest(&data)),
            link.unwrap_or_default()
        );
        out.insert(path, what);
    }
    out
}

/// The bytes of `path` in the first partition of the raw image `raw` (as its manifest
/// places it), read with debugfs.
fn file_in_image(raw: &Path, path: &str) -> Vec<u8> {
    let manifest = PathBuf::from(format!("{}.manifest.json", raw.display()));
    let m: serde_json::Value = serde_json::from_slice(&fs::read(manifest).unwrap()).unwrap();
    let offset = m["partitions"][0]["offset"].as_u64().unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}")])
        .arg(format!("{}?offset={offset}", raw.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_same_spec_gives_the_same_files_in_namespaces_and_in_a_vm() {
    let store = shared_store();
    let dir = test_dir("vm-same-files");
    let ctx = five_step_context(&dir);
    let chroot = kiln(
        &store,
        &ctx,
        &["build", "--sandbox", "chroot", "-f", "build.spec", "."],
    )
    .ok();
    let started = Instant::now();
    let qemu = kiln(
        &store,
        &ctx,
        &["build", "--sandbox", "qemu", "-f", "build.spec", "."],
    )
    .ok();
    eprintln!("QEMU build: {:.1} s", started.elapsed().as_secs_f64());
    assert_ne!(chroot.got(), qemu.got(), "QEMU layers have their own ids");
    assert!(qemu.stdout.contains("VM base of"), "{}", qemu.stdout);

    let a = fingerprint(&export_tar(&store, &dir, &chroot.got()));
    let b = fingerprint(&export_tar(&store, &dir, &qemu.got()));
    let only_a: Vec<_> = a.keys().filter(|k| !b.contains_key(*k)).collect();
    let only_b: Vec<_> = b.keys().filter(|k| !a.contains_key(*k)).collect();
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k).is_some_and(|w| w != *v))
        .map(|(k, v)| format!("{k}: {v} vs {}", b[k]))
        .collect();
    assert!(
        only_a.is_empty() && only_b.is_empty() && differ.is_empty(),
        "exports differ\nonly in chroot: {only_a:?}\nonly in qemu: {only_b:?}\ndiffer: {differ:#?}"
    );
    assert!(a["home/app/greeting.txt"].contains("1234:1234"));
    let tar = dir.join(format!("{}.tar", &qemu.got()[..12]));
    assert_eq!(
        tar_read(&tar, "home/app/greeting.txt").unwrap(),
        b"hi there from app in /home/app\n"
    );
    assert!(a.contains_key("usr/bin/jq"), "apt ran with the network");

    // A VM-built layer exports to a disk image as a namespace-built one does.
    let raw = dir.join("qemu.raw");
    kiln(
        &store,
        &dir,
        &[
            "export",
            &qemu.got(),
            "-o",
            raw.to_str().unwrap(),
            "--boot",
            "none",
        ],
    )
    .ok();
    let greeting = file_in_image(&raw, "/home/app/greeting.txt");
    assert_eq!(greeting, b"hi there from app in /home/app\n");

    // A second QEMU build is fully cached: no VM boots.
    let again = kiln(
        &store,
        &ctx,
        &["build", "--sandbox", "qemu", "-f", "build.spec", "."],
    )
    .ok();
    assert_eq!(again.got(), qemu.got());
    assert_eq!(again.count("---> saved as"), 0, "{}", again.stdout);
}

#[test]
fn without_network_host_a_vm_step_has_no_network() {
    let store = shared_store();
    let dir = test_dir("vm-no-network");
    let spec = format!(
        r#"((from debian:bookworm) (sandbox qemu)
 (run (shell "echo {}; if timeout 20 bash -c 'echo > /dev/tcp/deb.debian.org/80'; then echo REACHED; exit 1; fi; ip route 2>/dev/null || true; echo isolated")))"#,
        nonce()
    );
    fs::write(dir.join("build.spec"), spec).unwrap();
    let run = kiln(&store, &dir, &["build", "-f", "build.spec", "."]).ok();
    assert!(run.stdout.contains("isolated"), "{}", run.stdout);
}

#[test]
fn a_cache_disk_carries_files_between_vm_builds_and_secrets_stay_out_of_layers() {
    let store = shared_store();
    let dir = test_dir("vm-cache-secret");
    let n = nonce();
    let secret = format!("s3cret-{n}-value");
    fs::write(dir.join("token"), &secret).unwrap();
    let first = format!(
        r#"((from debian:bookworm) (sandbox qemu)
 (run (cache (vm-data-{n} (target /var/cache/data)))
      (secrets (token (target /run/secrets/token)))
      (shell "echo {n} > /var/cache/data/note && sha256sum < /run/secrets/token > /token.sha")))"#
    );
    let second = format!(
        r#"((from debian:bookworm) (sandbox qemu)
 (run (cache (vm-data-{n} (target /var/cache/data)))
      (shell "cat /var/cache/data/note > /from-cache")))"#
    );
    fs::write(dir.join("first.spec"), first).unwrap();
    fs::write(dir.join("second.spec"), second).unwrap();
    let one = kiln(
        &store,
        &dir,
        &["build", "--secret", "token:token", "-f", "first.spec", "."],
    )
    .ok();
    let two = kiln(&store, &dir, &["build", "-f", "second.spec", "."]).ok();
    let tar = export_tar(&store, &dir, &two.got());
    assert_eq!(
        tar_read(&tar, "from-cache").unwrap(),
        format!("{n}\n").as_bytes()
    );
    assert!(
        tar_read(&tar, "var/cache/data/note").is_none(),
        "the cache is not in the layer"
    );

    let tar = export_tar(&store, &dir, &one.got());
    let want = format!("{}  -\n", hex(&Sha256::digest(secret.as_bytes())));
    assert_eq!(tar_read(&tar, "token.sha").unwrap(), want.as_bytes());
    // The secret's bytes are on no disk of the store and in no log.
    let layer = store.join("result").join(one.got());
    assert!(tree_contains(&layer, secret.as_bytes()).is_none());
    assert!(tree_contains(&store.join("result"), secret.as_bytes()).is_none());
}

/// Builds `spec` in `dir` and, once the step prints `marker`, kills what `victim` picks
/// with SIGKILL; returns the build's output and status.
fn build_and_kill(
    store: &Path,
    dir: &Path,
    marker: &str,
    victim: impl Fn(u32) -> u32,
) -> (String, bool) {
    let mut child = Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(["build", "-f", "build.spec", "."])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(marker) {
            let target = victim(pid);
            assert!(Command::new("kill")
                .args(["-9", &target.to_string()])
                .status()
                .unwrap()
                .success());
            break;
        }
        assert!(Instant::now() < deadline, "no {marker} in time: {seen}");
    }
    let output = child.wait_with_output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&output.stdout));
    seen.push_str(&String::from_utf8_lossy(&output.stderr));
    (seen, output.status.success())
}

/// The QEMU started by kiln process `kiln`.
fn qemu_of(kiln: u32) -> u32 {
    let out = Command::new("pgrep")
        .args(["-P", &kiln.to_string(), "qemu-system"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("kiln {kiln} has no QEMU child"))
        .parse()
        .unwrap()
}

/// Whether a process whose command line mentions `needle` still runs after `wait`.
fn process_mentioning(needle: &str, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    loop {
        let found = Command::new("pgrep")
            .args(["-f", needle])
            .output()
            .unwrap()
            .status
            .success();
        if !found || Instant::now() > deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn killing_qemu_or_kiln_mid_step_leaves_nothing_and_the_next_build_succeeds() {
    let store = shared_store();
    for victim in ["qemu", "kiln"] {
        let dir = test_dir(&format!("vm-kill-{victim}"));
        let spec = format!(
            r#"((from debian:bookworm) (sandbox qemu)
 (run (shell "echo {}; echo STEP-$((40+2))-STARTED; sleep 15; echo done > /done")))"#,
            nonce()
        );
        fs::write(dir.join("build.spec"), spec).unwrap();
        // The header shows the command, not what it prints: the marker is computed.
        let (out, ok) = build_and_kill(&store, &dir, "STEP-42-STARTED", |kiln| match victim {
            "qemu" => qemu_of(kiln),
            _ => kiln,
        });
        assert!(!ok, "the build failed when {victim} was killed: {out}");
        if victim == "qemu" {
            assert!(out.contains("error"), "a clear error: {out}");
        }
        // The next build redoes the step (what the killed one left is purged when the
        // store opens) and succeeds.
        let run = kiln(&store, &dir, &["build", "-f", "build.spec", "."]).ok();
        assert_eq!(
            run.count("---> saved as"),
            1,
            "the step is redone: {}",
            run.stdout
        );
        let tar = export_tar(&store, &dir, &run.got());
        assert_eq!(tar_read(&tar, "done").unwrap(), b"done\n");
        let tmp = store.join("result-tmp").join(run.got());
        assert!(!tmp.exists(), "{} is left", tmp.display());
        // No QEMU outlives the kiln that started it.
        let in_tmp = format!("result-tmp/{}", run.got());
        assert!(
            !process_mentioning(&in_tmp, Duration::from_secs(10)),
            "a QEMU on {in_tmp} still runs"
        );
    }
}
