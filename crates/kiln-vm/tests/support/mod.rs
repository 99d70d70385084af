//! A tiny bootable guest for the integration tests, made without building a
//! Debian image: Debian's kernel (downloaded once with `apt-get download` and
//! cached under CARGO_TARGET_TMPDIR) plus an initramfs written here in cpio
//! "newc" format holding the host's static busybox, the virtio modules and an
//! /init that serves HTTP on port 80 and echoes TCP on port 7777.
//!
//! Kernel command-line switches understood by /init:
//! - `kiln.nonet`: load no network driver (the guest never answers on the network);
//! - `kiln.disk`: wait for /dev/vda and write [`DISK_MARKER`] at byte 512.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use kiln_image::cpio::Kind;
use kiln_vm::{Accel, Boot, VmConfig};

/// Printed by /init once its services run.
pub const READY: &str = "KILN-READY";
/// Printed by /init after writing to /dev/vda.
pub const DISK_WRITTEN: &str = "KILN-DISK-WRITTEN";
/// What /init writes at byte 512 of /dev/vda.
pub const DISK_MARKER: &[u8] = b"kiln-guest-was-here";
/// The text of the page served on port 80.
pub const PAGE_TEXT: &str = "kiln test page";
/// An unused guest port (nothing listens there).
pub const CLOSED_PORT: u16 = 81;
pub const HTTP_PORT: u16 = 80;
pub const ECHO_PORT: u16 = 7777;

/// The modules /init loads (it loads them in the order their `depends=` give).
const MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "failover",
    "net_failover",
    "virtio_net",
];
/// The network modules, loaded only without `kiln.nonet`.
const NET_MODULES: &[&str] = &["failover", "net_failover", "virtio_net"];

const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /lib/modules/order.base); do insmod /lib/modules/$m.ko; done
wait_for() { for i in $(seq 1 50); do [ -e "$1" ] && return 0; sleep 0.1; done; echo "KILN-MISSING $1"; }
if ! grep -q kiln.nonet /proc/cmdline; then
  for m in $(cat /lib/modules/order.net); do insmod /lib/modules/$m.ko; done
  wait_for /sys/class/net/eth0
  ip link set lo up
  ip addr add 10.0.2.15/24 dev eth0
  ip link set eth0 up
  httpd -p 80 -h /www
  nc -ll -p 7777 -e cat &
fi
if grep -q kiln.disk /proc/cmdline; then
  wait_for /dev/vda
  printf kiln-guest-was-here | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null
  echo KILN-DISK-WRITTEN
fi
echo KILN-READY
exec sleep 2147483647
"#;

/// The guest's kernel and initramfs.
pub struct Guest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

/// The guest, prepared once per test process.
pub fn guest() -> &'static Guest {
    static GUEST: OnceLock<Guest> = OnceLock::new();
    GUEST.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-vm-guest");
        fs::create_dir_all(&cache).expect("create the guest cache directory");
        let kernel_dir = kernel_dir(&cache);
        let initrd = cache.join("initrd.cpio");
        write_atomically(&initrd, &initramfs(&kernel_dir));
        Guest {
            kernel: kernel_dir.join("vmlinuz"),
            initrd,
        }
    })
}

/// A VM booting the guest under TCG, small and quick to stop.
pub fn kernel_config(cmdline_extra: &str) -> VmConfig {
    let guest = guest();
    let mut cfg = VmConfig::new(Boot::Kernel {
        kernel: guest.kernel.clone(),
        initrd: Some(guest.initrd.clone()),
        cmdline: format!("console=ttyS0 quiet {cmdline_extra}"),
    });
    cfg.accel = Some(Accel::Tcg);
    cfg.memory_mb = 256;
    cfg.cpus = 1;
    cfg.shutdown_grace = Duration::from_secs(1);
    cfg
}

