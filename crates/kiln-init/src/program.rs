//! kiln-init: the `/init` of the boot initramfs kiln writes next to `--boot kernel`
//! images (`IMAGE.boot/kiln-initrd.img`).
//!
//! It does only what the first second of a VM needs, with no shell and no udev: mount
//! /dev, /proc and /sys; load the filesystem modules and the drivers of the devices
//! present (matching each device's modalias against the alias table kiln wrote, the way
//! udev would, and repeating as new buses appear); find the root named by `root=`
//! (`PARTUUID=`, `PARTLABEL=`, `UUID=`, `LABEL=` or a `/dev` path); mount it and hand
//! over to its init. A distribution's initramfs spends seconds on the same job under
//! an emulated CPU.
//!
//! The build script compiles this one file into a static executable with nothing but
//! std (no crates: the binary runs before any library exists), so the kernel can run it
//! from an initramfs that holds nothing else. Its pure parts are unit-tested through
//! the `kiln-init` crate.
//!
//! Configuration: `/etc/kiln-init.conf`, lines of
//! - `module NAME PATH [DEP…]`: where module NAME is, and the modules to load first;
//! - `alias GLOB NAME`: load NAME when a device's modalias matches GLOB;
//! - `preload NAME`: load NAME before looking for the root (the root's filesystem).
//!
//! Kernel command line: `root=`, `rootfstype=` (default ext4), `rootflags=`, `ro`/`rw`,
//! `init=` (default /sbin/init), and `kiln.rootwait=SECONDS` (default 60), how long to
//! wait for the root device.
//!
//! Agent mode (`kiln.agent` on the command line, the QEMU sandbox): instead of handing over
//! to the root's init, kiln-init mounts the kernel filesystems inside the root, chroots into
//! it and serves kiln's requests on the virtio-serial port `kiln.agent` (see `agent_proto.rs`
//! and the `agent` module below). `kiln.hostname=NAME` sets the host name; `kiln.net=user`
//! configures eth0 for QEMU's user network (10.0.2.15/24 via 10.0.2.2, DNS 10.0.2.3).
//!
//! Appliance mode (`kiln.appliance`, or no `root=` and an `/app/run` in the initramfs):
//! the initramfs is the whole system (`kiln appliance`); see the `appliance` module for
//! the `appCmds`, `appArgs`, `appEnd`, `appDebug` and `appIp` parameters.
//!
//! On failure it says why on the console, lists the block devices it saw, and powers
//! the machine off, so a VM under test stops at once instead of hanging in a panic.

/// A line on the console (stderr) in one `write`: `eprintln!` writes each formatted piece
/// on its own, and the kernel's messages on the same serial port land between them.
macro_rules! console {
    ($($arg:tt)*) => {{
        let mut line = format!($($arg)*);
        line.push('\n');
        let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    }};
}

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// Shared with the host, which also encodes what the guest only decodes.
#[path = "agent_proto.rs"]
#[allow(dead_code)]
mod agent_proto;

const CONFIG: &str = "/etc/kiln-init.conf";
const NEW_ROOT: &str = "/root";
/// How long to wait for the root device by default (drivers probe slowly under
/// emulation); `kiln.rootwait=SECONDS` on the command line changes it.
const ROOT_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);

#[allow(dead_code)]
fn main() {
    let started = Instant::now();
    let error = match boot(started) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut err = io::stderr();
    let _ = writeln!(err, "kiln-init: error: {error}");
    let _ = writeln!(
        err,
        "kiln-init: block devices: {}",
        block_devices().join(" ")
    );
    let _ = writeln!(err, "kiln-init: powering off");
    std::thread::sleep(Duration::from_secs(1));
    sys::power_off();
}

/// Mounts the root and executes its init; returns only on failure.
fn boot(started: Instant) -> Result<std::convert::Infallible, String> {
    for (fstype, target) in [("devtmpfs", "/dev"), ("proc", "/proc"), ("sysfs", "/sys")] {
        sys::mount_pseudo(fstype, target)?;
    }
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let params = Params::parse(&cmdline);
    let config = match fs::read_to_string(CONFIG) {
        Ok(text) => Config::parse(&text)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Config::default(),
        Err(e) => return Err(format!("{CONFIG}: {e}")),
    };
    if params.appliance || (params.root.is_none() && Path::new(appliance::RUN).exists()) {
        return appliance::start(&cmdline, &config, started);
    }
    let root = params
        .root
        .as_deref()
        .ok_or("no root= on the kernel command line")?;
    let spec = RootSpec::parse(root)?;
    let wait = params.rootwait.unwrap_or(ROOT_WAIT);
    // The filesystem modules load on a second thread while the disk drivers load and
    // the disk is probed: module loading is mostly CPU work, and VMs have two CPUs.
    let (device, modules, loaded) = std::thread::scope(|s| {
        let filesystems = s.spawn(|| {
            let mut fs_loader = Loader::new(&config);
            for name in &config.preload {
                fs_loader.load(name);
            }
            fs_loader.loaded.len()
        });
        let mut loader = Loader::new(&config);
        let device = wait_for_root(&spec, &mut loader, root, wait);
        let modules = loader.loaded.len() + filesystems.join().unwrap_or(0);
        (device, modules, loader.loaded)
    });
    let device = device?;
    let fstype = params.rootfstype.as_deref().unwrap_or("ext4");
    let flags = if params.rw { 0 } else { sys::MS_RDONLY };
    let data = params.rootflags.as_deref().unwrap_or("");
    sys::mount(&device.to_string_lossy(), NEW_ROOT, fstype, flags, data)
        .map_err(|e| format!("the root {root}: {e}"))?;
    if params.agent {
        let mut loader = Loader::new(&config);
        loader.loaded = loaded;
        return agent::start(&params, &mut loader, started);
    }
    hand_over(&params, &device, modules, started)
}

