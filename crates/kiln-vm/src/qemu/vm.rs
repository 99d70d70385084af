//! A running VM: starts QEMU, captures its console, talks QMP, stops it.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::args::{self, Runtime};
use super::console::{Console, Waited};
use super::process::Process;
use super::qmp::{parse_usernet, GuestSocket, Qmp};
use super::{locate_qemu, validate, Boot, ConsoleMode, Firmware, VmConfig};
use crate::accel::{self, Accel};
use crate::error::{Result, VmError};

/// How long QEMU may take to answer on its control socket after exec.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a QMP command may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(30);
/// How much of QEMU's stderr is kept for error messages.
const STDERR_KEPT: usize = 16 << 10;

/// A QEMU virtual machine. Dropping it kills QEMU (and reaps it).
pub struct Vm {
    // Declared first so that it drops first: QEMU is gone before its files are.
    process: Process,
    console: Option<Arc<Console>>,
    stdin: Mutex<Option<ChildStdin>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Mutex<Option<JoinHandle<()>>>,
    qmp: Mutex<Qmp>,
    /// (guest port, host port), in configuration order.
    forwards: Vec<(u16, u16)>,
    accel: Accel,
    started: Instant,
    snapshot: bool,
    shutdown_grace: Duration,
    agent_socket: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

impl Vm {
    /// Starts QEMU and returns once it answers on its control socket (the guest
    /// is then booting). Errors name what is missing and how to get it.
    pub fn start(cfg: VmConfig) -> Result<Vm> {
        let qemu = locate_qemu(&cfg)?;
        validate(&cfg)?;
        let accel = cfg.accel.unwrap_or_else(|| accel::detection(&qemu).accel);
        let dir = tempfile::Builder::new()
            .prefix("kiln-vm-")
            .tempdir()
            .map_err(|source| VmError::Io {
                what: "could not create a temporary directory in",
                path: std::env::temp_dir(),
                source,
            })?;
        let firmware = uefi_firmware(&cfg, dir.path())?;
        let qmp_path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&qmp_path).map_err(|source| VmError::Io {
            what: "could not create the QMP socket",
            path: qmp_path.clone(),
            source,
        })?;
        let agent_socket = cfg.agent.then(|| dir.path().join("agent.sock"));
        let runtime = Runtime {
            accel,
            uefi: firmware.as_ref().map(|(fw, vars)| (fw, vars.as_path())),
            qmp_fd: listener.as_raw_fd(),
            agent_socket: agent_socket.as_deref(),
        };
        let mut cmd = Command::new(&qemu);
        cmd.args(args::build(&cfg, &runtime));
        configure_stdio(&mut cmd, cfg.console);
        tracing::debug!(?cmd, "starting QEMU");
        let serial_log = open_serial_log(&cfg)?;

        let qmp_fd = listener.as_raw_fd();
        let (process, pipes) =
            Process::spawn(cmd, move || inherit_fd(qmp_fd)).map_err(|source| VmError::Spawn {
                binary: qemu.clone(),
                source,
            })?;
        let started = Instant::now();
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let echo = cfg.console == ConsoleMode::Interactive;
        let stderr_reader = pipes
            .stderr
            .map(|pipe| spawn_stderr_reader(pipe, Arc::clone(&stderr), echo));
        let console =
            capture_console(pipes.stdout, serial_log).map_err(|source| VmError::Spawn {
                binary: qemu.clone(),
                source,
            })?;

        let vm_parts = Parts {
            process,
            stderr,
            stderr_reader,
        };
        let qmp = connect_qmp(&qmp_path, listener);
        let mut qmp = match qmp {
            Ok(qmp) => qmp,
            Err(e) => return Err(vm_parts.explain_failure(e, "while starting")),
        };
        let forwards = match resolve_forwards(&mut qmp, &cfg) {
            Ok(f) => f,
            Err(e) => return Err(vm_parts.explain_failure(e, "while setting up port forwards")),
        };
        tracing::info!(pid = vm_parts.process.pid(), %accel, ?forwards, "QEMU started");
        Ok(Vm {
            process: vm_parts.process,
            console,
            stdin: Mutex::new(pipes.stdin),
            stderr: vm_parts.stderr,
            stderr_reader: Mutex::new(vm_parts.stderr_reader),
            qmp: Mutex::new(qmp),
            forwards,
            accel,
            started,
            snapshot: cfg.snapshot,
            shutdown_grace: cfg.shutdown_grace,
            agent_socket,
            _dir: dir,
        })
    }

    /// The accelerator QEMU runs with.
    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// When QEMU was started.
    pub fn started_at(&self) -> Instant {
        self.started
    }

    /// The loopback port forwarded to `guest`, if any.
    pub fn host_port(&self, guest: u16) -> Option<u16> {
        self.forwards
            .iter()
            .find(|(g, _)| *g == guest)
            .map(|(_, host)| *host)
    }

