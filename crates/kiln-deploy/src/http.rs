//! The unicast fallback for networks without multicast: a `.kzi` over HTTP `Range`
//! requests, from `kiln deploy serve --http` or any web server that serves the file.
//!
//! HTTP/1.1 by hand over `std::net`: a loader needs only `GET` with `Range` on one
//! keep-alive connection, and the server only answers those; an HTTP stack would be most
//! of the loader's size on a small boot image.

use crate::format::{self, Header, Meta, HEADER_LEN};
use crate::net::LoadReport;
use crate::protocol::ReceiverStats;
use crate::target::Target;
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Serves the file `path` at every URL path, with `Range` support, until no request has
/// come for `idle_timeout`.
pub fn serve(path: &Path, listener: TcpListener, idle_timeout: Duration) -> Result<()> {
    let file = std::sync::Arc::new(
        File::open(path).with_context(|| format!("opening {}", path.display()))?,
    );
    listener.set_nonblocking(true)?;
    let last = std::sync::Arc::new(std::sync::Mutex::new(Instant::now()));
    loop {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false)?;
                let file = file.clone();
                let last = last.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_connection(&file, stream, &last) {
                        tracing::debug!("http connection: {e:#}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let idle = last.lock().map(|t| t.elapsed()).unwrap_or_default();
                if idle > idle_timeout {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e).context("accepting"),
        }
    }
}

fn serve_connection(
    file: &File,
    stream: TcpStream,
    last: &std::sync::Mutex<Instant>,
) -> Result<()> {
    let len = file.metadata()?.len();
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if let Ok(mut t) = last.lock() {
            *t = Instant::now();
        }
        let method = line.split(' ').next().unwrap_or_default().to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("range") {
                    range = parse_range(value.trim(), len);
                }
            }
        }
        if method != "GET" && method != "HEAD" {
            write!(
                out,
                "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n"
            )?;
            continue;
        }
        let (start, end, status) = match range {
            Some(Some((s, e))) => (s, e, "206 Partial Content"),
            Some(None) => {
                write!(
                    out,
                    "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n"
                )?;
                continue;
            }
            None => (0, len, "200 OK"),
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Type: application/octet-stream\r\nAccept-Ranges: bytes\r\nContent-Length: {}\r\n",
            end - start
        )?;
        if range.is_some() {
            write!(out, "Content-Range: bytes {start}-{}/{len}\r\n", end - 1)?;
        }
        write!(out, "\r\n")?;
        if method == "GET" {
            let mut buf = vec![0u8; 1 << 20];
            let mut at = start;
            while at < end {
                let n = ((end - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at)?;
                out.write_all(&buf[..n])?;
                at += n as u64;
            }
        }
        out.flush()?;
    }
}

/// `bytes=A-B`, `bytes=A-`, `bytes=-N` → `Some(Some((start, end_exclusive)))`; an
/// unsatisfiable range → `Some(None)`; anything else (several ranges) is ignored.
fn parse_range(value: &str, len: u64) -> Option<Option<(u64, u64)>> {
    let spec = value.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let range = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.saturating_sub(n), len)
        }
        (a, "") => (a.parse().ok()?, len),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.saturating_add(1).min(len),
        ),
    };
    Some((range.0 < range.1 && range.0 < len).then_some(range))
}

/// A keep-alive HTTP/1.1 client for one URL.
struct Client {
    host: String,
    path: String,
    stream: BufReader<TcpStream>,
}

impl Client {
    fn connect(url: &str) -> Result<Client> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:80")
        };
        let stream = TcpStream::connect(&addr).with_context(|| format!("connecting to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(60)))?;
        Ok(Client {
            host: host.to_string(),
            path: path.to_string(),
            stream: BufReader::new(stream),
        })
    }

    /// Bytes `start..end` of the file.
    fn range(&mut self, start: u64, end: u64) -> Result<Vec<u8>> {
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nRange: bytes={start}-{}\r\nUser-Agent: kiln-deploy\r\n\r\n",
            self.path,
            self.host,
            end - 1
        );
        self.stream.get_mut().write_all(req.as_bytes())?;
        let mut status = String::new();
        self.stream.read_line(&mut status)?;
        let code = status.split(' ').nth(1).unwrap_or_default().to_string();
        let mut length = None;
        loop {
            let mut h = String::new();
            if self.stream.read_line(&mut h)? == 0 {
                bail!("connection closed in the headers");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<u64>().ok();
                }
            }
        }
        if code != "206" {
            bail!(
                "{}{}: asked for bytes {start}-{}, got `{}` (does the server support Range?)",
                self.host,
                self.path,
                end - 1,
                status.trim()
            );
        }
        let length = length.context("no Content-Length")?;
        if length != end - start {
            bail!("asked for {} bytes, the server sends {length}", end - start);
        }
        let mut body = vec![0u8; length as usize];
        self.stream.read_exact(&mut body)?;
        Ok(body)
    }
}

/// Loads the `.kzi` at `url` onto `target` over HTTP: the header and index first, then
/// every chunk the target lacks, each verified before it is written.
pub fn load(
    url: &str,
    target: &Path,
    zero_rest: bool,
    readback: bool,
    progress: &dyn Fn(u64, u64),
) -> Result<LoadReport> {
    let start = Instant::now();
    let mut client = Client::connect(url)?;
    let head = client.range(0, HEADER_LEN as u64)?;
    let header = Header::parse(&head).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let index = client.range(header.index_offset, header.file_len())?;
    let meta =
        Meta::parse_parts(&header, &head, &index).map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let t = Target::open(target, header.disk_size)?;
    let mut stats = ReceiverStats::default();
    let mut buf = Vec::new();
    let total = meta.index.len() as u64;
    for (i, entry) in meta.index.iter().enumerate() {
        let i = i as u32;
        if !t.is_fresh() && t.holds_chunk(i, entry, &mut buf)? {
            stats.chunks_present += 1;
        } else {
            let mut tries = 0;
            let chunk = loop {
                let record = client.range(entry.offset, entry.offset + entry.record_len as u64)?;
                stats.chunks_requested += 1;
                match format::decode_chunk(
                    &record,
                    header.disk_size,
                    header.chunk_size,
                    Some((i, entry)),
                ) {
                    Ok(chunk) => break chunk,
                    Err(e) if tries < 3 => {
                        tracing::warn!("chunk {i}: {e}; asking again");
                        stats.corrupt_chunks += 1;
                        tries += 1;
                    }
                    Err(e) => bail!("{url}: {e}"),
                }
            };
            t.write_chunk(&chunk)?;
            stats.chunks_written += 1;
        }
        progress(i as u64 + 1, total);
    }
    t.finish(&meta, zero_rest)?;
    if readback {
        t.verify_all(&meta)?;
    }
    Ok(LoadReport {
        seconds: start.elapsed().as_secs_f64(),
        disk_size: header.disk_size,
        chunks: header.chunk_count,
        total_hash: meta
            .header
            .total_hash
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        readback,
        stats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Some((0, 10))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Some((90, 100))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Some((90, 100))));
        assert_eq!(parse_range("bytes=95-200", 100), Some(Some((95, 100))));
        assert_eq!(parse_range("bytes=100-", 100), Some(None));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
    }
}