/// Loads drivers until the root device shows up.
fn wait_for_root(
    spec: &RootSpec,
    loader: &mut Loader,
    root: &str,
    wait: Duration,
) -> Result<PathBuf, String> {
    let deadline = Instant::now() + wait;
    let mut seen = BTreeSet::new();
    loop {
        for alias in modaliases() {
            if seen.insert(alias.clone()) {
                loader.load_for(&alias);
            }
        }
        if let Some(device) = find_root(spec) {
            return Ok(device);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "root {root} did not appear within {} s (loaded: {})",
                wait.as_secs(),
                loader.loaded.iter().cloned().collect::<Vec<_>>().join(" ")
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// Moves /dev into the new root, frees the initramfs and executes the root's init.
fn hand_over(
    params: &Params,
    device: &Path,
    modules: usize,
    started: Instant,
) -> Result<std::convert::Infallible, String> {
    let init = params.init.as_deref().unwrap_or("/sbin/init");
    let in_root = Path::new(NEW_ROOT).join(init.trim_start_matches('/'));
    if fs::symlink_metadata(&in_root).is_err() {
        return Err(format!(
            "the root filesystem has no {init} (set init= to its init)"
        ));
    }
    if Path::new(NEW_ROOT).join("dev").is_dir() {
        sys::mount_move("/dev", &format!("{NEW_ROOT}/dev"))?;
    }
    sys::detach("/proc");
    sys::detach("/sys");
    // Only what kiln put in the initramfs; the memory it holds is freed with it.
    for path in ["/lib", "/etc", "/init"] {
        let _ = fs::remove_dir_all(path).or_else(|_| fs::remove_file(path));
    }
    console!(
        "kiln-init: root {} mounted {} after {:.2} s ({modules} modules), starting {init}",
        device.display(),
        if params.rw { "rw" } else { "ro" },
        started.elapsed().as_secs_f64()
    );
    std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("cd {NEW_ROOT}: {e}"))?;
    sys::mount_move(".", "/")?;
    sys::chroot(".")?;
    std::env::set_current_dir("/").map_err(|e| format!("cd /: {e}"))?;
    let error = Command::new(init)
        .arg0(init)
        .args(std::env::args_os().skip(1))
        .exec();
    Err(format!("executing {init}: {error}"))
}

/// What the kernel command line says about the root.
#[derive(Debug, Default, PartialEq, Eq)]
struct Params {
    root: Option<String>,
    rootfstype: Option<String>,
    rootflags: Option<String>,
    /// `rw`/`ro`, the last one wins; read-only by default, as the kernel does.
    rw: bool,
    init: Option<String>,
    /// `kiln.rootwait=SECONDS`.
    rootwait: Option<Duration>,
    /// `kiln.agent`: serve the QEMU sandbox instead of starting the root's init.
    agent: bool,
    /// `kiln.hostname=NAME`.
    hostname: Option<String>,
    /// `kiln.net=user`: configure eth0 for QEMU's user-mode network.
    net_user: bool,
    /// `kiln.appliance`: the initramfs is the whole system; run `/app` (see `appliance`).
    appliance: bool,
}

impl Params {
    fn parse(cmdline: &str) -> Params {
        let mut p = Params::default();
        for word in cmdline.split_whitespace() {
            match word.split_once('=') {
                Some(("root", v)) => p.root = Some(v.to_string()),
                Some(("rootfstype", v)) => p.rootfstype = Some(v.to_string()),
                Some(("rootflags", v)) => p.rootflags = Some(v.to_string()),
                Some(("init", v)) => p.init = Some(v.to_string()),
                Some(("kiln.rootwait", v)) => {
                    p.rootwait = v.parse().ok().map(Duration::from_secs);
                }
                Some(("kiln.hostname", v)) => p.hostname = Some(v.to_string()),
                Some(("kiln.net", v)) => p.net_user = v == "user",
                None if word == agent_proto::CMDLINE_FLAG => p.agent = true,
                None if word == appliance::CMDLINE_FLAG => p.appliance = true,
                None if word == "rw" => p.rw = true,
                None if word == "ro" => p.rw = false,
                _ => {}
            }
        }
        p
    }
}

/// The parsed `/etc/kiln-init.conf`.
#[derive(Debug, Default, PartialEq, Eq)]
struct Config {
    /// name → (path, dependencies to load first).
    modules: BTreeMap<String, (String, Vec<String>)>,
    /// (glob, module name), in file order.
    aliases: Vec<(String, String)>,
    preload: Vec<String>,
}

impl Config {
    fn parse(text: &str) -> Result<Config, String> {
        let mut c = Config::default();
        for (n, line) in text.lines().enumerate() {
            let mut words = line.split_whitespace();
            let bad = || format!("{CONFIG}:{}: cannot read `{line}`", n + 1);
            match words.next() {
                None => {}
                Some(w) if w.starts_with('#') => {}
                Some("module") => {
                    let name = words.next().ok_or_else(bad)?;
                    let path = words.next().ok_or_else(bad)?;
                    let deps = words.map(str::to_string).collect();
                    c.modules.insert(name.to_string(), (path.to_string(), deps));
                }
                Some("alias") => {
                    let glob = words.next().ok_or_else(bad)?;
                    let name = words.next().ok_or_else(bad)?;
                    c.aliases.push((glob.to_string(), name.to_string()));
                }
                Some("preload") => c.preload.extend(words.map(str::to_string)),
                Some(_) => return Err(bad()),
            }
        }
        Ok(c)
    }
}

/// Loads modules once each, dependencies first.
struct Loader<'c> {
    config: &'c Config,
    loaded: BTreeSet<String>,
}

impl<'c> Loader<'c> {
    fn new(config: &'c Config) -> Loader<'c> {
        Loader {
            config,
            loaded: BTreeSet::new(),
        }
    }

    /// Loads every module whose alias matches the device's `modalias`.
    fn load_for(&mut self, modalias: &str) {
        let wanted: Vec<&String> = self
            .config
            .aliases
            .iter()
            .filter(|(glob, name)| !self.loaded.contains(name) && glob_match(glob, modalias))
            .map(|(_, name)| name)
            .collect();
        for name in wanted {
            self.load(name);
        }
    }

    fn load(&mut self, name: &str) {
        if !self.loaded.insert(name.to_string()) {
            return;
        }
        let Some((path, deps)) = self.config.modules.get(name) else {
            // Built into the kernel, or not shipped: nothing to load.
            return;
        };
        for dep in deps {
            self.load(dep);
        }
        if let Err(e) = sys::load_module(path) {
            // A driver for hardware that is not quite there (ENODEV) must not stop the boot.
            console!("kiln-init: {name}: {e}");
        }
    }
}

/// `finit_module` flags for the module file at `path`: `MODULE_INIT_COMPRESSED_FILE` (4)
/// for a compressed one, which the kernel then decompresses itself.
fn finit_module_flags(path: &str) -> std::os::raw::c_int {
    const MODULE_INIT_COMPRESSED_FILE: std::os::raw::c_int = 4;
    if [".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .any(|ext| path.ends_with(ext))
    {
        MODULE_INIT_COMPRESSED_FILE
    } else {
        0
    }
}

/// Every device's modalias, from /sys/bus/*/devices/*/modalias.
fn modaliases() -> Vec<String> {
    let mut out = Vec::new();
    let Ok(buses) = fs::read_dir("/sys/bus") else {
        return out;
    };
    for bus in buses.flatten() {
        let Ok(devices) = fs::read_dir(bus.path().join("devices")) else {
            continue;
        };
        for device in devices.flatten() {
            if let Ok(alias) = fs::read_to_string(device.path().join("modalias")) {
                let alias = alias.trim();
                if !alias.is_empty() {
                    out.push(alias.to_string());
                }
            }
        }
    }
    out
}

/// Shell-style matching as modprobe does for aliases: `*`, `?` and `[…]` classes
/// (with ranges and `!`/`^` negation).
fn glob_match(glob: &str, text: &str) -> bool {
    let (g, t) = (glob.as_bytes(), text.as_bytes());
    let (mut gi, mut ti) = (0, 0);
    // Where to resume after the last `*`: (glob index after it, text index it matched to).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        let step = match g.get(gi) {
            Some(b'*') => {
                star = Some((gi + 1, ti));
                gi += 1;
                continue;
            }
            Some(b'?') => Some(gi + 1),
            Some(b'[') => class_match(g, gi, t[ti]),
            Some(&c) if c == t[ti] => Some(gi + 1),
            _ => None,
        };
        match (step, star) {
            (Some(next), _) => {
                gi = next;
                ti += 1;
            }
            (None, Some((after, matched))) => {
                gi = after;
                ti = matched + 1;
                star = Some((after, matched + 1));
            }
            (None, None) => return false,
        }
    }
    g[gi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `g[open]` (`[`); the index after the
/// class when it matches.
fn class_match(g: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = matches!(g.get(i), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut hit = false;
    let mut first = true;
    loop {
        let &lo = g.get(i)?;
        if lo == b']' && !first {
            break;
        }
        first = false;
        if g.get(i + 1) == Some(&b'-') && g.get(i + 2).is_some_and(|&hi| hi != b']') {
            hit |= (lo..=g[i + 2]).contains(&c);
            i += 3;
        } else {
            hit |= lo == c;
            i += 1;
        }
    }
    (hit != negate).then_some(i + 1)
}

/// How `root=` names the root.
#[derive(Debug, PartialEq, Eq)]
enum RootSpec {
    PartUuid(String),
    PartLabel(String),
    Uuid(String),
    Label(String),
    Path(PathBuf),
}

impl RootSpec {
    fn parse(root: &str) -> Result<RootSpec, String> {
        let spec = if let Some(v) = root.strip_prefix("PARTUUID=") {
            RootSpec::PartUuid(v.to_ascii_lowercase())
        } else if let Some(v) = root.strip_prefix("PARTLABEL=") {
            RootSpec::PartLabel(v.to_string())
        } else if let Some(v) = root.strip_prefix("UUID=") {
            RootSpec::Uuid(v.to_ascii_lowercase())
        } else if let Some(v) = root.strip_prefix("LABEL=") {
            RootSpec::Label(v.to_string())
        } else if root.starts_with("/dev/") {
            RootSpec::Path(PathBuf::from(root))
        } else {
            return Err(format!(
                "root={root}: expected PARTUUID=, PARTLABEL=, UUID=, LABEL= or a /dev path"
            ));
        };
        Ok(spec)
    }
}

/// The device node of the root, once its device exists.
fn find_root(spec: &RootSpec) -> Option<PathBuf> {
    if let RootSpec::Path(path) = spec {
        return sys::is_block_device(path).then(|| path.clone());
    }
    let mut tables: HashMap<String, Option<Vec<GptEntry>>> = HashMap::new();
    for name in block_devices() {
        let dev = PathBuf::from("/dev").join(&name);
        let found = match spec {
            RootSpec::PartUuid(_) | RootSpec::PartLabel(_) => {
                let Some((disk, number)) = partition_of(&name) else {
                    continue;
                };
                let table = tables
                    .entry(disk.clone())
                    .or_insert_with(|| read_gpt(&PathBuf::from("/dev").join(&disk)));
                partition_matches(spec, table.as_deref(), &disk, number)
            }
            RootSpec::Uuid(_) | RootSpec::Label(_) => {
                read_ext_superblock(&dev).is_some_and(|sb| superblock_matches(spec, &sb))
            }
            RootSpec::Path(_) => false,
        };
        if found {
            return Some(dev);
        }
    }
    None
}

fn partition_matches(spec: &RootSpec, table: Option<&[GptEntry]>, disk: &str, number: u32) -> bool {
    let entry = number
        .checked_sub(1)
        .and_then(|i| table.and_then(|t| t.get(i as usize)));
    match spec {
        RootSpec::PartUuid(want) => {
            entry.is_some_and(|e| &e.uuid == want)
                || mbr_signature(&PathBuf::from("/dev").join(disk))
                    .is_some_and(|sig| format!("{sig:08x}-{number:02x}") == *want)
        }
        RootSpec::PartLabel(want) => entry.is_some_and(|e| &e.name == want),
        _ => false,
    }
}

/// Names under /sys/class/block (vda, vda1, …), sorted.
fn block_devices() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir("/sys/class/block")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// (disk name, partition number) when `name` is a partition.
fn partition_of(name: &str) -> Option<(String, u32)> {
    let sys = Path::new("/sys/class/block").join(name);
    let number = fs::read_to_string(sys.join("partition")).ok()?;
    let number = number.trim().parse().ok()?;
    let real = fs::canonicalize(&sys).ok()?;
    let disk = real.parent()?.file_name()?.to_string_lossy().into_owned();
    Some((disk, number))
}

/// One GPT partition entry: unique GUID (lowercase text) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GptEntry {
    uuid: String,
    name: String,
}

fn read_gpt(disk: &Path) -> Option<Vec<GptEntry>> {
    let mut file = fs::File::open(disk).ok()?;
    for sector in [512u64, 4096] {
        let mut header = [0u8; 92];
        file.seek(SeekFrom::Start(sector)).ok()?;
        file.read_exact(&mut header).ok()?;
        let Some((lba, count, size)) = parse_gpt_header(&header) else {
            continue;
        };
        let mut entries = vec![0u8; count.checked_mul(size)?];
        file.seek(SeekFrom::Start(lba.checked_mul(sector)?)).ok()?;
        file.read_exact(&mut entries).ok()?;
        return Some(parse_gpt_entries(&entries, size));
    }
    None
}

/// (entries LBA, entry count, entry size) from a GPT header, if it is one.
fn parse_gpt_header(h: &[u8; 92]) -> Option<(u64, usize, usize)> {
    if &h[..8] != b"EFI PART" {
        return None;
    }
    let lba = u64::from_le_bytes(h[72..80].try_into().ok()?);
    let count = u32::from_le_bytes(h[80..84].try_into().ok()?) as usize;
    let size = u32::from_le_bytes(h[84..88].try_into().ok()?) as usize;
    // The spec caps a table at a few thousand entries; refuse absurd sizes.
    (size >= 128 && count <= 4096).then_some((lba, count, size))
}

fn parse_gpt_entries(bytes: &[u8], size: usize) -> Vec<GptEntry> {
    bytes
        .chunks_exact(size)
        .map(|e| GptEntry {
            uuid: guid_text(&e[16..32]),
            name: utf16_name(&e[56..128]),
        })
        .collect()
}

/// A GUID's text form: the first three fields are stored little-endian.
fn guid_text(b: &[u8]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

fn utf16_name(b: &[u8]) -> String {
    let units: Vec<u16> = b
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// An MBR disk's signature (for `PARTUUID=SSSSSSSS-NN`).
fn mbr_signature(disk: &Path) -> Option<u32> {
    let mut sector = [0u8; 512];
    fs::File::open(disk).ok()?.read_exact(&mut sector).ok()?;
    (sector[510..512] == [0x55, 0xaa])
        .then(|| u32::from_le_bytes([sector[440], sector[441], sector[442], sector[443]]))
}

/// The identity fields of an ext2/3/4 superblock.
#[derive(Debug, PartialEq, Eq)]
struct Superblock {
    uuid: String,
    label: String,
}

fn read_ext_superblock(dev: &Path) -> Option<Superblock> {
    let mut file = fs::File::open(dev).ok()?;
    let mut sb = [0u8; 256];
    file.seek(SeekFrom::Start(1024)).ok()?;
    file.read_exact(&mut sb).ok()?;
    parse_ext_superblock(&sb)
}

fn parse_ext_superblock(sb: &[u8; 256]) -> Option<Superblock> {
    if sb[0x38..0x3a] != [0x53, 0xef] {
        return None;
    }
    let u = &sb[0x68..0x78];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex(&u[0..4]),
        hex(&u[4..6]),
        hex(&u[6..8]),
        hex(&u[8..10]),
        hex(&u[10..16])
    );
    let raw = &sb[0x78..0x88];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let label = String::from_utf8_lossy(&raw[..end]).into_owned();
    Some(Superblock { uuid, label })
}

fn superblock_matches(spec: &RootSpec, sb: &Superblock) -> bool {
    match spec {
        RootSpec::Uuid(want) => &sb.uuid == want,
        RootSpec::Label(want) => &sb.label == want,
        _ => false,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Appliance mode (`kiln.appliance`, or no `root=` and an `/app/run`): the initramfs is
/// the whole system, made by `kiln appliance`. kiln-init mounts /tmp and /run, loads the
/// drivers of the devices present, brings up `lo` (and eth0 with `appIp=`), then runs
/// the phases on the console, printing each one's exit status:
/// `/app/prerun`, each `appCmds` command (`:`-separated, through /bin/sh when the
/// appliance has one), `/app/run` with `appArgs`, `/app/postrun`. Finally `appEnd`:
/// `halt` (default), `reboot`, `sshd` (the appliance's /usr/sbin/sshd, in the
/// foreground), `shell` or `bash`; `appDebug` opens a shell before `prerun`. Values may
/// be quoted with `'` or `"` on the command line (`appArgs='-m 64'`).
mod appliance {
    use super::*;

    pub const CMDLINE_FLAG: &str = "kiln.appliance";
    pub const RUN: &str = "/app/run";
    const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    /// How long the set of devices must stay the same before drivers are taken as loaded.
    /// A driver probes its devices while its module loads, so the devices a bus driver
    /// (virtio_pci) adds are already in /sys when the next scan runs; this only covers a
    /// probe that finishes asynchronously.
    const SETTLED: Duration = Duration::from_millis(100);
    const DRIVERS_WAIT: Duration = Duration::from_secs(10);

    /// What `appEnd` asks for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub enum End {
        #[default]
        Halt,
        Reboot,
        Sshd,
        Shell,
        Bash,
    }

    /// The `app*` parameters of the kernel command line.
    #[derive(Debug, Default, PartialEq, Eq)]
    pub struct AppParams {
        pub cmds: Vec<String>,
        pub args: Vec<String>,
        pub end: End,
        pub debug: bool,
        /// (address, netmask) from `appIp=ADDR/PREFIX`.
        pub ip: Option<([u8; 4], [u8; 4])>,
        pub gateway: Option<[u8; 4]>,
        /// Words that could not be understood, reported on the console.
        pub errors: Vec<String>,
    }

    /// Splits a command line into words as a shell would for quotes: `'…'` and `"…"`
    /// group (and are removed), nothing else is special.
    pub fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut word = String::new();
        let mut in_word = false;
        let mut quote = None;
        for c in text.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), c) => word.push(c),
                (None, '\'' | '"') => {
                    quote = Some(c);
                    in_word = true;
                }
                (None, c) if c.is_whitespace() => {
                    if in_word {
                        out.push(std::mem::take(&mut word));
                        in_word = false;
                    }
                }
                (None, c) => {
                    word.push(c);
                    in_word = true;
                }
            }
        }
        if in_word {
            out.push(word);
        }
        out
    }

    fn parse_ipv4(text: &str) -> Option<[u8; 4]> {
        let parts: Vec<u8> = text
            .split('.')
            .map(|p| p.parse().ok())
            .collect::<Option<_>>()?;
        parts.try_into().ok()
    }

    impl AppParams {
        pub fn parse(cmdline: &str) -> AppParams {
            let mut p = AppParams::default();
            for word in words(cmdline) {
                match word.split_once('=') {
                    Some(("appCmds", v)) => {
                        p.cmds = v
                            .split(':')
                            .map(str::trim)
                            .filter(|c| !c.is_empty())
                            .map(str::to_string)
                            .collect();
                    }
                    Some(("appArgs", v)) => p.args = words(v),
                    Some(("appEnd", v)) => match v {
                        "halt" | "poweroff" => p.end = End::Halt,
                        "reboot" => p.end = End::Reboot,
                        "sshd" => p.end = End::Sshd,
                        "shell" => p.end = End::Shell,
                        "bash" => p.end = End::Bash,
                        other => p.errors.push(format!(
                            "appEnd={other}: expected halt, reboot, sshd, shell or bash (halting)"
                        )),
                    },
                    Some(("appDebug", v)) => p.debug = !matches!(v, "0" | "no" | "false"),
                    Some(("appIp", v)) => {
                        let parsed = v.split_once('/').and_then(|(a, n)| {
                            let prefix: u32 = n.parse().ok().filter(|n| *n <= 32)?;
                            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                            Some((parse_ipv4(a)?, mask.to_be_bytes()))
                        });
                        match parsed {
                            Some(ip) => p.ip = Some(ip),
                            None => p.errors.push(format!(
                                "appIp={v}: expected ADDRESS/PREFIX, e.g. 10.0.2.15/24"
                            )),
                        }
                    }
                    Some(("appGw", v)) => match parse_ipv4(v) {
                        Some(gw) => p.gateway = Some(gw),
                        None => p
                            .errors
                            .push(format!("appGw={v}: expected an IPv4 address")),
                    },
                    None if word == "appDebug" => p.debug = true,
                    _ => {}
                }
            }
            p
        }
    }

    /// Runs the appliance; returns only on a set-up failure.
    pub fn start(
        cmdline: &str,
        config: &Config,
        started: Instant,
    ) -> Result<std::convert::Infallible, String> {
        let p = AppParams::parse(cmdline);
        for e in &p.errors {
            console!("kiln-init: {e}");
        }
        for (target, mode) in [("/tmp", "mode=1777"), ("/run", "mode=755")] {
            let _ = fs::create_dir_all(target);
            sys::mount("tmpfs", target, "tmpfs", 0, mode)?;
        }
        let modules = load_drivers(config);
        if let Err(e) = sys::interface_up("lo") {
            console!("kiln-init: {e}");
        }
        if let Some((addr, mask)) = p.ip {
            configure_eth0(addr, mask, p.gateway)?;
        }
        console!(
            "kiln-init: appliance up after {:.2} s ({modules} modules)",
            started.elapsed().as_secs_f64()
        );
        if p.debug {
            console!("kiln-init: appDebug: a shell before prerun; exit it to go on");
            shell("/bin/sh");
        }
        phase("prerun", "/app/prerun", &[]);
        for (n, cmd) in p.cmds.iter().enumerate() {
            let name = format!("appCmds[{}] `{cmd}`", n + 1);
            if Path::new("/bin/sh").exists() {
                phase(&name, "/bin/sh", &["-c".to_string(), cmd.clone()]);
            } else {
                let argv = words(cmd);
                phase(&name, &argv[0], &argv[1..]);
            }
        }
        phase("run", RUN, &p.args);
        phase("postrun", "/app/postrun", &[]);
        finish(p.end)
    }

    /// Loads the drivers of every device present, again as new buses show devices, until
    /// nothing new appeared for [`SETTLED`]. Returns how many modules were loaded.
    fn load_drivers(config: &Config) -> usize {
        let mut loader = Loader::new(config);
        for name in &config.preload {
            loader.load(name);
        }
        let mut seen = BTreeSet::new();
        let deadline = Instant::now() + DRIVERS_WAIT;
        let mut quiet_since = Instant::now();
        while Instant::now() < deadline && quiet_since.elapsed() < SETTLED {
            for alias in modaliases() {
                if seen.insert(alias.clone()) {
                    loader.load_for(&alias);
                    quiet_since = Instant::now();
                }
            }
            std::thread::sleep(POLL);
        }
        loader.loaded.len()
    }

    fn configure_eth0(
        addr: [u8; 4],
        mask: [u8; 4],
        gateway: Option<[u8; 4]>,
    ) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while fs::symlink_metadata("/sys/class/net/eth0").is_err() {
            if Instant::now() > deadline {
                return Err("appIp: no network interface eth0 appeared within 20 s".into());
            }
            std::thread::sleep(POLL);
        }
        sys::configure_ipv4("eth0", addr, mask, gateway)
    }

    /// Runs one phase in the foreground on the console and prints how it ended. A phase
    /// whose program is absent is skipped (prerun and postrun are optional).
    fn phase(name: &str, program: &str, args: &[String]) {
        if program.starts_with('/') && fs::symlink_metadata(program).is_err() {
            if program == RUN {
                console!("kiln-init: {name}: {program} is missing");
            }
            return;
        }
        console!("kiln-init: {name}: starting");
        let status = Command::new(program)
            .args(args)
            .env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("TERM", "linux")
            .current_dir("/")
            .status();
        match status {
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => console!("kiln-init: {name}: exit status {code}"),
                (None, Some(sig)) => console!("kiln-init: {name}: killed by signal {sig}"),
                _ => console!("kiln-init: {name}: ended"),
            },
            Err(e) => console!("kiln-init: {name}: cannot run {program}: {e}"),
        }
        reap_orphans();
    }

    /// Collects processes that ended after their parent did (they are ours, as PID 1).
    fn reap_orphans() {
        extern "C" {
            fn waitpid(pid: i32, status: *mut i32, options: i32) -> i32;
        }
        const WNOHANG: i32 = 1;
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer to a local.
        while unsafe { waitpid(-1, &mut status, WNOHANG) } > 0 {}
    }

    /// An interactive shell on the console; false when the appliance has none.
    fn shell(program: &str) -> bool {
        if !Path::new(program).exists() {
            console!("kiln-init: the appliance has no {program} (add it with --include)");
            return false;
        }
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", PATH)
            .env("HOME", "/root")
            .env("TERM", "linux")
            .env("PS1", "appliance# ")
            .current_dir("/");
        // SAFETY: take_console makes two system calls and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                sys::take_console();
                Ok(())
            })
        };
        match cmd.status() {
            Ok(s) => console!("kiln-init: {program}: {s}"),
            Err(e) => console!("kiln-init: {program}: {e}"),
        }
        reap_orphans();
        true
    }

    fn finish(end: End) -> Result<std::convert::Infallible, String> {
        match end {
            End::Halt => {}
            End::Reboot => {
                console!("kiln-init: appEnd=reboot: rebooting");
                sys::reboot_now();
            }
            End::Shell => {
                shell("/bin/sh");
            }
            End::Bash => {
                shell("/bin/bash");
            }
            End::Sshd => sshd(),
        }
        let name = match end {
            End::Halt => "halt",
            End::Reboot => "reboot (failed)",
            End::Sshd => "sshd",
            End::Shell => "shell",
            End::Bash => "bash",
        };
        console!("kiln-init: appEnd={name}: powering off");
        sys::power_off()
    }

    /// The appliance's sshd in the foreground, with an ed25519 host key made now when the
    /// appliance carries none (each boot is a fresh machine).
    fn sshd() {
        let sshd = "/usr/sbin/sshd";
        if !Path::new(sshd).exists() {
            console!("kiln-init: appEnd=sshd: the appliance has no {sshd}");
            return;
        }
        let _ = fs::create_dir_all("/run/sshd");
        let key = "/etc/ssh/ssh_host_ed25519_key";
        if !Path::new(key).exists() {
            let _ = fs::create_dir_all("/etc/ssh");
            phase(
                "sshd host key",
                "/usr/bin/ssh-keygen",
                &["-q", "-t", "ed25519", "-N", "", "-f", key].map(String::from),
            );
        }
        console!("kiln-init: appEnd=sshd: starting {sshd}");
        phase("sshd", sshd, &["-D", "-e", "-h", key].map(String::from));
    }
}

