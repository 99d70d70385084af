//! `kiln deploy`: pack disks into `.kzi` images and load them onto many machines at once.

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use kiln_deploy::{net, nodes, pack, unpack};
use std::io::IsTerminal;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `kiln deploy SUBCOMMAND`, or `kiln deploy NODES.toml`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: Option<DeployCommand>,
    /// A nodes file: serve its image once and run the loader on every node it lists.
    pub nodes: Option<PathBuf>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum DeployCommand {
    /// Pack a raw or qcow2 disk into a .kzi image (allocated data only, zstd chunks).
    Pack(PackArgs),
    /// Write a .kzi image to a block device or file, verifying every chunk.
    Unpack(UnpackArgs),
    /// Multicast a .kzi image to every `kiln deploy load` that asks.
    Serve(ServeArgs),
    /// Receive a multicast image onto a disk (resumes what is already there).
    Load(LoadArgs),
}

#[derive(Debug, Args)]
pub struct PackArgs {
    /// The disk: a raw image, a qcow2 image or a block device.
    pub source: PathBuf,
    /// The .kzi file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Uncompressed bytes per chunk (K, M suffixes).
    #[arg(long, default_value = "1M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// zstd compression level.
    #[arg(long, default_value_t = 3)]
    pub level: i32,
    /// Keep blocks that ext4 filesystems on the disk mark free.
    #[arg(long)]
    pub keep_free: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// The .kzi image.
    pub image: PathBuf,
    /// A block device or a file (created sparse).
    pub target: PathBuf,
    /// On a device, zero the bytes the image does not cover (files get holes anyway).
    #[arg(long)]
    pub zero_rest: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The .kzi image.
    pub image: PathBuf,
    /// Multicast group and port.
    #[arg(long, default_value = "239.192.1.1:7000")]
    pub group: SocketAddrV4,
    /// Interface to send on.
    #[arg(long)]
    pub iface: Option<String>,
    /// Most bits per second (K, M, G suffixes).
    #[arg(long, default_value = "800M", value_parser = parse_size)]
    pub rate: u64,
    /// Exit after this many seconds without a request.
    #[arg(long, default_value_t = 30.0)]
    pub idle_timeout: f64,
    /// Multicast TTL (1 stays on the local network).
    #[arg(long, default_value_t = 1)]
    pub ttl: u32,
    /// Serve the image over HTTP (Range requests) at this address instead of multicast.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: Option<std::net::SocketAddr>,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
    /// Test hook: corrupt the first transmission of this chunk.
    #[arg(long, hide = true)]
    pub test_corrupt_chunk: Option<u32>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Multicast group and port.
    #[arg(long, default_value = "239.192.1.1:7000")]
    pub group: SocketAddrV4,
    /// Interface to join the group on.
    #[arg(long)]
    pub iface: Option<String>,
    /// Block device or file to write.
    #[arg(long)]
    pub target: PathBuf,
    /// Load over HTTP from this URL of a .kzi (unicast fallback) instead of multicast.
    #[arg(long)]
    pub http: Option<String>,
    /// On a device, zero the bytes the image does not cover.
    #[arg(long)]
    pub zero_rest: bool,
    /// Give up after this many seconds without hearing from the sender.
    #[arg(long, default_value_t = 60.0)]
    pub timeout: f64,
    /// Chunks asked for at once.
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// At the end, read every chunk back from the target and check its hash again.
    #[arg(long)]
    pub readback: bool,
    /// Print a JSON report on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `123`, `64K`, `1M`, `2G` (powers of 1024 for sizes; rates use the same suffixes as
/// powers of 1000, see [`serve`]).
fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = digits
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 800M"))?;
    Ok((n * mult as f64) as u64)
}

/// Bits per second from `parse_size`'s binary multiple, as decimal bits → bytes.
fn rate_bytes(binary: u64) -> u64 {
    let decimal = match binary {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => b / (1 << 30) * 1_000_000_000,
        b if b >= 1 << 20 && b % (1 << 20) == 0 => b / (1 << 20) * 1_000_000,
        b if b >= 1 << 10 && b % (1 << 10) == 0 => b / (1 << 10) * 1_000,
        b => b,
    };
    decimal / 8
}

/// A progress reporter: a bar on a terminal, else a line per second on stderr.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: &'static str,
    last: Mutex<Option<Instant>>,
}

