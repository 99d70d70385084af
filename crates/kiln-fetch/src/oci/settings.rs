//! Which registries serve an image, in which order: a Docker Hub image is asked of the
//! mirror (`$KILN_REGISTRY`) first and of Docker Hub after it, as Docker's
//! `registry-mirrors`; any other image only of its own registry.

use super::reference::{check_registry, OciRef, DOCKER_HUB_HOST};
use crate::FetchError;
use std::ffi::OsString;
use std::path::PathBuf;

/// The environment variable naming a registry mirror for Docker Hub images.
pub const MIRROR_ENV: &str = "KILN_REGISTRY";
/// Comma-separated registries (`host` or `host:port`) reached over plain HTTP.
pub const INSECURE_ENV: &str = "KILN_INSECURE_REGISTRIES";
/// `user:password` for every registry kiln pulls from (wins over Docker's config.json).
pub const AUTH_ENV: &str = "KILN_REGISTRY_AUTH";
/// Docker's variable for the directory holding `config.json` (default `~/.docker`).
pub const DOCKER_CONFIG_ENV: &str = "DOCKER_CONFIG";
/// Undocumented: the host standing in for Docker Hub, so tests never contact the real one.
pub const DOCKER_HUB_HOST_ENV: &str = "KILN_DOCKERHUB_HOST";

/// How kiln reaches registries; [`RegistrySettings::from_env`] reads it from the environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// `$KILN_REGISTRY`: a mirror asked first for Docker Hub images (`host[:port]`).
    pub mirror: Option<String>,
    /// The host serving Docker Hub's registry API; `None` is [`DOCKER_HUB_HOST`].
    pub docker_hub: Option<String>,
    /// `$KILN_INSECURE_REGISTRIES`: hosts (or `host:port`s) spoken to over plain HTTP,
    /// besides loopback ones, which always are.
    pub insecure: Vec<String>,
    /// `$KILN_REGISTRY_AUTH`, unparsed (`user:password`), used for every registry.
    pub auth: Option<String>,
    /// The directory whose `config.json` holds `docker login` credentials.
    pub docker_config_dir: Option<PathBuf>,
    /// `$PATH`: where Docker's credential helpers (`docker-credential-NAME`, named by
    /// config.json's `credsStore` and `credHelpers`) are looked for, and the `PATH` they
    /// run with; `None` is this process's `PATH`.
    pub helper_path: Option<OsString>,
}

/// Why a registry is asked for an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `$KILN_REGISTRY`, in front of Docker Hub.
    Mirror,
    /// Docker Hub itself (or the host standing in for it).
    DockerHub,
    /// The registry written in the reference.
    Own,
}

/// One registry to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]`.
    pub host: String,
    pub role: Role,
}

impl Endpoint {
    /// `127.0.0.1:5000 (mirror)`, `registry-1.docker.io (Docker Hub)`, or the host.
    pub fn describe(&self) -> String {
        match self.role {
            Role::Mirror => format!("{} (mirror, {MIRROR_ENV})", self.host),
            Role::DockerHub => format!("{} (Docker Hub)", self.host),
            Role::Own => self.host.clone(),
        }
    }
}

