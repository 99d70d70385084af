//! The namespace sandbox: fresh mount/pid/uts/ipc/net namespaces, `pivot_root` into an
//! overlay of the layer chain, minimal /dev, read-only /sys, tmpfs /tmp, secrets on a
//! private tmpfs, cache bind mounts, and an optional seccomp filter for fast sync.
//!
//! Processes (kiln's pid namespace on the left):
//! ```text
//! kiln ──spawn── supervisor (exe __kiln-sandbox-init)   fd 3: spec in, fd 4: status out
//!                   │  unshare(NEWNS|NEWPID|NEWUTS|NEWIPC[|NEWNET]); mounts the root
//!                   └─fork── pid 1 (new pid ns; own nested mount ns)
//!                              │  mounts /dev /sys /tmp binds secrets /proc; pivot_root
//!                              └─fork── the command (setuid, seccomp, execve)
//! ```
//! stdout and stderr of all three are one pipe that [`NamespaceSandbox::run`] copies to
//! its output as bytes arrive. Each process dies with its parent (PR_SET_PDEATHSIG), so a
//! SIGKILLed kiln leaves nothing behind.

mod command;
mod inroot;
mod net;
mod pid1;
mod report;
mod root;
mod rootfs;
mod step;
mod supervisor;
mod terminal;
mod trace;
mod traces;
mod validate;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{pipe2, Pid};

use crate::{Outcome, RunSpec, Sandbox, SandboxError, INIT_ARG, SPEC_FD};
use report::{verdict, Verdict, STATUS_FD};

/// From the sandbox's pid 1 (`pid1`, `trace`): kill(-1) reaches every other process in
/// this pid namespace, and nothing outside it.
fn kill_everything_else() {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
}

/// Runs steps in Linux namespaces by re-executing `exe` as the sandbox init.
///
/// Needs root (it mounts and unshares namespaces). [`Sandbox::run`] may be called from
/// several threads at once; each call blocks its thread until every process of the step
/// is gone, which the parent-death signal relies on (it fires when the spawning *thread*
/// exits).
///
/// The command runs as real root when `uid` is 0 (there is no user namespace), so a step
/// is isolated from the host's files, processes and network, but not hardened against a
/// hostile root inside it, as with OBuilder's runc sandbox.
#[derive(Debug, Clone)]
pub struct NamespaceSandbox {
    exe: PathBuf,
    cancel: Option<Arc<AtomicBool>>,
}

/// How often a run checks its cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

impl NamespaceSandbox {
    /// A sandbox that re-executes the running program (`/proc/self/exe`), whose `main`
    /// must call [`crate::maybe_run_init`] first.
    pub fn new() -> Self {
        Self::with_exe("/proc/self/exe")
    }

    /// A sandbox that runs `exe` as its init; `exe`'s `main` must call
    /// [`crate::maybe_run_init`] first.
    pub fn with_exe(exe: impl Into<PathBuf>) -> Self {
        NamespaceSandbox {
            exe: exe.into(),
            cancel: None,
        }
    }

    /// Ends a running step when `flag` becomes true, e.g. set by kiln's own SIGINT/SIGTERM
    /// handler (`signal_hook::flag`) for a signal sent to kiln alone (`kill -INT <pid>`), which,
    /// unlike Ctrl-C on a terminal, does not reach the sandbox's process group. The sandbox is
    /// then killed and cleaned up, and `run` returns [`SandboxError::Interrupted`] (SIGINT)
    /// within about 100 ms.
    pub fn with_cancel_flag(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }
}

impl Default for NamespaceSandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox for NamespaceSandbox {
    fn run(&self, spec: &RunSpec, output: &mut dyn Write) -> Result<Outcome, SandboxError> {
        if matches!(spec.root, crate::RootFs::Disk { .. }) {
            return Err(SandboxError::Unsupported("VM disks (use the QEMU sandbox)"));
        }
        validate::check(spec)?;
        let json = serde_json::to_vec(spec)
            .map_err(|e| SandboxError::Setup(format!("encode the run spec: {e}")))?;
        let (terminal, slave) = match spec.interactive {
            true => terminal::Terminal::open()?.unzip(),
            false => (None, None),
        };
        let Started {
            mut child,
            spec_in,
            output_out,
            status_out,
        } = self.start(spec.interactive, slave)?;
        // The init reads the whole spec before doing anything else. If it died early the
        // write fails with EPIPE; the status channel then explains.
        let _ = File::from(spec_in).write_all(&json);
        let cancel = self
            .cancel
            .as_deref()
            .map(|flag| (flag, Pid::from_raw(child.id() as i32)));
        let output_fd = terminal
            .as_ref()
            .map_or(output_out.as_fd(), |t| t.master.as_fd());
        let stdin = std::io::stdin();
        let relay = terminal.as_ref().map(|t| (stdin.as_fd(), t.master.as_fd()));
        let pumped = pump(output_fd, &status_out, output, cancel, relay);
        drop(terminal); // the terminal is itself again
        if pumped.is_err() {
            let _ = child.kill(); // the parent-death signals take the rest down
        }
        let exit = child.wait().map_err(|e| {
            SandboxError::sys(
                format!("wait for the sandbox init {}", self.exe.display()),
                e,
            )
        })?;
        match verdict(&pumped?) {
            Verdict::Interrupted(signal) => Err(SandboxError::Interrupted { signal }),
            Verdict::Setup(message) => Err(SandboxError::Setup(message)),
            Verdict::Finished(outcome) => Ok(outcome),
            Verdict::Silent => Err(self.silent_init(exit)),
        }
    }
}

