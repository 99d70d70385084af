//! Creating one entry (file, directory, symlink, device, FIFO) below an already opened
//! parent directory, and restoring its metadata: owner, then mode (chown clears set-id
//! bits), then extended attributes (chown clears file capabilities), then times.

use super::reader::Entry;
use super::{Step, UnpackStats};
use crate::fsutil;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, futimens, mknodat, utimensat, FchmodatFlags, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, symlinkat, Gid, Uid};
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use tar_core::EntryType;

/// Ownership, mode, times and extended attributes of one entry.
pub(super) struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    pub(super) mtime: TimeSpec,
    xattrs: Vec<(CString, Vec<u8>)>,
}

/// Mode, owner, mtime and xattrs of an entry, every extension applied.
pub(super) fn read_meta(entry: &Entry) -> Step<Meta> {
    let id = |what: &str, v: u64| u32::try_from(v).map_err(|_| format!("{what} {v} out of range"));
    let xattrs = entry
        .xattrs
        .iter()
        .map(|(name, value)| {
            let name = CString::new(name.clone()).map_err(|_| "xattr name contains NUL")?;
            Ok((name, value.clone()))
        })
        .collect::<Step<_>>()?;
    Ok(Meta {
        mode: entry.mode,
        uid: id("uid", entry.uid)?,
        gid: id("gid", entry.gid)?,
        mtime: TimeSpec::new(entry.mtime.0, i64::from(entry.mtime.1)),
        xattrs,
    })
}

/// Owner, then mode (chown clears set-id bits), then xattrs (chown clears capabilities).
pub(super) fn set_dir_meta(dir: &OwnedFd, meta: &Meta, stats: &mut UnpackStats) -> Step<()> {
    fchown(
        dir.as_raw_fd(),
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| format!("setting the owner: {e}"))?;
    fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(meta.mode))
        .map_err(|e| format!("setting the mode: {e}"))?;
    set_xattrs(XattrTarget::Fd(dir), &meta.xattrs, stats)
}

pub(super) fn make_file<R: Read>(
    parent: &OwnedFd,
    name: &OsStr,
    data: &mut R,
    meta: &Meta,
    stats: &mut UnpackStats,
) -> Step<()> {
    fsutil::remove_at(parent, name).map_err(|e| format!("replacing the existing entry: {e}"))?;
    let flags =
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let raw = nix::fcntl::openat(
        Some(parent.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o600),
    )
    .map_err(|e| format!("creating the file: {e}"))?;
    // SAFETY: `openat` just returned this descriptor and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(raw) };
    io::copy(data, &mut file).map_err(|e| format!("writing the file: {e}"))?;
    let fd = file.as_raw_fd();
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(|e| format!("setting the owner: {e}"))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode))
        .map_err(|e| format!("setting the mode: {e}"))?;
    let owned = OwnedFd::from(file);
    set_xattrs(XattrTarget::Fd(&owned), &meta.xattrs, stats)?;
    futimens(owned.as_raw_fd(), &meta.mtime, &meta.mtime)
        .map_err(|e| format!("setting the mtime: {e}"))
}

pub(super) fn make_symlink(
    parent: &OwnedFd,
    name: &OsStr,
    target: &[u8],
    meta: &Meta,
    stats: &mut UnpackStats,
) -> Step<()> {
    fsutil::remove_at(parent, name).map_err(|e| format!("replacing the existing entry: {e}"))?;
    symlinkat(OsStr::from_bytes(target), Some(parent.as_raw_fd()), name)
        .map_err(|e| format!("creating the symlink: {e}"))?;
    set_link_meta(parent, name, meta, false, stats)
}

pub(super) fn make_node(
    parent: &OwnedFd,
    name: &OsStr,
    kind: EntryType,
    dev: libc::dev_t,
    meta: &Meta,
    stats: &mut UnpackStats,
) -> Step<()> {
    fsutil::remove_at(parent, name).map_err(|e| format!("replacing the existing entry: {e}"))?;
    let flag = match kind {
        EntryType::Char => SFlag::S_IFCHR,
        EntryType::Block => SFlag::S_IFBLK,
        _ => SFlag::S_IFIFO,
    };
    mknodat(
        Some(parent.as_raw_fd()),
        name,
        flag,
        Mode::from_bits_truncate(0o600),
        dev,
    )
    .map_err(|e| format!("creating the node: {e}"))?;
    set_link_meta(parent, name, meta, true, stats)
}

/// Metadata of an entry that cannot be opened (symlink, device, FIFO), set by name.
fn set_link_meta(
    parent: &OwnedFd,
    name: &OsStr,
    meta: &Meta,
    chmod: bool,
    stats: &mut UnpackStats,
) -> Step<()> {
    let dirfd = Some(parent.as_raw_fd());
    fchownat(
        dirfd,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| format!("setting the owner: {e}"))?;
    if chmod {
        fchmodat(
            dirfd,
            name,
            Mode::from_bits_truncate(meta.mode),
            FchmodatFlags::FollowSymlink,
        )
        .map_err(|e| format!("setting the mode: {e}"))?;
    }
    set_xattrs(XattrTarget::Name(parent, name), &meta.xattrs, stats)?;
    utimensat(
        dirfd,
        name,
        &meta.mtime,
        &meta.mtime,
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| format!("setting the mtime: {e}"))
}

enum XattrTarget<'a> {
    Fd(&'a OwnedFd),
    /// By name under a directory, not following a final symlink.
    Name(&'a OwnedFd, &'a OsStr),
}

fn set_xattrs(
    target: XattrTarget<'_>,
    xattrs: &[(CString, Vec<u8>)],
    stats: &mut UnpackStats,
) -> Step<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let proc_path = match target {
        XattrTarget::Fd(_) => None,
        XattrTarget::Name(dir, name) => {
            let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
            path.extend_from_slice(name.as_bytes());
            Some(CString::new(path).map_err(|_| "file name contains NUL")?)
        }
    };
    for (key, value) in xattrs {
        // SAFETY: the pointers come from live CStrings and a live buffer of the given length.
        let rc = unsafe {
            match (&target, &proc_path) {
                (XattrTarget::Fd(fd), _) => libc::fsetxattr(
                    fd.as_raw_fd(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ),
                (_, Some(path)) => libc::lsetxattr(
                    path.as_ptr(),
                    key.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ),
                (_, None) => 0,
            }
        };
        if rc != 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENOTSUP) {
                stats.skipped_xattrs += 1;
                continue;
            }
            return Err(format!(
                "setting extended attribute `{}`: {err}",
                key.to_string_lossy()
            ));
        }
    }
    Ok(())
}
