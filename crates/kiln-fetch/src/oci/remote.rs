//! One repository of a registry, for pushing and pulling: blobs stream between files and
//! the registry in chunks (memory stays flat whatever their size), uploads are monolithic
//! (one streamed `PUT`) or chunked (`PATCH`es of at most 4 MiB), a blob the registry already
//! has is not sent again (and one it has in another repository is mounted), an interrupted
//! download resumes with `Range` from the bytes already on disk, and requests that fail for
//! a passing reason (a 5xx or 429 answer, a refused, reset or dropped connection) are retried
//! with exponential backoff before a clear error naming the registry and the reference.
//!
//! Every blob is verified against its digest before [`Remote::pull_blob`] returns, and a
//! blob that does not match is deleted: only verified bytes are ever handed on.
//!
//! Everything here goes through `oci-client` ([`Registry`]'s client, its credentials and
//! bearer-token flow). Two things are done around it rather than by it: the retry loop (the
//! crate has none) and the download loop over `pull_blob_stream_partial`, which keeps its
//! own digest across resumed ranges (the crate verifies only whole-blob responses).

use super::reference::OciRef;
use super::registry::{chain, Registry};
use super::settings::{Endpoint, RegistrySettings, Role, INSECURE_ENV};
use bytes::Bytes;
use futures_util::StreamExt;
use oci_client::client::BlobResponse;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
pub use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::{Reference, RegistryOperation};
use sha2::{Digest, Sha256};
use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The URL-like prefix kiln's command line takes for registry references.
pub const OCI_SCHEME: &str = "oci://";

/// Attempts per request (`$KILN_REGISTRY_ATTEMPTS` overrides it).
pub const ATTEMPTS_ENV: &str = "KILN_REGISTRY_ATTEMPTS";

/// Bytes read from a file per upload chunk: what one `PATCH` of a chunked upload carries
/// (oci-client's own limit), and the unit a monolithic upload streams in.
const CHUNK: usize = 4 << 20;

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries in all (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; it doubles after each further one.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The default policy, with `$KILN_REGISTRY_ATTEMPTS` attempts when it is set.
    pub fn from_env() -> Self {
        let attempts = std::env::var(ATTEMPTS_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok())
            .filter(|n| *n >= 1);
        RetryPolicy {
            attempts: attempts.unwrap_or(RetryPolicy::default().attempts),
            ..RetryPolicy::default()
        }
    }

    /// The wait before attempt `next` (2 for the first retry).
    fn delay(&self, next: u32) -> Duration {
        let doubling = 1u32 << (next.saturating_sub(2)).min(16);
        (self.first_delay * doubling).min(self.max_delay)
    }
}

/// How blobs are uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UploadMode {
    /// One `PUT` streaming the whole blob (fastest; what registries handle best).
    #[default]
    Monolithic,
    /// `PATCH`es of at most 4 MiB, then a closing `PUT` (for proxies that cap request sizes).
    Chunked,
}

/// What pushing one blob did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobPush {
    /// The repository had it already; nothing was sent.
    Present,
    /// The registry linked it from this repository (`mount`); nothing was sent.
    Mounted(String),
    /// Its bytes were uploaded.
    Uploaded,
}

/// Called with the bytes of a blob transferred so far (including those resumed from disk).
pub type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Called with a line telling that a request is retried (and why).
pub type Notices = Arc<dyn Fn(&str) + Send + Sync>;

/// A manifest as the registry served it.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// Its exact bytes (what its digest covers).
    pub raw: Vec<u8>,
    /// `sha256:…` of `raw`.
    pub digest: String,
    pub manifest: OciImageManifest,
}

