//! Where a step's output goes: the terminal and the step's log, with secret values
//! masked, and the last lines kept for the error report.

use std::collections::VecDeque;
use std::io::{self, Write};

/// How many trailing lines a failure report shows.
pub const TAIL_LINES: usize = 15;
const MASK: &[u8] = b"***";

/// Copies bytes to two sinks, replacing every occurrence of a secret value with `***`.
///
/// A secret may be split across two writes, so up to `longest - 1` bytes are held back
/// until more output arrives or [`StepOutput::finish`] is called.
pub struct StepOutput<'a> {
    terminal: &'a mut dyn Write,
    log: &'a mut dyn Write,
    secrets: Vec<Vec<u8>>,
    pending: Vec<u8>,
    tail: VecDeque<Vec<u8>>,
    partial_line: Vec<u8>,
}

impl<'a> StepOutput<'a> {
    pub fn new(terminal: &'a mut dyn Write, log: &'a mut dyn Write, secrets: Vec<Vec<u8>>) -> Self {
        let secrets = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        StepOutput {
            terminal,
            log,
            secrets,
            pending: Vec::new(),
            tail: VecDeque::new(),
            partial_line: Vec::new(),
        }
    }

    /// Emits `pending` with secrets masked, holding back a tail that could be the
    /// beginning of a secret continued by the next write (unless `all`).
    fn flush_pending(&mut self, all: bool) -> io::Result<()> {
        let data = std::mem::take(&mut self.pending);
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        while i < data.len() {
            let rest = &data[i..];
            if let Some(s) = self.secrets.iter().find(|s| rest.starts_with(s)) {
                out.extend_from_slice(MASK);
                i += s.len();
            } else if !all
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                self.pending = rest.to_vec();
                break;
            } else {
                out.push(data[i]);
                i += 1;
            }
        }
        self.emit(&out)
    }

    fn emit(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.terminal.write_all(bytes)?;
        self.log.write_all(bytes)?;
        for &b in bytes {
            if b == b'\n' {
                self.push_tail_line();
            } else {
                self.partial_line.push(b);
            }
        }
        Ok(())
    }

    fn push_tail_line(&mut self) {
        let line = std::mem::take(&mut self.partial_line);
        self.tail.push_back(line);
        if self.tail.len() > TAIL_LINES {
            self.tail.pop_front();
        }
    }

    /// Flushes held-back bytes; call when the step's output has ended.
    pub fn finish(&mut self) -> io::Result<()> {
        self.flush_pending(true)?;
        if !self.partial_line.is_empty() {
            self.push_tail_line();
        }
        self.terminal.flush()?;
        self.log.flush()
    }

    /// The last lines written (already masked).
    pub fn tail(&self) -> String {
        self.tail
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Write for StepOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.secrets.is_empty() {
            self.emit(buf)?;
        } else {
            self.pending.extend_from_slice(buf);
            self.flush_pending(false)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.terminal.flush()?;
        self.log.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]], secrets: &[&str]) -> (Vec<u8>, Vec<u8>, String) {
        let (mut term, mut log) = (Vec::new(), Vec::new());
        let tail = {
            let mut out = StepOutput::new(
                &mut term,
                &mut log,
                secrets.iter().map(|s| s.as_bytes().to_vec()).collect(),
            );
            for c in chunks {
                out.write_all(c).unwrap();
            }
            out.finish().unwrap();
            out.tail()
        };
        (term, log, tail)
    }

    #[test]
    fn masks_secrets_split_across_writes() {
        let (term, log, _) = run(&[b"token=hun", b"ter2 and hunter2\n"], &["hunter2"]);
        assert_eq!(term, b"token=*** and ***\n");
        assert_eq!(log, term);
    }

    #[test]
    fn passes_output_through_without_secrets() {
        let (term, _, tail) = run(&[b"a\nb\n", b"c"], &[]);
        assert_eq!(term, b"a\nb\nc");
        assert_eq!(tail, "a\nb\nc");
    }

    #[test]
    fn keeps_only_last_lines() {
        let text: String = (0..40).map(|i| format!("line {i}\n")).collect();
        let (_, _, tail) = run(&[text.as_bytes()], &["zz"]);
        assert_eq!(tail.lines().count(), TAIL_LINES);
        assert!(tail.ends_with("line 39"));
    }
}
