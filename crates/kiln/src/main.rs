//! `kiln`: build, test and ship custom OS images.
//!
//! This binary only wires the library crates together: argument parsing, output,
//! exit codes. Every command's logic lives in the crates.

mod builder;
mod cli;
mod cmd_appliance;
mod cmd_artifact;
mod cmd_base;
mod cmd_build;
mod cmd_catalog;
mod cmd_catalog_oci;
mod cmd_cpio;
mod cmd_create;
mod cmd_deploy;
mod cmd_dockerfile;
mod cmd_image;
mod cmd_repro;
mod cmd_serve;
mod cmd_shell;
mod cmd_shell_vm;
mod cmd_store;
mod cmd_vm;
mod layers;
mod size;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox re-executes this binary as its init; that must happen before anything else.
    kiln_sandbox::maybe_run_init();
    let cli = cli::Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: cli::Cli) -> anyhow::Result<ExitCode> {
    let store_dir = cli.store_dir()?;
    match cli.command {
        cli::Command::Build(args) => cmd_build::build(&store_dir, args),
        cli::Command::Export(args) => cmd_build::export(&store_dir, args),
        cli::Command::Fmt(args) => cmd_build::fmt(args),
        cli::Command::Dockerfile(args) => cmd_dockerfile::dockerfile(args),
        cli::Command::Ls(args) => cmd_store::ls(&store_dir, args),
        cli::Command::Delete(args) => cmd_store::delete(&store_dir, args),
        cli::Command::Prune(args) => cmd_store::prune(&store_dir, args),
        cli::Command::Clean(args) => cmd_store::clean(&store_dir, args),
        cli::Command::Healthcheck(args) => cmd_store::healthcheck(&store_dir, args),
        cli::Command::Shell(args) => cmd_shell::shell(&store_dir, args),
        cli::Command::Names(args) => cmd_shell::names(&store_dir, args),
        cli::Command::Base(cmd) => cmd_base::base(&store_dir, cmd),
        cli::Command::Run(args) => cmd_vm::run(args),
        cli::Command::Test(args) => cmd_vm::test(args),
        cli::Command::Cpio(cmd) => cmd_cpio::cpio(cmd),
        cli::Command::Appliance(args) => cmd_appliance::appliance(&store_dir, args),
        cli::Command::Deploy(args) => cmd_deploy::deploy(args),
        cli::Command::Artifact(cmd) => cmd_artifact::artifact(cmd),
        cli::Command::Key(cmd) => cmd_catalog::key(cmd),
        cli::Command::Image(cmd) => cmd_catalog::image(&store_dir, cmd),
        cli::Command::Serve(args) => cmd_serve::serve(args),
        cli::Command::Create(args) => cmd_create::create(&store_dir, args),
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .without_time()
        .init();
}
