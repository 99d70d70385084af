//! Set-up steps that fail with a message naming the step, e.g.
//! `mount proc at /proc: EPERM: Operation not permitted`.

use nix::errno::Errno;

use crate::SandboxError;

/// A failed set-up (or clean-up) step.
#[derive(Debug)]
pub(crate) struct StepError(pub(crate) String);

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SandboxError> for StepError {
    fn from(e: SandboxError) -> Self {
        match e {
            SandboxError::Setup(message) => StepError(message),
            other => StepError(other.to_string()),
        }
    }
}

/// Names the step a fallible call belongs to.
pub(crate) trait Step<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, StepError>;
}

impl<T> Step<T> for Result<T, Errno> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, StepError> {
        self.map_err(|e| StepError(format!("{}: {e}", what())))
    }
}

impl<T> Step<T> for std::io::Result<T> {
    fn step(self, what: impl FnOnce() -> String) -> Result<T, StepError> {
        self.map_err(|e| match e.raw_os_error() {
            Some(code) => StepError(format!("{}: {}", what(), Errno::from_raw(code))),
            None => StepError(format!("{}: {e}", what())),
        })
    }
}
