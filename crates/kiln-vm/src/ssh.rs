//! `ssh` (openssh-client): commands in a guest reached through a loopback port forward,
//! as the user a VM base was registered with, with its private key. Host keys are not
//! checked or recorded: the guest is a VM kiln itself just booted on 127.0.0.1 (and
//! careful images make their host keys at first boot, so they change every boot).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::VmError;

/// The Debian package that provides `ssh`.
pub const PACKAGE: &str = "openssh-client";

/// A guest's SSH server on `127.0.0.1:port`.
#[derive(Debug, Clone)]
pub struct SshTarget {
    pub user: String,
    pub port: u16,
    /// The private key (mode 600: ssh refuses others).
    pub key: PathBuf,
}

impl SshTarget {
    /// `ssh` with kiln's options, to run `remote` (one string, as the guest user's shell
    /// reads it). Stdin is null unless the caller sets it; stdout and stderr are piped.
    pub fn command(&self, remote: &str, connect_timeout: Duration) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port.to_string()])
            .args([
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "LogLevel=ERROR",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "ServerAliveCountMax=6",
                "-F",
                "/dev/null",
            ])
            .arg("-o")
            .arg(format!(
                "ConnectTimeout={}",
                connect_timeout.as_secs().max(1)
            ))
            .arg(format!("{}@127.0.0.1", self.user))
            .arg("--")
            .arg(remote)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Runs `remote` to completion: its exit code and stderr (`None` as the code when ssh
    /// itself failed: it exits 255 and says `ssh:` or names the connection).
    pub fn output(
        &self,
        remote: &str,
        timeout: Duration,
    ) -> Result<(Option<i32>, String), VmError> {
        let out = self
            .command(remote, timeout)
            .output()
            .map_err(|e| spawn_error(&self.key, e))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let code = out.status.code();
        Ok((code.filter(|&c| !(c == 255 && ssh_failed(&stderr))), stderr))
    }

    /// Whether `ssh … true` succeeds now.
    pub fn answers(&self, timeout: Duration) -> Result<(bool, String), VmError> {
        let (code, stderr) = self.output("true", timeout)?;
        Ok((code == Some(0), stderr))
    }
}

/// Whether stderr of an ssh that exited 255 is ssh's own complaint (not the command's).
pub fn ssh_failed(stderr: &str) -> bool {
    let s = stderr.trim();
    s.is_empty()
        || s.contains("ssh:")
        || s.contains("Connection")
        || s.contains("Permission denied")
        || s.contains("kex_exchange")
        || s.contains("Load key")
}

/// An ssh that could not start: most likely not installed.
pub fn spawn_error(key: &Path, e: std::io::Error) -> VmError {
    VmError::Tool(format!(
        "cannot run `ssh` (with key {}): {e}; install the Debian package `{PACKAGE}` \
         (apt-get install {PACKAGE})",
        key.display()
    ))
}

/// Quotes `s` for a POSIX shell (one word).
pub fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_words_whole() {
        assert_eq!(quote("abc/d.e"), "abc/d.e");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("it's a b"), r"'it'\''s a b'");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote("a 'b' $x \\ \"c\"")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "a 'b' $x \\ \"c\"");
    }

    #[test]
    fn ssh_errors_are_told_from_command_exits() {
        assert!(ssh_failed(
            "ssh: connect to host 127.0.0.1 port 2222: Connection refused"
        ));
        assert!(ssh_failed(""));
        assert!(!ssh_failed("my tool: bad input"));
    }
}
