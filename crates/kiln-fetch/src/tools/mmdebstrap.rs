//! `mmdebstrap` (Debian package `mmdebstrap`): bootstraps a Debian root filesystem.

use super::process::{private_mounts, run_streaming};
use super::{find_program, ToolError};
use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const PROGRAM: &str = "mmdebstrap";
pub(crate) const PACKAGE: &str = "mmdebstrap";

/// One bootstrap run.
pub(crate) struct Bootstrap<'a> {
    pub suite: &'a str,
    pub variant: &'a str,
    pub include: &'a [String],
    pub arch: &'a str,
    pub mirror: &'a str,
    pub target: &'a Path,
    /// Shell snippets run after setup, before `apt-get update` (`$1` is the target).
    pub setup_hooks: &'a [&'a str],
    /// Shell snippets run after all packages are installed, before cleanup.
    pub customize_hooks: &'a [&'a str],
    /// Extra environment for the hooks.
    pub env: Vec<(&'a str, OsString)>,
}

/// The installed program, if any.
pub(crate) fn find() -> Option<PathBuf> {
    find_program(PROGRAM)
}

/// Runs `program` in root mode with verbose output streamed to `progress`, in a private
/// mount namespace so its chroot mounts cannot outlive it. Packages downloaded before the
/// essential stage are kept (`--skip=essential/unlink`) so a customize hook can save them;
/// mmdebstrap's own cleanup still empties the apt cache and lists of the result.
pub(crate) fn run(
    program: &Path,
    b: &Bootstrap<'_>,
    progress: &mut dyn Write,
) -> Result<(), ToolError> {
    let mut cmd = Command::new(program);
    cmd.arg("--mode=root")
        .arg(format!("--variant={}", b.variant))
        .arg(format!("--architectures={}", b.arch))
        .arg("--verbose")
        .arg("--skip=essential/unlink");
    if !b.include.is_empty() {
        cmd.arg(format!("--include={}", b.include.join(",")));
    }
    for hook in b.setup_hooks {
        cmd.arg(format!("--setup-hook={hook}"));
    }
    for hook in b.customize_hooks {
        cmd.arg(format!("--customize-hook={hook}"));
    }
    cmd.arg("--").arg(b.suite).arg(b.target).arg(b.mirror);
    cmd.envs(b.env.iter().map(|(k, v)| (k, v)));
    let shown: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy())
        .map(|a| match a.split_once("-hook=") {
            Some((option, _)) => format!("{option}-hook=<kiln hook>"),
            None => a.into_owned(),
        })
        .collect();
    let _ = writeln!(progress, "+ {} {}", program.display(), shown.join(" "));
    private_mounts(&mut cmd);
    run_streaming(&mut cmd, progress).map(drop)
}
