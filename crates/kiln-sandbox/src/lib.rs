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
mod tools;

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
    /// A VM disk (the QEMU sandbox): `disk` is the step's qcow2 file, backed by its
    /// parent's, holding one ext4 filesystem (no partition table); `boot` is the
    /// directory of the chain's VM base with the kernel, initramfs and command line
    /// that boot it (see [`BootFiles`]).
    Disk { disk: PathBuf, boot: PathBuf },
}

/// The files in a VM base's `boot/` directory.
pub struct BootFiles;

impl BootFiles {
    /// The kernel: an ELF `vmlinux` with a PVH entry when the layer had one, else `vmlinuz`.
    pub const VMLINUX: &'static str = "vmlinux";
    pub const VMLINUZ: &'static str = "vmlinuz";
    /// kiln's boot initramfs (kiln-init and the drivers a VM needs).
    pub const INITRD: &'static str = "initrd.img";
    /// The kernel command line (one line of text, without `kiln.*` agent parameters).
    pub const CMDLINE: &'static str = "cmdline";
}

/// What the layers a sandbox builds hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Payload {
    /// `rootfs/`: an overlayfs upper dir, or a full tree when flat.
    #[default]
    Tree,
    /// `disk.qcow2`, backed by the parent layer's (or complete, for a VM base or a
    /// flattened layer), plus `boot/` in a VM base.
    Disk,
}

/// One thing a `copy` step puts into a layer, planned on the host (the build context's
/// rules are applied before the sandbox sees it).
#[derive(Debug, Clone)]
pub struct CopyEntry {
    /// Absolute destination in the image; missing parents are created (mode 755, owned by
    /// the copy's user).
    pub path: String,
    pub kind: CopyKind,
}

#[derive(Debug, Clone)]
pub enum CopyKind {
    /// Created if missing (a non-directory in the way is replaced), then chowned and chmodded.
    Dir { mode: u32 },
    /// Replaces what is there (a directory in the way is an error); bytes come from `host`.
    File {
        host: PathBuf,
        mode: u32,
        mtime: i64,
    },
    /// Replaces what is there; its owner is set without following it.
    Symlink { target: String },
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
    /// Attach the command to kiln's own stdin (`kiln shell`): on a terminal the command
    /// gets a pseudo-terminal relayed to it (raw mode, window size), as its controlling
    /// terminal; otherwise it reads kiln's stdin and its output is streamed as usual.
    /// Off: stdin is /dev/null.
    #[serde(default)]
    pub interactive: bool,
    /// Run the command under a ptrace tracer that follows every process it starts, and
    /// write here (a host path, created by the sandbox) the paths that successful
    /// open/openat/openat2, stat-family, access, readlink and execve calls named, as
    /// absolute paths inside the root, sorted, each ended by a NUL byte (`kiln appliance`).
    #[serde(default)]
    pub trace: Option<PathBuf>,
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

    /// What this sandbox's layers hold. The builder prepares each step's root to match:
    /// an overlay (or flat tree) for [`Payload::Tree`], a qcow2 overlay for [`Payload::Disk`].
    fn payload(&self) -> Payload {
        Payload::Tree
    }

    /// Disk sandboxes: what, besides the tree and the kernel, decides what a VM base and
    /// every step on it produce (e.g. the in-guest agent's build), hashed into VM base ids
    /// so a change to it never reuses layers made the old way.
    fn base_key(&self) -> String {
        String::new()
    }

    /// Disk sandboxes: turns the complete tree `tree` into a VM base in the empty
    /// directory `dest`: `dest/disk.qcow2` (an ext4 filesystem holding exactly `tree`)
    /// and `dest/boot/` ([`BootFiles`]), the kernel and its modules taken from
    /// `kernel_tree` (`tree` itself when it has a kernel in /boot).
    fn make_base(
        &self,
        tree: &std::path::Path,
        kernel_tree: &std::path::Path,
        dest: &std::path::Path,
        output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        let _ = (tree, kernel_tree, dest, output);
        Err(SandboxError::Unsupported("making a VM base"))
    }

    /// Disk sandboxes: creates the qcow2 `disk` backed by `parent` (a path relative to
    /// `disk`'s directory, as QEMU resolves it), or, with `flatten`, a complete copy of
    /// `parent`'s chain.
    fn make_disk(
        &self,
        parent: &std::path::Path,
        disk: &std::path::Path,
        flatten: bool,
    ) -> Result<(), SandboxError> {
        let _ = (parent, disk, flatten);
        Err(SandboxError::Unsupported("making a step disk"))
    }

    /// Disk sandboxes: copies `entries` into `root`, owned by `uid:gid`, byte for byte.
    /// (Tree layers are written by the builder directly through an overlay mount.)
    fn copy_in(
        &self,
        root: &RootFs,
        entries: &[CopyEntry],
        uid: u32,
        gid: u32,
        output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        let _ = (root, entries, uid, gid, output);
        Err(SandboxError::Unsupported("copying into a disk layer"))
    }

    /// Disk sandboxes: the files of `disk` (with its backing chain) as a read-only tree,
    /// for reading a layer's /etc/passwd, copying from a VM-built stage, or exporting.
    /// `scratch` is an empty directory the view may use until it is dropped.
    fn open_disk(
        &self,
        disk: &std::path::Path,
        scratch: &std::path::Path,
    ) -> Result<DiskView, SandboxError> {
        let _ = (disk, scratch);
        Err(SandboxError::Unsupported("reading a disk layer"))
    }
}

/// A disk layer's files, readable at [`DiskView::path`] until dropped.
pub struct DiskView {
    pub path: PathBuf,
    /// Whatever keeps the view alive (a mount, a temporary raw copy); dropped with it.
    pub guard: Box<dyn std::any::Any + Send>,
}

/// Where a sandbox init looks for its spec: this fd carries it as JSON.
pub(crate) const SPEC_FD: i32 = 3;
