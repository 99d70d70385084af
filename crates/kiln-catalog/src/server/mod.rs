//! The marketplace server (`kiln serve`): a JSON API and a web page over a catalogue
//! directory (the layout of [`crate::catalog`]), on axum/hyper with tokio.
//!
//! | method and path | what |
//! |---|---|
//! | `GET /` | the web page: images, validity, search form, copyable pull commands |
//! | `GET /api/images?q=&os=&arch=&endorser=&include_expired=1` | search (JSON) |
//! | `GET /api/images/REF` | the metadata, exactly the signed bytes (REF: id, 8+ hex prefix, short id) |
//! | `GET /api/images/ID/signature` | its minisign signature |
//! | `GET /api/images/ID/download` | the image; HTTP Range requests resume a transfer |
//! | `PUT /api/images/ID` | upload (bearer token): body = image, headers `Kiln-Metadata`, `Kiln-Signature` (base64) |
//! | `POST /api/images/ID/check` | the upload's checks without the body (same headers) |
//! | `PUT /api/images/ID/metadata` | new metadata by the same endorser (deprecation): JSON `{metadata, signature}` (base64) |
//! | `DELETE /api/images/ID` | removal by the endorser: headers `Kiln-Delete: UNIX_TIME`, `Kiln-Signature` over `kiln-delete ID UNIX_TIME\n` |
//! | `GET /healthz` | `ok` |
//!
//! Uploads are checked before they become visible ([`upload`]); every connection has a
//! header timeout and a header size limit, and upload bodies an idle timeout, so slow or
//! broken clients cost a task each and nothing else.

mod page;
mod upload;

use crate::catalog::{Catalog, Entry};
use crate::metadata::{Filter, Metadata};
use crate::trust::Trust;
use crate::verify::verify_metadata;
use crate::CatalogError;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use base64::Engine;
use chrono::Utc;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Default largest accepted upload: 16 GiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 16 << 30;
/// How long a client may take to send its request headers (default).
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head (request line + headers) hyper buffers; more gets HTTP 431.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long an upload may send nothing before it is dropped and its temp file removed
/// (default).
const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Age within which a signed delete request is accepted (against replays).
const DELETE_WINDOW_SECS: i64 = 300;

/// The server's settings (`--config FILE`, JSON; command-line flags override).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Bearer token uploads, updates and deletions must present. None: read-only server.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the token (first line), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Endorser public keys accepted for uploads (default `DATA/trust`).
    #[serde(default)]
    pub trust_dir: Option<PathBuf>,
    /// Largest upload in bytes.
    #[serde(default)]
    pub max_upload_bytes: Option<u64>,
    /// Base URL shown in pull commands (default: from the request's Host header).
    #[serde(default)]
    pub public_url: Option<String>,
    /// Seconds a client may take to send its request headers (default 30).
    #[serde(default)]
    pub header_timeout_secs: Option<u64>,
    /// Seconds an upload may send nothing before it is dropped (default 60).
    #[serde(default)]
    pub body_idle_timeout_secs: Option<u64>,
}

impl Config {
    /// Reads a JSON config file.
    pub fn load(path: &Path) -> Result<Config, CatalogError> {
        let text = std::fs::read(path).map_err(|e| CatalogError::io(path, e))?;
        serde_json::from_slice(&text).map_err(|e| {
            CatalogError::Usage(format!(
                "{}: not a kiln serve config ({e}); keys: token, token_file, trust_dir, \
                 max_upload_bytes, public_url, header_timeout_secs, body_idle_timeout_secs",
                path.display()
            ))
        })
    }
}

/// Everything a request handler needs.
pub(crate) struct AppState {
    pub catalog: Catalog,
    pub trust_dir: PathBuf,
    pub token: Option<String>,
    pub max_upload: u64,
    pub public_url: Option<String>,
    pub header_timeout: Duration,
    pub body_idle_timeout: Duration,
}

type Shared = Arc<AppState>;

/// An API error: an HTTP status and a message, sent as `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError(pub StatusCode, pub String);

impl ApiError {
    pub fn bad(msg: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.1 });
        (self.0, Json(body)).into_response()
    }
}

