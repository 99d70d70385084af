//! The marketplace client: `kiln image push` and `pull` (and the endorser's remote
//! deprecate and delete). Pulls verify the signed metadata against the trust directory
//! *before* downloading, download into `partial/ID.part` with HTTP Range so that an
//! interrupted transfer resumes where it stopped, and verify the bytes before the entry
//! appears in the catalogue.

pub use crate::admit::Pulled;

use crate::admit::{admit_file, already_held, Offered};
use crate::catalog::{Catalog, Entry};
use crate::metadata::Metadata;
use crate::remote::{oci_elsewhere, parse_source, parse_target, Remote};
use crate::sign::SigningKey;
use crate::trust::Trust;
use crate::verify::{verify_image_file, verify_metadata};
use crate::CatalogError;
use base64::Engine;
use futures_util::StreamExt;
use reqwest::{header, StatusCode};
use std::path::Path;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Progress of a transfer: bytes done and total.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);

fn runtime() -> Result<tokio::runtime::Runtime, CatalogError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CatalogError::Remote(format!("starting the HTTP client: {e}")))
}

fn http() -> Result<reqwest::Client, CatalogError> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(15))
        .read_timeout(Duration::from_secs(120))
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| CatalogError::Remote(format!("setting up the HTTP client: {e}")))
}

fn net_err(url: &str, e: reqwest::Error) -> CatalogError {
    CatalogError::Remote(format!("{url}: {e}"))
}

/// Turns a non-success response into an error carrying the server's `{"error": …}`.
async fn check_status(
    url: &str,
    what: &str,
    resp: reqwest::Response,
) -> Result<reqwest::Response, CatalogError> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| text.trim().chars().take(300).collect());
    Err(CatalogError::Remote(format!(
        "{what} refused by the marketplace ({url}: HTTP {}): {message}",
        status.as_u16()
    )))
}

/// Pulls `source` into `catalog`, verified against `trust`.
pub fn pull(
    catalog: &Catalog,
    source: &str,
    trust: &Trust,
    allow_expired: bool,
    progress: Progress<'_>,
) -> Result<Pulled, CatalogError> {
    let (base, reference) = match parse_source(source)? {
        Remote::Oci(location) => return Err(oci_elsewhere(&location)),
        Remote::Marketplace { base, reference } => (base, reference.unwrap_or_default()),
    };
    runtime()?.block_on(pull_async(
        catalog,
        &base,
        &reference,
        trust,
        allow_expired,
        progress,
    ))
}

async fn pull_async(
    catalog: &Catalog,
    base: &str,
    reference: &str,
    trust: &Trust,
    allow_expired: bool,
    progress: Progress<'_>,
) -> Result<Pulled, CatalogError> {
    let client = http()?;
    let meta_url = format!("{base}/api/images/{reference}");
    let resp = client
        .get(&meta_url)
        .send()
        .await
        .map_err(|e| net_err(&meta_url, e))?;
    let meta_bytes = check_status(&meta_url, "the metadata request", resp)
        .await?
        .bytes()
        .await
        .map_err(|e| net_err(&meta_url, e))?
        .to_vec();
    let meta = Metadata::parse(&meta_bytes)
        .map_err(|e| CatalogError::Remote(format!("{meta_url}: {e}")))?;
    if !meta.is_named_by(reference) && meta.id != reference {
        return Err(CatalogError::Remote(format!(
            "{meta_url}: asked for {reference}, the marketplace answered with {}",
            meta.id
        )));
    }
    let sig_url = format!("{base}/api/images/{}/signature", meta.id);
    let resp = client
        .get(&sig_url)
        .send()
        .await
        .map_err(|e| net_err(&sig_url, e))?;
    let signature = check_status(&sig_url, "the signature request", resp)
        .await?
        .text()
        .await
        .map_err(|e| net_err(&sig_url, e))?;
    // Refuse an untrusted, tampered or expired image before downloading it.
    let verified = verify_metadata(
        &meta,
        &meta_bytes,
        &signature,
        trust,
        chrono::Utc::now(),
        allow_expired,
    )?;
    let offer = Offered {
        metadata_bytes: &meta_bytes,
        signature: &signature,
        origin: &meta_url,
    };
    if let Some(entry) = already_held(catalog, &meta, offer)? {
        return Ok(Pulled {
            entry,
            verified,
            resumed_from: 0,
            already_present: true,
        });
    }
    let part = catalog.partial_path(&meta.id);
    let resumed_from = download(&client, base, &meta, &part, progress).await?;
    let entry = admit_file(catalog, &meta, offer, &part)?;
    Ok(Pulled {
        entry,
        verified,
        resumed_from,
        already_present: false,
    })
}

