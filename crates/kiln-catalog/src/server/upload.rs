//! `PUT /api/images/ID`: an image and its signed metadata, checked before it becomes
//! visible. In order: the bearer token; the id in the path (64 hex digits: nothing else
//! can name a path); the metadata (canonical, safe file name, for that id); the signature
//! by a trusted endorser; not expired; not already present; the declared size within the
//! limit and equal to the metadata's; then the body is streamed into `DATA/tmp/`, hashed on
//! the way, and only when its size, SHA-256 and SHA-512 match is the entry assembled and
//! renamed into `entries/`. Any failure, a dropped connection or an idle client removes the
//! temporary file (and a killed server's are removed at its next start).

use super::{authorize, canonical_differs, decode_b64, load_trust, ApiError, Shared};
use crate::catalog::ImageSource;
use crate::metadata::{is_hex, Metadata};
use crate::verify::verify_metadata;
use axum::body::Body;
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use futures_util::StreamExt;
use sha2::{Digest, Sha256, Sha512};
use std::path::PathBuf;
use tokio::io::AsyncWriteExt;

/// Refuses anything but a full lowercase sha256 id (so `..`, slashes, encoded
/// separators and the like never reach the filesystem).
pub(crate) fn check_id(id: &str) -> Result<(), ApiError> {
    if is_hex(id, 64) {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "{:?} is not an image id: uploads name the image by its sha256 (64 lowercase hex digits)",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Removes the file when dropped (a failed or abandoned upload).
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the pre-body checks accepted.
struct Accepted {
    meta: Metadata,
    meta_bytes: Vec<u8>,
    signature: String,
}

/// Every check that needs no body: token, id, metadata, signature, endorser, validity,
/// presence, size.
fn precheck(state: &Shared, id: &str, headers: &HeaderMap) -> Result<Accepted, ApiError> {
    authorize(state, headers)?;
    check_id(id)?;
    let header_text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ApiError::bad(format!("missing header {name} (base64)")))
    };
    let meta_bytes = decode_b64("Kiln-Metadata", header_text("kiln-metadata")?)?;
    let signature = String::from_utf8(decode_b64(
        "Kiln-Signature",
        header_text("kiln-signature")?,
    )?)
    .map_err(|_| ApiError::bad("the signature is not text"))?;
    let meta = Metadata::parse(&meta_bytes).map_err(|e| ApiError::bad(e.to_string()))?;
    if meta.id != id {
        return Err(ApiError::bad(format!(
            "the metadata describes image {}, the upload is for {id}",
            meta.id
        )));
    }
    if canonical_differs(&meta, &meta_bytes) {
        return Err(ApiError::bad(
            "the metadata is not in canonical form (sorted keys, no spaces, final newline)",
        ));
    }
    let trust = load_trust(state)?;
    verify_metadata(&meta, &meta_bytes, &signature, &trust, Utc::now(), false)?;
    if state.catalog.entries_dir().join(id).exists() {
        return Err(ApiError(
            StatusCode::CONFLICT,
            format!("image {id} is already here; change its metadata with PUT /api/images/{id}/metadata"),
        ));
    }
    if meta.bytes > state.max_upload {
        return Err(ApiError(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the image is {} bytes; this marketplace takes at most {}",
                meta.bytes, state.max_upload
            ),
        ));
    }
    Ok(Accepted {
        meta,
        meta_bytes,
        signature,
    })
}

/// `POST /api/images/ID/check`: the upload's checks without its body, so that a client
/// learns why an upload would be refused before sending gigabytes.
pub(crate) async fn check(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let accepted = precheck(&state, &id, &headers)?;
    Ok(Json(serde_json::json!({ "id": accepted.meta.id, "acceptable": true })).into_response())
}

pub(crate) async fn upload(
    State(state): State<Shared>,
    UrlPath(id): UrlPath<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Accepted {
        meta,
        meta_bytes,
        signature,
    } = precheck(&state, &id, &headers)?;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared {
        if len > state.max_upload {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is {len} bytes; this marketplace takes at most {}",
                    state.max_upload
                ),
            ));
        }
        if len != meta.bytes {
            return Err(ApiError::bad(format!(
                "the body is {len} bytes, the metadata says the image is {}",
                meta.bytes
            )));
        }
    }
    let tmp_path = state.catalog.tmp_name(&format!("upload-{}", &id[..16]));
    let mut tmp = TempFile(Some(tmp_path.clone()));
    let mut file = tokio::fs::File::create(&tmp_path)
        .await
        .map_err(|e| internal(format!("{}: {e}", tmp_path.display())))?;
    let (mut sha256, mut sha512) = (Sha256::new(), Sha512::new());
    let mut received: u64 = 0;
    let mut stream = body.into_data_stream();
    loop {
        let chunk = match tokio::time::timeout(state.body_idle_timeout, stream.next()).await {
            Err(_) => {
                return Err(ApiError(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the client sent nothing for {} s",
                        state.body_idle_timeout.as_secs()
                    ),
                ))
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ApiError::bad(format!("reading the upload: {e}"))),
            Ok(Some(Ok(chunk))) => chunk,
        };
        received += chunk.len() as u64;
        if received > meta.bytes || received > state.max_upload {
            return Err(ApiError(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the body is longer than the {} bytes the metadata announces",
                    meta.bytes
                ),
            ));
        }
        sha256.update(&chunk);
        sha512.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(format!("{}: {e}", tmp_path.display())))?;
    }
    if received != meta.bytes {
        return Err(ApiError::bad(format!(
            "the body ended after {received} bytes, the metadata says {}",
            meta.bytes
        )));
    }
    let (got256, got512) = (
        hex::encode(sha256.finalize()),
        hex::encode(sha512.finalize()),
    );
    if got256 != meta.checksums.sha256 || got512 != meta.checksums.sha512 {
        return Err(ApiError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "checksum refused: the uploaded bytes have sha256 {got256}, the metadata says {}",
                meta.checksums.sha256
            ),
        ));
    }
    file.sync_all()
        .await
        .map_err(|e| internal(format!("{}: {e}", tmp_path.display())))?;
    drop(file);
    let catalog = state.catalog.clone();
    let staged = tmp_path.clone();
    let put = tokio::task::spawn_blocking(move || {
        catalog.put(&meta, &meta_bytes, &signature, ImageSource::Move(&staged))
    })
    .await
    .map_err(|e| internal(e.to_string()))?;
    let entry = put?;
    tmp.0 = None;
    tracing::info!("uploaded {} ({})", entry.metadata.id, entry.metadata.title);
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": entry.metadata.id,
            "short_id": entry.metadata.short_id,
        })),
    )
        .into_response())
}

fn internal(msg: String) -> ApiError {
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg)
}
