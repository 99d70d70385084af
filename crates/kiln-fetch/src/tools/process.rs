//! Running a program while streaming its output to the build log.

use super::ToolError;
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

/// Lines of output kept for error messages.
const TAIL_LINES: usize = 20;

/// Runs `cmd`, copying stdout and stderr line by line to `progress`. Returns the last lines
/// of output on success too (callers may inspect them).
pub(crate) fn run_streaming(
    cmd: &mut Command,
    progress: &mut dyn Write,
) -> Result<String, ToolError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(ToolError::Spawn)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child.stderr.take().map(|s| Box::new(s) as _),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        thread::spawn(move || forward_lines(stream, &tx))
    })
    .collect();
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    for line in rx {
        // The log is best effort: a closed progress sink must not kill the bootstrap.
        let _ = progress.write_all(&line);
        if tail.len() == TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
    }
    for reader in readers {
        let _ = reader.join();
    }
    let status = child.wait().map_err(ToolError::Spawn)?;
    let tail = Vec::from(tail).join("\n");
    if status.success() {
        Ok(tail)
    } else {
        Err(ToolError::Failed { status, tail })
    }
}

fn forward_lines(stream: Box<dyn Read + Send>, tx: &mpsc::Sender<Vec<u8>>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                if tx.send(line).is_err() {
                    return;
                }
            }
        }
    }
}

/// Makes `cmd` run in its own mount namespace with private propagation, so mounts it makes
/// (proc, sys, dev inside a chroot) vanish when it exits, even if it is killed.
pub(crate) fn private_mounts(cmd: &mut Command) {
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe syscalls.
    unsafe {
        cmd.pre_exec(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(io::Error::from)?;
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .map_err(io::Error::from)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_both_outputs_and_keeps_the_tail() {
        let mut out = Vec::new();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 3"]);
        let err = run_streaming(&mut cmd, &mut out).unwrap_err();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("one\n") && text.contains("two\n"));
        match err {
            ToolError::Failed { status, tail } => {
                assert_eq!(status.code(), Some(3));
                assert!(tail.contains("one") && tail.contains("two"));
            }
            other => panic!("unexpected {other}"),
        }
    }
}
