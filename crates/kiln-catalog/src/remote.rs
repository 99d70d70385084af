//! Where `kiln image push` sends and `kiln image pull` fetches, by URL scheme: `http://`
//! and `https://` are kiln marketplaces ([`crate::client`]); `oci://REGISTRY/REPO[:TAG]`
//! names an OCI registry, kept as a plain URL here and in metadata `locations`. The
//! catalogue does not speak the registry protocol itself: the CLI moves [`Remote::Oci`]
//! locations with `kiln-fetch`'s artifact layer and hands the result to
//! [`crate::admit`], so this crate never depends on the registry client.

use crate::CatalogError;

/// A parsed push target or pull source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Remote {
    /// A kiln marketplace: its base URL (no trailing slash) and, for a pull, the image
    /// reference (id, id prefix or short id).
    Marketplace {
        base: String,
        reference: Option<String>,
    },
    /// An OCI registry location, as given (`oci://registry/repo:tag`).
    Oci(String),
}

/// Parses a push target (`reference` absent: the URL is the marketplace itself).
pub fn parse_target(url: &str) -> Result<Remote, CatalogError> {
    parse(url, false)
}

/// Parses a pull source: `https://HOST[:PORT][/PREFIX]/REF`, or the API's
/// `…/api/images/REF[/download]`.
pub fn parse_source(url: &str) -> Result<Remote, CatalogError> {
    parse(url, true)
}

fn parse(text: &str, with_reference: bool) -> Result<Remote, CatalogError> {
    if text.starts_with("oci://") {
        return Ok(Remote::Oci(text.to_string()));
    }
    let url = url::Url::parse(text).map_err(|e| {
        CatalogError::Usage(format!(
            "{text:?} is not a URL ({e}): give https://MARKETPLACE{} or oci://REGISTRY/REPO",
            if with_reference { "/ID" } else { "" }
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CatalogError::Usage(format!(
            "{text}: kiln pushes and pulls over http://, https:// (a kiln marketplace) or oci:// \
             (a registry), not {}://",
            url.scheme()
        )));
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(CatalogError::Usage(format!(
            "{text}: a marketplace URL has no query, fragment or user name"
        )));
    }
    let origin = url.origin().ascii_serialization();
    let mut segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|p| !p.is_empty()).collect())
        .unwrap_or_default();
    if !with_reference {
        let path = segments.join("/");
        let base = if path.is_empty() {
            origin
        } else {
            format!("{origin}/{path}")
        };
        return Ok(Remote::Marketplace {
            base,
            reference: None,
        });
    }
    if segments.last() == Some(&"download") {
        segments.pop();
    }
    let reference = segments.pop().ok_or_else(|| {
        CatalogError::Usage(format!(
            "{text}: name the image after the marketplace's address (https://MARKETPLACE/ID)"
        ))
    })?;
    if segments.ends_with(&["api", "images"]) {
        segments.truncate(segments.len() - 2);
    }
    let path = segments.join("/");
    let base = if path.is_empty() {
        origin
    } else {
        format!("{origin}/{path}")
    };
    Ok(Remote::Marketplace {
        base,
        reference: Some(reference.to_string()),
    })
}

/// The error when an `oci://` location reaches the marketplace client: registries are
/// the registry transport's (`kiln image push|pull` dispatch on the scheme first).
pub fn oci_elsewhere(location: &str) -> CatalogError {
    CatalogError::Usage(format!(
        "{location}: an OCI registry, not a kiln marketplace: move it with `kiln image push|pull` \
         (the registry transport), not the marketplace client"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn market(base: &str, reference: Option<&str>) -> Remote {
        Remote::Marketplace {
            base: base.into(),
            reference: reference.map(str::to_string),
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            parse_source("http://127.0.0.1:8700/abcd1234").unwrap(),
            market("http://127.0.0.1:8700", Some("abcd1234"))
        );
        assert_eq!(
            parse_source("https://m.example/lab/api/images/abcd1234/download").unwrap(),
            market("https://m.example/lab", Some("abcd1234"))
        );
        assert_eq!(
            parse_source("oci://reg.example/web:1").unwrap(),
            Remote::Oci("oci://reg.example/web:1".into())
        );
        assert!(parse_source("http://127.0.0.1:8700/").is_err());
        assert!(parse_source("ftp://x/y").is_err());
        assert!(parse_source("http://x/y?z=1").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("http://127.0.0.1:8700/").unwrap(),
            market("http://127.0.0.1:8700", None)
        );
        assert_eq!(
            parse_target("https://m.example/lab").unwrap(),
            market("https://m.example/lab", None)
        );
    }
}