/// A running sandbox init and kiln's ends of its pipes.
struct Started {
    child: Child,
    spec_in: OwnedFd,
    output_out: OwnedFd,
    status_out: OwnedFd,
}

impl NamespaceSandbox {
    /// Spawns the supervisor with the spec pipe on [`SPEC_FD`], the status pipe on
    /// [`STATUS_FD`], stdin from /dev/null and stdout+stderr into one output pipe.
    /// Interactive runs get kiln's stdin instead, or all three on the pty `slave` when
    /// kiln is on a terminal.
    fn start(&self, interactive: bool, slave: Option<OwnedFd>) -> Result<Started, SandboxError> {
        let pipe = |what: &str| {
            pipe2(OFlag::O_CLOEXEC)
                .map_err(|e| SandboxError::sys(format!("create the {what} pipe"), e))
        };
        let (output_out, output_in) = pipe("output")?;
        let (spec_out, spec_in) = pipe("spec")?;
        let (status_out, status_in) = pipe("status")?;
        // Above the target numbers, so the dup2 calls below cannot clobber one another.
        let spec_out = dup_above(&spec_out, 10)?;
        let status_in = dup_above(&status_in, 10)?;
        let (spec_fd, status_fd) = (spec_out.as_raw_fd(), status_in.as_raw_fd());
        let (stdin, stdout, stderr) = stdio(interactive, slave, output_in)?;
        let mut command = Command::new(&self.exe);
        command
            .arg(INIT_ARG)
            .arg(std::process::id().to_string())
            .env_clear() // nothing of kiln's environment is visible in /proc/1/environ
            .current_dir("/")
            .stdin(stdin)
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: dup2 is async-signal-safe and touches no memory.
        unsafe {
            command.pre_exec(move || {
                for (from, to) in [(spec_fd, SPEC_FD), (status_fd, STATUS_FD)] {
                    if libc::dup2(from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|e| {
            SandboxError::sys(format!("start the sandbox init {}", self.exe.display()), e)
        })?;
        drop(command); // closes our copies of the output pipe's write end
        Ok(Started {
            child,
            spec_in,
            output_out,
            status_out,
        })
    }

    fn silent_init(&self, exit: ExitStatus) -> SandboxError {
        SandboxError::Setup(format!(
            "the sandbox init {} ended ({exit}) without saying how the command ended; the \
             program must call kiln_sandbox::maybe_run_init() first thing in main()",
            self.exe.display()
        ))
    }
}

/// The supervisor's stdin, stdout and stderr (see [`NamespaceSandbox::start`]).
fn stdio(
    interactive: bool,
    slave: Option<OwnedFd>,
    output_in: OwnedFd,
) -> Result<(Stdio, Stdio, Stdio), SandboxError> {
    let dup = |fd: &OwnedFd, what: &str| {
        fd.try_clone()
            .map_err(|e| SandboxError::sys(format!("duplicate the {what}"), e))
    };
    if let Some(slave) = slave {
        let (a, b) = (dup(&slave, "pty")?, dup(&slave, "pty")?);
        return Ok((Stdio::from(a), Stdio::from(b), Stdio::from(slave)));
    }
    let stderr = dup(&output_in, "output pipe")?;
    let stdin = if interactive {
        Stdio::inherit()
    } else {
        Stdio::null()
    };
    Ok((stdin, Stdio::from(output_in), Stdio::from(stderr)))
}

fn dup_above(fd: &OwnedFd, min: RawFd) -> Result<OwnedFd, SandboxError> {
    let new = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(min))
        .map_err(|e| SandboxError::sys("duplicate a pipe fd", e))?;
    // SAFETY: fcntl just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Copies the output pipe to `output` as bytes arrive and collects the status channel,
/// until both are closed (every sandbox process is gone). Returns the status bytes.
///
/// With `cancel` = (flag, supervisor), polls the flag and sends the supervisor SIGUSR1
/// ([`supervisor::CANCEL_SIGNAL`]: not SIGINT, which kiln may have inherited ignored) once
/// it is set; the supervisor then kills the sandbox, cleans up and reports Interrupted.
/// With `relay` = (kiln's stdin, pty master), also copies what is typed to the command.
fn pump(
    output_out: BorrowedFd<'_>,
    status_out: &OwnedFd,
    output: &mut dyn Write,
    mut cancel: Option<(&AtomicBool, Pid)>,
    mut relay: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
) -> Result<Vec<u8>, SandboxError> {
    let mut status = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let (mut output_open, mut status_open) = (true, true);
    while output_open || status_open {
        let mut fds = Vec::with_capacity(3);
        if output_open {
            fds.push(PollFd::new(output_out, PollFlags::POLLIN));
        }
        if status_open {
            fds.push(PollFd::new(status_out.as_fd(), PollFlags::POLLIN));
        }
        if let Some((stdin, _)) = relay {
            fds.push(PollFd::new(stdin, PollFlags::POLLIN));
        }
        let timeout = match cancel {
            Some(_) => PollTimeout::try_from(CANCEL_CHECK).unwrap_or(PollTimeout::NONE),
            None => PollTimeout::NONE,
        };
        match poll(&mut fds, timeout) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => return Err(SandboxError::sys("wait for sandbox output", e)),
        }
        if let Some((flag, supervisor)) = cancel {
            if flag.load(Ordering::SeqCst) {
                let _ = kill(supervisor, Signal::SIGUSR1);
                cancel = None; // once is enough; keep pumping until everything has ended
            }
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        let mut ready = ready.into_iter();
        if output_open && ready.next() == Some(true) {
            match read_some(output_out, &mut buf)? {
                0 => output_open = false,
                n => {
                    output
                        .write_all(&buf[..n])
                        .and_then(|()| output.flush())
                        .map_err(|e| SandboxError::sys("write the command's output", e))?;
                }
            }
        }
        if status_open && ready.next() == Some(true) {
            match read_some(status_out.as_fd(), &mut buf)? {
                0 => status_open = false,
                n => status.extend_from_slice(&buf[..n]),
            }
        }
        if let Some((stdin, master)) = relay {
            if ready.next() == Some(true) && !forward(stdin, master, &mut buf)? {
                relay = None;
            }
        }
    }
    Ok(status)
}

/// Copies what is ready on `from` to `to`; false once `from` is at its end.
fn forward(from: BorrowedFd<'_>, to: BorrowedFd<'_>, buf: &mut [u8]) -> Result<bool, SandboxError> {
    let n = read_some(from, buf)?;
    let mut rest = &buf[..n];
    while !rest.is_empty() {
        match nix::unistd::write(to, rest) {
            Ok(written) => rest = &rest[written..],
            Err(Errno::EINTR) => {}
            Err(e) => return Err(SandboxError::sys("pass the input to the command", e)),
        }
    }
    Ok(n > 0)
}

/// Reads what is there; 0 at the end. A pty master reads EIO once every holder of its
/// slave side is gone: that is its end too.
fn read_some(fd: BorrowedFd<'_>, buf: &mut [u8]) -> Result<usize, SandboxError> {
    loop {
        match nix::unistd::read(fd.as_raw_fd(), buf) {
            Err(Errno::EINTR) => continue,
            Err(Errno::EIO) => return Ok(0),
            other => return other.map_err(|e| SandboxError::sys("read from the sandbox", e)),
        }
    }
}

/// Entry point of the sandbox init (see [`crate::maybe_run_init`]).
pub fn init_main() -> ! {
    supervisor::main()
}

/// Marks `fd` close-on-exec.
fn set_cloexec(fd: RawFd) -> Result<(), Errno> {
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map(drop)
}

fn fd_is_open(fd: RawFd) -> bool {
    fcntl(fd, FcntlArg::F_GETFD).is_ok()
}

/// Closes every fd except those in `keep`.
fn close_fds_except(keep: &[RawFd]) -> Result<(), Errno> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut first: RawFd = 0;
    for &fd in keep.iter().chain(std::iter::once(&RawFd::MAX)) {
        if fd > first {
            close_range(first, fd - 1)?;
        }
        first = first.max(fd.saturating_add(1));
    }
    Ok(())
}

/// Closes fds `first..=last`.
fn close_range(first: RawFd, last: RawFd) -> Result<(), Errno> {
    let (Ok(lo), Ok(hi)) = (libc::c_uint::try_from(first), libc::c_uint::try_from(last)) else {
        return Err(Errno::EBADF);
    };
    // SAFETY: close_range only closes descriptors; nothing in this process uses them.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, lo, hi, 0 as libc::c_uint) };
    match Errno::result(rc) {
        Ok(_) => Ok(()),
        Err(Errno::ENOSYS) => close_listed_fds(first, last),
        Err(e) => Err(e),
    }
}

/// close_range(2) needs Linux 5.9; before that, close what /proc/self/fd lists.
fn close_listed_fds(first: RawFd, last: RawFd) -> Result<(), Errno> {
    let entries = std::fs::read_dir("/proc/self/fd").map_err(|_| Errno::ENOSYS)?;
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| (first..=last).contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; EBADF (the read_dir fd, now gone) is harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}
