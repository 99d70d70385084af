//! The host end of kiln-init's agent: boots a VM whose kernel command line has
//! `kiln.agent`, waits for the guest to say it is ready, and drives it over the
//! virtio-serial port with the protocol of [`kiln_init::agent_proto`].
//!
//! Every wait ends: a guest that never answers is an error after the ready timeout, and
//! a QEMU that dies closes the port's socket, which ends any read at once. Errors carry
//! the console's last lines, which say why a guest did not come up.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use kiln_init::agent_proto::{
    write_frame, ExitStatus, FrameReader, PutEntry, PutKind, Request, Response, RunRequest, CHUNK,
    VERSION,
};
use kiln_sandbox::{CopyEntry, CopyKind};

use crate::error::{Result, VmError};
use crate::qemu::{Vm, VmConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// How many console lines an error shows.
const CONSOLE_LINES: usize = 40;

/// A running VM with a connected, ready agent. Dropping it kills QEMU.
pub struct AgentVm {
    vm: Vm,
    stream: UnixStream,
    reader: FrameReader,
    grace: Duration,
    /// Set (by kiln's Ctrl-C or SIGTERM handling) to stop the running command.
    cancel: Option<Arc<AtomicBool>>,
}

/// How often a running command's wait looks at the cancel flag.
const CANCEL_CHECK: Duration = Duration::from_millis(100);

impl AgentVm {
    /// Starts the VM (`cfg.agent` is turned on) and waits up to `ready_timeout` for the
    /// agent's Ready.
    pub fn boot(mut cfg: VmConfig, ready_timeout: Duration) -> Result<AgentVm> {
        cfg.agent = true;
        let grace = cfg.shutdown_grace;
        let vm = Vm::start(cfg)?;
        let path = vm.agent_socket().expect("the agent port was configured");
        let stream = UnixStream::connect(path).map_err(|source| VmError::Io {
            what: "could not connect to the agent port's socket",
            path: path.to_path_buf(),
            source,
        })?;
        let mut agent = AgentVm {
            vm,
            stream,
            reader: FrameReader::default(),
            grace,
            cancel: None,
        };
        agent.wait_ready(ready_timeout)?;
        Ok(agent)
    }

    /// From now on, a set `flag` stops a running command: QEMU is killed and the run
    /// returns [`VmError::Cancelled`].
    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    /// The VM itself (console, pid, accelerator).
    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let what = format!(
            "the guest did not report ready within {:.0} s",
            timeout.as_secs_f64()
        );
        match self.receive(Some(deadline), &what)? {
            Response::Ready { version } if version == VERSION => Ok(()),
            Response::Ready { version } => Err(self.guest_error(format!(
                "the guest's kiln-init speaks agent protocol {version}, this kiln {VERSION}: \
                 remake the VM base with this kiln"
            ))),
            other => {
                Err(self.guest_error(format!("the guest sent {} before Ready", describe(&other))))
            }
        }
    }

    /// Runs one command; its output goes to `output` as it arrives, and `stdin`, when
    /// given, is streamed to it from a thread until its end.
    pub fn run(
        &mut self,
        req: &RunRequest,
        output: &mut dyn Write,
        stdin: Option<Box<dyn Read + Send>>,
    ) -> Result<ExitStatus> {
        let mut req = req.clone();
        req.stdin = stdin.is_some();
        self.send(&Request::Run(req))?;
        if let Some(input) = stdin {
            self.spawn_stdin_pump(input)?;
        }
        loop {
            match self.receive_cancellable("the guest broke off while running a command")? {
                Response::Output(bytes) => {
                    output.write_all(&bytes).map_err(|source| VmError::Io {
                        what: "could not write the command's output to",
                        path: "the step log".into(),
                        source,
                    })?
                }
                Response::Exit(status) => return Ok(status),
                Response::Error(message) => {
                    return Err(self.guest_error(format!("the guest could not run it: {message}")))
                }
                other => {
                    return Err(self.guest_error(format!(
                        "the guest sent {} while a command ran",
                        describe(&other)
                    )))
                }
            }
        }
    }

    /// Copies `entries` into the guest's root, owned by `uid:gid`. File bytes are read
    /// from the host files in chunks as they are sent, so memory use does not grow with
    /// their size.
    pub fn put(&mut self, entries: &[CopyEntry], uid: u32, gid: u32) -> Result<()> {
        for entry in entries {
            self.put_one(entry, uid, gid)?;
        }
        self.send(&Request::PutEnd)?;
        match self.receive(None, "the guest broke off during a copy")? {
            Response::PutDone => Ok(()),
            Response::Error(message) => {
                Err(self.guest_error(format!("the copy failed: {message}")))
            }
            other => {
                Err(self.guest_error(format!("the guest sent {} after a copy", describe(&other))))
            }
        }
    }

    fn put_one(&mut self, entry: &CopyEntry, uid: u32, gid: u32) -> Result<()> {
        let (kind, file) = match &entry.kind {
            CopyKind::Dir { mode } => (PutKind::Dir { mode: *mode }, None),
            CopyKind::Symlink { target } => (
                PutKind::Symlink {
                    target: target.clone(),
                },
                None,
            ),
            CopyKind::File { host, mode, mtime } => {
                let io = |source| VmError::Io {
                    what: "could not read the file to copy",
                    path: host.clone(),
                    source,
                };
                let file = File::open(host).map_err(io)?;
                let size = file.metadata().map_err(io)?.len();
                let kind = PutKind::File {
                    mode: *mode,
                    mtime: *mtime,
                    size,
                };
                (kind, Some((file, size, host)))
            }
        };
        self.send(&Request::Put(PutEntry {
            path: entry.path.clone(),
            kind,
            uid,
            gid,
        }))?;
        if let Some((mut file, size, host)) = file {
            self.send_file(&mut file, size, host)?;
        }
        Ok(())
    }

    fn send_file(&mut self, file: &mut File, size: u64, host: &std::path::Path) -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut left = size;
        while left > 0 {
            let want = left.min(CHUNK as u64) as usize;
            file.read_exact(&mut buf[..want])
                .map_err(|source| VmError::Io {
                    what: "could not read (or it shrank while copying)",
                    path: host.to_path_buf(),
                    source,
                })?;
            self.send(&Request::Data(buf[..want].to_vec()))?;
            left -= want as u64;
        }
        Ok(())
    }

    /// Asks the guest to sync, unmount and power off, then waits for QEMU to exit; a
    /// guest that does not finish within the grace period is killed, and that is an
    /// error (its disk may lack the last writes).
    pub fn shutdown(mut self) -> Result<()> {
        self.send(&Request::Shutdown)?;
        let deadline = Instant::now() + self.grace;
        match self.receive(Some(deadline), "the guest did not acknowledge the shutdown")? {
            Response::ShutdownAck => {}
            other => {
                return Err(self.guest_error(format!(
                    "the guest answered the shutdown with {}",
                    describe(&other)
                )))
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if self.vm.wait_exit(left).is_some() {
            return Ok(());
        }
        self.vm.kill();
        Err(self.guest_error(format!(
            "the guest did not power off within {:.0} s of its shutdown; QEMU was killed",
            self.grace.as_secs_f64()
        )))
    }

    fn spawn_stdin_pump(&self, mut input: Box<dyn Read + Send>) -> Result<()> {
        let mut port = self.stream.try_clone().map_err(|source| VmError::Io {
            what: "could not share the agent socket",
            path: "agent.sock".into(),
            source,
        })?;
        // The pump ends with its input, or when the port closes with the VM.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let frame = match input.read(&mut buf) {
                    Ok(0) | Err(_) => Request::StdinEof,
                    Ok(n) => Request::Stdin(buf[..n].to_vec()),
                };
                let last = frame == Request::StdinEof;
                if write_frame(&mut port, &frame.encode()).is_err() || last {
                    return;
                }
            }
        });
        Ok(())
    }

    fn send(&mut self, req: &Request) -> Result<()> {
        write_frame(&mut self.stream, &req.encode())
            .map_err(|e| self.guest_error(format!("the guest stopped reading its port ({e})")))
    }

    /// The next response, waiting until `deadline` (or for ever). End of stream, a
    /// timeout and garbage are errors that start with `what`.
    fn receive(&mut self, deadline: Option<Instant>, what: &str) -> Result<Response> {
        let timeout = deadline.map(|d| {
            d.saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        });
        self.receive_within(timeout, what)?
            .ok_or_else(|| self.guest_error(what.to_string()))
    }

    /// [`AgentVm::receive`] without a deadline, looking at the cancel flag (if any)
    /// every [`CANCEL_CHECK`]; a set flag kills QEMU.
    fn receive_cancellable(&mut self, what: &str) -> Result<Response> {
        let Some(flag) = self.cancel.clone() else {
            return self.receive(None, what);
        };
        loop {
            if let Some(response) = self.receive_within(Some(CANCEL_CHECK), what)? {
                return Ok(response);
            }
            if flag.load(Ordering::SeqCst) {
                let _ = self.vm.kill();
                return Err(VmError::Cancelled);
            }
        }
    }

    /// The next response within `timeout` (`None`: for ever); `Ok(None)` when the time
    /// ran out first. A partial frame stays buffered for the next call.
    fn receive_within(
        &mut self,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<Option<Response>> {
        let set = self.stream.set_read_timeout(timeout);
        let frame = set.and_then(|()| self.reader.read_frame(&mut self.stream));
        match frame {
            Ok(Some((t, payload))) => Response::decode(t, &payload)
                .map(Some)
                .map_err(|e| self.guest_error(format!("{what}: {e}"))),
            Ok(None) => Err(self.guest_error(format!("{what}: {}", self.qemu_state()))),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(self.guest_error(format!("{what}: {e}; {}", self.qemu_state()))),
        }
    }

    /// "QEMU exited (…)" or "the port closed", for messages.
    fn qemu_state(&self) -> String {
        match self.vm.wait_exit(Duration::from_secs(2)) {
            Some(status) => format!(
                "QEMU exited ({})",
                crate::error::ExitStatusText::from(status)
            ),
            None => "the agent port closed".to_string(),
        }
    }

    fn guest_error(&self, what: String) -> VmError {
        VmError::Guest {
            what,
            console: self.vm.serial_tail(CONSOLE_LINES),
        }
    }
}

/// A response named for messages (without its bytes).
fn describe(r: &Response) -> String {
    match r {
        Response::Ready { .. } => "Ready".into(),
        Response::Output(b) => format!("{} bytes of output", b.len()),
        Response::Exit(s) => format!("an exit ({s:?})"),
        Response::Error(m) => format!("an error ({m})"),
        Response::PutDone => "PutDone".into(),
        Response::ShutdownAck => "ShutdownAck".into(),
    }
}
