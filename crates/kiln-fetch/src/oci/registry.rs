//! Talking to one registry with `oci-client`: protocol choice, credentials, error wording.

use super::credentials;
use super::settings::{Endpoint, RegistrySettings, Role, INSECURE_ENV, MIRROR_ENV};
use crate::FetchError;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::net::Ipv4Addr;
use std::time::Duration;

/// A client bound to one registry host.
pub(crate) struct Registry {
    /// `host[:port]`.
    pub host: String,
    /// Why this registry is asked (mirror, Docker Hub, the reference's own).
    pub endpoint: Endpoint,
    pub client: Client,
    /// The same client set up for monolithic uploads (one streamed `PUT` per blob).
    pub push_client: Client,
    pub auth: RegistryAuth,
    /// Where `auth` came from (`anonymous`, `KILN_REGISTRY_AUTH`, a config.json entry, a
    /// credential helper), or why there is none.
    credentials: String,
}

impl Registry {
    /// A client for `endpoint`, with the protocol and credentials `settings` give it.
    pub fn new(
        base: &str,
        endpoint: &Endpoint,
        settings: &RegistrySettings,
    ) -> Result<Self, FetchError> {
        let host = endpoint.host.as_str();
        let protocol = if plain_http(host, &settings.insecure) {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        };
        let config = ClientConfig {
            protocol,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            ..ClientConfig::default()
        };
        let credentials = credentials::for_endpoint(base, endpoint, settings)?;
        tracing::info!(registry = host, credentials = %credentials.origin, "registry credentials");
        Ok(Registry {
            host: host.to_string(),
            endpoint: endpoint.clone(),
            push_client: Client::new(ClientConfig {
                use_monolithic_push: true,
                protocol: config.protocol.clone(),
                platform_resolver: None,
                connect_timeout: config.connect_timeout,
                read_timeout: config.read_timeout,
                ..ClientConfig::default()
            }),
            client: Client::new(config),
            auth: credentials.auth,
            credentials: credentials.origin,
        })
    }

    /// `REGISTRY/REPOSITORY:TAG`.
    pub fn by_tag(&self, repository: &str, tag: &str) -> Reference {
        Reference::with_tag(self.host.clone(), repository.to_string(), tag.to_string())
    }

    /// `REGISTRY/REPOSITORY@DIGEST`.
    pub fn by_digest(&self, repository: &str, digest: &str) -> Reference {
        Reference::with_digest(
            self.host.clone(),
            repository.to_string(),
            digest.to_string(),
        )
    }

    /// Turns an `oci-client` failure while doing `what` into an error naming the registry.
    pub fn error(&self, base: &str, what: &str, e: OciDistributionError) -> FetchError {
        FetchError::Registry {
            base: base.to_string(),
            registry: self.host.clone(),
            message: self.explain(what, &e),
        }
    }

    /// `what: why` and how to fix it: for Docker Hub that cannot be reached, use a mirror;
    /// when access is denied, log in or check the credentials that were refused.
    pub fn explain(&self, what: &str, e: &OciDistributionError) -> String {
        let unreachable = if self.endpoint.role == Role::DockerHub {
            format!(
                "Docker Hub ({}) cannot be reached from this machine: set {MIRROR_ENV} to a registry \
                 mirror that holds the image (e.g. {MIRROR_ENV}=127.0.0.1:5000)",
                self.host
            )
        } else {
            format!(
                "check that the registry is running and reachable (plain HTTP is used for loopback \
                 addresses and the hosts in {INSECURE_ENV}, HTTPS for the others)"
            )
        };
        let denied = if self.credentials == "anonymous" {
            LOG_IN.to_string()
        } else if self.auth == RegistryAuth::Anonymous {
            format!("kiln asked anonymously ({}); {LOG_IN}", self.credentials)
        } else {
            format!(
                "the credentials from {} were refused or do not grant it; check them (or `docker login` again)",
                self.credentials
            )
        };
        format!(
            "{what}: {}",
            explain(
                e,
                &Hints {
                    unreachable,
                    denied
                }
            )
        )
    }
}

