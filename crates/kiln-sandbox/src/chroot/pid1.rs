//! Pid 1 of the sandbox's pid namespace.
//!
//! In a mount namespace of its own (nested in the supervisor's, so the supervisor keeps the
//! host view it needs for clean-up) it mounts /dev, /sys, /tmp, binds, secrets and /proc
//! into the root, sets the hostname, brings up `lo`, pivots into the root, forks the
//! command, reaps every process, and when the command ends kills whatever it left behind
//! and reports the command's status.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::mount::{umount2, MntFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, dup2, fchdir, fork, pivot_root, sethostname, setsid, ForkResult, Pid};

use super::report::{Report, STATUS_FD};
use super::step::{Step, StepError};
use super::{command, kill_everything_else, net, rootfs, trace};
use crate::RunSpec;

/// The fd pid 1 keeps its lifeline on: the read end of a pipe whose write end only the
/// supervisor holds, so a hang-up means the supervisor is gone.
const LIFELINE_FD: i32 = STATUS_FD + 1;

/// Runs pid 1 in this freshly forked process; never returns.
pub(crate) fn run(spec: &RunSpec, root: &Path, lifeline: OwnedFd) -> ! {
    let code = match start(spec, root, lifeline) {
        Ok(code) => code,
        Err(e) => {
            Report::Setup(e.0).send();
            125
        }
    };
    std::process::exit(code)
}

fn start(spec: &RunSpec, root: &Path, lifeline: OwnedFd) -> Result<i32, StepError> {
    keep_only_needed_fds(lifeline)?;
    die_with_supervisor()?;
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: restoring the default disposition installs no handler.
        unsafe { signal(sig, SigHandler::SigDfl) }.step(|| format!("reset {sig}"))?;
    }
    // A session of our own: no controlling terminal, and Ctrl-C on kiln's terminal reaches
    // only the supervisor, which then kills us (and with us the whole namespace).
    setsid().step(|| "start a new session".to_string())?;
    unshare(CloneFlags::CLONE_NEWNS)
        .step(|| "unshare the mount namespace for pid 1".to_string())?;
    let root_fd = open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .step(|| format!("open the root {}", root.display()))?;
    // SAFETY: open just returned this fd; the OwnedFd closes it.
    let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
    rootfs::populate(root_fd.as_fd(), spec)?;
    sethostname(&spec.hostname).step(|| format!("set the hostname to {}", spec.hostname))?;
    if !spec.host_network {
        net::bring_up_loopback()?;
    }
    // Opened on the host side, before the pivot hides the host's files.
    let trace_out = match &spec.trace {
        Some(path) => {
            Some(std::fs::File::create(path).step(|| format!("create {}", path.display()))?)
        }
        None => None,
    };
    enter(root_fd)?;
    // SAFETY: this process is single-threaded, so the child may run arbitrary code.
    match unsafe { fork() }.step(|| "fork the command".to_string())? {
        ForkResult::Child => {
            if trace_out.is_some() {
                trace::become_tracee();
            }
            command::exec(spec)
        }
        ForkResult::Parent { child } => match trace_out {
            Some(out) => trace::trace(child, out),
            None => reap(child),
        },
    }
}

/// Closes every inherited fd but stdio, the status pipe and the lifeline, so nothing of
/// the host (such as the supervisor's fd on the upper dir) is reachable via /proc/1/fd.
fn keep_only_needed_fds(lifeline: OwnedFd) -> Result<(), StepError> {
    if lifeline.as_raw_fd() != LIFELINE_FD {
        dup2(lifeline.as_raw_fd(), LIFELINE_FD).step(|| "move the lifeline fd".to_string())?;
        drop(lifeline);
    } else {
        std::mem::forget(lifeline); // already where it belongs; LIFELINE_FD owns it
    }
    super::close_fds_except(&[0, 1, 2, STATUS_FD, LIFELINE_FD])
        .step(|| "close inherited file descriptors".to_string())?;
    // dup2 cleared close-on-exec; the command must not inherit the lifeline.
    super::set_cloexec(LIFELINE_FD).step(|| "mark the lifeline close-on-exec".to_string())
}

/// SIGKILL when the supervisor dies; if it already died (before the prctl), exit now.
/// getppid() cannot tell: our parent lives outside our pid namespace, so it reads 0.
fn die_with_supervisor() -> Result<(), StepError> {
    set_pdeathsig(Signal::SIGKILL).step(|| "set the parent-death signal".to_string())?;
    // SAFETY: LIFELINE_FD is open (see keep_only_needed_fds) for this process's lifetime.
    let lifeline = unsafe { std::os::fd::BorrowedFd::borrow_raw(LIFELINE_FD) };
    let mut fds = [PollFd::new(lifeline, PollFlags::POLLIN)];
    poll(&mut fds, PollTimeout::ZERO).step(|| "check on the supervisor".to_string())?;
    if fds[0]
        .revents()
        .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLIN))
    {
        std::process::exit(125);
    }
    Ok(())
}

/// pivot_root into the root: the old root is stacked on top of the new one by
/// `pivot_root(".", ".")` and then detached, so no host path stays reachable.
fn enter(root: OwnedFd) -> Result<(), StepError> {
    fchdir(root.as_raw_fd()).step(|| "enter the root".to_string())?;
    drop(root);
    pivot_root(".", ".").step(|| "pivot_root into the root".to_string())?;
    umount2(".", MntFlags::MNT_DETACH).step(|| "detach the host's root".to_string())?;
    chdir("/").step(|| "chdir / in the new root".to_string())
}

/// Reaps children until none is left; when `command` ends, kills everything else in the
/// namespace. Reports the command's status and returns the matching exit code.
fn reap(command: Pid) -> Result<i32, StepError> {
    let mut report = None;
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == command => {
                report = Some(Report::Exited(code));
                kill_everything_else();
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == command => {
                report = Some(Report::Signalled(sig as i32));
                kill_everything_else();
            }
            // Something the command left behind; once it is done, keep sweeping in case a
            // straggler forked while we were killing.
            Ok(_) if report.is_some() => kill_everything_else(),
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => break,
            Err(e) => return Err(StepError(format!("wait for the command: {e}"))),
        }
    }
    let report = report
        .ok_or_else(|| StepError("the command vanished without an exit status".to_string()))?;
    report.send();
    Ok(report.exit_code())
}
