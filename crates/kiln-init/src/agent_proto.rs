//! The protocol between kiln (host) and kiln-init's agent mode (guest), spoken over the
//! virtio-serial port named [`PORT_NAME`].
//!
//! Pure and std-only: kiln-init includes this file into its static executable, and the
//! `kiln-init` crate exports it for the host side, so both ends share one codec.
//!
//! A frame is a type byte, the payload length as a little-endian `u32`, and the payload.
//! Inside a payload, integers are little-endian, a string or byte string is its `u32`
//! length and its bytes, and a list is its `u32` count and its items.
//!
//! The conversation: the guest sends [`Response::Ready`] once, then serves one request at
//! a time. [`Request::Run`] is answered by [`Response::Output`] frames and one
//! [`Response::Exit`] (or [`Response::Error`] when the command could not start). A copy is
//! [`Request::Put`] entries (a file's entry is followed by [`Request::Data`] frames
//! holding exactly its size), then [`Request::PutEnd`], answered by [`Response::PutDone`]
//! or [`Response::Error`]. [`Request::Shutdown`] is answered by [`Response::ShutdownAck`]
//! just before the guest powers off.

use std::fmt;
use std::io::{self, Read, Write};

/// The protocol version the guest announces in [`Response::Ready`].
pub const VERSION: u32 = 1;
/// The name of the virtio-serial port (`virtserialport,name=…`).
pub const PORT_NAME: &str = "kiln.agent";
/// The kernel command-line word that starts kiln-init in agent mode.
pub const CMDLINE_FLAG: &str = "kiln.agent";
/// The largest payload either end accepts; a larger length is garbage, not a frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How many bytes of a file one [`Request::Data`] frame carries at most.
pub const CHUNK: usize = 64 << 10;

/// A filesystem mounted for one command (a cache disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// The guest's device node, e.g. `/dev/vdb`.
    pub device: String,
    /// Absolute path in the guest; created (and removed afterwards) when missing.
    pub target: String,
    pub fstype: String,
}

/// A secret file, bind-mounted read-only at `target` for one command.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub target: String,
    pub value: Vec<u8>,
}

impl fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretFile({}, <{} bytes>)",
            self.target,
            self.value.len()
        )
    }
}

/// One command to run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// The whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    /// Absolute; created when missing.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub mounts: Vec<Mount>,
    pub secrets: Vec<SecretFile>,
    /// Stream the command's stdin from [`Request::Stdin`] frames (else it reads /dev/null).
    pub stdin: bool,
}

/// What a [`PutEntry`] creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutKind {
    Dir {
        mode: u32,
    },
    /// `size` bytes follow in [`Request::Data`] frames.
    File {
        mode: u32,
        mtime: i64,
        size: u64,
    },
    Symlink {
        target: String,
    },
}

/// One entry of a copy; missing parents are created mode 755, owned by `uid:gid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutEntry {
    pub path: String,
    pub kind: PutKind,
    pub uid: u32,
    pub gid: u32,
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Run(RunRequest),
    /// Bytes for the running command's stdin.
    Stdin(Vec<u8>),
    /// Closes the running command's stdin.
    StdinEof,
    Put(PutEntry),
    /// Bytes of the file being put.
    Data(Vec<u8>),
    PutEnd,
    Shutdown,
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Ready {
        version: u32,
    },
    /// Combined stdout and stderr of the running command.
    Output(Vec<u8>),
    Exit(ExitStatus),
    Error(String),
    PutDone,
    ShutdownAck,
}

/// Bytes that are not a valid frame or payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtoError(pub String);

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "agent protocol: {}", self.0)
    }
}

impl std::error::Error for ProtoError {}

impl From<ProtoError> for io::Error {
    fn from(e: ProtoError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

mod tag {
    pub const RUN: u8 = 1;
    pub const STDIN: u8 = 2;
    pub const STDIN_EOF: u8 = 3;
    pub const PUT: u8 = 4;
    pub const DATA: u8 = 5;
    pub const PUT_END: u8 = 6;
    pub const SHUTDOWN: u8 = 7;
    pub const READY: u8 = 0x81;
    pub const OUTPUT: u8 = 0x82;
    pub const EXIT: u8 = 0x83;
    pub const ERROR: u8 = 0x84;
    pub const PUT_DONE: u8 = 0x85;
    pub const SHUTDOWN_ACK: u8 = 0x86;
}

/// Payload writer.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn i64(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }
}

/// Payload reader; every read checks the bounds.
struct Dec<'a>(&'a [u8]);