/// Errors talking to a registry; each names the registry and the reference.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    /// The reference cannot be used.
    #[error("`{reference}`: {message}")]
    Reference { reference: String, message: String },

    /// The registry refused a request or could not be reached (after the retries).
    #[error("registry {registry}: {reference}: {message}")]
    Registry {
        registry: String,
        reference: String,
        message: String,
    },

    /// Content the registry served does not match its digest or its declared size. The
    /// bytes were deleted; nothing was kept.
    #[error("registry {registry}: {reference}: {what} was refused: {problem}; it was tampered with or corrupted in the registry (push it again)")]
    Tampered {
        registry: String,
        reference: String,
        what: String,
        problem: String,
    },

    /// A local file could not be read or written.
    #[error("{reference}: {action} {}: {source}", path.display())]
    Io {
        reference: String,
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl RemoteError {
    /// Whether the error is a digest or size mismatch (content that must not be used).
    pub fn is_tampered(&self) -> bool {
        matches!(self, RemoteError::Tampered { .. })
    }
}

/// One failed attempt: worth trying again, or not.
enum Attempt {
    Transient(String),
    Fatal(RemoteError),
}

/// A repository of a registry, with a client for it.
pub struct Remote {
    registry: Registry,
    reference: OciRef,
    /// The reference as the user wrote it, for messages.
    shown: String,
    runtime: tokio::runtime::Runtime,
    /// How requests are retried.
    pub retry: RetryPolicy,
    /// How blobs are uploaded.
    pub upload: UploadMode,
    /// Where retries are reported (`None`: only to the log).
    pub notices: Option<Notices>,
}

impl Remote {
    /// Opens `text` (`[oci://]HOST[:PORT]/REPO[:TAG]`), with the credentials and protocol
    /// `settings` give its registry. Nothing is sent yet.
    pub fn open(text: &str, settings: &RegistrySettings) -> Result<Remote, RemoteError> {
        let shown = text.strip_prefix(OCI_SCHEME).unwrap_or(text).to_string();
        let reference = OciRef::parse(&shown).map_err(|e| RemoteError::Reference {
            reference: shown.clone(),
            message: format!("not a valid OCI reference: {e}"),
        })?;
        let endpoint = if reference.is_docker_hub() {
            Endpoint {
                host: settings
                    .docker_hub
                    .clone()
                    .unwrap_or_else(|| reference.registry.clone()),
                role: Role::DockerHub,
            }
        } else {
            Endpoint {
                host: reference.registry.clone(),
                role: Role::Own,
            }
        };
        let registry =
            Registry::new(&shown, &endpoint, settings).map_err(|e| RemoteError::Registry {
                registry: endpoint.host.clone(),
                reference: shown.clone(),
                message: e.to_string(),
            })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| RemoteError::Reference {
                reference: shown.clone(),
                message: format!("cannot start the network runtime: {e}"),
            })?;
        Ok(Remote {
            registry,
            reference,
            shown,
            runtime,
            retry: RetryPolicy::from_env(),
            upload: UploadMode::default(),
            notices: None,
        })
    }

    /// `host[:port]` of the registry.
    pub fn registry(&self) -> &str {
        &self.registry.host
    }

    /// The parsed reference (its tag or digest, when written, name what to pull).
    pub fn reference(&self) -> &OciRef {
        &self.reference
    }

    /// `HOST/REPO:TAG`.
    pub fn tagged(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.registry.host, self.reference.repository)
    }

    /// The manifest `tag_or_digest` names (`sha256:…` or a tag), or `None` when the
    /// repository has no such manifest. A manifest asked for by digest is checked against it.
    pub fn manifest(&self, tag_or_digest: &str) -> Result<Option<FetchedManifest>, RemoteError> {
        let by_digest = tag_or_digest.starts_with("sha256:");
        let target = if by_digest {
            self.registry
                .by_digest(&self.reference.repository, tag_or_digest)
        } else {
            self.registry
                .by_tag(&self.reference.repository, tag_or_digest)
        };
        let what = "looking up the manifest".to_string();
        let shown = self.shown_at(tag_or_digest);
        let pulled = self.block(&what, &shown, || async {
            let pulled = self
                .registry
                .client
                .pull_manifest_raw(&target, &self.registry.auth, &[OCI_IMAGE_MEDIA_TYPE])
                .await;
            match pulled {
                Ok(v) => Ok(Some(v)),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(self.classify("pulling the manifest", &shown, e)),
            }
        })?;
        let Some((raw, _)) = pulled else {
            return Ok(None);
        };
        let digest = sha256_digest(&raw);
        if by_digest && digest != tag_or_digest {
            return Err(self.tampered(
                &shown,
                "the manifest",
                format!("its bytes hash to {digest}"),
            ));
        }
        let manifest: OciImageManifest =
            serde_json::from_slice(&raw).map_err(|e| RemoteError::Registry {
                registry: self.registry.host.clone(),
                reference: shown.clone(),
                message: format!("the manifest is not an OCI image manifest: {e}"),
            })?;
        Ok(Some(FetchedManifest {
            raw: raw.to_vec(),
            digest,
            manifest,
        }))
    }

    /// Pushes `manifest` under `tag` (its blobs must be pushed first); returns its digest.
    pub fn put_manifest(
        &self,
        tag: &str,
        manifest: &OciImageManifest,
    ) -> Result<String, RemoteError> {
        let raw = serde_json::to_vec(manifest).map_err(|e| RemoteError::Reference {
            reference: self.shown.clone(),
            message: format!("encoding the manifest: {e}"),
        })?;
        let target = self.registry.by_tag(&self.reference.repository, tag);
        let shown = self.tagged(tag);
        let content_type = http::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        self.block("pushing the manifest", &shown, || {
            let raw = raw.clone();
            let content_type: http::HeaderValue = Clone::clone(&content_type);
            let target = &target;
            let shown = &shown;
            async move {
                self.authorize(target, RegistryOperation::Push, shown)
                    .await?;
                self.registry
                    .client
                    .push_manifest_raw(target, raw, content_type)
                    .await
                    .map_err(|e| self.classify("pushing the manifest", shown, e))
            }
        })?;
        Ok(sha256_digest(&raw))
    }

    /// Makes the blob `desc` (whose bytes are the file `path`) present in the repository:
    /// nothing is sent when it is there already or can be mounted from one of
    /// `mount_from` (repositories of the same registry); otherwise it is uploaded.
    pub fn push_blob(
        &self,
        path: &Path,
        desc: &OciDescriptor,
        mount_from: &[String],
        progress: Option<Progress>,
    ) -> Result<BlobPush, RemoteError> {
        let target = self.blob_target();
        let shown = self.shown.clone();
        let what = format!("blob {}", desc.digest);
        let present = self.block(&format!("looking up {what}"), &shown, || async {
            self.authorize(&target, RegistryOperation::Push, &shown)
                .await?;
            self.registry
                .client
                .blob_exists(&target, &desc.digest)
                .await
                .map_err(|e| self.classify("looking up the blob", &shown, e))
        })?;
        if present {
            return Ok(BlobPush::Present);
        }
        for source in mount_from {
            if *source == self.reference.repository {
                continue;
            }
            let from = self.registry.by_tag(source, "latest");
            let mounted = self.runtime.block_on(self.registry.client.mount_blob(
                &target,
                &from,
                &desc.digest,
            ));
            match mounted {
                Ok(()) => return Ok(BlobPush::Mounted(source.clone())),
                Err(e) => tracing::debug!(%source, "mount refused: {e}"),
            }
        }
        let size = u64::try_from(desc.size).unwrap_or(0);
        self.block(&format!("uploading {what}"), &shown, || {
            let progress = progress.clone();
            let target = &target;
            let shown = &shown;
            async move {
                let file = tokio::fs::File::open(path)
                    .await
                    .map_err(|e| Attempt::Fatal(self.io("opening", path, e)))?;
                let stream = file_chunks(file, progress);
                let client = match self.upload {
                    UploadMode::Monolithic => &self.registry.push_client,
                    UploadMode::Chunked => &self.registry.client,
                };
                client
                    .push_blob_stream(target, stream, &desc.digest, Some(size))
                    .await
                    .map(|_| ())
                    .map_err(|e| self.classify("uploading the blob", shown, e))
            }
        })?;
        Ok(BlobPush::Uploaded)
    }

    /// Downloads the blob `desc` into `part`, resuming from the bytes `part` already holds
    /// (from an interrupted pull) and after dropped connections, and verifies its size and
    /// digest. A blob that does not match is deleted and refused ([`RemoteError::Tampered`]).
    pub fn pull_blob(
        &self,
        desc: &OciDescriptor,
        part: &Path,
        progress: Option<Progress>,
    ) -> Result<(), RemoteError> {
        let size = u64::try_from(desc.size).map_err(|_| {
            self.tampered(
                &self.shown,
                &format!("blob {}", desc.digest),
                "its descriptor has a negative size".into(),
            )
        })?;
        let mut state = Download::resume(part, size).map_err(|e| self.io("reading", part, e))?;
        if let Some(p) = &progress {
            p(state.written);
        }
        let what = format!("blob {}", desc.digest);
        let shown = self.shown.clone();
        let target = self.blob_target();
        self.attempts(&format!("downloading {what}"), &shown, || {
            self.runtime.block_on(self.download_range(
                &target,
                desc,
                part,
                &mut state,
                progress.as_ref(),
                &shown,
            ))
        })?;
        let digest = format!("sha256:{}", hex::encode(state.hasher.finalize_reset()));
        if digest != desc.digest {
            let _ = fs::remove_file(part);
            return Err(self.tampered(&shown, &what, format!("its {size} bytes hash to {digest}")));
        }
        Ok(())
    }

    /// One request for the rest of the blob, appended to `part`.
    async fn download_range(
        &self,
        target: &Reference,
        desc: &OciDescriptor,
        part: &Path,
        state: &mut Download,
        progress: Option<&Progress>,
        shown: &str,
    ) -> Result<(), Attempt> {
        if state.written == state.size {
            return Ok(());
        }
        self.authorize(target, RegistryOperation::Pull, shown)
            .await?;
        let response = self
            .registry
            .client
            .pull_blob_stream_partial(target, desc, state.written, None)
            .await
            .map_err(|e| self.classify("downloading the blob", shown, e))?;
        let mut stream = match response {
            BlobResponse::Partial(s) => s.stream,
            BlobResponse::Full(s) => {
                // The registry ignored the range: start again from the first byte.
                state
                    .restart()
                    .map_err(|e| Attempt::Fatal(self.io("truncating", part, e)))?;
                s.stream
            }
        };
        let file = fs::OpenOptions::new()
            .append(true)
            .open(part)
            .map_err(|e| Attempt::Fatal(self.io("opening", part, e)))?;
        // Network chunks are small (tens of KiB): gather them into 1 MiB writes. Every way
        // out flushes, so the file always holds exactly `state.written` bytes, and gives
        // the hasher back holding exactly those bytes.
        let mut file = io::BufWriter::with_capacity(1 << 20, file);
        let hash = HashThread::start(std::mem::take(&mut state.hasher));
        let received = self
            .receive(
                &mut stream,
                &mut file,
                &hash,
                state,
                desc,
                part,
                progress,
                shown,
            )
            .await;
        let flushed = file
            .flush()
            .map_err(|e| Attempt::Fatal(self.io("writing", part, e)));
        state.hasher = hash.finish();
        received.and(flushed)?;
        if state.written < state.size {
            // A complete answer that is short: the registry holds a truncated blob.
            let _ = fs::remove_file(part);
            return Err(Attempt::Fatal(self.tampered(
                shown,
                &format!("blob {}", desc.digest),
                format!(
                    "the registry has only {} of its {} bytes",
                    state.written, state.size
                ),
            )));
        }
        Ok(())
    }

    /// Appends what `stream` brings to `file` and `hash` until it ends or breaks.
    #[allow(clippy::too_many_arguments)]
    async fn receive(
        &self,
        stream: &mut (impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Unpin),
        file: &mut io::BufWriter<fs::File>,
        hash: &HashThread,
        state: &mut Download,
        desc: &OciDescriptor,
        part: &Path,
        progress: Option<&Progress>,
        shown: &str,
    ) -> Result<(), Attempt> {
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                // The whole blob arrived: a trailing error (e.g. oci-client's own check on a
                // full response) is left to the digest check that follows.
                Err(_) if state.written == state.size => break,
                Err(e) => return Err(Attempt::Transient(format!("the download broke off: {e}"))),
            };
            if state.written + chunk.len() as u64 > state.size {
                let _ = fs::remove_file(part);
                return Err(Attempt::Fatal(self.tampered(
                    shown,
                    &format!("blob {}", desc.digest),
                    format!("the registry sent more than its {} bytes", state.size),
                )));
            }
            file.write_all(&chunk)
                .map_err(|e| Attempt::Fatal(self.io("writing", part, e)))?;
            state.written += chunk.len() as u64;
            hash.update(chunk);
            if let Some(p) = progress {
                p(state.written);
            }
        }
        Ok(())
    }

    /// Runs the request `op` makes until it succeeds, fails for good, or has been tried
    /// `retry.attempts` times.
    fn block<T, F, Fut>(&self, what: &str, shown: &str, mut op: F) -> Result<T, RemoteError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        self.attempts(what, shown, || self.runtime.block_on(op()))
    }

    /// Runs `op` until it succeeds, fails for good, or has been tried `retry.attempts`
    /// times, waiting longer after each passing failure.
    fn attempts<T>(
        &self,
        what: &str,
        shown: &str,
        mut op: impl FnMut() -> Result<T, Attempt>,
    ) -> Result<T, RemoteError> {
        let started = Instant::now();
        let attempts = self.retry.attempts.max(1);
        let mut attempt = 1;
        loop {
            match op() {
                Ok(v) => return Ok(v),
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Transient(why)) if attempt < attempts => {
                    attempt += 1;
                    let delay = self.retry.delay(attempt);
                    let notice = format!(
                        "registry {}: {what}: {why}; retrying in {:.1} s (attempt {attempt} of {attempts})",
                        self.registry.host,
                        delay.as_secs_f64()
                    );
                    match &self.notices {
                        Some(n) => n(&notice),
                        None => tracing::warn!("{notice}"),
                    }
                    std::thread::sleep(delay);
                }
                Err(Attempt::Transient(why)) => {
                    return Err(RemoteError::Registry {
                        registry: self.registry.host.clone(),
                        reference: shown.to_string(),
                        message: format!(
                            "{what}: gave up after {attempts} attempts in {:.1} s; the last one failed: {why}",
                            started.elapsed().as_secs_f64()
                        ),
                    })
                }
            }
        }
    }

    /// Gets a token for `operation` when the registry wants one (kept by the client).
    async fn authorize(
        &self,
        target: &Reference,
        operation: RegistryOperation,
        shown: &str,
    ) -> Result<(), Attempt> {
        self.registry
            .client
            .auth(target, &self.registry.auth, operation)
            .await
            .map(|_| ())
            .map_err(|e| self.classify("authenticating", shown, e))?;
        if operation == RegistryOperation::Push {
            self.registry
                .push_client
                .auth(target, &self.registry.auth, operation)
                .await
                .map(|_| ())
                .map_err(|e| self.classify("authenticating", shown, e))?;
        }
        Ok(())
    }

    /// Sorts an `oci-client` error into "try again" and "give up".
    fn classify(&self, what: &str, shown: &str, e: OciDistributionError) -> Attempt {
        if let Some(why) = transient(&e) {
            return Attempt::Transient(why);
        }
        if let OciDistributionError::DigestError(d) = &e {
            return Attempt::Fatal(self.tampered(shown, what, d.to_string()));
        }
        // oci-client reports some refusals (a HEAD's) as plain HTTP errors: word them as
        // the refusals they are, with the way to log in.
        let e = match &e {
            OciDistributionError::RequestError(re)
                if matches!(re.status().map(|s| s.as_u16()), Some(401 | 403)) =>
            {
                OciDistributionError::UnauthorizedError {
                    url: re.url().map(|u| u.to_string()).unwrap_or_default(),
                }
            }
            _ => e,
        };
        Attempt::Fatal(RemoteError::Registry {
            registry: self.registry.host.clone(),
            reference: shown.to_string(),
            message: self.registry.explain(what, &e),
        })
    }

    fn tampered(&self, shown: &str, what: &str, problem: String) -> RemoteError {
        RemoteError::Tampered {
            registry: self.registry.host.clone(),
            reference: shown.to_string(),
            what: what.to_string(),
            problem,
        }
    }

    fn io(&self, action: &'static str, path: &Path, source: io::Error) -> RemoteError {
        RemoteError::Io {
            reference: self.shown.clone(),
            action,
            path: path.to_path_buf(),
            source,
        }
    }

    fn shown_at(&self, tag_or_digest: &str) -> String {
        if tag_or_digest.starts_with("sha256:") {
            format!(
                "{}/{}@{tag_or_digest}",
                self.registry.host, self.reference.repository
            )
        } else {
            self.tagged(tag_or_digest)
        }
    }

    /// The repository as oci-client addresses blobs (the tag is not used).
    fn blob_target(&self) -> Reference {
        self.registry.by_tag(&self.reference.repository, "latest")
    }
}

