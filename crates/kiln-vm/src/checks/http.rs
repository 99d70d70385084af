//! "GET PATH on port P answers STATUS (with BODY in it)", over a hand-written
//! HTTP/1.0 request: no client library, no proxies, no redirects followed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{excerpt, forwarded, port, vm_gone, Retry};
use crate::qemu::Vm;

/// The most of a response that is read.
const MAX_RESPONSE: usize = 1 << 20;

/// The least time a request gets to be answered, even near the deadline.
const MIN_ANSWER_TIME: Duration = Duration::from_millis(300);

/// A parsed HTTP response.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

pub(super) fn check(
    vm: &Vm,
    guest: u16,
    path: &str,
    status: u16,
    body: Option<&str>,
    deadline: Instant,
) -> Result<String, String> {
    let host = forwarded(vm, guest)?;
    let path = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/{path}")
    };
    let url = format!("http://127.0.0.1:{host}{path} (guest port {guest})");
    let expected = match body {
        Some(b) => format!("status {status} and a body containing {b:?}"),
        None => format!("status {status}"),
    };
    let mut retry = Retry::new(deadline);
    loop {
        let seen = match port::connect_accepted(vm, guest, host, &retry)
            .and_then(|stream| request(stream, host, &path, retry.left().max(MIN_ANSWER_TIME)))
        {
            Ok(response) if matches(&response, status, body) => {
                return Ok(format!(
                    "GET {url} answered status {} with {} bytes",
                    response.status,
                    response.body.len()
                ))
            }
            Ok(response) => format!(
                "status {}, body {}",
                response.status,
                excerpt(&response.body, 300)
            ),
            Err(why) => why,
        };
        if let Some(gone) = vm_gone(vm) {
            return Err(gone);
        }
        if !retry.pause() {
            return Err(format!(
                "GET {url}: expected {expected} within {:.1}s; last answer: {seen}",
                retry.waited().as_secs_f64()
            ));
        }
    }
}

fn matches(response: &Response, status: u16, body: Option<&str>) -> bool {
    response.status == status
        && body.is_none_or(|b| String::from_utf8_lossy(&response.body).contains(b))
}

/// Sends the request on a connection the guest accepted and reads the answer.
fn request(
    mut stream: TcpStream,
    host: u16,
    path: &str,
    timeout: Duration,
) -> Result<Response, String> {
    let io = |doing: &str, e: std::io::Error| match e.kind() {
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
            format!("no answer within {:.1}s", timeout.as_secs_f64())
        }
        _ => format!("{doing} failed: {e}"),
    };
    let deadline = Instant::now() + timeout;
    stream
        .set_write_timeout(Some(timeout))
        .map_err(|e| io("socket setup", e))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{host}\r\nUser-Agent: kiln-test\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| io("sending the request", e))?;
    let raw = read_response(&mut stream, deadline).map_err(|e| io("reading the response", e))?;
    parse_response(&raw)
}

/// Reads until EOF, the declared Content-Length, or [`MAX_RESPONSE`]; fails
/// with `TimedOut` at `deadline`.
fn read_response(stream: &mut TcpStream, deadline: Instant) -> std::io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            // A reset after a complete response is still a response.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset && !raw.is_empty() => 0,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(raw);
        }
        raw.extend_from_slice(&buf[..n]);
        if raw.len() >= MAX_RESPONSE || complete(&raw) {
            return Ok(raw);
        }
    }
}

/// True when `raw` holds the headers and as much body as Content-Length says.
fn complete(raw: &[u8]) -> bool {
    let Some(split) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]);
    content_length(&head).is_some_and(|len| raw.len() - (split + 4) >= len)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())?
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Parses a status line, headers and body (the body is what follows the
/// headers, cut to Content-Length when one is given).
pub(super) fn parse_response(raw: &[u8]) -> Result<Response, String> {
    if raw.is_empty() {
        return Err("the connection closed without an answer (is the server up?)".into());
    }
    let (head, body) = match find(raw, b"\r\n\r\n") {
        Some(i) => (&raw[..i], &raw[i + 4..]),
        None => match find(raw, b"\n\n") {
            Some(i) => (&raw[..i], &raw[i + 2..]),
            None => (raw, &[][..]),
        },
    };
    let head = String::from_utf8_lossy(head);
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/")
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP response: {}", excerpt(raw, 120)))?;
    let body = match content_length(&head) {
        Some(len) if len < body.len() => &body[..len],
        _ => body,
    };
    Ok(Response {
        status,
        body: body.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhelloEXTRA";
        let r = parse_response(raw).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hello");
        assert!(complete(raw));
        assert!(!complete(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel"
        ));
    }

    #[test]
    fn body_without_length_runs_to_the_end() {
        let r = parse_response(b"HTTP/1.0 404 Not Found\r\n\r\nnope").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
    }

    #[test]
    fn garbage_and_empty_answers_are_explained() {
        assert!(parse_response(b"")
            .unwrap_err()
            .contains("closed without an answer"));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("not an HTTP response"));
    }

    #[test]
    fn matching_needs_status_and_body() {
        let r = Response {
            status: 200,
            body: b"<h1>Cloudy</h1>".to_vec(),
        };
        assert!(matches(&r, 200, Some("Cloudy")));
        assert!(matches(&r, 200, None));
        assert!(!matches(&r, 200, Some("Sunny")));
        assert!(!matches(&r, 404, Some("Cloudy")));
    }

    #[test]
    fn talks_http_to_a_local_server() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let n = conn.read(&mut req).unwrap();
            assert!(req[..n].starts_with(b"GET /x HTTP/1.0\r\n"));
            conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
        });
        let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let r = request(stream, port, "/x", Duration::from_secs(10)).unwrap();
        assert_eq!((r.status, r.body.as_slice()), (201, &b"ok"[..]));
        server.join().unwrap();
    }
}
