use std::path::PathBuf;

/// Errors fetching a base; each names the base (as written in `(from …)`) and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The `(from …)` string or its `(bootstrap …)` options are invalid.
    #[error("base `{base}`: {message}")]
    Base { base: String, message: String },

    /// A local file or directory the base needs could not be read or written.
    #[error("base `{base}`: {action} {}: {source}", path.display())]
    Io {
        base: String,
        /// What was being done, e.g. "reading the tarball".
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The directory handed over for the root filesystem is not usable.
    #[error("base `{base}`: the target root filesystem {} {problem}", path.display())]
    Target {
        base: String,
        path: PathBuf,
        problem: String,
    },

    /// An OCI registry could not be reached, refused the request or does not hold the image.
    #[error("base `{base}`: registry {registry}: {message}")]
    Registry {
        base: String,
        registry: String,
        message: String,
    },

    /// An external program kiln needs is not installed.
    #[error(
        "base `{base}`: the program `{program}` is not installed; install it with `apt-get install -y {package}`"
    )]
    MissingTool {
        base: String,
        program: &'static str,
        package: &'static str,
    },

    /// An external program failed; `tail` holds its last output lines.
    #[error("base `{base}`: {message}\n{program} said (last lines):\n{tail}")]
    Tool {
        base: String,
        program: &'static str,
        message: String,
        tail: String,
    },

    /// An archive (rootfs tarball or image layer) holds an entry kiln refuses or cannot apply.
    #[error("base `{base}`: {archive}: {message}")]
    Archive {
        base: String,
        archive: String,
        message: String,
    },
}

impl FetchError {
    /// Shorthand for [`FetchError::Base`].
    pub(crate) fn base(base: &str, message: impl Into<String>) -> Self {
        FetchError::Base {
            base: base.to_string(),
            message: message.into(),
        }
    }

    /// Shorthand for [`FetchError::Io`].
    pub(crate) fn io(
        base: &str,
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        FetchError::Io {
            base: base.to_string(),
            action,
            path: path.into(),
            source,
        }
    }
}
