//! A registry token server for tests, as Docker Hub's `auth.docker.io`: `GET /token?scope=…&service=…`,
//! with or without HTTP basic credentials, answers `{"token": JWT}` signed ES256 by a key
//! whose self-signed certificate the registry trusts (`rootcertbundle`), the certificate
//! itself riding in the JWT's `x5c` header. Anonymous callers may pull anything except
//! `private/…`; known users may pull and push everything; unknown credentials get 401.
//! It listens on loopback only and records every request it answered.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `service` the registry names in its challenge and expects as the token's audience.
pub const SERVICE: &str = "kiln-test-registry";
/// The token's issuer, which the registry is configured to trust.
pub const ISSUER: &str = "kiln-test-token-server";

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// The user whose credentials came with it; `None` for anonymous requests.
    pub user: Option<String>,
    /// The `scope` asked for, e.g. `repository:kiln/test:pull`.
    pub scope: String,
    /// HTTP status answered.
    pub status: u16,
}

/// The running server; stopped on drop.
pub struct TokenServer {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The signing key's self-signed certificate, PEM (the registry's `rootcertbundle`).
    pub cert_pem: String,
    log: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the serving thread needs.
struct Issuer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    users: Vec<(String, String)>,
    log: Arc<Mutex<Vec<TokenRequest>>>,
}

impl TokenServer {
    /// Starts a server that knows `users` (`(name, password)`).
    pub fn start(users: &[(&str, &str)]) -> TokenServer {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("generating a P-256 key");
        let key =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let rc_key = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen reads the key");
        let cert = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
            .unwrap()
            .self_signed(&rc_key)
            .expect("self-signing the token certificate");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let issuer = Issuer {
            key,
            cert_der: cert.der().to_vec(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            log: log.clone(),
        };
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    issuer.serve(stream);
                }
            }
        });
        TokenServer {
            addr,
            cert_pem: cert.pem(),
            log,
            stop,
            thread: Some(thread),
        }
    }

    /// The URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = TcpStream::connect(&self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Issuer {
    /// Answers one request on `stream` and closes it.
    fn serve(&self, stream: TcpStream) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let Some((target, authorization)) = read_head(&stream) else {
            return;
        };
        let (status, body) = self.answer(&target, authorization.as_deref());
        let reason = if status == 200 { "OK" } else { "Unauthorized" };
        let mut stream = stream;
        let _ = write!(
            stream,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    /// The status and JSON body for `GET target`.
    fn answer(&self, target: &str, authorization: Option<&str>) -> (u16, String) {
        let query = target.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| percent_decode(v))
        };
        let scope = param("scope").unwrap_or_default();
        let user = authorization.and_then(basic_user);
        let known = user
            .as_ref()
            .is_some_and(|(u, p)| self.users.iter().any(|(ku, kp)| ku == u && kp == p));
        let name = user.as_ref().map(|(u, _)| u.clone());
        let (status, body) = if user.is_some() && !known {
            (
                401,
                r#"{"details":"incorrect username or password"}"#.to_string(),
            )
        } else {
            let token = self.token(
                name.as_deref(),
                &param("service").unwrap_or_default(),
                &scope,
            );
            (
                200,
                serde_json::json!({ "token": token, "access_token": token, "expires_in": 300 })
                    .to_string(),
            )
        };
        self.log.lock().unwrap().push(TokenRequest {
            user: name,
            scope,
            status,
        });
        (status, body)
    }

    /// A signed JWT granting what `user` may do of what `scope` asks.
    fn token(&self, user: Option<&str>, service: &str, scope: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let access: Vec<serde_json::Value> = scope
            .split(' ')
            .filter_map(|one| granted(user.is_some(), one))
            .collect();
        let header = serde_json::json!({ "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&self.cert_der)] });
        let claims = serde_json::json!({
            "iss": ISSUER, "sub": user.unwrap_or(""), "aud": service,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", self.log.lock().unwrap().len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .unwrap();
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// The access entry granted for one `type:name:actions` scope, if any action is granted.
fn granted(known_user: bool, scope: &str) -> Option<serde_json::Value> {
    let (kind, rest) = scope.split_once(':')?;
    let (name, actions) = rest.rsplit_once(':')?;
    let allowed: Vec<&str> = actions
        .split(',')
        .filter(|a| match *a {
            "pull" => known_user || !name.starts_with("private/"),
            "push" => known_user,
            _ => false,
        })
        .collect();
    (!allowed.is_empty())
        .then(|| serde_json::json!({ "type": kind, "name": name, "actions": allowed }))
}

/// The request target and `Authorization` header of an HTTP/1.1 request without a body.
fn read_head(stream: &TcpStream) -> Option<(String, Option<String>)> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    let mut authorization = None;
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.trim().to_string());
            }
        }
    }
    Some((target, authorization))
}

/// `Basic base64(user:password)` → (user, password).
fn basic_user(authorization: &str) -> Option<(String, String)> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Decodes `%XX` escapes and `+` (a space in query strings).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
