//! Catalogue metadata of one image (pure: no I/O).
//!
//! An image is identified by the SHA-256 of its file (`id`, 64 hex digits) and shown in a
//! short form too: the first 80 bits of that digest in lowercase RFC 4648 base32 (16
//! characters, `short_id`). The metadata is JSON following the schema published in
//! `docs/catalog-metadata.schema.json` (`kiln-image-metadata/1`); fields this version does
//! not know are kept as they are ([`Metadata::extra`]) so that a newer writer's metadata
//! survives a round trip through an older kiln, signature included.
//!
//! What is signed is the *canonical* form ([`Metadata::canonical_json`]): the JSON value
//! with every object's keys sorted, no insignificant white space, and a final newline. The
//! catalogue stores exactly those bytes, so `minisign -V -m metadata.json` checks the
//! stored file as it is.

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use kiln_image::manifest::Manifest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The `schema` value of metadata this version writes.
pub const SCHEMA: &str = "kiln-image-metadata/1";

/// Length of [`short_id`] in characters.
pub const SHORT_ID_LEN: usize = 16;

/// An error in metadata itself (not in reading or writing it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("not kiln image metadata: {0}")]
    Parse(String),
    #[error("metadata schema {found:?} is not {SCHEMA:?}: use the kiln version that wrote it")]
    Schema { found: String },
    #[error("invalid metadata: {0}")]
    Invalid(String),
    #[error("{0:?} is not a duration: write a number and a unit, e.g. 180d, 12w, 1y or 36h")]
    Duration(String),
}

/// Who vouches for an image: an e-mail address and the minisign key id that signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorser {
    pub email: String,
    /// The signing key's id as minisign prints it: 16 uppercase hex digits.
    pub key_id: String,
}

/// Who made an image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub email: String,
}

/// Why and when an image was deprecated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deprecation {
    pub reason: String,
    /// RFC 3339 UTC.
    pub at: String,
}

/// Digests of the image file (lowercase hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checksums {
    pub sha256: String,
    pub sha512: String,
}

/// One partition's operating system (DETERLab's OSID), from the image manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOs {
    /// The partition's name in the spec.
    pub name: String,
    /// 1-based GPT index.
    pub index: u32,
    /// `ID` of its os-release (`debian`).
    pub os: String,
    /// `VERSION_ID` (`12`).
    pub os_version: String,
    /// Debian architecture (`amd64`).
    pub arch: String,
    /// `PRETTY_NAME`.
    #[serde(default)]
    pub pretty_name: String,
}

/// The metadata of one catalogue entry (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub schema: String,
    /// SHA-256 of the image file, lowercase hex: the identifier.
    pub id: String,
    /// [`short_id`] of `id`.
    pub short_id: String,
    pub title: String,
    #[serde(default)]
    pub description: String,
    pub version: String,
    #[serde(default)]
    pub author: Author,
    #[serde(default)]
    pub comment: String,
    pub endorser: Endorser,
    /// RFC 3339 UTC.
    pub created: String,
    /// RFC 3339 UTC: after this instant the endorsement no longer holds.
    pub valid_until: String,
    #[serde(default)]
    pub deprecated: Option<Deprecation>,
    /// File name of the image as published (`web.qcow2`): a plain name, no directories.
    pub file: String,
    /// `raw`, `qcow2`, `vmdk`, …
    pub format: String,
    pub bytes: u64,
    pub virtual_size: u64,
    pub checksums: Checksums,
    /// `uefi`, `kernel` or `none`.
    #[serde(default)]
    pub boot: String,
    pub partitions: Vec<PartitionOs>,
    #[serde(default)]
    pub default_partition: Option<String>,
    #[serde(default)]
    pub node_types: Vec<String>,
    /// URLs where the image can be fetched: `https://…`, `file://…`, `oci://…`.
    #[serde(default)]
    pub locations: Vec<String>,
    /// sha256 of the spec the image was built from (empty when unknown).
    #[serde(default)]
    pub spec_sha256: String,
    /// Fields this version does not know, kept for the round trip.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// What the caller says about an image when adding it.
#[derive(Debug, Clone, Default)]
pub struct Describe {
    pub title: String,
    pub description: String,
    pub version: String,
    pub author: Author,
    pub comment: String,
    pub endorser_email: String,
    pub endorser_key_id: String,
    pub created: DateTime<Utc>,
    pub valid_for: Duration,
    pub locations: Vec<String>,
}

/// Validity of an entry at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Validity {
    Valid,
    Expired,
    Deprecated,
}

