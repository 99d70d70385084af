//! A fault-injecting TCP proxy on loopback, in front of a real registry: it answers
//! connections with HTTP 500, cuts them after some bytes, slows them down, and records
//! the `Range` headers clients send (plain HTTP, so it can read them).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to the next connections; change it at any time.
#[derive(Default)]
pub struct Faults {
    /// Answer this many more connections with `500 Internal Server Error`.
    pub fail_next: AtomicU32,
    /// Answer every connection with 500 while set.
    pub always_fail: AtomicBool,
    /// Cut a connection once it has carried this many bytes to the client (0: never) …
    pub cut_after: AtomicU64,
    /// … this many more times.
    pub cuts_left: AtomicU32,
    /// Sleep this many microseconds per 64 KiB sent to the client.
    pub delay_us_per_64k: AtomicU64,
    /// `Range` header values seen, in order.
    pub ranges: Mutex<Vec<String>>,
    /// Connections answered with 500.
    pub failed: AtomicU32,
}

pub struct FaultProxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub faults: Arc<Faults>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (`127.0.0.1:PORT`).
    pub fn start(upstream: &str) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let faults = shared.clone();
                let upstream = upstream.clone();
                std::thread::spawn(move || serve(client, &upstream, &faults));
            }
        });
        FaultProxy { addr, faults }
    }

    /// The `Range` starts (`bytes=N-` → N) seen so far.
    pub fn range_starts(&self) -> Vec<u64> {
        self.faults
            .ranges
            .lock()
            .unwrap()
            .iter()
            .filter_map(|r| r.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
            .collect()
    }
}

fn serve(mut client: TcpStream, upstream: &str, faults: &Faults) {
    let fail = faults.always_fail.load(Ordering::SeqCst)
        || faults
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if fail {
        // Read the request head, answer 500, close.
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match client.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        faults.failed.fetch_add(1, Ordering::SeqCst);
        let _ = client.write_all(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 14\r\nConnection: close\r\n\r\ninjected fault",
        );
        let _ = client.shutdown(Shutdown::Both);
        return;
    }
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let (mut c_read, mut s_write) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    // Ranges are recorded the moment a request passes, not when its connection ends: a
    // test that clears them between two clients must not get the first one's late.
    std::thread::scope(|scope| {
        let up = scope.spawn(|| {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match c_read.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        record_ranges(&buf[..n], &faults.ranges);
                        if s_write.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                }
            }
            let _ = s_write.shutdown(Shutdown::Write);
        });
        let (mut s_read, mut c_write) = (server, client);
        let mut sent = 0u64;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match s_read.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let delay = faults.delay_us_per_64k.load(Ordering::SeqCst);
            if delay > 0 {
                std::thread::sleep(Duration::from_micros(delay));
            }
            let cut = faults.cut_after.load(Ordering::SeqCst);
            if cut > 0 && sent + n as u64 > cut {
                let left = faults
                    .cuts_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                if left.is_ok() {
                    let keep = (cut - sent) as usize;
                    let _ = c_write.write_all(&buf[..keep]);
                    let _ = c_write.shutdown(Shutdown::Both);
                    let _ = s_read.shutdown(Shutdown::Both);
                    break;
                }
            }
            if c_write.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n as u64;
        }
        let _ = c_write.shutdown(Shutdown::Both);
        let _ = up.join();
    });
}

/// Finds `range: bytes=…` header lines (any case) in a chunk of request bytes.
fn record_ranges(chunk: &[u8], into: &Mutex<Vec<String>>) {
    let text = String::from_utf8_lossy(chunk);
    for line in text.split("\r\n") {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("range") {
                into.lock().unwrap().push(value.trim().to_string());
            }
        }
    }
}
