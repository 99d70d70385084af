//! The protocol on a simulated network: virtual time, lossy links, late joiners,
//! resumed receivers and a corrupted fragment. Deterministic (seeded).

use super::*;
use crate::format::{DiskRange, Header, IndexEntry, HEADER_LEN};

struct Image {
    meta: Meta,
    blob: Vec<u8>,
    records: Vec<Vec<u8>>,
}

fn image(chunks: u32, chunk_size: u32, seed: u64) -> Image {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut index = Vec::new();
    let mut records = Vec::new();
    let mut pos = HEADER_LEN as u64;
    for i in 0..chunks {
        let ranges = vec![DiskRange {
            offset: i as u64 * chunk_size as u64 * 2,
            len: chunk_size,
        }];
        let data: Vec<u8> = (0..chunk_size).map(|_| rng.u8(..)).collect();
        let (record, hash) = format::encode_chunk(i, &ranges, &data, 1).unwrap();
        index.push(IndexEntry {
            offset: pos,
            record_len: record.len() as u32,
            data_len: chunk_size,
            hash,
            ranges,
        });
        pos += record.len() as u64;
        records.push(record);
    }
    let mut header = Header {
        uuid: [seed as u8; 16],
        disk_size: chunks as u64 * chunk_size as u64 * 2,
        chunk_size,
        chunk_count: chunks,
        index_offset: pos,
        index_len: format::encode_index(&index).len() as u64,
        total_hash: [0; 32],
    };
    header.total_hash = format::total_hash(&header, index.iter().map(|e| &e.hash));
    let meta = Meta { header, index };
    let blob = meta.encode();
    Image {
        meta,
        blob,
        records,
    }
}

struct Node {
    rx: Receiver,
    joins_at: Duration,
    disk: HashMap<u32, Chunk>,
    present: Vec<bool>,
    complete: bool,
    /// Written chunks whose hash did not match the index (must stay 0).
    bad_writes: u32,
}

struct Net {
    loss: f64,
    rng: fastrand::Rng,
    /// Flip a byte in the first transmission of this chunk's first fragment.
    corrupt: Option<u32>,
}

fn payload(img: &Image, object: u32, frag: u16) -> (&[u8], u32) {
    let obj: &[u8] = if object == META_OBJECT {
        &img.blob
    } else {
        &img.records[object as usize]
    };
    let start = frag as usize * FRAG;
    (&obj[start..(start + FRAG).min(obj.len())], obj.len() as u32)
}

/// Runs until every node completes (or `limit`); returns the sender.
fn simulate(img: &Image, nodes: &mut [Node], net: &mut Net, limit: Duration) -> Sender {
    let lens = img.records.iter().map(|r| r.len() as u32).collect();
    let cfg = SenderConfig {
        max_rate: 20_000_000,
        min_rate: 1_000_000,
        hello_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(1),
    };
    let session = session_of(&img.meta.header.uuid);
    let meta_hash = *blake3::hash(&img.blob).as_bytes();
    let mut tx = Sender::new(
        session,
        img.blob.len() as u32,
        meta_hash,
        lens,
        cfg,
        Duration::ZERO,
    );
    let step = Duration::from_millis(1);
    let mut now = Duration::ZERO;
    let mut credit = 0f64;
    while now < limit && !nodes.iter().all(|n| n.complete) {
        now += step;
        credit += tx.rate() as f64 * step.as_secs_f64();
        let mut to_sender = Vec::new();
        // Sender: as many packets as its rate allows this millisecond.
        while credit > 0.0 {
            let Some(send) = tx.poll(now) else { break };
            let packet = match send {
                Send::Hello => tx.hello(),
                Send::Data { object, frag, seq } => {
                    let (bytes, len) = payload(img, object, frag);
                    credit -= bytes.len() as f64;
                    let mut p = Packet::Data {
                        session,
                        object,
                        object_len: len,
                        frag,
                        seq,
                        payload: bytes,
                    }
                    .encode();
                    if net.corrupt == Some(object) && frag == 0 {
                        net.corrupt = None;
                        let last = p.len() - 1;
                        p[last] ^= 0x01;
                    }
                    p
                }
            };
            for node in nodes.iter_mut() {
                if now < node.joins_at || node.complete || net.rng.f64() < net.loss {
                    continue;
                }
                let events = node.rx.on_packet(now, &packet);
                handle(img, node, events, now, &mut to_sender, net);
            }
        }
        if credit > 0.0 {
            credit = 0.0; // No bursts after idle time.
        }
        if now.as_millis().is_multiple_of(5) {
            for node in nodes.iter_mut() {
                if now < node.joins_at || node.complete {
                    continue;
                }
                let events = node.rx.tick(now);
                handle(img, node, events, now, &mut to_sender, net);
            }
        }
        for p in to_sender {
            tx.on_packet(now, &p);
        }
    }
    // Then the sender idles out.
    let mut waited = Duration::ZERO;
    while !tx.finished(now) && waited < Duration::from_secs(5) {
        now += step;
        waited += step;
        let _ = tx.poll(now);
    }
    assert!(tx.finished(now), "sender does not idle out");
    tx
}

