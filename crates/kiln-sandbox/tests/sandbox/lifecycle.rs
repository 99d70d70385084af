//! How a sandbox ends: background processes, Ctrl-C, and a kiln killed with SIGKILL.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_sandbox::{Outcome, RootFs, Sandbox, SandboxError};

use crate::check;
use crate::fixture::{
    all_exited, descendants, marker, pidfd, pids_with_cmdline, ready_script, run, spec, within,
    Fixture, OnReady, TestResult,
};
use crate::HELPER_ARG;

pub fn background_process_is_killed_and_run_returns(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let m = marker();
    // The sleep keeps the output pipe open: run must still return when the shell exits.
    let s = spec(fx.root(&layer), &format!("sleep {m} & echo started"));
    let (outcome, out) =
        within(Duration::from_secs(30), move || run(&s))?.map_err(|e| e.to_string())?;
    check!(
        outcome == Outcome::Exited(0) && out == "started\n",
        "got {outcome:?}: {out:?}"
    );
    let left = pids_with_cmdline(&["sleep", &m]);
    check!(
        left.is_empty(),
        "background sleep still alive: pids {left:?}"
    );
    Ok(())
}

/// SIGINT to kiln's process group (Ctrl-C) ends the sandbox: run returns Interrupted, and
/// every sandbox process is gone by then. Runs in a helper process with its own process
/// group, so the signal reaches nothing else.
pub fn sigint_to_the_process_group_ends_the_sandbox(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_helper("interrupt", &[&fx.lower, &layer.upper, &layer.work])?;
    check!(out.trim() == "ok", "helper: {out}");
    check!(
        layer.contents().is_empty(),
        "upper not cleaned after the interrupt: {:?}",
        layer.contents()
    );
    Ok(())
}

/// A SIGKILLed kiln takes the whole sandbox with it (parent-death signals).
pub fn killed_kiln_leaves_no_sandbox(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut child = helper_command("stand-in", &[&fx.lower, &layer.upper, &layer.work])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start helper: {e}"))?;
    let helper = child.id() as i32;
    let stdout = child.stdout.take().ok_or("no helper stdout")?;
    let line = within(Duration::from_secs(30), move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    });
    let line = match line {
        Ok(Ok(line)) => line,
        other => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("helper never got ready: {other:?}"));
        }
    };
    let Some(m) = line.strip_prefix("ready ").map(str::trim) else {
        let _ = child.kill();
        return Err(format!("helper said {line:?}"));
    };
    let sandbox = descendants(helper);
    let fds: Vec<_> = sandbox.iter().filter_map(|&pid| pidfd(pid).ok()).collect();
    let sleepers = pids_with_cmdline(&["sleep", m]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(helper),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    check!(
        sleepers.iter().all(|p| sandbox.contains(p)) && !sleepers.is_empty(),
        "sleep {sleepers:?} not among {sandbox:?}"
    );
    check!(
        fds.len() >= 4,
        "expected supervisor, pid 1, shell and sleep; found {sandbox:?}"
    );
    check!(
        all_exited(&fds, Duration::from_secs(10)),
        "sandbox processes {sandbox:?} outlived kiln"
    );
    Ok(())
}

fn helper_command(name: &str, args: &[&PathBuf]) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut command = Command::new(exe);
    command
        .arg(HELPER_ARG)
        .arg(name)
        .args(args)
        .stdin(Stdio::null());
    command
}

/// Runs a helper in its own process group; returns its stdout (or its failure).
pub fn run_helper(name: &str, args: &[&PathBuf]) -> Result<String, String> {
    use std::os::unix::process::CommandExt;
    let child = helper_command(name, args)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("start helper {name}: {e}"))?;
    let pid = child.id() as i32;
    match within(Duration::from_secs(30), move || child.wait_with_output()) {
        Ok(Ok(output)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            check!(
                output.status.success(),
                "helper {name} failed ({}): {text}",
                output.status
            );
            Ok(text)
        }
        Ok(Err(e)) => Err(format!("wait for helper {name}: {e}")),
        Err(e) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            Err(format!("helper {name}: {e}"))
        }
    }
}

/// The layer a helper works on, from its arguments: lower, upper, work.
fn helper_root(args: &[String]) -> Result<RootFs, String> {
    match args {
        [lower, upper, work] => Ok(RootFs::Overlay {
            lower: vec![lower.into()],
            upper: upper.into(),
            work: work.into(),
        }),
        _ => Err(format!("expected lower, upper and work dirs, got {args:?}")),
    }
}

