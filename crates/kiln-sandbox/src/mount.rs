//! Overlay and bind mounts of a layer chain in the caller's (private) mount namespace.
//!
//! The builder uses these for `copy` steps and `kiln export`; the namespace sandbox uses
//! `overlay_options` and `mount_overlay` for its own root, so both agree on the format
//! of the layers they write.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::{RootFs, SandboxError};

/// Options fixed for every read-write overlay kiln mounts, so that an upper dir written
/// through one mount is a plain, self-contained layer that later mounts can stack as a
/// lower dir on top of the same parents (that is how the store builds images):
/// - `index=off`: the index ties an upper dir to the exact lower stack (by file handle)
///   and refuses a different one; our layers are mounted under many different uppers.
/// - `redirect_dir=off`: a renamed lower directory would be recorded as a redirect xattr
///   that only overlayfs understands (export/flatten would see an empty directory);
///   without it rename(2) of such a directory returns EXDEV and tools copy instead.
/// - `metacopy=off`: a metadata-only copy-up leaves the data in the lower layer; layers
///   must contain whole files.
/// - `uuid=off`: otherwise a random UUID xattr is written to each new upper dir (layers
///   would differ run to run) and file-handle origins are tied to this filesystem's UUID,
///   which breaks when the store is copied to another disk.
///
/// `xino` is left at its default: it only changes inode numbers, nothing on disk.
const RW_OVERLAY_OPTIONS: &str = "index=off,redirect_dir=off,metacopy=off,uuid=off";

/// Enters a new mount namespace for the calling thread and makes `/` recursively private,
/// so mounts made later are invisible to the host and vanish with the process.
///
/// Call it while the process is single-threaded (early in `main`), or from the thread that
/// will make and use the mounts: in a multi-threaded process only the calling thread moves.
pub fn enter_private_mount_namespace() -> Result<(), SandboxError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| {
        SandboxError::sys(
            "unshare(CLONE_NEWNS): kiln needs root (CAP_SYS_ADMIN) to mount",
            e,
        )
    })?;
    make_root_private()
}

/// Marks every mount under `/` private, so our mounts do not propagate to the host.
pub(crate) fn make_root_private() -> Result<(), SandboxError> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| SandboxError::sys("make / recursively private (mount --make-rprivate /)", e))
}

/// A mount that is detached (`umount2(MNT_DETACH)`) when dropped; the mountpoint
/// directories it created are removed afterwards.
#[derive(Debug)]
pub struct MountGuard {
    path: PathBuf,
    /// Directories created for the mountpoint, outermost first.
    created: Vec<PathBuf>,
    mounted: bool,
}

impl MountGuard {
    /// Where the filesystem is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts now, reporting failure (dropping the guard ignores errors).
    /// A busy mount is detached lazily rather than left mounted.
    pub fn unmount(mut self) -> Result<(), SandboxError> {
        if self.mounted {
            self.mounted = false;
            let what = || format!("unmount {}", self.path.display());
            match umount2(&self.path, MntFlags::empty()) {
                Ok(()) => {}
                Err(Errno::EBUSY) => umount2(&self.path, MntFlags::MNT_DETACH)
                    .map_err(|e| SandboxError::sys(what(), e))?,
                Err(e) => return Err(SandboxError::sys(what(), e)),
            }
        }
        remove_created(&std::mem::take(&mut self.created))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            let _ = umount2(&self.path, MntFlags::MNT_DETACH);
        }
        let _ = remove_created(&self.created);
    }
}

fn remove_created(created: &[PathBuf]) -> Result<(), SandboxError> {
    for dir in created.iter().rev() {
        std::fs::remove_dir(dir)
            .map_err(|e| SandboxError::sys(format!("remove mountpoint {}", dir.display()), e))?;
    }
    Ok(())
}

/// Mounts the ext4 filesystem of the raw disk image `image` (no partition table)
/// read-only at `target` (created if missing), through a loop device freed on unmount.
pub fn mount_ext4_image_readonly(image: &Path, target: &Path) -> Result<MountGuard, SandboxError> {
    let created = create_dirs(target)?;
    let mut guard = MountGuard {
        path: target.to_path_buf(),
        created,
        mounted: false,
    };
    crate::tools::mount_ext4_loop_readonly(image, target)?;
    guard.mounted = true;
    Ok(guard)
}

