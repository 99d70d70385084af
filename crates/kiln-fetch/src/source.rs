//! `(from …)` strings: which kind of base they name, validated before anything runs.

use crate::oci::OciRef;
use crate::tarball::{Compression, SUPPORTED_EXTENSIONS};
use crate::FetchError;
use kiln_spec::Bootstrap;
use std::fmt;
use std::path::{Path, PathBuf};

/// A parsed `(from …)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseSource {
    /// `debian:SUITE` with its `(bootstrap …)` options; `mirror`/`arch` `None` mean defaults.
    Debian {
        suite: String,
        variant: String,
        include: Vec<String>,
        /// `(skeleton …)` directories, resolved against the build context.
        skeleton: Vec<PathBuf>,
        mirror: Option<String>,
        arch: Option<String>,
    },
    /// `file:PATH`: an absolute path to an existing rootfs tarball.
    Tar(PathBuf),
    /// An OCI image reference as written (validated). After [`crate::Fetcher::resolve`] it is
    /// the pinned `REGISTRY/REPOSITORY@sha256:…`.
    Oci(String),
    /// `layer:NAME` or `layer:ID`: a layer already in the store (a name saved by
    /// `kiln shell --save`, or a full layer id). The builder takes it from the store;
    /// nothing is fetched. `vm:NAME` (a VM base registered by `kiln base`) is the layer
    /// named `vm:NAME`.
    Layer(String),
}

impl fmt::Display for BaseSource {
    /// The base as a user would write it in `(from …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseSource::Debian { suite, .. } => write!(f, "debian:{suite}"),
            BaseSource::Tar(path) => write!(f, "file:{}", path.display()),
            BaseSource::Oci(reference) => f.write_str(reference),
            BaseSource::Layer(name) if name.starts_with(kiln_store::VM_BASE_PREFIX) => {
                f.write_str(name)
            }
            BaseSource::Layer(name) => write!(f, "layer:{name}"),
        }
    }
}

/// Variants `mmdebstrap --variant` accepts: the list the spec validates against.
pub const DEBIAN_VARIANTS: &[&str] = kiln_spec::BOOTSTRAP_VARIANTS;

/// Parses a `from` string (relative `file:` paths are resolved against `context`).
pub fn parse_base(
    from: &str,
    bootstrap: Option<&Bootstrap>,
    context: &Path,
) -> Result<BaseSource, FetchError> {
    if let Some(suite) = from.strip_prefix("debian:") {
        return parse_debian(from, suite, bootstrap, context);
    }
    if bootstrap.is_some() {
        return Err(FetchError::base(
            from,
            "(bootstrap …) only applies to `debian:SUITE` bases; remove it or use a debian: base",
        ));
    }
    if let Some(path) = from.strip_prefix("file:") {
        return parse_tar(from, path, context);
    }
    if let Some(name) = from.strip_prefix("layer:") {
        return parse_layer(from, name);
    }
    if from.starts_with(kiln_store::VM_BASE_PREFIX) {
        return parse_vm(from);
    }
    OciRef::parse(from).map_err(|e| {
        FetchError::base(
            from,
            format!(
                "not a valid base: {e}. A base is `debian:SUITE`, `file:PATH.tar[.gz|.zst]` or an OCI image \
                 reference such as `NAME:TAG`, `REGISTRY/NAME:TAG` or `NAME@sha256:<64 hex digits>`"
            ),
        )
    })?;
    Ok(BaseSource::Oci(from.to_string()))
}

