//! Helpers shared by kiln's end-to-end tests: they run the real `kiln` binary as root
//! against real stores, namespaces, overlayfs and Debian's mirror.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod registry;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const KILN: &str = env!("CARGO_BIN_EXE_kiln");

/// A store shared by every test of this run that needs a Debian base, so bookworm is
/// bootstrapped once. Tests that must start from an empty store make their own.
pub fn shared_store() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("shared-store")
}

/// A unique directory for one test. It is kept after the run, to look into; the ones
/// earlier runs left under the same name are removed (each holds images and stores of
/// hundreds of megabytes, and every run makes new ones).
pub fn test_dir(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    remove_earlier_runs(&root, name);
    let dir = root.join(format!("{name}-{}", nonce()));
    fs::create_dir_all(&dir).expect("creating test dir");
    dir
}

/// Removes `root/NAME-<16 hex digits>` directories made before this test process first
/// asked for one (so never one of this run's).
fn remove_earlier_runs(root: &Path, name: &str) {
    static STARTED: OnceLock<std::time::SystemTime> = OnceLock::new();
    let started = *STARTED.get_or_init(std::time::SystemTime::now);
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(suffix) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(name))
            .and_then(|n| n.strip_prefix('-'))
        else {
            continue;
        };
        let from_a_run = suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
        let earlier = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t < started);
        if from_a_run && earlier {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// 16 random hex digits (from the kernel), to make specs that no earlier run has cached.
pub fn nonce() -> String {
    let mut b = [0u8; 8];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("reading /dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A finished `kiln` invocation.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(out: Output) -> Run {
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "kiln failed\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The id from the final `Got: "ID"` line.
    pub fn got(&self) -> String {
        self.stdout
            .lines()
            .find_map(|l| l.strip_prefix("Got: \"").and_then(|r| r.strip_suffix('"')))
            .unwrap_or_else(|| panic!("no Got: line in\n{}", self.stdout))
            .to_string()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.stdout.matches(needle).count()
    }
}

/// Stands in for Docker Hub in every test: a loopback port nothing listens on (the
/// discard port), so a Docker Hub name never sends a test's traffic off this machine.
pub const NO_DOCKER_HUB: (&str, &str) = ("KILN_DOCKERHUB_HOST", "127.0.0.1:9");

/// Runs `kiln --store STORE ARGS…` in `cwd`.
pub fn kiln(store: &Path, cwd: &Path, args: &[&str]) -> Run {
    kiln_env(store, cwd, args, &[])
}

/// [`kiln`] with extra environment variables (which may replace [`NO_DOCKER_HUB`]).
pub fn kiln_env(store: &Path, cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let out = Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(cwd)
        .env(NO_DOCKER_HUB.0, NO_DOCKER_HUB.1)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running kiln");
    Run::from(out)
}

/// Writes `spec` to `dir/build.spec` and builds it with `dir` as the context.
pub fn build(store: &Path, dir: &Path, spec: &str, extra: &[&str]) -> Run {
    fs::write(dir.join("build.spec"), spec).expect("writing spec");
    let mut args = vec!["build", "-f", "build.spec", "."];
    args.extend_from_slice(extra);
    kiln(store, dir, &args)
}

/// A rootfs tarball with busybox-static and its applet links (made once per run).
pub fn busybox_tar() -> PathBuf {
    static TAR: OnceLock<PathBuf> = OnceLock::new();
    TAR.get_or_init(|| {
        let busybox = Path::new("/bin/busybox");
        assert!(
            busybox.exists(),
            "/bin/busybox is missing: apt-get install busybox-static (scripts/setup.sh does)"
        );
        let dir = test_dir("busybox-root");
        let root = dir.join("root");
        for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root"] {
            fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
            .expect("chmod tmp");
        fs::copy(busybox, root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new(busybox)
            .arg("--list-full")
            .output()
            .expect("busybox --list-full");
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = root.join(applet);
            if applet != "bin/busybox" && !link.exists() {
                let _ = std::os::unix::fs::symlink("/bin/busybox", &link);
            }
        }
        fs::write(
            root.join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
        )
        .unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\nbuilder:x:1000:\n").unwrap();
        let tar = dir.join("busybox.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&root)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .expect("tar");
        assert!(status.success());
        tar
    })
    .clone()
}

/// Exports layer `id` as `dir/<id prefix>.tar` and returns its path.
pub fn export_tar(store: &Path, dir: &Path, id: &str) -> PathBuf {
    let tar = dir.join(format!("{}.tar", &id[..12.min(id.len())]));
    kiln(
        store,
        dir,
        &["export", id, "-o", tar.to_str().expect("utf-8 path")],
    )
    .ok();
    tar
}

/// A tar member as [`tar_entries`] lists it: `(path, uid, gid, mode, kind)`.
pub type Entry = (String, u64, u64, u32, tar::EntryType);

/// The member at `path`, or a panic naming it.
pub fn find_entry(entries: &[Entry], path: &str) -> Entry {
    entries
        .iter()
        .find(|e| e.0 == path)
        .cloned()
        .unwrap_or_else(|| panic!("{path} not in the export"))
}

/// Lists a tar's members as `(path, uid, gid, mode, kind)` using the `tar` crate.
pub fn tar_entries(tar: &Path) -> Vec<Entry> {
    let file = fs::File::open(tar).expect("open tar");
    let mut archive = tar::Archive::new(file);
    archive
        .entries()
        .expect("tar entries")
        .map(|e| {
            let e = e.expect("tar entry");
            let h = e.header();
            let path = e
                .path()
                .expect("path")
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            (
                path,
                h.uid().unwrap(),
                h.gid().unwrap(),
                h.mode().unwrap() & 0o7777,
                h.entry_type(),
            )
        })
        .collect()
}

/// The content of one member of a tar.
pub fn tar_read(tar: &Path, member: &str) -> Option<Vec<u8>> {
    let file = fs::File::open(tar).expect("open tar");
    let mut archive = tar::Archive::new(file);
    for e in archive.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let path = e
            .path()
            .expect("path")
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if path == member {
            let mut buf = Vec::new();
            e.read_to_end(&mut buf).expect("read member");
            return Some(buf);
        }
    }
    None
}

/// Whether `needle` occurs anywhere in the bytes of any file under `dir`.
pub fn tree_contains(dir: &Path, needle: &[u8]) -> Option<PathBuf> {
    for entry in walkdir::WalkDir::new(dir).follow_links(false) {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_file() {
            if let Ok(bytes) = fs::read(entry.path()) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    return Some(entry.path().to_path_buf());
                }
            }
        }
    }
    None
}

