//! Where kiln runs build steps.
//!
//! - [`chroot::NamespaceSandbox`]: fresh mount/pid/uts/ipc/net namespaces, `pivot_root` into
//!   an overlayfs of the layer chain, minimal /dev, read-only /sys, tmpfs /tmp, secrets on
//!   tmpfs, cache bind mounts, and a seccomp filter that makes the sync family no-ops.
//! - [`mount`]: overlay mounts of a layer chain in the caller's (private) mount namespace,
//!   used by the builder for `copy` and by `kiln export`.
//!
//! The sandbox re-executes the current program (`/proc/self/exe`) with
//! [`INIT_ARG`] as its first argument; the program's `main` must call [`maybe_run_init`]
//! before anything else.

pub mod chroot;
mod error;
pub mod mount;
mod seccomp;

pub use error::SandboxError;

use std::io::Write;
use std::path::PathBuf;

/// First argument that turns the kiln binary into the sandbox's init process.
pub const INIT_ARG: &str = "__kiln-sandbox-init";

/// If this process was started as a sandbox init, run it and never return.
/// Call first thing in `main`, while the process is still single-threaded.
pub fn maybe_run_init() {
    let mut args = std::env::args_os();
    if args.nth(1).is_some_and(|a| a == INIT_ARG) {
        chroot::init_main();
    }
}

/// The filesystem a step sees as `/`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum RootFs {
    /// overlayfs: `lower` topmost first (from `Store::chain`), writes go to `upper` using `work`.
    Overlay {
        lower: Vec<PathBuf>,
        upper: PathBuf,
        work: PathBuf,
    },
    /// A complete tree used directly, read-write (flattened layers).
    Dir(PathBuf),
}

/// A host directory bind-mounted into the sandbox.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BindMount {
    pub source: PathBuf,
    /// Absolute path inside the sandbox; created if missing.
    pub target: String,
    pub readonly: bool,
}

/// A secret: its bytes are written to a private tmpfs and bind-mounted read-only at `target`.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct Secret {
    pub target: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({}, <{} bytes>)", self.target, self.value.len())
    }
}

/// Everything needed to run one command.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RunSpec {
    pub root: RootFs,
    /// Full argv (shell prefix + command).
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Absolute path inside the sandbox; created if missing.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    /// Share the host's network namespace (`(network host)`); otherwise only a loopback.
    pub host_network: bool,
    pub mounts: Vec<BindMount>,
    pub secrets: Vec<Secret>,
    pub hostname: String,
    /// Turn fsync/fdatasync/sync/syncfs/msync/sync_file_range into no-ops.
    pub fast_sync: bool,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Exited(i32),
    Signalled(i32),
}

impl Outcome {
    pub fn success(self) -> bool {
        self == Outcome::Exited(0)
    }
}

/// The seam between the builder and whatever isolates a step.
pub trait Sandbox: Send + Sync {
    /// Runs `spec`, streaming the command's combined stdout/stderr into `output` as it
    /// arrives. Returns when the command and every process it started have ended.
    fn run(&self, spec: &RunSpec, output: &mut dyn Write) -> Result<Outcome, SandboxError>;
}

/// Where a sandbox init looks for its spec: this fd carries it as JSON.
pub(crate) const SPEC_FD: i32 = 3;