impl From<CatalogError> for ApiError {
    fn from(e: CatalogError) -> ApiError {
        let status = match &e {
            CatalogError::NotFound(_) => StatusCode::NOT_FOUND,
            CatalogError::Usage(_) => StatusCode::BAD_REQUEST,
            CatalogError::Metadata(_) => StatusCode::BAD_REQUEST,
            CatalogError::Signature(_) | CatalogError::Endorser(_) => StatusCode::FORBIDDEN,
            CatalogError::Checksum(_) | CatalogError::Expired(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError(status, e.to_string())
    }
}

/// A running server's address, known once it listens.
pub struct Bound {
    pub listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// Prepares the data directory (removing what interrupted uploads left) and binds.
pub async fn bind(listen: &str) -> Result<Bound, CatalogError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CatalogError::Usage(format!("cannot listen on {listen}: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CatalogError::Usage(format!("{listen}: {e}")))?;
    Ok(Bound { listener, addr })
}

/// A data directory made ready to serve: what interrupted uploads left is removed, the
/// token read, the trust directory made.
pub struct Prepared(Shared);

/// Prepares `data` with `config` (before the server announces its address, so that a
/// client never sees the state from before the cleanup).
pub fn prepare(data: &Path, config: Config) -> Result<Prepared, CatalogError> {
    let catalog = Catalog::open(data)?;
    let token = match (&config.token, &config.token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| CatalogError::io(f, e))?;
            Some(text.lines().next().unwrap_or("").trim().to_string())
        }
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    let trust_dir = config
        .trust_dir
        .clone()
        .unwrap_or_else(|| data.join("trust"));
    std::fs::create_dir_all(&trust_dir).map_err(|e| CatalogError::io(&trust_dir, e))?;
    Ok(Prepared(Arc::new(AppState {
        catalog,
        trust_dir,
        token,
        max_upload: config.max_upload_bytes.unwrap_or(DEFAULT_MAX_UPLOAD),
        public_url: config.public_url.clone(),
        header_timeout: config
            .header_timeout_secs
            .map_or(HEADER_TIMEOUT, Duration::from_secs),
        body_idle_timeout: config
            .body_idle_timeout_secs
            .map_or(BODY_IDLE_TIMEOUT, Duration::from_secs),
    })))
}

impl Prepared {
    /// Whether uploads, updates and deletions are possible (a token is configured).
    pub fn writable(&self) -> bool {
        self.0.token.is_some()
    }
}

/// Serves on `bound` until the process ends.
pub async fn serve(bound: Bound, prepared: Prepared) {
    raise_fd_limit();
    let header_timeout = prepared.0.header_timeout;
    accept_loop(bound.listener, router(prepared.0), header_timeout).await;
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/", get(page::index))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/images", get(search))
        .route(
            "/api/images/{reference}",
            get(metadata).put(upload::upload).delete(delete),
        )
        .route("/api/images/{id}/signature", get(signature))
        .route("/api/images/{id}/download", get(download))
        .route("/api/images/{id}/metadata", put(update_metadata))
        .route("/api/images/{id}/check", post(upload::check))
        .with_state(state)
}

/// Accepts connections forever; each is served by hyper's HTTP/1 with a header timeout
/// and a header size limit (axum's own `serve` sets neither).
async fn accept_loop(listener: tokio::net::TcpListener, app: Router, header_timeout: Duration) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use tower::Service;
    loop {
        let (stream, _peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait for connections to close.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move { app.call(req.map(Body::new)).await }
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES);
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

/// Many concurrent downloads each hold a socket and a file: use the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Reads the whole catalogue on a blocking thread.
async fn entries(state: &Shared) -> Result<Vec<Entry>, ApiError> {
    let catalog = state.catalog.clone();
    let (entries, broken) = tokio::task::spawn_blocking(move || catalog.list())
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    for b in broken {
        tracing::warn!("unreadable entry: {b}");
    }
    Ok(entries)
}

async fn resolve(state: &Shared, reference: String) -> Result<Entry, ApiError> {
    let catalog = state.catalog.clone();
    Ok(
        tokio::task::spawn_blocking(move || catalog.resolve(&reference))
            .await
            .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??,
    )
}

/// The filter a query string asks for (`include_expired` is on for `1`, `true`, `on`).
pub(crate) fn filter_from_query(query: &HashMap<String, String>) -> Filter {
    let get = |k: &str| query.get(k).cloned().filter(|v| !v.trim().is_empty());
    Filter {
        q: get("q"),
        os: get("os"),
        arch: get("arch"),
        endorser: get("endorser"),
        include_expired: query
            .get("include_expired")
            .is_some_and(|v| matches!(v.as_str(), "1" | "true" | "on" | "yes")),
    }
}

/// The base URL clients reach this server at.
pub(crate) fn base_url(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(url) = &state.public_url {
        return url.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn listing(m: &Metadata, base: &str) -> serde_json::Value {
    let mut v = serde_json::to_value(m).unwrap_or_default();
    v["validity"] = m.validity(Utc::now()).as_str().into();
    v["download"] = format!("{base}/api/images/{}/download", m.id).into();
    v["pull"] = format!("kiln image pull {base}/{}", m.short_id).into();
    v
}

async fn search(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let filter = filter_from_query(&query);
    let now = Utc::now();
    let base = base_url(&state, &headers);
    let images: Vec<serde_json::Value> = entries(&state)
        .await?
        .iter()
        .filter(|e| e.image.is_some() && filter.matches(&e.metadata, now))
        .map(|e| listing(&e.metadata, &base))
        .collect();
    Ok(Json(serde_json::json!({ "images": images })).into_response())
}

async fn metadata(
    State(state): State<Shared>,
    UrlPath(reference): UrlPath<String>,
) -> Result<Response, ApiError> {
    let entry = resolve(&state, reference).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        entry.metadata_bytes,
    )
        .into_response())
}

async fn signature(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let entry = resolve(&state, id).await?;
    Ok(([(header::CONTENT_TYPE, "text/plain")], entry.signature).into_response())
}

async fn download(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    request: Request,
) -> Result<Response, ApiError> {
    use tower::ServiceExt;
    let entry = resolve(&state, id).await?;
    let image = entry.image.ok_or_else(|| {
        ApiError(
            StatusCode::NOT_FOUND,
            format!(
                "the marketplace holds only the metadata of {}",
                entry.metadata.id
            ),
        )
    })?;
    // tower-http's ServeFile streams from the open file and answers Range and If-Range.
    let mut response = tower_http::services::ServeFile::new(&image)
        .oneshot(request)
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map(Body::new);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", entry.metadata.id)) {
        headers.insert(header::ETAG, v);
    }
    // `file` passed is_safe_file_name: no quotes or separators to escape.
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"{}\"", entry.metadata.file))
    {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

/// Checks `Authorization: Bearer TOKEN` against the configured token.
pub(crate) fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            "this marketplace accepts no changes: its config sets no token".into(),
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(g) if constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
        Some(_) => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "wrong bearer token".into(),
        )),
        None => Err(ApiError(
            StatusCode::UNAUTHORIZED,
            "missing `Authorization: Bearer TOKEN` (kiln: --token or $KILN_MARKETPLACE_TOKEN)"
                .into(),
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn load_trust(state: &AppState) -> Result<Trust, ApiError> {
    Trust::load(&state.trust_dir)
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

pub(crate) fn decode_b64(what: &str, text: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| ApiError::bad(format!("{what} is not base64: {e}")))
}

/// The body of `PUT /api/images/ID/metadata`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetadataUpdate {
    /// Base64 of the canonical metadata.
    metadata: String,
    /// Base64 of the minisign signature.
    signature: String,
}

async fn update_metadata(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    upload::check_id(&id)?;
    let update: MetadataUpdate = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad(format!(
            "the body is not the JSON {{\"metadata\", \"signature\"}} this call takes: {e}"
        ))
    })?;
    let bytes = decode_b64("metadata", &update.metadata)?;
    let sig = String::from_utf8(decode_b64("signature", &update.signature)?)
        .map_err(|_| ApiError::bad("the signature is not text"))?;
    let meta = Metadata::parse(&bytes).map_err(|e| ApiError::bad(e.to_string()))?;
    if meta.id != id {
        return Err(ApiError::bad(format!(
            "the metadata is for {}, not {id}",
            meta.id
        )));
    }
    let old = resolve(&state, id.clone()).await?;
    if old.metadata.endorser.key_id != meta.endorser.key_id {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "only the endorser's key {} may change this entry's metadata",
                old.metadata.endorser.key_id
            ),
        ));
    }
    if canonical_differs(&meta, &bytes) {
        return Err(ApiError::bad(
            "the metadata is not in canonical form (sorted keys, no spaces, final newline)",
        ));
    }
    let trust = load_trust(&state)?;
    verify_metadata(&meta, &bytes, &sig, &trust, Utc::now(), true)?;
    let catalog = state.catalog.clone();
    tokio::task::spawn_blocking(move || {
        catalog.put(&meta, &bytes, &sig, crate::catalog::ImageSource::None)
    })
    .await
    .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "id": id, "updated": true })),
    )
        .into_response())
}

