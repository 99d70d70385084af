//! `debootstrap` (Debian package `debootstrap`): the fallback when mmdebstrap is missing.

use super::process::{private_mounts, run_streaming};
use super::{find_program, ToolError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) const PROGRAM: &str = "debootstrap";
pub(crate) const PACKAGE: &str = "debootstrap";

/// One bootstrap run.
pub(crate) struct Bootstrap<'a> {
    pub suite: &'a str,
    /// debootstrap's own variant name; `None` is its default (`important`-like) set.
    pub variant: Option<&'a str>,
    pub include: &'a [String],
    pub arch: &'a str,
    pub mirror: &'a str,
    pub target: &'a Path,
    /// Absolute directory where debootstrap keeps downloaded `.deb`s between runs.
    pub cache_dir: &'a Path,
    /// Extra environment (`SOURCE_DATE_EPOCH`).
    pub env: Vec<(&'a str, std::ffi::OsString)>,
}

/// The installed program, if any.
pub(crate) fn find() -> Option<PathBuf> {
    find_program(PROGRAM)
}

/// debootstrap's variant for an mmdebstrap variant, if it has one (`Some(None)`: its default).
pub(crate) fn variant_for(mmdebstrap_variant: &str) -> Option<Option<&'static str>> {
    match mmdebstrap_variant {
        "minbase" | "required" => Some(Some("minbase")),
        "buildd" => Some(Some("buildd")),
        "important" | "debootstrap" | "-" => Some(None),
        _ => None,
    }
}

/// Runs `program` with output streamed to `progress`, in a private mount namespace.
pub(crate) fn run(
    program: &Path,
    b: &Bootstrap<'_>,
    progress: &mut dyn Write,
) -> Result<(), ToolError> {
    let mut cmd = Command::new(program);
    if let Some(variant) = b.variant {
        cmd.arg(format!("--variant={variant}"));
    }
    if !b.include.is_empty() {
        cmd.arg(format!("--include={}", b.include.join(",")));
    }
    cmd.arg(format!("--arch={}", b.arch))
        .arg(format!("--cache-dir={}", b.cache_dir.display()));
    cmd.arg(b.suite).arg(b.target).arg(b.mirror);
    cmd.envs(b.env.iter().map(|(k, v)| (k, v)));
    let shown: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let _ = writeln!(progress, "+ {} {}", program.display(), shown.join(" "));
    private_mounts(&mut cmd);
    run_streaming(&mut cmd, progress).map(drop)
}
