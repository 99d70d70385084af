//! `kiln deploy nodes.toml`: serve an image once and run the loader on every node listed,
//! then report each node.
//!
//! ```toml
//! image = "disk.kzi"              # relative to this file
//! group = "239.192.1.1:7000"
//! iface = "br0"                   # where the server sends
//! rate = "800M"                   # bits per second
//!
//! [[node]]
//! name = "n1"
//! run = ["ssh", "root@n1"]        # how to run a command on the node (or ip netns exec …)
//! iface = "eth0"
//! target = "/dev/vda"
//! kiln = "/usr/local/bin/kiln"    # the loader on the node (default: kiln)
//! ```

use crate::net::{self, ServeOptions};
use crate::unpack::Kzi;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The nodes file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub image: PathBuf,
    #[serde(default = "default_group")]
    pub group: SocketAddrV4,
    pub iface: Option<String>,
    /// Bits per second, like `800M`.
    #[serde(default = "default_rate")]
    pub rate: String,
    /// Seconds a loader waits for the server before giving up.
    #[serde(default = "default_timeout")]
    pub timeout: f64,
    #[serde(rename = "node")]
    pub nodes: Vec<Node>,
}

fn default_group() -> SocketAddrV4 {
    SocketAddrV4::new([239, 192, 1, 1].into(), 7000)
}
fn default_rate() -> String {
    "800M".into()
}
fn default_timeout() -> f64 {
    60.0
}

/// One machine to load.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    /// Command prefix that runs a command on the node.
    #[serde(default)]
    pub run: Vec<String>,
    pub iface: Option<String>,
    pub target: String,
    #[serde(default = "default_kiln")]
    pub kiln: String,
}

fn default_kiln() -> String {
    "kiln".into()
}

/// How each node did.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    pub name: String,
    pub ok: bool,
    pub seconds: f64,
    pub error: Option<String>,
    /// The loader's own JSON report.
    pub load: Option<serde_json::Value>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct NodesReport {
    pub seconds: f64,
    pub serve: Option<net::ServeReport>,
    pub nodes: Vec<NodeReport>,
}

/// `800M` bits per second → bytes per second.
pub fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        Some('G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    let n: f64 = digits
        .parse()
        .with_context(|| format!("`{s}` is not a rate like 800M"))?;
    Ok((n * mult / 8.0) as u64)
}

/// Reads and checks a nodes file.
pub fn read(path: &Path) -> Result<NodesFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: NodesFile = toml::from_str(&text)
        .with_context(|| format!("{}: not a valid nodes file", path.display()))?;
    if file.nodes.is_empty() {
        bail!("{}: no [[node]] listed", path.display());
    }
    if file.image.is_relative() {
        let dir = path.parent().unwrap_or(Path::new("."));
        file.image = dir.join(&file.image);
    }
    net::check_group(file.group)?;
    parse_rate(&file.rate)?;
    Ok(file)
}

/// Serves the image and runs every node's loader at once; returns when all are done.
pub fn run(path: &Path) -> Result<NodesReport> {
    let file = read(path)?;
    let kzi = Kzi::open(&file.image)?;
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let opts = ServeOptions {
        group: file.group,
        iface: file.iface.clone(),
        rate: parse_rate(&file.rate)?,
        idle_timeout: Duration::from_secs_f64(file.timeout),
        ttl: 1,
        corrupt_chunk: None,
        stop: Some(stop.clone()),
    };
    std::thread::scope(|s| {
        let server = s.spawn(|| net::serve(&kzi, &opts, &|_| {}));
        let loaders: Vec<_> = file
            .nodes
            .iter()
            .map(|node| {
                let group = file.group;
                let timeout = file.timeout;
                s.spawn(move || run_node(node, group, timeout))
            })
            .collect();
        let nodes = loaders
            .into_iter()
            .map(|h| h.join().expect("node thread panicked"))
            .collect();
        stop.store(true, Ordering::Relaxed);
        let serve = server.join().expect("server thread panicked")?;
        Ok(NodesReport {
            seconds: start.elapsed().as_secs_f64(),
            serve: Some(serve),
            nodes,
        })
    })
}

fn run_node(node: &Node, group: SocketAddrV4, timeout: f64) -> NodeReport {
    let start = Instant::now();
    let (program, prefix) = match node.run.split_first() {
        Some((p, rest)) => (p.clone(), rest.to_vec()),
        None => (node.kiln.clone(), Vec::new()),
    };
    let mut cmd = Command::new(&program);
    cmd.args(prefix);
    if !node.run.is_empty() {
        cmd.arg(&node.kiln);
    }
    cmd.args(["deploy", "load", "--json", "--group", &group.to_string()])
        .args(["--target", &node.target, "--timeout", &timeout.to_string()]);
    if let Some(iface) = &node.iface {
        cmd.args(["--iface", iface]);
    }
    cmd.stdin(Stdio::null());
    let result = cmd.output();
    let seconds = start.elapsed().as_secs_f64();
    match result {
        Ok(out) if out.status.success() => NodeReport {
            name: node.name.clone(),
            ok: true,
            seconds,
            error: None,
            load: serde_json::from_slice(&out.stdout).ok(),
        },
        Ok(out) => NodeReport {
            name: node.name.clone(),
            ok: false,
            seconds,
            error: Some(
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("the loader failed")
                    .to_string(),
            ),
            load: None,
        },
        Err(e) => NodeReport {
            name: node.name.clone(),
            ok: false,
            seconds,
            error: Some(format!("cannot run {program}: {e}")),
            load: None,
        },
    }
}