/// A download in progress: bytes on disk and their running digest.
/// SHA-256 on a thread of its own, fed the chunks as they arrive, so that hashing runs
/// beside receiving and writing rather than between them (a pull of a 1 GiB blob went from
/// half curl's speed on loopback).
struct HashThread {
    chunks: Option<std::sync::mpsc::SyncSender<Bytes>>,
    thread: Option<std::thread::JoinHandle<Sha256>>,
}

impl HashThread {
    /// Continues `hasher`.
    fn start(hasher: Sha256) -> HashThread {
        // Bounded: a slow hasher holds the download back instead of filling memory.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
        let thread = std::thread::spawn(move || {
            let mut hasher = hasher;
            for chunk in rx {
                hasher.update(&chunk);
            }
            hasher
        });
        HashThread {
            chunks: Some(tx),
            thread: Some(thread),
        }
    }

    fn update(&self, chunk: Bytes) {
        if let Some(tx) = &self.chunks {
            // Only fails if the thread is gone, which `finish` then reports.
            let _ = tx.send(chunk);
        }
    }

    /// The hasher, having taken in every chunk given to `update`.
    fn finish(mut self) -> Sha256 {
        drop(self.chunks.take());
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("the hashing thread panicked")
    }
}

struct Download {
    size: u64,
    written: u64,
    hasher: Sha256,
    part: PathBuf,
}