/// [`mount_ext4_image_readonly`] of the ext4 filesystem `offset` bytes into `image`.
pub fn mount_ext4_partition_readonly(
    image: &Path,
    offset: u64,
    target: &Path,
) -> Result<MountGuard, SandboxError> {
    let created = create_dirs(target)?;
    let mut guard = MountGuard {
        path: target.to_path_buf(),
        created,
        mounted: false,
    };
    crate::tools::mount_ext4_loop_readonly_at(image, offset, target)?;
    guard.mounted = true;
    Ok(guard)
}

/// Mounts `root` read-write at `target` (created if missing): an overlay of its layers,
/// or a bind mount of a flat tree.
pub fn mount_root(root: &RootFs, target: &Path) -> Result<MountGuard, SandboxError> {
    if matches!(root, RootFs::Disk { .. }) {
        return Err(SandboxError::Unsupported("mounting a VM disk as a tree"));
    }
    let created = create_dirs(target)?;
    let mut guard = MountGuard {
        path: target.to_path_buf(),
        created,
        mounted: false,
    };
    match root {
        RootFs::Overlay { lower, upper, work } => {
            mount_overlay(lower, Some((upper, work)), target, MsFlags::empty())?
        }
        RootFs::Dir(dir) => bind(dir, target, MsFlags::empty())?,
        RootFs::Disk { .. } => unreachable!("refused above"),
    }
    guard.mounted = true;
    Ok(guard)
}

/// Mounts the read-only union of `lower` (topmost first) at `target` (created if missing):
/// an overlay with only lower dirs, or, for a single layer, a read-only bind mount.
pub fn mount_lower_readonly(lower: &[PathBuf], target: &Path) -> Result<MountGuard, SandboxError> {
    let single = match lower {
        [] => {
            return Err(SandboxError::Setup(format!(
                "nothing to mount at {}: the layer chain is empty",
                target.display()
            )))
        }
        [only] => Some(only),
        _ => None,
    };
    let created = create_dirs(target)?;
    let mut guard = MountGuard {
        path: target.to_path_buf(),
        created,
        mounted: false,
    };
    match single {
        Some(dir) => {
            bind(dir, target, MsFlags::empty())?;
            guard.mounted = true;
            remount_bind(target, MsFlags::MS_RDONLY)?;
        }
        None => {
            mount_overlay(lower, None, target, MsFlags::MS_RDONLY)?;
            guard.mounted = true;
        }
    }
    Ok(guard)
}

/// Creates `dir` and any missing parents; returns the ones it created, outermost first.
fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>, SandboxError> {
    let mut missing = Vec::new();
    for ancestor in dir.ancestors() {
        if ancestor.as_os_str().is_empty() || ancestor.exists() {
            break;
        }
        missing.push(ancestor.to_path_buf());
    }
    missing.reverse();
    for d in &missing {
        std::fs::create_dir(d)
            .map_err(|e| SandboxError::sys(format!("create mountpoint {}", d.display()), e))?;
    }
    Ok(missing)
}

/// Bind-mounts `source` at `target` (not recursive).
fn bind(source: &Path, target: &Path, flags: MsFlags) -> Result<(), SandboxError> {
    mount(
        Some(source),
        target,
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(|e| {
        SandboxError::sys(
            format!("bind-mount {} at {}", source.display(), target.display()),
            e,
        )
    })
}

/// Changes the flags of the bind mount at `target` (e.g. to make it read-only).
fn remount_bind(target: &Path, flags: MsFlags) -> Result<(), SandboxError> {
    let all = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags;
    mount(None::<&str>, target, None::<&str>, all, None::<&str>)
        .map_err(|e| SandboxError::sys(format!("remount {} with {flags:?}", target.display()), e))
}

/// Mounts an overlay of `lower` (topmost first), with `upper_work` = (upper, work) for a
/// writable one, at `target`.
pub(crate) fn mount_overlay(
    lower: &[PathBuf],
    upper_work: Option<(&PathBuf, &PathBuf)>,
    target: &Path,
    flags: MsFlags,
) -> Result<(), SandboxError> {
    let options = overlay_options(lower, upper_work)?;
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        flags,
        Some(options.as_os_str()),
    )
    .map_err(|e| {
        SandboxError::Setup(format!(
            "mount overlay at {} ({}): {e}; check that every layer directory exists, that \
             upper and work dirs are on the same filesystem, and that the kernel has overlayfs \
             (modprobe overlay)",
            target.display(),
            options.to_string_lossy()
        ))
    })
}

