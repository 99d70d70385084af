//! The boot initramfs kiln writes for `--boot kernel` images (`IMAGE.boot/kiln-initrd.img`):
//! [kiln-init](kiln_init) as `/init`, the root filesystem's modules and the disk and
//! network drivers a VM may need, each with its dependencies, taken from the image's own
//! `/lib/modules/<release>`, and the alias table that tells kiln-init which driver goes
//! with which device.
//!
//! A distribution initramfs starts udev and waits for it to settle before mounting the
//! root; under an emulated CPU that is seconds of every boot. kiln-init loads only the
//! drivers of the devices present and hands over to the image's init in well under one.
//! The image's own initrd is still extracted beside it (`initrd.img`).

use crate::cpio::{Kind, Writer};
use crate::ImageError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// Drivers kiln-init may load, as paths under `kernel/` (a trailing `/` takes a whole
/// directory): virtio (PCI transport, block, SCSI, network), SATA/IDE as QEMU and gem5
/// emulate them, NVMe, SCSI disks, and virtio-serial (the QEMU sandbox's agent port). Only
/// those whose device is present get loaded.
pub const DRIVERS: [&str; 10] = [
    "drivers/virtio/",
    "drivers/block/virtio_blk.ko",
    "drivers/scsi/virtio_scsi.ko",
    "drivers/scsi/sd_mod.ko",
    "drivers/ata/ahci.ko",
    "drivers/ata/ata_piix.ko",
    "drivers/ata/ata_generic.ko",
    "drivers/nvme/host/nvme.ko",
    "drivers/net/virtio_net.ko",
    "drivers/char/virtio_console.ko",
];

/// Root filesystems kiln-init can mount, loaded before it looks for the root.
pub const FILESYSTEMS: [&str; 1] = ["ext4"];

/// The Debian architecture kiln-init is built for (the machine kiln runs on), or `None`
/// for one this module does not know.
pub fn init_architecture() -> Option<&'static str> {
    debian_arch(std::env::consts::ARCH)
}

/// Debian's name for a Rust `target_arch`.
fn debian_arch(rust_arch: &str) -> Option<&'static str> {
    match rust_arch {
        "x86_64" => Some("amd64"),
        "aarch64" => Some("arm64"),
        "riscv64" => Some("riscv64"),
        _ => None,
    }
}

/// What went into an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootInitrd {
    /// Modules shipped (dependencies included).
    pub modules: usize,
    pub bytes: u64,
}

/// Writes the boot initramfs for kernel `release` of `rootfs` to `dest` (through a
/// temporary file renamed into place). A kernel without a module tree gets kiln-init
/// alone: its drivers must then be built in.
pub fn write(
    rootfs: &Path,
    release: &str,
    dest: &Path,
    epoch: i64,
) -> Result<BootInitrd, ImageError> {
    let scratch = tempfile::tempdir().map_err(|e| ImageError::io(std::env::temp_dir(), e))?;
    let (plan, modules_dir) = plan_for(rootfs, release, &DRIVERS, &FILESYSTEMS, scratch.path())?;
    let tmp = dest.with_extension("kiln-tmp");
    let file = fs::File::create(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
    let written =
        write_archive(file, &plan, &modules_dir, release, epoch).and_then(|(file, bytes)| {
            file.sync_all().map_err(|e| ImageError::io(&tmp, e))?;
            fs::rename(&tmp, dest).map_err(|e| ImageError::io(dest, e))?;
            Ok(bytes)
        });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    Ok(BootInitrd {
        modules: plan.modules.len(),
        bytes: written?,
    })
}

/// The modules of kernel `release` in `rootfs` that kiln-init loads: the drivers, and the
/// `filesystems` with their soft dependencies; and the directory their paths are relative
/// to (in `scratch` when the tree's kernel lacks depmod's tables and they are made there).
pub fn plan_for(
    rootfs: &Path,
    release: &str,
    drivers: &[&str],
    filesystems: &[&str],
    scratch: &Path,
) -> Result<(Plan, PathBuf), ImageError> {
    let mut modules_dir = rootfs.join("lib/modules").join(release);
    // A kernel package unpacked rather than installed (as the QEMU sandbox's kernel is)
    // has its modules but not the tables depmod writes when it is installed.
    if !modules_dir.join("modules.dep").is_file() && modules_dir.join("kernel").is_dir() {
        modules_dir = crate::tools::depmod::tables_beside(&modules_dir, release, scratch)?;
    }
    let plan = if modules_dir.join("modules.dep").is_file() {
        Plan::select(&read_tables(&modules_dir)?, drivers, filesystems)
    } else {
        Plan::default()
    };
    Ok((plan, modules_dir))
}

fn write_archive(
    file: fs::File,
    plan: &Plan,
    modules_dir: &Path,
    release: &str,
    epoch: i64,
) -> Result<(fs::File, u64), ImageError> {
    let io = |e| ImageError::io(modules_dir, e);
    let mut w = Writer::new(std::io::BufWriter::new(file), epoch);
    for dir in ["dev", "etc", "proc", "root", "sys"] {
        w.add(dir, 0o755, &Kind::Dir).map_err(io)?;
    }
    // The kernel opens it as init's stdin/stdout/stderr before /dev is mounted.
    w.add("dev/console", 0o600, &Kind::CharDevice(5, 1))
        .map_err(io)?;
    w.add(
        kiln_init::CONFIG_PATH,
        0o644,
        &Kind::File(plan.config(release).into_bytes()),
    )
    .map_err(io)?;
    w.add("init", 0o755, &Kind::File(kiln_init::BINARY.to_vec()))
        .map_err(io)?;
    let mut made = BTreeSet::new();
    for rel in plan.modules.values() {
        let inside = format!("lib/modules/{release}/{rel}");
        for dir in parents(&inside) {
            if made.insert(dir.clone()) {
                w.add(&dir, 0o755, &Kind::Dir).map_err(io)?;
            }
        }
        let src = modules_dir.join(rel);
        let data = fs::read(&src).map_err(|e| ImageError::io(&src, e))?;
        w.add(&inside, 0o644, &Kind::File(data)).map_err(io)?;
    }
    let (buffered, bytes) = w.finish().map_err(io)?;
    let file = buffered.into_inner().map_err(|e| io(e.into_error()))?;
    Ok((file, bytes))
}

/// `a`, `a/b` for `a/b/c`.
fn parents(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..parts.len()).map(|n| parts[..n].join("/")).collect()
}

