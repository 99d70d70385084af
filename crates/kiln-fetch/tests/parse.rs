//! `parse_base`: a table of accepted and refused `(from …)` strings.

use kiln_fetch::{parse_base, BaseSource};
use kiln_spec::Bootstrap;

fn bootstrap(
    variant: Option<&str>,
    include: &[&str],
    mirror: Option<&str>,
    arch: Option<&str>,
) -> Bootstrap {
    Bootstrap {
        variant: variant.map(String::from),
        include: include.iter().map(|s| s.to_string()).collect(),
        skeleton: vec![],
        mirror: mirror.map(String::from),
        arch: arch.map(String::from),
    }
}

#[test]
fn accepted_bases() {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("root.tar.gz"), b"").unwrap();
    std::fs::create_dir(context.path().join("sub")).unwrap();
    std::fs::write(context.path().join("sub/root.tar.zst"), b"").unwrap();
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));

    let minbase = parse_base("debian:bookworm", None, context.path()).unwrap();
    assert_eq!(
        minbase,
        BaseSource::Debian {
            suite: "bookworm".into(),
            variant: "minbase".into(),
            include: vec![],
            skeleton: vec![],
            mirror: None,
            arch: None
        }
    );
    let b = bootstrap(
        Some("apt"),
        &["curl", "ca-certificates"],
        Some("http://deb.debian.org/debian"),
        Some("arm64"),
    );
    assert_eq!(
        parse_base("debian:trixie", Some(&b), context.path()).unwrap(),
        BaseSource::Debian {
            suite: "trixie".into(),
            variant: "apt".into(),
            include: vec!["curl".into(), "ca-certificates".into()],
            skeleton: vec![],
            mirror: Some("http://deb.debian.org/debian".into()),
            arch: Some("arm64".into()),
        }
    );
    let skeleton = Bootstrap {
        skeleton: vec!["skel".into(), "conf/more".into()],
        ..Bootstrap::default()
    };
    assert!(matches!(
        parse_base("debian:bookworm", Some(&skeleton), context.path()).unwrap(),
        BaseSource::Debian { skeleton, .. }
            if skeleton == vec![context.path().join("skel"), context.path().join("conf/more")]
    ));
    assert_eq!(
        parse_base("file:root.tar.gz", None, context.path()).unwrap(),
        BaseSource::Tar(context.path().join("root.tar.gz"))
    );
    assert_eq!(
        parse_base("file:sub/root.tar.zst", None, context.path()).unwrap(),
        BaseSource::Tar(context.path().join("sub/root.tar.zst"))
    );
    let absolute = format!("file:{}", context.path().join("root.tar.gz").display());
    assert_eq!(
        parse_base(&absolute, None, context.path()).unwrap(),
        BaseSource::Tar(context.path().join("root.tar.gz"))
    );

    for oci in [
        "busybox".to_string(),
        "busybox:1.36".to_string(),
        "library/debian:bookworm-slim".to_string(),
        "127.0.0.1:5000/kiln/test:v1".to_string(),
        "localhost/app".to_string(),
        "registry.example.com/team/app_x/tool-1:2.0.1".to_string(),
        format!("busybox@{digest}"),
        format!("reg.example.com:443/a/b:tag@{digest}"),
    ] {
        assert_eq!(
            parse_base(&oci, None, context.path()).unwrap(),
            BaseSource::Oci(oci.clone()),
            "{oci}"
        );
    }
}

#[test]
fn layer_bases_name_a_stored_layer() {
    let context = tempfile::tempdir().unwrap();
    let id = "0123456789abcdef".repeat(4);
    for name in ["tools", "dev-2.x", id.as_str()] {
        let from = format!("layer:{name}");
        let parsed = parse_base(&from, None, context.path()).unwrap();
        assert_eq!(parsed, BaseSource::Layer(name.to_string()));
        assert_eq!(parsed.to_string(), from);
    }
}

#[test]
fn refused_bases_say_why() {
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("root.zip"), b"").unwrap();
    std::fs::create_dir(context.path().join("dir.tar")).unwrap();
    let cases: Vec<(&str, Option<Bootstrap>, &str)> = vec![
        ("debian:Bookworm", None, "lowercase letters, digits and `-`"),
        ("debian:", None, "suite"),
        ("debian:book worm", None, "suite"),
        (
            "debian:bookworm",
            Some(bootstrap(Some("tiny"), &[], None, None)),
            "unknown bootstrap variant `tiny`; use one of extract",
        ),
        (
            "debian:bookworm",
            Some(bootstrap(None, &["curl wget"], None, None)),
            "`curl wget` in (include …) is not a Debian package name",
        ),
        (
            "debian:bookworm",
            Some(bootstrap(None, &[], Some("ftp://x/debian"), None)),
            "must be an http:// or https:// URL",
        ),
        (
            "debian:bookworm",
            Some(bootstrap(None, &[], None, Some("AMD64"))),
            "not a Debian architecture",
        ),
        ("file:missing.tar", None, "missing.tar: No such file"),
        ("file:root.zip", None, "is not a tarball kiln can read"),
        ("file:dir.tar", None, "is not a regular file"),
        ("file:", None, "needs a path"),
        ("layer:", None, "`layer:` needs a layer name"),
        ("layer:../x", None, "`layer:` needs a layer name"),
        (
            "layer:tools",
            Some(bootstrap(None, &[], None, None)),
            "(bootstrap …) only applies to `debian:SUITE` bases",
        ),
        (
            "busybox",
            Some(bootstrap(None, &[], None, None)),
            "(bootstrap …) only applies to `debian:SUITE` bases",
        ),
        ("Busybox", None, "repository names must be lowercase"),
        ("busybox@sha256:1234", None, "64 lowercase hex digits"),
        (
            "busybox@md5:1234",
            None,
            "digest algorithm `md5` is not supported",
        ),
        (
            "registry.example.com:99999/app",
            None,
            "the port must be a number",
        ),
        ("busybox:", None, "is not a valid tag"),
        ("a//b", None, "empty path component"),
        ("app-:1", None, "not a valid repository name component"),
        ("", None, "empty"),
    ];
    for (from, b, expected) in cases {
        let err = parse_base(from, b.as_ref(), context.path())
            .expect_err(from)
            .to_string();
        assert!(
            err.starts_with(&format!("base `{from}`")),
            "{from}: error does not name the base: {err}"
        );
        assert!(
            err.contains(expected),
            "{from}: expected `{expected}` in: {err}"
        );
    }
}