impl<'a> Dec<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.0.len() < n {
            return Err(ProtoError(format!(
                "payload ends early: {n} bytes wanted, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, ProtoError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> Result<i32, ProtoError> {
        Ok(self.u32()? as i32)
    }
    fn i64(&mut self) -> Result<i64, ProtoError> {
        Ok(i64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(self.i64()? as u64)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, ProtoError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn str(&mut self) -> Result<String, ProtoError> {
        String::from_utf8(self.bytes()?).map_err(|_| ProtoError("a string is not UTF-8".into()))
    }
    /// A list count, checked against what is left (each item takes at least 4 bytes),
    /// so that garbage cannot make the reader allocate without bound.
    fn count(&mut self) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        if n > self.0.len() / 4 {
            return Err(ProtoError(format!("a list of {n} items cannot fit")));
        }
        Ok(n)
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ProtoError(format!(
                "{} stray bytes after the payload",
                self.0.len()
            )))
        }
    }
}

/// A whole frame: type byte, length, payload.
fn frame(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(tag);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

impl Request {
    /// The request as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        let t = match self {
            Request::Run(r) => {
                encode_run(&mut e, r);
                tag::RUN
            }
            Request::Stdin(data) => {
                e.0.extend_from_slice(data);
                tag::STDIN
            }
            Request::StdinEof => tag::STDIN_EOF,
            Request::Put(p) => {
                encode_put(&mut e, p);
                tag::PUT
            }
            Request::Data(data) => {
                e.0.extend_from_slice(data);
                tag::DATA
            }
            Request::PutEnd => tag::PUT_END,
            Request::Shutdown => tag::SHUTDOWN,
        };
        frame(t, &e.0)
    }

    /// The request in a frame's payload.
    pub fn decode(t: u8, payload: &[u8]) -> Result<Request, ProtoError> {
        let mut d = Dec(payload);
        let req = match t {
            tag::RUN => Request::Run(decode_run(&mut d)?),
            tag::STDIN => return Ok(Request::Stdin(payload.to_vec())),
            tag::STDIN_EOF => Request::StdinEof,
            tag::PUT => Request::Put(decode_put(&mut d)?),
            tag::DATA => return Ok(Request::Data(payload.to_vec())),
            tag::PUT_END => Request::PutEnd,
            tag::SHUTDOWN => Request::Shutdown,
            other => return Err(ProtoError(format!("unknown request type {other:#x}"))),
        };
        d.end()?;
        Ok(req)
    }
}

fn encode_run(e: &mut Enc, r: &RunRequest) {
    e.u32(r.argv.len() as u32);
    for a in &r.argv {
        e.str(a);
    }
    e.u32(r.env.len() as u32);
    for (k, v) in &r.env {
        e.str(k).str(v);
    }
    e.str(&r.cwd).u32(r.uid).u32(r.gid);
    e.u32(r.mounts.len() as u32);
    for m in &r.mounts {
        e.str(&m.device).str(&m.target).str(&m.fstype);
    }
    e.u32(r.secrets.len() as u32);
    for s in &r.secrets {
        e.str(&s.target).bytes(&s.value);
    }
    e.u32(r.stdin as u32);
}

fn decode_run(d: &mut Dec) -> Result<RunRequest, ProtoError> {
    let mut r = RunRequest::default();
    for _ in 0..d.count()? {
        r.argv.push(d.str()?);
    }
    for _ in 0..d.count()? {
        r.env.push((d.str()?, d.str()?));
    }
    r.cwd = d.str()?;
    r.uid = d.u32()?;
    r.gid = d.u32()?;
    for _ in 0..d.count()? {
        r.mounts.push(Mount {
            device: d.str()?,
            target: d.str()?,
            fstype: d.str()?,
        });
    }
    for _ in 0..d.count()? {
        r.secrets.push(SecretFile {
            target: d.str()?,
            value: d.bytes()?,
        });
    }
    r.stdin = d.u32()? != 0;
    Ok(r)
}

fn encode_put(e: &mut Enc, p: &PutEntry) {
    e.str(&p.path).u32(p.uid).u32(p.gid);
    match &p.kind {
        PutKind::Dir { mode } => e.u32(0).u32(*mode),
        PutKind::File { mode, mtime, size } => e.u32(1).u32(*mode).i64(*mtime).u64(*size),
        PutKind::Symlink { target } => e.u32(2).str(target),
    };
}