/// The module tables of one kernel, as text.
#[derive(Debug, Default)]
pub struct Tables {
    /// `modules.dep`.
    pub dep: String,
    /// `modules.alias`.
    pub alias: String,
    /// `modules.softdep` (may be empty).
    pub softdep: String,
}

fn read_tables(dir: &Path) -> Result<Tables, ImageError> {
    let read = |name: &str, required: bool| -> Result<String, ImageError> {
        let path: PathBuf = dir.join(name);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(ImageError::io(&path, e)),
        }
    };
    Ok(Tables {
        dep: read("modules.dep", true)?,
        alias: read("modules.alias", false)?,
        softdep: read("modules.softdep", false)?,
    })
}

/// What goes into the initramfs: modules by name with their paths relative to the
/// release's module directory, the config's `module`/`alias`/`preload` lines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// name → path relative to `/lib/modules/<release>/`.
    pub modules: BTreeMap<String, String>,
    /// name → dependencies in load order.
    pub deps: BTreeMap<String, Vec<String>>,
    /// (glob, name) for the drivers.
    pub aliases: Vec<(String, String)>,
    /// Loaded before the root is looked for: soft dependencies, then the filesystems.
    pub preload: Vec<String>,
}

/// A module path without the compression suffix its kernel ships it with (`ext4.ko.xz`
/// is `ext4.ko`), so that [`DRIVERS`] names modules of any kernel.
fn without_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext).filter(|p| p.ends_with(".ko")))
        .unwrap_or(path)
}

impl Plan {
    /// Chooses the modules from a kernel's tables. Pure.
    pub fn from_tables(t: &Tables) -> Plan {
        Plan::select(t, &DRIVERS, &FILESYSTEMS)
    }

    /// `drivers` (paths under `kernel/` as in [`DRIVERS`]) and `filesystems` to preload
    /// (none for an appliance, whose root is the initramfs). Pure.
    pub fn select(t: &Tables, drivers: &[&str], filesystems: &[&str]) -> Plan {
        let dep = parse_dep(&t.dep);
        let aliases = parse_alias(&t.alias);
        let mut plan = Plan::default();
        let drivers: Vec<&String> = dep
            .keys()
            .filter(|name| {
                let path = without_compression(&dep[*name].0);
                drivers.iter().any(|d| match d.strip_suffix('/') {
                    Some(dir) => path.starts_with(&format!("kernel/{dir}/")),
                    None => path == format!("kernel/{d}"),
                })
            })
            .collect();
        for name in &drivers {
            plan.add_with_deps(name, &dep);
        }
        plan.aliases = aliases
            .iter()
            .filter(|(_, name)| drivers.contains(&name))
            .cloned()
            .collect();
        for &fs in filesystems {
            for soft in soft_pre(&t.softdep, fs) {
                // A soft dependency names a module or an alias (`crc32c`): every module
                // providing it, as modprobe would consider.
                let providers = aliases
                    .iter()
                    .filter(|(glob, _)| glob == &soft)
                    .map(|(_, name)| name.clone())
                    .chain(dep.contains_key(&soft).then(|| soft.clone()));
                for name in providers.collect::<BTreeSet<_>>() {
                    if plan.add_with_deps(&name, &dep) {
                        plan.preload.push(name);
                    }
                }
            }
            if plan.add_with_deps(fs, &dep) {
                plan.preload.push(fs.to_string());
            }
        }
        plan
    }

