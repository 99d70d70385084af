//! The tracer `RunSpec::trace` asks for (`kiln appliance`): pid 1 runs the command under
//! ptrace, follows every fork, vfork, clone and exec, and records each path that a
//! *successful* open/openat/openat2, stat-family, access, readlink or execve call named,
//! made absolute against the calling process's working directory or directory fd (read
//! from /proc at the call's entry, before anything can change them).
//!
//! Tracing replaces pid 1's reaping loop: every process of the step is a tracee, so the
//! same `waitpid(-1)` sees both their ptrace stops and their ends.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::Write;

use nix::errno::Errno;
use nix::sys::ptrace::{self, Options};
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::kill_everything_else;
use super::report::Report;
use super::step::StepError;

/// Longest path read from a tracee (the kernel's `PATH_MAX`).
const PATH_MAX: usize = 4096;

/// A call seen at its entry whose path is recorded if it succeeds.
struct Pending {
    path: String,
}

#[derive(Default)]
struct Tracee {
    /// Between a syscall-entry stop and its exit stop.
    in_syscall: bool,
    /// Its first stop (the SIGSTOP a new tracee starts with) has been seen.
    started: bool,
    pending: Option<Pending>,
}

/// In the forked command, before it execs: become a tracee and stop until pid 1 has set
/// the tracing options.
pub(crate) fn become_tracee() {
    let _ = ptrace::traceme();
    let _ = nix::sys::signal::raise(Signal::SIGSTOP);
}

/// Traces `command` and everything it starts until all have ended; writes the paths to
/// `out`, reports the command's status and returns the matching exit code (as the
/// untraced reaping loop does).
pub(crate) fn trace(command: Pid, mut out: File) -> Result<i32, StepError> {
    match waitpid(command, Some(WaitPidFlag::__WALL)) {
        Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
        other => {
            return Err(StepError(format!(
                "the traced command did not stop as expected: {other:?}"
            )))
        }
    }
    let options = Options::PTRACE_O_TRACESYSGOOD
        | Options::PTRACE_O_TRACEFORK
        | Options::PTRACE_O_TRACEVFORK
        | Options::PTRACE_O_TRACECLONE
        | Options::PTRACE_O_TRACEEXEC
        | Options::PTRACE_O_EXITKILL;
    ptrace::setoptions(command, options)
        .map_err(|e| StepError(format!("set the ptrace options: {e}")))?;
    ptrace::syscall(command, None)
        .map_err(|e| StepError(format!("start the traced command: {e}")))?;
    let mut tracees: HashMap<Pid, Tracee> = HashMap::new();
    tracees.insert(
        command,
        Tracee {
            started: true,
            ..Tracee::default()
        },
    );
    let mut paths = BTreeSet::new();
    let mut report = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::__WALL)) {
            Ok(WaitStatus::PtraceSyscall(pid)) => {
                let t = tracees.entry(pid).or_default();
                t.started = true;
                if t.in_syscall {
                    t.in_syscall = false;
                    if let Some(p) = t.pending.take() {
                        if succeeded(pid) {
                            paths.insert(p.path);
                        }
                    }
                } else {
                    t.in_syscall = true;
                    t.pending = entry(pid);
                }
                let _ = ptrace::syscall(pid, None);
            }
            Ok(WaitStatus::PtraceEvent(pid, _, event)) => {
                if event == libc::PTRACE_EVENT_EXEC {
                    // A thread other than the leader exec'd: it now has the leader's id.
                    if let Ok(old) = ptrace::getevent(pid) {
                        let old = Pid::from_raw(old as i32);
                        if old != pid {
                            if let Some(t) = tracees.remove(&old) {
                                tracees.insert(pid, t);
                            }
                        }
                    }
                } else if let Ok(child) = ptrace::getevent(pid) {
                    tracees.entry(Pid::from_raw(child as i32)).or_default();
                }
                let _ = ptrace::syscall(pid, None);
            }
            Ok(WaitStatus::Stopped(pid, sig)) => {
                let t = tracees.entry(pid).or_default();
                let deliver = if sig == Signal::SIGSTOP && !t.started {
                    None
                } else {
                    Some(sig)
                };
                t.started = true;
                let _ = ptrace::syscall(pid, deliver);
            }
            Ok(WaitStatus::Exited(pid, code)) => {
                tracees.remove(&pid);
                if pid == command {
                    report = Some(Report::Exited(code));
                    kill_everything_else();
                } else if report.is_some() {
                    kill_everything_else();
                }
            }
            Ok(WaitStatus::Signaled(pid, sig, _)) => {
                tracees.remove(&pid);
                if pid == command {
                    report = Some(Report::Signalled(sig as i32));
                    kill_everything_else();
                } else if report.is_some() {
                    kill_everything_else();
                }
            }
            Ok(_) | Err(Errno::EINTR) => {}
            Err(Errno::ECHILD) => break,
            Err(e) => return Err(StepError(format!("wait for the traced command: {e}"))),
        }
    }
    let mut bytes = Vec::new();
    for p in &paths {
        bytes.extend_from_slice(p.as_bytes());
        bytes.push(0);
    }
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| StepError(format!("write the traced paths: {e}")))?;
    let report =
        report.ok_or_else(|| StepError("the command vanished without an exit status".into()))?;
    report.send();
    Ok(report.exit_code())
}