impl RegistrySettings {
    /// Reads `$KILN_REGISTRY`, `$KILN_INSECURE_REGISTRIES`, `$KILN_REGISTRY_AUTH`,
    /// `$DOCKER_CONFIG` (else `$HOME/.docker`) and `$PATH`.
    pub fn from_env() -> Self {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`RegistrySettings::from_env`] with the variables looked up by `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let mut insecure: Vec<String> = set(INSECURE_ENV)
            .unwrap_or_default()
            .split(',')
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .collect();
        // Docker writes mirrors as URLs; an http:// one is spoken to over plain HTTP.
        let mirror = set(MIRROR_ENV).map(|m| {
            let (host, plain) = strip_scheme(m.trim());
            if plain {
                insecure.push(host.clone());
            }
            host
        });
        let docker_config_dir = set(DOCKER_CONFIG_ENV)
            .map(PathBuf::from)
            .or_else(|| set("HOME").map(|home| PathBuf::from(home).join(".docker")));
        RegistrySettings {
            mirror,
            docker_hub: set(DOCKER_HUB_HOST_ENV).map(|h| h.trim().to_string()),
            insecure,
            auth: set(AUTH_ENV),
            docker_config_dir,
            helper_path: set("PATH").map(OsString::from),
        }
    }

    /// The registries to ask for `reference`, in order.
    pub(crate) fn endpoints(
        &self,
        base: &str,
        reference: &OciRef,
    ) -> Result<Vec<Endpoint>, FetchError> {
        if !reference.is_docker_hub() {
            return Ok(vec![Endpoint {
                host: reference.registry.clone(),
                role: Role::Own,
            }]);
        }
        let mut endpoints = Vec::with_capacity(2);
        if let Some(mirror) = &self.mirror {
            check_registry(mirror)
                .map_err(|e| FetchError::base(base, format!("{MIRROR_ENV}: {e}")))?;
            endpoints.push(Endpoint {
                host: mirror.clone(),
                role: Role::Mirror,
            });
        }
        endpoints.push(Endpoint {
            host: self
                .docker_hub
                .clone()
                .unwrap_or_else(|| DOCKER_HUB_HOST.to_string()),
            role: Role::DockerHub,
        });
        Ok(endpoints)
    }
}

/// `https://host/` → (`host`, false); `http://host` → (`host`, true); `host` → (`host`, false).
fn strip_scheme(url: &str) -> (String, bool) {
    let (rest, plain) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
        (Some(rest), _) => (rest, true),
        (None, Some(rest)) => (rest, false),
        (None, None) => (url, false),
    };
    (rest.trim_end_matches('/').to_string(), plain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> RegistrySettings {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        RegistrySettings::from_vars(|name| vars.get(name).cloned())
    }

    fn reference(text: &str) -> OciRef {
        OciRef::parse(text).unwrap()
    }

    #[test]
    fn docker_hub_images_ask_the_mirror_first() {
        let s = settings(&[("KILN_REGISTRY", "127.0.0.1:5000")]);
        let endpoints = s.endpoints("busybox", &reference("busybox")).unwrap();
        assert_eq!(
            endpoints,
            [
                Endpoint {
                    host: "127.0.0.1:5000".into(),
                    role: Role::Mirror
                },
                Endpoint {
                    host: DOCKER_HUB_HOST.into(),
                    role: Role::DockerHub
                },
            ]
        );
        // Other registries are asked alone: the mirror stands in for Docker Hub only.
        let own = s.endpoints("x", &reference("ghcr.io/a/b:tag")).unwrap();
        assert_eq!(
            own,
            [Endpoint {
                host: "ghcr.io".into(),
                role: Role::Own
            }]
        );
    }

    #[test]
    fn without_a_mirror_docker_hub_is_asked_directly() {
        let s = settings(&[]);
        let endpoints = s.endpoints("busybox", &reference("docker.io/x/y")).unwrap();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].host, DOCKER_HUB_HOST);
        let s = settings(&[("KILN_DOCKERHUB_HOST", "127.0.0.1:9")]);
        let endpoints = s.endpoints("busybox", &reference("busybox")).unwrap();
        assert_eq!(endpoints[0].host, "127.0.0.1:9");
    }

    #[test]
    fn mirror_urls_and_bad_mirrors() {
        let s = settings(&[
            ("KILN_REGISTRY", "http://mirror.lan:5000/"),
            ("KILN_INSECURE_REGISTRIES", "a, b"),
        ]);
        assert_eq!(s.mirror.as_deref(), Some("mirror.lan:5000"));
        assert_eq!(s.insecure, ["a", "b", "mirror.lan:5000"]);
        let s = settings(&[("KILN_REGISTRY", "https://mirror.lan")]);
        assert_eq!(
            (s.mirror.as_deref(), s.insecure.len()),
            (Some("mirror.lan"), 0)
        );
        let s = settings(&[("KILN_REGISTRY", "not a host")]);
        let err = s
            .endpoints("busybox", &reference("busybox"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("KILN_REGISTRY: `not a host` is not a valid registry host"),
            "{err}"
        );
        assert_eq!(settings(&[("KILN_REGISTRY", " ")]).mirror, None);
    }

    #[test]
    fn docker_config_dir_from_docker_config_or_home() {
        let s = settings(&[("DOCKER_CONFIG", "/etc/dc"), ("HOME", "/home/u")]);
        assert_eq!(s.docker_config_dir, Some(PathBuf::from("/etc/dc")));
        let s = settings(&[("HOME", "/home/u")]);
        assert_eq!(s.docker_config_dir, Some(PathBuf::from("/home/u/.docker")));
        assert_eq!(settings(&[]).docker_config_dir, None);
    }

    #[test]
    fn credential_helpers_are_looked_for_in_path() {
        let s = settings(&[("PATH", "/opt/helpers:/usr/bin")]);
        assert_eq!(s.helper_path, Some(OsString::from("/opt/helpers:/usr/bin")));
        assert_eq!(settings(&[]).helper_path, None);
    }
}
