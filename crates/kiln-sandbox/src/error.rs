/// Errors setting up or running a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// A system call made by kiln itself failed; `what` names the operation and its path.
    #[error("{what}: {source}")]
    Sys {
        what: String,
        source: std::io::Error,
    },
    /// The sandbox could not be set up (or cleaned up); the message names the failing step.
    #[error("sandbox set-up failed: {0}")]
    Setup(String),
    /// The overlay mount options for a layer chain do not fit in the one page the kernel accepts.
    #[error(
        "the overlay mount options for {layers} layers are {bytes} bytes, more than the {max} \
         bytes the kernel accepts in one mount call: the layer chain is too deep or its paths \
         too long; flatten the chain (commit a flat layer) or use shorter layer paths"
    )]
    ChainTooLong {
        layers: usize,
        bytes: usize,
        max: usize,
    },
    /// The sandbox was stopped because kiln received this signal (e.g. SIGINT from Ctrl-C);
    /// the command and everything it started were killed.
    #[error("sandbox interrupted by signal {signal}; the command was killed")]
    Interrupted { signal: i32 },
    /// This sandbox cannot do that (e.g. the namespace sandbox asked for a VM disk).
    #[error("this sandbox does not support {0}")]
    Unsupported(&'static str),
    /// The QEMU sandbox's guest failed: it did not boot, did not answer, or broke off.
    /// `console` holds the last lines it printed.
    #[error("{what}\nlast console lines:\n{console}")]
    Guest { what: String, console: String },
}

impl SandboxError {
    pub fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> Self {
        SandboxError::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}