fn handle(
    img: &Image,
    node: &mut Node,
    events: Vec<Event>,
    now: Duration,
    to_sender: &mut Vec<Vec<u8>>,
    net: &mut Net,
) {
    for event in events {
        match event {
            Event::Send(p) => {
                if net.rng.f64() >= net.loss {
                    to_sender.push(p);
                }
            }
            Event::Meta(meta) => {
                assert_eq!(*meta, img.meta);
                let more = node.rx.start(&node.present.clone(), now);
                handle(img, node, more, now, to_sender, net);
            }
            Event::Write(chunk) => {
                let e = &img.meta.index[chunk.index as usize];
                if format::chunk_hash(chunk.index, &chunk.ranges, &chunk.data) != e.hash {
                    node.bad_writes += 1;
                }
                node.disk.insert(chunk.index, chunk);
            }
            Event::Corrupt { .. } => {}
            Event::Complete => {
                node.complete = true;
                to_sender.extend(node.rx.done_packet());
            }
        }
    }
}

fn nodes(n: usize, chunks: usize) -> Vec<Node> {
    (0..n)
        .map(|i| Node {
            rx: Receiver::new(i as u32 + 1, i as u64 + 100, ReceiverConfig::default()),
            joins_at: Duration::ZERO,
            disk: HashMap::new(),
            present: vec![false; chunks],
            complete: false,
            bad_writes: 0,
        })
        .collect()
}

fn assert_complete(img: &Image, nodes: &[Node]) {
    for (i, node) in nodes.iter().enumerate() {
        assert!(
            node.complete,
            "node {i} incomplete: {:?}",
            node.rx.progress()
        );
        assert_eq!(node.bad_writes, 0, "node {i} wrote a bad chunk");
        let held = node.disk.len() + node.present.iter().filter(|&&p| p).count();
        assert_eq!(held, img.records.len(), "node {i}");
    }
}

