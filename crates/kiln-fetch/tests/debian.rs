//! Debian bases bootstrapped for real with mmdebstrap from deb.debian.org (slow: each
//! bootstrap takes about 20 s). Kept in their own file so CI can run them once.

use kiln_fetch::debian::{Bootstrapper, DebianBase};
use kiln_fetch::{parse_base, BaseSource, FetchError, Fetcher, RealFetcher, ResolvedBase};
use kiln_spec::Bootstrap;
use std::path::Path;

/// apt's `Get:` lines for packages, e.g.
/// `Get:1 http://deb.debian.org/debian bookworm/main amd64 libc6 amd64 2.36-9 [2757 kB]`.
/// Index files have fewer fields before the size (`… bookworm InRelease [151 kB]`).
fn package_downloads(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.starts_with("Get:"))
        .filter(|line| {
            line.split('[')
                .next()
                .is_some_and(|head| head.split_whitespace().count() == 7)
        })
        .collect()
}

fn bootstrap_into(
    fetcher: &RealFetcher,
    base: &ResolvedBase,
    parent: &Path,
) -> (Result<kiln_store::BaseConfig, FetchError>, String) {
    let rootfs = parent.join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let mut log = Vec::new();
    let result = fetcher.fetch(base, &rootfs, None, &mut log);
    (result, String::from_utf8_lossy(&log).into_owned())
}

/// How many regular files are below `dir`.
fn walk_files(dir: &Path) -> usize {
    let mut count = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            count += walk_files(&entry.path());
        } else if kind.is_file() {
            count += 1;
        }
    }
    count
}

