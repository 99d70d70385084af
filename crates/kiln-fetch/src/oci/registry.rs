//! Talking to one registry with `oci-client`: protocol choice, credentials, error wording.

use crate::FetchError;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Comma-separated registries (`host` or `host:port`) reached over plain HTTP.
pub const INSECURE_ENV: &str = "KILN_INSECURE_REGISTRIES";
/// `user:password` for HTTP basic authentication to registries.
pub const AUTH_ENV: &str = "KILN_REGISTRY_AUTH";

/// A client bound to one registry host.
pub(crate) struct Registry {
    /// `host[:port]`.
    pub host: String,
    pub client: Client,
    pub auth: RegistryAuth,
}

impl Registry {
    /// A client for `host`, reading `$KILN_INSECURE_REGISTRIES` and `$KILN_REGISTRY_AUTH`.
    pub fn new(base: &str, host: &str) -> Result<Self, FetchError> {
        let insecure = std::env::var(INSECURE_ENV).unwrap_or_default();
        let protocol = if plain_http(host, &insecure) {
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
        Ok(Registry {
            host: host.to_string(),
            client: Client::new(config),
            auth: auth_from_env(base, host)?,
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
            message: format!("{what}: {}", explain(&e)),
        }
    }
}

/// A current-thread runtime for one blocking call into `oci-client`.
pub(crate) fn runtime(base: &str) -> Result<tokio::runtime::Runtime, FetchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FetchError::base(base, format!("cannot start the network runtime: {e}")))
}

/// Loopback registries and those listed in `insecure` speak plain HTTP; others HTTPS.
fn plain_http(host_port: &str, insecure: &str) -> bool {
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
            .split(',')
            .map(str::trim)
            .any(|entry| !entry.is_empty() && (entry == host_port || entry == host))
}

fn auth_from_env(base: &str, host: &str) -> Result<RegistryAuth, FetchError> {
    match std::env::var(AUTH_ENV) {
        Ok(value) if !value.is_empty() => match value.split_once(':') {
            Some((user, password)) if !user.is_empty() => {
                Ok(RegistryAuth::Basic(user.to_string(), password.to_string()))
            }
            _ => Err(FetchError::Registry {
                base: base.to_string(),
                registry: host.to_string(),
                message: format!("{AUTH_ENV} must be `user:password`"),
            }),
        },
        _ => Ok(RegistryAuth::Anonymous),
    }
}

/// A user-facing explanation of an `oci-client` error, with the fix when there is one.
fn explain(e: &OciDistributionError) -> String {
    match e {
        OciDistributionError::RequestError(re) if re.is_connect() => format!(
            "cannot connect ({}); check that the registry is running and reachable (plain HTTP is used for \
             loopback addresses and the hosts in {INSECURE_ENV}, HTTPS for the others)",
            chain(re)
        ),
        OciDistributionError::RequestError(re) if re.is_timeout() => format!("the registry did not answer in time ({})", chain(re)),
        OciDistributionError::RequestError(re) => format!("request failed: {}", chain(re)),
        OciDistributionError::RegistryError { envelope, .. } => {
            let said: Vec<String> = envelope.errors.iter().map(|err| err.message.clone()).collect();
            let said = said.join("; ");
            let not_found = envelope.errors.iter().any(|err| {
                matches!(
                    err.code,
                    OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound | OciErrorCode::BlobUnknown
                )
            });
            let denied = envelope.errors.iter().any(|err| matches!(err.code, OciErrorCode::Unauthorized | OciErrorCode::Denied));
            if not_found {
                format!("not found (registry said: {said}); check the image name and tag")
            } else if denied {
                format!("access denied (registry said: {said}); set {AUTH_ENV}=user:password")
            } else {
                format!("the registry refused the request: {said}")
            }
        }
        OciDistributionError::ServerError { code: 404, .. } | OciDistributionError::ImageManifestNotFoundError(_) => {
            "not found; check the image name and tag".to_string()
        }
        OciDistributionError::ServerError { code: 401 | 403, .. }
        | OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => format!("access denied; set {AUTH_ENV}=user:password"),
        OciDistributionError::ServerError { code, message, .. } => format!("the registry answered HTTP {code}: {}", message.trim()),
        OciDistributionError::DigestError(d) => {
            format!("the downloaded content does not match its digest ({d}); the registry or the network corrupted it")
        }
        other => other.to_string(),
    }
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
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
        assert!(plain_http("127.0.0.1:5000", ""));
        assert!(plain_http("127.1.2.3", ""));
        assert!(plain_http("localhost:5000", ""));
        assert!(plain_http("[::1]:5000", ""));
        assert!(!plain_http("registry.example:5000", ""));
        assert!(!plain_http("10.0.0.1:5000", ""));
        assert!(plain_http("10.0.0.1:5000", "foo, 10.0.0.1:5000"));
        assert!(plain_http("reg.lan:5000", "reg.lan"));
        assert!(!plain_http("reg.lan:5000", "other.lan:5000,"));
    }
}
