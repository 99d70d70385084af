//! Which accelerator QEMU uses: KVM only when it really runs guest code, else TCG.
//!
//! A `/dev/kvm` can exist and still be useless: on nested or broken hosts the
//! device opens and a VM is created, but a vCPU stops making progress part way
//! into the firmware, or KVM fails to emulate the first x87/SSE instruction and
//! QEMU pauses the guest for good. SeaBIOS alone is not enough to tell: it runs in
//! real and 32-bit mode without touching the FPU, and can finish where a kernel
//! then hangs. So existence proves nothing; the probe boots OVMF under KVM (long
//! mode, FPU and SSE all in use before its boot manager prints a line on the
//! serial port) in a child process and waits at most [`PROBE_TIMEOUT`] for that
//! line. Without OVMF it falls back to SeaBIOS's end-of-boot message on the debug
//! port. Any "KVM internal error" from QEMU fails the probe at once. The child is
//! killed either way, and reaped on a detached thread so a child stuck in the
//! kernel can never block the caller.

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// The environment variable that forces an accelerator: `tcg` or `kvm`.
pub const ACCEL_ENV: &str = "KILN_ACCEL";

/// How long the KVM probe may take before KVM is declared unusable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What SeaBIOS prints on its debug port once it has run its whole boot sequence
/// (real mode, 32-bit mode, interrupts and timers all worked).
const SEABIOS_DONE: &str = "No bootable device";

/// What OVMF's boot manager prints on the serial port once PEI and DXE (64-bit,
/// with x87 and SSE code) have run.
const OVMF_DONE: &str = "BdsDxe";

/// What QEMU prints on stderr when KVM cannot run an instruction; the guest is
/// paused for good after it.
const KVM_FAILED: &str = "KVM internal error";

/// The QEMU accelerator a VM runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation through `/dev/kvm`.
    Kvm,
    /// QEMU's portable binary translator.
    Tcg,
}

impl Accel {
    /// The name used on the command line and in `KILN_ACCEL`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    /// The QEMU arguments selecting this accelerator and a CPU model suited to it:
    /// the host's CPU under KVM; under TCG (multi-threaded) [`TCG_CPU`].
    pub fn qemu_args(self) -> [&'static str; 4] {
        match self {
            Accel::Kvm => ["-accel", "kvm", "-cpu", "host"],
            Accel::Tcg => ["-accel", "tcg,thread=multi", "-cpu", TCG_CPU],
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Accel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            other => Err(format!(
                "unknown accelerator {other:?}: use \"kvm\" or \"tcg\""
            )),
        }
    }
}

/// The emulated CPU: x86-64-v2 (what current distributions require) and no more.
/// `max` boots measurably slower under TCG: its AVX and crypto extensions are slow
/// to emulate yet chosen by the guest's libraries, and its SVM flag makes udev load
/// KVM modules no emulated guest can use.
pub const TCG_CPU: &str = "qemu64,+ssse3,+sse4.1,+sse4.2,+popcnt,+cx16,-svm";

/// The chosen accelerator and why it was chosen (for logs and reports).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detection {
    pub accel: Accel,
    pub reason: String,
}

/// The accelerator to use, for the default `qemu-system-x86_64` in `PATH`.
///
/// `KILN_ACCEL=tcg|kvm` overrides; otherwise KVM is probed once per process.
pub fn detect() -> Accel {
    detection(Path::new(crate::qemu::DEFAULT_QEMU)).accel
}

/// Like [`detect`], with the reason, for a given QEMU binary.
pub fn detection(qemu: &Path) -> Detection {
    let env = std::env::var(ACCEL_ENV).ok();
    resolve(env.as_deref(), || cached_probe(qemu))
}