/// Builds overlayfs mount options: `lowerdir=a:b:c` plus, for a writable mount,
/// `upperdir=…,workdir=…` and [`RW_OVERLAY_OPTIONS`]. Paths are made absolute and
/// `\`, `:` and `,` in them are escaped with `\` as overlayfs requires. Fails if the
/// result does not fit in the single page the kernel copies from mount(2).
pub(crate) fn overlay_options(
    lower: &[PathBuf],
    upper_work: Option<(&PathBuf, &PathBuf)>,
) -> Result<OsString, SandboxError> {
    if lower.is_empty() {
        return Err(SandboxError::Setup(
            "an overlay needs at least one lower layer, got none".to_string(),
        ));
    }
    let mut out = b"lowerdir=".to_vec();
    for (i, dir) in lower.iter().enumerate() {
        if i > 0 {
            out.push(b':');
        }
        push_escaped(&mut out, dir)?;
    }
    if let Some((upper, work)) = upper_work {
        out.extend_from_slice(b",upperdir=");
        push_escaped(&mut out, upper)?;
        out.extend_from_slice(b",workdir=");
        push_escaped(&mut out, work)?;
        out.push(b',');
        out.extend_from_slice(RW_OVERLAY_OPTIONS.as_bytes());
    }
    let max = page_size() - 1; // the kernel needs the terminating NUL inside the page
    if out.len() > max {
        return Err(SandboxError::ChainTooLong {
            layers: lower.len(),
            bytes: out.len(),
            max,
        });
    }
    Ok(OsString::from_vec(out))
}

fn push_escaped(out: &mut Vec<u8>, path: &Path) -> Result<(), SandboxError> {
    let absolute = std::path::absolute(path)
        .map_err(|e| SandboxError::sys(format!("make {} absolute", path.display()), e))?;
    for &b in absolute.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b':' | b',') {
            out.push(b'\\');
        }
        out.push(b);
    }
    Ok(())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_escape_separators_and_keep_order() {
        let lower = vec![PathBuf::from("/l/a:b"), PathBuf::from("/l/c,d\\e")];
        let (up, work) = (PathBuf::from("/u"), PathBuf::from("/w"));
        let opts = overlay_options(&lower, Some((&up, &work))).unwrap();
        assert_eq!(
            opts.to_str().unwrap(),
            "lowerdir=/l/a\\:b:/l/c\\,d\\\\e,upperdir=/u,workdir=/w,\
             index=off,redirect_dir=off,metacopy=off,uuid=off"
        );
    }

    #[test]
    fn read_only_options_have_only_lowerdirs() {
        let lower = vec![PathBuf::from("/a"), PathBuf::from("/b")];
        assert_eq!(
            overlay_options(&lower, None).unwrap().to_str().unwrap(),
            "lowerdir=/a:/b"
        );
    }

    #[test]
    fn options_longer_than_a_page_ask_for_flattening() {
        let lower: Vec<PathBuf> = (0..400)
            .map(|i| PathBuf::from(format!("/store/result/{i:020}")))
            .collect();
        let err = overlay_options(&lower, None).unwrap_err();
        assert!(
            matches!(err, SandboxError::ChainTooLong { layers: 400, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("flatten"), "{err}");
    }

    #[test]
    fn no_lower_is_an_error() {
        assert!(overlay_options(&[], None).is_err());
    }
}
