//! Credentials for one registry, found as Docker finds them: `$KILN_REGISTRY_AUTH` when set,
//! else from Docker's `config.json`: the credential helper its `credHelpers` names for the
//! registry, else its `credsStore` helper, else the `auths` entry `docker login` wrote;
//! else none. Either way `oci-client` answers the registry's challenge: with a bearer token
//! from the realm it names (fetched with these credentials, or anonymously as Docker Hub
//! allows for public images), or with HTTP basic authentication.

use super::settings::{Endpoint, RegistrySettings, Role, AUTH_ENV};
use crate::tools::credential_helper::{self, HelperError};
use crate::FetchError;
use base64::Engine;
use oci_client::secrets::RegistryAuth;
use std::collections::BTreeMap;
use std::path::Path;

/// The `auths` and `credHelpers` keys that mean Docker Hub (`docker login` writes the first).
const DOCKER_HUB_KEYS: &[&str] = &[
    DOCKER_HUB_SERVER,
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// The server URL Docker files Docker Hub's credentials under and asks helpers for.
const DOCKER_HUB_SERVER: &str = "https://index.docker.io/v1/";

/// The user name with which helpers mark their secret as an identity token.
const TOKEN_USER: &str = "<token>";

/// Credentials and where they came from (for the log; never the secret itself).
pub(crate) struct Credentials {
    pub auth: RegistryAuth,
    pub origin: String,
}

impl Credentials {
    fn anonymous(origin: impl Into<String>) -> Self {
        Credentials {
            auth: RegistryAuth::Anonymous,
            origin: origin.into(),
        }
    }
}

/// The part of Docker's `config.json` kiln reads.
#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    /// The helper holding every registry's credentials (`desktop`, `pass`, …).
    #[serde(rename = "credsStore", default)]
    creds_store: Option<String>,
    /// Per-registry helpers, winning over `credsStore`.
    #[serde(rename = "credHelpers", default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct AuthEntry {
    /// base64 of `user:password`.
    #[serde(default)]
    auth: Option<String>,
    /// Used when `auth` is absent.
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    /// An OAuth refresh token (which `oci-client` cannot use).
    #[serde(default)]
    identitytoken: Option<String>,
}

impl AuthEntry {
    /// Whether the entry holds anything (a credential helper's entries are `{}`).
    fn has_credentials(&self) -> bool {
        [&self.auth, &self.username, &self.identitytoken]
            .iter()
            .any(|field| field.as_deref().is_some_and(|v| !v.trim().is_empty()))
    }
}

/// Where config.json keeps a registry's credentials.
#[derive(Debug, PartialEq, Eq)]
enum Store<'a> {
    /// The helper `docker-credential-NAME`; `setting` is the entry naming it.
    Helper { name: &'a str, setting: String },
    /// The `auths` entry, if there is one.
    Auths,
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
        if let Some(config) = read_config(base, &path)? {
            let found = match store(&config, endpoint) {
                Store::Helper { name, setting } => Some(from_helper(
                    base, endpoint, settings, &path, name, &setting,
                )?),
                Store::Auths => from_auths(base, &path, &config, endpoint)?,
            };
            if let Some(credentials) = found {
                return Ok(credentials);
            }
        }
    }
    Ok(Credentials::anonymous("anonymous"))
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

/// Docker's config file at `path`, if it exists.
fn read_config(base: &str, path: &Path) -> Result<Option<DockerConfig>, FetchError> {
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
    serde_json::from_slice(&text).map(Some).map_err(|e| {
        FetchError::base(
            base,
            format!(
                "{} is not valid JSON ({e}); fix it, or point DOCKER_CONFIG at another directory",
                path.display()
            ),
        )
    })
}

/// Where `config` keeps the credentials of `endpoint`, as Docker decides: the helper that
/// `credHelpers` names for it, else the `credsStore` helper, else `auths`. (An empty name
/// in `credHelpers` means `auths`, as for Docker.)
fn store<'a>(config: &'a DockerConfig, endpoint: &Endpoint) -> Store<'a> {
    if let Some((key, name)) = entries_for(&config.cred_helpers, endpoint).first() {
        if name.trim().is_empty() {
            return Store::Auths;
        }
        return Store::Helper {
            name: name.trim(),
            setting: format!("credHelpers[\"{key}\"]"),
        };
    }
    match config.creds_store.as_deref().map(str::trim) {
        Some(name) if !name.is_empty() => Store::Helper {
            name,
            setting: "credsStore".to_string(),
        },
        _ => Store::Auths,
    }
}