/// Downloads the image into `part`, continuing after the bytes already there. Returns
/// how many bytes were kept from before.
async fn download(
    client: &reqwest::Client,
    base: &str,
    meta: &Metadata,
    part: &Path,
    progress: Progress<'_>,
) -> Result<u64, CatalogError> {
    let url = format!("{base}/api/images/{}/download", meta.id);
    // Held for the whole transfer: a second pull of the same image waits for nothing and
    // says so rather than appending to the same file.
    let guard = open_locked(part)?;
    let mut have = guard
        .metadata()
        .map_err(|e| CatalogError::io(part, e))?
        .len();
    if have > meta.bytes {
        have = 0;
    }
    let mut request = client.get(&url);
    if have > 0 {
        // If-Range: resume only if the server still serves the same bytes.
        request = request
            .header(header::RANGE, format!("bytes={have}-"))
            .header(header::IF_RANGE, format!("\"{}\"", meta.id));
    }
    let resp = request.send().await.map_err(|e| net_err(&url, e))?;
    let resp = if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE && have == meta.bytes {
        progress(have, meta.bytes);
        return Ok(have);
    } else {
        check_status(&url, "the download", resp).await?
    };
    let resumed_from = if resp.status() == StatusCode::PARTIAL_CONTENT {
        have
    } else {
        0
    };
    if resumed_from == 0 {
        guard.set_len(0).map_err(|e| CatalogError::io(part, e))?;
    }
    let mut file = tokio::fs::File::from_std(guard);
    let mut done = resumed_from;
    progress(done, meta.bytes);
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                let _ = file.flush().await;
                return Err(CatalogError::Remote(format!(
                    "{url}: the transfer broke off after {done} of {} bytes ({e}); run the same \
                     pull again to resume from there",
                    meta.bytes
                )));
            }
        };
        if done + chunk.len() as u64 > meta.bytes {
            drop(file);
            let _ = std::fs::remove_file(part);
            return Err(CatalogError::Checksum(format!(
                "{url}: the marketplace sent more than the {} bytes the metadata announces",
                meta.bytes
            )));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| CatalogError::io(part, e))?;
        done += chunk.len() as u64;
        progress(done, meta.bytes);
    }
    file.sync_all()
        .await
        .map_err(|e| CatalogError::io(part, e))?;
    if done != meta.bytes {
        return Err(CatalogError::Remote(format!(
            "{url}: the transfer ended after {done} of {} bytes; run the same pull again to \
             resume from there",
            meta.bytes
        )));
    }
    Ok(resumed_from)
}

/// Opens (creating) the partial download `part` for appending, under an
/// exclusive `flock`; fails at once when another pull holds it.
fn open_locked(part: &Path) -> Result<std::fs::File, CatalogError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(part)
        .map_err(|e| CatalogError::io(part, e))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(CatalogError::Usage(format!(
            "{}: another pull of this image is running; wait for it",
            part.display()
        )));
    }
    Ok(file)
}

/// Uploads `entry` (its image and signed metadata) to the marketplace `target`.
pub fn push(
    entry: &Entry,
    target: &str,
    token: &str,
    progress: Progress<'_>,
) -> Result<String, CatalogError> {
    let base = match parse_target(target)? {
        Remote::Oci(location) => return Err(oci_elsewhere(&location)),
        Remote::Marketplace { base, .. } => base,
    };
    let image = entry.image.as_deref().ok_or_else(|| {
        CatalogError::NotFound(format!(
            "the catalogue holds only the metadata of {}; pull the image first",
            entry.metadata.short_id
        ))
    })?;
    verify_image_file(&entry.metadata, image)?;
    runtime()?.block_on(push_async(entry, image, &base, token, progress))
}

