//! The captured serial console: a buffer filled by a reader thread, and waits
//! that are woken by each chunk the guest prints (no polling).

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

/// The most console output kept in memory; older output is dropped (the serial
/// log file, when asked for, keeps everything).
const MAX_KEPT: usize = 8 << 20;

/// Shared between the reader thread and the waiters.
#[derive(Default)]
pub(super) struct Console {
    state: Mutex<State>,
    grew: Condvar,
}

#[derive(Default)]
struct State {
    data: Vec<u8>,
    /// Bytes dropped from the front of `data` so far.
    dropped: usize,
    /// The guest side is gone (QEMU exited or closed its stdout).
    closed: bool,
}

/// How a wait ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Waited {
    Found,
    Closed,
    TimedOut,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn push(&self, chunk: &[u8]) {
        let mut state = self.lock();
        state.data.extend_from_slice(chunk);
        if state.data.len() > MAX_KEPT {
            let excess = state.data.len() - MAX_KEPT / 2;
            state.data.drain(..excess);
            state.dropped += excess;
        }
        drop(state);
        self.grew.notify_all();
    }

    pub fn close(&self) {
        self.lock().closed = true;
        self.grew.notify_all();
    }

    /// Waits until the output (from the start, as far as kept) contains `needle`.
    pub fn wait_for(&self, needle: &str, deadline: Instant) -> Waited {
        let needle = needle.as_bytes();
        // Absolute offset from which a match may still start: each chunk is
        // searched once, with an overlap of the needle's length.
        let mut from = 0usize;
        let mut state = self.lock();
        loop {
            let start = from.saturating_sub(state.dropped);
            if contains(&state.data[start.min(state.data.len())..], needle) {
                return Waited::Found;
            }
            from = (state.dropped + state.data.len()).saturating_sub(needle.len());
            if state.closed {
                return Waited::Closed;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Waited::TimedOut;
            };
            state = self
                .grew
                .wait_timeout(state, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Everything kept, cleaned for reading (see [`clean_text`]).
    pub fn text(&self) -> String {
        clean_text(&self.lock().data)
    }

    /// The last `lines` lines, cleaned.
    pub fn tail(&self, lines: usize) -> String {
        let text = self.text();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Reads `pipe` into the buffer (and `log`) until EOF, on a new thread.
    pub fn spawn_reader(
        self: &Arc<Self>,
        mut pipe: impl Read + Send + 'static,
        mut log: Option<File>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let console = Arc::clone(self);
        std::thread::Builder::new()
            .name("kiln-serial".into())
            .spawn(move || {
                let mut buf = [0u8; 8192];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            console.push(&buf[..n]);
                            if let Some(file) = log.as_mut() {
                                if let Err(e) = file.write_all(&buf[..n]) {
                                    tracing::warn!("serial log write failed, logging stops: {e}");
                                    log = None;
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
                console.close();
            })
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// Console bytes made readable: lossy UTF-8, terminal escape sequences and
/// carriage returns removed, other control characters dropped (tabs and
/// newlines kept).
pub fn clean_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => skip_escape(&mut chars),
            '\n' | '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// Skips the rest of an escape sequence: CSI (`ESC [ … final`), or `ESC x`.
fn skip_escape(chars: &mut impl Iterator<Item = char>) {
    if chars.next() == Some('[') {
        for c in chars.by_ref() {
            if ('\x40'..='\x7e').contains(&c) {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn finds_text_split_across_chunks() {
        let console = Arc::new(Console::default());
        let writer = Arc::clone(&console);
        let t = std::thread::spawn(move || {
            writer.push(b"booting...\nKILN-");
            writer.push(b"READY\n");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(console.wait_for("KILN-READY", deadline), Waited::Found);
        t.join().unwrap();
    }

    #[test]
    fn times_out_and_reports_close() {
        let console = Console::default();
        console.push(b"nothing here\n");
        let soon = Instant::now() + Duration::from_millis(20);
        assert_eq!(console.wait_for("READY", soon), Waited::TimedOut);
        console.close();
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(console.wait_for("READY", later), Waited::Closed);
        assert_eq!(console.wait_for("nothing", later), Waited::Found);
    }

    #[test]
    fn keeps_the_tail_when_output_is_huge() {
        let console = Console::default();
        let line = vec![b'x'; 1 << 20];
        for _ in 0..10 {
            console.push(&line);
        }
        console.push(b"\nlast line\n");
        assert!(console.lock().data.len() <= MAX_KEPT);
        let deadline = Instant::now() + Duration::from_secs(1);
        assert_eq!(console.wait_for("last line", deadline), Waited::Found);
        assert_eq!(console.tail(1), "last line");
    }

    #[test]
    fn cleans_escapes_and_carriage_returns() {
        let raw = b"\x1b[2J\x1b[01;01HShell> \x1b[0m\x1b[37mok\r\nnext\x07\n";
        assert_eq!(clean_text(raw), "Shell> ok\nnext\n");
    }
}
