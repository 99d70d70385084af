//! The spec's abstract syntax tree.
//!
//! The shapes follow OBuilder's spec language one to one; kiln's own additions
//! live in top-level forms that OBuilder never uses (see [`Spec::bootstrap`]).

use std::fmt;

/// A 1-based position in the spec text.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// A value with the position it was read from. Equality ignores the position,
/// so `parse(print(parse(s))) == parse(s)` holds even though positions move.
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub pos: Pos,
}

impl<T: PartialEq> PartialEq for Located<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}
impl<T: Eq> Eq for Located<T> {}

impl<T> Located<T> {
    pub fn new(value: T, pos: Pos) -> Self {
        Located { value, pos }
    }
}

/// A whole build: `((build NAME SPEC)* (from BASE) [kiln forms] OP…)`.
///
/// kiln forms (`bootstrap`, `test`, `image`) may sit anywhere after `from`, each
/// at most once; `test` and `image` only in the outermost spec, not in a child build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// Named stages built before this one, usable by `(copy (from (build NAME)))`.
    pub child_builds: Vec<Located<ChildBuild>>,
    /// The base, e.g. `debian:bookworm`, `file:root.tar.zst`, `alpine@sha256:…`.
    pub from: Located<String>,
    /// kiln extension `(bootstrap …)`: how a `debian:` base is bootstrapped.
    pub bootstrap: Option<Located<Bootstrap>>,
    /// kiln extension `(sandbox chroot|qemu)`: where this stage's `run` and `copy` steps
    /// run; `None` leaves it to the command line (`kiln build --sandbox`).
    pub sandbox: Option<Located<SandboxKind>>,
    /// The operations, in order.
    pub ops: Vec<Located<Op>>,
    /// kiln extension `(test …)`: acceptance checks for the booted image.
    pub test: Option<Located<TestSpec>>,
    /// kiln extension `(image …)`: a multi-partition disk (top-level spec only).
    pub image: Option<Located<ImageSpec>>,
    /// kiln extension `(appliance …)`: what `kiln appliance` makes of the result
    /// (top-level spec only).
    pub appliance: Option<Located<ApplianceSpec>>,
}

/// kiln extension `(appliance …)`, read by `kiln appliance` (its command-line flags add
/// training commands and globs, and replace the others).
///
/// ```text
/// (appliance (train "memcached -u nobody -d; sleep 1")
///            (run "/usr/bin/memcached -u nobody")
///            (prerun "echo starting") (postrun "echo done")
///            (include /etc/memcached.conf) (exclude /usr/share/**)
///            (compress zstd))
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplianceSpec {
    /// Training commands, run in order under the tracer.
    pub train: Vec<String>,
    /// The command `/app/run` executes.
    pub run: String,
    pub prerun: Option<String>,
    pub postrun: Option<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// `zstd`, `gzip` or `none`; `None`: the command line's choice.
    pub compress: Option<String>,
}

/// `(build NAME SPEC)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildBuild {
    pub name: String,
    pub spec: Spec,
}

/// Where a stage's steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxKind {
    /// Linux namespaces over an overlayfs of the layer chain (the default).
    Chroot,
    /// A QEMU VM per step, over a qcow2 overlay of the parent's disk.
    Qemu,
}

impl SandboxKind {
    /// Every kind, as written in specs and on the command line.
    pub const NAMES: [&'static str; 2] = ["chroot", "qemu"];

    pub fn name(self) -> &'static str {
        match self {
            SandboxKind::Chroot => "chroot",
            SandboxKind::Qemu => "qemu",
        }
    }

    /// The kind named `name`, if any.
    pub fn from_name(name: &str) -> Option<SandboxKind> {
        match name {
            "chroot" => Some(SandboxKind::Chroot),
            "qemu" => Some(SandboxKind::Qemu),
            _ => None,
        }
    }
}

/// kiln extension: `(bootstrap (variant V) (include P…) (skeleton DIR…) (mirror URL) (arch A))`.
/// Every field is optional; absent fields take the defaults below.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bootstrap {
    /// mmdebstrap variant; `None` means `minbase`.
    pub variant: Option<String>,
    /// Extra packages installed by the bootstrap itself.
    pub include: Vec<String>,
    /// Directories of the build context whose contents are copied into the new root
    /// before any package is installed (configuration that must be in place when the
    /// packages' scripts run: initramfs or dpkg settings, module options, …).
    pub skeleton: Vec<String>,
    /// Mirror URL; `None` means the host's configured default.
    pub mirror: Option<String>,
    /// Debian architecture; `None` means the host's.
    pub arch: Option<String>,
}

/// One operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// `(comment "text")`: no effect on the result.
    Comment(String),
    /// `(workdir PATH)`: relative paths join onto the current workdir.
    Workdir(String),
    /// `(shell ARG…)`: the argv prefix that `run` commands are appended to.
    Shell(Vec<String>),
    /// `(run …)`.
    Run(Run),
    /// `(copy …)`.
    Copy(Copy),
    /// `(user (uid N) (gid N))` or `(user (name N))`.
    User(User),
    /// `(env NAME VALUE)`: sets or replaces one variable.
    Env(String, String),
}

/// `(run (cache …) (network …) (secrets …) (shell CMD))`, fields in any order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Run {
    pub cache: Vec<Mount>,
    /// `(network host)` gives `["host"]`; absent or `(network)` gives `[]` (isolated).
    pub network: Vec<String>,
    pub secrets: Vec<Mount>,
    pub shell: String,
}