/// True when no process (not even a zombie) has this pid.
pub fn process_gone(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// A sparse raw disk of `bytes` zeros.
pub fn zero_disk(path: &Path, bytes: u64) {
    let file = fs::File::create(path).expect("create the disk image");
    file.set_len(bytes).expect("size the disk image");
}

/// The cached kernel directory (vmlinuz + the guest's modules), taken from [`kernel_tree`].
fn kernel_dir(cache: &Path) -> PathBuf {
    let dir = cache.join("kernel");
    if dir.join("vmlinuz").is_file() {
        return dir;
    }
    let tree = kernel_tree();
    let staging = tempfile::tempdir_in(cache).expect("create a staging directory");
    let out = staging.path().join("kernel");
    fs::create_dir(&out).expect("create the kernel directory");
    let vmlinuz = find_file(&tree.join("boot"), |name| name.starts_with("vmlinuz-"))
        .unwrap_or_else(|| panic!("{} has no /boot/vmlinuz-*", tree.display()));
    fs::copy(&vmlinuz, out.join("vmlinuz")).expect("copy vmlinuz");
    for module in MODULES {
        let file = format!("{module}.ko");
        let found =
            find_file(&tree.join("lib/modules"), |name| name == file).unwrap_or_else(|| {
                panic!("the kernel has no {file} (compressed modules are not supported)")
            });
        fs::copy(&found, out.join(&file)).expect("copy a module");
    }
    // Another test process may have won the race; its copy is as good.
    if fs::rename(&out, &dir).is_err() && !dir.join("vmlinuz").is_file() {
        panic!("could not move the kernel into {}", dir.display());
    }
    dir
}

/// `linux-image-amd64`'s current dependency, e.g. `linux-image-6.1.0-50-amd64`.
fn kernel_package() -> String {
    let output = Command::new("apt-cache")
        .args(["depends", "linux-image-amd64"])
        .output()
        .expect("run apt-cache (the tests need Debian's apt)");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!("apt-cache knows no linux-image-amd64 dependency: run `apt-get update`")
        })
}

fn run(cmd: &mut Command) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    assert!(
        output.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn find_file(dir: &Path, wanted: impl Fn(&str) -> bool + Copy) -> Option<PathBuf> {
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let file_type = entry.file_type().ok()?;
        if file_type.is_dir() {
            if let Some(found) = find_file(&path, wanted) {
                return Some(found);
            }
        } else if file_type.is_file() && entry.file_name().to_str().is_some_and(wanted) {
            return Some(path);
        }
    }
    None
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let dir = path.parent().expect("a parent directory");
    let mut tmp = tempfile::NamedTempFile::new_in(dir).expect("create a temporary file");
    tmp.write_all(bytes).expect("write the temporary file");
    tmp.persist(path).expect("rename the temporary file");
}

/// The initramfs: busybox, modules, /init, a web root, /dev/console.
fn initramfs(kernel_dir: &Path) -> Vec<u8> {
    let busybox = fs::read("/bin/busybox")
        .expect("read /bin/busybox: install it with `apt-get install busybox-static`");
    assert!(
        is_static_elf(&busybox),
        "/bin/busybox is dynamically linked: install `busybox-static` instead of `busybox`"
    );
    let mut cpio = Cpio(kiln_image::cpio::Writer::new(Vec::new(), 0));
    for dir in [
        "bin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "www",
        "lib",
        "lib/modules",
    ] {
        cpio.dir(dir);
    }
    cpio.char_device("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.file("init", 0o755, INIT.as_bytes());
    let page = format!("<html><body><h1>{PAGE_TEXT}</h1></body></html>\n");
    cpio.file("www/index.html", 0o644, page.as_bytes());
    let mut depends = Vec::new();
    for module in MODULES {
        let name = format!("{module}.ko");
        let bytes = fs::read(kernel_dir.join(&name)).expect("read a cached module");
        depends.push((*module, module_depends(&bytes)));
        cpio.file(&format!("lib/modules/{name}"), 0o644, &bytes);
    }
    let order = load_order(&depends);
    let (net, base): (Vec<&str>, Vec<&str>) = order.iter().partition(|m| NET_MODULES.contains(m));
    cpio.file("lib/modules/order.base", 0o644, base.join("\n").as_bytes());
    cpio.file("lib/modules/order.net", 0o644, net.join("\n").as_bytes());
    cpio.0.finish().expect("writing to memory").0
}

/// kiln's own newc writer, with the three kinds of entry the guest needs.
struct Cpio(kiln_image::cpio::Writer<Vec<u8>>);

impl Cpio {
    fn dir(&mut self, name: &str) {
        self.add(name, 0o755, Kind::Dir);
    }

    fn file(&mut self, name: &str, perm: u32, data: &[u8]) {
        self.add(name, perm, Kind::File(data.to_vec()));
    }

    fn char_device(&mut self, name: &str, major: u32, minor: u32) {
        self.add(name, 0o600, Kind::CharDevice(major, minor));
    }

    fn add(&mut self, name: &str, perm: u32, kind: Kind) {
        self.0.add(name, perm, &kind).expect("writing to memory");
    }
}

/// The `depends=` list from a module's .modinfo section.
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let value = &ko[at + key.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_string)
        .collect()
}

