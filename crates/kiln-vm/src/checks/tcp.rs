//! "Sending SEND to port P gets a reply containing EXPECT".

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{excerpt, forwarded, port, vm_gone, Retry};
use crate::qemu::Vm;

/// The most of a reply that is kept.
const MAX_REPLY: usize = 1 << 20;

/// The least time a reply gets, even near the deadline.
const MIN_ANSWER_TIME: Duration = Duration::from_millis(300);

pub(super) fn check(
    vm: &Vm,
    guest: u16,
    send: &str,
    expect: &str,
    deadline: Instant,
) -> Result<String, String> {
    let host = forwarded(vm, guest)?;
    let mut retry = Retry::new(deadline);
    loop {
        let exchange = match port::connect_accepted(vm, guest, host, &retry) {
            Ok(stream) => {
                let timeout = retry.left().max(MIN_ANSWER_TIME);
                Exchange::run(stream, send.as_bytes(), expect.as_bytes(), timeout)
            }
            Err(why) => Exchange::failed(why),
        };
        if exchange.matched {
            return Ok(format!(
                "port {guest} replied {}",
                excerpt(&exchange.reply, 120)
            ));
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
#[derive(Default)]
struct Exchange {
    reply: Vec<u8>,
    matched: bool,
    /// Why the reading stopped without a match.
    ended: Option<String>,
}

impl Exchange {
    /// An attempt that got no connection.
    fn failed(why: String) -> Exchange {
        Exchange {
            ended: Some(why),
            ..Exchange::default()
        }
    }

    /// Sends `send` on a connection the guest accepted, then reads until the
    /// reply contains `expect`, the connection closes, or `timeout` passes.
    fn run(stream: TcpStream, send: &[u8], expect: &[u8], timeout: Duration) -> Exchange {
        let mut exchange = Exchange::default();
        if let Err(e) = exchange.talk(stream, send, expect, timeout) {
            let timed_out = matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            );
            exchange.ended = Some(if timed_out {
                format!("no matching reply within {:.1}s", timeout.as_secs_f64())
            } else {
                e.to_string()
            });
        }
        exchange
    }

    fn talk(
        &mut self,
        mut stream: TcpStream,
        send: &[u8],
        expect: &[u8],
        timeout: Duration,
    ) -> std::io::Result<()> {
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
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ex = Exchange::run(stream, b"ping\n", b"ping", Duration::from_secs(10));
        assert!(ex.matched, "{}", ex.describe());
        server.join().unwrap();
    }

    #[test]
    fn exchange_explains_a_wrong_reply() {
        let (port, server) = echo_server();
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let ex = Exchange::run(stream, b"ping\n", b"pong", Duration::from_secs(10));
        assert!(!ex.matched);
        let text = ex.describe();
        assert!(text.contains("closed") && text.contains("ping"), "{text}");
        server.join().unwrap();
    }
}