extern "C" fn ignore_in_handler(_: libc::c_int) {}

/// Helper: catches SIGINT itself (as kiln would; handlers do not survive exec) and ignores
/// SIGHUP (as under nohup). Once the sandbox is ready it sends SIGHUP, then SIGINT, to its
/// process group: the ignored SIGHUP must stay ignored in the sandbox, SIGINT must end it.
/// Checks what run returns and that every sandbox process has exited by then.
pub fn helper_interrupt(args: &[String]) -> TestResult {
    // SAFETY: the handler does nothing; SIG_IGN installs none.
    unsafe {
        libc::signal(
            libc::SIGINT,
            ignore_in_handler as *const () as libc::sighandler_t,
        );
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let m = marker();
    let s = spec(helper_root(args)?, &ready_script(&m));
    let me = std::process::id() as i32;
    let (mut fds, mut seen) = (Vec::new(), Vec::new());
    let mut sink = OnReady {
        seen: Vec::new(),
        fired: false,
        on_ready: || {
            seen = descendants(me);
            fds = seen.iter().filter_map(|&pid| pidfd(pid).ok()).collect();
            // SAFETY: kill(2) on our own process group.
            unsafe {
                libc::kill(0, libc::SIGHUP);
                libc::kill(0, libc::SIGINT);
            }
        },
    };
    let result = NamespaceSandbox::new().run(&s, &mut sink);
    let output = String::from_utf8_lossy(&sink.seen).into_owned();
    drop(sink);
    match result {
        Err(SandboxError::Interrupted { signal: 2 }) => {}
        other => {
            return Err(format!(
                "expected Interrupted(SIGINT), got {other:?}; output {output:?}"
            ))
        }
    }
    check!(
        fds.len() >= 4,
        "expected supervisor, pid 1, shell and sleep; found {seen:?}"
    );
    check!(
        all_exited(&fds, Duration::ZERO),
        "sandbox processes {seen:?} still alive when run returned"
    );
    println!("ok");
    Ok(())
}

/// Helper: stands in for kiln. Prints "ready MARKER" when the sandbox runs, then waits to be killed.
pub fn helper_stand_in(args: &[String]) -> TestResult {
    let m = marker();
    let s = spec(helper_root(args)?, &ready_script(&m));
    let mut sink = OnReady {
        seen: Vec::new(),
        fired: false,
        on_ready: || {
            let mut stdout = std::io::stdout();
            let _ = writeln!(stdout, "ready {m}");
            let _ = stdout.flush();
        },
    };
    let result = NamespaceSandbox::new().run(&s, &mut sink);
    Err(format!(
        "run returned although nobody ended the sandbox: {result:?}"
    ))
}

/// A cancel flag (set by kiln's own signal handler for a signal sent to kiln alone) ends the
/// running step: run returns Interrupted, every sandbox process is gone, the upper is clean.
pub fn cancel_flag_ends_the_running_step(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let flag = Arc::new(AtomicBool::new(false));
    let sandbox = NamespaceSandbox::new().with_cancel_flag(flag.clone());
    let s = spec(fx.root(&layer), &ready_script(&marker()));
    let me = std::process::id() as i32;
    let (mut fds, mut seen) = (Vec::new(), Vec::new());
    let mut sink = OnReady {
        seen: Vec::new(),
        fired: false,
        on_ready: || {
            seen = descendants(me);
            fds = seen.iter().filter_map(|&pid| pidfd(pid).ok()).collect();
            flag.store(true, Ordering::SeqCst);
        },
    };
    // As when kiln runs as a shell's background job: SIGINT ignored, inherited by the
    // sandbox. The cancel flag must stop the step all the same.
    // SAFETY: restoring the previous disposition right after the run; no handler runs.
    let old = unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    let result = sandbox.run(&s, &mut sink);
    unsafe { libc::signal(libc::SIGINT, old) };
    drop(sink);
    match result {
        Err(SandboxError::Interrupted { signal: 2 }) => {}
        other => return Err(format!("expected Interrupted(SIGINT), got {other:?}")),
    }
    check!(
        fds.len() >= 4,
        "expected supervisor, pid 1, shell and sleep; found {seen:?}"
    );
    check!(
        all_exited(&fds, Duration::ZERO),
        "sandbox processes {seen:?} outlived run"
    );
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}
