//! The multicast loader on real sockets: `serve` drives a [`protocol::Sender`] from a
//! `.kzi` file, `load` a [`protocol::Receiver`] onto a [`Target`].
//!
//! Plain blocking UDP sockets on one thread each: the sender paces itself with a token
//! bucket at the rate its state machine sets; the receiver polls its socket with a short
//! timeout so it can ask again on time.

use crate::format::Meta;
use crate::protocol::{
    self, Event, Packet, Receiver, ReceiverConfig, ReceiverStats, Send, Sender, SenderConfig,
    SenderStats, FRAG, META_OBJECT,
};
use crate::target::Target;
use crate::unpack::Kzi;
use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Checks that `group` is an IPv4 multicast address.
pub fn check_group(group: SocketAddrV4) -> Result<()> {
    if !group.ip().is_multicast() {
        bail!(
            "{} is not a multicast address (use one in 224.0.0.0/4, e.g. 239.192.1.1)",
            group.ip()
        );
    }
    if group.port() == 0 {
        bail!("the group {group} needs a port");
    }
    Ok(())
}

/// The IPv4 address of interface `name`.
pub fn iface_addr(name: &str) -> Result<Ipv4Addr> {
    let mut found = false;
    for ifa in nix::ifaddrs::getifaddrs().context("listing network interfaces")? {
        if ifa.interface_name != name {
            continue;
        }
        found = true;
        if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
            return Ok(sin.ip());
        }
    }
    if found {
        bail!("network interface {name} has no IPv4 address");
    }
    bail!("no network interface named {name}")
}

fn interface(iface: Option<&str>) -> Result<Ipv4Addr> {
    iface.map_or(Ok(Ipv4Addr::UNSPECIFIED), iface_addr)
}

/// Asks for a large socket buffer: as root past `net.core.*mem_max` (`SO_*BUFFORCE`),
/// else as large as allowed.
fn big_buffers(socket: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let value = bytes as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt reads one c_int from a valid pointer.
            let r = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &value as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub group: SocketAddrV4,
    /// Interface to send on (its IPv4 address becomes the source).
    pub iface: Option<String>,
    /// Bytes per second at most.
    pub rate: u64,
    pub idle_timeout: Duration,
    pub ttl: u32,
    /// Test hook: flip a byte of the first transmission of this chunk.
    pub corrupt_chunk: Option<u32>,
    /// Stop as soon as this is set (and nothing is left to send), idle or not.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// What serving did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ServeReport {
    pub seconds: f64,
    pub chunks: u32,
    pub receivers_done: usize,
    pub final_rate: u64,
    #[serde(flatten)]
    pub stats: SenderStats,
}