    /// Adds `name` and its dependencies; false when the kernel has no such module file
    /// (built in, or absent).
    fn add_with_deps(&mut self, name: &str, dep: &BTreeMap<String, (String, Vec<String>)>) -> bool {
        let Some((path, deps)) = dep.get(name) else {
            return false;
        };
        self.modules.insert(name.to_string(), path.clone());
        self.deps.insert(name.to_string(), deps.clone());
        for d in deps {
            if let Some((p, dd)) = dep.get(d) {
                self.modules.insert(d.clone(), p.clone());
                self.deps.insert(d.clone(), dd.clone());
            }
        }
        true
    }

    /// kiln-init's configuration text.
    pub fn config(&self, release: &str) -> String {
        let mut c = String::from("# kiln-init configuration, written by kiln\n");
        for (name, path) in &self.modules {
            let _ = write!(c, "module {name} /lib/modules/{release}/{path}");
            for d in &self.deps[name] {
                let _ = write!(c, " {d}");
            }
            c.push('\n');
        }
        for (glob, name) in &self.aliases {
            let _ = writeln!(c, "alias {glob} {name}");
        }
        if !self.preload.is_empty() {
            let _ = writeln!(c, "preload {}", self.preload.join(" "));
        }
        c
    }
}

/// A module's name from its file: `kernel/arch/x86/crypto/crc32c-intel.ko` → `crc32c_intel`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep`: name → (path, dependencies in load order). The file lists a module's
/// dependencies so that the last one must be loaded first.
fn parse_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (path, deps) = line.split_once(':')?;
            let path = path.trim();
            let deps = deps.split_whitespace().rev().map(module_name).collect();
            Some((module_name(path), (path.to_string(), deps)))
        })
        .collect()
}

/// `modules.alias`: (glob, module name), in file order.
fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|line| {
            let mut w = line.split_whitespace();
            (w.next()? == "alias").then_some(())?;
            Some((w.next()?.to_string(), module_name(w.next()?)))
        })
        .collect()
}

