//! Command-line interface definition.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Build, test and ship custom OS images from OBuilder-compatible specs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    /// The layer store [default: $KILN_STORE, else /var/lib/kiln as root, else $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, env = "KILN_STORE")]
    pub store: Option<PathBuf>,
    /// More log output (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--store`, `$KILN_STORE`, `/var/lib/kiln` for root, else the XDG data dir.
    pub fn store_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        if nix::unistd::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/kiln"));
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(xdg).join("kiln"));
        }
        let home = std::env::var_os("HOME").ok_or_else(|| {
            anyhow::anyhow!("neither --store, KILN_STORE, XDG_DATA_HOME nor HOME is set")
        })?;
        Ok(PathBuf::from(home).join(".local/share/kiln"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a spec; prints each step and finally `Got: "ID"`.
    Build(BuildArgs),
    /// Write a stored layer's root filesystem as a tar archive or a directory.
    Export(ExportArgs),
    /// Print a spec in canonical layout (or check that it is).
    Fmt(FmtArgs),
    /// Print a spec as a Dockerfile, as `obuilder dockerfile` does.
    Dockerfile(DockerfileArgs),
    /// List stored layers.
    Ls(LsArgs),
    /// Delete a layer and everything built on it.
    Delete(DeleteArgs),
    /// Delete least-recently-used leaf layers until the store is under a size.
    Prune(PruneArgs),
    /// Delete every layer, cache and temporary file.
    Clean(CleanArgs),
    /// Check the store: writable, index consistent with its layers, overlayfs available.
    Healthcheck(JsonArg),
    /// Open a shell in a fresh layer on top of a stored one; `--save NAME` keeps its changes.
    Shell(ShellArgs),
    /// List layer names (`kiln shell --save NAME`), or remove one.
    Names(NamesArgs),
    /// VM bases for `(from vm:NAME)`: import a disk image with sshd, build one from a
    /// Debian layer, list and remove them.
    #[command(subcommand)]
    Base(BaseCommand),
    /// Boot a disk image under QEMU with the serial console on this terminal (Ctrl-A X quits).
    Run(RunArgs),
    /// Boot a disk image and run a spec's (test …) checks against it.
    Test(TestArgs),
    /// Signing keys (minisign-compatible) for the image catalogue.
    #[command(subcommand)]
    Key(KeyCommand),
    /// The image catalogue: add, list, search, verify, sign, push and pull images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Serve a catalogue directory as a marketplace: JSON API and web page.
    Serve(ServeArgs),
    /// One command from a base: generate a spec (base + packages + setup script), build the
    /// image, test it, and add it to the catalogue signed (with --key).
    Create(CreateArgs),
    /// Make a RAM-only appliance for one program: trace a training run, keep only what it
    /// touched (and what that needs), boot it with kiln-init from a cpio initrd.
    Appliance(ApplianceArgs),
    /// newc cpio archives (initramfs): list, unpack safely, pack, merge.
    #[command(subcommand)]
    Cpio(CpioCommand),
    /// Pack disks into chunked .kzi images and load them onto many machines at once by
    /// multicast (`pack`, `unpack`, `serve`, `load`, or a nodes.toml file).
    Deploy(crate::cmd_deploy::DeployArgs),
    /// Push or pull a disk image as an OCI artifact (disk + metadata + signature) to or
    /// from any registry.
    #[command(subcommand)]
    Artifact(ArtifactCommand),
}

/// `kiln artifact …`.
#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Push a disk image (qcow2 as it is, raw compressed with zstd) with its metadata and
    /// signature as one artifact (artifactType application/vnd.kiln.image.v1).
    Push(ArtifactPushArgs),
    /// Pull an artifact into a directory: disk.qcow2 or disk.raw (sparse), metadata.json,
    /// signature.minisig; each verified against its digest before it appears there.
    Pull(ArtifactPullArgs),
    /// Print an artifact's manifest digest, artifact type, annotations and blobs (JSON).
    Inspect(ArtifactInspectArgs),
}