impl Progress {
    fn new(what: &'static str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            bar
        });
        Progress {
            bar,
            what,
            last: Mutex::new(None),
        }
    }

    fn update(&self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if done == total || last.is_none_or(|t| t.elapsed() >= Duration::from_millis(250)) {
            *last = Some(Instant::now());
            eprintln!("{}: {done}/{total}", self.what);
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Runs `kiln deploy`.
pub fn deploy(args: DeployArgs) -> Result<ExitCode> {
    match (args.command, args.nodes) {
        (Some(DeployCommand::Pack(a)), _) => pack_cmd(a),
        (Some(DeployCommand::Unpack(a)), _) => unpack_cmd(a),
        (Some(DeployCommand::Serve(a)), _) => serve_cmd(a),
        (Some(DeployCommand::Load(a)), _) => load_cmd(a),
        (None, Some(file)) => {
            let report = nodes::run(&file)?;
            if args.json {
                print_json(&report)?;
            } else {
                for node in &report.nodes {
                    println!(
                        "{}: {} ({:.1} s){}",
                        node.name,
                        if node.ok { "loaded" } else { "FAILED" },
                        node.seconds,
                        node.error
                            .as_deref()
                            .map(|e| format!(": {e}"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(if report.nodes.iter().all(|n| n.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        (None, None) => bail!("give a subcommand (pack, unpack, serve, load) or a nodes file"),
    }
}

fn pack_cmd(a: PackArgs) -> Result<ExitCode> {
    let opts = pack::PackOptions {
        chunk_size: u32::try_from(a.chunk_size).context("chunk size too large")?,
        level: a.level,
        skip_fs_free: !a.keep_free,
    };
    let progress = Progress::new("reading");
    let report = pack::pack(&a.source, &a.output, &opts, &|d, t| progress.update(d, t))?;
    progress.finish();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {} chunks, {} MiB of data from a {} MiB disk in {} MiB; ratio {:.2}",
            a.output.display(),
            report.chunks,
            report.data_bytes >> 20,
            report.disk_size >> 20,
            report.file_bytes >> 20,
            report.ratio
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn unpack_cmd(a: UnpackArgs) -> Result<ExitCode> {
    let progress = Progress::new("chunks");
    let report = unpack::unpack(&a.image, &a.target, a.zero_rest, &|d, t| {
        progress.update(d, t)
    })?;
    progress.finish();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {} chunks verified ({} already there), {} MiB written",
            a.target.display(),
            report.chunks,
            report.chunks_present,
            report.bytes_written >> 20
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn serve_cmd(a: ServeArgs) -> Result<ExitCode> {
    let kzi = unpack::Kzi::open(&a.image)?;
    if let Some(addr) = a.http {
        let listener =
            std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
        eprintln!(
            "serving {} over HTTP on {}",
            a.image.display(),
            listener.local_addr()?
        );
        kiln_deploy::http::serve(&a.image, listener, Duration::from_secs_f64(a.idle_timeout))?;
        return Ok(ExitCode::SUCCESS);
    }
    let opts = net::ServeOptions {
        group: a.group,
        iface: a.iface,
        rate: rate_bytes(a.rate),
        idle_timeout: Duration::from_secs_f64(a.idle_timeout),
        ttl: a.ttl,
        corrupt_chunk: a.test_corrupt_chunk,
        stop: None,
    };
    let report = net::serve(&kzi, &opts, &|addr| {
        eprintln!("serving {} to {} from {addr}", a.image.display(), a.group)
    })?;
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "served {} chunks ({} sent, {} MiB) to {} receivers in {:.1} s",
            report.chunks,
            report.stats.objects_sent,
            report.stats.data_bytes >> 20,
            report.receivers_done,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn load_cmd(a: LoadArgs) -> Result<ExitCode> {
    let progress = Progress::new("chunks");
    let report = match &a.http {
        Some(url) => kiln_deploy::http::load(url, &a.target, a.zero_rest, a.readback, &|d, t| {
            progress.update(d, t)
        })?,
        None => {
            let opts = net::LoadOptions {
                group: a.group,
                iface: a.iface,
                target: a.target.clone(),
                zero_rest: a.zero_rest,
                timeout: Duration::from_secs_f64(a.timeout),
                window: a.window.max(1),
                readback: a.readback,
            };
            net::load(&opts, &|d, t| progress.update(d, t))?
        }
    };
    progress.finish();
    if a.json {
        print_json(&report)?;
    } else {
        println!(
            "{}: {} chunks verified ({} already there, {} received) in {:.1} s",
            a.target.display(),
            report.chunks,
            report.stats.chunks_present,
            report.stats.chunks_written,
            report.seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(parse_size("1M").unwrap(), 1 << 20);
        assert_eq!(parse_size("64k").unwrap(), 64 << 10);
        assert_eq!(rate_bytes(parse_size("800M").unwrap()), 100_000_000);
        assert_eq!(rate_bytes(parse_size("1G").unwrap()), 125_000_000);
        assert!(parse_size("fast").is_err());
    }
}
