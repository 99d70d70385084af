//! "The guest accepts TCP connections on port P".
//!
//! Connecting to the forwarded loopback port proves nothing by itself: QEMU's
//! user-mode network accepts the host side at once, then opens the guest side.
//! If the guest port is closed, the guest answers with a reset and QEMU closes
//! the host side (our socket reads EOF); if the guest is not up yet, QEMU keeps
//! resending its SYN and the host side simply stays open, exactly as it would
//! for an accepting server that sends nothing first. So "the socket stays open"
//! cannot tell a listening guest from a dead one.
//!
//! What does tell them apart is QEMU's own view of the guest side of the
//! connection, `info usernet` over QMP: a socket to guest port P in state
//! `ESTABLISHED` exists only once the guest completed the handshake. An attempt
//! passes when such a socket appears that was not there before it connected
//! (or when the guest sends data first); it fails at once on EOF/reset (port
//! closed) and after a short window while the guest side stays in `SYN_SENT`.
//!
//! The HTTP and TCP checks connect the same way ([`connect_accepted`]), so a
//! request is only sent once the guest took the connection: until then they
//! retry with fresh connections every [`ATTEMPT_WINDOW`] at most, and after it
//! they give a slow server all the time left.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{forwarded, vm_gone, Retry};
use crate::qemu::Vm;

/// How long one connection may wait for the guest to answer its handshake
/// before a fresh connection (with a fresh SYN) is tried. A booted guest answers
/// in milliseconds even under TCG; a SYN sent before its network was up is lost,
/// so waiting on it longer only delays the verdict.
const ATTEMPT_WINDOW: Duration = Duration::from_millis(800);
/// Even the last attempt before the deadline gets this long: enough for a
/// running guest to answer, so the final verdict is not a zero-length wait.
pub(super) const MIN_ATTEMPT_WINDOW: Duration = Duration::from_millis(300);

pub(super) fn check(vm: &Vm, guest: u16, deadline: Instant) -> Result<String, String> {
    let host = forwarded(vm, guest)?;
    let mut retry = Retry::new(deadline);
    loop {
        let last = match connect_accepted(vm, guest, host, &retry) {
            Ok(_) => {
                return Ok(format!(
                    "the guest accepted a connection on port {guest} (host port {host})"
                ))
            }
            Err(why) => why,
        };
        if let Some(gone) = vm_gone(vm) {
            return Err(gone);
        }
        if !retry.pause() {
            return Err(format!(
                "expected the guest to accept connections on port {guest} within {:.1}s; \
                 last attempt: {last}",
                retry.waited().as_secs_f64()
            ));
        }
    }
}

/// Connects to the forward of `guest` (on loopback port `host`) and returns the
/// connection, in blocking mode, once the guest has accepted it; fails when the
/// guest refuses it, or does not answer within one attempt's window.
pub(super) fn connect_accepted(
    vm: &Vm,
    guest: u16,
    host: u16,
    retry: &Retry,
) -> Result<TcpStream, String> {
    let window = retry.left().clamp(MIN_ATTEMPT_WINDOW, ATTEMPT_WINDOW);
    let stream = attempt(vm, guest, host, window)?;
    stream
        .set_nonblocking(false)
        .map_err(|e| format!("socket setup failed: {e}"))?;
    Ok(stream)
}

/// One connection: `Ok` when the guest accepted it.
fn attempt(vm: &Vm, guest: u16, host: u16, window: Duration) -> Result<TcpStream, String> {
    let before = established(vm, guest)?;
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host));
    let stream = TcpStream::connect_timeout(&addr, window)
        .map_err(|e| format!("connecting to {addr} failed: {e}"))?;
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("socket setup failed: {e}"))?;
    let end = Instant::now() + window;
    let mut pause = Duration::from_millis(10);
    loop {
        match stream.peek(&mut [0u8; 1]) {
            Ok(0) => {
                return Err(format!(
                    "the guest refused the connection: port {guest} is closed"
                ))
            }
            Ok(_) => return Ok(stream), // the guest sent data: it accepted
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(format!(
                    "the connection was reset ({e}): port {guest} is closed"
                ))
            }
        }
        if established(vm, guest)?.difference(&before).next().is_some() {
            return Ok(stream);
        }
        if Instant::now() >= end {
            return Err(format!(
                "the guest did not answer the connection to port {guest} within {:.1}s \
                 (its network or service is not up)",
                window.as_secs_f64()
            ));
        }
        // QEMU has no event for this state change: poll, briefly.
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// QEMU's socket ids of guest-side connections to `guest` that completed a handshake.
fn established(vm: &Vm, guest: u16) -> Result<HashSet<i64>, String> {
    let sockets = vm
        .guest_sockets()
        .map_err(|e| format!("could not ask QEMU for its connections: {e}"))?;
    Ok(sockets
        .into_iter()
        .filter(|s| s.guest_port == guest && s.state == "ESTABLISHED")
        .map(|s| s.fd)
        .collect())
}
