//! `ssh-keygen` (openssh-client): a fresh ed25519 key pair without a passphrase, for a VM
//! base made by `kiln base build` without `--key`.

use std::path::Path;
use std::process::Command;

use crate::error::VmError;
use crate::ssh::PACKAGE;

/// Writes `private` (mode 600) and `private.pub`, commented `comment`. `private` must not
/// exist yet.
pub fn generate(private: &Path, comment: &str) -> Result<(), VmError> {
    let doing = format!("generating an SSH key at {}", private.display());
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(private)
        .output()
        .map_err(|e| {
            VmError::Tool(format!(
                "{doing}: cannot run `ssh-keygen` ({e}); install the Debian package `{PACKAGE}`"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(VmError::Tool(format!(
            "{doing}: ssh-keygen failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