#[derive(Debug, Args)]
pub struct ArtifactInspectArgs {
    /// What: oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:….
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct ArtifactPushArgs {
    /// The disk image (qcow2 or raw; told apart by qcow2's magic).
    pub disk: PathBuf,
    /// Where: oci://HOST[:PORT]/REPO:TAG.
    pub reference: String,
    /// The image's metadata, a JSON file (the artifact's config).
    #[arg(long, value_name = "FILE")]
    pub metadata: PathBuf,
    /// A signature file (minisign) to push with it.
    #[arg(long, value_name = "FILE")]
    pub signature: Option<PathBuf>,
    /// Annotation org.opencontainers.image.title.
    #[arg(long)]
    pub title: Option<String>,
    /// Annotation org.opencontainers.image.version.
    #[arg(long)]
    pub version: Option<String>,
    /// Annotation dev.kiln.image.os.
    #[arg(long)]
    pub os: Option<String>,
    /// Annotation dev.kiln.image.arch.
    #[arg(long)]
    pub arch: Option<String>,
    /// Another annotation KEY=VALUE (repeatable).
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// Upload in PATCH chunks of at most 4 MiB instead of one streamed PUT.
    #[arg(long)]
    pub chunked: bool,
    /// A repository of the same registry that may hold the disk already: it is mounted
    /// from there instead of uploaded (repeatable).
    #[arg(long, value_name = "REPO")]
    pub mount_from: Vec<String>,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ArtifactPullArgs {
    /// What: oci://HOST[:PORT]/REPO:TAG or oci://HOST[:PORT]/REPO@sha256:….
    pub reference: String,
    /// The directory to pull into (created; an interrupted pull resumes from
    /// DIR/.kiln-partial).
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: PathBuf,
    /// Refuse an artifact that carries no signature.
    #[arg(long)]
    pub require_signature: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = "build.spec")]
    pub file: PathBuf,
    /// The build context: the directory `copy` reads from.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Provide a secret: `ID:FILE` (repeatable).
    #[arg(long = "secret", value_name = "ID:FILE")]
    pub secrets: Vec<String>,
    /// Let fsync and friends really sync inside steps (slower; off = no-ops).
    #[arg(long)]
    pub no_fast_sync: bool,
    /// Print a JSON summary (`{"id": …}`) on stdout at the end; step output goes to stderr.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub image: ImageArgs,
    /// After building the image (-o), boot it and run the spec's (test …) checks.
    #[arg(long, requires = "output")]
    pub test: bool,
    /// With --test: write a JUnit XML report here.
    #[arg(long, value_name = "FILE", requires = "test")]
    pub junit: Option<PathBuf>,
    /// With --test: how to boot the image; auto enters IMAGE.boot/ directly when it exists.
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto, requires = "test")]
    pub firmware: FirmwareArg,
    /// Build twice from scratch (fresh stores) and compare the outputs bit for bit;
    /// on a difference, name the first differing file.
    #[arg(long)]
    pub check_reproducible: bool,
    /// Push every layer the build makes or uses to this registry repository
    /// (`oci://HOST[:PORT]/REPO`), tagged by step id: a build cache other machines share.
    #[arg(long, value_name = "oci://HOST/REPO")]
    pub cache_to: Option<String>,
    /// Before running a step, pull its layer from this registry repository if it has it
    /// (verified; a tampered or mismatched layer is refused and the step is built).
    #[arg(long, value_name = "oci://HOST/REPO")]
    pub cache_from: Option<String>,
    #[command(flatten)]
    pub vm: VmArgs,
}

