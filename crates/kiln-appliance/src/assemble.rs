//! The appliance's initrd: the closure's files as they are in the layer (owners, modes,
//! link targets), kiln-init as `/init` with its module configuration, the virtio (and
//! other VM) drivers of the layer's kernel, `/dev/console`, empty mount points, and the
//! `/app` scripts. Every time is one epoch, so the same inputs give the same archive.

use crate::root::host;
use kiln_image::cpio::{clamp_time, Entry, Kind};
use kiln_image::ImageError;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The drivers an appliance VM needs (paths under the kernel's `kernel/` directory):
/// virtio's PCI transport, network, block and console; kiln-init loads those whose
/// device is present.
pub const DRIVERS: [&str; 4] = [
    "drivers/virtio/",
    "drivers/net/virtio_net.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
];

/// What goes into the appliance besides the layer's files.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// The command line `/app/run` executes (with `appArgs` appended).
    pub run: String,
    /// Shell commands of `/app/prerun` and `/app/postrun`, when given.
    pub prerun: Option<String>,
    pub postrun: Option<String>,
    /// The release of the kernel whose drivers are shipped (from the layer's
    /// /lib/modules), if any.
    pub release: Option<String>,
    /// Every entry's time.
    pub mtime: i64,
}

/// The archive's entries and what they add up to.
#[derive(Debug, Clone, Default)]
pub struct Assembled {
    pub entries: Vec<Entry>,
    /// Regular files and their bytes (the layer's, kiln-init and modules included).
    pub files: usize,
    pub bytes: u64,
    pub modules: usize,
}

/// The shell script `/app/NAME` holding `body`.
pub fn script(body: &str) -> String {
    format!("#!/bin/sh\n# written by kiln appliance\n{body}\n")
}

/// The `/app/run` script: `exec` of the run command with the script's arguments.
pub fn run_script(run: &str) -> String {
    script(&format!("exec {run} \"$@\""))
}

/// Builds the entries from the layer at `root` and the closure `paths`.
pub fn assemble(
    root: &Path,
    paths: &BTreeSet<String>,
    req: &Request,
) -> Result<Assembled, ImageError> {
    let mtime = clamp_time(req.mtime);
    let mut all: BTreeMap<String, Entry> = BTreeMap::new();
    for p in paths {
        add_from_layer(root, p, mtime, &mut all)?;
    }
    let mut own = |path: &str, perm: u32, kind: Kind| {
        all.insert(path.to_string(), Entry::root_owned(path, perm, mtime, kind));
    };
    for dir in ["app", "dev", "proc", "root", "run", "sys", "tmp", "etc"] {
        own(dir, 0o755, Kind::Dir);
    }
    own("tmp", 0o1777, Kind::Dir);
    own("root", 0o700, Kind::Dir);
    own("dev/console", 0o600, Kind::CharDevice(5, 1));
    own("init", 0o755, Kind::File(kiln_init::BINARY.to_vec()));
    own(
        "app/run",
        0o755,
        Kind::File(run_script(&req.run).into_bytes()),
    );
    for (name, body) in [("prerun", &req.prerun), ("postrun", &req.postrun)] {
        if let Some(body) = body {
            own(
                &format!("app/{name}"),
                0o755,
                Kind::File(script(body).into_bytes()),
            );
        }
    }
    let modules = match &req.release {
        Some(release) => add_modules(root, release, mtime, &mut all)?,
        None => 0,
    };
    if !all.contains_key(kiln_init::CONFIG_PATH) {
        let mut own_config = String::from("# kiln-init configuration: no kernel modules\n");
        own_config.push_str("# (the kernel's drivers must be built in)\n");
        all.insert(
            kiln_init::CONFIG_PATH.to_string(),
            Entry::root_owned(
                kiln_init::CONFIG_PATH,
                0o644,
                mtime,
                Kind::File(own_config.into_bytes()),
            ),
        );
    }
    let entries: Vec<Entry> = all.into_values().collect();
    let (files, bytes) = entries
        .iter()
        .filter_map(|e| match &e.kind {
            Kind::File(d) => Some(d.len() as u64),
            _ => None,
        })
        .fold((0, 0), |(n, b), len| (n + 1, b + len));
    Ok(Assembled {
        entries,
        files,
        bytes,
        modules,
    })
}

