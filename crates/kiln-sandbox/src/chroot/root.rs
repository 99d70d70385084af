//! The sandbox root in the supervisor's mount namespace: the overlay mounted over its own
//! upper dir (or a flat tree bound onto itself), with a mountpoint made for everything
//! pid 1 will mount, and the clean-up that takes those mountpoints out again.
//!
//! Mounting the root over its upper dir needs no scratch directory on the host; the upper
//! dir itself stays reachable through an fd opened before the mount.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::Mode;

use super::inroot::{ensure, Kind};
use super::step::{Step, StepError};
use super::traces::Traces;
use crate::mount::mount_overlay;
use crate::{RootFs, RunSpec};

/// The mounted root, until [`PreparedRoot::tear_down`].
pub(crate) struct PreparedRoot {
    /// Canonical path the root is mounted at (the upper dir or the flat tree).
    pub(crate) mountpoint: PathBuf,
    traces: Traces,
    mounted: bool,
}

impl PreparedRoot {
    /// Mounts `root` over its own writable directory.
    pub(crate) fn mount(root: &RootFs) -> Result<Self, StepError> {
        let dir = match root {
            RootFs::Overlay { upper, .. } => upper,
            RootFs::Dir(dir) => dir,
            RootFs::Disk { .. } => unreachable!("NamespaceSandbox::run refuses VM disks"),
        };
        let mountpoint = std::fs::canonicalize(dir)
            .step(|| format!("find the root's writable directory {}", dir.display()))?;
        let real = open_dir(&mountpoint)?;
        match root {
            RootFs::Overlay { lower, upper, work } => {
                mount_overlay(lower, Some((upper, work)), &mountpoint, MsFlags::empty())?
            }
            RootFs::Disk { .. } => unreachable!("NamespaceSandbox::run refuses VM disks"),
            RootFs::Dir(_) => mount(
                Some(&mountpoint),
                &mountpoint,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .step(|| format!("bind-mount the root {} onto itself", mountpoint.display()))?,
        }
        Ok(PreparedRoot {
            traces: Traces::new(mountpoint.clone(), real),
            mountpoint,
            mounted: true,
        })
    }

    /// Creates (and records) every mountpoint in the layer that pid 1 will need.
    pub(crate) fn create_mountpoints(&mut self, spec: &RunSpec) -> Result<(), StepError> {
        let merged = open_dir(&self.mountpoint)?;
        for (target, kind) in planned_mountpoints(spec)? {
            ensure(
                std::os::fd::AsFd::as_fd(&merged),
                &target,
                kind,
                Some(&mut self.traces),
            )?;
        }
        Ok(())
    }

    /// Unmounts the root and removes the recorded mountpoints from the layer. Call it
    /// after every process that used the root is gone.
    pub(crate) fn tear_down(&mut self) -> Result<(), StepError> {
        if self.mounted {
            self.mounted = false;
            let what = || format!("unmount the root {}", self.mountpoint.display());
            match umount2(&self.mountpoint, MntFlags::empty()) {
                Ok(()) => {}
                // Only this namespace could still hold it; nothing will use it again.
                Err(Errno::EBUSY) => umount2(&self.mountpoint, MntFlags::MNT_DETACH).step(what)?,
                Err(e) => return Err(e).step(what),
            }
        }
        self.traces.remove()
    }
}

fn open_dir(path: &Path) -> Result<OwnedFd, StepError> {
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .step(|| format!("open {}", path.display()))?;
    // SAFETY: open just returned this fd; the OwnedFd closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether `target` lies inside a tmpfs pid 1 mounts, where mountpoints leave no trace.
fn inside_tmpfs(target: &str) -> bool {
    target.starts_with("/dev/") || target.starts_with("/tmp/")
}

/// Every mountpoint that must exist in the layer itself.
fn planned_mountpoints(spec: &RunSpec) -> Result<Vec<(String, Kind)>, StepError> {
    let mut planned: Vec<(String, Kind)> = ["/proc", "/dev", "/sys", "/tmp"]
        .iter()
        .map(|t| (t.to_string(), Kind::Dir))
        .collect();
    for bind in spec.mounts.iter().filter(|m| !inside_tmpfs(&m.target)) {
        let meta = std::fs::metadata(&bind.source)
            .step(|| format!("stat bind mount source {}", bind.source.display()))?;
        planned.push((
            bind.target.clone(),
            if meta.is_dir() { Kind::Dir } else { Kind::File },
        ));
    }
    for secret in spec.secrets.iter().filter(|s| !inside_tmpfs(&s.target)) {
        planned.push((secret.target.clone(), Kind::File));
    }
    Ok(planned)
}
