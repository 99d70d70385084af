//! The crate's error type: every variant says what failed, where, and how to fix it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while starting, driving or reporting on a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The QEMU binary is not installed (or not where the configuration says).
    #[error(
        "QEMU is not installed: `{binary}` was not found{where_}; \
         install it with `apt-get install qemu-system-x86`{uefi_hint}"
    )]
    QemuMissing {
        binary: PathBuf,
        /// " in PATH" or " at that path", for the message.
        where_: &'static str,
        /// Mentions `ovmf` when the VM boots with UEFI.
        uefi_hint: &'static str,
    },

    /// The UEFI firmware files are missing.
    #[error(
        "UEFI firmware not found: {path} does not exist; \
         install it with `apt-get install ovmf` (or boot with --boot kernel)"
    )]
    FirmwareMissing { path: PathBuf },

    /// An external program kiln drives a guest with (ssh, ssh-keygen) failed or is
    /// missing; the message names it, what was done and the Debian package.
    #[error("{0}")]
    Tool(String),

    /// The configuration cannot describe a VM QEMU could run.
    #[error("invalid VM configuration: {0}")]
    Config(String),

    /// A file the VM needs could not be read, written or created.
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// QEMU could not be started at all.
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// QEMU exited on its own (during start-up, or while a check waited).
    #[error("QEMU exited ({status}) {during}{}{}", stderr_suffix(.stderr), hint_suffix(.stderr))]
    QemuExited {
        status: ExitStatusText,
        during: String,
        /// The last lines QEMU printed on stderr.
        stderr: String,
    },

    /// QEMU did not answer on its QMP control socket.
    #[error("QEMU's control socket (QMP) failed while {doing}: {detail}")]
    Qmp { doing: String, detail: String },

    /// The serial console never showed the text waited for.
    #[error(
        "the console did not show {expect:?} within {:.1}s; last console lines:\n{tail}",
        .timeout.as_secs_f64()
    )]
    ConsoleTimeout {
        expect: String,
        timeout: Duration,
        tail: String,
    },

    /// The guest's agent (kiln-init in agent mode) did not answer, broke off, or spoke
    /// out of turn.
    #[error("{what}\nlast console lines:\n{console}")]
    Guest { what: String, console: String },

    /// The cancel flag was set while the guest ran a command; QEMU was killed.
    #[error("cancelled: the VM was stopped")]
    Cancelled,

    /// Console capture was asked of a VM whose console is the terminal.
    #[error(
        "the VM's console is attached to the terminal (interactive mode), so it cannot be read"
    )]
    ConsoleNotCaptured,
}

/// An exit status rendered for messages ("exit code 1", "killed by signal 9").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatusText(pub String);

impl From<ExitStatus> for ExitStatusText {
    fn from(status: ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        let text = match (status.code(), status.signal()) {
            (Some(code), _) => format!("exit code {code}"),
            (None, Some(signal)) => format!("killed by signal {signal}"),
            (None, None) => "unknown status".to_string(),
        };
        ExitStatusText(text)
    }
}

impl std::fmt::Display for ExitStatusText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn stderr_suffix(stderr: &str) -> String {
    if stderr.trim().is_empty() {
        String::new()
    } else {
        format!("; QEMU said:\n{}", stderr.trim_end())
    }
}

/// Advice for QEMU failures whose own message does not say what to do.
fn hint_suffix(stderr: &str) -> String {
    const HINTS: &[(&str, &str)] = &[
        (
            "Could not set up host forwarding rule",
            "a forwarded host port is already in use: pick another host port, or 0 for any free one",
        ),
        (
            "KVM",
            "KVM does not work here: run with KILN_ACCEL=tcg",
        ),
        (
            "Permission denied",
            "QEMU could not open a file it needs: check the image's and firmware's permissions",
        ),
        (
            "Failed to get \"write\" lock",
            "another process is using the image: stop it, or run with --snapshot",
        ),
    ];
    HINTS
        .iter()
        .find(|(needle, _)| stderr.contains(needle))
        .map(|(_, hint)| format!("\nhint: {hint}"))
        .unwrap_or_default()
}

/// Shorthand for this crate's results.
pub type Result<T, E = VmError> = std::result::Result<T, E>;