/// Where steps run, and the VM the QEMU sandbox boots for each.
#[derive(Debug, Args, Clone)]
pub struct VmArgs {
    /// Where stages without a `(sandbox …)` form run: chroot (namespaces over overlayfs)
    /// or qemu (a VM per step over qcow2 overlays).
    #[arg(long, value_enum, default_value_t = SandboxArg::Chroot)]
    pub sandbox: SandboxArg,
    /// CPUs of each QEMU sandbox VM.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub qemu_cpus: u32,
    /// Memory of each QEMU sandbox VM, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub qemu_memory: u32,
}

/// `--sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxArg {
    Chroot,
    Qemu,
}

impl SandboxArg {
    pub fn kind(self) -> kiln_spec::SandboxKind {
        match self {
            SandboxArg::Chroot => kiln_spec::SandboxKind::Chroot,
            SandboxArg::Qemu => kiln_spec::SandboxKind::Qemu,
        }
    }
}

/// Where and how a layer becomes an image.
#[derive(Debug, Args, Clone)]
pub struct ImageArgs {
    /// Write the result here: a disk image (format from the extension: .raw/.img, .qcow2,
    /// .vmdk, .vhdx, .vdi), a rootfs .tar, or a directory with --format dir.
    #[arg(short = 'o', long = "output", value_name = "PATH")]
    pub output: Option<PathBuf>,
    /// Output format, overriding the extension.
    #[arg(long, value_enum)]
    pub format: Option<OutputFormat>,
    /// Whole-disk size (e.g. 4G); default: content plus headroom.
    #[arg(long, value_parser = crate::size::parse_size)]
    pub size: Option<u64>,
    /// uefi: ESP + systemd-boot; kernel: no bootloader, kernel/initrd/cmdline passed by the
    /// runner (gem5 style); none: a plain data disk.
    #[arg(long, value_enum, default_value = "uefi")]
    pub boot: BootArg,
    /// Initramfs of a UEFI image's boot entries: kiln's (kiln-init, seconds faster to
    /// boot; the image's own gets a second entry, `<name>-initramfs`, in the boot menu)
    /// or the image's own only. kiln's needs the image's architecture to be this machine's.
    #[arg(long, value_enum, default_value_t = EspInitrdArg::Kiln)]
    pub esp_initrd: EspInitrdArg,
    /// Compress qcow2 output.
    #[arg(long)]
    pub compress: bool,
    /// Also write vmlinuz, initrd.img (and vmlinux when it can be had) into this directory.
    #[arg(long, value_name = "DIR")]
    pub kernel_out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Raw,
    Qcow2,
    Vmdk,
    Vhdx,
    Vdi,
    Tar,
    Dir,
    /// A KubeVirt containerDisk: an OCI image archive of one layer holding the disk as
    /// /disk/disk.qcow2, owned by 107:107.
    #[value(name = "containerdisk")]
    ContainerDisk,
}

/// Which initramfs a UEFI image's boot entries load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EspInitrdArg {
    /// kiln's boot initramfs (kiln-init), the image's own as a second menu entry.
    Kiln,
    /// The image's own initramfs only.
    Image,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BootArg {
    Uefi,
    Kernel,
    None,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The disk image (its IMAGE.manifest.json tells how it boots), or an app directory
    /// made by `kiln appliance`.
    pub image: PathBuf,
    /// Append to the kernel command line (e.g. "appEnd=halt appArgs='-m 64'").
    #[arg(long, value_name = "TEXT")]
    pub append: Option<String>,
    /// Forward a host port to a guest port: HOST:GUEST (repeatable; host side on 127.0.0.1).
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    pub publish: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Discard every write: the image file is never modified.
    #[arg(long)]
    pub snapshot: bool,
    /// Also copy the serial console to this file.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Initramfs of a --boot kernel image: kiln's (kiln-initrd.img, seconds faster) or
    /// the image's own (initrd.img).
    #[arg(long, value_enum, default_value_t = InitrdArg::Kiln)]
    pub initrd: InitrdArg,
    /// How to boot the image; auto enters IMAGE.boot/ directly when it exists (fastest).
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto)]
    pub firmware: FirmwareArg,
    /// Attach this disk too (raw or qcow2, by its content), as the next virtio disk:
    /// /dev/vda for an appliance (repeatable); --snapshot discards its writes too.
    #[arg(long = "disk", value_name = "FILE")]
    pub disks: Vec<std::path::PathBuf>,
    /// `host`: the guest reaches what the host reaches, the host's loopback as 10.0.2.2
    /// (default: only the forwarded ports come in, nothing goes out).
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
}