/// The fixes to suggest, which depend on the registry and the credentials used.
struct Hints {
    /// When no connection could be made.
    unreachable: String,
    /// When the registry refused access.
    denied: String,
}

/// A current-thread runtime for one blocking call into `oci-client`.
pub(crate) fn runtime(base: &str) -> Result<tokio::runtime::Runtime, FetchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::base(base, format!("cannot start the network runtime: {e}")))
}

/// Loopback registries and those listed in `insecure` speak plain HTTP; others HTTPS.
fn plain_http(host_port: &str, insecure: &[String]) -> bool {
    let host = if host_port.starts_with('[') {
        host_port.split_inclusive(']').next().unwrap_or(host_port)
    } else {
        host_port.split(':').next().unwrap_or(host_port)
    };
    let loopback = host == "localhost"
        || host == "[::1]"
        || host.parse::<Ipv4Addr>().is_ok_and(|a| a.is_loopback());
    loopback
        || insecure
            .iter()
            .any(|entry| !entry.is_empty() && (entry == host_port || entry == host))
}

/// How to give kiln credentials.
const LOG_IN: &str = "log in with `docker login` (kiln reads $DOCKER_CONFIG/config.json, default \
    ~/.docker/config.json: its credential helpers, else its `auths`) or set \
    KILN_REGISTRY_AUTH=user:password";

/// A user-facing explanation of an `oci-client` error, with the fix when there is one.
fn explain(e: &OciDistributionError, hints: &Hints) -> String {
    let Hints {
        unreachable,
        denied,
    } = hints;
    match e {
        OciDistributionError::RequestError(re) if re.is_connect() => {
            format!("cannot connect ({}); {unreachable}", chain(re))
        }
        OciDistributionError::RequestError(re) if re.is_timeout() => {
            format!(
                "the registry did not answer in time ({}); {unreachable}",
                chain(re)
            )
        }
        OciDistributionError::RequestError(re) => format!("request failed: {}", chain(re)),
        OciDistributionError::RegistryError { envelope, .. } => {
            let said: Vec<String> = envelope
                .errors
                .iter()
                .map(|err| err.message.clone())
                .collect();
            let said = said.join("; ");
            let not_found = envelope.errors.iter().any(|err| {
                matches!(
                    err.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::NotFound
                        | OciErrorCode::BlobUnknown
                )
            });
            let denied = envelope
                .errors
                .iter()
                .any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            if not_found {
                format!("not found (registry said: {said}); check the image name and tag")
            } else if denied {
                format!("access denied (registry said: {said}); {denied}")
            } else {
                format!("the registry refused the request: {said}")
            }
        }
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => {
            "not found; check the image name and tag".to_string()
        }
        OciDistributionError::ServerError {
            code: 401 | 403, ..
        }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => format!("access denied; {denied}"),
        OciDistributionError::ServerError { code, message, .. } => {
            format!("the registry answered HTTP {code}: {}", message.trim())
        }
        OciDistributionError::DigestError(d) => {
            format!("the downloaded content does not match its digest ({d}); the registry or the network corrupted it")
        }
        other => other.to_string(),
    }
}

/// An error and its sources, `: `-separated.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let list = |l: &[&str]| -> Vec<String> { l.iter().map(|s| s.to_string()).collect() };
        assert!(plain_http("127.0.0.1:5000", &[]));
        assert!(plain_http("127.1.2.3", &[]));
        assert!(plain_http("localhost:5000", &[]));
        assert!(plain_http("[::1]:5000", &[]));
        assert!(!plain_http("registry.example:5000", &[]));
        assert!(!plain_http("10.0.0.1:5000", &[]));
        assert!(plain_http(
            "10.0.0.1:5000",
            &list(&["foo", "10.0.0.1:5000"])
        ));
        assert!(plain_http("reg.lan:5000", &list(&["reg.lan"])));
        assert!(!plain_http("reg.lan:5000", &list(&["other.lan:5000"])));
    }
}
