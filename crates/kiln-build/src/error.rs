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
    /// OBuilder's rule: only a `dst` ending in `/` takes several sources.
    #[error("{pos}: copy of {count} sources to `{dst}`: without a trailing `/` the one source is copied as `{dst}`, so several cannot be; write `(dst {dst}/)` to put each inside it, or copy them one by one")]
    CopySourcesAsOnePath { pos: Pos, count: usize, dst: String },
    /// A cache or secret target the namespace sandbox cannot mount at.
    #[error("{pos}: {kind} `{id}` has target `{target}`, which is not an absolute path: kiln's namespace sandbox mounts at absolute Linux paths only; write it starting with `/`")]
    MountTargetNotAbsolute {
        pos: Pos,
        kind: &'static str,
        id: String,
        target: String,
    },
    /// A `(from layer:…)` base that is not in the store.
    #[error("{pos}: (from {from}): {problem}")]
    UnknownLayer {
        pos: Pos,
        from: String,
        problem: String,
    },
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
    /// A layer could not be pushed to `--cache-to` (it is committed in the local store).
    #[error("--cache-to: {0}")]
    CachePush(String),
    /// A stage asked for the QEMU sandbox (or starts from a VM disk) in a build that has none.
    #[error("this stage runs in the QEMU sandbox (`(sandbox qemu)`, `--sandbox qemu` or a VM base), which this build was not given")]
    NoVmSandbox,
    /// `(sandbox chroot)` on a VM disk base.
    #[error("{pos}: `(sandbox chroot)` on `{base}`, a VM disk: its steps can only run in a VM; write `(sandbox qemu)` or start from a tree base")]
    ChrootOnDisk { pos: Pos, base: String },
    /// A disk layer whose chain reaches no VM base.
    #[error("layer {0} is a VM disk without a VM base below it (no boot/ directory): rebuild it")]
    NoBootFiles(kiln_spec::LayerId),
}

impl BuildError {
    /// The spec position this error's message starts with (`LINE:COL: …`), so a caller
    /// that knows the spec's file can prefix it to read `FILE:LINE:COL: …`.
    pub fn leading_pos(&self) -> Option<Pos> {
        match self {
            BuildError::CopySourcesAsOnePath { pos, .. }
            | BuildError::MountTargetNotAbsolute { pos, .. }
            | BuildError::ChrootOnDisk { pos, .. }
            | BuildError::UnknownLayer { pos, .. } => Some(*pos),
            _ => None,
        }
    }

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
