//! Steps on an imported VM base, over SSH. An imported base's `boot/` holds
//! [`BaseDescription`] (`base.json`: kind `ssh`, the user, the firmware) and the user's
//! private key (`ssh_key`, mode 600), so the `RootFs::Disk { disk, boot }` of every step
//! carries what is needed to drive it.
//!
//! A step boots its overlay with the base's own firmware (OVMF or SeaBIOS) and a loopback
//! forward to port 22, waits until `ssh … true` succeeds, then runs one script through
//! `sudo` (the user has passwordless sudo): cache disks mounted at their targets, secrets
//! (piped over ssh into a tmpfs beforehand, never on the disk) bind-mounted at theirs,
//! the command with its environment, working directory and uid/gid (`setpriv`), then
//! everything undone. `copy` is a tar stream into `sudo tar -x`. The guest is stopped with
//! `sync; systemctl poweroff` (ACPI power-down through QMP if that does not end it).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_sandbox::{CopyEntry, CopyKind, Outcome, RunSpec, SandboxError};

use crate::error::{Result, VmError};
use crate::qemu::{Boot, ExtraDisk, Network, Vm, VmConfig};
use crate::sandbox::{cache_disk, guest, QemuSandbox};
use crate::ssh::{quote, SshTarget};

/// `boot/base.json`: how a registered VM base is driven.
pub const BASE_FILE: &str = "base.json";
/// `boot/ssh_key`: an imported base's private key (mode 600).
pub const KEY_FILE: &str = "ssh_key";
const CONSOLE_LINES: usize = 40;
/// How long one `ssh … true` probe may take to connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What drives a VM base's steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseKind {
    /// kiln-init's agent over virtio-serial (bases kiln made).
    Agent,
    /// SSH as a registered user with passwordless sudo (imported bases).
    Ssh,
}

/// How an imported disk boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    /// OVMF: the disk has a GPT (and an EFI system partition).
    Uefi,
    /// SeaBIOS: an MBR disk with a boot loader in it.
    Bios,
}

/// `boot/base.json` of an imported base.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BaseDescription {
    pub kind: BaseKind,
    pub user: String,
    pub firmware: FirmwareKind,
    /// sha256 of the imported file, as given.
    pub sha256: String,
    /// The file it was imported from, and its format and virtual size.
    pub source: String,
    pub format: String,
    pub virtual_size: u64,
}