impl Validity {
    pub fn as_str(self) -> &'static str {
        match self {
            Validity::Valid => "valid",
            Validity::Expired => "expired",
            Validity::Deprecated => "deprecated",
        }
    }
}

impl Metadata {
    /// Metadata for the image a kiln manifest describes.
    pub fn from_manifest(manifest: &Manifest, d: &Describe) -> Result<Metadata, MetadataError> {
        let partitions = manifest
            .partitions
            .iter()
            .map(|p| PartitionOs {
                name: p.name.clone(),
                index: p.index,
                os: p.os.id.clone(),
                os_version: p.os.version.clone(),
                arch: p.os.arch.clone(),
                pretty_name: p.os.pretty_name.clone(),
            })
            .collect();
        let meta = Metadata {
            schema: SCHEMA.to_string(),
            id: manifest.sha256.clone(),
            short_id: short_id(&manifest.sha256)?,
            title: d.title.clone(),
            description: d.description.clone(),
            version: d.version.clone(),
            author: d.author.clone(),
            comment: d.comment.clone(),
            endorser: Endorser {
                email: d.endorser_email.clone(),
                key_id: d.endorser_key_id.clone(),
            },
            created: rfc3339(d.created),
            valid_until: rfc3339(d.created + d.valid_for),
            deprecated: None,
            file: manifest.file.clone(),
            format: manifest.format.clone(),
            bytes: manifest.bytes,
            virtual_size: manifest.virtual_size,
            checksums: Checksums {
                sha256: manifest.sha256.clone(),
                sha512: manifest.sha512.clone(),
            },
            boot: manifest.boot.clone(),
            partitions,
            default_partition: manifest.default_partition.clone(),
            node_types: manifest.node_types.clone(),
            locations: d.locations.clone(),
            spec_sha256: manifest.spec_sha256.clone(),
            extra: BTreeMap::new(),
        };
        meta.validate()?;
        Ok(meta)
    }

