//! Test fixtures: a busybox root filesystem, fresh layers, run specs, and ways to look at
//! processes from outside the sandbox.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_sandbox::{Outcome, RootFs, RunSpec, Sandbox, SandboxError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

/// Where Debian's busybox-static puts the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into the test root filesystem's /bin.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "ls", "id", "hostname", "ip", "ifconfig", "sleep", "touch", "mkdir", "wc",
    "env", "pwd", "grep", "head", "seq", "sync", "ps", "kill", "rm", "readlink", "test", "sort",
    "stat", "true", "cut",
];

pub type TestResult = Result<(), String>;

/// Fails the test with a message unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Shared, read-only lower layers built once per test run.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// busybox + /etc/passwd, without /proc /dev /sys /tmp /run /var.
    pub lower: PathBuf,
    /// Same plus empty /proc /dev /sys /tmp /run /var/cache.
    pub lower_full: PathBuf,
}

impl Fixture {
    pub fn new() -> Result<Fixture, String> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-sandbox-test")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let lower = dir.path().join("lower");
        let lower_full = dir.path().join("lower-full");
        build_rootfs(&lower, &[]).map_err(|e| format!("build {}: {e}", lower.display()))?;
        build_rootfs(
            &lower_full,
            &["proc", "dev", "sys", "tmp", "run", "var/cache"],
        )
        .map_err(|e| format!("build {}: {e}", lower_full.display()))?;
        Ok(Fixture {
            dir,
            lower,
            lower_full,
        })
    }

    /// A fresh, empty upper + work pair on the same filesystem as the lower layers.
    pub fn layer(&self) -> Layer {
        let dir = tempfile::Builder::new()
            .prefix("layer")
            .tempdir_in(self.dir.path())
            .expect("create a layer tempdir");
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        std::fs::create_dir(&upper).expect("create upper");
        std::fs::create_dir(&work).expect("create work");
        Layer { dir, upper, work }
    }

    /// An overlay of the busybox lower with `layer` on top.
    pub fn root(&self, layer: &Layer) -> RootFs {
        layer.overlay(std::slice::from_ref(&self.lower))
    }
}

/// A writable layer being built.
pub struct Layer {
    pub dir: tempfile::TempDir,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Layer {
    pub fn overlay(&self, lower: &[PathBuf]) -> RootFs {
        RootFs::Overlay {
            lower: lower.to_vec(),
            upper: self.upper.clone(),
            work: self.work.clone(),
        }
    }

    /// Every path in the upper dir, relative to it.
    pub fn contents(&self) -> BTreeSet<String> {
        tree(&self.upper)
    }
}

fn build_rootfs(root: &Path, extra_dirs: &[&str]) -> std::io::Result<()> {
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::copy(BUSYBOX, root.join("bin/busybox"))?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet))?;
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    for dir in extra_dirs {
        std::fs::create_dir_all(root.join(dir))?;
    }
    Ok(())
}

/// Every path below `dir`, relative to it.
pub fn tree(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(
                path.strip_prefix(dir)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned(),
            );
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(path);
            }
        }
    }
    out
}

pub fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A spec running `script` with busybox sh as root in `/`, isolated network, no extras.
pub fn spec(root: RootFs, script: &str) -> RunSpec {
    RunSpec {
        root,
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        host_network: false,
        mounts: vec![],
        secrets: vec![],
        hostname: "kiln-test".into(),
        fast_sync: false,
        interactive: false,
        trace: None,
    }
}

/// Runs `spec` in a fresh [`NamespaceSandbox`]; returns the outcome and the output.
pub fn run(spec: &RunSpec) -> Result<(Outcome, String), SandboxError> {
    let mut output = Vec::new();
    let outcome = NamespaceSandbox::new().run(spec, &mut output)?;
    Ok((outcome, String::from_utf8_lossy(&output).into_owned()))
}

/// Runs `spec` and insists it exits 0.
pub fn run_ok(spec: &RunSpec) -> Result<String, String> {
    match run(spec) {
        Ok((Outcome::Exited(0), out)) => Ok(out),
        Ok((outcome, out)) => Err(format!("command ended {outcome:?}; output:\n{out}")),
        Err(e) => Err(format!("sandbox error: {e}")),
    }
}

/// Runs `f` in a thread and fails if it takes longer than `limit` (a hung sandbox would
/// otherwise hang the whole test binary).
pub fn within<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .map_err(|_| format!("did not finish within {limit:?}"))
}

/// A number unlikely to appear in any other process's command line.
pub fn marker() -> String {
    format!("{}", 7_000_000 + std::process::id() % 1_000_000)
}

/// Pids of host processes whose command line is exactly `args`.
pub fn pids_with_cmdline(args: &[&str]) -> Vec<i32> {
    let wanted: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    all_pids()
        .into_iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == wanted))
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Every living descendant of `ancestor` (children, grandchildren, …).
pub fn descendants(ancestor: i32) -> Vec<i32> {
    let mut parent_of = HashMap::new();
    for pid in all_pids() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ..."; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<i32>().ok())
        {
            parent_of.insert(pid, ppid);
        }
    }
    let mut found = vec![ancestor];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, &pp)| pp == parent)
                .map(|(&p, _)| p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// A pidfd for `pid` (becomes readable when the process exits).
pub fn pidfd(pid: i32) -> Result<OwnedFd, String> {
    // SAFETY: pidfd_open has no memory arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(format!(
            "pidfd_open({pid}): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: the syscall just returned this fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Waits until every pidfd reports its process exited; false if `limit` passes first.
pub fn all_exited(fds: &[OwnedFd], limit: Duration) -> bool {
    let deadline = std::time::Instant::now() + limit;
    loop {
        let mut polls: Vec<PollFd> = fds
            .iter()
            .map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN))
            .collect();
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let timeout =
            PollTimeout::try_from(left.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::ZERO);
        if poll(&mut polls, timeout).is_err() {
            return false;
        }
        if polls
            .iter()
            .all(|p| p.revents().is_some_and(|r| r.contains(PollFlags::POLLIN)))
        {
            return true;
        }
        if left.is_zero() {
            return false;
        }
    }
}

/// A script that starts `sleep MARKER` in the background, waits until it really runs,
/// prints "ready" and waits for it. "Really runs" is `sleep` in /proc/PID/comm: before
/// the exec, the forked shell's cmdline already holds the marker (it is the script's).
pub fn ready_script(marker: &str) -> String {
    format!(
        "sleep {marker} & p=$!; while [ \"$(cat /proc/$p/comm 2>/dev/null)\" != sleep ]; do :; done; echo ready; wait"
    )
}

/// An output sink that calls `on_ready` once, when "ready\n" has arrived.
pub struct OnReady<F: FnMut()> {
    pub seen: Vec<u8>,
    pub on_ready: F,
    pub fired: bool,
}

impl<F: FnMut()> Write for OnReady<F> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.seen.extend_from_slice(buf);
        if !self.fired && self.seen.windows(6).any(|w| w == b"ready\n") {
            self.fired = true;
            (self.on_ready)();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
