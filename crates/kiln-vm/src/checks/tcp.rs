//! "Sending SEND to port P gets a reply containing EXPECT".

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::{excerpt, forwarded, vm_gone, Retry};
use crate::qemu::Vm;

/// The most of a reply that is kept.
const MAX_REPLY: usize = 1 << 20;

/// See the HTTP check: attempts start short and grow while they time out.
const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(16);
/// Even the last attempt before the deadline gets this long.
const MIN_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(300);

pub(super) fn check(
    vm: &Vm,
    guest: u16,
    send: &str,
    expect: &str,
    deadline: Instant,
) -> Result<String, String> {
    let host = forwarded(vm, guest)?;
    let mut retry = Retry::new(deadline);
    let mut attempt_timeout = FIRST_ATTEMPT_TIMEOUT;
    loop {
        let timeout = retry.left().min(attempt_timeout);
        let exchange = Exchange::run(host, send.as_bytes(), expect.as_bytes(), timeout);
        if exchange.matched {
            return Ok(format!(
                "port {guest} replied {}",
                excerpt(&exchange.reply, 120)
            ));
        }
        if exchange.timed_out {
            attempt_timeout = (attempt_timeout * 2).min(MAX_ATTEMPT_TIMEOUT);
        }
        if let Some(gone) = vm_gone(vm) {
            return Err(gone);
        }
        if !retry.pause() {
            return Err(format!(
                "sent {send:?} to guest port {guest} (host port {host}): expected a reply \
                 containing {expect:?} within {:.1}s; last attempt: {}",
                retry.waited().as_secs_f64(),
                exchange.describe()
            ));
        }
    }
}

/// One connection's worth of sending and reading.
struct Exchange {
    reply: Vec<u8>,
    matched: bool,
    timed_out: bool,
    /// Why the reading stopped without a match.
    ended: Option<String>,
}

impl Exchange {
    fn run(host: u16, send: &[u8], expect: &[u8], timeout: Duration) -> Exchange {
        let mut exchange = Exchange {
            reply: Vec::new(),
            matched: false,
            timed_out: false,
            ended: None,
        };
        if let Err(e) = exchange.talk(host, send, expect, timeout.max(MIN_ATTEMPT_TIMEOUT)) {
            exchange.timed_out = matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
            exchange.ended = Some(if exchange.timed_out {
                format!("no matching reply within {:.1}s", timeout.as_secs_f64())
            } else {
                e.to_string()
            });
        }
        exchange
    }

    fn talk(
        &mut self,
        host: u16,
        send: &[u8],
        expect: &[u8],
        timeout: Duration,
    ) -> std::io::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, host));
        let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(send)?;
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
            stream.set_read_timeout(Some(left))?;
            let n = stream.read(&mut buf)?;
            if n == 0 {
                self.ended = Some("the connection closed".into());
                return Ok(());
            }
            self.reply.extend_from_slice(&buf[..n]);
            if contains(&self.reply, expect) {
                self.matched = true;
                return Ok(());
            }
            if self.reply.len() >= MAX_REPLY {
                self.ended = Some("the reply grew too long".into());
                return Ok(());
            }
        }
    }

    fn describe(&self) -> String {
        let ended = self.ended.as_deref().unwrap_or("no reply");
        if self.reply.is_empty() {
            format!("{ended}, nothing received")
        } else {
            format!("{ended}; received {}", excerpt(&self.reply, 300))
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> (u16, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let t = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let n = conn.read(&mut buf).unwrap();
            conn.write_all(&buf[..n]).unwrap();
        });
        (port, t)
    }

    #[test]
    fn exchange_matches_a_reply() {
        let (port, server) = echo_server();
        let ex = Exchange::run(port, b"ping\n", b"ping", Duration::from_secs(10));
        assert!(ex.matched, "{}", ex.describe());
        server.join().unwrap();
    }

    #[test]
    fn exchange_explains_a_wrong_reply() {
        let (port, server) = echo_server();
        let ex = Exchange::run(port, b"ping\n", b"pong", Duration::from_secs(10));
        assert!(!ex.matched);
        let text = ex.describe();
        assert!(text.contains("closed") && text.contains("ping"), "{text}");
        server.join().unwrap();
    }
}
