//! The multicast loader's protocol: packets, and the sender and receiver state machines.
//! Pure: packets and the time in, packets to send and verified chunks to write out. The
//! sockets, the pacing and the disk are [`crate::net`]'s.
//!
//! - The **sender** multicasts `HELLO` (the image's session id, the size and hash of its
//!   metadata, how much it has queued) a few times a second, and `DATA` fragments of
//!   whatever receivers asked for. Requests for an object already queued are merged, so
//!   each requested chunk goes out once for everyone, and a request for fragments of the
//!   object being sent joins it. The send rate backs off when receivers report loss and
//!   climbs back when they do not.
//! - A **receiver** asks (unicast, to the `HELLO`'s source) for the metadata (object
//!   [`META_OBJECT`]: header and index), then for the chunks it lacks, a window at a time
//!   in random order; it assembles every chunk it sees, wanted or not, so chunks asked
//!   for by others fill it too. A chunk that stops arriving part-way is asked for again as
//!   a bitmap of its missing fragments; one never seen is asked for again after a timeout
//!   that grows with the sender's queue. A complete chunk is written only if its hash
//!   matches the index; otherwise it is dropped and asked for again.
//!
//! Every packet fits one Ethernet frame (at most [`MAX_PACKET`] bytes of UDP payload).

use crate::format::{self, Chunk, Hash, Meta};
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// Largest UDP payload: a 1500-byte Ethernet MTU minus the IPv4 and UDP headers.
pub const MAX_PACKET: usize = 1472;
/// Object bytes per `DATA` packet.
pub const FRAG: usize = 1400;
/// The object number of the metadata (header and index).
pub const META_OBJECT: u32 = u32::MAX;
/// The largest metadata a receiver accepts.
pub const MAX_META: u32 = 256 << 20;

const MAGIC: [u8; 2] = *b"KZ";
const VERSION: u8 = 1;
const HEAD: usize = 12;
const KIND_HELLO: u8 = 1;
const KIND_DATA: u8 = 2;
const KIND_REQUEST: u8 = 3;
const KIND_DONE: u8 = 4;

/// Identifies an image on the wire: the first 8 bytes of its UUID.
pub fn session_of(meta_uuid: &[u8; 16]) -> u64 {
    u64::from_le_bytes(meta_uuid[..8].try_into().unwrap_or_default())
}

/// Fragments in an object of `len` bytes.
pub fn frag_count(len: u32) -> u32 {
    (len as usize).div_ceil(FRAG).max(1) as u32
}

/// One request entry: a whole object, or the fragments set in a bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    pub object: u32,
    /// `None`: every fragment.
    pub frags: Option<Vec<u8>>,
}

/// A parsed packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    Hello {
        session: u64,
        meta_len: u32,
        meta_hash: Hash,
        /// Bytes the sender has queued, and its current rate in bytes per second: how
        /// long a receiver should expect to wait.
        queued: u64,
        rate: u64,
    },
    Data {
        session: u64,
        object: u32,
        object_len: u32,
        frag: u16,
        /// The sender's packet counter: gaps tell a receiver its loss rate.
        seq: u32,
        payload: &'a [u8],
    },
    Request {
        session: u64,
        receiver: u32,
        /// The receiver's recent loss, in thousandths.
        loss: u16,
        wants: Vec<Want>,
    },
    Done {
        session: u64,
        receiver: u32,
    },
}

fn head(kind: u8, session: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(MAX_PACKET);
    p.extend_from_slice(&MAGIC);
    p.push(VERSION);
    p.push(kind);
    p.extend_from_slice(&session.to_le_bytes());
    p
}