/// Agent mode: the guest half of the QEMU sandbox.
mod agent {
    use super::agent_proto::{
        ExitStatus, FrameReader, Mount, PutEntry, PutKind, Request, Response, RunRequest,
        SecretFile, PORT_NAME, VERSION,
    };
    use super::*;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    use std::os::unix::process::ExitStatusExt;

    /// How long devices that appear after the root (network, agent port) may take.
    const DEVICE_WAIT: Duration = Duration::from_secs(20);

    /// What kiln-init changed for a step, undone in exact reverse order: a directory it
    /// created under a mount it made is removed before that mount goes, so it never
    /// touches what the filesystem below the mount holds (the disk's own /dev/pts).
    enum Change {
        Mounted(String),
        Created(String),
    }

    /// Mounts kiln-init made and paths it created for them.
    #[derive(Default)]
    struct Undo {
        changes: Vec<Change>,
    }

    impl Undo {
        fn mounted(&mut self, target: impl Into<String>) {
            self.changes.push(Change::Mounted(target.into()));
        }

        fn created(&mut self, path: impl Into<String>) {
            self.changes.push(Change::Created(path.into()));
        }

        /// Creates `dir` and its missing parents (mode 755, owned by `owner`), recording them.
        fn ensure_dir(&mut self, dir: &str, owner: (u32, u32)) -> Result<(), String> {
            let mut missing = Vec::new();
            for d in Path::new(dir).ancestors() {
                if fs::symlink_metadata(d).is_ok() {
                    break;
                }
                missing.push(d.to_path_buf());
            }
            for d in missing.iter().rev() {
                fs::create_dir(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
                std::os::unix::fs::chown(d, Some(owner.0), Some(owner.1))
                    .map_err(|e| format!("chown {}: {e}", d.display()))?;
                self.created(d.to_string_lossy().into_owned());
            }
            Ok(())
        }

        /// Creates the empty file `path` (and its parents) unless something is there.
        fn ensure_file(&mut self, path: &str) -> Result<(), String> {
            if fs::symlink_metadata(path).is_ok() {
                return Ok(());
            }
            if let Some(parent) = Path::new(path).parent() {
                self.ensure_dir(&parent.to_string_lossy(), (0, 0))?;
            }
            fs::File::create(path).map_err(|e| format!("creating {path}: {e}"))?;
            self.created(path);
            Ok(())
        }

        fn mount(
            &mut self,
            src: &str,
            target: &str,
            fstype: &str,
            data: &str,
        ) -> Result<(), String> {
            self.ensure_dir(target, (0, 0))?;
            sys::mount(src, target, fstype, 0, data)?;
            self.mounted(target);
            Ok(())
        }

        /// Undoes everything recorded, newest first; the first failure is returned.
        fn undo(&mut self) -> Result<(), String> {
            let mut first = Ok(());
            while let Some(change) = self.changes.pop() {
                let done = match change {
                    Change::Mounted(target) => sys::umount(&target),
                    Change::Created(path) => fs::remove_dir(&path)
                        .or_else(|_| fs::remove_file(&path))
                        .map_err(|e| format!("removing {path}: {e}")),
                };
                if let Err(e) = done {
                    first = first.and(Err(e));
                }
            }
            first
        }
    }

