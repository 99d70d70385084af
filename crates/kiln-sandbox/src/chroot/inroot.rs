//! Paths inside the sandbox root, resolved by the kernel as if the root were `/`
//! (`openat2` with `RESOLVE_IN_ROOT`), so a symlink in an image cannot aim a mount or a
//! mkdir at the host. Mounts then target `/proc/self/fd/N` of the resolved file.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};

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

/// Most symlinks followed while creating one mountpoint (as the kernel's ELOOP limit).
const MAX_SYMLINKS: usize = 40;

/// Resolves `target` inside `root`, creating missing directories (and, for
/// [`Kind::File`], the final file). A dangling symlink on the way is followed inside the
/// root and its target created. When `traces` is given, everything created is recorded
/// there so it can be removed after the run.
pub(crate) fn ensure(
    root: BorrowedFd<'_>,
    target: &str,
    kind: Kind,
    mut traces: Option<&mut Traces>,
) -> Result<OwnedFd, StepError> {
    let mut pending = components(target);
    let mut prefix = String::new();
    let mut symlinks = 0;
    while let Some(name) = pending.pop_front() {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let last = pending.is_empty();
        match resolve(root, &path) {
            Ok(fd) if last => return Ok(fd),
            Ok(_) => {}
            Err(Errno::ENOENT) => {
                let parent =
                    resolve(root, &prefix).step(|| format!("resolve /{prefix} in the root"))?;
                if let Some(link) =
                    dangling_symlink(&parent, &name).step(|| format!("inspect /{path}"))?
                {
                    symlinks += 1;
                    if symlinks > MAX_SYMLINKS {
                        return Err(StepError(format!(
                            "resolve {target} in the root: too many symlinks"
                        )));
                    }
                    // Go on from the link's target: absolute ones start again at the root.
                    let mut next = components(&link);
                    next.extend(pending.drain(..));
                    pending = next;
                    if link.starts_with('/') {
                        prefix.clear();
                    }
                    continue;
                }
                let as_dir = !(last && kind == Kind::File);
                if let Some(traces) = traces.as_deref_mut() {
                    traces.before_create(&parent)?;
                }
                create(&parent, &name, as_dir)
                    .step(|| format!("create mountpoint /{path} for {target}"))?;
                if let Some(traces) = traces.as_deref_mut() {
                    traces.created(&parent, &name, as_dir)?;
                }
                if last {
                    return resolve(root, &path)
                        .step(|| format!("open created mountpoint {target}"));
                }
            }
            Err(e) => {
                return Err(StepError(format!(
                    "resolve {target} (at /{path}) in the root: {e}"
                )))
            }
        }
        prefix = path;
    }
    resolve(root, ".").step(|| "open the root".to_string())
}

fn components(path: &str) -> VecDeque<String> {
    path.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect()
}

/// The target of `name` in `parent` if it is a symlink (the caller found it dangling).
fn dangling_symlink(parent: &OwnedFd, name: &str) -> Result<Option<String>, Errno> {
    let st = match fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e),
    };
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFLNK {
        return Ok(None);
    }
    let link = readlinkat(Some(parent.as_raw_fd()), name)?;
    link.into_string().map(Some).map_err(|_| Errno::EILSEQ)
}

fn create(parent: &OwnedFd, name: &str, as_dir: bool) -> Result<(), Errno> {
    if as_dir {
        return mkdirat(
            Some(parent.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o755),
        );
    }
    let flags =
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let fd = openat(
        Some(parent.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o644),
    )?;
    // SAFETY: openat just returned this fd; wrapping it closes it.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}
