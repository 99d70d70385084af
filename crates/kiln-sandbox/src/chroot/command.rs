//! The step's command: forked by pid 1 after it pivoted into the root. Creates the working
//! directory, installs the fast-sync filter, drops to the step's user, and execs `argv`
//! with exactly the step's environment.

use std::ffi::{CStr, CString};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{chdir, execve, setgid, setgroups, setuid, Gid, Uid};

use super::report::Report;
use super::step::{Step, StepError};
use crate::{seccomp, RunSpec};

/// Where `argv[0]` is looked up when the step's environment has no PATH (as sh does).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Exit code for a command that exists but cannot be executed (as sh uses).
const CANNOT_EXECUTE: i32 = 126;
/// Exit code for a command that is not found (as sh uses).
const NOT_FOUND: i32 = 127;

/// Runs the step's command in this (already forked) process; never returns.
pub(crate) fn exec(spec: &RunSpec) -> ! {
    let code = match prepare(spec) {
        Ok(()) => exec_argv(spec),
        Err(e) => {
            Report::Setup(e.0).send();
            125
        }
    };
    std::process::exit(code)
}

fn prepare(spec: &RunSpec) -> Result<(), StepError> {
    reset_signals()?;
    umask(Mode::from_bits_truncate(0o022));
    make_cwd(&spec.cwd, spec.uid, spec.gid)?;
    if spec.interactive {
        take_terminal();
    }
    if spec.fast_sync {
        let program = seccomp::fast_sync_program().map_err(StepError)?;
        seccomp::install(&program).step(|| "install the fast_sync seccomp filter".to_string())?;
    }
    let (uid, gid) = (Uid::from_raw(spec.uid), Gid::from_raw(spec.gid));
    setgroups(&[]).step(|| "drop supplementary groups".to_string())?;
    setgid(gid).step(|| format!("set gid {gid}"))?;
    setuid(uid).step(|| format!("set uid {uid}"))?;
    chdir(spec.cwd.as_str())
        .step(|| format!("enter the working directory {} as uid {uid}", spec.cwd))
}

/// Default dispositions and an empty mask: kiln (a Rust program) ignores SIGPIPE, and
/// ignored signals survive exec, which would break pipelines like `yes | head`.
fn reset_signals() -> Result<(), StepError> {
    for signal in 1..=libc::SIGRTMAX() {
        if signal != libc::SIGKILL && signal != libc::SIGSTOP {
            // SAFETY: setting a default disposition; glibc-reserved signals just fail.
            unsafe { libc::signal(signal, libc::SIG_DFL) };
        }
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .step(|| "clear the signal mask".to_string())
}

/// On a pty (an interactive run on a terminal): a session of our own with the pty as its
/// controlling terminal, so a shell gets job control and Ctrl-C reaches what it runs.
/// Best effort: without it a shell still works, only without job control.
fn take_terminal() {
    if nix::unistd::isatty(0).unwrap_or(false) && nix::unistd::setsid().is_ok() {
        // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }
}

/// Creates the working directory and missing parents, owned by the step's user.
fn make_cwd(cwd: &str, uid: u32, gid: u32) -> Result<(), StepError> {
    let mut missing: Vec<PathBuf> = Vec::new();
    for dir in Path::new(cwd).ancestors() {
        if dir.exists() {
            break;
        }
        missing.push(dir.to_path_buf());
    }
    for dir in missing.iter().rev() {
        std::fs::create_dir(dir)
            .step(|| format!("create the working directory {}", dir.display()))?;
        chown(dir, Some(uid), Some(gid)).step(|| format!("give {} to uid {uid}", dir.display()))?;
    }
    Ok(())
}

/// Execs `argv`, searching PATH like a shell; returns an exit code (126/127) on failure,
/// after printing the shell-like reason to stderr (the step's output).
fn exec_argv(spec: &RunSpec) -> i32 {
    let argv0 = spec.argv[0].as_str();
    let (argv, env) = match (
        c_strings(spec.argv.iter().map(String::as_str)),
        environment(&spec.env),
    ) {
        (Ok(argv), Ok(env)) => (argv, env),
        _ => {
            eprintln!("kiln: {argv0}: argument or environment contains a NUL byte");
            return CANNOT_EXECUTE;
        }
    };
    let error = if argv0.contains('/') {
        try_exec(&argv[0], &argv, &env)
    } else {
        search_path(argv0, path_of(&spec.env), &argv, &env)
    };
    let (code, reason) = match error {
        Errno::ENOENT | Errno::ENOTDIR if !argv0.contains('/') => {
            (NOT_FOUND, "command not found".to_string())
        }
        Errno::ENOENT | Errno::ENOTDIR => (NOT_FOUND, "No such file or directory".to_string()),
        Errno::EACCES => (CANNOT_EXECUTE, "Permission denied".to_string()),
        Errno::ENOEXEC => (
            CANNOT_EXECUTE,
            "cannot execute: Exec format error".to_string(),
        ),
        other => (CANNOT_EXECUTE, format!("cannot execute: {}", other.desc())),
    };
    eprintln!("kiln: {argv0}: {reason}");
    code
}

fn path_of(env: &[(String, String)]) -> &str {
    env.iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map_or(DEFAULT_PATH, |(_, v)| v.as_str())
}

/// Tries each PATH entry like execvp: a missing file moves on, a permission error is
/// remembered, anything else stops. Returns the error to report.
fn search_path(name: &str, path: &str, argv: &[CString], env: &[CString]) -> Errno {
    let mut denied = false;
    for dir in path.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let Ok(candidate) = CString::new(format!("{dir}/{name}")) else {
            continue;
        };
        match try_exec(&candidate, argv, env) {
            Errno::ENOENT | Errno::ENOTDIR => {}
            Errno::EACCES => denied = true,
            other => return other,
        }
    }
    if denied {
        Errno::EACCES
    } else {
        Errno::ENOENT
    }
}

fn try_exec(program: &CStr, argv: &[CString], env: &[CString]) -> Errno {
    match execve(program, argv, env) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn c_strings<'a>(items: impl Iterator<Item = &'a str>) -> Result<Vec<CString>, std::ffi::NulError> {
    items.map(CString::new).collect()
}

fn environment(env: &[(String, String)]) -> Result<Vec<CString>, std::ffi::NulError> {
    env.iter()
        .map(|(k, v)| CString::new(format!("{k}={v}")))
        .collect()
}