    /// Parses metadata (any key order, any white space) and validates it.
    pub fn parse(bytes: &[u8]) -> Result<Metadata, MetadataError> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| MetadataError::Parse(e.to_string()))?;
        if let Some(found) = value.get("schema").and_then(Value::as_str) {
            if found != SCHEMA {
                return Err(MetadataError::Schema {
                    found: found.to_string(),
                });
            }
        }
        let meta: Metadata =
            serde_json::from_value(value).map_err(|e| MetadataError::Parse(e.to_string()))?;
        meta.validate()?;
        Ok(meta)
    }

    /// The bytes that are signed and stored: see the module docs.
    pub fn canonical_json(&self) -> Vec<u8> {
        // serde_json cannot be told to sort keys (and a `preserve_order` feature turned on
        // anywhere in the build would change its maps' order), so the value is written here.
        let value = serde_json::to_value(self).expect("metadata always encodes as JSON");
        let mut out = String::new();
        write_canonical(&value, &mut out);
        out.push('\n');
        out.into_bytes()
    }

    /// Checks what the types cannot: digests, names and times are well-formed.
    pub fn validate(&self) -> Result<(), MetadataError> {
        let invalid = |m: String| Err(MetadataError::Invalid(m));
        if self.schema != SCHEMA {
            return Err(MetadataError::Schema {
                found: self.schema.clone(),
            });
        }
        if !is_hex(&self.id, 64) {
            return invalid(format!("id {:?} is not 64 lowercase hex digits", self.id));
        }
        if self.checksums.sha256 != self.id {
            return invalid("checksums.sha256 differs from the id".into());
        }
        if !is_hex(&self.checksums.sha512, 128) {
            return invalid("checksums.sha512 is not 128 lowercase hex digits".into());
        }
        if self.short_id != short_id(&self.id)? {
            return invalid(format!(
                "short_id {:?} does not match the id",
                self.short_id
            ));
        }
        if !is_safe_file_name(&self.file) {
            return invalid(format!(
                "file {:?} is not a plain file name (letters, digits, '.', '-', '_', \
                 at most 128 characters, not starting with '.')",
                self.file
            ));
        }
        if !is_safe_file_name(&self.format) {
            return invalid(format!("format {:?} is not a plain word", self.format));
        }
        if self.title.trim().is_empty() {
            return invalid("title is empty".into());
        }
        if !self.endorser.email.contains('@') {
            return invalid(format!(
                "endorser email {:?} is not an address",
                self.endorser.email
            ));
        }
        if !is_key_id(&self.endorser.key_id) {
            return invalid(format!(
                "endorser key id {:?} is not 16 uppercase hex digits",
                self.endorser.key_id
            ));
        }
        let created = parse_time(&self.created, "created")?;
        let until = parse_time(&self.valid_until, "valid_until")?;
        if until < created {
            return invalid("valid_until is before created".into());
        }
        if let Some(d) = &self.deprecated {
            parse_time(&d.at, "deprecated.at")?;
        }
        Ok(())
    }

    /// Valid, expired (at `now`) or deprecated (deprecation wins: it is the stronger word).
    pub fn validity(&self, now: DateTime<Utc>) -> Validity {
        if self.deprecated.is_some() {
            Validity::Deprecated
        } else if self.is_expired(now) {
            Validity::Expired
        } else {
            Validity::Valid
        }
    }

    /// Whether `valid_until` has passed at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        parse_time(&self.valid_until, "valid_until").map_or(true, |until| until < now)
    }

    /// Whether `query` (case-insensitive words, all of which must match) finds this entry
    /// in its title, description, version, author, endorser, ids, OS, arch or node types.
    pub fn matches_text(&self, query: &str) -> bool {
        let mut haystack = vec![
            self.id.as_str(),
            self.short_id.as_str(),
            self.title.as_str(),
            self.description.as_str(),
            self.version.as_str(),
            self.author.name.as_str(),
            self.author.email.as_str(),
            self.endorser.email.as_str(),
            self.comment.as_str(),
            self.file.as_str(),
            self.format.as_str(),
        ];
        for p in &self.partitions {
            haystack.extend([p.os.as_str(), p.os_version.as_str(), p.arch.as_str()]);
            haystack.push(p.pretty_name.as_str());
        }
        haystack.extend(self.node_types.iter().map(String::as_str));
        let haystack = haystack.join("\n").to_lowercase();
        query
            .split_whitespace()
            .all(|word| haystack.contains(&word.to_lowercase()))
    }

    /// Whether any partition runs `os` (its `ID`, or `ID-VERSION`/`ID:VERSION`).
    pub fn has_os(&self, os: &str) -> bool {
        let os = os.to_lowercase();
        self.partitions.iter().any(|p| {
            let id = p.os.to_lowercase();
            os == id
                || os == format!("{id}-{}", p.os_version)
                || os == format!("{id}:{}", p.os_version)
        })
    }

    /// Whether any partition is for `arch`.
    pub fn has_arch(&self, arch: &str) -> bool {
        self.partitions
            .iter()
            .any(|p| p.arch.eq_ignore_ascii_case(arch))
    }

    /// Whether `reference` names this entry: its full id, a hex prefix of at least 8
    /// digits, or its short id or a prefix of it of at least 6 characters.
    pub fn is_named_by(&self, reference: &str) -> bool {
        let r = reference.to_ascii_lowercase();
        (r.len() >= 6 && self.short_id.starts_with(&r))
            || (r.len() >= 8 && is_hex(&r, r.len()) && self.id.starts_with(&r))
    }
}

/// A search over entries: every given criterion must hold.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Filter {
    /// Words that must all appear ([`Metadata::matches_text`]).
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub os: Option<String>,
    #[serde(default)]
    pub arch: Option<String>,
    /// The endorser's e-mail (case-insensitive) or key id.
    #[serde(default)]
    pub endorser: Option<String>,
    /// Also list entries whose validity ran out.
    #[serde(default)]
    pub include_expired: bool,
}