#[test]
fn packets_round_trip_and_fit_a_frame() {
    let wants: Vec<Want> = (0..400)
        .map(|i| Want {
            object: i,
            frags: (i % 2 == 0).then(|| vec![0xAA; 94]),
        })
        .collect();
    let packets = encode_requests(9, 3, 42, &wants);
    assert!(packets.len() > 1);
    let mut back = Vec::new();
    for p in &packets {
        assert!(p.len() <= MAX_PACKET);
        match Packet::parse(p) {
            Some(Packet::Request {
                session: 9,
                receiver: 3,
                loss: 42,
                wants,
            }) => back.extend(wants),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(back, wants);
    let data = Packet::Data {
        session: 1,
        object: 2,
        object_len: 3000,
        frag: 2,
        seq: 9,
        payload: &[7; 200],
    };
    assert_eq!(Packet::parse(&data.encode()), Some(data.clone()));
    let full = Packet::Data {
        session: 1,
        object: 2,
        object_len: 3000,
        frag: 0,
        seq: 10,
        payload: &[7; FRAG],
    }
    .encode();
    assert!(full.len() <= MAX_PACKET);
    // A payload of the wrong size for its fragment is refused.
    let mut bad = data.encode();
    bad.pop();
    assert_eq!(Packet::parse(&bad), None);
}

#[test]
fn eight_receivers_get_every_chunk_sent_once() {
    let img = image(60, 32 << 10, 1);
    let mut ns = nodes(8, 60);
    let mut net = Net {
        loss: 0.0,
        rng: fastrand::Rng::with_seed(5),
        corrupt: None,
    };
    let tx = simulate(&img, &mut ns, &mut net, Duration::from_secs(30));
    assert_complete(&img, &ns);
    // Each chunk once, and the metadata once.
    assert_eq!(tx.stats.objects_sent, 61, "{:?}", tx.stats);
    assert_eq!(tx.receivers_done(), 8);
}

#[test]
fn five_percent_loss_still_completes_everyone() {
    let img = image(60, 32 << 10, 2);
    let mut ns = nodes(8, 60);
    let mut net = Net {
        loss: 0.05,
        rng: fastrand::Rng::with_seed(6),
        corrupt: None,
    };
    let tx = simulate(&img, &mut ns, &mut net, Duration::from_secs(60));
    assert_complete(&img, &ns);
    let repairs: u64 = ns.iter().map(|n| n.rx.stats.repairs_requested).sum();
    assert!(repairs > 0);
    // Repairs are fragments, not whole chunks again. Eight receivers each losing 5%
    // independently miss a third of all fragments between them, so 1.5× is the floor.
    let data: u64 = img.records.iter().map(|r| r.len() as u64).sum();
    assert!(tx.stats.data_bytes < 5 * data / 2, "{:?}", tx.stats);
}

#[test]
fn late_joiner_and_resumed_receiver_complete() {
    let img = image(40, 32 << 10, 3);
    let mut ns = nodes(3, 40);
    ns[1].joins_at = Duration::from_millis(300);
    // Node 2 already holds the first half (a restarted receiver).
    for p in ns[2].present.iter_mut().take(20) {
        *p = true;
    }
    let mut net = Net {
        loss: 0.0,
        rng: fastrand::Rng::with_seed(7),
        corrupt: None,
    };
    simulate(&img, &mut ns, &mut net, Duration::from_secs(30));
    assert_complete(&img, &ns);
    let resumed = &ns[2].rx.stats;
    assert_eq!(resumed.chunks_present, 20);
    // It never asked for what it had.
    assert!(resumed.chunks_requested <= 20, "{resumed:?}");
    assert!(ns[2].disk.keys().all(|&i| i >= 20) || ns[2].disk.len() <= 40);
}

#[test]
fn resumed_receiver_alone_receives_only_what_it_lacks() {
    let img = image(40, 32 << 10, 4);
    let mut ns = nodes(1, 40);
    for p in ns[0].present.iter_mut().step_by(2) {
        *p = true;
    }
    let mut net = Net {
        loss: 0.0,
        rng: fastrand::Rng::with_seed(8),
        corrupt: None,
    };
    let tx = simulate(&img, &mut ns, &mut net, Duration::from_secs(30));
    assert_complete(&img, &ns);
    assert_eq!(ns[0].rx.stats.chunks_written, 20);
    assert!(ns[0].disk.keys().all(|i| i % 2 == 1));
    assert_eq!(tx.stats.objects_sent, 21, "{:?}", tx.stats);
}

#[test]
fn corrupted_chunk_is_dropped_and_asked_for_again() {
    let img = image(20, 32 << 10, 5);
    let mut ns = nodes(2, 20);
    let mut net = Net {
        loss: 0.0,
        rng: fastrand::Rng::with_seed(9),
        corrupt: Some(7),
    };
    simulate(&img, &mut ns, &mut net, Duration::from_secs(30));
    assert_complete(&img, &ns);
    for n in &ns {
        assert_eq!(n.rx.stats.corrupt_chunks, 1);
        assert_eq!(n.rx.stats.chunks_written, 20);
    }
    assert!(net.corrupt.is_none(), "the corruption was never injected");
}

#[test]
fn sender_merges_duplicate_requests() {
    let mut tx = Sender::new(
        1,
        100,
        [0; 32],
        vec![5000, 5000],
        SenderConfig {
            max_rate: 1 << 30,
            min_rate: 1 << 20,
            hello_interval: Duration::from_secs(100),
            idle_timeout: Duration::from_secs(1),
        },
        Duration::ZERO,
    );
    let now = Duration::from_millis(1);
    assert_eq!(tx.poll(now), Some(Send::Hello));
    let whole = |o| Want {
        object: o,
        frags: None,
    };
    for r in 0..5 {
        for p in encode_requests(1, r, 0, &[whole(1), whole(0), whole(1)]) {
            tx.on_packet(now, &p);
        }
    }
    let mut sent = Vec::new();
    while let Some(Send::Data { object, frag, .. }) = tx.poll(now) {
        sent.push((object, frag));
        if sent.len() == 1 {
            // A repair for object 1 arriving mid-send joins it; nothing is sent twice.
            for p in encode_requests(
                1,
                9,
                0,
                &[Want {
                    object: 1,
                    frags: Some(vec![0b1000]),
                }],
            ) {
                tx.on_packet(now, &p);
            }
        }
    }
    assert_eq!(
        sent,
        vec![
            (1, 0),
            (1, 1),
            (1, 2),
            (1, 3),
            (0, 0),
            (0, 1),
            (0, 2),
            (0, 3)
        ]
    );
    assert!(!tx.finished(now));
    assert!(tx.finished(now + Duration::from_secs(1)));
}

#[test]
fn malformed_packets_are_ignored() {
    let mut rx = Receiver::new(1, 1, ReceiverConfig::default());
    let mut rng = fastrand::Rng::with_seed(3);
    for len in 0..200 {
        let mut p: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if len >= 4 {
            p[..4].copy_from_slice(&[b'K', b'Z', 1, rng.u8(1..5)]);
        }
        let _ = Packet::parse(&p);
        let _ = rx.on_packet(Duration::ZERO, &p);
    }
}

#[test]
fn sender_backs_off_on_heavy_loss_and_recovers() {
    let cfg = SenderConfig {
        max_rate: 100_000_000,
        min_rate: 1_000_000,
        hello_interval: Duration::from_secs(100),
        idle_timeout: Duration::from_secs(100),
    };
    let mut tx = Sender::new(1, 100, [0; 32], vec![5000; 4], cfg, Duration::ZERO);
    let mut now = Duration::ZERO;
    let report = |tx: &mut Sender, now, loss| {
        for p in encode_requests(
            1,
            1,
            loss,
            &[Want {
                object: 0,
                frags: None,
            }],
        ) {
            tx.on_packet(now, &p);
        }
    };
    // A lossy link's own 5 % does not slow it down.
    for _ in 0..10 {
        now += Duration::from_millis(101);
        report(&mut tx, now, 50);
        tx.poll(now);
    }
    assert_eq!(tx.rate(), 100_000_000);
    // A receiver missing 40 % does.
    for _ in 0..10 {
        now += Duration::from_millis(101);
        report(&mut tx, now, 400);
        tx.poll(now);
    }
    let slowed = tx.rate();
    assert!(slowed < 10_000_000, "{slowed}");
    // Quiet again: it climbs back to the cap.
    for _ in 0..30 {
        now += Duration::from_millis(101);
        tx.poll(now);
    }
    assert_eq!(tx.rate(), 100_000_000);
}

#[test]
fn receiver_measures_loss_from_sequence_gaps() {
    let img = image(4, 32 << 10, 11);
    let mut rx = Receiver::new(1, 1, ReceiverConfig::default());
    let session = session_of(&img.meta.header.uuid);
    let hello = Packet::Hello {
        session,
        meta_len: img.blob.len() as u32,
        meta_hash: *blake3::hash(&img.blob).as_bytes(),
        queued: 0,
        rate: 1,
    }
    .encode();
    rx.on_packet(Duration::ZERO, &hello);
    // Every fifth packet lost.
    for seq in (1..3000u32).filter(|s| s % 5 != 0) {
        let p = Packet::Data {
            session,
            object: 99,
            object_len: 10,
            frag: 0,
            seq,
            payload: &[0; 10],
        }
        .encode();
        rx.on_packet(Duration::ZERO, &p);
    }
    assert!((rx.loss - 0.2).abs() < 0.03, "{}", rx.loss);
}