/// How `kiln run`/`kiln test` boot an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareArg {
    /// `IMAGE.boot/` directly when it exists (fastest), else the image's own firmware.
    Auto,
    /// OVMF and the image's ESP (systemd-boot), even when `IMAGE.boot/` exists.
    Uefi,
    /// `IMAGE.boot/` (kernel, kiln-initrd.img, cmdline) directly; it must exist.
    Kernel,
    /// Refused: kiln images have no legacy (BIOS) boot loader, only an ESP.
    Bios,
}

/// Which initramfs boots a `--boot kernel` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitrdArg {
    /// `IMAGE.boot/kiln-initrd.img` (kiln-init; the image's own when it is missing).
    Kiln,
    /// `IMAGE.boot/initrd.img`, the one the image's kernel package made.
    Image,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The disk image to boot.
    pub image: PathBuf,
    /// The spec whose (test …) form lists the checks.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also copy the serial console to this file.
    #[arg(long, value_name = "FILE")]
    pub serial_log: Option<PathBuf>,
    /// Machine-readable report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Initramfs of a --boot kernel image: kiln's (kiln-initrd.img) or the image's own.
    #[arg(long, value_enum, default_value_t = InitrdArg::Kiln)]
    pub initrd: InitrdArg,
    /// How to boot the image; auto enters IMAGE.boot/ directly when it exists (fastest).
    #[arg(long, value_enum, default_value_t = FirmwareArg::Auto)]
    pub firmware: FirmwareArg,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Layer name (`kiln shell --save NAME`), id, or a unique prefix of an id.
    pub id: String,
    /// Output: a tar (`-` for stdout), a directory (--format dir) or a disk image.
    #[command(flatten)]
    pub image: ImageArgs,
    /// With --format containerdisk: also push the image to oci://HOST[:PORT]/REPO:TAG
    /// (-o may then be left out).
    #[arg(long, value_name = "oci://HOST/REPO:TAG")]
    pub push: Option<String>,
}

#[derive(Debug, Args)]
pub struct ShellArgs {
    /// The layer to start from: a name, a layer id or a unique prefix of one.
    #[arg(value_name = "REF")]
    pub layer: String,
    /// On a clean exit (status 0), keep the changes as a new layer named NAME (a name
    /// already in use moves to it). Otherwise nothing is kept unless, on a terminal, you
    /// answer y to "save anyway?".
    #[arg(long, value_name = "NAME")]
    pub save: Option<String>,
    /// Where the shell runs.
    #[arg(long, value_enum, default_value_t = ShellSandboxArg::Chroot)]
    pub sandbox: ShellSandboxArg,
    /// The shell to run [default: /bin/bash if the layer has it, else /bin/sh].
    #[arg(long, value_name = "PATH")]
    pub shell: Option<String>,
    /// Run as this user: a name from the layer's /etc/passwd, or UID[:GID] [default: root].
    #[arg(long, value_name = "U")]
    pub user: Option<String>,
    /// `host`: share the host's network (default: loopback only, as build steps).
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// Print `{"id": …, "name": …, "saved": …, "status": …}` on stdout at the end; the
    /// shell's output goes to stderr.
    #[arg(long)]
    pub json: bool,
}

/// `kiln shell --sandbox`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ShellSandboxArg {
    /// The namespace sandbox build steps run in (overlayfs on the layer's chain).
    Chroot,
    /// A VM booted from the layer's disk (a tree layer is made a VM base first), over a
    /// qcow2 overlay, as QEMU build steps run.
    Qemu,
}