/// The server URL Docker asks a helper about: Docker Hub's index URL, else the host.
fn server_url(endpoint: &Endpoint) -> String {
    match endpoint.role {
        Role::DockerHub => DOCKER_HUB_SERVER.to_string(),
        Role::Mirror | Role::Own => endpoint.host.clone(),
    }
}

/// The `docker login` command for `endpoint`.
fn login_command(endpoint: &Endpoint) -> String {
    match endpoint.role {
        Role::DockerHub => "docker login -u USER".to_string(),
        Role::Mirror | Role::Own => format!("docker login {} -u USER", endpoint.host),
    }
}

/// The entries of `map` whose key names `endpoint`, best first: for Docker Hub its keys
/// in [`DOCKER_HUB_KEYS`] order; else the host itself, then URLs naming it.
fn entries_for<'a, V>(map: &'a BTreeMap<String, V>, endpoint: &Endpoint) -> Vec<(&'a str, &'a V)> {
    match endpoint.role {
        Role::DockerHub => DOCKER_HUB_KEYS
            .iter()
            .filter_map(|key| map.get_key_value(*key))
            .map(|(key, value)| (key.as_str(), value))
            .collect(),
        Role::Mirror | Role::Own => {
            let exact = map.get_key_value(endpoint.host.as_str());
            let urls = map
                .iter()
                .filter(|(key, _)| **key != endpoint.host && key_host(key) == endpoint.host);
            exact
                .into_iter()
                .chain(urls)
                .map(|(key, value)| (key.as_str(), value))
                .collect()
        }
    }
}

/// Asks helper `name` (named by `setting` in the config file at `path`) for `endpoint`'s
/// credentials; when it has none, `endpoint` is asked anonymously, as Docker does.
fn from_helper(
    base: &str,
    endpoint: &Endpoint,
    settings: &RegistrySettings,
    path: &Path,
    name: &str,
    setting: &str,
) -> Result<Credentials, FetchError> {
    let url = server_url(endpoint);
    let program = credential_helper::program(name);
    let origin = format!("{program} (`{setting}` of {})", path.display());
    let error = |message: String| FetchError::Registry {
        base: base.to_string(),
        registry: endpoint.host.clone(),
        message,
    };
    let timeout = credential_helper::TIMEOUT;
    match credential_helper::get(name, &url, settings.helper_path.as_deref(), timeout) {
        Ok(Some(found)) if found.username == TOKEN_USER => Ok(identity_token(&origin, endpoint)),
        Ok(Some(found)) => Ok(Credentials {
            auth: RegistryAuth::Basic(found.username, found.secret),
            origin,
        }),
        Ok(None) => Ok(Credentials::anonymous(format!(
            "{origin}, which has no credentials for {url}"
        ))),
        Err(HelperError::Missing { program }) => Err(error(format!(
            "{} names the credential helper `{program}` (`{setting}`), which is not installed \
             (not on PATH): install it (`docker-credential-desktop` comes with Docker Desktop, \
             `docker-credential-pass` and `docker-credential-secretservice` with \
             `apt-get install golang-docker-credential-helpers`), or remove `{setting}` from \
             that file (kiln then reads its `auths`), or set {AUTH_ENV}=user:password",
            path.display()
        ))),
        Err(e) => Err(error(format!(
            "asking the credential helper of `{setting}` in {} for {url}: {e}",
            path.display()
        ))),
    }
}

/// Credentials from `origin` that are an identity token (an OAuth refresh token, as some
/// logins store): kiln's registry client (oci-client) cannot use one, so kiln asks
/// anonymously, which still pulls public images, and says so; a refused pull then names
/// the token and what to do instead.
fn identity_token(origin: &str, endpoint: &Endpoint) -> Credentials {
    let why = format!(
        "{origin} holds an identity token (an OAuth refresh token), which kiln's registry \
         client cannot use; for private images log in with a user name and a password or \
         personal access token instead (`{}`), or set {AUTH_ENV}=user:password",
        login_command(endpoint)
    );
    tracing::warn!(registry = %endpoint.host, "{why}; asking anonymously");
    Credentials::anonymous(why)
}

