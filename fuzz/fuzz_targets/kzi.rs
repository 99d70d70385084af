//! Feeds arbitrary bytes to the `.kzi` parsers and the multicast packet parser: they must
//! never panic, and whatever metadata parses must encode back to the same bytes.
//! `crates/kiln-deploy/src/format.rs`' proptests check the same properties on stable.

#![no_main]

use kiln_deploy::format::{decode_chunk, Meta, MAX_CHUNK_SIZE};
use kiln_deploy::protocol::{Packet, MAX_PACKET};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = Meta::parse(data) {
        let encoded = meta.encode();
        assert_eq!(&data[..encoded.len()], &encoded[..], "meta does not round-trip");
    }
    let _ = decode_chunk(data, u64::MAX, MAX_CHUNK_SIZE, None);
    // A packet that fits a frame encodes back to one that parses the same.
    if let Some(packet) = Packet::parse(data).filter(|_| data.len() <= MAX_PACKET) {
        let again = packet.encode();
        assert_eq!(Packet::parse(&again), Some(packet), "packet does not round-trip");
    }
});