/// Applies the override (when set and valid) or falls back to `probe`.
fn resolve(env_value: Option<&str>, probe: impl FnOnce() -> Detection) -> Detection {
    match env_value
        .filter(|v| !v.trim().is_empty())
        .map(str::parse::<Accel>)
    {
        Some(Ok(accel)) => Detection {
            accel,
            reason: format!("{ACCEL_ENV}={accel} set"),
        },
        Some(Err(problem)) => {
            tracing::warn!("ignoring {ACCEL_ENV}: {problem}");
            probe()
        }
        None => probe(),
    }
}

/// Probes each QEMU binary once per process; concurrent callers wait for the first.
fn cached_probe(qemu: &Path) -> Detection {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, Detection>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(qemu.to_path_buf())
        .or_insert_with(|| {
            let detection = probe(qemu, PROBE_TIMEOUT);
            tracing::info!(accel = %detection.accel, "accelerator: {}", detection.reason);
            detection
        })
        .clone()
}

/// Probes KVM without caching: KVM if the firmware (OVMF when installed, else
/// SeaBIOS) completes under it within `timeout`.
pub fn probe(qemu: &Path, timeout: Duration) -> Detection {
    let tcg = |reason: String| Detection {
        accel: Accel::Tcg,
        reason,
    };
    if !Path::new("/dev/kvm").exists() {
        return tcg("/dev/kvm does not exist; using TCG".into());
    }
    let firmware = crate::qemu::Firmware::locate().ok().map(|fw| fw.code);
    match run_probe(qemu, "host", firmware.as_deref(), timeout) {
        Ok(elapsed) => Detection {
            accel: Accel::Kvm,
            reason: format!(
                "KVM ran the firmware to completion in {} ms",
                elapsed.as_millis()
            ),
        },
        Err(why) => tcg(format!("KVM is not usable ({why}); using TCG")),
    }
}

/// Runs the firmware under KVM with CPU model `cpu` (VMs use `host`): OVMF from
/// `ovmf_code` when given, else QEMU's SeaBIOS. `Ok(elapsed)` once it reports a
/// finished boot.
fn run_probe(
    qemu: &Path,
    cpu: &str,
    ovmf_code: Option<&Path>,
    timeout: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", "kvm", "-cpu", cpu])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-m", "128", "-monitor", "none", "-net", "none"]);
    let done = match ovmf_code {
        Some(code) => {
            let mut drive = std::ffi::OsString::from("if=pflash,format=raw,readonly=on,file=");
            drive.push(crate::qemu::escape_opt(code.as_os_str()));
            cmd.args(["-machine", "q35", "-drive"])
                .arg(drive)
                .args(["-serial", "stdio"]);
            OVMF_DONE
        }
        None => {
            cmd.args(["-machine", "pc", "-serial", "none"])
                .args(["-chardev", "stdio,id=dbg,signal=off"])
                .args(["-device", "isa-debugcon,iobase=0x402,chardev=dbg"]);
            SEABIOS_DONE
        }
    };
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("could not run {}: {e}", qemu.display()))?;
    let (tx, rx) = mpsc::channel();
    forward_output(child.stdout.take(), tx.clone(), false);
    forward_output(child.stderr.take(), tx, true);

    let outcome = wait_for_firmware(&rx, done, started, timeout);
    // Kill now, reap later: a vCPU stuck inside KVM_RUN may take its time to die,
    // and nothing here may wait on it.
    let _ = child.kill();
    std::thread::spawn(move || {
        let _ = child.wait();
    });
    outcome
}

/// Sends a pipe's chunks to `tx` (tagged stderr or not) until EOF.
fn forward_output(
    pipe: Option<impl Read + Send + 'static>,
    tx: mpsc::Sender<(bool, Vec<u8>)>,
    is_stderr: bool,
) {
    let Some(mut pipe) = pipe else { return };
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 || tx.send((is_stderr, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    });
}

