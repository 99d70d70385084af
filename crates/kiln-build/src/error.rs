use kiln_sandbox::Outcome;
use kiln_spec::Pos;
use std::path::PathBuf;

/// Why a build stopped.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Store(#[from] kiln_store::StoreError),
    #[error(transparent)]
    Sandbox(#[from] kiln_sandbox::SandboxError),
    #[error(transparent)]
    Fetch(#[from] kiln_fetch::FetchError),
    #[error("step at {pos} failed ({}): {step}\n--- last lines of its output ---\n{tail}", describe(*outcome))]
    StepFailed {
        step: String,
        pos: Pos,
        outcome: Outcome,
        tail: String,
    },
    #[error("secret `{id}` used at {pos} was not provided: pass --secret {id}:FILE")]
    MissingSecret { id: String, pos: Pos },
    #[error("user `{0}` is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("no build stage named `{0}`")]
    UnknownStage(String),
    #[error("copy: {0}")]
    Copy(String),
    #[error("{0}")]
    Tool(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing build output: {0}")]
    Output(std::io::Error),
    #[error("build cancelled")]
    Cancelled,
}

impl BuildError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn output(e: std::io::Error) -> Self {
        BuildError::Output(e)
    }
}

fn describe(outcome: Outcome) -> String {
    match outcome {
        Outcome::Exited(code) => format!("exit status {code}"),
        Outcome::Signalled(sig) => format!("killed by signal {sig}"),
    }
}
