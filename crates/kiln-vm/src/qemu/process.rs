//! The QEMU child process, owned by a supervisor thread.
//!
//! The supervisor spawns QEMU and stays blocked until it exits, then reaps it.
//! Two things follow. QEMU gets `PR_SET_PDEATHSIG`, which fires when the *thread*
//! that forked it ends; the supervisor lives exactly as long as QEMU does, so
//! QEMU dies with kiln even when kiln is killed outright, and never earlier.
//! And signals are race-free: the supervisor first waits without reaping
//! (`waitid(WNOWAIT)`), then reaps under the same lock that [`Process::kill`]
//! takes, so a kill can never reach a recycled pid.

use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;

/// A running (or exited, not yet dropped) QEMU.
pub(super) struct Process {
    pid: u32,
    shared: Arc<Shared>,
    supervisor: Option<JoinHandle<()>>,
}

/// The child's pipes, handed to whoever reads them.
pub(super) struct Pipes {
    pub stdin: Option<ChildStdin>,
    pub stdout: Option<ChildStdout>,
    pub stderr: Option<ChildStderr>,
}

#[derive(Default)]
struct Shared {
    /// `Some` once the child has been reaped.
    exit: Mutex<Option<ExitStatus>>,
    exited: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.exit.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Process {
    /// Spawns `cmd` from a new supervisor thread. `in_child` runs in the child
    /// between fork and exec (it must be async-signal-safe).
    pub fn spawn(
        mut cmd: Command,
        in_child: impl Fn() -> std::io::Result<()> + Send + Sync + 'static,
    ) -> std::io::Result<(Process, Pipes)> {
        let parent = std::process::id();
        // SAFETY: the closure only calls async-signal-safe functions (prctl,
        // getppid, and whatever `in_child` promises to be).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent may have died before the prctl took effect.
                if libc::getppid() as u32 != parent {
                    libc::_exit(1);
                }
                in_child()
            });
        }
        let shared = Arc::new(Shared::default());
        let (tx, rx) = mpsc::channel();
        let thread_shared = Arc::clone(&shared);
        let supervisor = std::thread::Builder::new()
            .name("kiln-qemu".into())
            .spawn(move || supervise(cmd, tx, &thread_shared))?;
        match rx.recv() {
            Ok(Ok((pid, pipes))) => Ok((
                Process {
                    pid,
                    shared,
                    supervisor: Some(supervisor),
                },
                pipes,
            )),
            Ok(Err(e)) => {
                let _ = supervisor.join();
                Err(e)
            }
            Err(_) => Err(std::io::Error::other("the QEMU supervisor thread died")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status, once QEMU has exited and been reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.shared.lock()
    }

    /// Waits up to `timeout` (forever if `None`) for QEMU to exit.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<ExitStatus> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut exit = self.shared.lock();
        loop {
            if let Some(status) = *exit {
                return Some(status);
            }
            exit = match deadline {
                None => self
                    .shared
                    .exited
                    .wait(exit)
                    .unwrap_or_else(|p| p.into_inner()),
                Some(deadline) => {
                    let left = deadline.checked_duration_since(Instant::now())?;
                    self.shared
                        .exited
                        .wait_timeout(exit, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
    }

    /// Sends SIGKILL unless QEMU was already reaped.
    pub fn kill(&self) {
        let exit = self.shared.lock();
        if exit.is_none() {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

impl Drop for Process {
    /// Kills QEMU and reaps it. A child stuck in the kernel (a hung KVM vCPU) is
    /// left to its supervisor rather than blocking the caller forever.
    fn drop(&mut self) {
        self.kill();
        if self.wait(Some(Duration::from_secs(10))).is_some() {
            if let Some(supervisor) = self.supervisor.take() {
                let _ = supervisor.join();
            }
        } else {
            tracing::warn!(
                pid = self.pid,
                "QEMU did not die within 10s of SIGKILL; leaving it to its supervisor thread"
            );
        }
    }
}

type Started = std::io::Result<(u32, Pipes)>;

fn supervise(mut cmd: Command, tx: mpsc::Sender<Started>, shared: &Shared) {
    let mut child: Child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    let pid = child.id();
    let pipes = Pipes {
        stdin: child.stdin.take(),
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
    };
    let _ = tx.send(Ok((pid, pipes)));
    wait_without_reaping(pid);
    let mut exit = shared.lock();
    match child.wait() {
        Ok(status) => *exit = Some(status),
        Err(e) => {
            tracing::error!(pid, "could not reap QEMU: {e}");
            // Report it as killed so that waiters do not hang.
            use std::os::unix::process::ExitStatusExt;
            *exit = Some(ExitStatus::from_raw(libc::SIGKILL));
        }
    }
    drop(exit);
    shared.exited.notify_all();
}

/// Blocks until `pid` has exited, leaving it a zombie for `Child::wait`.
fn wait_without_reaping(pid: u32) {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(Pid::from_raw(pid as i32)), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sleeper() -> (Process, Pipes) {
        let mut cmd = Command::new("sleep");
        cmd.arg("600").stdin(Stdio::null()).stdout(Stdio::null());
        Process::spawn(cmd, || Ok(())).expect("sleep runs")
    }

    #[test]
    fn drop_kills_and_reaps() {
        let (process, _pipes) = sleeper();
        let pid = process.pid();
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
        assert!(process.exit_status().is_none());
        drop(process);
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn wait_reports_the_exit_status() {
        let (process, _pipes) = sleeper();
        assert!(process.wait(Some(Duration::from_millis(50))).is_none());
        process.kill();
        let status = process.wait(Some(Duration::from_secs(10))).expect("exited");
        assert!(!status.success());
    }

    #[test]
    fn spawn_failure_is_returned() {
        let cmd = Command::new("/nonexistent/binary");
        assert!(Process::spawn(cmd, || Ok(())).is_err());
    }
}
