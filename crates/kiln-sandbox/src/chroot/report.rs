//! The status channel: how the processes inside the sandbox tell kiln how the run ended.
//!
//! Every sandbox process holds [`STATUS_FD`] (close-on-exec, so the command never does)
//! and writes one JSON [`Report`] per line. kiln reads them after the run:
//! an [`Report::Interrupted`] wins, then the first [`Report::Setup`], then the *last*
//! exit status (pid 1 writes it after every process of the command is dead, so nothing
//! the command writes through `/proc/1/fd` can override it).

use std::os::fd::RawFd;

use crate::Outcome;

/// The sandbox end of the status pipe.
pub(crate) const STATUS_FD: RawFd = 4;

/// One message on the status channel.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum Report {
    /// A set-up or clean-up step failed; the text names the step and the error.
    Setup(String),
    /// The command exited with this code.
    Exited(i32),
    /// The command was killed by this signal.
    Signalled(i32),
    /// The supervisor got this signal (SIGINT, SIGTERM, SIGHUP) and killed the sandbox.
    Interrupted(i32),
}

impl Report {
    /// pid 1's own exit code for how the command ended: its code, 128 + the signal that
    /// killed it, 125 for anything else.
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Report::Exited(code) => *code,
            Report::Signalled(sig) => 128 + sig,
            _ => 125,
        }
    }

    /// Writes the report as one line. A newline goes first so a partial line left on the
    /// pipe by someone else cannot swallow it. Errors are ignored: if kiln is gone there
    /// is nobody to tell.
    pub(crate) fn send(&self) {
        let Ok(json) = serde_json::to_string(self) else {
            return;
        };
        let line = format!("\n{json}\n");
        // SAFETY: writing a valid buffer to a raw fd; a closed fd just fails with EBADF.
        let written = unsafe { libc::write(STATUS_FD, line.as_ptr().cast(), line.len()) };
        if written < 0 {
            if let Report::Setup(message) = self {
                eprintln!("kiln sandbox: {message}");
            }
        }
    }
}

/// What kiln concludes from everything read on the status channel.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Interrupted(i32),
    Setup(String),
    Finished(Outcome),
    Silent,
}

/// Reads the reports in `bytes` (see the module doc for the priorities).
pub(crate) fn verdict(bytes: &[u8]) -> Verdict {
    let mut setup = None;
    let mut finished = None;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Report>(line) {
            Ok(Report::Interrupted(signal)) => return Verdict::Interrupted(signal),
            Ok(Report::Setup(message)) => {
                setup.get_or_insert(message);
            }
            Ok(Report::Exited(code)) => finished = Some(Outcome::Exited(code)),
            Ok(Report::Signalled(signal)) => finished = Some(Outcome::Signalled(signal)),
            Err(_) => tracing::warn!(
                "ignoring a malformed line on the sandbox status channel: {}",
                String::from_utf8_lossy(line)
            ),
        }
    }
    match (setup, finished) {
        (Some(message), _) => Verdict::Setup(message),
        (None, Some(outcome)) => Verdict::Finished(outcome),
        (None, None) => Verdict::Silent,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(reports: &[Report]) -> Vec<u8> {
        let mut out = Vec::new();
        for r in reports {
            out.extend_from_slice(format!("\n{}\n", serde_json::to_string(r).unwrap()).as_bytes());
        }
        out
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(Report::Exited(3).exit_code(), 3);
        assert_eq!(Report::Signalled(9).exit_code(), 137);
        assert_eq!(Report::Interrupted(2).exit_code(), 125);
        assert_eq!(Report::Setup("x".into()).exit_code(), 125);
    }

    #[test]
    fn last_status_wins() {
        let bytes = lines(&[Report::Exited(0), Report::Signalled(9)]);
        assert_eq!(verdict(&bytes), Verdict::Finished(Outcome::Signalled(9)));
    }

    #[test]
    fn setup_error_beats_status_and_first_one_is_kept() {
        let bytes = lines(&[
            Report::Setup("a".into()),
            Report::Exited(125),
            Report::Setup("b".into()),
        ]);
        assert_eq!(verdict(&bytes), Verdict::Setup("a".into()));
    }

    #[test]
    fn interrupted_beats_everything_and_garbage_is_skipped() {
        let mut bytes = b"{\"Exited\":0".to_vec(); // a partial line from someone else
        bytes.extend(lines(&[Report::Setup("x".into()), Report::Interrupted(2)]));
        assert_eq!(verdict(&bytes), Verdict::Interrupted(2));
        assert_eq!(verdict(b"garbage"), Verdict::Silent);
    }
}