    /// All forwards as (guest port, host port).
    pub fn forwards(&self) -> &[(u16, u16)] {
        &self.forwards
    }

    /// Waits until the serial console has shown `substr` (anywhere in its
    /// output so far); returns the time since the VM started.
    pub fn wait_console(&self, substr: &str, timeout: Duration) -> Result<Duration> {
        let console = self.console.as_ref().ok_or(VmError::ConsoleNotCaptured)?;
        match console.wait_for(substr, Instant::now() + timeout) {
            Waited::Found => Ok(self.started.elapsed()),
            Waited::TimedOut => Err(VmError::ConsoleTimeout {
                expect: substr.to_string(),
                timeout,
                tail: console.tail(20),
            }),
            Waited::Closed => Err(self.exited_error(&format!(
                "before the console showed {substr:?}; last console lines:\n{}",
                console.tail(20)
            ))),
        }
    }

    /// Everything the serial console printed (escape sequences removed).
    pub fn serial_text(&self) -> String {
        self.console.as_ref().map(|c| c.text()).unwrap_or_default()
    }

    /// The console's last `lines` lines.
    pub fn serial_tail(&self, lines: usize) -> String {
        self.console
            .as_ref()
            .map(|c| c.tail(lines))
            .unwrap_or_default()
    }

    /// Types `bytes` on the serial console (captured mode only).
    pub fn send_console(&self, bytes: &[u8]) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(|p| p.into_inner());
        let pipe = stdin.as_mut().ok_or(VmError::ConsoleNotCaptured)?;
        pipe.write_all(bytes)
            .and_then(|()| pipe.flush())
            .map_err(|e| self.exited_error(&format!("while typing on the console ({e})")))
    }

    /// Where QEMU listens for the host end of the agent port ([`VmConfig::agent`]).
    pub fn agent_socket(&self) -> Option<&Path> {
        self.agent_socket.as_deref()
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub fn wait_exit(&self, timeout: Duration) -> Option<ExitStatus> {
        self.process.wait(Some(timeout))
    }

    /// Kills QEMU (SIGKILL) and waits for it to be reaped.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.process.kill();
        self.process.wait(Some(Duration::from_secs(10)))
    }

    /// QEMU's exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.process.exit_status()
    }

    /// Blocks until QEMU exits (for interactive runs: the user quits with Ctrl-A X).
    pub fn wait(&self) -> ExitStatus {
        loop {
            if let Some(status) = self.process.wait(None) {
                return status;
            }
        }
    }

    /// The guest's TCP sockets as QEMU's user-mode network sees them.
    pub fn guest_sockets(&self) -> Result<Vec<GuestSocket>> {
        let text = self.qmp().human("info usernet")?;
        Ok(parse_usernet(&text))
    }

    /// Stops the VM: with `snapshot` there is nothing to save, so QEMU quits at
    /// once; otherwise the guest gets an ACPI power-off and the configured
    /// grace period, then QEMU is killed.
    pub fn shutdown(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.process.exit_status() {
            return Ok(status);
        }
        let (command, grace) = if self.snapshot {
            ("quit", Duration::from_secs(10))
        } else {
            ("system_powerdown", self.shutdown_grace)
        };
        if let Err(e) = self.qmp().execute(command, None) {
            tracing::debug!("QMP {command} failed ({e}); killing QEMU");
        }
        if let Some(status) = self.process.wait(Some(grace)) {
            return Ok(status);
        }
        tracing::info!(
            "the guest did not power off within {:.0}s; killing QEMU",
            grace.as_secs_f64()
        );
        self.process.kill();
        self.process
            .wait(Some(Duration::from_secs(10)))
            .ok_or_else(|| VmError::Qmp {
                doing: "shutting down".into(),
                detail: format!("QEMU (pid {}) survived SIGKILL for 10s", self.pid()),
            })
    }

    fn qmp(&self) -> MutexGuard<'_, Qmp> {
        self.qmp.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An error for "QEMU exited {during}", with its status and stderr.
    pub(crate) fn exited_error(&self, during: &str) -> VmError {
        let status = self.process.wait(Some(Duration::from_secs(5)));
        // Once QEMU has exited its stderr is at EOF: join the reader so that
        // the message holds everything QEMU said. (A live QEMU keeps it open.)
        if status.is_some() {
            let reader = self
                .stderr_reader
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take();
            if let Some(reader) = reader {
                let _ = reader.join();
            }
        }
        exited(status, during, &self.stderr)
    }
}

/// What exists between spawning QEMU and a fully started [`Vm`].
struct Parts {
    process: Process,
    stderr: Arc<Mutex<Vec<u8>>>,
    stderr_reader: Option<JoinHandle<()>>,
}

