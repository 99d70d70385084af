//! SBOMs from a synthetic Debian tree, checked against the fields SPDX 2.3 requires.

use kiln_image::spdx::sbom;
use serde_json::Value;
use std::collections::HashSet;
use std::fs;
use std::path::Path;

const OS_RELEASE: &str = "ID=debian\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n\
                          PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n";

/// Paragraphs of a dpkg status file, deliberately not in name order.
const PARAGRAPHS: [&str; 6] = [
    "Package: zlib1g\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\n\
     Source: zlib\nVersion: 1:1.2.13.dfsg-1\n\
     Maintainer: Mark Brown <broonie@debian.org>\nDescription: compression library\n \
     zlib is a library implementing the deflate compression method.\n .\n More text.\n",
    "Package: libstdc++6\nStatus: install ok installed\nArchitecture: amd64\n\
     Source: gcc-12 (12.2.0-14)\nVersion: 12.2.0-14\n\
     Maintainer: Debian GCC Maintainers <debian-gcc@lists.debian.org>\n",
    "Package: bash\nEssential: yes\nStatus: install ok installed\nArchitecture: amd64\n\
     Version: 5.2.15-2+b2\nMaintainer: Matthias Klose <doko@debian.org>\n",
    "Package: removed\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n",
    "Package: zlib1g\nStatus: install ok installed\nArchitecture: i386\nMulti-Arch: same\n\
     Source: zlib\nVersion: 1:1.2.13.dfsg-1\n",
    "Package: tzdata\nStatus: install ok installed\nArchitecture: all\nVersion: 2024a-0+deb12u1\n",
];

fn tree(root: &Path, paragraphs: &[&str]) {
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::create_dir_all(root.join("var/lib/dpkg")).unwrap();
    fs::write(root.join("etc/os-release"), OS_RELEASE).unwrap();
    fs::write(root.join("var/lib/dpkg/status"), paragraphs.join("\n")).unwrap();
}

/// The checks SPDX 2.3's JSON schema and specification make on what this document uses.
fn validate(doc: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            problems.push(what);
        }
    };
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    check(doc["spdxVersion"] == "SPDX-2.3", "spdxVersion".into());
    check(doc["dataLicense"] == "CC0-1.0", "dataLicense".into());
    check(
        doc["SPDXID"] == "SPDXRef-DOCUMENT",
        "document SPDXID".into(),
    );
    check(!s(&doc["name"]).is_empty(), "document name".into());
    let ns = s(&doc["documentNamespace"]);
    check(
        ns.starts_with("https://") && !ns.contains('#') && !ns.contains(' '),
        format!("documentNamespace {ns:?} must be an absolute URI without #"),
    );
    let created = s(&doc["creationInfo"]["created"]);
    let shape_ok = created.len() == 20
        && created.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 => b == b'-',
            10 => b == b'T',
            13 | 16 => b == b':',
            19 => b == b'Z',
            _ => b.is_ascii_digit(),
        });
    check(
        shape_ok,
        format!("created {created:?} is not YYYY-MM-DDThh:mm:ssZ"),
    );
    let creators = doc["creationInfo"]["creators"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    check(!creators.is_empty(), "creators".into());
    for c in &creators {
        let c = s(c);
        check(
            ["Tool: ", "Organization: ", "Person: "]
                .iter()
                .any(|p| c.starts_with(p)),
            format!("creator {c:?}"),
        );
    }
    let mut ids: HashSet<String> = HashSet::from(["SPDXRef-DOCUMENT".to_string()]);
    for p in doc["packages"].as_array().cloned().unwrap_or_default() {
        let id = s(&p["SPDXID"]);
        check(
            id.strip_prefix("SPDXRef-").is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            }),
            format!("package SPDXID {id:?}"),
        );
        check(ids.insert(id.clone()), format!("duplicate SPDXID {id}"));
        check(!s(&p["name"]).is_empty(), format!("{id}: name"));
        check(
            p["downloadLocation"].is_string(),
            format!("{id}: downloadLocation"),
        );
        check(p["filesAnalyzed"] == false, format!("{id}: filesAnalyzed"));
        check(
            p.get("packageVerificationCode").is_none(),
            format!("{id}: verification code without files"),
        );
        let supplier = s(&p["supplier"]);
        check(
            supplier == "NOASSERTION"
                || supplier.starts_with("Organization: ")
                || supplier.starts_with("Person: "),
            format!("{id}: supplier {supplier:?}"),
        );
        for field in ["licenseConcluded", "licenseDeclared", "copyrightText"] {
            check(p[field].is_string(), format!("{id}: {field}"));
        }
        if let Some(purpose) = p.get("primaryPackagePurpose") {
            let allowed = [
                "APPLICATION",
                "FRAMEWORK",
                "LIBRARY",
                "CONTAINER",
                "OPERATING-SYSTEM",
                "DEVICE",
                "FIRMWARE",
                "SOURCE",
                "ARCHIVE",
                "FILE",
                "INSTALL",
                "OTHER",
            ];
            check(
                allowed.contains(&s(purpose).as_str()),
                format!("{id}: purpose"),
            );
        }
        for r in p["externalRefs"].as_array().cloned().unwrap_or_default() {
            let category = s(&r["referenceCategory"]);
            check(
                ["SECURITY", "PACKAGE-MANAGER", "PERSISTENT-ID", "OTHER"]
                    .contains(&category.as_str()),
                format!("{id}: referenceCategory {category}"),
            );
            check(
                !s(&r["referenceType"]).is_empty(),
                format!("{id}: referenceType"),
            );
            let locator = s(&r["referenceLocator"]);
            check(
                !locator.is_empty() && !locator.contains(' '),
                format!("{id}: referenceLocator {locator:?}"),
            );
        }
    }
    let relationships = doc["relationships"].as_array().cloned().unwrap_or_default();
    let mut describes = false;
    for r in &relationships {
        for end in ["spdxElementId", "relatedSpdxElement"] {
            check(
                ids.contains(&s(&r[end])),
                format!("relationship {end} {}", r[end]),
            );
        }
        let kind = s(&r["relationshipType"]);
        check(
            ["DESCRIBES", "CONTAINS", "DEPENDS_ON"].contains(&kind.as_str()),
            format!("relationshipType {kind}"),
        );
        describes |= r["spdxElementId"] == "SPDXRef-DOCUMENT" && kind == "DESCRIBES";
    }
    check(describes, "the document DESCRIBES nothing".into());
    problems
}

