//! A minimal client for QEMU's control protocol (QMP): line-delimited JSON over
//! a Unix socket. Commands get an `id`; asynchronous events are skipped.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::{Result, VmError};

/// A connected, negotiated QMP session.
pub(super) struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Qmp {
    /// Reads the greeting and leaves capabilities negotiation mode.
    pub fn handshake(stream: UnixStream, timeout: Duration) -> Result<Qmp> {
        let failed = |detail: String| VmError::Qmp {
            doing: "connecting".into(),
            detail,
        };
        stream
            .set_read_timeout(Some(timeout))
            .map_err(|e| failed(e.to_string()))?;
        let writer = stream.try_clone().map_err(|e| failed(e.to_string()))?;
        let mut qmp = Qmp {
            reader: BufReader::new(stream),
            writer,
            next_id: 0,
        };
        let greeting = qmp.read_message("reading the greeting")?;
        if greeting.get("QMP").is_none() {
            return Err(failed(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Sets how long a command may take to answer.
    pub fn set_timeout(&mut self, timeout: Duration) -> Result<()> {
        self.reader
            .get_ref()
            .set_read_timeout(Some(timeout))
            .map_err(|e| VmError::Qmp {
                doing: "configuring the socket".into(),
                detail: e.to_string(),
            })
    }

    /// Runs `command` and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "execute": command, "id": id });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let doing = format!("running {command}");
        let mut line = request.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(|e| VmError::Qmp {
                doing: doing.clone(),
                detail: e.to_string(),
            })?;
        loop {
            let reply = self.read_message(&doing)?;
            if reply.get("id").and_then(Value::as_u64) != Some(id) {
                continue; // an event, or a reply to an abandoned command
            }
            if let Some(error) = reply.get("error") {
                return Err(VmError::Qmp {
                    doing,
                    detail: error.to_string(),
                });
            }
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }

    /// Runs a human monitor command (HMP) and returns its text output.
    pub fn human(&mut self, command_line: &str) -> Result<String> {
        let args = json!({ "command-line": command_line });
        let reply = self.execute("human-monitor-command", Some(args))?;
        Ok(reply.as_str().unwrap_or_default().to_string())
    }

    fn read_message(&mut self, doing: &str) -> Result<Value> {
        let failed = |detail: String| VmError::Qmp {
            doing: doing.to_string(),
            detail,
        };
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err(failed("QEMU closed the socket".into())),
            Ok(_) => {
                serde_json::from_str(&line).map_err(|e| failed(format!("bad JSON {line:?}: {e}")))
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }
}

/// One TCP socket of QEMU's user-mode network stack, from `info usernet`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestSocket {
    /// The TCP state of the guest side (`ESTABLISHED`, `SYN_SENT`, …), or
    /// `HOST_FORWARD` for a listening forward.
    pub state: String,
    /// The host file descriptor: tells sockets apart.
    pub fd: i64,
    /// For forwards and forwarded connections: the host (loopback) port.
    pub host_port: u16,
    /// The guest port.
    pub guest_port: u16,
}

/// Parses `info usernet`, keeping TCP sockets only.
///
/// ```text
///   Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
///   TCP[HOST_FORWARD]  11       127.0.0.1 33113       10.0.2.15    80     0     0
///   TCP[ESTABLISHED]   19       127.0.0.1 33113       10.0.2.15    80     0     0
///   UDP[236 sec]       …
/// ```
pub(super) fn parse_usernet(text: &str) -> Vec<GuestSocket> {
    text.lines().filter_map(parse_usernet_line).collect()
}

fn parse_usernet_line(line: &str) -> Option<GuestSocket> {
    let line = line.trim_start().strip_prefix("TCP[")?;
    let (state, rest) = line.split_once(']')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fd, source address, source port, destination address, destination port, queues
    if fields.len() < 5 {
        return None;
    }
    Some(GuestSocket {
        state: state.to_string(),
        fd: fields[0].parse().ok()?,
        host_port: fields[2].parse().ok()?,
        guest_port: fields[4].parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Hub -1 (#net098):
  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ
  TCP[ESTABLISHED]   20       127.0.0.1 40551       10.0.2.15  7777     0     0
  TCP[SYN_SENT]      15       127.0.0.1 33113       10.0.2.15    80     0     0
  TCP[HOST_FORWARD]  11       127.0.0.1 33113       10.0.2.15    80     0     0
  UDP[236 sec]       12               * 50000       10.0.2.15    53     0     0
";

    #[test]
    fn parses_tcp_sockets() {
        let sockets = parse_usernet(SAMPLE);
        assert_eq!(sockets.len(), 3);
        assert_eq!(
            sockets[0],
            GuestSocket {
                state: "ESTABLISHED".into(),
                fd: 20,
                host_port: 40551,
                guest_port: 7777
            }
        );
        assert_eq!(sockets[2].state, "HOST_FORWARD");
        assert_eq!((sockets[2].host_port, sockets[2].guest_port), (33113, 80));
    }

    #[test]
    fn handshake_and_commands_over_a_socket_pair() {
        let (client, server) = UnixStream::pair().unwrap();
        let fake = std::thread::spawn(move || {
            let mut reader = BufReader::new(server.try_clone().unwrap());
            let mut server = server;
            server
                .write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            let mut line = String::new();
            for reply in [
                "{\"return\": {}, \"id\": 1}\n".to_string(),
                // an event arrives before the reply
                "{\"event\": \"NIC_RX_FILTER_CHANGED\"}\n{\"return\": \"usernet text\", \"id\": 2}\n"
                    .to_string(),
                "{\"error\": {\"class\": \"GenericError\", \"desc\": \"nope\"}, \"id\": 3}\n"
                    .to_string(),
            ] {
                line.clear();
                reader.read_line(&mut line).unwrap();
                assert!(line.contains("\"execute\""));
                server.write_all(reply.as_bytes()).unwrap();
            }
        });
        let mut qmp = Qmp::handshake(client, Duration::from_secs(10)).unwrap();
        assert_eq!(qmp.human("info usernet").unwrap(), "usernet text");
        let err = qmp.execute("bogus", None).unwrap_err().to_string();
        assert!(err.contains("nope") && err.contains("bogus"), "{err}");
        fake.join().unwrap();
    }
}
