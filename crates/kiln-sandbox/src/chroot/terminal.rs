//! An interactive run on a terminal (`RunSpec::interactive` with kiln's stdin a tty): the
//! command gets a pseudo-terminal of its own, whose master kiln relays to and from its
//! terminal, which is put in raw mode meanwhile (keys, Ctrl-C included, go to the command)
//! and restored afterwards. The command makes the pty its controlling terminal
//! (`command::take_terminal`), so an interactive shell has job control.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::pty::openpty;
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};
use nix::unistd::isatty;

use crate::SandboxError;

/// The master side of the command's pty; kiln's terminal stays in raw mode until dropped.
pub(super) struct Terminal {
    pub master: OwnedFd,
    saved: Termios,
}

impl Terminal {
    /// A pty sized and set up like kiln's terminal, with its slave side (for the command's
    /// stdio: drop kiln's copy once given, or reading the master never ends), or `None`
    /// when stdin is not a terminal.
    pub fn open() -> Result<Option<(Terminal, OwnedFd)>, SandboxError> {
        let stdin = std::io::stdin();
        if !isatty(stdin.as_raw_fd()).unwrap_or(false) {
            return Ok(None);
        }
        let saved =
            tcgetattr(stdin.as_fd()).map_err(|e| SandboxError::sys("read the terminal mode", e))?;
        let pty = openpty(window_size(stdin.as_fd()).as_ref(), Some(&saved))
            .map_err(|e| SandboxError::sys("open a pseudo-terminal for the command", e))?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
            .map_err(|e| SandboxError::sys("put the terminal in raw mode", e))?;
        let terminal = Terminal {
            master: pty.master,
            saved,
        };
        Ok(Some((terminal, pty.slave)))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = tcsetattr(std::io::stdin().as_fd(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The terminal's rows and columns, if it tells.
fn window_size(fd: BorrowedFd<'_>) -> Option<nix::pty::Winsize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, which outlives the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0).then_some(size)
}