/// `kiln base …`.
#[derive(Debug, Subcommand)]
pub enum BaseCommand {
    /// List the registered VM bases.
    Ls(JsonArg),
    /// Remove a VM base's name (its layers stay until pruned or deleted).
    Rm(BaseRmArgs),
    /// Register a disk image (qcow2, raw, vmdk, vhdx, vdi) whose sshd lets USER log in
    /// with KEY and sudo without a password: checked (format, size, that it boots and
    /// answers on SSH) before it is stored.
    Import(BaseImportArgs),
    /// Make a bootable VM base from a Debian base the way a careful cloud image is made
    /// (kernel, DHCP, key-only SSH for a `build` user with passwordless sudo, host keys
    /// and machine-id made at first boot).
    Build(BaseBuildArgs),
}

#[derive(Debug, Args)]
pub struct BaseRmArgs {
    pub name: String,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct BaseImportArgs {
    /// The base's name, used as `(from vm:NAME)`.
    pub name: String,
    /// The disk image.
    pub file: PathBuf,
    /// The user kiln logs in as (it must have passwordless sudo).
    #[arg(long)]
    pub user: String,
    /// That user's private key (copied into the store, mode 600).
    #[arg(long, value_name = "PRIVATE_KEY")]
    pub key: PathBuf,
    /// Seconds the image may take to boot and answer on SSH.
    #[arg(long, value_name = "S", default_value_t = 300)]
    pub timeout: u64,
    /// Memory of the check's VM, in MiB.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(64..=1048576))]
    pub qemu_memory: u32,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct BaseBuildArgs {
    /// The base's name, used as `(from vm:NAME)`.
    pub name: String,
    /// The Debian base to start from.
    #[arg(long, value_name = "BASE", default_value = "debian:bookworm")]
    pub from: String,
    /// The public key the `build` user accepts [default: a new key pair, kept in the
    /// store beside the base: see `kiln base ls`].
    #[arg(long, value_name = "PUBKEY")]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub json: JsonArg,
}

/// `kiln shell --network`, `kiln run --network`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    /// The host's network namespace.
    Host,
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    /// Remove this name (the layer stays, and may then be pruned).
    #[arg(long, value_name = "NAME")]
    pub rm: Option<String>,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// The spec file.
    pub file: PathBuf,
    /// Exit 1 if the file is not in canonical layout instead of printing it.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct DockerfileArgs {
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = "build.spec")]
    pub file: PathBuf,
    /// BuildKit syntax: cache and secret mounts, `RUN --network=host`, `COPY --exclude`.
    #[arg(long)]
    pub buildkit: bool,
    /// Dockerfile escape style, as OBuilder's --escape; windows output starts with an
    /// #escape directive for the backtick.
    #[arg(long, value_enum, value_name = "STYLE", default_value_t = EscapeArg::Unix)]
    pub escape: EscapeArg,
    /// Write the Dockerfile here instead of to stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `kiln dockerfile --escape`: the Dockerfile's escape character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EscapeArg {
    /// `\` escapes and continues lines; stages start as uid 0.
    Unix,
    /// A backtick escapes and continues lines; stages start as ContainerAdministrator.
    Windows,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Layer id (or a unique prefix of one).
    pub id: String,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep at most this much: bytes, or with a K/M/G/T suffix (powers of 1024).
    #[arg(long, value_parser = crate::size::parse_size)]
    pub keep_bytes: u64,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Also delete the downloaded .deb cache.
    #[arg(long)]
    pub all: bool,
}