/// Waits for `done` on the firmware's output; fails on KVM's internal error, on
/// QEMU exiting, or at the deadline.
fn wait_for_firmware(
    rx: &mpsc::Receiver<(bool, Vec<u8>)>,
    done: &str,
    started: Instant,
    timeout: Duration,
) -> Result<Duration, String> {
    let deadline = started + timeout;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, chunk)) => {
                err.extend_from_slice(&chunk);
                let said = String::from_utf8_lossy(&err);
                if let Some(line) = said.lines().find(|l| l.contains(KVM_FAILED)) {
                    return Err(format!("QEMU reported \"{}\"", line.trim()));
                }
            }
            Ok((false, chunk)) => {
                out.extend_from_slice(&chunk);
                if String::from_utf8_lossy(&out).contains(done) {
                    return Ok(started.elapsed());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "the firmware did not finish booting within {:.1}s under KVM: \
                     /dev/kvm exists but does not run guest code",
                    timeout.as_secs_f64()
                ))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let said = String::from_utf8_lossy(&err);
                let said = said.lines().next().unwrap_or("no message");
                return Err(format!("QEMU exited: {said}"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probed() -> Detection {
        Detection {
            accel: Accel::Tcg,
            reason: "probed".into(),
        }
    }

    #[test]
    fn override_wins_without_probing() {
        let d = resolve(Some("kvm"), || panic!("must not probe"));
        assert_eq!(d.accel, Accel::Kvm);
        let d = resolve(Some(" TCG "), || panic!("must not probe"));
        assert_eq!(d.accel, Accel::Tcg);
        assert!(d.reason.contains("KILN_ACCEL"));
    }

    #[test]
    fn invalid_or_empty_override_probes() {
        assert_eq!(resolve(Some("hvf"), probed).reason, "probed");
        assert_eq!(resolve(Some(""), probed).reason, "probed");
        assert_eq!(resolve(None, probed).reason, "probed");
    }

    #[test]
    fn accel_args_pick_matching_cpu_models() {
        assert_eq!(Accel::Kvm.qemu_args(), ["-accel", "kvm", "-cpu", "host"]);
        assert_eq!(Accel::Tcg.qemu_args()[1], "tcg,thread=multi");
        assert_eq!(Accel::Tcg.qemu_args()[3], TCG_CPU);
    }

    #[test]
    fn missing_qemu_makes_the_probe_fail_cleanly() {
        let err = run_probe(
            Path::new("/nonexistent/qemu"),
            "host",
            None,
            Duration::from_secs(1),
        );
        assert!(err.unwrap_err().contains("could not run /nonexistent/qemu"));
    }

    #[test]
    fn kvm_internal_error_fails_the_probe_at_once() {
        let (tx, rx) = mpsc::channel();
        tx.send((
            true,
            b"KVM internal error. Suberror: 1\nextra data".to_vec(),
        ))
        .unwrap();
        let started = Instant::now();
        let err = wait_for_firmware(&rx, OVMF_DONE, started, Duration::from_secs(30));
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(err.unwrap_err().contains("KVM internal error. Suberror: 1"));
    }

    #[test]
    fn the_done_marker_may_arrive_in_pieces() {
        let (tx, rx) = mpsc::channel();
        tx.send((false, b"\x1b[2JBds".to_vec())).unwrap();
        tx.send((false, b"Dxe: loading Boot0001".to_vec())).unwrap();
        let got = wait_for_firmware(&rx, OVMF_DONE, Instant::now(), Duration::from_secs(5));
        assert!(got.is_ok(), "{got:?}");
    }

    /// With the default CPU model, a broken KVM lets the firmware start and then
    /// hangs the vCPU: the probe must still return on time. (Where KVM works,
    /// the probe succeeds well within the limit; either way it is bounded.)
    #[test]
    fn probe_never_outlives_its_timeout() {
        if !Path::new("/dev/kvm").exists() {
            return;
        }
        let qemu = Path::new(crate::qemu::DEFAULT_QEMU);
        for ovmf in [None, crate::qemu::Firmware::locate().ok().map(|fw| fw.code)] {
            let started = Instant::now();
            let outcome = run_probe(qemu, "qemu64", ovmf.as_deref(), Duration::from_secs(1));
            assert!(started.elapsed() < Duration::from_secs(3), "{outcome:?}");
        }
    }
}