impl Filter {
    /// Whether `m` passes the filter at `now`.
    pub fn matches(&self, m: &Metadata, now: DateTime<Utc>) -> bool {
        let given = |o: &Option<String>| {
            o.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        (self.include_expired || !m.is_expired(now))
            && given(&self.q).is_none_or(|q| m.matches_text(&q))
            && given(&self.os).is_none_or(|os| m.has_os(&os))
            && given(&self.arch).is_none_or(|arch| m.has_arch(&arch))
            && given(&self.endorser).is_none_or(|e| {
                m.endorser.email.eq_ignore_ascii_case(&e)
                    || m.endorser.key_id.eq_ignore_ascii_case(&e)
            })
    }
}

/// The short form of a sha256 hex id: 80 bits, lowercase base32 without padding.
pub fn short_id(id: &str) -> Result<String, MetadataError> {
    if !is_hex(id, 64) {
        return Err(MetadataError::Invalid(format!(
            "{id:?} is not a sha256 id (64 lowercase hex digits)"
        )));
    }
    let bytes = hex::decode(id).map_err(|e| MetadataError::Invalid(e.to_string()))?;
    Ok(data_encoding::BASE32_NOPAD
        .encode(&bytes[..10])
        .to_ascii_lowercase())
}

/// Whether `s` is exactly `len` lowercase hex digits.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `s` is a minisign key id as kiln writes it (16 uppercase hex digits).
pub fn is_key_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// A name that is safe as one path component anywhere: `[A-Za-z0-9._-]`, 1–128
/// characters, not starting with a dot (so neither `.`, `..` nor a hidden file).
pub fn is_safe_file_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

/// `180d`, `12w`, `36h`, `1y` (365 days), `90m` (minutes) or `3600s`.
pub fn parse_duration(s: &str) -> Result<Duration, MetadataError> {
    let err = || MetadataError::Duration(s.to_string());
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(err)?;
    let (n, unit) = t.split_at(split);
    let n: i64 = n.parse().map_err(|_| err())?;
    let seconds = match unit {
        "s" => 1,
        "m" | "min" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(err()),
    };
    n.checked_mul(seconds)
        .filter(|&s| s > 0 && s < 1000 * 365 * 86_400)
        .map(Duration::seconds)
        .ok_or_else(err)
}

/// An instant as RFC 3339 UTC with second precision (`2026-12-04T08:00:00Z`).
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Parses an RFC 3339 time of field `field`.
pub fn parse_time(s: &str, field: &str) -> Result<DateTime<Utc>, MetadataError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| MetadataError::Invalid(format!("{field} {s:?} is not an RFC 3339 time: {e}")))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_image::manifest::ManifestPartition;
    use kiln_image::OsDescriptor;

    fn manifest() -> Manifest {
        Manifest {
            schema: kiln_image::manifest::SCHEMA.into(),
            name: "web".into(),
            file: "web.qcow2".into(),
            format: "qcow2".into(),
            bytes: 1234,
            virtual_size: 1 << 30,
            sha256: "ab".repeat(32),
            sha512: "cd".repeat(64),
            boot: "uefi".into(),
            default_partition: Some("root".into()),
            node_types: vec!["pc3000".into(), "qemu".into()],
            arches: vec!["amd64".into()],
            partitions: vec![ManifestPartition {
                name: "root".into(),
                label: "root".into(),
                index: 2,
                partuuid: "p".into(),
                fs_uuid: "f".into(),
                offset: 1,
                size: 2,
                os: OsDescriptor {
                    id: "debian".into(),
                    name: "Debian GNU/Linux".into(),
                    version: "12".into(),
                    pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
                    arch: "amd64".into(),
                },
            }],
            spec_sha256: "ef".repeat(32),
            layer_id: "l".into(),
            kiln_version: "0.1.0".into(),
            build_time: 0,
            build_time_utc: "1970-01-01T00:00:00Z".into(),
        }
    }

    fn describe() -> Describe {
        Describe {
            title: "Web base".into(),
            version: "1.0".into(),
            endorser_email: "me@lab.org".into(),
            endorser_key_id: "0123456789ABCDEF".into(),
            created: DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
            valid_for: parse_duration("180d").unwrap(),
            locations: vec!["oci://registry.example/web:1.0".into()],
            ..Describe::default()
        }
    }

    #[test]
    fn from_manifest_carries_every_field() {
        let m = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        assert_eq!(m.id, "ab".repeat(32));
        assert_eq!(m.short_id.len(), SHORT_ID_LEN);
        assert_eq!(m.valid_until, "2026-06-30T00:00:00Z");
        assert_eq!(m.partitions[0].os, "debian");
        assert_eq!(m.partitions[0].os_version, "12");
        assert_eq!(m.partitions[0].arch, "amd64");
        assert_eq!(m.node_types, ["pc3000", "qemu"]);
        assert_eq!(m.default_partition.as_deref(), Some("root"));
        assert_eq!(m.spec_sha256, "ef".repeat(32));
        assert_eq!(m.locations, ["oci://registry.example/web:1.0"]);
    }

    #[test]
    fn short_id_is_base32_of_the_first_80_bits() {
        // 0xabababababababababab in base32.
        assert_eq!(short_id(&"ab".repeat(32)).unwrap(), "vov2xk5lvov2xk5l");
        assert!(short_id("xyz").is_err());
    }

    #[test]
    fn canonical_json_sorts_keys_and_round_trips_unknown_fields() {
        let m = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        let mut v = serde_json::to_value(&m).unwrap();
        v["zz_future"] = serde_json::json!({"b": 1, "a": [true, null]});
        let pretty = serde_json::to_vec_pretty(&v).unwrap();
        let parsed = Metadata::parse(&pretty).unwrap();
        assert_eq!(
            parsed.extra["zz_future"],
            serde_json::json!({"a": [true, null], "b": 1})
        );
        let canon = parsed.canonical_json();
        let text = std::str::from_utf8(&canon).unwrap();
        assert!(
            text.ends_with("}\n") && !text.contains(": ") && !text[..text.len() - 1].contains('\n')
        );
        assert!(text.contains(r#""zz_future":{"a":[true,null],"b":1}"#));
        let keys: Vec<String> = serde_json::from_slice::<serde_json::Map<String, Value>>(&canon)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        // Canonical is a fixed point.
        assert_eq!(Metadata::parse(&canon).unwrap().canonical_json(), canon);
    }

    #[test]
    fn validation_refuses_unsafe_names_and_bad_ids() {
        let good = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        for file in ["../etc/passwd", "a/b", ".hidden", "", "x\0y"] {
            let mut m = good.clone();
            m.file = file.into();
            assert!(m.validate().is_err(), "{file:?} accepted");
        }
        let mut m = good.clone();
        m.id = "AB".repeat(32);
        assert!(m.validate().is_err());
        let mut m = good.clone();
        m.checksums.sha256 = "cd".repeat(32);
        assert!(m.validate().is_err());
        let mut m = good;
        m.schema = "kiln-image-metadata/9".into();
        assert!(matches!(m.validate(), Err(MetadataError::Schema { .. })));
    }

    #[test]
    fn validity_expiry_and_deprecation() {
        let mut m = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        let before = parse_time("2026-03-01T00:00:00Z", "t").unwrap();
        let after = parse_time("2026-07-01T00:00:00Z", "t").unwrap();
        assert_eq!(m.validity(before), Validity::Valid);
        assert_eq!(m.validity(after), Validity::Expired);
        m.deprecated = Some(Deprecation {
            reason: "CVE".into(),
            at: "2026-02-01T00:00:00Z".into(),
        });
        assert_eq!(m.validity(before), Validity::Deprecated);
    }

    #[test]
    fn search_and_references() {
        let m = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        assert!(m.matches_text("web BOOKWORM"));
        assert!(!m.matches_text("web fedora"));
        assert!(m.has_os("debian") && m.has_os("debian-12") && !m.has_os("ubuntu"));
        assert!(m.has_arch("amd64") && !m.has_arch("arm64"));
        assert!(m.is_named_by(&"ab".repeat(32)));
        assert!(m.is_named_by("abababab"));
        assert!(!m.is_named_by("abab"));
        assert!(m.is_named_by(&m.short_id[..6]) && !m.is_named_by(&m.short_id[..5]));
        assert!(m.is_named_by(&m.short_id.to_uppercase()));
        let now = parse_time("2026-03-01T00:00:00Z", "t").unwrap();
        let later = parse_time("2027-03-01T00:00:00Z", "t").unwrap();
        let f = |q: &str, os: &str, arch: &str, e: &str, x: bool| Filter {
            q: Some(q.into()),
            os: Some(os.into()),
            arch: Some(arch.into()),
            endorser: Some(e.into()),
            include_expired: x,
        };
        assert!(f("web", "debian", "amd64", "ME@lab.org", false).matches(&m, now));
        assert!(f("", "", "", "", false).matches(&m, now));
        assert!(!f("", "", "arm64", "", false).matches(&m, now));
        assert!(!f("", "", "", "you@lab.org", false).matches(&m, now));
        assert!(!f("", "", "", "", false).matches(&m, later));
        assert!(f("", "", "", "", true).matches(&m, later));
    }

    #[test]
    fn published_schema_names_every_field() {
        let schema: Value =
            serde_json::from_str(include_str!("../../../docs/catalog-metadata.schema.json"))
                .unwrap();
        let m = Metadata::from_manifest(&manifest(), &describe()).unwrap();
        let v = serde_json::to_value(&m).unwrap();
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        let props = schema["properties"].as_object().unwrap();
        for k in &keys {
            assert!(props.contains_key(k.as_str()), "{k} is not in the schema");
        }
        for r in schema["required"].as_array().unwrap() {
            assert!(
                keys.iter().any(|k| *k == r.as_str().unwrap()),
                "{r} required but not written"
            );
        }
        assert_eq!(props["schema"]["const"], SCHEMA);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("180d").unwrap(), Duration::days(180));
        assert_eq!(parse_duration("2w").unwrap(), Duration::days(14));
        assert_eq!(parse_duration("1y").unwrap(), Duration::days(365));
        assert_eq!(parse_duration("36h").unwrap(), Duration::hours(36));
        for bad in ["", "d", "10", "10x", "-5d", "0d", "99999999999999y"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
