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
//! On failure it says why on the console, lists the block devices it saw, and powers
//! the machine off, so a VM under test stops at once instead of hanging in a panic.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

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
    let root = params
        .root
        .as_deref()
        .ok_or("no root= on the kernel command line")?;
    let spec = RootSpec::parse(root)?;
    let wait = params.rootwait.unwrap_or(ROOT_WAIT);
    // The filesystem modules load on a second thread while the disk drivers load and
    // the disk is probed: module loading is mostly CPU work, and VMs have two CPUs.
    let (device, modules) = std::thread::scope(|s| {
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
        (device, modules)
    });
    let device = device?;
    let fstype = params.rootfstype.as_deref().unwrap_or("ext4");
    let flags = if params.rw { 0 } else { sys::MS_RDONLY };
    let data = params.rootflags.as_deref().unwrap_or("");
    sys::mount(&device.to_string_lossy(), NEW_ROOT, fstype, flags, data)
        .map_err(|e| format!("the root {root}: {e}"))?;
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
    eprintln!(
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
            eprintln!("kiln-init: {name}: {e}");
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
        fn sync();
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

    pub fn power_off() -> ! {
        // SAFETY: plain system calls without pointers.
        unsafe {
            sync();
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