impl Parts {
    /// If QEMU died, its exit status and stderr explain `error` better than the
    /// error itself; otherwise QEMU is killed (on drop) and `error` returned.
    fn explain_failure(mut self, error: VmError, during: &str) -> VmError {
        let Some(status) = self.process.wait(Some(Duration::from_secs(5))) else {
            return error;
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        exited(Some(status), during, &self.stderr)
    }
}

fn exited(status: Option<ExitStatus>, during: &str, stderr: &Mutex<Vec<u8>>) -> VmError {
    let stderr = stderr.lock().unwrap_or_else(|p| p.into_inner());
    VmError::QemuExited {
        status: status
            .map(Into::into)
            .unwrap_or_else(|| crate::error::ExitStatusText("still running".into())),
        during: during.to_string(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// Connects to QEMU's QMP socket and negotiates.
///
/// Connecting before QEMU accepts is fine (the kernel queues the connection);
/// dropping our copy of the listener right after means that a QEMU that dies
/// resets the connection instead of leaving the handshake to time out.
fn connect_qmp(path: &Path, listener: UnixListener) -> Result<Qmp> {
    let stream = UnixStream::connect(path);
    drop(listener);
    let stream = stream.map_err(|e| VmError::Qmp {
        doing: "connecting".into(),
        detail: e.to_string(),
    })?;
    let mut qmp = Qmp::handshake(stream, STARTUP_TIMEOUT)?;
    qmp.set_timeout(QMP_TIMEOUT)?;
    Ok(qmp)
}

/// Starts reading the serial console from QEMU's stdout (captured mode only).
fn capture_console(
    stdout: Option<std::process::ChildStdout>,
    log: Option<File>,
) -> std::io::Result<Option<Arc<Console>>> {
    let Some(pipe) = stdout else {
        return Ok(None);
    };
    let console = Arc::new(Console::default());
    console.spawn_reader(pipe, log)?;
    Ok(Some(console))
}

/// The firmware and the VM's private copy of its variable store (UEFI only).
fn uefi_firmware(cfg: &VmConfig, dir: &Path) -> Result<Option<(Firmware, PathBuf)>> {
    if cfg.boot != Boot::Uefi {
        return Ok(None);
    }
    let firmware = match &cfg.firmware {
        Some(fw) => fw.clone(),
        None => Firmware::locate()?,
    };
    firmware.verify()?;
    let vars = dir.join("OVMF_VARS.fd");
    std::fs::copy(&firmware.vars, &vars).map_err(|source| VmError::Io {
        what: "could not copy the UEFI variable store to",
        path: vars.clone(),
        source,
    })?;
    Ok(Some((firmware, vars)))
}

fn configure_stdio(cmd: &mut Command, mode: ConsoleMode) {
    cmd.stderr(Stdio::piped());
    match mode {
        ConsoleMode::Capture => {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
            // Keep the terminal's Ctrl-C away from QEMU: kiln decides when it stops.
            cmd.process_group(0);
        }
        ConsoleMode::Interactive => {
            cmd.stdin(Stdio::inherit()).stdout(Stdio::inherit());
        }
    }
}

fn open_serial_log(cfg: &VmConfig) -> Result<Option<File>> {
    match (&cfg.serial_log, cfg.console) {
        // QEMU writes the log itself in interactive mode.
        (Some(_), ConsoleMode::Interactive) | (None, _) => Ok(None),
        (Some(path), ConsoleMode::Capture) => {
            File::create(path).map(Some).map_err(|source| VmError::Io {
                what: "could not create the serial log",
                path: path.clone(),
                source,
            })
        }
    }
}

/// Runs in the child: lets the QMP listener survive exec.
fn inherit_fd(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own; async-signal-safe.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn spawn_stderr_reader(
    mut pipe: impl Read + Send + 'static,
    kept: Arc<Mutex<Vec<u8>>>,
    echo: bool,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            if echo {
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
            let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > STDERR_KEPT {
                let excess = kept.len() - STDERR_KEPT;
                kept.drain(..excess);
            }
        }
    })
}

/// Maps each configured forward to the loopback port QEMU actually bound
/// (forwards asked with host port 0 get one chosen by the kernel).
fn resolve_forwards(qmp: &mut Qmp, cfg: &VmConfig) -> Result<Vec<(u16, u16)>> {
    if cfg.forwards.is_empty() {
        return Ok(Vec::new());
    }
    let listening: Vec<GuestSocket> = parse_usernet(&qmp.human("info usernet")?)
        .into_iter()
        .filter(|s| s.state == "HOST_FORWARD")
        .collect();
    let mut taken = vec![false; listening.len()];
    let mut resolved = Vec::new();
    for f in &cfg.forwards {
        let found = listening.iter().enumerate().position(|(i, s)| {
            !taken[i] && s.guest_port == f.guest && (f.host == 0 || s.host_port == f.host)
        });
        let Some(i) = found else {
            return Err(VmError::Qmp {
                doing: "listing port forwards".into(),
                detail: format!(
                    "QEMU reports no forward to guest port {} (it lists {:?})",
                    f.guest, listening
                ),
            });
        };
        taken[i] = true;
        resolved.push((f.guest, listening[i].host_port));
    }
    Ok(resolved)
}
