//! `dpkg` (Debian package `dpkg`): the host's Debian architecture.

use super::{find_program, ToolError};
use std::process::Command;
use std::sync::OnceLock;

pub(crate) const PROGRAM: &str = "dpkg";
pub(crate) const PACKAGE: &str = "dpkg";

/// Why the host architecture is unknown.
#[derive(Debug, Clone)]
pub(crate) enum ArchError {
    Missing,
    Failed(String),
}

/// `dpkg --print-architecture`, computed once.
pub(crate) fn host_architecture() -> Result<String, ArchError> {
    static ARCH: OnceLock<Result<String, ArchError>> = OnceLock::new();
    ARCH.get_or_init(query).clone()
}

fn query() -> Result<String, ArchError> {
    let program = find_program(PROGRAM).ok_or(ArchError::Missing)?;
    let output = Command::new(program)
        .arg("--print-architecture")
        .output()
        .map_err(|e| ArchError::Failed(ToolError::Spawn(e).to_string()))?;
    let arch = String::from_utf8_lossy(&output.stdout).trim().to_string();
    if !output.status.success() || arch.is_empty() {
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
        return Err(ArchError::Failed(format!(
            "`dpkg --print-architecture` failed ({}): {stderr}",
            output.status
        )));
    }
    Ok(arch)
}
