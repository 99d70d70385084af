//! Credentials for one registry: `$KILN_REGISTRY_AUTH` when set, else the `auths` entry
//! that `docker login` wrote to `config.json`, else none. Either way `oci-client` answers
//! the registry's challenge: with a bearer token from the realm it names (fetched with
//! these credentials, or anonymously as Docker Hub allows for public images), or with
//! HTTP basic authentication.

use super::settings::{Endpoint, RegistrySettings, Role, AUTH_ENV};
use crate::FetchError;
use base64::Engine;
use oci_client::secrets::RegistryAuth;
use std::collections::BTreeMap;
use std::path::Path;

/// The `auths` keys that mean Docker Hub (`docker login` writes the first).
const DOCKER_HUB_KEYS: &[&str] = &[
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// Credentials and where they came from (for the log; never the secret itself).
pub(crate) struct Credentials {
    pub auth: RegistryAuth,
    pub origin: String,
}

/// The part of Docker's `config.json` kiln reads.
#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
}

/// The credentials to present to `endpoint`.
pub(crate) fn for_endpoint(
    base: &str,
    endpoint: &Endpoint,
    settings: &RegistrySettings,
) -> Result<Credentials, FetchError> {
    if let Some(value) = &settings.auth {
        let (user, password) = split_user(value).ok_or_else(|| FetchError::Registry {
            base: base.to_string(),
            registry: endpoint.host.clone(),
            message: format!("{AUTH_ENV} must be `user:password`"),
        })?;
        return Ok(Credentials {
            auth: RegistryAuth::Basic(user, password),
            origin: AUTH_ENV.to_string(),
        });
    }
    if let Some(dir) = &settings.docker_config_dir {
        let path = dir.join("config.json");
        if let Some((user, password)) = from_docker_config(base, &path, endpoint)? {
            return Ok(Credentials {
                auth: RegistryAuth::Basic(user, password),
                origin: path.display().to_string(),
            });
        }
    }
    Ok(Credentials {
        auth: RegistryAuth::Anonymous,
        origin: "anonymous".to_string(),
    })
}

/// `user:password` → its parts; the user may not be empty.
fn split_user(value: &str) -> Option<(String, String)> {
    match value.split_once(':') {
        Some((user, password)) if !user.is_empty() => {
            Some((user.to_string(), password.to_string()))
        }
        _ => None,
    }
}

/// The `auths` entry for `endpoint` in the config file at `path`, if the file and the entry exist.
fn from_docker_config(
    base: &str,
    path: &Path,
    endpoint: &Endpoint,
) -> Result<Option<(String, String)>, FetchError> {
    let text = match std::fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FetchError::io(
                base,
                "reading Docker's credentials file",
                path,
                e,
            ))
        }
    };
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| {
        FetchError::base(
            base,
            format!(
                "{} is not valid JSON ({e}); fix it, or point DOCKER_CONFIG at another directory",
                path.display()
            ),
        )
    })?;
    let Some((key, encoded)) = config.auths.iter().find_map(|(key, entry)| {
        let matches = match endpoint.role {
            Role::DockerHub => DOCKER_HUB_KEYS.contains(&key.as_str()),
            Role::Mirror | Role::Own => key_host(key) == endpoint.host,
        };
        matches.then_some((key, entry.auth.as_deref()?))
    }) else {
        return Ok(None);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(split_user) {
        Some(user) => Ok(Some(user)),
        None => Err(FetchError::base(
            base,
            format!(
                "{}: the `auth` of `{key}` is not base64 of `user:password`; run `docker login` again or fix it",
                path.display()
            ),
        )),
    }
}

/// The host an `auths` key names: Docker writes URLs (`https://host/v1/`) or bare hosts.
fn key_host(key: &str) -> &str {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(host: &str, role: Role) -> Endpoint {
        Endpoint {
            host: host.to_string(),
            role,
        }
    }

    fn with_config(json: &str) -> (tempfile::TempDir, RegistrySettings) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), json).unwrap();
        let settings = RegistrySettings {
            docker_config_dir: Some(dir.path().to_path_buf()),
            ..RegistrySettings::default()
        };
        (dir, settings)
    }

    fn basic(c: &Credentials) -> Option<(&str, &str)> {
        match &c.auth {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn docker_hub_and_host_keys() {
        // "hub:secret" and "me:pw:with:colons".
        let (_dir, settings) = with_config(
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "aHViOnNlY3JldA=="},
                          "https://reg.lan:5000/v2/": {"auth": "bWU6cHc6d2l0aDpjb2xvbnM="},
                          "other.lan": {}}, "credsStore": "desktop"}"#,
        );
        let hub = for_endpoint("b", &endpoint("127.0.0.1:9", Role::DockerHub), &settings).unwrap();
        assert_eq!(basic(&hub), Some(("hub", "secret")));
        assert!(hub.origin.ends_with("config.json"));
        let own = for_endpoint("b", &endpoint("reg.lan:5000", Role::Own), &settings).unwrap();
        assert_eq!(basic(&own), Some(("me", "pw:with:colons")));
        // An entry without `auth` (a credential helper's) and unknown hosts: anonymous.
        for host in ["other.lan", "reg.lan", "reg.lan:5001"] {
            let none = for_endpoint("b", &endpoint(host, Role::Mirror), &settings).unwrap();
            assert!(matches!(none.auth, RegistryAuth::Anonymous), "{host}");
        }
    }

    #[test]
    fn kiln_registry_auth_wins_and_is_checked() {
        let (_dir, mut settings) =
            with_config(r#"{"auths": {"docker.io": {"auth": "aHViOnNlY3JldA=="}}}"#);
        settings.auth = Some("env:pw".into());
        let hub = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings).unwrap();
        assert_eq!(
            (basic(&hub), hub.origin.as_str()),
            (Some(("env", "pw")), AUTH_ENV)
        );
        settings.auth = Some("no-colon".into());
        let err = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings)
            .err()
            .unwrap();
        assert!(err.to_string().contains("user:password"), "{err}");
    }

    #[test]
    fn broken_config_files_are_named() {
        let (_dir, settings) = with_config("{ not json");
        let err = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("config.json is not valid JSON"),
            "{err}"
        );
        let (_dir, settings) = with_config(r#"{"auths": {"docker.io": {"auth": "!!"}}}"#);
        let err = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings)
            .err()
            .unwrap();
        assert!(err.to_string().contains("`docker.io`"), "{err}");
        // No file at all is no credentials.
        let settings = RegistrySettings {
            docker_config_dir: Some("/nonexistent/kiln-test".into()),
            ..RegistrySettings::default()
        };
        let none = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings).unwrap();
        assert!(matches!(none.auth, RegistryAuth::Anonymous));
    }
}