/// `kiln cpio …`: newc archives, read gzip-, zstd-compressed or plain (by magic number).
#[derive(Debug, Subcommand)]
pub enum CpioCommand {
    /// List an archive's entries: mode, owner, size, time, path (and a link's target).
    Ls(CpioLsArgs),
    /// Unpack an archive into DIR. An archive with an absolute path, a `..` component or
    /// an entry written through a symbolic link is refused whole: nothing is written.
    Unpack(CpioUnpackArgs),
    /// Pack DIR into an archive: names sorted, owners and modes kept, one time for all.
    Pack(CpioPackArgs),
    /// Merge archives into one; an entry of a later archive replaces the earlier one's.
    Merge(CpioMergeArgs),
}

#[derive(Debug, Args)]
pub struct CpioLsArgs {
    pub archive: PathBuf,
    /// One JSON object per entry.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CpioUnpackArgs {
    pub archive: PathBuf,
    /// Created if missing.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct CpioPackArgs {
    pub dir: PathBuf,
    /// The archive to write (replaced atomically).
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub compress: CompressArg,
    /// Every entry's time (seconds since 1970); default SOURCE_DATE_EPOCH, else 0.
    #[arg(long)]
    pub mtime: Option<i64>,
}

#[derive(Debug, Args)]
pub struct CpioMergeArgs {
    /// Two or more archives, earliest first.
    #[arg(required = true, num_args = 2..)]
    pub archives: Vec<PathBuf>,
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[command(flatten)]
    pub compress: CompressArg,
}

#[derive(Debug, Args)]
pub struct CompressArg {
    /// Compression of the written archive; default from its name (.gz, .zst, else none).
    #[arg(long, value_enum)]
    pub compress: Option<CompressionArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompressionArg {
    None,
    Gzip,
    Zstd,
}

/// `kiln appliance`.
#[derive(Debug, Args)]
pub struct ApplianceArgs {
    /// The spec whose result is the appliance's layer (built first, cached as usual).
    #[arg(short = 'f', long = "file", conflicts_with = "layer")]
    pub file: Option<PathBuf>,
    /// The build context of --file.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// A stored layer (id, prefix or name) instead of a spec.
    #[arg(long)]
    pub layer: Option<String>,
    /// A training command (sh -c, in a throw-away layer on top, loopback network only),
    /// traced to find what the program touches; repeatable, run in order.
    #[arg(long = "train", value_name = "COMMAND")]
    pub train: Vec<String>,
    /// The command the appliance runs as /app/run (kiln-init adds appArgs); default: the
    /// spec's `(appliance (run …))`.
    #[arg(long = "run", value_name = "COMMAND")]
    pub run: Option<String>,
    /// Shell commands run before /app/run (/app/prerun).
    #[arg(long, value_name = "COMMANDS")]
    pub prerun: Option<String>,
    /// Shell commands run after /app/run (/app/postrun).
    #[arg(long, value_name = "COMMANDS")]
    pub postrun: Option<String>,
    /// Also include the layer's files matching this glob (e.g. '/usr/lib/python3*/json/**').
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching this glob.
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// The kernel to boot (default: the layer's /boot/vmlinuz-*).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Compression of the initrd (default: the spec's, else zstd).
    #[arg(long, value_enum)]
    pub compress: Option<CompressionArg>,
    /// The app directory to write (replaced whole): vmlinuz, initrd.cpio.*, cmdline, report.json.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// Print report.json on stdout at the end.
    #[arg(long)]
    pub json: bool,
}

/// `kiln key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Generate a key pair: the secret key at -o (mode 600), the public key beside it
    /// (`me.key` → `me.pub`). Encrypted when $KILN_KEY_PASSWORD is set.
    Generate(KeyGenerateArgs),
}

#[derive(Debug, Args)]
pub struct KeyGenerateArgs {
    /// Where to write the secret key.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// A comment written into the key files (e.g. the owner's e-mail).
    #[arg(long, default_value = "")]
    pub comment: String,
    #[command(flatten)]
    pub json: JsonArg,
}

/// Where the local catalogue lives.
#[derive(Debug, Args, Clone)]
pub struct CatalogArg {
    /// The local catalogue [default: $KILN_CATALOG, else STORE/catalog].
    #[arg(long, env = "KILN_CATALOG")]
    pub catalog: Option<PathBuf>,
}

