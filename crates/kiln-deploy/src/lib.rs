//! kiln's disk deployment: the chunked image format (`.kzi`) and a receiver-driven
//! multicast loader that fills many disks about as fast as one.
//!
//! Pure cores without I/O: [`format`] (the file format) and [`protocol`] (the sender and
//! receiver state machines). Around them: [`scan`] finds a disk's allocated data,
//! [`pack`] and [`unpack`] convert between raw disks and `.kzi` files, [`target`] opens
//! what a loader writes to, and [`net`] runs the protocol over UDP multicast.

pub mod format;
pub mod http;
pub mod net;
pub mod nodes;
pub mod pack;
pub mod protocol;
pub mod scan;
pub mod target;
pub mod unpack;