/// Modules ordered so that each comes after those it depends on.
fn load_order<'a>(depends: &[(&'a str, Vec<String>)]) -> Vec<&'a str> {
    let mut order: Vec<&str> = Vec::new();
    while order.len() < depends.len() {
        let before = order.len();
        for (module, deps) in depends {
            if !order.contains(module) && deps.iter().all(|d| order.contains(&d.as_str())) {
                order.push(module);
            }
        }
        assert!(
            order.len() > before,
            "module dependencies outside the set or circular: {depends:?}"
        );
    }
    order
}

/// True when the ELF has no program interpreter (PT_INTERP).
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&elf[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    assert!(
        elf.starts_with(b"\x7fELF\x02\x01"),
        "/bin/busybox is not a 64-bit LE ELF"
    );
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let p_type = u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap());
        p_type != 3
    })
}

/// Debian's kernel package extracted whole (cached), as the QEMU sandbox's own kernel
/// layer is: `/boot/vmlinuz-<release>` and `/lib/modules/<release>/` without the tables
/// depmod writes when the package is installed (kiln's initramfs writer makes them).
pub fn kernel_tree() -> &'static Path {
    static TREE: OnceLock<PathBuf> = OnceLock::new();
    TREE.get_or_init(|| {
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-vm-guest");
        fs::create_dir_all(&cache).expect("create the guest cache directory");
        let dir = cache.join("kernel-tree");
        if dir.join("boot").is_dir() {
            return dir;
        }
        let staging = tempfile::tempdir_in(&cache).expect("create a staging directory");
        let package = kernel_package();
        run(Command::new("apt-get")
            .args(["download", &package])
            .current_dir(staging.path()));
        let deb = fs::read_dir(staging.path())
            .expect("list the download directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .unwrap_or_else(|| panic!("apt-get download {package} produced no .deb"));
        let tree = staging.path().join("tree");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
        if fs::rename(&tree, &dir).is_err() && !dir.join("boot").is_dir() {
            panic!("could not move the kernel tree into {}", dir.display());
        }
        dir
    })
}

/// A root filesystem of the host's static busybox: every applet linked, users root and
/// builder (1000), and nothing else (no /proc, /dev, /tmp: the agent must cope).
pub fn busybox_tree(dest: &Path) {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "/bin/busybox is missing: apt-get install busybox-static"
    );
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "root"] {
        fs::create_dir_all(dest.join(d)).expect("mkdir");
    }
    fs::copy(busybox, dest.join("bin/busybox")).expect("copy busybox");
    let list = Command::new(busybox)
        .arg("--list-full")
        .output()
        .expect("busybox --list-full");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        let link = dest.join(applet);
        if applet != "bin/busybox" && !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link).expect("link an applet");
        }
    }
    fs::write(
        dest.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/builder:/bin/sh\n",
    )
    .unwrap();
    fs::write(dest.join("etc/group"), "root:x:0:\nbuilder:x:1000:\n").unwrap();
}
