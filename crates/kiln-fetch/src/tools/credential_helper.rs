//! Docker's credential helpers (`docker-credential-NAME`, e.g. `desktop` from Docker Desktop,
//! `pass` and `secretservice` from Debian's `golang-docker-credential-helpers`): `get` reads
//! a server URL on stdin and answers `{"ServerURL": …, "Username": …, "Secret": …}` on
//! stdout, or exits non-zero saying `credentials not found in native keychain`.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What helpers print when they hold nothing for the server URL.
pub(crate) const NOT_FOUND: &str = "credentials not found in native keychain";
/// How long a helper may take: it may be waiting for the user to unlock a keyring, but a
/// hung one must not hang the build.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(60);
/// Output kept from a helper (its answer is a few hundred bytes).
const MAX_OUTPUT: u64 = 1 << 20;
/// Error output quoted in messages, in characters.
const QUOTED: usize = 400;

/// The program that helper `name` is.
pub(crate) fn program(name: &str) -> String {
    format!("docker-credential-{name}")
}

/// What a helper holds for a server.
pub(crate) struct Found {
    pub username: String,
    /// A password or access token, or an identity token when `username` is `<token>`.
    pub secret: String,
}

impl std::fmt::Debug for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Found")
            .field("username", &self.username)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a helper gave no answer. Messages never quote its standard output on success
/// (that holds the secret).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HelperError {
    #[error("`{0}` is not a credential helper name (it may not contain `/`)")]
    BadName(String),
    #[error("`{program}` is not installed (it is not on PATH)")]
    Missing { program: String },
    #[error("`{program}` could not be started: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{program} get` did not answer within {} s (is it waiting for a keyring to be unlocked?); it was stopped", .timeout.as_secs())]
    TimedOut { program: String, timeout: Duration },
    #[error("`{program} get` failed ({status}): {output}")]
    Failed {
        program: String,
        status: ExitStatus,
        /// Its standard error and output, trimmed and shortened.
        output: String,
    },
    #[error("`{program} get` did not answer with its JSON credentials ({reason})")]
    BadAnswer { program: String, reason: String },
}

/// The JSON a helper answers; `ServerURL` is not needed.
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "Username", default)]
    username: String,
    #[serde(rename = "Secret", default)]
    secret: String,
}

/// Asks helper `name` for the credentials of `server_url`: `Ok(None)` when it has none.
/// The helper is looked for in `path` and runs with it as `PATH` (`None`: this process's
/// `PATH`); its standard error is captured; after `timeout` it is killed.
pub(crate) fn get(
    name: &str,
    server_url: &str,
    path: Option<&OsStr>,
    timeout: Duration,
) -> Result<Option<Found>, HelperError> {
    if name.is_empty() || name.contains('/') {
        return Err(HelperError::BadName(name.to_string()));
    }
    let program = program(name);
    let search = path
        .map(OsStr::to_os_string)
        .or_else(|| std::env::var_os("PATH"))
        .unwrap_or_default();
    let Some(executable) = find(&program, &search) else {
        return Err(HelperError::Missing { program });
    };
    let mut command = Command::new(&executable);
    command
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(path) = path {
        command.env("PATH", path);
    }
    let mut child = spawn(&mut command).map_err(|source| HelperError::Spawn {
        program: program.clone(),
        source,
    })?;
    let deadline = Instant::now() + timeout;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading closes the pipe: its answer says what went wrong.
        let _ = stdin.write_all(server_url.as_bytes());
    }
    let timed_out = || HelperError::TimedOut {
        program: program.clone(),
        timeout,
    };
    let status = wait(&mut child, deadline).ok_or_else(timed_out)?;
    // A helper's own children may keep its pipes open: wait for them until the deadline only.
    let remaining = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
    let stdout = stdout.recv_timeout(remaining).map_err(|_| timed_out())?;
    let stderr = stderr.recv_timeout(remaining).map_err(|_| timed_out())?;
    let stdout = String::from_utf8_lossy(&stdout);
    let stderr = String::from_utf8_lossy(&stderr);
    if !status.success() {
        // Helpers print the not-found message on stdout; accept it on stderr too.
        if stdout.contains(NOT_FOUND) || stderr.contains(NOT_FOUND) {
            return Ok(None);
        }
        let output = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(HelperError::Failed {
            program,
            status,
            output: shorten(if output.is_empty() {
                "no output"
            } else {
                &output
            }),
        });
    }
    // serde_json's messages say where the JSON broke, never what it holds.
    let answer: Answer =
        serde_json::from_str(stdout.trim()).map_err(|e| HelperError::BadAnswer {
            program: program.clone(),
            reason: e.to_string(),
        })?;
    if answer.username.is_empty() && answer.secret.is_empty() {
        return Ok(None);
    }
    if answer.username.is_empty() {
        return Err(HelperError::BadAnswer {
            program,
            reason: "it has a Secret but no Username".to_string(),
        });
    }
    Ok(Some(Found {
        username: answer.username,
        secret: answer.secret,
    }))
}