impl Packet<'_> {
    /// Encodes the packet. A request with more wants than fit is cut (see
    /// [`encode_requests`], which splits).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Packet::Hello {
                session,
                meta_len,
                meta_hash,
                queued,
                rate,
            } => {
                let mut p = head(KIND_HELLO, *session);
                p.extend_from_slice(&meta_len.to_le_bytes());
                p.extend_from_slice(meta_hash);
                p.extend_from_slice(&queued.to_le_bytes());
                p.extend_from_slice(&rate.to_le_bytes());
                p
            }
            Packet::Data {
                session,
                object,
                object_len,
                frag,
                seq,
                payload,
            } => {
                let mut p = head(KIND_DATA, *session);
                p.extend_from_slice(&object.to_le_bytes());
                p.extend_from_slice(&object_len.to_le_bytes());
                p.extend_from_slice(&frag.to_le_bytes());
                p.extend_from_slice(&seq.to_le_bytes());
                p.extend_from_slice(payload);
                p
            }
            Packet::Request {
                session,
                receiver,
                loss,
                wants,
            } => encode_requests(*session, *receiver, *loss, wants).swap_remove(0),
            Packet::Done { session, receiver } => {
                let mut p = head(KIND_DONE, *session);
                p.extend_from_slice(&receiver.to_le_bytes());
                p
            }
        }
    }

    /// Parses a packet; `None` for anything malformed or foreign.
    pub fn parse(bytes: &[u8]) -> Option<Packet<'_>> {
        if bytes.len() < HEAD || bytes[..2] != MAGIC || bytes[2] != VERSION {
            return None;
        }
        let session = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
        let body = &bytes[HEAD..];
        let u32_at = |o: usize| Some(u32::from_le_bytes(body.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_le_bytes(body.get(o..o + 8)?.try_into().ok()?));
        match bytes[3] {
            KIND_HELLO => Some(Packet::Hello {
                session,
                meta_len: u32_at(0)?,
                meta_hash: body.get(4..36)?.try_into().ok()?,
                queued: u64_at(36)?,
                rate: u64_at(44)?,
            }),
            KIND_DATA => {
                let object = u32_at(0)?;
                let object_len = u32_at(4)?;
                let frag = u16::from_le_bytes(body.get(8..10)?.try_into().ok()?);
                let seq = u32_at(10)?;
                let payload = &body[14..];
                // The payload must be exactly this fragment's share of the object.
                let start = frag as usize * FRAG;
                let want = (object_len as usize).checked_sub(start)?.min(FRAG);
                (payload.len() == want && (want > 0 || object_len == 0)).then_some(Packet::Data {
                    session,
                    object,
                    object_len,
                    frag,
                    seq,
                    payload,
                })
            }
            KIND_REQUEST => {
                let receiver = u32_at(0)?;
                let loss = u16::from_le_bytes(body.get(4..6)?.try_into().ok()?);
                let n = u16::from_le_bytes(body.get(6..8)?.try_into().ok()?);
                let mut at = 8;
                let mut wants = Vec::with_capacity(n.min(256) as usize);
                for _ in 0..n {
                    let object = u32_at(at)?;
                    let kind = *body.get(at + 4)?;
                    at += 5;
                    let frags = match kind {
                        0 => None,
                        1 => {
                            let len = u16::from_le_bytes(body.get(at..at + 2)?.try_into().ok()?);
                            let bits = body.get(at + 2..at + 2 + len as usize)?.to_vec();
                            at += 2 + len as usize;
                            Some(bits)
                        }
                        _ => return None,
                    };
                    wants.push(Want { object, frags });
                }
                Some(Packet::Request {
                    session,
                    receiver,
                    loss,
                    wants,
                })
            }
            KIND_DONE => Some(Packet::Done {
                session,
                receiver: u32_at(0)?,
            }),
            _ => None,
        }
    }
}

/// Request packets asking for `wants`, as many as needed to fit each in a frame.
pub fn encode_requests(session: u64, receiver: u32, loss: u16, wants: &[Want]) -> Vec<Vec<u8>> {
    let mut packets = Vec::new();
    let start = || {
        let mut p = head(KIND_REQUEST, session);
        p.extend_from_slice(&receiver.to_le_bytes());
        p.extend_from_slice(&loss.to_le_bytes());
        p.extend_from_slice(&0u16.to_le_bytes());
        (p, 0u16)
    };
    let (mut p, mut n) = start();
    for want in wants {
        let size = 5 + want.frags.as_ref().map_or(0, |b| 2 + b.len());
        if n > 0 && p.len() + size > MAX_PACKET {
            p[HEAD + 6..HEAD + 8].copy_from_slice(&n.to_le_bytes());
            packets.push(std::mem::replace(&mut p, start().0));
            n = 0;
        }
        p.extend_from_slice(&want.object.to_le_bytes());
        match &want.frags {
            None => p.push(0),
            Some(bits) => {
                p.push(1);
                p.extend_from_slice(&(bits.len() as u16).to_le_bytes());
                p.extend_from_slice(bits);
            }
        }
        n += 1;
    }
    p[HEAD + 6..HEAD + 8].copy_from_slice(&n.to_le_bytes());
    packets.push(p);
    packets
}