impl Download {
    /// Takes up `part` where an earlier pull left it (hashing what it holds), or creates it.
    fn resume(part: &Path, size: u64) -> io::Result<Download> {
        let mut state = Download {
            size,
            written: 0,
            hasher: Sha256::new(),
            part: part.to_path_buf(),
        };
        match fs::File::open(part) {
            Ok(mut f) if f.metadata()?.len() <= size => {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    state.hasher.update(&buf[..n]);
                    state.written += n as u64;
                }
            }
            Ok(_) => state.restart()?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => state.restart()?,
            Err(e) => return Err(e),
        }
        Ok(state)
    }

    /// Empties the file and starts over.
    fn restart(&mut self) -> io::Result<()> {
        fs::File::create(&self.part)?;
        self.written = 0;
        self.hasher = Sha256::new();
        Ok(())
    }
}

/// The file as a stream of chunks of at most [`CHUNK`] bytes, reporting progress.
fn file_chunks(
    file: tokio::fs::File,
    progress: Option<Progress>,
) -> impl futures_util::Stream<Item = Result<Bytes, OciDistributionError>> + Send + 'static {
    futures_util::stream::unfold(
        (file, 0u64, progress),
        |(mut file, sent, progress)| async move {
            use tokio::io::AsyncReadExt;
            let mut buf = bytes::BytesMut::with_capacity(CHUNK);
            while buf.len() < CHUNK {
                match file.read_buf(&mut buf).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) => {
                        return Some((
                            Err(OciDistributionError::IoError(e)),
                            (file, sent, progress),
                        ))
                    }
                }
            }
            if buf.is_empty() {
                return None;
            }
            let sent = sent + buf.len() as u64;
            if let Some(p) = &progress {
                p(sent);
            }
            Some((Ok(buf.freeze()), (file, sent, progress)))
        },
    )
}