/// `program` in the directories of `path` (empty entries, meaning the current directory,
/// are skipped).
fn find(program: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|candidate| super::is_executable(candidate))
}

/// Spawns `command`, retrying while the executable is busy: a script written just now may
/// still be open for writing in a child that another thread forked and has not yet exec'd.
fn spawn(command: &mut Command) -> std::io::Result<Child> {
    let mut tries = 0;
    loop {
        match command.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            result => return result,
        }
    }
}

/// The child's exit status, or `None` (and the child killed) if it runs past `deadline`.
fn wait(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// Reads `pipe` to its end (at most [`MAX_OUTPUT`] bytes) on a thread of its own.
fn read_all(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

/// `text`, cut to [`QUOTED`] characters.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(QUOTED) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// A directory holding `docker-credential-NAME` with `body` as its shell script.
#[cfg(test)]
pub(crate) fn test_helper(name: &str, body: &str) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(program(name));
    std::fs::write(&file, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

#[cfg(test)]
mod tests {
    use super::test_helper as helper;
    use super::*;

    fn ask(
        dir: &tempfile::TempDir,
        name: &str,
        timeout: Duration,
    ) -> Result<Option<Found>, HelperError> {
        get(name, "reg.lan:5000", Some(dir.path().as_os_str()), timeout)
    }

    #[test]
    fn answers_not_found_and_failures() {
        // The server URL arrives on stdin; the helper echoes it back as the user.
        let dir = helper(
            "echo",
            r#"[ "$1" = get ] || exit 3
read -r url
printf '{"ServerURL":"%s","Username":"u-%s","Secret":"s3cr:et"}\n' "$url" "$url""#,
        );
        let found = ask(&dir, "echo", TIMEOUT).unwrap().unwrap();
        assert_eq!(
            (found.username.as_str(), found.secret.as_str()),
            ("u-reg.lan:5000", "s3cr:et")
        );
        assert!(!format!("{found:?}").contains("s3cr"));

        let dir = helper("none", &format!("echo '{NOT_FOUND}'; exit 1"));
        assert!(ask(&dir, "none", TIMEOUT).unwrap().is_none());

        let dir = helper(
            "empty",
            r#"echo '{"ServerURL":"x","Username":"","Secret":""}'"#,
        );
        assert!(ask(&dir, "empty", TIMEOUT).unwrap().is_none());

        let dir = helper("broken", "echo 'keyring locked' >&2; exit 2");
        let err = ask(&dir, "broken", TIMEOUT).unwrap_err().to_string();
        assert!(
            err.contains("`docker-credential-broken get` failed")
                && err.contains("exit status: 2")
                && err.contains("keyring locked"),
            "{err}"
        );

        // A bad answer is reported without quoting it (it may hold the secret).
        let dir = helper("garbled", "echo 'Secret=hunter2'");
        let err = ask(&dir, "garbled", TIMEOUT).unwrap_err().to_string();
        assert!(
            err.contains("did not answer with its JSON credentials") && !err.contains("hunter2"),
            "{err}"
        );
    }

    #[test]
    fn missing_hung_and_bad_names() {
        let dir = helper("other", "exit 0");
        let err = ask(&dir, "absent", TIMEOUT).unwrap_err();
        assert!(matches!(err, HelperError::Missing { .. }), "{err}");
        assert!(err
            .to_string()
            .contains("`docker-credential-absent` is not installed"));

        let dir = helper("hung", "PATH=/usr/bin:/bin; exec sleep 30");
        let started = Instant::now();
        let err = ask(&dir, "hung", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, HelperError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(10));

        for bad in ["", "../bin/sh"] {
            let err = ask(&dir, bad, TIMEOUT).unwrap_err();
            assert!(matches!(err, HelperError::BadName(_)), "{err}");
        }
    }

    #[test]
    fn runs_with_the_path_it_was_found_in() {
        let dir = helper("path", r#"printf '{"Username":"%s","Secret":"x"}' "$PATH""#);
        let found = ask(&dir, "path", TIMEOUT).unwrap().unwrap();
        assert_eq!(found.username, dir.path().to_str().unwrap());
    }
}