/// `kiln --store STORE ARGS…` in `dir` with `input` on its stdin.
pub fn kiln_stdin(store: &Path, dir: &Path, args: &[&str], input: &str) -> Run {
    let mut child = Command::new(KILN)
        .arg("--store")
        .arg(store)
        .args(args)
        .current_dir(dir)
        .env(NO_DOCKER_HUB.0, NO_DOCKER_HUB.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kiln");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("writing stdin");
    drop(stdin);
    let out = child.wait_with_output().expect("waiting for kiln");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A run's stdout as JSON (`--json`), or a panic showing what it printed.
pub fn json(run: &Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
}

/// Asserts that `run` failed with `needle` in its stderr.
pub fn fails(run: Run, needle: &str) -> Run {
    assert_ne!(
        run.code, 0,
        "expected a failure\n{}\n{}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "expected {needle:?} in stderr:\n{}",
        run.stderr
    );
    run
}

/// `kiln deploy serve --http 127.0.0.1:0 KZI` with `--idle-timeout IDLE`: the server and
/// the address (`127.0.0.1:PORT`) it printed first on stderr.
pub fn deploy_http_server(kzi: &Path, idle: u32) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut server = Command::new(KILN)
        .args(["deploy", "serve", "--http", "127.0.0.1:0", "--idle-timeout"])
        .arg(idle.to_string())
        .arg(kzi)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting kiln deploy serve --http");
    let mut line = String::new();
    std::io::BufReader::new(server.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    (server, addr)
}
