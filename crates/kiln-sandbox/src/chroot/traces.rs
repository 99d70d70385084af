//! Mountpoints kiln creates in a layer, and how they are taken out again after the run,
//! so that a committed layer holds only what the command wrote.
//!
//! Two kinds of trace: entries we created (a `/proc` directory missing from the image, the
//! file a secret is bound onto, …), and directories overlayfs copied up into the upper dir
//! because we created something inside them (`/etc` for a secret at `/etc/kiln/token`).
//! Both are removed from the directory *below* the mount once the root is unmounted;
//! copied-up directories only while they are still pristine (see [`Traces::remove`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{openat, readlink, AtFlags, OFlag};
use nix::sys::stat::{fstat, fstatat, lstat, FileStat, Mode};
use nix::unistd::{unlinkat, UnlinkatFlags};

use super::inroot::fd_path;
use super::step::{Step, StepError};

/// A directory that existed only in the lower layers when we created something in it.
#[derive(Debug)]
struct CopiedUp {
    rel: PathBuf,
    mode: u32,
    uid: u32,
    gid: u32,
}

/// Everything created in a root while preparing its mountpoints.
#[derive(Debug)]
pub(crate) struct Traces {
    /// Where the root is mounted (canonical), as `/proc/self/fd` links show it.
    mountpoint: PathBuf,
    /// The directory below the mount: the overlay upper dir or the flat tree.
    real: OwnedFd,
    /// Created entries, relative to the root, in creation order; `true` for directories.
    created: Vec<(PathBuf, bool)>,
    copied_up: Vec<CopiedUp>,
}

impl Traces {
    /// `real` must have been opened before the root was mounted over it.
    pub(crate) fn new(mountpoint: PathBuf, real: OwnedFd) -> Self {
        Traces {
            mountpoint,
            real,
            created: Vec::new(),
            copied_up: Vec::new(),
        }
    }

    /// Notes which ancestors of `parent` overlayfs will copy up when we create in it.
    pub(crate) fn before_create(&mut self, parent: &OwnedFd) -> Result<(), StepError> {
        let rel = self.relative(parent)?;
        for dir in rel.ancestors().filter(|a| !a.as_os_str().is_empty()) {
            if self.created.iter().any(|(p, _)| p == dir)
                || self.copied_up.iter().any(|c| c.rel == dir)
            {
                continue;
            }
            match fstatat(
                Some(self.real.as_raw_fd()),
                dir,
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(_) => {}
                Err(Errno::ENOENT) => {
                    let merged = self.mountpoint.join(dir);
                    let st = lstat(&merged).step(|| format!("stat {}", merged.display()))?;
                    self.copied_up.push(CopiedUp {
                        rel: dir.to_path_buf(),
                        mode: st.st_mode,
                        uid: st.st_uid,
                        gid: st.st_gid,
                    });
                }
                Err(e) => {
                    return Err(StepError(format!(
                        "stat /{} in the layer: {e}",
                        dir.display()
                    )))
                }
            }
        }
        Ok(())
    }

    /// Records that `name` was created in `parent`.
    pub(crate) fn created(
        &mut self,
        parent: &OwnedFd,
        name: &str,
        dir: bool,
    ) -> Result<(), StepError> {
        let rel = self.relative(parent)?.join(name);
        self.created.push((rel, dir));
        Ok(())
    }

    /// The path of `fd` relative to the root.
    fn relative(&self, fd: &OwnedFd) -> Result<PathBuf, StepError> {
        let link =
            readlink(fd_path(fd).as_str()).step(|| "read the path of a mountpoint".to_string())?;
        let path = PathBuf::from(link);
        path.strip_prefix(&self.mountpoint)
            .map(Path::to_path_buf)
            .map_err(|_| {
                StepError(format!(
                    "mountpoint {} resolved outside the root {}",
                    path.display(),
                    self.mountpoint.display()
                ))
            })
    }

    /// Removes the traces from the directory below the (now unmounted) root: created
    /// entries unless the command wrote into them, then copied-up directories that are
    /// still empty, not opaque, and have the lower layer's mode and owner (a command that
    /// changed them made them part of the layer; only a bare mtime change is lost).
    pub(crate) fn remove(&mut self) -> Result<(), StepError> {
        for (rel, dir) in std::mem::take(&mut self.created).into_iter().rev() {
            let flag = if dir {
                UnlinkatFlags::RemoveDir
            } else {
                UnlinkatFlags::NoRemoveDir
            };
            match unlinkat(Some(self.real.as_raw_fd()), &rel, flag) {
                Ok(()) | Err(Errno::ENOENT | Errno::ENOTEMPTY | Errno::EEXIST) => {}
                Err(e) => {
                    return Err(StepError(format!(
                        "remove mountpoint /{} from the layer: {e}",
                        rel.display()
                    )))
                }
            }
        }
        let mut copied_up = std::mem::take(&mut self.copied_up);
        copied_up.sort_by_key(|c| std::cmp::Reverse(c.rel.components().count()));
        for dir in copied_up {
            self.remove_if_pristine(&dir).step(|| {
                format!(
                    "remove copied-up directory /{} from the layer",
                    dir.rel.display()
                )
            })?;
        }
        Ok(())
    }

    fn remove_if_pristine(&self, dir: &CopiedUp) -> Result<(), Errno> {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = match openat(Some(self.real.as_raw_fd()), &dir.rel, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT | Errno::ENOTDIR | Errno::ELOOP) => return Ok(()),
            Err(e) => return Err(e),
        };
        // SAFETY: openat just returned this fd; the OwnedFd closes it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd())?;
        if !same_mode_and_owner(&st, dir) || is_opaque(&fd)? || !is_empty(fd)? {
            return Ok(());
        }
        match unlinkat(
            Some(self.real.as_raw_fd()),
            &dir.rel,
            UnlinkatFlags::RemoveDir,
        ) {
            Ok(()) | Err(Errno::ENOTEMPTY | Errno::EEXIST) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn same_mode_and_owner(st: &FileStat, dir: &CopiedUp) -> bool {
    st.st_mode == dir.mode && st.st_uid == dir.uid && st.st_gid == dir.gid
}

/// Whether overlayfs marked the directory opaque (it hides the lower directory).
fn is_opaque(fd: &OwnedFd) -> Result<bool, Errno> {
    let name = CString::new("trusted.overlay.opaque").map_err(|_| Errno::EINVAL)?;
    // SAFETY: size 0 asks only for the value's length; no buffer is written.
    let rc = unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
    match Errno::result(rc) {
        Ok(_) => Ok(true),
        Err(Errno::ENODATA | Errno::ENOTSUP) => Ok(false),
        Err(e) => Err(e),
    }
}

fn is_empty(fd: OwnedFd) -> Result<bool, Errno> {
    let mut dir = Dir::from_fd(fd.as_raw_fd())?;
    std::mem::forget(fd); // the Dir owns and closes it now
    for entry in dir.iter() {
        let name = entry?.file_name().to_bytes().to_vec();
        if name != b"." && name != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}