fn parse_debian(
    from: &str,
    suite: &str,
    bootstrap: Option<&Bootstrap>,
    context: &Path,
) -> Result<BaseSource, FetchError> {
    if !is_debian_word(suite) {
        return Err(FetchError::base(
            from,
            "the suite must be a Debian suite or codename made of lowercase letters, digits and `-` (e.g. `debian:bookworm`)",
        ));
    }
    let default = Bootstrap::default();
    let b = bootstrap.unwrap_or(&default);
    let variant = b.variant.clone().unwrap_or_else(|| "minbase".to_string());
    if !DEBIAN_VARIANTS.contains(&variant.as_str()) {
        return Err(FetchError::base(
            from,
            format!(
                "unknown bootstrap variant `{variant}`; use one of {}",
                DEBIAN_VARIANTS.join(", ")
            ),
        ));
    }
    for package in &b.include {
        if !is_package_request(package) {
            return Err(FetchError::base(
                from,
                format!("`{package}` in (include …) is not a Debian package name (optionally `NAME=VERSION` or `NAME/SUITE`)"),
            ));
        }
    }
    if let Some(mirror) = &b.mirror {
        let scheme_ok = mirror.starts_with("http://") || mirror.starts_with("https://");
        if !scheme_ok || mirror.chars().any(char::is_whitespace) || mirror.len() <= "https://".len()
        {
            return Err(FetchError::base(
                from,
                format!("mirror `{mirror}` must be an http:// or https:// URL such as http://deb.debian.org/debian"),
            ));
        }
    }
    if let Some(arch) = &b.arch {
        if !is_debian_word(arch) {
            return Err(FetchError::base(
                from,
                format!("`{arch}` is not a Debian architecture name (e.g. amd64, arm64)"),
            ));
        }
    }
    let skeleton = b.skeleton.iter().map(|dir| context.join(dir)).collect();
    Ok(BaseSource::Debian {
        suite: suite.to_string(),
        variant,
        include: b.include.clone(),
        skeleton,
        mirror: b.mirror.clone(),
        arch: b.arch.clone(),
    })
}

fn parse_tar(from: &str, path: &str, context: &Path) -> Result<BaseSource, FetchError> {
    if path.is_empty() {
        return Err(FetchError::base(
            from,
            "`file:` needs a path to a rootfs tarball, e.g. `file:rootfs.tar.gz`",
        ));
    }
    let full = context.join(path);
    if Compression::from_path(&full).is_none() {
        return Err(FetchError::base(
            from,
            format!(
                "{} is not a tarball kiln can read; name it with {SUPPORTED_EXTENSIONS}",
                full.display()
            ),
        ));
    }
    match full.metadata() {
        Ok(meta) if meta.is_file() => Ok(BaseSource::Tar(full)),
        Ok(_) => Err(FetchError::base(from, format!("{} is not a regular file", full.display()))),
        Err(e) => Err(FetchError::base(
            from,
            format!("cannot read the tarball {}: {e} (relative paths are relative to the build context)", full.display()),
        )),
    }
}

fn parse_layer(from: &str, name: &str) -> Result<BaseSource, FetchError> {
    if kiln_spec::LayerId::parse(name).is_ok() || kiln_store::check_name(name).is_ok() {
        return Ok(BaseSource::Layer(name.to_string()));
    }
    Err(FetchError::base(
        from,
        "`layer:` needs a layer name saved by `kiln shell --save NAME` (letters, digits, `-`, `_`, `.`) \
         or a full 64-digit layer id, e.g. `layer:dev-tools`",
    ))
}

fn parse_vm(from: &str) -> Result<BaseSource, FetchError> {
    if kiln_store::check_name(from).is_ok() {
        return Ok(BaseSource::Layer(from.to_string()));
    }
    Err(FetchError::base(
        from,
        "`vm:` needs the name of a VM base (letters, digits, `-`, `_`, `.`) registered by \
         `kiln base import` or `kiln base build`, e.g. `vm:bookworm` (see `kiln base ls`)",
    ))
}

/// Lowercase letters, digits and `-`, starting with a letter or digit.
fn is_debian_word(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// `NAME`, `NAME=VERSION` or `NAME/SUITE`, with Debian's package name rules.
fn is_package_request(s: &str) -> bool {
    let (name, rest) = match s.find(['=', '/']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let name_ok = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c));
    let rest_ok = rest.is_none_or(|r| {
        !r.is_empty()
            && r.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.~:_".contains(c))
    });
    name_ok && rest_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_requests() {
        assert!(is_package_request("curl"));
        assert!(is_package_request("libc6:amd64"));
        assert!(is_package_request("g++"));
        assert!(is_package_request("curl=7.88.1-10"));
        assert!(is_package_request("curl/bookworm-backports"));
        assert!(!is_package_request("curl wget"));
        assert!(!is_package_request("a,b"));
        assert!(!is_package_request("Curl"));
        assert!(!is_package_request("curl="));
        assert!(!is_package_request("x"));
    }
}