/// `(NAME (target PATH) (buildkit_options ((KEY VALUE)…)))` inside `cache` or `secrets`.
///
/// `target` is kept as written: OBuilder specs for Windows use paths such as
/// `C:\cache`, so whether it fits a sandbox is checked when a step runs, not here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mount {
    pub id: String,
    pub target: String,
    /// Extra `--mount` options for `kiln dockerfile --buildkit` (e.g. `sharing locked`),
    /// in spec order. They change nothing in a kiln build and do not enter step ids.
    pub buildkit_options: Vec<(String, String)>,
}

/// `(copy (from …) (src …) (dst …) (exclude …))`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    pub from: CopyFrom,
    pub src: Vec<String>,
    pub dst: String,
    pub exclude: Vec<String>,
}

impl Copy {
    /// The name source `src` keeps inside a `dst` ending in `/` (OBuilder's rule): its last
    /// component, empty and `.` components ignored (`app/` and `app/.` are `app`). `None`
    /// for a source with no name left (`.`, `./`, `/`): its contents go straight into `dst`.
    pub fn source_name(src: &str) -> Option<&str> {
        src.split('/').rfind(|c| !c.is_empty() && *c != ".")
    }
}

/// Where a copy reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFrom {
    /// The build context directory (the default).
    Context,
    /// The result of an earlier `(build NAME …)` stage.
    Build(String),
}

/// Who runs subsequent steps and owns copied files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum User {
    Unix { uid: u32, gid: u32 },
    Name(String),
}

/// kiln extension `(test …)`: checks run against the booted image by `kiln test`.
///
/// ```text
/// (test (memory 1024) (cpus 2) (boot-timeout 120)
///       (console (expect "login:") (timeout 60))
///       (port (port 11211))
///       (http (port 80) (path /index.html) (status 200) (body "Cloudy") (timeout 30))
///       (tcp (port 11211) (send "get k\r\n") (expect "END")))
/// ```
/// Every check may also carry `(name "…")`; `timeout` defaults to
/// [`DEFAULT_CHECK_TIMEOUT`] seconds, an http `path` to `/` and `status` to 200.
/// Settings and checks may come in any order; settings at most once, and at least
/// one check. A `tcp` check's `send` may be `""`, to read a banner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestSpec {
    /// Guest memory in MiB (`None`: the runner's default).
    pub memory_mb: Option<u32>,
    pub cpus: Option<u32>,
    /// Seconds the whole boot may take before checks give up (`None`: runner default).
    pub boot_timeout: Option<u32>,
    /// In order; each waits for the previous one.
    pub checks: Vec<Located<Check>>,
}

/// One acceptance check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// For reports; defaults to a description of the check.
    pub name: Option<String>,
    /// Seconds.
    pub timeout: u32,
    pub kind: CheckKind,
}

/// A check's `timeout` when the spec gives none, in seconds.
pub const DEFAULT_CHECK_TIMEOUT: u32 = 60;
/// An `http` check's `path` when the spec gives none.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// An `http` check's expected `status` when the spec gives none.
pub const DEFAULT_HTTP_STATUS: u16 = 200;

impl Check {
    /// The name reports use: the spec's `(name …)`, else a short description
    /// such as `http :80/index.html` or `console "login:"`.
    pub fn display_name(&self) -> String {
        if let Some(name) = &self.name {
            return name.clone();
        }
        match &self.kind {
            CheckKind::Console { expect } => format!("console {expect:?}"),
            CheckKind::Port { port } => format!("port {port}"),
            CheckKind::Http { port, path, .. } => format!("http :{port}{path}"),
            CheckKind::Tcp { port, expect, .. } => format!("tcp {port} {expect:?}"),
        }
    }
}

/// What a check waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// A serial console line containing `expect`.
    Console { expect: String },
    /// A TCP connection to the guest's `port` succeeds.
    Port { port: u16 },
    /// `GET path` on the guest's `port` answers `status` (and contains `body`).
    Http {
        port: u16,
        path: String,
        status: u16,
        body: Option<String>,
    },
    /// Connect, send `send`, and read until the reply contains `expect`.
    Tcp {
        port: u16,
        send: String,
        expect: String,
    },
}

/// kiln extension `(image …)`: a whole-disk image with several OS partitions (a "combo
/// image", as DETERLab calls it), described by an image descriptor.
///
/// ```text
/// (image (partition (name web) (build web) (size 2G) (label WEB))
///        (partition (name db) (spec db.spec) (size 3G))
///        (default web)
///        (node-types pc3000 d710)
///        (arch amd64))
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    pub partitions: Vec<Located<PartitionSpec>>,
    /// The partition that boots by default (`None`: the first).
    pub default: Option<String>,
    /// Node types the image supports, for the descriptor.
    pub node_types: Vec<String>,
    /// Architectures the image supports (`None`/empty: the build's).
    pub arches: Vec<String>,
}

/// One OS partition of an `(image …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    pub name: String,
    pub source: PartitionSource,
    /// Bytes (written as `4096`, `512M`, `2G`…); `None`: content plus headroom.
    pub size: Option<u64>,
    /// Filesystem and GPT partition label (`None`: the name).
    pub label: Option<String>,
}

impl ImageSpec {
    /// The partition that boots by default: the one `default` names, else the first.
    /// `None` only for an `ImageSpec` built by hand with no partitions.
    pub fn default_partition(&self) -> Option<&PartitionSpec> {
        let named = self
            .default
            .as_ref()
            .and_then(|name| self.partitions.iter().find(|p| &p.value.name == name));
        named.or(self.partitions.first()).map(|p| &p.value)
    }
}

impl PartitionSpec {
    /// The filesystem and GPT label: `label` if given, else the name.
    pub fn effective_label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.name)
    }
}

/// Where a partition's root filesystem comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartitionSource {
    /// A `(build NAME …)` stage of this spec.
    Build(String),
    /// Another spec file, relative to this spec's directory.
    Spec(String),
}
