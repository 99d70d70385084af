//! `kiln dockerfile`: reads a spec and prints it as a Dockerfile ([`kiln_spec::dockerfile()`]).

use crate::cli::{DockerfileArgs, EscapeArg};
use anyhow::Context;
use kiln_spec::dockerfile::Escape;
use kiln_spec::DockerfileOptions;
use std::fs;
use std::io::Write;
use std::process::ExitCode;

/// Converts `args.file`; prints the Dockerfile, or writes it to `-o FILE` (only once the
/// whole conversion succeeded, so a refused spec leaves no file behind).
pub fn dockerfile(args: DockerfileArgs) -> anyhow::Result<ExitCode> {
    let name = args.file.display().to_string();
    let text = fs::read_to_string(&args.file).with_context(|| format!("reading spec {name}"))?;
    let spec = kiln_spec::parse_file(&text, &name)?;
    let escape = match args.escape {
        EscapeArg::Unix => Escape::Unix,
        EscapeArg::Windows => Escape::Windows,
    };
    let options = DockerfileOptions {
        buildkit: args.buildkit,
        escape,
    };
    let out = kiln_spec::dockerfile(&spec, options).map_err(|e| e.in_file(&name))?;
    match &args.output {
        Some(path) => fs::write(path, &out)
            .with_context(|| format!("writing the Dockerfile to {}", path.display()))?,
        None => std::io::stdout()
            .lock()
            .write_all(out.as_bytes())
            .context("writing the Dockerfile to stdout")?,
    }
    Ok(ExitCode::SUCCESS)
}