/// The `auths` entry for `endpoint`, if there is one with credentials.
fn from_auths(
    base: &str,
    path: &Path,
    config: &DockerConfig,
    endpoint: &Endpoint,
) -> Result<Option<Credentials>, FetchError> {
    let Some((key, entry)) = entries_for(&config.auths, endpoint)
        .into_iter()
        .find(|(_, entry)| entry.has_credentials())
    else {
        return Ok(None);
    };
    let origin = format!("{} (`auths[\"{key}\"]`)", path.display());
    let set = |field: &Option<String>| field.clone().filter(|v| !v.trim().is_empty());
    if set(&entry.identitytoken).is_some() {
        return Ok(Some(identity_token(&origin, endpoint)));
    }
    let (user, password) = match (set(&entry.auth), set(&entry.username)) {
        (Some(encoded), _) => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|bytes| String::from_utf8(bytes).ok());
            decoded.as_deref().and_then(split_user).ok_or_else(|| {
                FetchError::base(
                    base,
                    format!(
                        "{}: the `auth` of `{key}` is not base64 of `user:password`; run `docker login` again or fix it",
                        path.display()
                    ),
                )
            })?
        }
        (None, Some(user)) => (user, entry.password.clone().unwrap_or_default()),
        (None, None) => return Ok(None),
    };
    Ok(Some(Credentials {
        auth: RegistryAuth::Basic(user, password),
        origin,
    }))
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
                          "other.lan": {}}}"#,
        );
        let hub = for_endpoint("b", &endpoint("127.0.0.1:9", Role::DockerHub), &settings).unwrap();
        assert_eq!(basic(&hub), Some(("hub", "secret")));
        assert!(
            hub.origin
                .ends_with("config.json (`auths[\"https://index.docker.io/v1/\"]`)"),
            "{}",
            hub.origin
        );
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

    fn config(json: &str) -> DockerConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn cred_helpers_win_then_creds_store_then_auths() {
        let both = config(
            r#"{"credsStore": "desktop",
                "credHelpers": {"reg.lan:5000": "pass", "https://ghcr.io": "gh",
                                "docker.io": "hub", "blank.lan": ""},
                "auths": {"reg.lan:5000": {"auth": "bWU6cHc="}}}"#,
        );
        let helper = |name: &'static str, setting: &str| Store::Helper {
            name,
            setting: setting.to_string(),
        };
        let cases = [
            (
                "reg.lan:5000",
                Role::Own,
                helper("pass", r#"credHelpers["reg.lan:5000"]"#),
            ),
            (
                "ghcr.io",
                Role::Own,
                helper("gh", r#"credHelpers["https://ghcr.io"]"#),
            ),
            // A Docker Hub alias names Docker Hub whatever host plays it.
            (
                "127.0.0.1:9",
                Role::DockerHub,
                helper("hub", r#"credHelpers["docker.io"]"#),
            ),
            // Other hosts (and other ports) use the store.
            (
                "reg.lan:5001",
                Role::Mirror,
                helper("desktop", "credsStore"),
            ),
            ("other.lan", Role::Own, helper("desktop", "credsStore")),
            // An empty helper means `auths`, as for Docker.
            ("blank.lan", Role::Own, Store::Auths),
        ];
        for (host, role, expected) in cases {
            assert_eq!(store(&both, &endpoint(host, role)), expected, "{host}");
        }
        let store_only = config(r#"{"credsStore": " pass ", "auths": {"h": {"auth": "x"}}}"#);
        assert_eq!(
            store(&store_only, &endpoint("h", Role::Own)),
            helper("pass", "credsStore")
        );
        for json in [
            r#"{"credsStore": ""}"#,
            r#"{"credHelpers": {"other": "x"}}"#,
            "{}",
        ] {
            assert_eq!(
                store(&config(json), &endpoint("h", Role::Own)),
                Store::Auths,
                "{json}"
            );
        }
    }

    #[test]
    fn helpers_are_asked_with_dockers_server_url() {
        assert_eq!(
            server_url(&endpoint("127.0.0.1:9", Role::DockerHub)),
            "https://index.docker.io/v1/"
        );
        assert_eq!(
            server_url(&endpoint("registry-1.docker.io", Role::DockerHub)),
            "https://index.docker.io/v1/"
        );
        assert_eq!(
            server_url(&endpoint("reg.lan:5000", Role::Own)),
            "reg.lan:5000"
        );
        assert_eq!(
            server_url(&endpoint("mirror.lan", Role::Mirror)),
            "mirror.lan"
        );
    }

    /// Settings reading `json` as config.json, with helpers found in `helpers` only.
    fn with_helpers(
        json: &str,
        helpers: &tempfile::TempDir,
    ) -> (tempfile::TempDir, RegistrySettings) {
        let (dir, mut settings) = with_config(json);
        settings.helper_path = Some(helpers.path().as_os_str().to_os_string());
        (dir, settings)
    }

    #[test]
    fn helper_answers_become_credentials() {
        // The helper answers for the server URL it is given, and only for that one.
        let helpers = credential_helper::test_helper(
            "kiln",
            r#"read -r url
case "$url" in
  https://index.docker.io/v1/) echo '{"ServerURL":"x","Username":"hubuser","Secret":"hubpw"}' ;;
  reg.lan:5000) echo '{"ServerURL":"x","Username":"<token>","Secret":"tok-1234"}' ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac"#,
        );
        let (_dir, settings) = with_helpers(
            r#"{"credsStore": "kiln", "auths": {"other.lan": {"auth": "bWU6cHc="}}}"#,
            &helpers,
        );
        let hub = for_endpoint("b", &endpoint("127.0.0.1:9", Role::DockerHub), &settings).unwrap();
        assert_eq!(basic(&hub), Some(("hubuser", "hubpw")));
        assert!(
            hub.origin
                .starts_with("docker-credential-kiln (`credsStore` of ")
                && !hub.origin.contains("hubpw"),
            "{}",
            hub.origin
        );
        // Not found: anonymous, saying why (the `auths` entry is not consulted, as for Docker).
        let none = for_endpoint("b", &endpoint("other.lan", Role::Own), &settings).unwrap();
        assert!(matches!(none.auth, RegistryAuth::Anonymous));
        assert!(
            none.origin
                .ends_with("which has no credentials for other.lan"),
            "{}",
            none.origin
        );
        // An identity token cannot be used: anonymous, saying why and what to do instead.
        let token = for_endpoint("b", &endpoint("reg.lan:5000", Role::Own), &settings).unwrap();
        assert!(matches!(token.auth, RegistryAuth::Anonymous));
        let err = token.origin;
        assert!(
            err.contains("identity token")
                && err.contains("docker login reg.lan:5000 -u USER")
                && err.contains("KILN_REGISTRY_AUTH")
                && !err.contains("tok-1234"),
            "{err}"
        );
        // KILN_REGISTRY_AUTH still wins, without asking the helper.
        let mut env = settings.clone();
        env.auth = Some("env:pw".into());
        let own = for_endpoint("b", &endpoint("reg.lan:5000", Role::Own), &env).unwrap();
        assert_eq!(basic(&own), Some(("env", "pw")));
    }

    #[test]
    fn missing_and_failing_helpers_are_named() {
        let helpers = credential_helper::test_helper("broken", "echo 'no keyring' >&2; exit 1");
        let (_dir, settings) = with_helpers(
            r#"{"credsStore": "nosuch", "credHelpers": {"reg.lan": "broken"}}"#,
            &helpers,
        );
        let err = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("`docker-credential-nosuch` (`credsStore`), which is not installed")
                && err.contains("golang-docker-credential-helpers")
                && err.contains("remove `credsStore`"),
            "{err}"
        );
        let err = for_endpoint("b", &endpoint("reg.lan", Role::Own), &settings)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(r#"`credHelpers["reg.lan"]`"#)
                && err.contains("`docker-credential-broken get` failed")
                && err.contains("no keyring"),
            "{err}"
        );
    }

    #[test]
    fn auths_user_fields_and_identity_tokens() {
        let (_dir, settings) = with_config(
            r#"{"auths": {"https://index.docker.io/v1/": {},
                          "docker.io": {"username": "u", "password": "p"},
                          "acr.lan": {"auth": "MDAwMDo=", "identitytoken": "tok-1234"}}}"#,
        );
        // The first Docker Hub key holds nothing (a helper's stub); the next one is used.
        let hub = for_endpoint("b", &endpoint("h", Role::DockerHub), &settings).unwrap();
        assert_eq!(basic(&hub), Some(("u", "p")));
        assert!(
            hub.origin.ends_with(r#"(`auths["docker.io"]`)"#),
            "{}",
            hub.origin
        );
        let token = for_endpoint("b", &endpoint("acr.lan", Role::Own), &settings).unwrap();
        assert!(matches!(token.auth, RegistryAuth::Anonymous));
        let err = token.origin;
        assert!(
            err.contains("identity token")
                && err.contains(r#"auths["acr.lan"]"#)
                && !err.contains("tok-1234"),
            "{err}"
        );
    }
}