/// The trust directory and expiry override of verifying commands.
#[derive(Debug, Args, Clone)]
pub struct TrustArgs {
    /// Directory of trusted endorsers' public keys (*.pub) [default: $KILN_TRUST, else CATALOG/trust].
    #[arg(long, env = "KILN_TRUST")]
    pub trust: Option<PathBuf>,
    /// Accept an image whose endorsement has expired (with a warning).
    #[arg(long)]
    pub allow_expired: bool,
}

/// `kiln image …`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Add an image (with its IMAGE.manifest.json) to the catalogue, signed by the endorser's key.
    Add(ImageAddArgs),
    /// List the catalogue's images.
    Ls(ImageLsArgs),
    /// Search the catalogue (text, os, arch, endorser).
    Search(ImageSearchArgs),
    /// Show an image's metadata.
    Show(ImageRefArgs),
    /// Mark an image deprecated (re-signed by its endorser's key); --remote tells a marketplace too.
    Deprecate(ImageDeprecateArgs),
    /// Remove an image from the catalogue (with --remote: from a marketplace, signed by the endorser).
    Rm(ImageRmArgs),
    /// Check an image: checksum, signature, endorser trusted, validity.
    Verify(ImageVerifyArgs),
    /// Upload an image and its signed metadata to a marketplace (http[s]://…) or registry (oci://…).
    Push(ImagePushArgs),
    /// Fetch an image from a marketplace, verified before it enters the catalogue; resumes an
    /// interrupted transfer.
    Pull(ImagePullArgs),
    /// Look for what a public image must not carry: private keys, SSH host keys, shell
    /// history, a machine-id, DHCP leases, root password hashes.
    Lint(ImageLintArgs),
}