/// Why an error is worth another attempt, or `None`.
fn transient(e: &OciDistributionError) -> Option<String> {
    match e {
        OciDistributionError::RequestError(re) => match re.status().map(|s| s.as_u16()) {
            Some(code) if code >= 500 || code == 429 || code == 408 => {
                Some(format!("the registry answered HTTP {code}"))
            }
            Some(_) => None,
            None if re.is_connect() => Some(format!(
                "cannot connect ({}); check that the registry is running and reachable \
                 (plain HTTP is used for loopback hosts and those in {INSECURE_ENV})",
                innermost(re)
            )),
            None => Some(format!("request failed: {}", chain(re))),
        },
        OciDistributionError::ServerError { code, message, .. }
            if *code >= 500 || *code == 429 || *code == 408 =>
        {
            Some(format!(
                "the registry answered HTTP {code} {}",
                message.trim()
            ))
        }
        OciDistributionError::IoError(io) => Some(format!("connection error: {io}")),
        OciDistributionError::RegistryError { envelope, .. }
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Toomanyrequests)) =>
        {
            Some("the registry is busy".into())
        }
        _ => None,
    }
}

fn is_not_found(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code: 404, .. } => true,
        OciDistributionError::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        }),
        _ => false,
    }
}

/// The deepest source of an error (the operating system's words, for connections).
fn innermost(e: &dyn std::error::Error) -> String {
    let mut last = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        last = s.to_string();
        source = s.source();
    }
    last
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// `sha256:<hex>` and size of the file at `path`, read in 1 MiB pieces.
pub fn file_digest(path: &Path) -> io::Result<(String, u64)> {
    let mut file = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), size))
}

