//! OCI image references: `NAME[:TAG]`, `REGISTRY[:PORT]/NAME[:TAG]`, `…@sha256:HEX`.
//!
//! A first path component containing `.` or `:`, or equal to `localhost`, is a registry;
//! otherwise the reference is a Docker Hub name. Docker Hub names are normalised as Docker
//! does: `busybox` is `registry-1.docker.io/library/busybox:latest`, and the `docker.io/`
//! and `index.docker.io/` spellings name the same images.

use std::fmt;

/// The host Docker Hub's registry API is served from; Docker Hub names normalise to it.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// Docker Hub host names, all treated as "a Docker Hub name".
const DOCKER_HUB_HOSTS: &[&str] = &["docker.io", "index.docker.io", DOCKER_HUB_HOST];

/// A parsed, normalised reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// `host[:port]`; [`DOCKER_HUB_HOST`] for Docker Hub names.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was written.
    pub tag: Option<String>,
    /// `sha256:<64 hex>`; it wins over the tag when both are written.
    pub digest: Option<String>,
}

/// Why a reference is invalid (a complete sentence fragment for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceError(pub String);

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(message: impl Into<String>) -> ReferenceError {
    ReferenceError(message.into())
}

impl OciRef {
    /// Parses and validates `text`.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(invalid("the reference is empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("the reference contains whitespace"));
        }
        let (name_tag, digest) = match text.split_once('@') {
            Some((n, d)) => (n, Some(parse_digest(d)?)),
            None => (text, None),
        };
        let (name, tag) = split_tag(name_tag);
        if let Some(tag) = tag {
            check_tag(tag)?;
        }
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1 && is_registry(parts[0]) {
            let host = parts.remove(0);
            check_registry(host)?;
            Some(host.to_string())
        } else {
            None
        };
        for part in &parts {
            check_path_component(part)?;
        }
        let docker_hub = registry
            .as_deref()
            .is_none_or(|r| DOCKER_HUB_HOSTS.contains(&r));
        let mut repository = parts.join("/");
        if docker_hub && parts.len() == 1 {
            repository = format!("library/{repository}");
        }
        if repository.len() > 255 {
            return Err(invalid("the repository name is longer than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some("latest".to_string()),
            (None, Some(_)) => None,
        };
        Ok(OciRef {
            registry: match registry {
                Some(host) if !docker_hub => host,
                _ => DOCKER_HUB_HOST.to_string(),
            },
            repository,
            tag,
            digest,
        })
    }

    /// True for Docker Hub images (served by a mirror when one is set, then by Docker Hub).
    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB_HOST
    }

    /// `REGISTRY/REPOSITORY@DIGEST`: this image pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("{}/{}@{digest}", self.registry, self.repository)
    }

    /// The short name Docker prints: `busybox:latest` for Docker Hub's official images,
    /// `someone/tool:v1` for its others, the full reference for other registries.
    pub fn familiar(&self) -> String {
        let full = self.to_string();
        match full.strip_prefix(&format!("{DOCKER_HUB_HOST}/")) {
            Some(hub) => hub.strip_prefix("library/").unwrap_or(hub).to_string(),
            None => full,
        }
    }
}

impl fmt::Display for OciRef {
    /// The normalised reference: `REGISTRY/REPOSITORY[:TAG][@DIGEST]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

/// Splits `name[:tag]`; a `:` before the last `/` belongs to a registry port.
fn split_tag(name_tag: &str) -> (&str, Option<&str>) {
    match name_tag.rfind(':') {
        Some(i) if !name_tag[i..].contains('/') => (&name_tag[..i], Some(&name_tag[i + 1..])),
        _ => (name_tag, None),
    }
}

fn parse_digest(digest: &str) -> Result<String, ReferenceError> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(invalid(format!(
            "`{digest}` is not a digest; write `sha256:` and 64 hex digits"
        )));
    };
    if algorithm != "sha256" {
        return Err(invalid(format!(
            "digest algorithm `{algorithm}` is not supported; use sha256"
        )));
    }
    if hex.len() != 64
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        return Err(invalid(
            "a sha256 digest is exactly 64 lowercase hex digits",
        ));
    }
    Ok(digest.to_string())
}

fn check_tag(tag: &str) -> Result<(), ReferenceError> {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > 128
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    {
        return Err(invalid(format!(
            "`{tag}` is not a valid tag (letters, digits, `_`, `.`, `-`, at most 128, not starting with `.` or `-`)"
        )));
    }
    Ok(())
}

fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `host[:port]` where host is a DNS name, an IPv4 address or a bracketed IPv6 address.
pub(crate) fn check_registry(registry: &str) -> Result<(), ReferenceError> {
    let bad = || {
        invalid(format!(
            "`{registry}` is not a valid registry host (HOST or HOST:PORT)"
        ))
    };
    let port = if let Some(rest) = registry.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(bad)?;
        v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(bad)?),
        }
    } else {
        let (host, port) = match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if !host.split('.').all(label_ok) {
            return Err(bad());
        }
        port
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid(format!(
                "`{registry}`: the port must be a number from 1 to 65535"
            )));
        }
    }
    Ok(())
}

/// A repository path component: lowercase alphanumerics joined by `.`, `_`, `__` or runs of `-`.
fn check_path_component(part: &str) -> Result<(), ReferenceError> {
    if part.is_empty() {
        return Err(invalid("the repository name has an empty path component"));
    }
    if part.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(invalid(format!(
            "`{part}`: repository names must be lowercase"
        )));
    }
    let bytes = part.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut previous_separator = true;
    while i < bytes.len() {
        if is_alnum(bytes[i]) {
            previous_separator = false;
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !is_alnum(bytes[i]) {
            i += 1;
        }
        let separator = &part[start..i];
        let valid = matches!(separator, "." | "_" | "__") || separator.chars().all(|c| c == '-');
        if previous_separator || !valid || i == bytes.len() {
            return Err(invalid(format!(
                "`{part}` is not a valid repository name component (lowercase letters and digits, separated by `.`, `_`, `__` or `-`)"
            )));
        }
        previous_separator = true;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> OciRef {
        OciRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn normalised(text: &str) -> String {
        ok(text).to_string()
    }

    #[test]
    fn docker_hub_names_normalise_to_registry_1() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for (text, want) in [
            (
                "busybox",
                "registry-1.docker.io/library/busybox:latest".to_string(),
            ),
            (
                "busybox:1.36",
                "registry-1.docker.io/library/busybox:1.36".into(),
            ),
            (
                "docker.io/busybox",
                "registry-1.docker.io/library/busybox:latest".into(),
            ),
            ("docker.io/x/y", "registry-1.docker.io/x/y:latest".into()),
            (
                "index.docker.io/x/y:v2",
                "registry-1.docker.io/x/y:v2".into(),
            ),
            (
                &format!("index.docker.io/x/y@{digest}"),
                format!("registry-1.docker.io/x/y@{digest}"),
            ),
            (
                "registry-1.docker.io/library/busybox",
                "registry-1.docker.io/library/busybox:latest".into(),
            ),
            (
                "ocaml/opam:debian-12-ocaml-5.2",
                "registry-1.docker.io/ocaml/opam:debian-12-ocaml-5.2".into(),
            ),
            (
                &format!("busybox@{digest}"),
                format!("registry-1.docker.io/library/busybox@{digest}"),
            ),
        ] {
            assert_eq!(normalised(text), want, "{text}");
            assert!(ok(text).is_docker_hub(), "{text}");
        }
        let r = ok("someone/tool:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            (DOCKER_HUB_HOST, "someone/tool")
        );
        assert_eq!(r.familiar(), "someone/tool:v1");
        assert_eq!(ok("docker.io/library/busybox").familiar(), "busybox:latest");
        assert_eq!(
            ok("busybox").pinned(&digest),
            format!("registry-1.docker.io/library/busybox@{digest}")
        );
        // A pinned reference reads back as the same image.
        assert_eq!(
            ok(&ok("busybox").pinned(&digest)),
            ok(&format!("busybox@{digest}"))
        );
    }

    #[test]
    fn other_registries_are_kept() {
        for (text, want) in [
            ("localhost:5000/x", "localhost:5000/x:latest"),
            ("ghcr.io/a/b:tag", "ghcr.io/a/b:tag"),
            ("quay.io/x", "quay.io/x:latest"),
        ] {
            assert_eq!(normalised(text), want, "{text}");
            assert!(!ok(text).is_docker_hub(), "{text}");
            assert_eq!(ok(text).familiar(), want);
        }
    }

    #[test]
    fn registries_with_ports() {
        let r = ok("127.0.0.1:5000/kiln/test:v1");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "kiln/test", Some("v1"))
        );
        let r = ok("localhost/app");
        assert_eq!(
            (r.registry.as_str(), r.tag.as_deref()),
            ("localhost", Some("latest"))
        );
        let r = ok("[::1]:5000/app:x");
        assert_eq!(r.registry, "[::1]:5000");
        let digest = format!("sha256:{}", "a".repeat(64));
        let r = ok(&format!("reg.example:443/a/b@{digest}"));
        assert_eq!((r.tag, r.digest.as_deref()), (None, Some(digest.as_str())));
    }

    #[test]
    fn bad_references() {
        for bad in [
            "",
            "UPPER",
            "a b",
            "name:",
            "name:-x",
            "a//b",
            "a/b-",
            "reg:99999/a",
            "x@sha256:abc",
            "x@md5:0123",
            "a..b",
        ] {
            assert!(OciRef::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
