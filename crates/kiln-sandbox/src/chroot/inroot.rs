//! Paths inside the sandbox root, resolved by the kernel as if the root were `/`
//! (`openat2` with `RESOLVE_IN_ROOT`), so a symlink in an image cannot aim a mount or a
//! mkdir at the host. Mounts then target `/proc/self/fd/N` of the resolved file.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{mkdirat, Mode};

use super::step::{Step, StepError};
use super::traces::Traces;

/// What a mountpoint must be: a directory, or a file (for binds of a single file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dir,
    File,
}

/// Opens `path` (absolute or relative, inside the root) as an `O_PATH` fd, following
/// symlinks without leaving `root`.
pub(crate) fn resolve(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    let relative = path.trim_start_matches('/');
    let relative = if relative.is_empty() { "." } else { relative };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(root.as_raw_fd(), relative, how)?;
    // SAFETY: openat2 just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The magic-link path of an open fd; mount(2) and umount(2) follow it to the exact file.
pub(crate) fn fd_path(fd: &impl AsRawFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Resolves `target` inside `root`, creating missing directories (and, for
/// [`Kind::File`], the final file). When `traces` is given, everything created is
/// recorded there so it can be removed after the run.
pub(crate) fn ensure(
    root: BorrowedFd<'_>,
    target: &str,
    kind: Kind,
    mut traces: Option<&mut Traces>,
) -> Result<OwnedFd, StepError> {
    let components: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
    let mut prefix = String::new();
    for (i, name) in components.iter().enumerate() {
        let path = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let last = i + 1 == components.len();
        match resolve(root, &path) {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent = resolve(root, &prefix).step(|| format!("resolve /{prefix} in the root"))?;
                let as_dir = !(last && kind == Kind::File);
                if let Some(traces) = traces.as_deref_mut() {
                    traces.before_create(&parent)?;
                }
                create(&parent, name, as_dir).step(|| {
                    format!("create mountpoint /{path} for {target} (a dangling symlink in the way?)")
                })?;
                if let Some(traces) = traces.as_deref_mut() {
                    traces.created(&parent, name, as_dir)?;
                }
                if last {
                    return resolve(root, &path).step(|| format!("open created mountpoint {target}"));
                }
            }
            Err(e) => return Err(StepError(format!("resolve {target} (at /{path}) in the root: {e}"))),
        }
        prefix = path;
    }
    resolve(root, ".").step(|| "open the root".to_string())
}

fn create(parent: &OwnedFd, name: &str, as_dir: bool) -> Result<(), Errno> {
    if as_dir {
        return mkdirat(Some(parent.as_raw_fd()), name, Mode::from_bits_truncate(0o755));
    }
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = openat(Some(parent.as_raw_fd()), name, flags, Mode::from_bits_truncate(0o644))?;
    // SAFETY: openat just returned this fd; wrapping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}
