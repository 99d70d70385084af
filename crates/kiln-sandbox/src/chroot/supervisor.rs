//! The supervisor: the process kiln starts as `exe __kiln-sandbox-init <kiln's pid>`.
//!
//! It reads the [`RunSpec`] from [`SPEC_FD`], unshares the namespaces, mounts the root and
//! creates its mountpoints, forks pid 1 of the new pid namespace, waits for it, then
//! unmounts the root and removes the mountpoints from the layer. It stays in kiln's
//! process group, so Ctrl-C reaches it: it then kills pid 1 (and so the whole namespace),
//! cleans up and reports [`Report::Interrupted`].

use std::io::BufReader;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{unshare, CloneFlags};
use nix::sys::prctl::set_pdeathsig;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::stat::{umask, Mode};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, getppid, pipe2, ForkResult, Pid};

use super::pid1;
use super::report::{Report, STATUS_FD};
use super::root::PreparedRoot;
use super::step::{Step, StepError};
use crate::mount::make_root_private;
use crate::{RunSpec, SPEC_FD};

/// Pid 1's pid (in our namespace), once forked; 0 before.
static PID1: AtomicI32 = AtomicI32::new(0);
/// The stop signal received (SIGINT, SIGTERM, SIGHUP), or 0.
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Runs the supervisor; never returns.
pub(crate) fn main() -> ! {
    let code = match supervise() {
        Ok(code) => code,
        Err(e) => {
            Report::Setup(e.0).send();
            125
        }
    };
    std::process::exit(code)
}

fn supervise() -> Result<i32, StepError> {
    die_with_kiln()?;
    install_stop_handlers()?;
    super::set_cloexec(STATUS_FD).step(|| format!("use fd {STATUS_FD} as the status channel"))?;
    let spec = read_spec()?;
    super::close_fds_except(&[0, 1, 2, STATUS_FD])
        .step(|| "close inherited file descriptors".to_string())?;
    umask(Mode::from_bits_truncate(0o022));
    unshare(namespaces(&spec)).step(|| {
        "unshare the mount, pid, uts, ipc and network namespaces (kiln must run as root)"
            .to_string()
    })?;
    make_root_private()?;
    let mut root = PreparedRoot::mount(&spec.root)?;
    let result = run(&mut root, &spec);
    // Clean up in every case; a set-up error, being the cause, is the one reported.
    let cleaned = root
        .tear_down()
        .map_err(|e| StepError(format!("clean up: {e}")));
    let code = result?;
    if let Some(signal) = stop_signal() {
        // Reported even if clean-up failed: an interrupted step's layer is thrown away.
        Report::Interrupted(signal).send();
        cleaned?;
        return Ok(128 + signal);
    }
    cleaned?;
    Ok(code)
}

/// SIGKILL when kiln dies; exit at once if it already has. The thread that spawned us must
/// live as long as we do: `Sandbox::run` blocks in it until we exit.
fn die_with_kiln() -> Result<(), StepError> {
    let expected = std::env::args_os()
        .nth(2)
        .and_then(|pid| pid.to_str()?.parse::<i32>().ok())
        .ok_or_else(|| {
            StepError("the sandbox init was started without kiln's pid; only kiln starts it".into())
        })?;
    set_pdeathsig(Signal::SIGKILL).step(|| "set the parent-death signal".to_string())?;
    if getppid() != Pid::from_raw(expected) {
        std::process::exit(125);
    }
    Ok(())
}

extern "C" fn on_stop_signal(signal: libc::c_int) {
    // kiln's own cancellation (see CANCEL_SIGNAL) reads as the Ctrl-C it stands for.
    let signal = if signal == CANCEL_SIGNAL {
        libc::SIGINT
    } else {
        signal
    };
    // The first signal is the one reported.
    let _ = STOP_SIGNAL.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
    let pid1 = PID1.load(Ordering::SeqCst);
    if pid1 > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid1, libc::SIGKILL) };
    }
}

fn install_stop_handlers() -> Result<(), StepError> {
    let action = SigAction::new(
        SigHandler::Handler(on_stop_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only touches atomics and calls kill(2).
        let old = unsafe { sigaction(signal, &action) }.step(|| format!("handle {signal}"))?;
        if old.handler() == SigHandler::SigIgn {
            // Ignored by whoever started kiln (nohup, a shell's background job): keep it so.
            // SAFETY: restoring the previous disposition.
            unsafe { sigaction(signal, &old) }.step(|| format!("keep ignoring {signal}"))?;
        }
    }
    // Always handled, whatever kiln inherited: a background job or nohup starts kiln with
    // SIGINT ignored, and its cancel flag must still stop the step.
    // SAFETY: as above.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.step(|| "handle SIGUSR1".to_string())?;
    Ok(())
}

/// What kiln sends the supervisor when its cancel flag is set.
pub(crate) const CANCEL_SIGNAL: libc::c_int = libc::SIGUSR1;

fn stop_signal() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

fn read_spec() -> Result<RunSpec, StepError> {
    let not_open = || {
        format!(
            "fd {SPEC_FD} (the run spec) is not open: the sandbox init is started by kiln itself"
        )
    };
    super::fd_is_open(SPEC_FD)
        .then_some(())
        .ok_or_else(|| StepError(not_open()))?;
    // SAFETY: fd 3 is open (checked above) and nothing else in this process owns it.
    let file = unsafe { std::fs::File::from_raw_fd(SPEC_FD) };
    serde_json::from_reader(BufReader::new(file))
        .map_err(|e| StepError(format!("read the run spec from fd {SPEC_FD}: {e}")))
}

fn namespaces(spec: &RunSpec) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC;
    if !spec.host_network {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Creates the mountpoints, runs pid 1 and waits for it; returns the exit code to use.
fn run(root: &mut PreparedRoot, spec: &RunSpec) -> Result<i32, StepError> {
    root.create_mountpoints(spec)?;
    if stop_signal().is_some() {
        return Ok(125);
    }
    let (lifeline_read, lifeline_write) =
        pipe2(OFlag::O_CLOEXEC).step(|| "create the lifeline pipe".to_string())?;
    // SAFETY: this process is single-threaded, so the child may run arbitrary code.
    let pid1 = match unsafe { fork() }.step(|| "fork pid 1 of the sandbox".to_string())? {
        ForkResult::Child => {
            drop(lifeline_write);
            pid1::run(spec, &root.mountpoint, lifeline_read)
        }
        ForkResult::Parent { child } => child,
    };
    drop(lifeline_read);
    PID1.store(pid1.as_raw(), Ordering::SeqCst);
    if stop_signal().is_some() {
        let _ = kill(pid1, Signal::SIGKILL); // the signal came before PID1 was set
    }
    let status = wait_for(pid1)?;
    drop::<OwnedFd>(lifeline_write);
    match status {
        WaitStatus::Exited(_, code) => Ok(code),
        WaitStatus::Signaled(_, _, _) if stop_signal().is_some() => Ok(125),
        WaitStatus::Signaled(_, sig, _) => Err(StepError(format!(
            "the sandbox's pid 1 was killed by {sig}"
        ))),
        other => Err(StepError(format!(
            "unexpected wait status of the sandbox's pid 1: {other:?}"
        ))),
    }
}

fn wait_for(pid: Pid) -> Result<WaitStatus, StepError> {
    loop {
        match waitpid(pid, None) {
            Err(Errno::EINTR) => continue,
            other => return other.step(|| "wait for the sandbox's pid 1".to_string()),
        }
    }
}