/// Serves `kzi` to the group until no receiver has asked for anything for the idle
/// timeout. `ready(addr)` is called once the socket is bound.
pub fn serve(kzi: &Kzi, opts: &ServeOptions, ready: &dyn Fn(SocketAddr)) -> Result<ServeReport> {
    check_group(opts.group)?;
    let local = interface(opts.iface.as_deref())?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    big_buffers(&socket, 8 << 20);
    socket
        .bind(&SockAddr::from(SocketAddrV4::new(local, 0)))
        .with_context(|| format!("binding to {local}"))?;
    socket.set_multicast_if_v4(&local)?;
    socket.set_multicast_ttl_v4(opts.ttl)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_nonblocking(true)?;
    let socket: UdpSocket = socket.into();
    ready(socket.local_addr()?);

    let meta_blob = kzi.meta.encode();
    let meta_hash = *blake3::hash(&meta_blob).as_bytes();
    let session = protocol::session_of(&kzi.meta.header.uuid);
    let lens = kzi.meta.index.iter().map(|e| e.record_len).collect();
    let cfg = SenderConfig {
        max_rate: opts.rate,
        min_rate: (opts.rate / 16).max(100_000),
        hello_interval: Duration::from_millis(100),
        idle_timeout: opts.idle_timeout,
    };
    let start = Instant::now();
    let mut sender = Sender::new(
        session,
        meta_blob.len() as u32,
        meta_hash,
        lens,
        cfg,
        start.elapsed(),
    );
    let group = SocketAddr::V4(opts.group);
    let mut cache: Option<(u32, Vec<u8>)> = None;
    let mut corrupt = opts.corrupt_chunk;
    let mut buf = vec![0u8; 65536];
    // Token bucket: bytes that may go out now; at most a few dozen packets at once.
    let burst = 48.0 * FRAG as f64;
    let mut tokens = burst;
    let mut last = Instant::now();
    loop {
        let now = start.elapsed();
        while let Ok((n, _)) = socket.recv_from(&mut buf) {
            sender.on_packet(now, &buf[..n]);
        }
        let stopped = opts
            .stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::Relaxed));
        if sender.finished(now) || (stopped && sender.queued_bytes() == 0) {
            break;
        }
        let t = Instant::now();
        tokens = (tokens + sender.rate() as f64 * (t - last).as_secs_f64()).min(burst);
        last = t;
        let mut sent_any = false;
        while tokens > 0.0 {
            let Some(send) = sender.poll(now) else { break };
            let packet = match send {
                Send::Hello => sender.hello(),
                Send::Data { object, frag, seq } => {
                    let object_bytes: &[u8] = if object == META_OBJECT {
                        &meta_blob
                    } else {
                        if cache.as_ref().is_none_or(|(o, _)| *o != object) {
                            cache = Some((object, kzi.record(object)?));
                        }
                        &cache.as_ref().expect("just filled").1
                    };
                    let at = frag as usize * FRAG;
                    let payload = &object_bytes[at..(at + FRAG).min(object_bytes.len())];
                    let mut p = Packet::Data {
                        session,
                        object,
                        object_len: object_bytes.len() as u32,
                        frag,
                        seq,
                        payload,
                    }
                    .encode();
                    if corrupt == Some(object) && frag == 0 {
                        corrupt = None;
                        let last = p.len() - 1;
                        p[last] ^= 0x20;
                        tracing::warn!("test hook: corrupted chunk {object} in transit");
                    }
                    tokens -= p.len() as f64;
                    p
                }
            };
            send_to(&socket, &packet, group)?;
            sent_any = true;
        }
        if !sent_any || tokens <= 0.0 {
            std::thread::sleep(Duration::from_micros(if sent_any { 200 } else { 1000 }));
        }
    }
    Ok(ServeReport {
        seconds: start.elapsed().as_secs_f64(),
        chunks: kzi.meta.header.chunk_count,
        receivers_done: sender.receivers_done(),
        final_rate: sender.rate(),
        stats: sender.stats.clone(),
    })
}

/// Sends, waiting out a full socket buffer.
fn send_to(socket: &UdpSocket, packet: &[u8], to: SocketAddr) -> Result<()> {
    loop {
        match socket.send_to(packet, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(100));
            }
            // ENOBUFS: the interface queue is full; the packet is lost like any other.
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("sending to {to}")),
        }
    }
}

/// How to load.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub group: SocketAddrV4,
    /// Interface to join the group on.
    pub iface: Option<String>,
    pub target: PathBuf,
    pub zero_rest: bool,
    /// Give up when nothing arrives from the sender for this long.
    pub timeout: Duration,
    pub window: usize,
    /// Read every chunk back from the target at the end and check it again.
    pub readback: bool,
}

/// What loading did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub seconds: f64,
    pub disk_size: u64,
    pub chunks: u32,
    /// The total hash, over every chunk's (verified) hash.
    pub total_hash: String,
    /// Whether every chunk was read back from the target and checked again.
    pub readback: bool,
    #[serde(flatten)]
    pub stats: ReceiverStats,
}