fn package<'a>(doc: &'a Value, id: &str) -> &'a Value {
    doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["SPDXID"] == id)
        .unwrap_or_else(|| panic!("no package {id}"))
}

#[test]
fn sbom_of_a_debian_tree_is_valid_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &PARAGRAPHS);
    let doc = sbom(dir.path(), "web", "layer-abc", 1_700_000_000).unwrap();
    assert_eq!(validate(&doc), Vec::<String>::new());
    assert_eq!(doc["name"], "web");
    assert_eq!(doc["creationInfo"]["created"], "2023-11-14T22:13:20Z");
    assert_eq!(
        doc["creationInfo"]["creators"][0],
        format!("Tool: kiln-{}", env!("CARGO_PKG_VERSION"))
    );
    let names: Vec<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            format!(
                "{}:{}",
                p["name"].as_str().unwrap(),
                p["SPDXID"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            "debian:SPDXRef-OperatingSystem",
            "bash:SPDXRef-Package-deb-bash-amd64",
            "libstdc++6:SPDXRef-Package-deb-libstdc--6-amd64",
            "tzdata:SPDXRef-Package-deb-tzdata-all",
            "zlib1g:SPDXRef-Package-deb-zlib1g-amd64",
            "zlib1g:SPDXRef-Package-deb-zlib1g-i386",
        ]
    );
    let os = package(&doc, "SPDXRef-OperatingSystem");
    assert_eq!(os["primaryPackagePurpose"], "OPERATING-SYSTEM");
    assert_eq!(os["versionInfo"], "12");
    let zlib = package(&doc, "SPDXRef-Package-deb-zlib1g-amd64");
    assert_eq!(zlib["versionInfo"], "1:1.2.13.dfsg-1");
    assert_eq!(
        zlib["supplier"],
        "Organization: Mark Brown (broonie@debian.org)"
    );
    assert_eq!(
        zlib["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/zlib1g@1:1.2.13.dfsg-1?arch=amd64&distro=debian-12"
    );
    let gcc = package(&doc, "SPDXRef-Package-deb-libstdc--6-amd64");
    assert_eq!(
        gcc["externalRefs"][0]["referenceLocator"],
        "pkg:deb/debian/libstdc%2B%2B6@12.2.0-14?arch=amd64&distro=debian-12"
    );
    assert_eq!(
        gcc["sourceInfo"],
        "built from the Debian source package gcc-12"
    );
    assert_eq!(
        package(&doc, "SPDXRef-Package-deb-tzdata-all")["supplier"],
        "NOASSERTION"
    );
    let contains = doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["relationshipType"] == "CONTAINS")
        .count();
    assert_eq!(contains, 5, "one CONTAINS per installed package");
}

#[test]
fn sbom_is_deterministic_and_namespaced_by_seed() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tree(a.path(), &PARAGRAPHS);
    let mut shuffled = PARAGRAPHS;
    shuffled.reverse();
    tree(b.path(), &shuffled);
    let doc_a = serde_json::to_string(&sbom(a.path(), "web", "seed", 0).unwrap()).unwrap();
    let doc_b = serde_json::to_string(&sbom(b.path(), "web", "seed", 0).unwrap()).unwrap();
    assert_eq!(doc_a, doc_b, "status order must not change the document");
    let other = sbom(a.path(), "web", "other seed", 0).unwrap();
    let first: Value = serde_json::from_str(&doc_a).unwrap();
    assert_ne!(first["documentNamespace"], other["documentNamespace"]);
}

#[test]
fn tree_without_dpkg_has_only_the_os() {
    let dir = tempfile::tempdir().unwrap();
    let doc = sbom(dir.path(), "appliance", "seed", 0).unwrap();
    assert_eq!(validate(&doc), Vec::<String>::new());
    assert_eq!(doc["packages"].as_array().unwrap().len(), 1);
    assert_eq!(doc["packages"][0]["name"], "unknown");
    assert_eq!(doc["relationships"].as_array().unwrap().len(), 1);
}

#[test]
fn validator_catches_broken_documents() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &PARAGRAPHS);
    let good = sbom(dir.path(), "web", "seed", 0).unwrap();
    let mut bad = good.clone();
    bad["packages"][1]["SPDXID"] = "SPDXRef-has+plus".into();
    bad["creationInfo"]["created"] = "2023-11-14 22:13:20".into();
    let problems = validate(&bad);
    assert!(
        problems.iter().any(|p| p.contains("SPDXRef-has+plus")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("created")),
        "{problems:?}"
    );
}
