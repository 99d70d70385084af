//! An SPDX 2.3 software bill of materials for a root filesystem, in SPDX's JSON form,
//! listing the packages dpkg has installed in it.
//!
//! The document describes one `OPERATING-SYSTEM` package (from os-release) that
//! `CONTAINS` every installed dpkg package. Each package carries a package URL
//! (`pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12`) so scanners can
//! match it against vulnerability databases. Licenses are `NOASSERTION`: Debian's
//! copyright files use Debian's own license short names, which are not SPDX expressions.
//!
//! Output is deterministic: packages are sorted, identifiers and the document namespace
//! are derived from the inputs only, and the creation time is the caller's.

use crate::osinfo::{installed_packages, os_descriptor, DpkgPackage};
use crate::{ImageError, OsDescriptor};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::Path;

/// SPDX's word for "the creator of this document does not say".
const NOASSERTION: &str = "NOASSERTION";
/// The SPDX identifier of the operating-system package.
pub const OS_SPDXID: &str = "SPDXRef-OperatingSystem";

/// Builds the SPDX 2.3 document for the tree at `rootfs`.
///
/// `image_name` becomes the document's name; `seed` (the image or layer id) determines the
/// `documentNamespace`, so the same image always gets the same namespace and different
/// images different ones; `created_epoch` (SOURCE_DATE_EPOCH) is the creation time.
/// A tree without a dpkg database gives a document with only the OS package.
pub fn sbom(
    rootfs: &Path,
    image_name: &str,
    seed: &str,
    created_epoch: i64,
) -> Result<Value, ImageError> {
    let os = os_descriptor(rootfs)?;
    let packages = installed_packages(rootfs)?;
    Ok(document(&os, packages, image_name, seed, created_epoch))
}