fn check_bookworm(rootfs: &Path) {
    assert!(rootfs.join("usr/bin/apt").is_file(), "apt is installed");
    let os_release = std::fs::read_to_string(rootfs.join("etc/os-release")).unwrap();
    assert!(
        os_release.contains("VERSION_CODENAME=bookworm"),
        "{os_release}"
    );
    let archives = rootfs.join("var/cache/apt/archives");
    let debs: Vec<_> = std::fs::read_dir(&archives)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .map(|e| e.file_name())
        .collect();
    assert!(debs.is_empty(), "no .deb left in the image: {debs:?}");
    let lists: Vec<_> = std::fs::read_dir(rootfs.join("var/lib/apt/lists"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("_dists_"))
        .map(|e| e.file_name())
        .collect();
    assert!(
        lists.is_empty(),
        "no apt lists left in the image: {lists:?}"
    );
}

#[test]
fn second_bootstrap_downloads_no_package() {
    let work = tempfile::tempdir().unwrap();
    let fetcher = RealFetcher {
        deb_cache: work.path().join("deb-cache"),
        registries: Default::default(),
    };
    let source = parse_base("debian:bookworm", None, work.path()).unwrap();
    let base = fetcher.resolve(&source).unwrap();
    assert_eq!(
        base,
        fetcher.resolve(&source).unwrap(),
        "the id needs no network and is stable"
    );
    assert!(
        base.description.starts_with("debian:bookworm (minbase"),
        "{}",
        base.description
    );

    let first = work.path().join("first");
    std::fs::create_dir(&first).unwrap();
    let (result, log) = bootstrap_into(&fetcher, &base, &first);
    let config = result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(
        config.env,
        vec![(
            "PATH".to_string(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string()
        )]
    );
    let downloaded = package_downloads(&log);
    assert!(
        downloaded.len() > 50,
        "the first bootstrap downloads the packages (detector sanity check): {downloaded:?}"
    );
    check_bookworm(&first.join("rootfs"));

    // The second bootstrap also has a skeleton (another base, the same packages): its
    // dpkg setting must be in place before the first package installs.
    let context = work.path().join("context");
    let skel = context.join("skel");
    std::fs::create_dir_all(skel.join("etc/dpkg/dpkg.cfg.d")).unwrap();
    std::fs::write(
        skel.join("etc/dpkg/dpkg.cfg.d/no-docs"),
        "path-exclude=/usr/share/doc/*\n",
    )
    .unwrap();
    std::fs::create_dir_all(skel.join("usr/local/bin")).unwrap();
    std::fs::write(skel.join("usr/local/bin/hello"), "#!/bin/sh\necho hello\n").unwrap();
    std::fs::set_permissions(
        skel.join("usr/local/bin/hello"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    std::os::unix::fs::symlink("hello", skel.join("usr/local/bin/hi")).unwrap();
    // Under /lib, which is a link to usr/lib in a merged-/usr root.
    std::fs::create_dir_all(skel.join("lib/modprobe.d")).unwrap();
    std::fs::write(
        skel.join("lib/modprobe.d/kiln-test.conf"),
        "blacklist pcspkr\n",
    )
    .unwrap();
    // Under /lib, which is a link to usr/lib in a merged-/usr root.
    std::fs::create_dir_all(skel.join("lib/modprobe.d")).unwrap();
    std::fs::write(
        skel.join("lib/modprobe.d/kiln-test.conf"),
        "blacklist pcspkr\n",
    )
    .unwrap();
    let with_skeleton = Bootstrap {
        skeleton: vec!["skel".into()],
        ..Bootstrap::default()
    };
    let skeleton_base = fetcher
        .resolve(&parse_base("debian:bookworm", Some(&with_skeleton), &context).unwrap())
        .unwrap();
    assert_ne!(skeleton_base.id, base.id);
    assert!(
        skeleton_base.description.contains("skeleton "),
        "{}",
        skeleton_base.description
    );
    let second = work.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let (result, log) = bootstrap_into(&fetcher, &skeleton_base, &second);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    let root = second.join("rootfs");
    // mmdebstrap extracts the essential packages with dpkg-deb (no excludes apply), then
    // installs the rest (apt, adduser, …) with dpkg, which reads the skeleton's setting.
    let apt_docs = |root: &Path| walk_files(&root.join("usr/share/doc/apt"));
    assert!(
        apt_docs(&first.join("rootfs")) > 0,
        "the plain base has apt's docs"
    );
    assert_eq!(apt_docs(&root), 0, "apt installed no doc file");
    assert!(root.join("usr/bin/apt").is_file());
    let hello = std::fs::symlink_metadata(root.join("usr/local/bin/hello")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&hello.permissions()) & 0o7777,
        0o750
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&hello), 0);
    assert_eq!(
        std::fs::read_link(root.join("usr/local/bin/hi")).unwrap(),
        Path::new("hello")
    );
    assert!(
        root.join("lib").is_symlink(),
        "the merged /usr links are kept"
    );
    assert!(root.join("usr/lib/modprobe.d/kiln-test.conf").is_file());
    let downloaded = package_downloads(&log);
    assert!(
        downloaded.is_empty(),
        "the second bootstrap downloaded packages: {downloaded:?}"
    );
    assert!(
        !log.lines()
            .any(|l| l.starts_with("Get:") && l.contains("Packages")),
        "the cached lists were revalidated, not downloaded again"
    );
    check_bookworm(&second.join("rootfs"));
}

#[test]
fn bootstrap_options_enter_the_id() {
    let work = tempfile::tempdir().unwrap();
    let fetcher = RealFetcher {
        deb_cache: work.path().join("deb-cache"),
        registries: Default::default(),
    };
    let id = |bootstrap: Option<Bootstrap>| {
        fetcher
            .resolve(&parse_base("debian:bookworm", bootstrap.as_ref(), work.path()).unwrap())
            .unwrap()
            .id
    };
    let plain = id(None);
    assert_eq!(
        plain,
        id(Some(Bootstrap {
            variant: Some("minbase".into()),
            ..Bootstrap::default()
        }))
    );
    let with = |include: &[&str]| {
        Some(Bootstrap {
            include: include.iter().map(|s| s.to_string()).collect(),
            ..Bootstrap::default()
        })
    };
    assert_eq!(
        id(with(&["curl", "jq"])),
        id(with(&["jq", "curl"])),
        "include order does not matter"
    );
    assert_ne!(plain, id(with(&["curl"])));
    assert_ne!(
        plain,
        id(Some(Bootstrap {
            variant: Some("apt".into()),
            ..Bootstrap::default()
        }))
    );
    assert_ne!(
        plain,
        id(Some(Bootstrap {
            mirror: Some("http://127.0.0.1:9/debian".into()),
            ..Bootstrap::default()
        }))
    );
    assert_ne!(
        plain,
        id(Some(Bootstrap {
            arch: Some("arm64".into()),
            ..Bootstrap::default()
        }))
    );
    assert_eq!(
        plain,
        id(Some(Bootstrap {
            mirror: Some("http://deb.debian.org/debian".into()),
            ..Bootstrap::default()
        })),
        "naming the default mirror is the same base"
    );
    // A skeleton enters the id with its contents; a missing one is named.
    std::fs::create_dir_all(work.path().join("skel/etc")).unwrap();
    std::fs::write(work.path().join("skel/etc/a.conf"), "1").unwrap();
    let skeleton = || {
        Some(Bootstrap {
            skeleton: vec!["skel".into()],
            ..Bootstrap::default()
        })
    };
    let with_skeleton = id(skeleton());
    assert_ne!(plain, with_skeleton);
    assert_eq!(with_skeleton, id(skeleton()));
    std::fs::write(work.path().join("skel/etc/a.conf"), "2").unwrap();
    assert_ne!(with_skeleton, id(skeleton()));
    let missing = Bootstrap {
        skeleton: vec!["nope".into()],
        ..Bootstrap::default()
    };
    let err = fetcher
        .resolve(&parse_base("debian:bookworm", Some(&missing), work.path()).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("(skeleton …)") && err.contains("nope") && err.contains("does not exist"),
        "{err}"
    );
    let trixie = fetcher
        .resolve(&parse_base("debian:trixie", None, work.path()).unwrap())
        .unwrap()
        .id;
    assert_ne!(plain, trixie);
}

#[test]
fn a_skeleton_edited_after_the_id_was_computed_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let fetcher = RealFetcher {
        deb_cache: work.path().join("deb-cache"),
        registries: Default::default(),
    };
    std::fs::create_dir_all(work.path().join("skel/etc")).unwrap();
    std::fs::write(work.path().join("skel/etc/a.conf"), "before").unwrap();
    let bootstrap = Bootstrap {
        skeleton: vec!["skel".into()],
        ..Bootstrap::default()
    };
    let source = parse_base("debian:bookworm", Some(&bootstrap), work.path()).unwrap();
    let base = fetcher.resolve(&source).unwrap();
    std::fs::write(work.path().join("skel/etc/a.conf"), "after").unwrap();
    let (result, log) = bootstrap_into(&fetcher, &base, work.path());
    let err = result.unwrap_err().to_string();
    assert!(err.contains("(skeleton …) changed"), "{err}\n{log}");
    assert!(
        !log.contains("mmdebstrap"),
        "refused before bootstrapping: {log}"
    );
    let left: Vec<_> = std::fs::read_dir(work.path().join("rootfs"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the rootfs is left empty");
}

#[test]
fn unreachable_mirror_is_a_clear_error_and_leaves_the_root_empty() {
    let work = tempfile::tempdir().unwrap();
    let fetcher = RealFetcher {
        deb_cache: work.path().join("deb-cache"),
        registries: Default::default(),
    };
    let bootstrap = Bootstrap {
        mirror: Some("http://127.0.0.1:9/debian".into()),
        ..Bootstrap::default()
    };
    let source = parse_base("debian:bookworm", Some(&bootstrap), work.path()).unwrap();
    assert!(matches!(
        &source,
        BaseSource::Debian {
            mirror: Some(_),
            ..
        }
    ));
    let base = fetcher.resolve(&source).unwrap();
    let (result, _) = bootstrap_into(&fetcher, &base, work.path());
    let err = result.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, FetchError::Tool { .. }), "{text}");
    assert!(text.starts_with("base `debian:bookworm`"), "{text}");
    assert!(
        text.contains("http://127.0.0.1:9/debian") && text.contains("mmdebstrap said"),
        "{text}"
    );
    let left: Vec<_> = std::fs::read_dir(work.path().join("rootfs"))
        .unwrap()
        .collect();
    assert!(left.is_empty(), "the rootfs is left empty");
}

#[test]
fn debootstrap_fallback_bootstraps_into_the_same_cache() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("deb-cache");
    let rootfs = work.path().join("rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    let base = DebianBase {
        suite: "bookworm",
        variant: "minbase",
        include: &[],
        skeleton: &[],
        mirror: None,
        arch: None,
        expected_id: None,
    };
    let mut log = Vec::new();
    let result = base.fetch_with(Bootstrapper::Debootstrap, &cache, &rootfs, None, &mut log);
    let log = String::from_utf8_lossy(&log);
    result.unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert!(log.contains("debootstrap --variant=minbase"), "{log}");
    check_bookworm(&rootfs);
    let cached = std::fs::read_dir(cache.join("debs"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
        .count();
    assert!(
        cached > 50,
        "debootstrap kept its packages in the deb cache ({cached})"
    );
}