/// Adds the layer's `path` and its parent directories (real directories: the closure
/// resolved every link on the way).
fn add_from_layer(
    root: &Path,
    path: &str,
    mtime: u32,
    all: &mut BTreeMap<String, Entry>,
) -> Result<(), ImageError> {
    let rel = path.trim_start_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let mut parents: Vec<&str> = rel.match_indices('/').map(|(i, _)| &rel[..i]).collect();
    parents.push(rel);
    for p in parents {
        if all.contains_key(p) {
            continue;
        }
        let file = host(root, p);
        let m = fs::symlink_metadata(&file).map_err(|e| ImageError::io(&file, e))?;
        let kind = if m.is_dir() {
            Kind::Dir
        } else if m.is_symlink() {
            let target = fs::read_link(&file).map_err(|e| ImageError::io(&file, e))?;
            Kind::Symlink(target.to_string_lossy().into_owned())
        } else if m.is_file() {
            Kind::File(fs::read(&file).map_err(|e| ImageError::io(&file, e))?)
        } else {
            continue; // sockets, fifos, devices: made at run time, not copied
        };
        all.insert(
            p.to_string(),
            Entry {
                path: p.to_string(),
                perm: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime,
                kind,
            },
        );
    }
    Ok(())
}

/// The drivers kiln-init loads (the boot initramfs's set, without filesystems: the
/// appliance's root is the initramfs) and kiln-init's configuration naming them. The
/// modules go where the layer really keeps them (`/usr/lib/modules` behind a usrmerge
/// `/lib` link), since the archive may hold `/lib` as that link.
fn add_modules(
    root: &Path,
    release: &str,
    mtime: u32,
    all: &mut BTreeMap<String, Entry>,
) -> Result<usize, ImageError> {
    let scratch = tempfile::tempdir().map_err(|e| ImageError::io(std::env::temp_dir(), e))?;
    let (plan, modules_dir) =
        kiln_image::boot_initrd::plan_for(root, release, &DRIVERS, &[], scratch.path())?;
    let real = crate::root::resolve(root, &format!("/lib/modules/{release}"))
        .target
        .unwrap_or_else(|| format!("/lib/modules/{release}"));
    for rel in plan.modules.values() {
        let inside = format!("{real}/{rel}");
        let src = modules_dir.join(rel);
        let data = fs::read(&src).map_err(|e| ImageError::io(&src, e))?;
        let inside_rel = inside.trim_start_matches('/').to_string();
        for (i, _) in inside_rel.match_indices('/') {
            let dir = &inside_rel[..i];
            all.entry(dir.to_string())
                .or_insert_with(|| Entry::root_owned(dir, 0o755, mtime, Kind::Dir));
        }
        all.insert(
            inside_rel.clone(),
            Entry::root_owned(inside_rel, 0o644, mtime, Kind::File(data)),
        );
    }
    // The plan names modules under /lib/modules; point kiln-init at where they are.
    let config = plan
        .config(release)
        .replace(&format!(" /lib/modules/{release}/"), &format!(" {real}/"));
    all.insert(
        kiln_init::CONFIG_PATH.to_string(),
        Entry::root_owned(
            kiln_init::CONFIG_PATH,
            0o644,
            mtime,
            Kind::File(config.into_bytes()),
        ),
    );
    Ok(plan.modules.len())
}

/// Regular files and their bytes under `root` (the layer's size for the report).
pub fn tree_size(root: &Path) -> (usize, u64) {
    walkdir::WalkDir::new(root)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()))
        .fold((0, 0), |(n, b), len| (n + 1, b + len))
}