/// A set of fragment numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frags(Vec<u64>);

impl Frags {
    fn none(n: u32) -> Self {
        Frags(vec![0; (n as usize).div_ceil(64)])
    }
    fn all(n: u32) -> Self {
        let mut f = Frags::none(n);
        for i in 0..n {
            f.set(i);
        }
        f
    }
    /// From a request bitmap, limited to `n` fragments.
    fn from_bitmap(bits: &[u8], n: u32) -> Self {
        let mut f = Frags::none(n);
        for i in 0..n.min(bits.len() as u32 * 8) {
            if bits[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                f.set(i);
            }
        }
        f
    }
    fn to_bitmap(&self, n: u32) -> Vec<u8> {
        let mut bits = vec![0u8; (n as usize).div_ceil(8)];
        for i in 0..n {
            if self.get(i) {
                bits[(i / 8) as usize] |= 1 << (i % 8);
            }
        }
        bits
    }
    fn set(&mut self, i: u32) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn get(&self, i: u32) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
    fn union(&mut self, other: &Frags) {
        for (a, b) in self.0.iter_mut().zip(&other.0) {
            *a |= b;
        }
    }
    /// The first set fragment at or after `from`.
    fn next_from(&self, from: u32, n: u32) -> Option<u32> {
        (from..n).find(|&i| self.get(i))
    }
}

/// Reported loss above which the sender slows down.
const LOSS_HIGH: f64 = 0.15;
/// Reported loss below which it speeds up again.
const LOSS_LOW: f64 = 0.08;

/// How the sender paces itself and when it stops.
#[derive(Debug, Clone)]
pub struct SenderConfig {
    /// Bytes per second it never exceeds.
    pub max_rate: u64,
    /// Bytes per second it never backs off below.
    pub min_rate: u64,
    pub hello_interval: Duration,
    /// Stop after this long without a request and with nothing left to send.
    pub idle_timeout: Duration,
}

/// What the sender should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Multicast [`Sender::hello`].
    Hello,
    /// Multicast fragment `frag` of `object` as packet number `seq`.
    Data { object: u32, frag: u16, seq: u32 },
}

/// Counters for reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SenderStats {
    pub data_packets: u64,
    pub data_bytes: u64,
    /// Objects started (a chunk sent twice counts twice).
    pub objects_sent: u64,
    pub requests: u64,
    pub receivers_done: u64,
}

/// The sender's state machine.
pub struct Sender {
    session: u64,
    meta_len: u32,
    meta_hash: Hash,
    chunk_lens: Vec<u32>,
    cfg: SenderConfig,
    queue: VecDeque<u32>,
    pending: HashMap<u32, Frags>,
    /// The object being sent, the fragments still to send and the next candidate.
    current: Option<(u32, Frags, u32)>,
    last_request: Duration,
    last_hello: Option<Duration>,
    rate: f64,
    /// The worst loss a receiver reported since the last rate adjustment.
    loss: f64,
    loss_samples: u32,
    last_adjust: Duration,
    seq: u32,
    done: std::collections::HashSet<u32>,
    pub stats: SenderStats,
}