fn decode_put(d: &mut Dec) -> Result<PutEntry, ProtoError> {
    let (path, uid, gid) = (d.str()?, d.u32()?, d.u32()?);
    let kind = match d.u32()? {
        0 => PutKind::Dir { mode: d.u32()? },
        1 => PutKind::File {
            mode: d.u32()?,
            mtime: d.i64()?,
            size: d.u64()?,
        },
        2 => PutKind::Symlink { target: d.str()? },
        other => return Err(ProtoError(format!("unknown entry kind {other}"))),
    };
    Ok(PutEntry {
        path,
        kind,
        uid,
        gid,
    })
}

impl Response {
    /// The response as one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        let t = match self {
            Response::Ready { version } => {
                e.u32(*version);
                tag::READY
            }
            Response::Output(data) => {
                e.0.extend_from_slice(data);
                tag::OUTPUT
            }
            Response::Exit(ExitStatus::Code(c)) => {
                e.u32(0).u32(*c as u32);
                tag::EXIT
            }
            Response::Exit(ExitStatus::Signal(s)) => {
                e.u32(1).u32(*s as u32);
                tag::EXIT
            }
            Response::Error(message) => {
                e.0.extend_from_slice(message.as_bytes());
                tag::ERROR
            }
            Response::PutDone => tag::PUT_DONE,
            Response::ShutdownAck => tag::SHUTDOWN_ACK,
        };
        frame(t, &e.0)
    }

    /// The response in a frame's payload.
    pub fn decode(t: u8, payload: &[u8]) -> Result<Response, ProtoError> {
        let mut d = Dec(payload);
        let resp = match t {
            tag::READY => Response::Ready { version: d.u32()? },
            tag::OUTPUT => return Ok(Response::Output(payload.to_vec())),
            tag::EXIT => {
                let kind = d.u32()?;
                let value = d.i32()?;
                match kind {
                    0 => Response::Exit(ExitStatus::Code(value)),
                    1 => Response::Exit(ExitStatus::Signal(value)),
                    other => return Err(ProtoError(format!("unknown exit kind {other}"))),
                }
            }
            tag::ERROR => {
                return Ok(Response::Error(
                    String::from_utf8_lossy(payload).into_owned(),
                ))
            }
            tag::PUT_DONE => Response::PutDone,
            tag::SHUTDOWN_ACK => Response::ShutdownAck,
            other => return Err(ProtoError(format!("unknown response type {other:#x}"))),
        };
        d.end()?;
        Ok(resp)
    }
}

/// Collects bytes as they arrive and cuts them into frames.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// Adds bytes read from the port.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame as (type, payload), `None` until one is complete. A length
    /// above [`MAX_PAYLOAD`] is an error: the stream is out of step.
    pub fn next_frame(&mut self) -> Result<Option<(u8, Vec<u8>)>, ProtoError> {
        if self.buf.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_le_bytes(self.buf[1..5].try_into().expect("4 bytes")) as usize;
        if len > MAX_PAYLOAD {
            return Err(ProtoError(format!(
                "a frame of {len} bytes is longer than the {MAX_PAYLOAD} allowed"
            )));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let t = self.buf[0];
        let payload = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Ok(Some((t, payload)))
    }

    /// True when bytes of an incomplete frame are waiting.
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads from `r` until a frame is complete; `None` at a clean end of stream (between
    /// frames). A stream that ends inside a frame is an `UnexpectedEof` error.
    pub fn read_frame(&mut self, r: &mut dyn Read) -> io::Result<Option<(u8, Vec<u8>)>> {
        let mut chunk = [0u8; 16 << 10];
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(Some(f));
            }
            let n = match r.read(&mut chunk) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return if self.has_partial() {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the agent's stream ended inside a frame",
                    ))
                } else {
                    Ok(None)
                };
            }
            self.feed(&chunk[..n]);
        }
    }
}