/// Loads the image served on the group onto the target: resumes from what the target
/// already holds, writes only chunks whose hash matches, and ends with every chunk read
/// back and verified. `progress(done, total)` counts chunks.
pub fn load(opts: &LoadOptions, progress: &dyn Fn(u64, u64)) -> Result<LoadReport> {
    check_group(opts.group)?;
    let local = interface(opts.iface.as_deref())?;
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    big_buffers(&socket, 32 << 20);
    socket
        .bind(&SockAddr::from(opts.group))
        .with_context(|| format!("binding to {}", opts.group))?;
    socket
        .join_multicast_v4(opts.group.ip(), &local)
        .with_context(|| format!("joining {} on {local}", opts.group.ip()))?;
    socket.set_read_timeout(Some(Duration::from_millis(2)))?;
    let socket: UdpSocket = socket.into();
    let requests =
        UdpSocket::bind(SocketAddrV4::new(local, 0)).context("binding the request socket")?;

    let start = Instant::now();
    let mut rx = Receiver::new(
        fastrand::u32(..),
        fastrand::u64(..),
        ReceiverConfig {
            window: opts.window,
            ..Default::default()
        },
    );
    let mut server: Option<SocketAddr> = None;
    let mut target: Option<(Target, Box<Meta>)> = None;
    let mut buf = vec![0u8; 65536];
    let mut last_heard = Instant::now();
    let mut last_tick = Duration::ZERO;
    let mut events = Vec::new();
    loop {
        let now = start.elapsed();
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let packet = &buf[..n];
                if let Some(Packet::Hello { session, .. }) = Packet::parse(packet) {
                    if rx.session().is_none_or(|s| s == session) {
                        server = Some(from);
                    }
                }
                let before = rx.stats.data_packets;
                events.extend(rx.on_packet(now, packet));
                if rx.stats.data_packets != before || server == Some(from) {
                    last_heard = Instant::now();
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("receiving"),
        }
        if now >= last_tick + Duration::from_millis(4) {
            last_tick = now;
            events.extend(rx.tick(now));
        }
        for event in std::mem::take(&mut events) {
            match event {
                Event::Send(p) => {
                    if let Some(to) = server {
                        // A lost request is asked again later.
                        let _ = requests.send_to(&p, to);
                    }
                }
                Event::Meta(meta) => {
                    let t = Target::open(&opts.target, meta.header.disk_size)?;
                    let present = present_chunks(&t, &meta)?;
                    progress(
                        present.iter().filter(|&&p| p).count() as u64,
                        present.len() as u64,
                    );
                    events.extend(rx.start(&present, start.elapsed()));
                    target = Some((t, meta));
                }
                Event::Write(chunk) => {
                    let (t, _) = target.as_ref().context("a chunk before the metadata")?;
                    t.write_chunk(&chunk)?;
                    let (done, total) = rx.progress();
                    progress(done as u64, total as u64);
                }
                Event::Corrupt { index } => {
                    tracing::warn!("chunk {index} failed its hash; dropped and asked for again");
                }
                Event::Complete => {
                    let (t, meta) = target.as_ref().context("complete before the metadata")?;
                    t.finish(meta, opts.zero_rest)?;
                    // Every chunk was checked against the index before it was written
                    // (or, resumed, read back from the target), and the index against
                    // the total hash: the image is whole. Reading it all back again
                    // only checks the disk itself.
                    if opts.readback {
                        t.verify_all(meta)?;
                    }
                    if let (Some(p), Some(to)) = (rx.done_packet(), server) {
                        for _ in 0..3 {
                            let _ = requests.send_to(&p, to);
                        }
                    }
                    return Ok(LoadReport {
                        seconds: start.elapsed().as_secs_f64(),
                        disk_size: meta.header.disk_size,
                        chunks: meta.header.chunk_count,
                        total_hash: hex(&meta.header.total_hash),
                        readback: opts.readback,
                        stats: rx.stats.clone(),
                    });
                }
            }
        }
        if last_heard.elapsed() > opts.timeout {
            let (done, total) = rx.progress();
            if rx.session().is_none() {
                bail!(
                    "no kiln sender on {} after {:?} (is `kiln deploy serve` running, and the interface right?)",
                    opts.group,
                    opts.timeout
                );
            }
            bail!(
                "the sender on {} went silent for {:?} with {done} of {total} chunks loaded; \
                 run load again to resume",
                opts.group,
                opts.timeout
            );
        }
    }
}

/// Which chunks the target already holds (verified by hash); none for a new file.
fn present_chunks(target: &Target, meta: &Meta) -> Result<Vec<bool>> {
    if target.is_fresh() {
        return Ok(vec![false; meta.index.len()]);
    }
    let mut buf = Vec::new();
    meta.index
        .iter()
        .enumerate()
        .map(|(i, e)| target.holds_chunk(i as u32, e, &mut buf))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