    /// Sets the guest up inside the mounted root and serves requests until shutdown.
    pub fn start(
        params: &Params,
        loader: &mut Loader,
        started: Instant,
    ) -> Result<std::convert::Infallible, String> {
        // Devices whose drivers were not needed for the root (network, agent port).
        for alias in modaliases() {
            loader.load_for(&alias);
        }
        let mut undo = Undo::default();
        enter_root(&mut undo)?;
        sys::set_hostname(params.hostname.as_deref().unwrap_or("kiln"))?;
        sys::interface_up("lo")?;
        if params.net_user {
            user_network(&mut undo)?;
        }
        let port = find_port()?;
        console!(
            "kiln-init: agent ready on {} after {:.2} s",
            port.display(),
            started.elapsed().as_secs_f64()
        );
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&port)
            .map_err(|e| format!("{}: {e}", port.display()))?;
        Agent {
            port: file,
            reader: FrameReader::default(),
            undo,
        }
        .serve()
    }

    /// Mounts /proc, /sys and /dev inside the root, makes it `/`, then the scratch
    /// filesystems. Mount points the disk lacks are created and removed at shutdown.
    fn enter_root(undo: &mut Undo) -> Result<(), String> {
        for dir in ["proc", "sys", "dev"] {
            let inside = format!("{NEW_ROOT}/{dir}");
            if fs::symlink_metadata(&inside).is_err() {
                fs::create_dir(&inside).map_err(|e| format!("creating {inside}: {e}"))?;
                undo.created(format!("/{dir}"));
            }
            sys::mount_move(&format!("/{dir}"), &inside)?;
            undo.mounted(format!("/{dir}"));
        }
        std::env::set_current_dir(NEW_ROOT).map_err(|e| format!("cd {NEW_ROOT}: {e}"))?;
        sys::mount_move(".", "/")?;
        sys::chroot(".")?;
        std::env::set_current_dir("/").map_err(|e| format!("cd /: {e}"))?;
        undo.mount(
            "devpts",
            "/dev/pts",
            "devpts",
            "gid=5,mode=620,ptmxmode=666",
        )?;
        undo.mount("tmpfs", "/dev/shm", "tmpfs", "mode=1777")?;
        undo.mount("tmpfs", "/tmp", "tmpfs", "mode=1777")?;
        undo.mount("tmpfs", "/run", "tmpfs", "mode=755")?;
        Ok(())
    }