impl Sender {
    /// A sender for an image whose metadata blob is `meta_len` bytes hashing to
    /// `meta_hash`, with chunk records of `chunk_lens` bytes.
    pub fn new(
        session: u64,
        meta_len: u32,
        meta_hash: Hash,
        chunk_lens: Vec<u32>,
        cfg: SenderConfig,
        now: Duration,
    ) -> Self {
        let rate = cfg.max_rate as f64;
        Sender {
            session,
            meta_len,
            meta_hash,
            chunk_lens,
            cfg,
            queue: VecDeque::new(),
            pending: HashMap::new(),
            current: None,
            last_request: now,
            last_hello: None,
            rate,
            loss: 0.0,
            loss_samples: 0,
            seq: 0,
            last_adjust: now,
            done: Default::default(),
            stats: SenderStats::default(),
        }
    }

    fn object_len(&self, object: u32) -> Option<u32> {
        if object == META_OBJECT {
            Some(self.meta_len)
        } else {
            self.chunk_lens.get(object as usize).copied()
        }
    }

    /// The current send rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Bytes queued to send.
    pub fn queued_bytes(&self) -> u64 {
        let pending: u64 = self
            .pending
            .values()
            .map(|f| f.count() as u64 * FRAG as u64)
            .sum();
        let current = self
            .current
            .as_ref()
            .map_or(0, |(_, f, _)| f.count() as u64 * FRAG as u64);
        pending + current
    }

    /// The `HELLO` packet.
    pub fn hello(&self) -> Vec<u8> {
        Packet::Hello {
            session: self.session,
            meta_len: self.meta_len,
            meta_hash: self.meta_hash,
            queued: self.queued_bytes(),
            rate: self.rate(),
        }
        .encode()
    }

    /// Receivers that said they were done.
    pub fn receivers_done(&self) -> usize {
        self.done.len()
    }

    /// Handles a packet from a receiver.
    pub fn on_packet(&mut self, now: Duration, bytes: &[u8]) {
        match Packet::parse(bytes) {
            Some(Packet::Request {
                session,
                loss,
                wants,
                ..
            }) if session == self.session => {
                self.last_request = now;
                self.stats.requests += 1;
                self.loss = self.loss.max(loss as f64 / 1000.0);
                self.loss_samples += 1;
                for want in wants {
                    self.want(want);
                }
            }
            Some(Packet::Done { session, receiver }) if session == self.session => {
                self.last_request = now;
                if self.done.insert(receiver) {
                    self.stats.receivers_done += 1;
                }
            }
            _ => {}
        }
    }

    fn want(&mut self, want: Want) {
        let Some(len) = self.object_len(want.object) else {
            return;
        };
        let n = frag_count(len);
        let frags = match &want.frags {
            None => Frags::all(n),
            Some(bits) => Frags::from_bitmap(bits, n),
        };
        if frags.count() == 0 {
            return;
        }
        // Fragments still ahead in the object being sent join it; the rest queue.
        let mut rest = frags;
        if let Some((object, todo, next)) = &mut self.current {
            if *object == want.object {
                let mut behind = Frags::none(n);
                for i in 0..n {
                    if rest.get(i) {
                        if i >= *next {
                            todo.set(i);
                        } else {
                            behind.set(i);
                        }
                    }
                }
                rest = behind;
                if rest.count() == 0 {
                    return;
                }
            }
        }
        match self.pending.get_mut(&want.object) {
            Some(queued) => queued.union(&rest),
            None => {
                self.pending.insert(want.object, rest);
                self.queue.push_back(want.object);
            }
        }
    }

    /// What to send now, if anything (pacing is the caller's: at [`Sender::rate`]).
    pub fn poll(&mut self, now: Duration) -> Option<Send> {
        self.adjust_rate(now);
        let busy = self.current.is_some() || !self.queue.is_empty();
        let interval = if busy {
            self.cfg.hello_interval
        } else {
            self.cfg.hello_interval * 2
        };
        if self.last_hello.is_none_or(|t| now >= t + interval) {
            self.last_hello = Some(now);
            return Some(Send::Hello);
        }
        loop {
            let len = self
                .current
                .as_ref()
                .and_then(|(object, ..)| self.object_len(*object))
                .unwrap_or(0) as usize;
            if let Some((object, todo, next)) = &mut self.current {
                let n = frag_count(len as u32);
                if let Some(frag) = todo.next_from(*next, n) {
                    *next = frag + 1;
                    self.stats.data_packets += 1;
                    self.stats.data_bytes += (len - frag as usize * FRAG).min(FRAG) as u64;
                    self.seq = self.seq.wrapping_add(1);
                    return Some(Send::Data {
                        object: *object,
                        frag: frag as u16,
                        seq: self.seq,
                    });
                }
                self.current = None;
            }
            let object = self.queue.pop_front()?;
            let todo = self.pending.remove(&object)?;
            self.stats.objects_sent += 1;
            self.current = Some((object, todo, 0));
        }
    }