/// The `pre:` soft dependencies of `module` from `modules.softdep`.
fn soft_pre(text: &str, module: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut w = line.split_whitespace();
        if w.next() != Some("softdep") || w.next().map(module_name).as_deref() != Some(module) {
            continue;
        }
        let mut in_pre = false;
        for word in w {
            match word {
                "pre:" => in_pre = true,
                "post:" => in_pre = false,
                name if in_pre => out.push(name.to_string()),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> Tables {
        Tables {
            dep: "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
                  kernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\nkernel/fs/jbd2/jbd2.ko:\n\
                  kernel/crypto/crc32c_generic.ko:\nkernel/arch/x86/crypto/crc32c-intel.ko:\n\
                  kernel/drivers/virtio/virtio.ko:\nkernel/drivers/virtio/virtio_ring.ko:\n\
                  kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                  kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio_ring.ko kernel/drivers/virtio/virtio.ko\n\
                  kernel/drivers/gpu/drm/drm.ko:\nkernel/sound/core/snd.ko:\n"
                .into(),
            alias: "# Aliases extracted from modules themselves.\n\
                    alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n\
                    alias virtio:d00000002v* virtio_blk\n\
                    alias crypto-crc32c crc32c_generic\nalias crc32c crc32c_generic\n\
                    alias crc32c crc32c_intel\nalias pci:v*d*sv*sd*bc03sc*i* drm\n"
                .into(),
            softdep: "# Soft dependencies\nsoftdep ext4 pre: crc32c\n".into(),
        }
    }

    #[test]
    fn architecture_names() {
        assert_eq!(debian_arch("x86_64"), Some("amd64"));
        assert_eq!(debian_arch("aarch64"), Some("arm64"));
        assert_eq!(debian_arch("mips"), None);
        assert!(
            init_architecture().is_some(),
            "kiln is built for a known architecture"
        );
    }

    #[test]
    fn compressed_modules_are_chosen_like_plain_ones() {
        let plain = Plan::from_tables(&tables());
        let mut xz = tables();
        xz.dep = xz.dep.replace(".ko", ".ko.xz");
        let compressed = Plan::from_tables(&xz);
        let names = |p: &Plan| p.modules.iter().map(|m| m.0.clone()).collect::<Vec<_>>();
        assert_eq!(names(&compressed), names(&plain));
        assert!(names(&compressed).contains(&"virtio_blk".to_string()));
        assert_eq!(without_compression("kernel/a.ko.zst"), "kernel/a.ko");
        assert_eq!(without_compression("kernel/a.xz"), "kernel/a.xz");
    }

    #[test]
    fn drivers_filesystem_and_dependencies_are_chosen() {
        let plan = Plan::from_tables(&tables());
        let names: Vec<&str> = plan.modules.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "crc16",
                "crc32c_generic",
                "crc32c_intel",
                "ext4",
                "jbd2",
                "mbcache",
                "virtio",
                "virtio_blk",
                "virtio_pci",
                "virtio_ring"
            ]
        );
        assert_eq!(
            plan.modules["crc32c_intel"],
            "kernel/arch/x86/crypto/crc32c-intel.ko"
        );
        // Dependencies load in reverse modules.dep order.
        assert_eq!(plan.deps["ext4"], ["jbd2", "mbcache", "crc16"]);
        assert_eq!(plan.deps["virtio_pci"], ["virtio", "virtio_ring"]);
        assert_eq!(plan.preload, ["crc32c_generic", "crc32c_intel", "ext4"]);
        let globs: Vec<&str> = plan.aliases.iter().map(|a| a.0.as_str()).collect();
        assert_eq!(
            globs,
            ["pci:v00001AF4d*sv*sd*bc*sc*i*", "virtio:d00000002v*"],
            "no drm alias"
        );
    }

    #[test]
    fn config_text_is_what_kiln_init_reads() {
        let text = Plan::from_tables(&tables()).config("6.1.0-9-amd64");
        assert!(text.contains(
            "module ext4 /lib/modules/6.1.0-9-amd64/kernel/fs/ext4/ext4.ko jbd2 mbcache crc16\n"
        ));
        assert!(text.contains("alias virtio:d00000002v* virtio_blk\n"));
        assert!(text.ends_with("preload crc32c_generic crc32c_intel ext4\n"));
    }

    #[test]
    fn built_in_filesystem_and_no_tables() {
        let mut t = tables();
        t.dep = "kernel/drivers/block/virtio_blk.ko:\n".into();
        let plan = Plan::from_tables(&t);
        assert!(plan.preload.is_empty(), "ext4 built in: nothing to preload");
        assert_eq!(plan.modules.len(), 1);
        assert_eq!(Plan::from_tables(&Tables::default()), Plan::default());
    }

    #[test]
    fn archive_holds_init_config_console_and_modules() {
        let dir = tempfile::tempdir().unwrap();
        let release = "6.1.0-9-amd64";
        let mods = dir.path().join("root/lib/modules").join(release);
        let t = tables();
        for line in t.dep.lines() {
            let path = mods.join(line.split(':').next().unwrap());
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, format!("module at {}", path.display())).unwrap();
        }
        fs::write(mods.join("modules.dep"), &t.dep).unwrap();
        fs::write(mods.join("modules.alias"), &t.alias).unwrap();
        fs::write(mods.join("modules.softdep"), &t.softdep).unwrap();
        let dest = dir.path().join("kiln-initrd.img");
        let got = write(&dir.path().join("root"), release, &dest, 1_000).unwrap();
        assert_eq!(got.modules, 10);
        let bytes = fs::read(&dest).unwrap();
        assert_eq!(got.bytes as usize, bytes.len());
        let text = String::from_utf8_lossy(&bytes);
        for name in [
            "dev/console",
            "etc/kiln-init.conf",
            "init",
            "lib/modules/6.1.0-9-amd64/kernel/fs/ext4/ext4.ko",
            "TRAILER!!!",
        ] {
            assert!(text.contains(&format!("{name}\0")), "{name} missing");
        }
        assert!(!text.contains("drm.ko"));
        let again = dir.path().join("again.img");
        write(&dir.path().join("root"), release, &again, 1_000).unwrap();
        assert_eq!(fs::read(&again).unwrap(), bytes, "deterministic");

        let bare = write(&dir.path().join("no-modules"), release, &again, 1_000).unwrap();
        assert_eq!(
            bare.modules, 0,
            "a kernel without modules gets kiln-init alone"
        );
    }
}