async fn push_async(
    entry: &Entry,
    image: &Path,
    base: &str,
    token: &str,
    progress: Progress<'_>,
) -> Result<String, CatalogError> {
    let client = http()?;
    let b64 = base64::engine::general_purpose::STANDARD;
    let id = &entry.metadata.id;
    let headers = [
        ("kiln-metadata", b64.encode(&entry.metadata_bytes)),
        ("kiln-signature", b64.encode(entry.signature.as_bytes())),
    ];
    let check_url = format!("{base}/api/images/{id}/check");
    let mut check = client.post(&check_url).bearer_auth(token);
    for (k, v) in &headers {
        check = check.header(*k, v);
    }
    let resp = check.send().await.map_err(|e| net_err(&check_url, e))?;
    let url = format!("{base}/api/images/{id}");
    if resp.status() == StatusCode::CONFLICT {
        // Already there: the same metadata is nothing to do, newer metadata (a
        // deprecation, a re-endorsement) is sent as an update.
        let remote = client
            .get(&url)
            .send()
            .await
            .map_err(|e| net_err(&url, e))?;
        let remote = check_status(&url, "the metadata request", remote)
            .await?
            .bytes()
            .await
            .map_err(|e| net_err(&url, e))?;
        if remote.as_ref() != entry.metadata_bytes.as_slice() {
            send_metadata(&client, base, entry, token).await?;
        }
        progress(entry.metadata.bytes, entry.metadata.bytes);
        return Ok(format!("{base}/{}", entry.metadata.short_id));
    }
    check_status(&check_url, "the upload", resp).await?;
    let file = tokio::fs::File::open(image)
        .await
        .map_err(|e| CatalogError::io(image, e))?;
    let total = entry.metadata.bytes;
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = sent.clone();
    let stream = tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(move |chunk| {
        if let Ok(c) = &chunk {
            counter.fetch_add(c.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        chunk
    });
    let mut put = client
        .put(&url)
        .bearer_auth(token)
        .header(header::CONTENT_LENGTH, total)
        .body(reqwest::Body::wrap_stream(stream));
    for (k, v) in &headers {
        put = put.header(*k, v);
    }
    let send = put.send();
    tokio::pin!(send);
    let resp = loop {
        tokio::select! {
            r = &mut send => break r,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                progress(sent.load(std::sync::atomic::Ordering::Relaxed), total);
            }
        }
    };
    let resp = resp.map_err(|e| net_err(&url, e))?;
    progress(total, total);
    check_status(&url, "the upload", resp).await?;
    Ok(format!("{base}/{}", entry.metadata.short_id))
}

/// Sends an entry's new metadata (after a deprecation) to the marketplace at `target`.
pub fn update_metadata(entry: &Entry, target: &str, token: &str) -> Result<(), CatalogError> {
    let base = match parse_target(target)? {
        Remote::Oci(location) => return Err(oci_elsewhere(&location)),
        Remote::Marketplace { base, .. } => base,
    };
    runtime()?.block_on(async { send_metadata(&http()?, &base, entry, token).await })
}

async fn send_metadata(
    client: &reqwest::Client,
    base: &str,
    entry: &Entry,
    token: &str,
) -> Result<(), CatalogError> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let url = format!("{base}/api/images/{}/metadata", entry.metadata.id);
    let body = serde_json::json!({
        "metadata": b64.encode(&entry.metadata_bytes),
        "signature": b64.encode(entry.signature.as_bytes()),
    });
    let resp = client
        .put(&url)
        .bearer_auth(token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| net_err(&url, e))?;
    check_status(&url, "the metadata update", resp)
        .await
        .map(drop)
}

/// Deletes image `id` from the marketplace at `target`, signed by the endorser's `key`.
pub fn delete(id: &str, target: &str, token: &str, key: &SigningKey) -> Result<(), CatalogError> {
    let base = match parse_target(target)? {
        Remote::Oci(location) => return Err(oci_elsewhere(&location)),
        Remote::Marketplace { base, .. } => base,
    };
    let now = chrono::Utc::now().timestamp();
    let statement = crate::server::delete_statement(id, now);
    let signature = crate::sign::sign(key, statement.as_bytes(), &format!("kiln-delete {id}"))?;
    let url = format!("{base}/api/images/{id}");
    runtime()?.block_on(async {
        let resp = http()?
            .delete(&url)
            .bearer_auth(token)
            .header("kiln-delete", now.to_string())
            .header(
                "kiln-signature",
                base64::engine::general_purpose::STANDARD.encode(signature.as_bytes()),
            )
            .send()
            .await
            .map_err(|e| net_err(&url, e))?;
        check_status(&url, "the deletion", resp).await.map(drop)
    })
}

/// Searches the marketplace at `target`; returns its listing (metadata plus `validity`,
/// `download` and `pull`).
pub fn search(
    target: &str,
    filter: &crate::metadata::Filter,
) -> Result<Vec<serde_json::Value>, CatalogError> {
    let base = match parse_target(target)? {
        Remote::Oci(location) => return Err(oci_elsewhere(&location)),
        Remote::Marketplace { base, .. } => base,
    };
    let mut url = url::Url::parse(&format!("{base}/api/images"))
        .map_err(|e| CatalogError::Usage(format!("{base}: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in [
            ("q", &filter.q),
            ("os", &filter.os),
            ("arch", &filter.arch),
            ("endorser", &filter.endorser),
        ] {
            if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
                q.append_pair(k, v);
            }
        }
        if filter.include_expired {
            q.append_pair("include_expired", "1");
        }
    }
    let url = url.to_string();
    runtime()?.block_on(async {
        let resp = http()?
            .get(&url)
            .send()
            .await
            .map_err(|e| net_err(&url, e))?;
        let body: serde_json::Value = check_status(&url, "the search", resp)
            .await?
            .json_value(&url)
            .await?;
        Ok(body["images"].as_array().cloned().unwrap_or_default())
    })
}

trait JsonValue {
    async fn json_value(self, url: &str) -> Result<serde_json::Value, CatalogError>;
}

impl JsonValue for reqwest::Response {
    async fn json_value(self, url: &str) -> Result<serde_json::Value, CatalogError> {
        let bytes = self.bytes().await.map_err(|e| net_err(url, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| CatalogError::Remote(format!("{url}: not JSON: {e}")))
    }
}