    /// Ten times a second: multiplicative decrease when the worst receiver reports heavy
    /// loss (more than a lossy link's own: it is drowning), additive increase when all
    /// report little or nothing.
    fn adjust_rate(&mut self, now: Duration) {
        if now < self.last_adjust + Duration::from_millis(100) {
            return;
        }
        self.last_adjust = now;
        let max = self.cfg.max_rate as f64;
        if self.loss_samples > 0 && self.loss > LOSS_HIGH {
            self.rate = (self.rate * 0.75).max(self.cfg.min_rate as f64);
        } else if self.loss < LOSS_LOW {
            self.rate = (self.rate + max / 20.0).min(max);
        }
        self.loss = 0.0;
        self.loss_samples = 0;
    }

    /// Whether the sender is done: nothing to send and no request for the idle timeout.
    pub fn finished(&self, now: Duration) -> bool {
        self.current.is_none()
            && self.queue.is_empty()
            && now >= self.last_request + self.cfg.idle_timeout
    }
}

/// How a receiver asks.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Chunks asked for and not yet complete, at most.
    pub window: usize,
    /// Least wait before asking for an object again.
    pub timeout: Duration,
    /// A partly received object with no fragment for this long has stopped arriving.
    pub stall: Duration,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            window: 16,
            timeout: Duration::from_millis(400),
            stall: Duration::from_millis(40),
        }
    }
}

/// What the receiver wants done.
#[derive(Debug)]
pub enum Event {
    /// Send this request packet to the sender.
    Send(Vec<u8>),
    /// The metadata arrived: open the target, then report what it holds with
    /// [`Receiver::start`].
    Meta(Box<Meta>),
    /// Write this chunk: its hash matched.
    Write(Chunk),
    /// A chunk arrived whole but failed its hash; it was dropped and is asked for again.
    Corrupt { index: u32 },
    /// Every chunk is written.
    Complete,
}

/// Counters for reports.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ReceiverStats {
    pub chunks_present: u32,
    pub chunks_written: u32,
    pub corrupt_chunks: u32,
    pub data_packets: u64,
    /// Packets of chunks already complete here.
    pub duplicate_packets: u64,
    pub request_packets: u64,
    /// Chunks asked for whole.
    pub chunks_requested: u64,
    /// Bitmap requests for partly received chunks.
    pub repairs_requested: u64,
}

#[derive(Debug)]
struct Assembly {
    len: u32,
    have: Frags,
    buf: Vec<u8>,
    last_at: Duration,
    last_seq: u64,
    asked_at: Option<Duration>,
}

impl Assembly {
    fn new(len: u32, now: Duration, seq: u64) -> Self {
        Assembly {
            len,
            have: Frags::none(frag_count(len)),
            buf: vec![0; len as usize],
            last_at: now,
            last_seq: seq,
            asked_at: None,
        }
    }
    /// Adds a fragment; `true` when the object is complete.
    fn add(&mut self, frag: u16, payload: &[u8], now: Duration, seq: u64) -> bool {
        let f = frag as u32;
        if !self.have.get(f) {
            self.have.set(f);
            let at = f as usize * FRAG;
            self.buf[at..at + payload.len()].copy_from_slice(payload);
        }
        self.last_at = now;
        self.last_seq = seq;
        self.have.count() == frag_count(self.len)
    }
    fn missing_bitmap(&self) -> Vec<u8> {
        let n = frag_count(self.len);
        let mut missing = Frags::all(n);
        for (m, h) in missing.0.iter_mut().zip(&self.have.0) {
            *m &= !h;
        }
        missing.to_bitmap(n)
    }
}

