//! External programs, one module each. Each checks that its program exists and turns a
//! failure into a [`ToolError`] carrying the program's last output lines.

pub(crate) mod credential_helper;
pub(crate) mod debootstrap;
pub(crate) mod dpkg;
pub(crate) mod mmdebstrap;
mod process;

use std::path::PathBuf;
use std::process::ExitStatus;

/// How running an external program failed.
#[derive(Debug)]
pub(crate) enum ToolError {
    /// The program could not be started.
    Spawn(std::io::Error),
    /// The program ran and failed.
    Failed { status: ExitStatus, tail: String },
}

impl std::fmt::Display for ToolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ToolError::Spawn(e) => write!(f, "could not be started: {e}"),
            ToolError::Failed { status, .. } => write!(f, "failed ({status})"),
        }
    }
}

/// Finds `name` in `$PATH`, then in the sbin directories root's `PATH` may lack.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(PathBuf::from),
        )
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