/// Which argument registers of a system call hold (directory fd, path), x86-64 numbering.
/// `None` for calls that touch no path by name.
#[cfg(target_arch = "x86_64")]
fn path_args(regs: &libc::user_regs_struct) -> Option<(i64, u64)> {
    const CWD: i64 = libc::AT_FDCWD as i64;
    let (a, b) = (regs.rdi, regs.rsi);
    match regs.orig_rax as i64 {
        libc::SYS_open | libc::SYS_stat | libc::SYS_lstat | libc::SYS_access => Some((CWD, a)),
        libc::SYS_readlink | libc::SYS_execve => Some((CWD, a)),
        libc::SYS_openat
        | libc::SYS_openat2
        | libc::SYS_newfstatat
        | libc::SYS_statx
        | libc::SYS_faccessat
        | libc::SYS_faccessat2
        | libc::SYS_readlinkat
        | libc::SYS_execveat => Some((a as i32 as i64, b)),
        _ => None,
    }
}

/// At a syscall's entry: the absolute path it names, if it is one of the traced calls.
#[cfg(target_arch = "x86_64")]
fn entry(pid: Pid) -> Option<Pending> {
    let regs = ptrace::getregs(pid).ok()?;
    let (dirfd, addr) = path_args(&regs)?;
    let path = read_string(pid, addr)?;
    if path.is_empty() {
        return None; // AT_EMPTY_PATH: the fd itself, already recorded when opened
    }
    let path = if path.starts_with('/') {
        path
    } else {
        let base = if dirfd == libc::AT_FDCWD as i64 {
            std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?
        } else {
            std::fs::read_link(format!("/proc/{pid}/fd/{dirfd}")).ok()?
        };
        let base = base.to_str()?.to_string();
        if !base.starts_with('/') {
            return None; // a pipe, socket or deleted directory
        }
        format!("{}/{path}", base.trim_end_matches('/'))
    };
    Some(Pending {
        path: without_dots(&path),
    })
}

/// `/a/./b//c` → `/a/b/c`. `..` stays: only the root's own symlinks can resolve it.
fn without_dots(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    format!("/{}", parts.join("/"))
}

/// At a syscall's exit: whether it returned success.
#[cfg(target_arch = "x86_64")]
fn succeeded(pid: Pid) -> bool {
    ptrace::getregs(pid).is_ok_and(|r| (r.rax as i64) >= 0)
}

#[cfg(not(target_arch = "x86_64"))]
fn entry(_pid: Pid) -> Option<Pending> {
    None
}

#[cfg(not(target_arch = "x86_64"))]
fn succeeded(_pid: Pid) -> bool {
    false
}

#[cfg(test)]
#[test]
fn dots_and_double_slashes_go() {
    assert_eq!(without_dots("/bin/./true"), "/bin/true");
    assert_eq!(without_dots("/a//b/../c/"), "/a/b/../c");
    assert_eq!(without_dots("/"), "/");
}

/// A NUL-ended string from the tracee's memory, read a page at a time (a read that
/// crosses into an unmapped page would fail as a whole).
fn read_string(pid: Pid, addr: u64) -> Option<String> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < PATH_MAX {
        let chunk = (4096 - (at % 4096) as usize).min(PATH_MAX - out.len());
        let mut buf = vec![0u8; chunk];
        let remote = [nix::sys::uio::RemoteIoVec {
            base: at as usize,
            len: chunk,
        }];
        let n = nix::sys::uio::process_vm_readv(
            pid,
            &mut [std::io::IoSliceMut::new(&mut buf)],
            &remote,
        )
        .ok()?;
        if let Some(end) = buf[..n].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return String::from_utf8(out).ok();
        }
        out.extend_from_slice(&buf[..n]);
        at += n as u64;
        if n == 0 {
            return None;
        }
    }
    None
}