/// The document for an OS and its packages (pure: [`sbom`] without the reading).
pub fn document(
    os: &OsDescriptor,
    mut packages: Vec<DpkgPackage>,
    image_name: &str,
    seed: &str,
    created_epoch: i64,
) -> Value {
    packages.sort_by(|a, b| (&a.name, &a.arch, &a.version).cmp(&(&b.name, &b.arch, &b.version)));
    let mut ids = SpdxIds::default();
    let mut spdx_packages = vec![os_package(os)];
    let mut relationships = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", OS_SPDXID)];
    for package in &packages {
        let id = ids.allocate(package);
        relationships.push(relationship(OS_SPDXID, "CONTAINS", &id));
        spdx_packages.push(deb_package(package, &id, os));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": image_name,
        "documentNamespace": document_namespace(image_name, seed),
        "creationInfo": {
            "created": rfc3339_utc(created_epoch),
            "creators": [format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": spdx_packages,
        "relationships": relationships,
    })
}

fn relationship(from: &str, kind: &str, to: &str) -> Value {
    json!({
        "spdxElementId": from,
        "relationshipType": kind,
        "relatedSpdxElement": to,
    })
}

fn os_package(os: &OsDescriptor) -> Value {
    let mut package = json!({
        "SPDXID": OS_SPDXID,
        "name": os.id,
        "supplier": NOASSERTION,
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
    });
    if !os.version.is_empty() {
        package["versionInfo"] = json!(os.version);
    }
    if !os.pretty_name.is_empty() {
        package["description"] = json!(os.pretty_name);
    }
    package
}

fn deb_package(package: &DpkgPackage, id: &str, os: &OsDescriptor) -> Value {
    let mut value = json!({
        "SPDXID": id,
        "name": package.name,
        "supplier": supplier(package.maintainer.as_deref()),
        "downloadLocation": NOASSERTION,
        "filesAnalyzed": false,
        "licenseConcluded": NOASSERTION,
        "licenseDeclared": NOASSERTION,
        "copyrightText": NOASSERTION,
        "externalRefs": [{
            "referenceCategory": "PACKAGE-MANAGER",
            "referenceType": "purl",
            "referenceLocator": purl(package, os),
        }],
    });
    if !package.version.is_empty() {
        value["versionInfo"] = json!(package.version);
    }
    if let Some(source) = &package.source {
        value["sourceInfo"] = json!(format!("built from the Debian source package {source}"));
    }
    value
}

/// `Organization: Name (email)` from a Debian `Name <email>` maintainer field.
pub fn supplier(maintainer: Option<&str>) -> String {
    let Some(maintainer) = maintainer.map(str::trim).filter(|m| !m.is_empty()) else {
        return NOASSERTION.to_string();
    };
    match maintainer.split_once('<') {
        Some((name, rest)) => {
            let email = rest.trim_end().trim_end_matches('>').trim();
            let name = name.trim();
            match (name.is_empty(), email.is_empty()) {
                (false, false) => format!("Organization: {name} ({email})"),
                (false, true) => format!("Organization: {name}"),
                (true, _) => format!("Organization: {email}"),
            }
        }
        None => format!("Organization: {maintainer}"),
    }
}

/// The package URL of a Debian package: `pkg:deb/<os id>/<name>@<version>?arch=…&distro=…`
/// with name, version and qualifier values percent-encoded as the purl specification
/// says (`+` becomes `%2B`; an epoch's `:` stays as it is).
pub fn purl(package: &DpkgPackage, os: &OsDescriptor) -> String {
    let namespace = os.id.to_ascii_lowercase();
    let mut purl = format!(
        "pkg:deb/{}/{}",
        purl_encode(&namespace),
        purl_encode(&package.name.to_ascii_lowercase())
    );
    if !package.version.is_empty() {
        purl.push('@');
        purl.push_str(&purl_encode(&package.version));
    }
    let mut qualifiers = Vec::new();
    if !package.arch.is_empty() {
        qualifiers.push(format!("arch={}", purl_encode(&package.arch)));
    }
    if !os.version.is_empty() {
        let distro = format!("{namespace}-{}", os.version);
        qualifiers.push(format!("distro={}", purl_encode(&distro)));
    }
    if !qualifiers.is_empty() {
        purl.push('?');
        purl.push_str(&qualifiers.join("&"));
    }
    purl
}

/// Percent-encodes everything but ASCII letters, digits, `.-_~` and `:`.
pub fn purl_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'-' | b'_' | b'~' | b':') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Hands out unique SPDX identifiers (`SPDXRef-` + letters, digits, `.` and `-` only).
#[derive(Default)]
struct SpdxIds {
    used: BTreeSet<String>,
}

impl SpdxIds {
    fn allocate(&mut self, package: &DpkgPackage) -> String {
        let base = format!(
            "SPDXRef-Package-deb-{}-{}",
            sanitise_id(&package.name),
            sanitise_id(&package.arch)
        );
        let mut id = base.clone();
        if self.used.contains(&id) {
            // Two names that sanitise alike (`a+b`, `a-b`), or one package recorded twice:
            // the exact name, version and arch tell them apart.
            let hash = Sha256::digest(
                format!("{}\0{}\0{}", package.name, package.version, package.arch).as_bytes(),
            );
            id = format!("{base}-{}", &hex::encode(hash)[..12]);
            let mut n = 2;
            while self.used.contains(&id) {
                id = format!("{base}-{}-{n}", &hex::encode(hash)[..12]);
                n += 1;
            }
        }
        self.used.insert(id.clone());
        id
    }
}