impl BaseDescription {
    /// The description in `boot`, if the base has one (imported bases do; kiln's own
    /// agent bases do not).
    pub fn read(boot: &Path) -> Result<Option<BaseDescription>> {
        let path = boot.join(BASE_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(VmError::Io {
                    what: "could not read the VM base's description",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&text).map(Some).map_err(|e| {
            VmError::Config(format!(
                "{} is not a VM base description kiln wrote ({e}); import the base again",
                path.display()
            ))
        })
    }

    /// The VM of a step: `disk` (qcow2) booted with the base's firmware, port 22 forwarded.
    pub fn config(&self, disk: &Path) -> VmConfig {
        let boot = match self.firmware {
            FirmwareKind::Uefi => Boot::Uefi,
            FirmwareKind::Bios => Boot::Disk,
        };
        let mut cfg = VmConfig::with_image(boot, disk);
        cfg.format = "qcow2".into();
        cfg.ensure_forward(22);
        cfg
    }
}

/// A booted guest that answers on SSH. Dropping it kills QEMU.
pub struct SshVm {
    vm: Vm,
    target: SshTarget,
    grace: Duration,
    cancel: Option<Arc<AtomicBool>>,
}

impl SshVm {
    /// Starts `cfg` (which forwards port 22) and waits until `ssh -i key user@… true`
    /// succeeds, for at most `timeout`; else an error with the last console lines and
    /// ssh's last complaint.
    pub fn boot(cfg: VmConfig, user: &str, key: &Path, timeout: Duration) -> Result<SshVm> {
        let grace = cfg.shutdown_grace;
        let vm = Vm::start(cfg)?;
        let port = vm
            .host_port(22)
            .ok_or_else(|| VmError::Config("no forward to the guest's port 22".into()))?;
        let target = SshTarget {
            user: user.to_string(),
            port,
            key: key.to_path_buf(),
        };
        let ssh = SshVm {
            vm,
            target,
            grace,
            cancel: None,
        };
        ssh.wait_ssh(timeout)?;
        Ok(ssh)
    }

    pub fn set_cancel_flag(&mut self, flag: Arc<AtomicBool>) {
        self.cancel = Some(flag);
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn wait_ssh(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            if let Some(status) = self.vm.exit_status() {
                return Err(self.guest_error(format!(
                    "QEMU exited ({}) before the guest answered on SSH",
                    crate::error::ExitStatusText::from(status)
                )));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.guest_error(format!(
                    "the guest did not answer `ssh -p {} {}@127.0.0.1 true` with key {} within {:.0} s \
                     (ssh said: {}); check that the image starts sshd, lets {} log in with that key \
                     and gets an address by DHCP, or give a longer --timeout",
                    self.target.port,
                    self.target.user,
                    self.target.key.display(),
                    timeout.as_secs_f64(),
                    if last.is_empty() { "nothing" } else { last.trim() },
                    self.target.user
                )));
            }
            let (ok, stderr) = self
                .target
                .answers(PROBE_TIMEOUT.min(left).max(Duration::from_secs(1)))?;
            if ok {
                return Ok(());
            }
            last = stderr;
            self.check_cancelled()?;
            // A refused connection returns at once: do not spin on it.
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn check_cancelled(&self) -> Result<()> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            self.vm.kill();
            return Err(VmError::Cancelled);
        }
        Ok(())
    }

    /// Writes `value` to the guest file `path` (on a tmpfs) through ssh's stdin.
    fn put_secret(&self, path: &str, value: &[u8]) -> Result<()> {
        let dir = SECRETS_DIR;
        let remote = format!(
            "sudo -n sh -c {}",
            quote(&format!(
                "set -e; umask 077; mkdir -p {dir}; mountpoint -q {dir} || mount -t tmpfs -o mode=700 kiln-secrets {dir}; cat > {}",
                quote(path)
            ))
        );
        let mut child = self.spawn(&remote, true)?;
        let mut stdin = child.stdin.take().expect("piped");
        let wrote = stdin.write_all(value);
        drop(stdin);
        let out = child
            .wait_with_output()
            .map_err(|e| crate::ssh::spawn_error(&self.target.key, e))?;
        if out.status.success() && wrote.is_ok() {
            return Ok(());
        }
        Err(self.guest_error(format!(
            "could not write a secret into the guest's tmpfs ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }

    fn spawn(&self, remote: &str, stdin: bool) -> Result<Child> {
        let mut cmd = self.target.command(remote, PROBE_TIMEOUT);
        if stdin {
            cmd.stdin(Stdio::piped());
        }
        cmd.spawn()
            .map_err(|e| crate::ssh::spawn_error(&self.target.key, e))
    }

    /// Runs `spec`'s command (as `spec.uid:gid`, in `spec.cwd`, with exactly `spec.env`),
    /// with cache disk `i` (`/dev/vd{b+i}`) mounted at `spec.mounts[i].target` and the
    /// secrets in place; output (stdout and stderr together) goes to `output` as it comes.
    /// `stdin`: fed to the command (else /dev/null). Returns the exit code.
    pub fn run(
        &mut self,
        spec: &RunSpec,
        output: &mut dyn Write,
        stdin: Option<Box<dyn Read + Send>>,
    ) -> Result<i32> {
        for (i, secret) in spec.secrets.iter().enumerate() {
            self.put_secret(&format!("{SECRETS_DIR}/{i}"), &secret.value)?;
        }
        let remote = format!(
            "sudo -n sh -c {}",
            quote(&step_script(spec, stdin.is_some()))
        );
        let mut child = self.spawn(&remote, stdin.is_some())?;
        if let (Some(mut input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut input, &mut pipe);
            });
        }
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let mut stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdout.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if tx.send(buf[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(bytes) => output.write_all(&bytes).map_err(|source| VmError::Io {
                    what: "could not write the command's output to",
                    path: "the step log".into(),
                    source,
                })?,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.check_cancelled() {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(e);
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        let _ = reader.join();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut stderr);
        }
        let status = child
            .wait()
            .map_err(|e| crate::ssh::spawn_error(&self.target.key, e))?;
        match status.code() {
            Some(255) if crate::ssh::ssh_failed(&stderr) => Err(self.guest_error(format!(
                "the SSH connection to the guest broke off while the command ran: {}",
                stderr.trim()
            ))),
            Some(code) => {
                // The command's own stderr went to stdout; what is left is ssh's or sudo's.
                let _ = output.write_all(stderr.as_bytes());
                Ok(code)
            }
            None => Err(self.guest_error("ssh was killed while the command ran".into())),
        }
    }

    /// Copies `entries` into the guest's root as one tar stream into `sudo tar -x`,
    /// owned by `uid:gid`, byte for byte.
    pub fn put(&mut self, entries: &[CopyEntry], uid: u32, gid: u32) -> Result<()> {
        let remote = "sudo -n tar -x -p --same-owner --numeric-owner --no-overwrite-dir -C / -f -";
        let mut child = self.spawn(remote, true)?;
        let stdin = child.stdin.take().expect("piped");
        let written = write_tar(stdin, entries, uid, gid);
        let out = child
            .wait_with_output()
            .map_err(|e| crate::ssh::spawn_error(&self.target.key, e))?;
        if let Err(e) = written {
            return Err(self.guest_error(format!(
                "copying into the guest failed: {e}; tar said: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if !out.status.success() {
            return Err(self.guest_error(format!(
                "tar in the guest failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // tar leaves existing directories' metadata alone (--no-overwrite-dir); set what
        // the copy asks for, as the namespace sandbox does.
        let mut fix = String::from("set -e;");
        for e in entries {
            if let CopyKind::Dir { mode } = e.kind {
                fix.push_str(&format!(
                    " chown {uid}:{gid} {p}; chmod {mode:o} {p};",
                    p = quote(&e.path)
                ));
            }
        }
        let (code, stderr) = self
            .target
            .output(&format!("sudo -n sh -c {}", quote(&fix)), PROBE_TIMEOUT)?;
        if code != Some(0) {
            return Err(self.guest_error(format!(
                "setting the copied directories' owner and mode failed: {}",
                stderr.trim()
            )));
        }
        Ok(())
    }

    /// `sync; systemctl poweroff` over SSH, then waits for QEMU to exit; an ACPI
    /// power-down (QMP) follows if it has not, and QEMU is killed after the grace period
    /// (an error: the disk may lack the last writes).
    pub fn shutdown(mut self) -> Result<()> {
        let remote = "sudo -n sh -c 'sync; (sleep 1; systemctl poweroff) >/dev/null 2>&1 &'";
        let _ = self.target.output(remote, PROBE_TIMEOUT);
        let half = self.grace / 2;
        if self.vm.wait_exit(half).is_some() {
            return Ok(());
        }
        let status = self.vm.shutdown()?;
        if status.success() {
            Ok(())
        } else {
            Err(self.guest_error(format!(
                "the guest did not power off within {:.0} s; QEMU was killed",
                self.grace.as_secs_f64()
            )))
        }
    }

    fn guest_error(&self, what: String) -> VmError {
        VmError::Guest {
            what,
            console: self.vm.serial_tail(CONSOLE_LINES),
        }
    }
}

/// Where a step's secrets are written in the guest (a tmpfs mounted there).
const SECRETS_DIR: &str = "/run/kiln-secrets";

/// The script `sudo sh -c` runs for one step (as root in the guest).
fn step_script(spec: &RunSpec, stdin: bool) -> String {
    let mut s = String::from("exec 2>&1\nset -e\nundo=''\n");
    for (i, m) in spec.mounts.iter().enumerate() {
        let dev = format!("/dev/vd{}", (b'b' + i as u8) as char);
        let t = quote(&m.target);
        s.push_str(&format!(
            "mkdir -p {t}\nmount -t ext4 {dev} {t}\nundo=\"umount {t}; $undo\"\n"
        ));
    }
    for (i, secret) in spec.secrets.iter().enumerate() {
        let t = quote(&secret.target);
        s.push_str(&format!(
            "if [ ! -e {t} ]; then mkdir -p \"$(dirname {t})\"; : > {t}; undo=\"$undo rm -f {t};\"; fi\n\
             mount --bind -o ro {SECRETS_DIR}/{i} {t}\nundo=\"umount {t}; $undo\"\n"
        ));
    }
    let cwd = quote(&spec.cwd);
    s.push_str(&format!(
        "if [ ! -d {cwd} ]; then mkdir -p {cwd}; chown {}:{} {cwd}; fi\ncd {cwd}\nset +e\n",
        spec.uid, spec.gid
    ));
    let mut cmd = String::from("env -i");
    for (k, v) in &spec.env {
        cmd.push(' ');
        cmd.push_str(&quote(&format!("{k}={v}")));
    }
    if spec.uid != 0 || spec.gid != 0 {
        cmd.push_str(&format!(
            " setpriv --reuid={} --regid={} --clear-groups --",
            spec.uid, spec.gid
        ));
    }
    for a in &spec.argv {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    if !stdin {
        cmd.push_str(" </dev/null");
    }
    s.push_str(&cmd);
    s.push_str(&format!(
        "\nrc=$?\ncd /\neval \"$undo\"\nrm -rf {SECRETS_DIR}/* 2>/dev/null\nsync\nexit $rc\n"
    ));
    s
}

/// The tar stream of `entries` (absolute paths made relative to `/`).
fn write_tar(out: impl Write, entries: &[CopyEntry], uid: u32, gid: u32) -> std::io::Result<()> {
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    for e in entries {
        let path = e.path.trim_start_matches('/');
        let path = if path.is_empty() { "." } else { path };
        let mut h = tar::Header::new_gnu();
        h.set_uid(uid as u64);
        h.set_gid(gid as u64);
        match &e.kind {
            CopyKind::Dir { mode } => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                h.set_mtime(0);
                tar.append_data(&mut h, path, std::io::empty())?;
            }
            CopyKind::Symlink { target } => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_mtime(0);
                tar.append_link(&mut h, path, target)?;
            }
            CopyKind::File { host, mode, mtime } => {
                let file = std::fs::File::open(host)?;
                let size = file.metadata()?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(size);
                h.set_mtime((*mtime).max(0) as u64);
                tar.append_data(&mut h, path, file.take(size))?;
            }
        }
    }
    tar.into_inner()?.flush()
}

/// The cache disks of `spec` as extra drives (`/dev/vdb`, …).
pub fn cache_drives(paths: Vec<PathBuf>) -> Vec<ExtraDisk> {
    paths
        .into_iter()
        .map(|path| ExtraDisk {
            path,
            format: "qcow2".into(),
        })
        .collect()
}

/// The network of a step: restricted unless `(network host)`.
pub fn network(host: bool) -> Network {
    if host {
        Network::Full
    } else {
        Network::Restricted
    }
}

/// The description of `boot` when it is an SSH base (`None` for agent bases).
pub fn ssh_base(boot: &Path) -> std::result::Result<Option<BaseDescription>, SandboxError> {
    match BaseDescription::read(boot) {
        Ok(Some(d)) if d.kind == BaseKind::Ssh => Ok(Some(d)),
        Ok(_) => Ok(None),
        Err(e) => Err(SandboxError::Setup(e.to_string())),
    }
}

impl QemuSandbox {
    /// A VM of `disk` for an SSH base, with this sandbox's CPUs, memory and timeouts.
    fn ssh_config(&self, base: &BaseDescription, disk: &Path) -> VmConfig {
        let mut cfg = base.config(disk);
        cfg.cpus = self.cpus;
        cfg.memory_mb = self.memory_mb;
        cfg.accel = self.accel;
        cfg.shutdown_grace = self.shutdown_grace;
        cfg
    }

    fn ssh_boot(
        &self,
        base: &BaseDescription,
        cfg: VmConfig,
        boot: &Path,
    ) -> std::result::Result<SshVm, SandboxError> {
        let mut vm = SshVm::boot(cfg, &base.user, &boot.join(KEY_FILE), self.ready_timeout)
            .map_err(guest)?;
        if let Some(flag) = &self.cancel {
            vm.set_cancel_flag(flag.clone());
        }
        Ok(vm)
    }

    /// [`kiln_sandbox::Sandbox::run`] on an SSH base.
    pub(crate) fn ssh_run(
        &self,
        base: &BaseDescription,
        disk: &Path,
        boot: &Path,
        spec: &RunSpec,
        output: &mut dyn Write,
    ) -> std::result::Result<Outcome, SandboxError> {
        let mut cfg = self.ssh_config(base, disk);
        cfg.network = network(spec.host_network);
        let mut disks = Vec::new();
        for m in &spec.mounts {
            disks.push(cache_disk(&m.source)?);
        }
        cfg.extra_disks = cache_drives(disks);
        let mut vm = self.ssh_boot(base, cfg, boot)?;
        let stdin: Option<Box<dyn Read + Send>> = match spec.interactive {
            true => Some(Box::new(std::io::stdin())),
            false => None,
        };
        let code = vm.run(spec, output, stdin).map_err(guest)?;
        vm.shutdown().map_err(guest)?;
        Ok(Outcome::Exited(code))
    }

    /// [`kiln_sandbox::Sandbox::copy_in`] on an SSH base.
    pub(crate) fn ssh_copy_in(
        &self,
        base: &BaseDescription,
        disk: &Path,
        boot: &Path,
        entries: &[CopyEntry],
        uid: u32,
        gid: u32,
    ) -> std::result::Result<(), SandboxError> {
        let cfg = self.ssh_config(base, disk);
        let mut vm = self.ssh_boot(base, cfg, boot)?;
        vm.put(entries, uid, gid).map_err(guest)?;
        vm.shutdown().map_err(guest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_sandbox::{BindMount, RootFs, Secret};

    #[test]
    fn the_step_script_runs_the_command_as_asked_and_undoes_its_mounts() {
        let spec = RunSpec {
            root: RootFs::Dir(PathBuf::new()),
            argv: vec!["/bin/sh".into(), "-c".into(), "echo 'hi'".into()],
            env: vec![("A".into(), "b c".into())],
            cwd: "/home/app".into(),
            uid: 1000,
            gid: 1000,
            host_network: false,
            mounts: vec![BindMount {
                source: PathBuf::new(),
                target: "/var/cache/x".into(),
                readonly: false,
            }],
            secrets: vec![Secret {
                target: "/run/secrets/s".into(),
                value: b"v".to_vec(),
            }],
            hostname: "kiln".into(),
            fast_sync: false,
            interactive: false,
            trace: None,
        };
        let s = step_script(&spec, false);
        assert!(s.contains("mount -t ext4 /dev/vdb /var/cache/x"), "{s}");
        assert!(
            s.contains("mount --bind -o ro /run/kiln-secrets/0 /run/secrets/s"),
            "{s}"
        );
        assert!(
            s.contains(
                "env -i 'A=b c' setpriv --reuid=1000 --regid=1000 --clear-groups -- /bin/sh -c 'echo '\\''hi'\\''' </dev/null"
            ),
            "{s}"
        );
        assert!(s.contains("eval \"$undo\""), "{s}");
        let out = std::process::Command::new("sh")
            .arg("-n")
            .arg("-c")
            .arg(&s)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