/// Writes one encoded frame.
pub fn write_frame(w: &mut dyn Write, frame: &[u8]) -> io::Result<()> {
    w.write_all(frame)?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requests() -> Vec<Request> {
        vec![
            Request::Run(RunRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
                env: vec![("PATH".into(), "/bin".into()), ("EMPTY".into(), "".into())],
                cwd: "/work".into(),
                uid: 1000,
                gid: 100,
                mounts: vec![Mount {
                    device: "/dev/vdb".into(),
                    target: "/cache".into(),
                    fstype: "ext4".into(),
                }],
                secrets: vec![SecretFile {
                    target: "/run/secrets/token".into(),
                    value: vec![0, 1, 2, 255],
                }],
                stdin: true,
            }),
            Request::Run(RunRequest::default()),
            Request::Stdin(b"input\n".to_vec()),
            Request::StdinEof,
            Request::Put(PutEntry {
                path: "/etc/x".into(),
                kind: PutKind::File {
                    mode: 0o644,
                    mtime: -5,
                    size: 1 << 40,
                },
                uid: 1,
                gid: 2,
            }),
            Request::Put(PutEntry {
                path: "/d".into(),
                kind: PutKind::Dir { mode: 0o1777 },
                uid: 0,
                gid: 0,
            }),
            Request::Put(PutEntry {
                path: "/l".into(),
                kind: PutKind::Symlink {
                    target: "../x".into(),
                },
                uid: 0,
                gid: 0,
            }),
            Request::Data(vec![7; 1000]),
            Request::Data(Vec::new()),
            Request::PutEnd,
            Request::Shutdown,
        ]
    }

    fn responses() -> Vec<Response> {
        vec![
            Response::Ready { version: VERSION },
            Response::Output(b"hello\n".to_vec()),
            Response::Exit(ExitStatus::Code(-1)),
            Response::Exit(ExitStatus::Signal(9)),
            Response::Error("no such file: /bin/x".into()),
            Response::PutDone,
            Response::ShutdownAck,
        ]
    }

    #[test]
    fn frames_round_trip_through_a_byte_stream() {
        let mut stream = Vec::new();
        for r in requests() {
            stream.extend(r.encode());
        }
        for r in responses() {
            stream.extend(r.encode());
        }
        let mut reader = FrameReader::default();
        let mut input = &stream[..];
        for want in requests() {
            let (t, p) = reader.read_frame(&mut input).unwrap().unwrap();
            assert_eq!(Request::decode(t, &p).unwrap(), want);
        }
        for want in responses() {
            let (t, p) = reader.read_frame(&mut input).unwrap().unwrap();
            assert_eq!(Response::decode(t, &p).unwrap(), want);
        }
        assert!(reader.read_frame(&mut input).unwrap().is_none());
    }

    #[test]
    fn frames_split_anywhere_are_reassembled() {
        let bytes = Request::Run(RunRequest {
            argv: vec!["true".into()],
            ..RunRequest::default()
        })
        .encode();
        let mut reader = FrameReader::default();
        for b in &bytes[..bytes.len() - 1] {
            reader.feed(std::slice::from_ref(b));
            assert_eq!(reader.next_frame().unwrap(), None);
        }
        reader.feed(&bytes[bytes.len() - 1..]);
        assert!(reader.next_frame().unwrap().is_some());
        assert!(!reader.has_partial());
    }

    #[test]
    fn truncated_streams_and_payloads_are_errors() {
        let bytes = Request::Shutdown.encode();
        let mut reader = FrameReader::default();
        let mut cut = &Response::Output(b"abc".to_vec()).encode()[..6];
        let e = reader.read_frame(&mut cut).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            Request::decode(bytes[0], &bytes[5..]).unwrap(),
            Request::Shutdown
        );
        // Every strict prefix of a structured payload fails to decode.
        for req in requests() {
            let frame = req.encode();
            let payload = &frame[5..];
            if matches!(req, Request::Stdin(_) | Request::Data(_)) {
                continue;
            }
            for cut in 0..payload.len() {
                assert!(
                    Request::decode(frame[0], &payload[..cut]).is_err(),
                    "{req:?} cut at {cut}"
                );
            }
            let mut longer = payload.to_vec();
            longer.push(0);
            assert!(Request::decode(frame[0], &longer).is_err(), "{req:?} + 1");
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Request::decode(0x55, b"").is_err());
        assert!(Response::decode(0x01, b"").is_err());
        assert!(Response::decode(tag::EXIT, &[2, 0, 0, 0, 0, 0, 0, 0]).is_err());
        // A list count far beyond the payload must not allocate or panic.
        let mut e = Enc::default();
        e.u32(u32::MAX);
        assert!(Request::decode(tag::RUN, &e.0).is_err());
        let mut reader = FrameReader::default();
        reader.feed(&[tag::OUTPUT, 0xff, 0xff, 0xff, 0xff]);
        assert!(reader.next_frame().is_err());
        // Pseudo-random bytes: decoding never panics.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..2000 {
            let mut bytes = Vec::new();
            for _ in 0..(x % 64) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                bytes.push(x as u8);
            }
            let _ = Request::decode(bytes.first().copied().unwrap_or(0) % 8, &bytes);
            let _ = Response::decode(0x80 | (bytes.first().copied().unwrap_or(0) % 8), &bytes);
        }
    }

    #[test]
    fn secrets_are_not_printed_in_debug_output() {
        let s = SecretFile {
            target: "/t".into(),
            value: b"hunter2".to_vec(),
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