pub(crate) fn canonical_differs(meta: &Metadata, bytes: &[u8]) -> bool {
    meta.canonical_json() != bytes
}

/// The text a delete request signs.
pub fn delete_statement(id: &str, unix_time: i64) -> String {
    format!("kiln-delete {id} {unix_time}\n")
}

async fn delete(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    upload::check_id(&id)?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ApiError::bad(format!("missing header {name}")))
    };
    let when: i64 = header_text("kiln-delete")?
        .trim()
        .parse()
        .map_err(|_| ApiError::bad("Kiln-Delete is not a UNIX time"))?;
    if (Utc::now().timestamp() - when).abs() > DELETE_WINDOW_SECS {
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!("the delete request was signed at {when}, more than {DELETE_WINDOW_SECS} s from now (check the clock)"),
        ));
    }
    let sig = String::from_utf8(decode_b64(
        "Kiln-Signature",
        &header_text("kiln-signature")?,
    )?)
    .map_err(|_| ApiError::bad("the signature is not text"))?;
    let entry = resolve(&state, id.clone()).await?;
    let trust = load_trust(&state)?;
    let key = trust.key(&entry.metadata.endorser.key_id).ok_or_else(|| {
        ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "the endorser's key {} is no longer trusted here",
                entry.metadata.endorser.key_id
            ),
        )
    })?;
    crate::sign::verify(&key.public, delete_statement(&id, when).as_bytes(), &sig).map_err(
        |e| {
            ApiError(
                StatusCode::FORBIDDEN,
                format!(
                    "only the endorser {} may delete this image: {e}",
                    entry.metadata.endorser.email
                ),
            )
        },
    )?;
    let catalog = state.catalog.clone();
    tokio::task::spawn_blocking(move || catalog.remove(&id))
        .await
        .map_err(|e| ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??;
    Ok((
        StatusCode::OK,
        Json(serde_json::json!({ "deleted": entry.metadata.id })),
    )
        .into_response())
}
