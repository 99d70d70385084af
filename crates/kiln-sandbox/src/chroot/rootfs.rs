//! What pid 1 mounts inside the root before pivoting into it: a minimal /dev, read-only
//! /sys, tmpfs /tmp, the step's bind mounts, its secrets and /proc.
//!
//! Every target is resolved inside the root ([`super::inroot`]). Mountpoints in the layer
//! itself were created beforehand by the supervisor (which removes them afterwards); pid 1
//! only creates mountpoints inside its own tmpfs mounts (/dev, /tmp), which leave no trace.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{open, openat, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{fstat, Mode, SFlag};
use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{fchown, symlinkat, Gid, Uid};

use super::inroot::{ensure, fd_path, resolve, Kind};
use super::step::{Step, StepError};
use crate::{BindMount, RunSpec, Secret};

/// Device nodes bind-mounted from the host's /dev.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Symlinks in /dev: (name, target).
const DEV_LINKS: [(&str, &str); 5] = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// Mounts everything the step sees besides the root itself. /proc comes last because the
/// secrets are staged on its mountpoint first.
pub(crate) fn populate(root: BorrowedFd<'_>, spec: &RunSpec) -> Result<(), StepError> {
    mount_dev(root)?;
    mount_sys(root, spec.host_network)?;
    let tmp = ensure(root, "/tmp", Kind::Dir, None)?;
    mount_on(
        Some("tmpfs"),
        &tmp,
        "/tmp",
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    for bind in &spec.mounts {
        mount_bind(root, bind)?;
    }
    mount_secrets(root, &spec.secrets, spec.uid, spec.gid)?;
    let proc = ensure(root, "/proc", Kind::Dir, None)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on(Some("proc"), &proc, "/proc", Some("proc"), flags, None)
}

/// mount(2) onto the resolved `target` fd; `name` is the path shown in errors.
fn mount_on(
    source: Option<&str>,
    target: &OwnedFd,
    name: &str,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), StepError> {
    mount(source, fd_path(target).as_str(), fstype, flags, data)
        .step(|| format!("mount {} at {name}", fstype.or(source).unwrap_or("?")))
}

/// Bind-mounts the file or directory `source` (an fd) onto `target`.
fn bind_on(
    source: &OwnedFd,
    what: &str,
    target: &OwnedFd,
    name: &str,
    flags: MsFlags,
) -> Result<(), StepError> {
    mount(
        Some(fd_path(source).as_str()),
        fd_path(target).as_str(),
        None::<&str>,
        MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .step(|| format!("bind-mount {what} at {name}"))
}

/// Makes the bind mount now at `target` read-only, keeping its nosuid/nodev/noexec flags.
fn make_read_only(root: BorrowedFd<'_>, target: &str, extra: MsFlags) -> Result<(), StepError> {
    let mounted = resolve(root, target).step(|| format!("open {target} after mounting it"))?;
    let current = fstatvfs(&mounted)
        .step(|| format!("statvfs {target}"))?
        .flags();
    let mut flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra;
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if current.contains(st) {
            flags |= ms;
        }
    }
    mount(
        None::<&str>,
        fd_path(&mounted).as_str(),
        None::<&str>,
        flags,
        None::<&str>,
    )
    .step(|| format!("remount {target} read-only"))
}

fn mount_dev(root: BorrowedFd<'_>) -> Result<(), StepError> {
    let dev = ensure(root, "/dev", Kind::Dir, None)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME;
    mount_on(
        Some("tmpfs"),
        &dev,
        "/dev",
        Some("tmpfs"),
        flags,
        Some("mode=755,size=65536k"),
    )?;
    for name in DEVICES {
        let host = format!("/dev/{name}");
        let node = open(
            host.as_str(),
            OFlag::O_PATH | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .step(|| format!("open the host's {host}"))?;
        // SAFETY: open just returned this fd; the OwnedFd closes it.
        let node = unsafe { OwnedFd::from_raw_fd(node) };
        let target = ensure(root, &host, Kind::File, None)?;
        bind_on(&node, &host, &target, &host, MsFlags::empty())?;
    }
    let pts = ensure(root, "/dev/pts", Kind::Dir, None)?;
    let data = "newinstance,ptmxmode=0666,mode=0620,gid=5";
    mount_on(
        Some("devpts"),
        &pts,
        "/dev/pts",
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(data),
    )?;
    let shm = ensure(root, "/dev/shm", Kind::Dir, None)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on(
        Some("shm"),
        &shm,
        "/dev/shm",
        Some("tmpfs"),
        flags,
        Some("mode=1777,size=65536k"),
    )?;
    let dev = resolve(root, "/dev").step(|| "open /dev after mounting it".to_string())?;
    for (name, target) in DEV_LINKS {
        symlinkat(target, Some(dev.as_raw_fd()), name)
            .step(|| format!("create the symlink /dev/{name}"))?;
    }
    Ok(())
}

/// sysfs read-only. With the host's network namespace some kernels refuse a fresh sysfs
/// (it must belong to a network namespace we own); then the host's /sys is bound instead.
fn mount_sys(root: BorrowedFd<'_>, host_network: bool) -> Result<(), StepError> {
    let sys = ensure(root, "/sys", Kind::Dir, None)?;
    let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    match mount_on(Some("sysfs"), &sys, "/sys", Some("sysfs"), flags, None) {
        Ok(()) => Ok(()),
        Err(e) if !host_network => Err(e),
        Err(_) => {
            mount(
                Some("/sys"),
                fd_path(&sys).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .step(|| "bind-mount the host's /sys at /sys".to_string())?;
            let mounted =
                resolve(root, "/sys").step(|| "open /sys after mounting it".to_string())?;
            set_read_only_recursively(&mounted)
                .step(|| "make /sys and its submounts read-only".to_string())
        }
    }
}

/// `struct mount_attr` for mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;

fn set_read_only_recursively(mount_root: &OwnedFd) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: an empty C string, a valid struct and its size; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            mount_root.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(rc).map(drop)
}

fn mount_bind(root: BorrowedFd<'_>, bind: &BindMount) -> Result<(), StepError> {
    let source_name = bind.source.display().to_string();
    let source = open(
        &bind.source,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .step(|| format!("open bind mount source {source_name}"))?;
    // SAFETY: open just returned this fd; the OwnedFd closes it.
    let source = unsafe { OwnedFd::from_raw_fd(source) };
    let is_dir = fstat(source.as_raw_fd())
        .step(|| format!("stat bind mount source {source_name}"))
        .map(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR)?;
    let target = ensure(
        root,
        &bind.target,
        if is_dir { Kind::Dir } else { Kind::File },
        None,
    )?;
    bind_on(
        &source,
        &source_name,
        &target,
        &bind.target,
        MsFlags::MS_REC,
    )?;
    if bind.readonly {
        make_read_only(root, &bind.target, MsFlags::empty())?;
    }
    Ok(())
}

/// Writes the secrets to one private tmpfs staged on the /proc mountpoint, binds each file
/// read-only at its target, then unmounts the tmpfs: afterwards the values are reachable
/// only through those read-only binds and vanish with the sandbox.
fn mount_secrets(
    root: BorrowedFd<'_>,
    secrets: &[Secret],
    uid: u32,
    gid: u32,
) -> Result<(), StepError> {
    if secrets.is_empty() {
        return Ok(());
    }
    let stage = ensure(root, "/proc", Kind::Dir, None)?;
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount_on(
        Some("tmpfs"),
        &stage,
        "/proc (secrets staging)",
        Some("tmpfs"),
        flags,
        Some("mode=0700"),
    )?;
    let stage = resolve(root, "/proc").step(|| "open the secrets tmpfs".to_string())?;
    for (i, secret) in secrets.iter().enumerate() {
        let file = write_secret(&stage, &format!("secret-{i}"), secret, uid, gid)?;
        let target = ensure(root, &secret.target, Kind::File, None)?;
        bind_on(&file, "a secret", &target, &secret.target, MsFlags::empty())?;
        make_read_only(
            root,
            &secret.target,
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    // Detached: our fd still holds the mount, so a plain umount would be EBUSY.
    umount2(fd_path(&stage).as_str(), MntFlags::MNT_DETACH)
        .step(|| "unmount the secrets tmpfs".to_string())
}

/// Writes one secret (mode 0400, owned by the step's user) and returns an `O_PATH` fd to it.
fn write_secret(
    stage: &OwnedFd,
    name: &str,
    secret: &Secret,
    uid: u32,
    gid: u32,
) -> Result<OwnedFd, StepError> {
    let what = || format!("write the secret for {}", secret.target);
    let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_CLOEXEC;
    let fd = openat(
        Some(stage.as_raw_fd()),
        name,
        flags,
        Mode::from_bits_truncate(0o400),
    )
    .step(what)?;
    // SAFETY: openat just returned this fd; the File closes it.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&secret.value).step(what)?;
    fchown(
        file.as_raw_fd(),
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
    )
    .step(what)?;
    drop(file);
    let fd = openat(
        Some(stage.as_raw_fd()),
        name,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .step(what)?;
    // SAFETY: as above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