/// Replaces every character SPDX identifiers may not hold with `-`.
fn sanitise_id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `https://spdx.org/spdxdocs/kiln/<name>-<uuid>`, the UUID (RFC 9562 version 8) being
/// the first 128 bits of sha256 over the seed.
pub fn document_namespace(image_name: &str, seed: &str) -> String {
    let hash = Sha256::digest(format!("kiln-spdx-namespace\0{seed}").as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&hash[..16]);
    bytes[6] = (bytes[6] & 0x0f) | 0x80;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let h = hex::encode(bytes);
    let name: String = purl_encode(image_name).replace(':', "%3A");
    format!(
        "https://spdx.org/spdxdocs/kiln/{name}-{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since 1970-01-01 UTC (proleptic Gregorian).
pub fn rfc3339_utc(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Year, month and day of the day `days` after 1970-01-01, counting in 400-year eras
/// (146 097 days each) whose years start in March, so the leap day comes last.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkg(name: &str, version: &str, arch: &str) -> DpkgPackage {
        DpkgPackage {
            name: name.into(),
            version: version.into(),
            arch: arch.into(),
            maintainer: None,
            source: None,
        }
    }

    fn debian() -> OsDescriptor {
        OsDescriptor {
            id: "debian".into(),
            name: "Debian GNU/Linux".into(),
            version: "12".into(),
            pretty_name: "Debian GNU/Linux 12 (bookworm)".into(),
            arch: "amd64".into(),
        }
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339_utc(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn purls_encode_as_the_spec_says() {
        let os = debian();
        assert_eq!(
            purl(&pkg("libc6", "2.36-9+deb12u4", "amd64"), &os),
            "pkg:deb/debian/libc6@2.36-9%2Bdeb12u4?arch=amd64&distro=debian-12"
        );
        assert_eq!(
            purl(&pkg("libstdc++6", "1:12.2.0-14", "amd64"), &os),
            "pkg:deb/debian/libstdc%2B%2B6@1:12.2.0-14?arch=amd64&distro=debian-12"
        );
        let sid = OsDescriptor {
            version: String::new(),
            ..debian()
        };
        assert_eq!(
            purl(&pkg("tzdata", "2024a-1~rc1", "all"), &sid),
            "pkg:deb/debian/tzdata@2024a-1~rc1?arch=all"
        );
    }

    #[test]
    fn suppliers_from_maintainers() {
        assert_eq!(
            supplier(Some("GNU Libc Maintainers <debian-glibc@lists.debian.org>")),
            "Organization: GNU Libc Maintainers (debian-glibc@lists.debian.org)"
        );
        assert_eq!(supplier(Some("Just A Name")), "Organization: Just A Name");
        assert_eq!(supplier(Some("  ")), "NOASSERTION");
        assert_eq!(supplier(None), "NOASSERTION");
    }

    #[test]
    fn ids_are_valid_and_unique() {
        let mut ids = SpdxIds::default();
        let a = ids.allocate(&pkg("libstdc++6", "1", "amd64"));
        let b = ids.allocate(&pkg("libstdc--6", "1", "amd64"));
        let c = ids.allocate(&pkg("libstdc--6", "1", "amd64"));
        assert_eq!(a, "SPDXRef-Package-deb-libstdc--6-amd64");
        assert_ne!(a, b);
        assert_ne!(b, c);
        for id in [a, b, c] {
            assert!(id
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '.' || ch == '-'));
        }
    }

    #[test]
    fn namespace_depends_on_seed_only_and_is_a_uri() {
        let a = document_namespace("web image", "seed-1");
        assert_eq!(a, document_namespace("web image", "seed-1"));
        assert_ne!(a, document_namespace("web image", "seed-2"));
        assert!(a.starts_with("https://spdx.org/spdxdocs/kiln/web%20image-"));
        assert!(!a.contains('#') && !a.contains(' '));
        let uuid = &a[a.len() - 36..];
        assert_eq!(uuid.as_bytes()[14], b'8', "version 8 UUID: {uuid}");
    }

    #[test]
    fn packages_sorted_and_contained() {
        let doc = document(
            &debian(),
            vec![pkg("zlib1g", "1", "amd64"), pkg("bash", "5", "amd64")],
            "img",
            "seed",
            0,
        );
        let names: Vec<&str> = doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["debian", "bash", "zlib1g"]);
        let rels = doc["relationships"].as_array().unwrap();
        assert_eq!(rels.len(), 3);
        assert_eq!(rels[0]["relationshipType"], "DESCRIBES");
        assert_eq!(
            rels[1]["relatedSpdxElement"],
            "SPDXRef-Package-deb-bash-amd64"
        );
        assert_eq!(rels[1]["relationshipType"], "CONTAINS");
    }
}