    /// eth0 as QEMU's user network expects it, and its DNS server in a resolv.conf that
    /// covers the disk's own only while the VM runs.
    fn user_network(undo: &mut Undo) -> Result<(), String> {
        wait_for(
            Path::new("/sys/class/net/eth0"),
            "the network interface eth0",
        )?;
        sys::configure_ipv4(
            "eth0",
            [10, 0, 2, 15],
            [255, 255, 255, 0],
            Some([10, 0, 2, 2]),
        )?;
        let resolv = "/run/kiln-resolv.conf";
        fs::write(resolv, "nameserver 10.0.2.3\n").map_err(|e| format!("{resolv}: {e}"))?;
        match fs::symlink_metadata("/etc/resolv.conf") {
            Ok(m) if !m.is_file() => return Ok(()),
            _ => {}
        }
        if fs::metadata("/etc").is_ok_and(|m| m.is_dir()) {
            undo.ensure_file("/etc/resolv.conf")?;
            sys::bind(resolv, "/etc/resolv.conf", false)?;
            undo.mounted("/etc/resolv.conf");
        }
        Ok(())
    }

    fn wait_for(path: &Path, what: &str) -> Result<(), String> {
        let deadline = Instant::now() + DEVICE_WAIT;
        while fs::symlink_metadata(path).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "{what} did not appear within {} s",
                    DEVICE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
        Ok(())
    }

