//! Checks a [`RunSpec`] in kiln before any process is started, so mistakes come back as
//! clear errors instead of half-built sandboxes.

use std::path::Path;

use crate::{RunSpec, SandboxError};

/// Longest hostname the kernel accepts (HOST_NAME_MAX).
const HOST_NAME_MAX: usize = 64;

pub(crate) fn check(spec: &RunSpec) -> Result<(), SandboxError> {
    let bad = |what: String| Err(SandboxError::Setup(what));
    if spec.argv.is_empty() {
        return bad("the command is empty (argv has no program)".into());
    }
    if let Some(arg) = spec.argv.iter().find(|a| a.contains('\0')) {
        return bad(format!("command argument {arg:?} contains a NUL byte"));
    }
    for (key, value) in &spec.env {
        if key.is_empty() || key.contains('=') || key.contains('\0') || value.contains('\0') {
            return bad(format!("invalid environment variable {key:?}={value:?}: names must be non-empty without '=' or NUL"));
        }
    }
    if !spec.cwd.starts_with('/') || spec.cwd.contains('\0') {
        return bad(format!(
            "working directory {:?} must be an absolute path",
            spec.cwd
        ));
    }
    if spec.hostname.is_empty()
        || spec.hostname.len() > HOST_NAME_MAX
        || spec.hostname.contains('\0')
    {
        return bad(format!(
            "hostname {:?} must be 1 to {HOST_NAME_MAX} bytes",
            spec.hostname
        ));
    }
    for bind in &spec.mounts {
        check_target(&bind.target, "bind mount")?;
        if !bind.source.exists() {
            return bad(format!(
                "bind mount source {} (for {}) does not exist; create it first",
                bind.source.display(),
                bind.target
            ));
        }
    }
    for secret in &spec.secrets {
        check_target(&secret.target, "secret")?;
    }
    Ok(())
}

/// A mount target must be a plain absolute path, not `/`, and not inside /proc or /sys
/// (kernel filesystems we cannot create mountpoints in).
fn check_target(target: &str, what: &str) -> Result<(), SandboxError> {
    let path = Path::new(target);
    let plain = path.is_absolute()
        && !target.contains('\0')
        && target.split('/').all(|c| c != "." && c != "..");
    if !plain || path == Path::new("/") {
        return Err(SandboxError::Setup(format!(
            "{what} target {target:?} must be an absolute path without '.' or '..', other than /"
        )));
    }
    if path.starts_with("/proc") || path.starts_with("/sys") {
        return Err(SandboxError::Setup(format!(
            "{what} target {target:?} is inside /proc or /sys, which the sandbox mounts itself; choose another path"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_must_be_plain_and_outside_kernel_filesystems() {
        assert!(check_target("/run/secrets/x", "secret").is_ok());
        for bad in [
            "run/x", "/", "/a/../b", "/a/./b", "/proc/x", "/sys", "/proc",
        ] {
            assert!(check_target(bad, "secret").is_err(), "{bad} accepted");
        }
        assert!(check_target("/procfs", "secret").is_ok());
    }
}