#[derive(Debug)]
enum ChunkState {
    Missing,
    Asked { at: Duration, tries: u32 },
    Partial(Assembly),
    Done,
}

/// The receiver's state machine.
pub struct Receiver {
    id: u32,
    cfg: ReceiverConfig,
    rng: fastrand::Rng,
    session: Option<(u64, u32, Hash)>,
    /// Sender's queue and rate from its last `HELLO`.
    sender_queue: (u64, u64),
    meta_asm: Option<Assembly>,
    meta_asked: Option<Duration>,
    meta: Option<Meta>,
    started: bool,
    chunks: Vec<ChunkState>,
    order: Vec<u32>,
    order_at: usize,
    remaining: usize,
    seq: u64,
    /// Loss measured from the gaps in the sender's packet numbers.
    last_data_seq: Option<u32>,
    seen: u64,
    expected: u64,
    loss: f64,
    pub stats: ReceiverStats,
}

/// Packets of other objects after which a partial object counts as stopped.
const STALL_PACKETS: u64 = 48;

impl Receiver {
    /// A receiver with id `id` (random per run), drawing its request order from `seed`.
    pub fn new(id: u32, seed: u64, cfg: ReceiverConfig) -> Self {
        Receiver {
            id,
            cfg,
            rng: fastrand::Rng::with_seed(seed),
            session: None,
            sender_queue: (0, 1),
            meta_asm: None,
            meta_asked: None,
            meta: None,
            started: false,
            chunks: Vec::new(),
            order: Vec::new(),
            order_at: 0,
            remaining: 0,
            seq: 0,
            last_data_seq: None,
            seen: 0,
            expected: 0,
            loss: 0.0,
            stats: ReceiverStats::default(),
        }
    }

    /// The session joined, if a `HELLO` arrived.
    pub fn session(&self) -> Option<u64> {
        self.session.map(|s| s.0)
    }

    /// Chunks complete (present or written) and in all.
    pub fn progress(&self) -> (usize, usize) {
        (self.chunks.len() - self.remaining, self.chunks.len())
    }

