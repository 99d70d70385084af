//! `kiln serve`: the marketplace server (`kiln_catalog::server`) on a tokio runtime.

use crate::cli::ServeArgs;
use anyhow::Context;
use kiln_catalog::server::{self, Config};
use std::io::Write;
use std::process::ExitCode;

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config_path = args
        .config
        .clone()
        .or_else(|| Some(args.data.join("config.json")).filter(|p| p.is_file()));
    let mut config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(f) = args.token_file {
        config.token = None;
        config.token_file = Some(f);
    }
    if let Some(size) = &args.max_upload {
        config.max_upload_bytes = Some(crate::size::parse_size(size).map_err(anyhow::Error::msg)?);
    }
    if let Some(t) = args.trust {
        config.trust_dir = Some(t);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the server's runtime")?;
    let prepared = server::prepare(&args.data, config)?;
    if !prepared.writable() {
        eprintln!("kiln serve: no token configured: the marketplace is read-only");
    }
    runtime.block_on(async {
        let bound = server::bind(&args.listen).await?;
        // Scripts and tests read the address (port 0 picks a free one) from this line.
        println!("kiln serve: listening on http://{}", bound.addr);
        let _ = std::io::stdout().flush();
        server::serve(bound, prepared).await;
        Ok::<(), kiln_catalog::CatalogError>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