#[derive(Debug, Args)]
pub struct ImageAddArgs {
    /// The image file; its IMAGE.manifest.json must be beside it.
    pub image: PathBuf,
    #[arg(long)]
    pub title: String,
    #[arg(long, default_value = "")]
    pub description: String,
    #[arg(long = "version", default_value = "1")]
    pub image_version: String,
    /// How long the endorsement holds: 180d, 12w, 1y, 36h.
    #[arg(long, default_value = "365d")]
    pub valid_for: String,
    /// The endorser's e-mail address.
    #[arg(long)]
    pub endorser: String,
    /// The endorser's secret key (minisign format; `kiln key generate`).
    #[arg(long)]
    pub key: PathBuf,
    /// The author's name (default: the endorser).
    #[arg(long)]
    pub author: Option<String>,
    /// The author's e-mail (default: the endorser's).
    #[arg(long)]
    pub email: Option<String>,
    #[arg(long, default_value = "")]
    pub comment: String,
    /// A URL where the image can be fetched (https://…, oci://…); repeatable.
    #[arg(long = "location")]
    pub locations: Vec<String>,
    /// Refuse the image when the hygiene check finds anything.
    #[arg(long)]
    pub strict: bool,
    /// Skip the hygiene check.
    #[arg(long, conflicts_with = "strict")]
    pub no_lint: bool,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImageLsArgs {
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImageSearchArgs {
    /// Words that must all appear (title, description, version, author, endorser, OS, ids).
    #[arg(default_value = "")]
    pub query: String,
    #[arg(long)]
    pub os: Option<String>,
    #[arg(long)]
    pub arch: Option<String>,
    /// The endorser's e-mail or key id.
    #[arg(long)]
    pub endorser: Option<String>,
    #[arg(long)]
    pub include_expired: bool,
    /// Search a marketplace instead of the local catalogue.
    #[arg(long)]
    pub remote: Option<String>,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImageRefArgs {
    /// The image: id, id prefix (8+ hex digits) or short id.
    pub id: String,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

/// A marketplace to tell, with its token.
#[derive(Debug, Args, Clone)]
pub struct RemoteArgs {
    /// Bearer token of the marketplace.
    #[arg(long, env = "KILN_MARKETPLACE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, Args)]
pub struct ImageDeprecateArgs {
    pub id: String,
    #[arg(long)]
    pub reason: String,
    /// The endorser's secret key (the metadata is signed again).
    #[arg(long)]
    pub key: PathBuf,
    /// Also send the new metadata to this marketplace.
    #[arg(long)]
    pub remote: Option<String>,
    #[command(flatten)]
    pub remote_args: RemoteArgs,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImageRmArgs {
    pub id: String,
    /// Remove it from this marketplace instead (needs --key: the endorser signs the request).
    #[arg(long, requires = "key")]
    pub remote: Option<String>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    #[command(flatten)]
    pub remote_args: RemoteArgs,
    #[command(flatten)]
    pub catalog: CatalogArg,
}

#[derive(Debug, Args)]
pub struct ImageVerifyArgs {
    pub id: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImagePushArgs {
    pub id: String,
    /// The marketplace (https://HOST[:PORT]) or registry (oci://…).
    pub target: String,
    #[command(flatten)]
    pub remote_args: RemoteArgs,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImagePullArgs {
    /// https://MARKETPLACE/ID (an id, id prefix or short id), or oci://….
    pub source: String,
    #[command(flatten)]
    pub trust: TrustArgs,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ImageLintArgs {
    /// A disk image (any format qemu-img reads), a root directory, or a catalogue id.
    pub image: String,
    /// Exit with status 1 when anything is found.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8700")]
    pub listen: String,
    /// The data directory (a catalogue: entries/, tmp/, trust/).
    #[arg(long)]
    pub data: PathBuf,
    /// JSON config: token, token_file, trust_dir, max_upload_bytes, public_url
    /// [default: DATA/config.json when present].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// File whose first line is the bearer token uploads need (overrides the config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Largest upload, e.g. 20G (overrides the config).
    #[arg(long)]
    pub max_upload: Option<String>,
    /// Trusted endorsers' keys (overrides the config; default DATA/trust).
    #[arg(long)]
    pub trust: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The base: a catalogue image (id, id prefix or short id) or a spec `from` source
    /// (debian:bookworm, file:root.tar, …).
    #[arg(long)]
    pub from: String,
    /// Debian packages to install, comma-separated (repeatable).
    #[arg(short = 'a', long = "packages", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// A shell script run as root in the image after the packages are installed.
    #[arg(short = 's', long = "script")]
    pub script: Option<PathBuf>,
    #[arg(long)]
    pub author: String,
    #[arg(long)]
    pub email: String,
    #[arg(long, default_value = "")]
    pub comment: String,
    /// The image to write (format from the extension); the generated spec and its
    /// context go to OUT.create/.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    /// A check the built image must pass: PORT:PATH, or PORT:PATH=TEXT that the page must
    /// contain (repeatable). With checks the image is booted and tested.
    #[arg(long = "check-http", value_name = "PORT:PATH[=TEXT]")]
    pub check_http: Vec<String>,
    /// Print the generated spec.
    #[arg(long)]
    pub print_spec: bool,
    /// Only write and print the spec; build nothing.
    #[arg(long)]
    pub spec_only: bool,
    /// Sign and add the image to the catalogue with this key.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The endorser's e-mail [default: --email].
    #[arg(long)]
    pub endorser: Option<String>,
    /// Title in the catalogue [default: the output's file name].
    #[arg(long)]
    pub title: Option<String>,
    #[arg(long = "version", default_value = "1")]
    pub image_version: String,
    #[arg(long, default_value = "365d")]
    pub valid_for: String,
    /// Refuse to add the image when the hygiene check finds anything.
    #[arg(long)]
    pub strict: bool,
    #[command(flatten)]
    pub catalog: CatalogArg,
    #[command(flatten)]
    pub json: JsonArg,
}