    /// Starts asking for chunks; `present[i]` says the target already holds chunk `i`.
    pub fn start(&mut self, present: &[bool], now: Duration) -> Vec<Event> {
        let count = self.meta.as_ref().map_or(0, |m| m.index.len());
        self.chunks = (0..count)
            .map(|i| {
                if present.get(i).copied().unwrap_or(false) {
                    ChunkState::Done
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        self.stats.chunks_present = present.iter().filter(|&&p| p).count() as u32;
        self.remaining = count - self.stats.chunks_present as usize;
        self.order = (0..count as u32).collect();
        self.rng.shuffle(&mut self.order);
        self.started = true;
        if self.remaining == 0 {
            return vec![Event::Complete];
        }
        self.tick(now)
    }

    /// The `DONE` packet to send at the end.
    pub fn done_packet(&self) -> Option<Vec<u8>> {
        let (session, ..) = self.session?;
        Some(
            Packet::Done {
                session,
                receiver: self.id,
            }
            .encode(),
        )
    }

    /// Handles a packet from the sender.
    pub fn on_packet(&mut self, now: Duration, bytes: &[u8]) -> Vec<Event> {
        match Packet::parse(bytes) {
            Some(Packet::Hello {
                session,
                meta_len,
                meta_hash,
                queued,
                rate,
            }) => {
                if self.session.is_none() && meta_len > 0 && meta_len <= MAX_META {
                    self.session = Some((session, meta_len, meta_hash));
                }
                if self.session() == Some(session) {
                    self.sender_queue = (queued, rate.max(1));
                }
                self.tick(now)
            }
            Some(Packet::Data {
                session,
                object,
                object_len,
                frag,
                seq,
                payload,
            }) if self.session() == Some(session) => {
                self.seq += 1;
                self.count_loss(seq);
                self.stats.data_packets += 1;
                if object == META_OBJECT {
                    self.on_meta_data(now, object_len, frag, payload)
                } else {
                    self.on_chunk_data(now, object, object_len, frag, payload)
                }
            }
            _ => Vec::new(),
        }
    }

    /// Updates the loss estimate from the sender's packet number `seq`.
    fn count_loss(&mut self, seq: u32) {
        let gap = self.last_data_seq.map(|last| seq.wrapping_sub(last));
        self.last_data_seq = Some(seq);
        match gap {
            // Reordered, repeated, or the sender restarted: start counting again.
            Some(g) if g == 0 || g > 1 << 20 => return,
            Some(g) => self.expected += g as u64,
            None => return,
        }
        self.seen += 1;
        if self.expected >= 256 {
            let sample = 1.0 - self.seen as f64 / self.expected as f64;
            self.loss = 0.5 * self.loss + 0.5 * sample.max(0.0);
            self.seen = 0;
            self.expected = 0;
        }
    }

    fn on_meta_data(&mut self, now: Duration, len: u32, frag: u16, payload: &[u8]) -> Vec<Event> {
        let Some((_, meta_len, meta_hash)) = self.session else {
            return Vec::new();
        };
        if self.meta.is_some() || len != meta_len {
            return Vec::new();
        }
        let seq = self.seq;
        let asm = self
            .meta_asm
            .get_or_insert_with(|| Assembly::new(len, now, seq));
        if !asm.add(frag, payload, now, seq) {
            return Vec::new();
        }
        let asm = self.meta_asm.take().expect("assembly present");
        if *blake3::hash(&asm.buf).as_bytes() != meta_hash {
            return Vec::new(); // Asked for again on the next tick.
        }
        match Meta::parse(&asm.buf) {
            Ok(meta) => {
                self.meta = Some(meta.clone());
                vec![Event::Meta(Box::new(meta))]
            }
            Err(_) => Vec::new(),
        }
    }

    fn on_chunk_data(
        &mut self,
        now: Duration,
        object: u32,
        len: u32,
        frag: u16,
        payload: &[u8],
    ) -> Vec<Event> {
        let Some(meta) = &self.meta else {
            return Vec::new();
        };
        if !self.started {
            return Vec::new();
        }
        let Some(entry) = meta.index.get(object as usize) else {
            return Vec::new();
        };
        if entry.record_len != len {
            return Vec::new();
        }
        let seq = self.seq;
        let state = &mut self.chunks[object as usize];
        let complete = match state {
            ChunkState::Done => {
                self.stats.duplicate_packets += 1;
                return Vec::new();
            }
            ChunkState::Partial(asm) => asm.add(frag, payload, now, seq),
            ChunkState::Missing | ChunkState::Asked { .. } => {
                let mut asm = Assembly::new(len, now, seq);
                let complete = asm.add(frag, payload, now, seq);
                *state = ChunkState::Partial(asm);
                complete
            }
        };
        if !complete {
            return Vec::new();
        }
        let ChunkState::Partial(asm) = std::mem::replace(state, ChunkState::Missing) else {
            unreachable!("a completed chunk was being assembled");
        };
        let h = &meta.header;
        match format::decode_chunk(&asm.buf, h.disk_size, h.chunk_size, Some((object, entry))) {
            Ok(chunk) => {
                self.chunks[object as usize] = ChunkState::Done;
                self.remaining -= 1;
                self.stats.chunks_written += 1;
                let mut events = vec![Event::Write(chunk)];
                if self.remaining == 0 {
                    events.push(Event::Complete);
                }
                events
            }
            Err(_) => {
                self.stats.corrupt_chunks += 1;
                // Dropped; asked for again, whole, right away.
                self.chunks[object as usize] = ChunkState::Asked { at: now, tries: 0 };
                self.stats.chunks_requested += 1;
                let mut events = vec![Event::Corrupt { index: object }];
                events.extend(self.send(vec![Want {
                    object,
                    frags: None,
                }]));
                events
            }
        }
    }

    /// How long to wait for an object asked for: the sender's queue drained at its
    /// rate, twice over, and at least the configured timeout; doubled per retry.
    fn wait(&self, tries: u32) -> Duration {
        let (queued, rate) = self.sender_queue;
        let drain = Duration::from_secs_f64(2.0 * queued as f64 / rate as f64);
        (self.cfg.timeout.max(drain) * 2u32.pow(tries.min(4))).min(Duration::from_secs(10))
    }

    /// Asks for what is missing and due; call every few milliseconds.
    pub fn tick(&mut self, now: Duration) -> Vec<Event> {
        let Some((session, meta_len, _)) = self.session else {
            return Vec::new();
        };
        let _ = session;
        if self.meta.is_none() {
            let due = self.meta_asked.is_none_or(|t| now >= t + self.wait(0));
            if !due {
                return Vec::new();
            }
            self.meta_asked = Some(now);
            let frags = self
                .meta_asm
                .as_ref()
                .filter(|a| a.len == meta_len)
                .map(|a| a.missing_bitmap());
            return self.send(vec![Want {
                object: META_OBJECT,
                frags,
            }]);
        }
        if !self.started || self.remaining == 0 {
            return Vec::new();
        }
        let mut wants = Vec::new();
        let mut outstanding = 0;
        for i in 0..self.chunks.len() {
            let wait0 = self.wait(0);
            match &mut self.chunks[i] {
                ChunkState::Asked { at, tries } => {
                    outstanding += 1;
                    let wait = self.cfg.timeout.max(wait0) * 2u32.pow((*tries).min(4));
                    if now >= *at + wait.min(Duration::from_secs(10)) {
                        *at = now;
                        *tries += 1;
                        wants.push(Want {
                            object: i as u32,
                            frags: None,
                        });
                    }
                }
                ChunkState::Partial(asm) => {
                    outstanding += 1;
                    let stopped = now >= asm.last_at + self.cfg.stall
                        || self.seq > asm.last_seq + STALL_PACKETS;
                    let due = asm.asked_at.is_none_or(|t| now >= t + wait0);
                    if stopped && due {
                        asm.asked_at = Some(now);
                        wants.push(Want {
                            object: i as u32,
                            frags: Some(asm.missing_bitmap()),
                        });
                    }
                }
                ChunkState::Missing | ChunkState::Done => {}
            }
        }
        self.stats.repairs_requested += wants.iter().filter(|w| w.frags.is_some()).count() as u64;
        self.stats.chunks_requested += wants.iter().filter(|w| w.frags.is_none()).count() as u64;
        // Fill the window with missing chunks, in this receiver's random order.
        while outstanding < self.cfg.window && self.order_at < self.order.len() {
            let i = self.order[self.order_at] as usize;
            self.order_at += 1;
            if self.ask_if_missing(i, now, &mut wants) {
                outstanding += 1;
            }
        }
        // Chunks dropped as corrupt go back to Missing behind the cursor: ask again.
        if self.order_at == self.order.len() {
            for i in 0..self.chunks.len() {
                if outstanding >= self.cfg.window {
                    break;
                }
                if self.ask_if_missing(i, now, &mut wants) {
                    outstanding += 1;
                }
            }
        }
        self.send(wants)
    }

    /// Asks for chunk `i` (into `wants`) when it is missing; whether it was.
    fn ask_if_missing(&mut self, i: usize, now: Duration, wants: &mut Vec<Want>) -> bool {
        if !matches!(self.chunks[i], ChunkState::Missing) {
            return false;
        }
        self.chunks[i] = ChunkState::Asked { at: now, tries: 0 };
        self.stats.chunks_requested += 1;
        wants.push(Want {
            object: i as u32,
            frags: None,
        });
        true
    }

    fn send(&mut self, wants: Vec<Want>) -> Vec<Event> {
        let Some((session, ..)) = self.session else {
            return Vec::new();
        };
        if wants.is_empty() {
            return Vec::new();
        }
        let loss = (self.loss * 1000.0).round().min(1000.0) as u16;
        let packets = encode_requests(session, self.id, loss, &wants);
        self.stats.request_packets += packets.len() as u64;
        packets.into_iter().map(Event::Send).collect()
    }
}

#[cfg(test)]
mod tests;