    /// The device node of the virtio-serial port named `kiln.agent`.
    fn find_port() -> Result<PathBuf, String> {
        let deadline = Instant::now() + DEVICE_WAIT;
        loop {
            if let Ok(ports) = fs::read_dir("/sys/class/virtio-ports") {
                for port in ports.flatten() {
                    let name = fs::read_to_string(port.path().join("name")).unwrap_or_default();
                    let dev = Path::new("/dev").join(port.file_name());
                    if name.trim() == PORT_NAME && dev.exists() {
                        return Ok(dev);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no virtio-serial port named {PORT_NAME} within {} s",
                    DEVICE_WAIT.as_secs()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    struct Agent {
        port: fs::File,
        reader: FrameReader,
        undo: Undo,
    }

    impl Agent {
        fn send(&mut self, r: &Response) -> Result<(), String> {
            agent_proto::write_frame(&mut self.port, &r.encode())
                .map_err(|e| format!("writing to the agent port: {e}"))
        }

        /// The next request; waits while the host is not connected (reads then see EOF).
        fn next(&mut self) -> Result<Request, String> {
            loop {
                match self.reader.read_frame(&mut self.port) {
                    Ok(Some((t, payload))) => {
                        return Request::decode(t, &payload).map_err(|e| e.to_string())
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                    Err(e) => {
                        self.reader = FrameReader::default();
                        return Err(format!("reading the agent port: {e}"));
                    }
                }
            }
        }

        fn serve(mut self) -> Result<std::convert::Infallible, String> {
            self.send(&Response::Ready { version: VERSION })?;
            loop {
                let reply = match self.next() {
                    Ok(Request::Run(r)) => self.run(r).map(Response::Exit),
                    Ok(Request::Put(first)) => self.put(first).map(|()| Response::PutDone),
                    Ok(Request::PutEnd) => Ok(Response::PutDone),
                    Ok(Request::Shutdown) => return self.shutdown(),
                    // Left over from a command that has ended.
                    Ok(Request::Stdin(_) | Request::StdinEof | Request::Data(_)) => continue,
                    Err(e) => Err(e),
                };
                let reply = reply.unwrap_or_else(Response::Error);
                self.send(&reply)?;
            }
        }

        fn shutdown(mut self) -> Result<std::convert::Infallible, String> {
            sys::kill_all();
            let undone = self.undo.undo();
            sys::sync();
            let remounted = sys::remount_read_only("/");
            if let Err(e) = undone.and(remounted) {
                // The disk is synced either way; say what was left behind.
                console!("kiln-init: shutdown: {e}");
            }
            let _ = self.send(&Response::ShutdownAck);
            sys::power_off()
        }

        /// Runs one command with its mounts and secrets, streaming its output.
        fn run(&mut self, r: RunRequest) -> Result<ExitStatus, String> {
            if r.argv.is_empty() {
                return Err("an empty command".into());
            }
            let mut undo = Undo::default();
            let result = prepare(&mut undo, &r).and_then(|()| self.spawn_and_stream(&r));
            sys::kill_all();
            let undone = undo.undo();
            let status = result?;
            undone.map(|()| status)
        }

        fn spawn_and_stream(&mut self, r: &RunRequest) -> Result<ExitStatus, String> {
            make_cwd(&r.cwd, r.uid, r.gid)?;
            let (out_read, out_write) = io::pipe().map_err(|e| format!("pipe: {e}"))?;
            let err_write = out_write.try_clone().map_err(|e| format!("pipe: {e}"))?;
            let mut cmd = Command::new(&r.argv[0]);
            cmd.args(&r.argv[1..])
                .env_clear()
                .envs(r.env.iter().map(|(k, v)| (k, v)))
                .current_dir(&r.cwd)
                .uid(r.uid)
                .gid(r.gid)
                .stdout(out_write)
                .stderr(err_write)
                .stdin(if r.stdin {
                    std::process::Stdio::piped()
                } else {
                    std::process::Stdio::null()
                });
            let mut child = match cmd.spawn() {
                Ok(child) => child,
                Err(e) => return self.cannot_start(&r.argv[0], e),
            };
            drop(cmd);
            let stdin = child.stdin.take();
            let status = self.stream(&mut child, out_read, stdin)?;
            Ok(match (status.code(), status.signal()) {
                (Some(code), _) => ExitStatus::Code(code),
                (None, Some(sig)) => ExitStatus::Signal(sig),
                (None, None) => ExitStatus::Code(-1),
            })
        }

        /// Like a shell: a command that cannot be executed exits 126, a missing one 127.
        fn cannot_start(&mut self, argv0: &str, e: io::Error) -> Result<ExitStatus, String> {
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            let message = format!("kiln: {argv0}: {e}\n");
            self.send(&Response::Output(message.into_bytes()))?;
            Ok(ExitStatus::Code(code))
        }

        /// Forwards output (and stdin) until the command has exited and every process
        /// holding its output has been killed.
        fn stream(
            &mut self,
            child: &mut std::process::Child,
            mut out: io::PipeReader,
            mut stdin: Option<std::process::ChildStdin>,
        ) -> Result<std::process::ExitStatus, String> {
            use std::os::fd::AsRawFd;
            let pidfd = sys::pidfd_open(child.id())?;
            let mut status = None;
            let mut out_open = true;
            let mut buf = vec![0u8; 32 << 10];
            // Stdin frames may have arrived with the Run request, already buffered.
            self.take_stdin_frames(&mut stdin)?;
            while status.is_none() || out_open {
                let watch_port = stdin.is_some();
                let fds = [
                    (out.as_raw_fd(), out_open),
                    (pidfd.as_raw_fd(), status.is_none()),
                    (self.port.as_raw_fd(), watch_port),
                ];
                let ready = sys::poll(&fds)?;
                if ready[0] {
                    let n = out
                        .read(&mut buf)
                        .map_err(|e| format!("reading output: {e}"))?;
                    if n == 0 {
                        out_open = false;
                    } else {
                        self.send(&Response::Output(buf[..n].to_vec()))?;
                    }
                }
                if ready[1] {
                    let s = child
                        .wait()
                        .map_err(|e| format!("waiting for the command: {e}"))?;
                    status = Some(s);
                    // Whatever it left running would hold the output open: the step is over.
                    sys::kill_all();
                    stdin = None;
                }
                if ready[2] {
                    self.forward_stdin(&mut buf, &mut stdin)?;
                }
            }
            Ok(status.expect("loop ends with a status"))
        }

        fn forward_stdin(
            &mut self,
            buf: &mut [u8],
            stdin: &mut Option<std::process::ChildStdin>,
        ) -> Result<(), String> {
            let n = self
                .port
                .read(buf)
                .map_err(|e| format!("reading the agent port: {e}"))?;
            self.reader.feed(&buf[..n]);
            self.take_stdin_frames(stdin)
        }

        /// Hands the complete Stdin frames read so far to the command.
        fn take_stdin_frames(
            &mut self,
            stdin: &mut Option<std::process::ChildStdin>,
        ) -> Result<(), String> {
            while let Some((t, payload)) = self.reader.next_frame().map_err(|e| e.to_string())? {
                match Request::decode(t, &payload).map_err(|e| e.to_string())? {
                    Request::Stdin(data) => {
                        if let Some(pipe) = stdin.as_mut() {
                            // A command that stopped reading its stdin is not an error.
                            if pipe.write_all(&data).is_err() {
                                *stdin = None;
                            }
                        }
                    }
                    Request::StdinEof => *stdin = None,
                    other => return Err(format!("unexpected request while running: {other:?}")),
                }
            }
            Ok(())
        }

        /// Applies entries until PutEnd; after a failure the rest is read and dropped so
        /// that the stream stays in step, and the first failure is reported.
        fn put(&mut self, first: PutEntry) -> Result<(), String> {
            let mut failed: Option<String> = None;
            let mut entry = Some(first);
            loop {
                if let Some(e) = entry.take() {
                    let path = e.path.clone();
                    let result = self.apply(e, failed.is_none());
                    if let (Err(err), None) = (result, &failed) {
                        failed = Some(format!("copying to {path}: {err}"));
                    }
                }
                match self.next()? {
                    Request::Put(e) => entry = Some(e),
                    Request::PutEnd => break,
                    other => return Err(format!("unexpected request during a copy: {other:?}")),
                }
            }
            failed.map_or(Ok(()), Err)
        }

        /// One entry; a file's data is always consumed, written only when `write`.
        fn apply(&mut self, e: PutEntry, write: bool) -> Result<(), String> {
            let mut file = None;
            let size = match e.kind {
                PutKind::File { size, .. } => size,
                _ => 0,
            };
            if write {
                file = place(&e)?;
            }
            let mut left = size;
            while left > 0 {
                let data = match self.next()? {
                    Request::Data(d) => d,
                    other => return Err(format!("file data expected, got {other:?}")),
                };
                left = left
                    .checked_sub(data.len() as u64)
                    .ok_or("more file data than the entry's size")?;
                if let Some(f) = file.as_mut() {
                    let f: &mut fs::File = f;
                    f.write_all(&data).map_err(|err| err.to_string())?;
                }
            }
            if let (Some(f), PutKind::File { mtime, .. }) = (file, &e.kind) {
                let t = std::time::UNIX_EPOCH + Duration::from_secs((*mtime).max(0) as u64);
                f.set_modified(t)
                    .map_err(|err| format!("setting the mtime: {err}"))?;
            }
            Ok(())
        }
    }

    /// Makes the entry's path what it says (parents too); for a file, returns it open for
    /// its data (owner and mode already set).
    fn place(e: &PutEntry) -> Result<Option<fs::File>, String> {
        let err = |what: &str, x: io::Error| format!("{what}: {x}");
        if let Some(parent) = Path::new(&e.path).parent() {
            Undo::default().ensure_dir(&parent.to_string_lossy(), (e.uid, e.gid))?;
        }
        let existing = fs::symlink_metadata(&e.path).ok();
        let owner = (Some(e.uid), Some(e.gid));
        match &e.kind {
            PutKind::Dir { mode } => {
                match existing {
                    Some(m) if m.is_dir() => {}
                    Some(_) => {
                        fs::remove_file(&e.path).map_err(|x| err("removing", x))?;
                        fs::create_dir(&e.path).map_err(|x| err("mkdir", x))?;
                    }
                    None => fs::create_dir(&e.path).map_err(|x| err("mkdir", x))?,
                }
                std::os::unix::fs::chown(&e.path, owner.0, owner.1).map_err(|x| err("chown", x))?;
                fs::set_permissions(&e.path, fs::Permissions::from_mode(*mode))
                    .map_err(|x| err("chmod", x))?;
                Ok(None)
            }
            PutKind::File { mode, .. } => {
                remove_non_dir(&e.path, existing.as_ref())?;
                let f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&e.path)
                    .map_err(|x| err("creating", x))?;
                std::os::unix::fs::fchown(&f, owner.0, owner.1).map_err(|x| err("chown", x))?;
                f.set_permissions(fs::Permissions::from_mode(*mode))
                    .map_err(|x| err("chmod", x))?;
                Ok(Some(f))
            }
            PutKind::Symlink { target } => {
                remove_non_dir(&e.path, existing.as_ref())?;
                std::os::unix::fs::symlink(target, &e.path).map_err(|x| err("symlink", x))?;
                std::os::unix::fs::lchown(&e.path, owner.0, owner.1)
                    .map_err(|x| err("lchown", x))?;
                Ok(None)
            }
        }
    }

    fn remove_non_dir(path: &str, existing: Option<&fs::Metadata>) -> Result<(), String> {
        match existing {
            Some(m) if m.is_dir() => Err("a directory is in the way of a file".into()),
            Some(_) => fs::remove_file(path).map_err(|e| format!("removing: {e}")),
            None => Ok(()),
        }
    }

    /// The working directory and its missing parents, owned by the command's user.
    fn make_cwd(cwd: &str, uid: u32, gid: u32) -> Result<(), String> {
        Undo::default().ensure_dir(cwd, (uid, gid))
    }

    /// Cache disks mounted and secrets bound read-only for one command.
    fn prepare(undo: &mut Undo, r: &RunRequest) -> Result<(), String> {
        for Mount {
            device,
            target,
            fstype,
        } in &r.mounts
        {
            undo.mount(device, target, fstype, "")?;
        }
        if !r.secrets.is_empty() {
            mount_secrets(undo, &r.secrets, r.uid, r.gid)?;
        }
        Ok(())
    }

    /// Writes the secrets to a private tmpfs (on /run, itself a tmpfs) and binds each file
    /// read-only at its target; the staging mount is then detached, so only the bound
    /// files remain reachable.
    fn mount_secrets(
        undo: &mut Undo,
        secrets: &[SecretFile],
        uid: u32,
        gid: u32,
    ) -> Result<(), String> {
        let stage = "/run/kiln-secrets";
        let _ = fs::create_dir(stage);
        sys::mount("tmpfs", stage, "tmpfs", 0, "mode=700")?;
        let staged = stage_and_bind(undo, stage, secrets, uid, gid);
        let _ = sys::umount(stage);
        let _ = fs::remove_dir(stage);
        staged
    }

    fn stage_and_bind(
        undo: &mut Undo,
        stage: &str,
        secrets: &[SecretFile],
        uid: u32,
        gid: u32,
    ) -> Result<(), String> {
        for (i, s) in secrets.iter().enumerate() {
            let file = format!("{stage}/secret-{i}");
            fs::write(&file, &s.value).map_err(|e| format!("writing {file}: {e}"))?;
            std::os::unix::fs::chown(&file, Some(uid), Some(gid))
                .map_err(|e| format!("chown {file}: {e}"))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o400))
                .map_err(|e| format!("chmod {file}: {e}"))?;
            undo.ensure_file(&s.target)?;
            sys::bind(&file, &s.target, true)?;
            undo.mounted(s.target.clone());
        }
        Ok(())
    }
}

/// The few system calls std does not wrap, declared against the C library (linked
/// statically by the build script).
mod sys {
    use super::*;
    use std::os::raw::{c_char, c_int, c_long, c_ulong, c_void};

    pub const MS_RDONLY: c_ulong = 1;
    const MS_MOVE: c_ulong = 8192;
    const MNT_DETACH: c_int = 2;
    const RB_POWER_OFF: c_int = 0x4321_fedc;
    const EBUSY: i32 = 16;
    const EEXIST: i32 = 17;
    #[cfg(target_arch = "x86_64")]
    const SYS_FINIT_MODULE: c_long = 313;
    #[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
    const SYS_FINIT_MODULE: c_long = 273;

    extern "C" {
        #[link_name = "mount"]
        fn c_mount(
            source: *const c_char,
            target: *const c_char,
            fstype: *const c_char,
            flags: c_ulong,
            data: *const c_void,
        ) -> c_int;
        fn umount2(target: *const c_char, flags: c_int) -> c_int;
        #[link_name = "chroot"]
        fn c_chroot(path: *const c_char) -> c_int;
        fn syscall(number: c_long, ...) -> c_long;
        fn reboot(cmd: c_int) -> c_int;
        #[link_name = "sync"]
        fn c_sync();
    }

    const MS_REMOUNT: c_ulong = 32;
    const MS_BIND: c_ulong = 4096;
    const SIGKILL: c_int = 9;
    const ECHILD: i32 = 10;
    const AF_INET: c_int = 2;
    const SOCK_DGRAM: c_int = 2;
    const SIOCGIFFLAGS: c_ulong = 0x8913;
    const SIOCSIFFLAGS: c_ulong = 0x8914;
    const SIOCSIFADDR: c_ulong = 0x8916;
    const SIOCSIFNETMASK: c_ulong = 0x891c;
    const SIOCADDRT: c_ulong = 0x890b;
    const IFF_UP: i16 = 1;
    const RTF_UP: u16 = 1;
    const RTF_GATEWAY: u16 = 2;
    const POLLIN: i16 = 1;
    const POLLHUP: i16 = 16;
    const POLLERR: i16 = 8;
    const SYS_PIDFD_OPEN: c_long = 434;

    extern "C" {
        fn sethostname(name: *const c_char, len: usize) -> c_int;
        fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
        fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
        fn kill(pid: c_int, sig: c_int) -> c_int;
        fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
        #[link_name = "poll"]
        fn c_poll(fds: *mut PollFd, n: c_ulong, timeout: c_int) -> c_int;
    }

    #[repr(C)]
    struct PollFd {
        fd: c_int,
        events: i16,
        revents: i16,
    }

    /// `struct sockaddr_in`.
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct SockAddrIn {
        family: u16,
        port: u16,
        addr: [u8; 4],
        zero: [u8; 8],
    }

    impl SockAddrIn {
        fn new(addr: [u8; 4]) -> Self {
            SockAddrIn {
                family: AF_INET as u16,
                port: 0,
                addr,
                zero: [0; 8],
            }
        }
    }

    /// `struct ifreq` with the union as an address or the flags.
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        addr: SockAddrIn,
        pad: [u8; 8],
    }

    /// `struct rtentry`.
    #[repr(C)]
    struct RtEntry {
        pad1: c_ulong,
        dst: SockAddrIn,
        gateway: SockAddrIn,
        genmask: SockAddrIn,
        flags: u16,
        pad2: i16,
        pad3: c_ulong,
        pad4: *mut c_void,
        metric: i16,
        dev: *mut c_char,
        mtu: c_ulong,
        window: c_ulong,
        irtt: u16,
    }

    fn ifreq(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; 16],
            addr: SockAddrIn::new([0; 4]),
            pad: [0; 8],
        };
        req.name[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
        req
    }

    /// A socket for interface ioctls, closed on drop.
    fn inet_socket() -> Result<std::os::fd::OwnedFd, String> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call.
        let fd = unsafe { socket(AF_INET, SOCK_DGRAM, 0) };
        if fd < 0 {
            return Err(format!("socket: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
    }

    fn ioctl_ptr<T>(
        fd: &std::os::fd::OwnedFd,
        request: c_ulong,
        arg: &mut T,
        what: &str,
    ) -> Result<(), String> {
        use std::os::fd::AsRawFd;
        // SAFETY: `arg` is the structure the request expects, valid for the call.
        if unsafe { ioctl(fd.as_raw_fd(), request, arg as *mut T) } == 0 {
            Ok(())
        } else {
            Err(format!("{what}: {}", io::Error::last_os_error()))
        }
    }

    /// Sets IFF_UP on interface `name` (the loopback gets 127.0.0.1 from the kernel).
    pub fn interface_up(name: &str) -> Result<(), String> {
        let sock = inet_socket()?;
        let mut req = ifreq(name);
        ioctl_ptr(
            &sock,
            SIOCGIFFLAGS,
            &mut req,
            &format!("reading the flags of {name}"),
        )?;
        // The flags are the short at the start of the union, where the address family is.
        req.addr.family |= IFF_UP as u16;
        ioctl_ptr(
            &sock,
            SIOCSIFFLAGS,
            &mut req,
            &format!("bringing {name} up"),
        )
    }

    /// A static address, netmask and default route on interface `name`.
    pub fn configure_ipv4(
        name: &str,
        addr: [u8; 4],
        mask: [u8; 4],
        gateway: Option<[u8; 4]>,
    ) -> Result<(), String> {
        let sock = inet_socket()?;
        let mut req = ifreq(name);
        req.addr = SockAddrIn::new(addr);
        ioctl_ptr(
            &sock,
            SIOCSIFADDR,
            &mut req,
            &format!("setting the address of {name}"),
        )?;
        let mut req = ifreq(name);
        req.addr = SockAddrIn::new(mask);
        ioctl_ptr(
            &sock,
            SIOCSIFNETMASK,
            &mut req,
            &format!("setting the netmask of {name}"),
        )?;
        interface_up(name)?;
        let Some(gateway) = gateway else {
            return Ok(());
        };
        let mut route = RtEntry {
            pad1: 0,
            dst: SockAddrIn::new([0; 4]),
            gateway: SockAddrIn::new(gateway),
            genmask: SockAddrIn::new([0; 4]),
            flags: RTF_UP | RTF_GATEWAY,
            pad2: 0,
            pad3: 0,
            pad4: std::ptr::null_mut(),
            metric: 0,
            dev: std::ptr::null_mut(),
            mtu: 0,
            window: 0,
            irtt: 0,
        };
        ioctl_ptr(&sock, SIOCADDRT, &mut route, "adding the default route")
    }

    pub fn set_hostname(name: &str) -> Result<(), String> {
        // SAFETY: pointer and length of a live string.
        if unsafe { sethostname(name.as_ptr().cast(), name.len()) } == 0 {
            Ok(())
        } else {
            Err(format!(
                "sethostname {name}: {}",
                io::Error::last_os_error()
            ))
        }
    }

    /// Unmounts `target` (lazily when busy, so that shutdown can go on).
    pub fn umount(target: &str) -> Result<(), String> {
        let t = c(target)?;
        // SAFETY: valid NUL-terminated string.
        if unsafe { umount2(t.as_ptr(), 0) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // SAFETY: as above.
        if e.raw_os_error() == Some(EBUSY) && unsafe { umount2(t.as_ptr(), MNT_DETACH) } == 0 {
            return Ok(());
        }
        Err(format!("unmounting {target}: {e}"))
    }

    /// Binds `source` on the existing `target`, read-only when asked.
    pub fn bind(source: &str, target: &str, readonly: bool) -> Result<(), String> {
        let (s, t, none) = (c(source)?, c(target)?, c("")?);
        let call = |flags| {
            // SAFETY: valid NUL-terminated strings.
            unsafe {
                c_mount(
                    s.as_ptr(),
                    t.as_ptr(),
                    none.as_ptr(),
                    flags,
                    std::ptr::null(),
                )
            }
        };
        let mut rc = call(MS_BIND);
        if rc == 0 && readonly {
            rc = call(MS_BIND | MS_REMOUNT | MS_RDONLY);
        }
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "binding {source} on {target}: {}",
                io::Error::last_os_error()
            ))
        }
    }

    pub fn remount_read_only(target: &str) -> Result<(), String> {
        let (t, none) = (c(target)?, c("")?);
        // SAFETY: valid NUL-terminated strings.
        let rc = unsafe {
            c_mount(
                none.as_ptr(),
                t.as_ptr(),
                none.as_ptr(),
                MS_REMOUNT | MS_RDONLY,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "remounting {target} read-only: {}",
                io::Error::last_os_error()
            ))
        }
    }

