//! `cp` (GNU coreutils): copies a tree preserving owners, modes, timestamps, symlinks,
//! hardlinks and xattrs, sharing blocks (reflink) where the filesystem can.

use std::path::Path;
use std::process::Command;

use crate::StoreError;

const PROGRAM: &str = "cp";
const PACKAGE: &str = "coreutils";

/// Copies the contents of directory `src` into the existing directory `dst`, and gives
/// `dst` the attributes of `src`.
pub(crate) fn copy_contents(src: &Path, dst: &Path) -> Result<(), StoreError> {
    let program = super::find_program(PROGRAM).ok_or(StoreError::ToolMissing {
        program: PROGRAM,
        package: PACKAGE,
    })?;
    let output = Command::new(&program)
        .arg("-a")
        .arg("--reflink=auto")
        .arg("--no-target-directory")
        .arg("--")
        .arg(src)
        .arg(dst)
        .output()
        .map_err(|e| StoreError::io(&program, e))?;
    if output.status.success() {
        return Ok(());
    }
    Err(StoreError::ToolFailed {
        command: format!(
            "cp -a --reflink=auto -T {} {}",
            src.display(),
            dst.display()
        ),
        status: output.status.to_string(),
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
    })
}
