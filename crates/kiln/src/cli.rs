//! Command-line interface definition.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// Build, test and ship custom OS images from OBuilder-compatible specs.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about)]
pub struct Cli {
    /// The layer store [default: $KILN_STORE, else /var/lib/kiln as root, else $XDG_DATA_HOME/kiln]
    #[arg(long, global = true, env = "KILN_STORE")]
    pub store: Option<PathBuf>,
    /// More log output (-v info, -vv debug); KILN_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// `--store`, `$KILN_STORE`, `/var/lib/kiln` for root, else the XDG data dir.
    pub fn store_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        if nix::unistd::geteuid().is_root() {
            return Ok(PathBuf::from("/var/lib/kiln"));
        }
        if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(xdg).join("kiln"));
        }
        let home = std::env::var_os("HOME").ok_or_else(|| {
            anyhow::anyhow!("neither --store, KILN_STORE, XDG_DATA_HOME nor HOME is set")
        })?;
        Ok(PathBuf::from(home).join(".local/share/kiln"))
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a spec; prints each step and finally `Got: "ID"`.
    Build(BuildArgs),
    /// Write a stored layer's root filesystem as a tar archive or a directory.
    Export(ExportArgs),
    /// Print a spec in canonical layout (or check that it is).
    Fmt(FmtArgs),
    /// List stored layers.
    Ls(LsArgs),
    /// Delete a layer and everything built on it.
    Delete(DeleteArgs),
    /// Delete least-recently-used leaf layers until the store is under a size.
    Prune(PruneArgs),
    /// Delete every layer, cache and temporary file.
    Clean(CleanArgs),
    /// Check that the store and the sandbox work.
    Healthcheck(JsonArg),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The spec file.
    #[arg(short = 'f', long = "file", default_value = "build.spec")]
    pub file: PathBuf,
    /// The build context: the directory `copy` reads from.
    #[arg(default_value = ".")]
    pub context: PathBuf,
    /// Provide a secret: `ID:FILE` (repeatable).
    #[arg(long = "secret", value_name = "ID:FILE")]
    pub secrets: Vec<String>,
    /// Let fsync and friends really sync inside steps (slower; off = no-ops).
    #[arg(long)]
    pub no_fast_sync: bool,
    /// Print a JSON summary (`{"id": …}`) on stdout at the end; step output goes to stderr.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Tar,
    Dir,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Layer id (or a unique prefix of one).
    pub id: String,
    #[arg(long, value_enum, default_value = "tar")]
    pub format: ExportFormat,
    /// Output file (tar; `-` for stdout) or directory (dir).
    #[arg(short, long)]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct FmtArgs {
    /// The spec file.
    pub file: PathBuf,
    /// Exit 1 if the file is not in canonical layout instead of printing it.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Layer id (or a unique prefix of one).
    pub id: String,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Keep at most this much: bytes, or with a K/M/G/T suffix (powers of 1024).
    #[arg(long, value_parser = crate::size::parse_size)]
    pub keep_bytes: u64,
    #[command(flatten)]
    pub json: JsonArg,
}

#[derive(Debug, Args)]
pub struct CleanArgs {
    /// Also delete the downloaded .deb cache.
    #[arg(long)]
    pub all: bool,
}