    /// Kills every process but this one (PID 1) and reaps them all.
    pub fn kill_all() {
        // SAFETY: plain system calls; a null status pointer is allowed.
        unsafe {
            kill(-1, SIGKILL);
            while waitpid(-1, std::ptr::null_mut(), 0) >= 0
                || io::Error::last_os_error().raw_os_error() != Some(ECHILD)
            {}
        }
    }

    pub fn sync() {
        // SAFETY: no arguments.
        unsafe { c_sync() }
    }

    /// A descriptor that polls readable once process `pid` has exited.
    pub fn pidfd_open(pid: u32) -> Result<std::os::fd::OwnedFd, String> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain system call.
        let fd = unsafe { syscall(SYS_PIDFD_OPEN, pid as c_int, 0 as c_int) };
        if fd < 0 {
            return Err(format!("pidfd_open {pid}: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as c_int) })
    }

    /// Waits until one of the descriptors marked `true` is readable (or hung up); which
    /// ones are, in order.
    pub fn poll<const N: usize>(fds: &[(c_int, bool); N]) -> Result<[bool; N], String> {
        let mut polled: Vec<PollFd> = fds
            .iter()
            .map(|&(fd, on)| PollFd {
                fd: if on { fd } else { -1 },
                events: POLLIN,
                revents: 0,
            })
            .collect();
        loop {
            // SAFETY: a valid array of `N` pollfd structures.
            let rc = unsafe { c_poll(polled.as_mut_ptr(), N as c_ulong, -1) };
            if rc >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("poll: {e}"));
            }
        }
        let mut ready = [false; N];
        for (r, p) in ready.iter_mut().zip(&polled) {
            *r = p.fd >= 0 && p.revents & (POLLIN | POLLHUP | POLLERR) != 0;
        }
        Ok(ready)
    }

    fn c(s: &str) -> Result<CString, String> {
        CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
    }

    /// Mounts `source` on `target` (created when missing).
    pub fn mount(
        source: &str,
        target: &str,
        fstype: &str,
        flags: c_ulong,
        data: &str,
    ) -> Result<(), String> {
        raw_mount(source, target, fstype, flags, data)
            .map_err(|e| format!("mount {source} on {target} ({fstype}): {e}"))
    }

    /// Mounts a kernel filesystem; one already mounted there (EBUSY) is fine.
    pub fn mount_pseudo(fstype: &str, target: &str) -> Result<(), String> {
        match raw_mount(fstype, target, fstype, 0, "") {
            Err(e) if e.raw_os_error() != Some(EBUSY) => {
                Err(format!("mount {fstype} on {target}: {e}"))
            }
            _ => Ok(()),
        }
    }