/// A writer that hashes what passes through it and counts it (to digest a blob while it
/// is being written, in one pass).
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The inner writer, the `sha256:…` digest and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            attempts: 9,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
        };
        let delays: Vec<u128> = (2..=7).map(|n| p.delay(n).as_millis()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
    }

    #[test]
    fn only_passing_failures_are_retried() {
        let server = |code| OciDistributionError::ServerError {
            code,
            url: "u".into(),
            message: "m".into(),
        };
        assert!(transient(&server(500)).is_some());
        assert!(transient(&server(503)).is_some());
        assert!(transient(&server(429)).is_some());
        assert!(transient(&server(404)).is_none());
        assert!(transient(&server(401)).is_none());
        assert!(transient(&OciDistributionError::PushNoDataError).is_none());
        assert!(is_not_found(&server(404)));
    }

    #[test]
    fn downloads_resume_from_what_is_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("blob.part");
        fs::write(&part, b"hello ").unwrap();
        let mut d = Download::resume(&part, 11).unwrap();
        assert_eq!(d.written, 6);
        d.hasher.update(b"world");
        assert_eq!(
            format!("sha256:{}", hex::encode(d.hasher.finalize())),
            sha256_digest(b"hello world")
        );
        // More on disk than the blob has: start over.
        let d = Download::resume(&part, 3).unwrap();
        assert_eq!((d.written, fs::metadata(&part).unwrap().len()), (0, 0));
    }

    #[test]
    fn hashing_writer_digests_in_one_pass() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello world").unwrap();
        let (inner, digest, n) = w.finish();
        assert_eq!((inner.as_slice(), n), (&b"hello world"[..], 11));
        assert_eq!(digest, sha256_digest(b"hello world"));
        assert_eq!(
            file_digest(Path::new("/dev/null")).unwrap(),
            (sha256_digest(b""), 0)
        );
    }
}
