/// Errors setting up or running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("{what}: {source}")]
    Sys { what: String, source: std::io::Error },
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
}

impl SandboxError {
    pub fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        SandboxError::Sys { what: what.into(), source: source.into() }
    }
}