    fn raw_mount(
        source: &str,
        target: &str,
        fstype: &str,
        flags: c_ulong,
        data: &str,
    ) -> io::Result<()> {
        let _ = fs::create_dir_all(target);
        let bad = |_| io::Error::from(io::ErrorKind::InvalidInput);
        let (s, t) = (
            CString::new(source).map_err(bad)?,
            CString::new(target).map_err(bad)?,
        );
        let (f, d) = (
            CString::new(fstype).map_err(bad)?,
            CString::new(data).map_err(bad)?,
        );
        // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
        let rc = unsafe { c_mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    pub fn mount_move(from: &str, to: &str) -> Result<(), String> {
        let (f, t) = (c(from)?, c(to)?);
        // SAFETY: valid NUL-terminated strings; null fstype and data are allowed with MS_MOVE.
        let rc = unsafe {
            c_mount(
                f.as_ptr(),
                t.as_ptr(),
                std::ptr::null(),
                MS_MOVE,
                std::ptr::null(),
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(format!(
                "moving the mount {from} to {to}: {}",
                io::Error::last_os_error()
            ))
        }
    }

    /// Lazily unmounts; the new init mounts its own.
    pub fn detach(target: &str) {
        if let Ok(t) = c(target) {
            // SAFETY: valid NUL-terminated string.
            unsafe { umount2(t.as_ptr(), MNT_DETACH) };
        }
    }

    pub fn chroot(path: &str) -> Result<(), String> {
        let p = c(path)?;
        // SAFETY: valid NUL-terminated string.
        if unsafe { c_chroot(p.as_ptr()) } == 0 {
            Ok(())
        } else {
            Err(format!("chroot {path}: {}", io::Error::last_os_error()))
        }
    }

    /// Loads a kernel module from its file; one already loaded is fine. A compressed
    /// module (`.ko.xz`, `.ko.zst`, `.ko.gz`, as trixie's kernel ships them) is handed to the
    /// kernel to decompress (`MODULE_INIT_COMPRESSED_FILE`, `CONFIG_MODULE_DECOMPRESS`).
    pub fn load_module(path: &str) -> Result<(), String> {
        let file = fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
        let params = c("")?;
        let flags = super::finit_module_flags(path);
        use std::os::fd::AsRawFd;
        // SAFETY: a valid open fd and a NUL-terminated (empty) parameter string.
        let rc = unsafe { syscall(SYS_FINIT_MODULE, file.as_raw_fd(), params.as_ptr(), flags) };
        match rc {
            0 => Ok(()),
            _ => match io::Error::last_os_error() {
                e if e.raw_os_error() == Some(EEXIST) => Ok(()),
                e => Err(format!("loading {path}: {e}")),
            },
        }
    }

    pub fn is_block_device(path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        fs::metadata(path).is_ok_and(|m| m.file_type().is_block_device())
    }

    /// Restarts the machine (after syncing); returns only when not PID 1.
    pub fn reboot_now() {
        const RB_AUTOBOOT: c_int = 0x0123_4567;
        // SAFETY: plain system calls without pointers.
        unsafe {
            c_sync();
            reboot(RB_AUTOBOOT);
        }
    }

    /// In a child about to exec a shell: a session of its own with the console (fd 0)
    /// as its controlling terminal, so the shell has job control and Ctrl-C.
    pub fn take_console() {
        extern "C" {
            fn setsid() -> c_int;
        }
        const TIOCSCTTY: c_ulong = 0x540e;
        // SAFETY: system calls on our own fd 0 with an integer argument.
        unsafe {
            setsid();
            ioctl(0, TIOCSCTTY, 1 as c_int);
        }
    }

    pub fn power_off() -> ! {
        // SAFETY: plain system calls without pointers.
        unsafe {
            c_sync();
            reboot(RB_POWER_OFF);
        }
        // Only reached when not PID 1 (a test run): nothing else to do.
        std::process::exit(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appliance_parameters_with_quotes() {
        use appliance::{AppParams, End};
        let p = AppParams::parse(
            "console=ttyS0 kiln.appliance appCmds='echo a:ls /' appArgs=\"-m 64 -v\" \
             appEnd=reboot appDebug appIp=10.0.2.15/24 appGw=10.0.2.2",
        );
        assert_eq!(p.cmds, ["echo a", "ls /"]);
        assert_eq!(p.args, ["-m", "64", "-v"]);
        assert_eq!(p.end, End::Reboot);
        assert!(p.debug);
        assert_eq!(p.ip, Some(([10, 0, 2, 15], [255, 255, 255, 0])));
        assert_eq!(p.gateway, Some([10, 0, 2, 2]));
        assert!(p.errors.is_empty());
        let d = AppParams::parse("appEnd=explode appIp=1.2.3/8 appArgs='a b' appArgs=c");
        assert_eq!(d.end, End::Halt);
        assert_eq!(d.errors.len(), 2, "{:?}", d.errors);
        assert_eq!(d.args, ["c"], "the last appArgs wins");
        assert!(Params::parse("kiln.appliance").appliance);
        assert_eq!(appliance::words("a 'b c'd \"\" e"), ["a", "b cd", "", "e"]);
    }

    #[test]
    fn compressed_modules_are_left_to_the_kernel_to_decompress() {
        assert_eq!(
            finit_module_flags("/lib/modules/6.1.0/kernel/fs/ext4/ext4.ko"),
            0
        );
        for ext in ["xz", "zst", "gz"] {
            assert_eq!(finit_module_flags(&format!("/lib/m/ext4.ko.{ext}")), 4);
        }
    }

    #[test]
    fn command_line_root_fields_and_last_ro_rw_wins() {
        let p = Params::parse(
            "console=ttyS0 root=PARTUUID=AB-1 ro rootfstype=ext4 rw init=/bin/sh quiet",
        );
        assert_eq!(p.root.as_deref(), Some("PARTUUID=AB-1"));
        assert_eq!(p.rootfstype.as_deref(), Some("ext4"));
        assert_eq!(p.init.as_deref(), Some("/bin/sh"));
        assert!(p.rw);
        assert_eq!(p.rootwait, None);
        let p = Params::parse("root=/dev/vda1 rw ro kiln.rootwait=3");
        assert!(!p.rw);
        assert_eq!(p.rootwait, Some(Duration::from_secs(3)));
        assert!(
            !Params::parse("root=/dev/vda1").rw,
            "read-only unless rw is given"
        );
        let p = Params::parse("root=/dev/vda rw kiln.agent kiln.hostname=step kiln.net=user");
        assert!(p.agent && p.net_user);
        assert_eq!(p.hostname.as_deref(), Some("step"));
        let p = Params::parse("root=/dev/vda kiln.agentx kiln.net=none");
        assert!(!p.agent && !p.net_user);
    }

    #[test]
    fn config_lines_and_errors() {
        let c = Config::parse(
            "# made by kiln\nmodule ext4 /lib/m/ext4.ko crc16 jbd2\nmodule crc16 /lib/m/crc16.ko\n\
             alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\npreload ext4 crc32c_generic\n",
        )
        .unwrap();
        assert_eq!(
            c.modules["ext4"],
            ("/lib/m/ext4.ko".into(), vec!["crc16".into(), "jbd2".into()])
        );
        assert_eq!(c.aliases.len(), 1);
        assert_eq!(c.preload, ["ext4", "crc32c_generic"]);
        let e = Config::parse("module ext4\n").unwrap_err();
        assert!(e.contains(":1:") && e.contains("module ext4"), "{e}");
        assert!(Config::parse("bogus x\n").is_err());
    }

    #[test]
    fn globs_match_like_modprobe() {
        let pci = "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00";
        assert!(glob_match("pci:v00001AF4d*sv*sd*bc*sc*i*", pci));
        assert!(!glob_match("pci:v00008086d*sv*sd*bc*sc*i*", pci));
        assert!(glob_match(
            "virtio:d00000002v*",
            "virtio:d00000002v00001AF4"
        ));
        assert!(!glob_match(
            "virtio:d00000002v*",
            "virtio:d00000001v00001AF4"
        ));
        assert!(glob_match("a?c", "abc") && !glob_match("a?c", "ac"));
        assert!(
            glob_match("scsi:t-0x0[07]*", "scsi:t-0x00")
                && !glob_match("scsi:t-0x0[07]*", "scsi:t-0x05")
        );
        assert!(glob_match("x[0-3]y", "x2y") && !glob_match("x[0-3]y", "x5y"));
        assert!(glob_match("x[!0-3]y", "x5y") && !glob_match("x[^0-3]y", "x1y"));
        assert!(glob_match("*", "") && glob_match("a*", "a") && !glob_match("a*b", "ab c"));
        assert!(glob_match("*a*b*c", "xxaxxbxxc") && !glob_match("*a*b*c", "xxaxxbxx"));
        assert!(!glob_match("[", "[") && !glob_match("abc", "ab"));
    }

    #[test]
    fn root_specs() {
        assert_eq!(
            RootSpec::parse("PARTUUID=ABC").unwrap(),
            RootSpec::PartUuid("abc".into())
        );
        assert_eq!(
            RootSpec::parse("LABEL=root").unwrap(),
            RootSpec::Label("root".into())
        );
        assert_eq!(
            RootSpec::parse("/dev/vda1").unwrap(),
            RootSpec::Path("/dev/vda1".into())
        );
        let e = RootSpec::parse("8:1").unwrap_err();
        assert!(e.contains("root=8:1"), "{e}");
    }

    #[test]
    fn gpt_entries_read_back_guid_and_name() {
        let mut header = [0u8; 92];
        header[..8].copy_from_slice(b"EFI PART");
        header[72..80].copy_from_slice(&2u64.to_le_bytes());
        header[80..84].copy_from_slice(&128u32.to_le_bytes());
        header[84..88].copy_from_slice(&128u32.to_le_bytes());
        assert_eq!(parse_gpt_header(&header), Some((2, 128, 128)));
        header[0] = b'X';
        assert_eq!(parse_gpt_header(&header), None);

        let mut entry = [0u8; 128];
        // 54e461f9-cb65-4219-98a1-5e9666144124, stored mixed-endian.
        entry[16..32].copy_from_slice(&[
            0xf9, 0x61, 0xe4, 0x54, 0x65, 0xcb, 0x19, 0x42, 0x98, 0xa1, 0x5e, 0x96, 0x66, 0x14,
            0x41, 0x24,
        ]);
        for (i, c) in "root".encode_utf16().enumerate() {
            entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
        }
        let got = parse_gpt_entries(&entry, 128);
        assert_eq!(got[0].uuid, "54e461f9-cb65-4219-98a1-5e9666144124");
        assert_eq!(got[0].name, "root");
        let spec = RootSpec::PartUuid("54e461f9-cb65-4219-98a1-5e9666144124".into());
        assert!(partition_matches(&spec, Some(&got), "none", 1));
        assert!(!partition_matches(&spec, Some(&got), "none", 2));
        assert!(partition_matches(
            &RootSpec::PartLabel("root".into()),
            Some(&got),
            "none",
            1
        ));
    }

    #[test]
    fn ext_superblock_identity() {
        let mut sb = [0u8; 256];
        assert_eq!(parse_ext_superblock(&sb), None);
        sb[0x38] = 0x53;
        sb[0x39] = 0xef;
        sb[0x68..0x78].copy_from_slice(&[
            0x0a, 0x0b, 0x0c, 0x0d, 1, 2, 3, 4, 5, 6, 0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5,
        ]);
        sb[0x78..0x7c].copy_from_slice(b"root");
        let got = parse_ext_superblock(&sb).unwrap();
        assert_eq!(got.uuid, "0a0b0c0d-0102-0304-0506-a0a1a2a3a4a5");
        assert_eq!(got.label, "root");
        assert!(superblock_matches(&RootSpec::Uuid(got.uuid.clone()), &got));
        assert!(!superblock_matches(&RootSpec::Label("boot".into()), &got));
    }
}
