//! Parsing details of kiln's `(test …)` and `(image …)` forms: defaults, every
//! field, placement rules, and round trips of hand-built specs.

use kiln_spec::{
    format_size, parse, parse_size, print, Check, CheckKind, ChildBuild, ImageSpec, Located, Op,
    PartitionSource, PartitionSpec, Pos, Spec, TestSpec, DEBIAN_ARCHES, DEFAULT_CHECK_TIMEOUT,
};

fn at<T>(value: T) -> Located<T> {
    Located::new(value, Pos::default())
}

/// The `(test …)` of `((from base) TEXT)`.
fn test(text: &str) -> TestSpec {
    let spec = parse(&format!("((from base)\n {text})")).unwrap_or_else(|e| panic!("{text}: {e}"));
    spec.test.unwrap_or_else(|| panic!("{text}: no test")).value
}

/// The kinds of the checks of `(test CHECKS)`.
fn kinds(checks: &str) -> Vec<CheckKind> {
    test(&format!("(test {checks})"))
        .checks
        .into_iter()
        .map(|c| c.value.kind)
        .collect()
}

fn one_check(check: &str) -> Check {
    let mut checks = test(&format!("(test {check})")).checks;
    assert_eq!(checks.len(), 1, "{check}");
    checks.remove(0).value
}

/// The `(image …)` of a spec with child builds `web` and `db`.
fn image(text: &str) -> ImageSpec {
    let spec = parse(&with_builds(text)).unwrap_or_else(|e| panic!("{text}: {e}"));
    spec.image
        .unwrap_or_else(|| panic!("{text}: no image"))
        .value
}

fn with_builds(text: &str) -> String {
    format!("((build web ((from a)))\n (build db ((from b)))\n (from base)\n {text})")
}

fn error(text: &str) -> String {
    match parse(&with_builds(text)) {
        Ok(spec) => panic!("{text} parsed: {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn partition(name: &str, source: PartitionSource) -> PartitionSpec {
    PartitionSpec {
        name: name.into(),
        source,
        size: None,
        label: None,
    }
}

#[test]
fn test_settings_are_optional() {
    let t = test("(test (console (expect login:)))");
    assert_eq!(t.memory_mb, None);
    assert_eq!(t.cpus, None);
    assert_eq!(t.boot_timeout, None);
    let t = test("(test (boot-timeout 120) (port (port 22)) (cpus 4) (memory 1024))");
    assert_eq!(t.memory_mb, Some(1024));
    assert_eq!(t.cpus, Some(4));
    assert_eq!(t.boot_timeout, Some(120));
    assert_eq!(
        test("(test (memory 64) (port (port 1)))").memory_mb,
        Some(64)
    );
    assert_eq!(
        test("(test (cpus 4294967295) (port (port 1)))").cpus,
        Some(u32::MAX)
    );
}

#[test]
fn check_defaults() {
    assert_eq!(
        one_check("(console (expect \"login:\"))"),
        Check {
            name: None,
            timeout: DEFAULT_CHECK_TIMEOUT,
            kind: CheckKind::Console {
                expect: "login:".into()
            }
        }
    );
    assert_eq!(DEFAULT_CHECK_TIMEOUT, 60);
    assert_eq!(
        one_check("(http (port 80))").kind,
        CheckKind::Http {
            port: 80,
            path: "/".into(),
            status: 200,
            body: None
        }
    );
    assert_eq!(one_check("(port (port 22))").timeout, 60);
}

#[test]
fn every_check_field_is_read_in_any_order() {
    let want = Check {
        name: Some("cloud page".into()),
        timeout: 30,
        kind: CheckKind::Http {
            port: 8080,
            path: "/index.html".into(),
            status: 404,
            body: Some("Cloudy".into()),
        },
    };
    assert_eq!(
        one_check("(http (name \"cloud page\") (port 8080) (path /index.html) (status 404) (body Cloudy) (timeout 30))"),
        want
    );
    assert_eq!(
        one_check("(http (timeout 30) (body \"Cloudy\") (status 404) (path /index.html) (port 8080) (name \"cloud page\"))"),
        want
    );
    assert_eq!(
        one_check(
            "(tcp (expect \"VALUE k\") (timeout 5) (send \"get k\\r\\n\") (port 11211) (name kv))"
        ),
        Check {
            name: Some("kv".into()),
            timeout: 5,
            kind: CheckKind::Tcp {
                port: 11211,
                send: "get k\r\n".into(),
                expect: "VALUE k".into()
            }
        }
    );
    assert_eq!(
        one_check("(port (timeout 1) (port 65535) (name p))"),
        Check {
            name: Some("p".into()),
            timeout: 1,
            kind: CheckKind::Port { port: 65535 }
        }
    );
    assert_eq!(
        one_check("(console (name boots) (expect \"login:\") (timeout 4294967295))").timeout,
        u32::MAX
    );
}

#[test]
fn check_values_are_checked() {
    let check_error = |check: &str| error(&format!("(test {check})"));
    assert_eq!(
        one_check("(port (port 080))").kind,
        CheckKind::Port { port: 80 }
    );
    assert!(check_error("(port (port 65536))").contains("`port` 65536 is out of range"));
    assert!(check_error("(port (port -1))").contains("`port` must be a number, found `-1`"));
    assert!(check_error("(port (port (22)))").contains("`port` takes atoms"));
    assert!(check_error("(port (port 22 23))").contains("`port` takes 1 argument, found 2"));
    assert!(check_error("(http (port 80) (status 600))").contains("from 100 to 599"));
    assert_eq!(
        one_check("(http (port 80) (status 599))").kind,
        CheckKind::Http {
            port: 80,
            path: "/".into(),
            status: 599,
            body: None
        }
    );
    assert!(check_error("(console (expect x) (timeout 4294967296))")
        .contains("`timeout` 4294967296 is too large: it must be at most 4294967295"));
    assert!(check_error("(console (expect x) (timeout 1.5))")
        .contains("`timeout` must be a number, found `1.5`"));
    assert!(check_error("(http (port 80) (path \"/a\\tb\"))").contains("percent-encode"));
    assert!(check_error("(tcp (port 1) (send x) (expect \"\"))").contains("`expect` text is empty"));
    assert!(check_error("(http)").contains("`http` check is missing its `port` field"));
    assert!(check_error("(port (path /))").contains("unknown field `path` in `port` check"));
}

#[test]
fn tcp_send_may_be_empty_to_read_a_banner() {
    assert_eq!(
        one_check("(tcp (port 22) (send \"\") (expect SSH-))").kind,
        CheckKind::Tcp {
            port: 22,
            send: String::new(),
            expect: "SSH-".into()
        }
    );
}

#[test]
fn checks_keep_their_order_and_positions() {
    assert_eq!(
        kinds("(port (port 1)) (console (expect a)) (port (port 2)) (http (port 3))"),
        vec![
            CheckKind::Port { port: 1 },
            CheckKind::Console { expect: "a".into() },
            CheckKind::Port { port: 2 },
            CheckKind::Http {
                port: 3,
                path: "/".into(),
                status: 200,
                body: None
            },
        ]
    );
    let t = test("(test (port (port 1))\n       (port (port 2)))");
    assert_eq!(t.checks[0].pos, Pos { line: 2, col: 8 });
    assert_eq!(t.checks[1].pos, Pos { line: 3, col: 8 });
}

#[test]
fn display_names_fall_back_to_a_description() {
    let named = one_check("(http (name page) (port 80))");
    assert_eq!(named.display_name(), "page");
    assert_eq!(
        one_check("(http (port 80) (path /a))").display_name(),
        "http :80/a"
    );
    assert_eq!(one_check("(port (port 22))").display_name(), "port 22");
    assert_eq!(
        one_check("(console (expect \"login:\"))").display_name(),
        "console \"login:\""
    );
    assert_eq!(
        one_check("(tcp (port 1) (send a) (expect b))").display_name(),
        "tcp 1 \"b\""
    );
}

#[test]
fn image_defaults_and_sources() {
    let i = image("(image (partition (name web) (build web)))");
    assert_eq!(i.partitions.len(), 1);
    assert_eq!(
        i.partitions[0].value,
        partition("web", PartitionSource::Build("web".into()))
    );
    assert_eq!(i.default, None);
    assert!(i.node_types.is_empty());
    assert!(i.arches.is_empty());
    assert_eq!(i.default_partition().map(|p| p.name.as_str()), Some("web"));
    assert_eq!(i.partitions[0].value.effective_label(), "web");

    let i = image("(image (partition (spec sub/db.spec) (name db)))");
    assert_eq!(
        i.partitions[0].value.source,
        PartitionSource::Spec("sub/db.spec".into())
    );
    assert_eq!(i.partitions[0].pos, Pos { line: 4, col: 9 });
}

#[test]
fn every_image_field_is_read_in_any_order() {
    let i = image(
        "(image (arch arm64 amd64)
        (default db)
        (partition (label WEB) (size 2G) (build web) (name web))
        (node-types pc3000 d710)
        (partition (name db) (build db) (size 1.5GiB) (label db-2)))",
    );
    assert_eq!(i.arches, vec!["arm64", "amd64"]);
    assert_eq!(i.node_types, vec!["pc3000", "d710"]);
    assert_eq!(i.default.as_deref(), Some("db"));
    assert_eq!(
        i.partitions
            .iter()
            .map(|p| p.value.clone())
            .collect::<Vec<_>>(),
        vec![
            PartitionSpec {
                name: "web".into(),
                source: PartitionSource::Build("web".into()),
                size: Some(2 << 30),
                label: Some("WEB".into()),
            },
            PartitionSpec {
                name: "db".into(),
                source: PartitionSource::Build("db".into()),
                size: Some(1536 << 20),
                label: Some("db-2".into()),
            },
        ]
    );
    assert_eq!(i.default_partition().map(|p| p.name.as_str()), Some("db"));
    assert_eq!(i.partitions[0].value.effective_label(), "WEB");
}

#[test]
fn every_debian_arch_is_accepted() {
    let all = DEBIAN_ARCHES.join(" ");
    let i = image(&format!(
        "(image (partition (name r) (spec r.spec)) (arch {all}))"
    ));
    assert_eq!(i.arches, DEBIAN_ARCHES);
    assert!(
        error("(image (partition (name r) (spec r.spec)) (arch aarch64))")
            .ends_with("(did you mean `arm64`?)")
    );
    assert!(
        error("(image (partition (name r) (spec r.spec)) (arch AMD64))")
            .contains("unknown architecture `AMD64`")
    );
}

#[test]
fn partition_values_are_checked() {
    let p = |fields: &str| {
        image(&format!("(image (partition {fields}))")).partitions[0]
            .value
            .clone()
    };
    let e = |fields: &str| error(&format!("(image (partition {fields}))"));
    assert_eq!(p("(name a.b_c-9) (spec x)").name, "a.b_c-9");
    assert_eq!(
        p("(name sixteen-chars-ok) (spec x)").effective_label(),
        "sixteen-chars-ok"
    );
    assert!(e("(name seventeen-chars-no) (spec x)").contains("too many for its default ext4 label"));
    assert_eq!(
        p("(name seventeen-chars-no) (spec x) (label short)")
            .label
            .as_deref(),
        Some("short")
    );
    assert!(e("(name a) (spec x) (label ABCDEFGHIJKLMNOPQ)").contains("has 17 characters"));
    assert!(e("(name a) (spec x) (label \"\")").contains("invalid partition label ``"));
    assert!(e("(name a) (spec x) (label a/b)").contains("invalid partition label `a/b`"));
    assert!(e("(name \"\") (spec x)").contains("invalid partition name ``"));
    assert!(e("(name a) (spec \"\")").contains("partition spec path `` is empty"));
    assert!(e("(name a) (spec a/../../b)").contains("contains `..`"));
    assert_eq!(
        p("(name a) (spec ..a/b..)").source,
        PartitionSource::Spec("..a/b..".into())
    );
    assert!(e("(name a) (build)").contains("`build` takes 1 argument, found 0"));
    assert!(e("(name a) (build web) (size)").contains("`size` takes 1 argument"));
    for (text, bytes) in [
        ("4096", 4096),
        ("512M", 512 << 20),
        ("2G", 2 << 30),
        ("1.5G", 1536 << 20),
        ("10T", 10 << 40),
        ("3KiB", 3072),
        ("7B", 7),
    ] {
        assert_eq!(
            p(&format!("(name a) (spec x) (size {text})")).size,
            Some(bytes),
            "{text}"
        );
    }
}

#[test]
fn image_lists_are_checked() {
    let e = |fields: &str| error(&format!("(image (partition (name a) (spec a)) {fields})"));
    assert!(e("(node-types \"pc 3000\")").contains("invalid node type `pc 3000`"));
    assert!(e("(node-types a b a)").contains("duplicate node type `a` in `node-types`"));
    assert!(e("(arch)").contains("`arch` needs at least one argument"));
    assert!(e("(default)").contains("`default` takes 1 argument, found 0"));
    assert!(e("(partition (name b) (spec b) (label a))")
        .contains("partition `b` would have the label `a` of partition `a`"));
}

#[test]
fn kiln_forms_go_anywhere_after_from_and_print_after_the_ops() {
    let text = "((from d)
 (image (partition (name r) (spec r.spec)))
 (run (shell one))
 (test (port (port 22)))
 (bootstrap (arch arm64))
 (run (shell two)))";
    let spec = parse(text).expect("parses");
    assert_eq!(spec.ops.len(), 2);
    assert_eq!(
        spec.test.as_ref().map(|t| t.pos),
        Some(Pos { line: 4, col: 2 })
    );
    assert_eq!(
        spec.image.as_ref().map(|i| i.pos),
        Some(Pos { line: 2, col: 2 })
    );
    assert_eq!(
        print(&spec),
        "((from d)
 (bootstrap (arch arm64))
 (run (shell one))
 (run (shell two))
 (test (port (port 22)))
 (image (partition (name r) (spec r.spec))))
"
    );
}

#[test]
fn printer_leaves_defaults_out_and_writes_sizes_in_exact_units() {
    let spec = parse(
        "((from d)
 (test (http (port 80) (path /) (status 200) (timeout 60)) (console (expect x) (timeout 060)))
 (image (partition (name a) (spec a) (size 2147483648))
        (partition (name b) (spec b) (size 1.5G))
        (partition (name c) (spec c) (size 4097B))
        (partition (name d) (spec d) (size 0.5K))))",
    )
    .expect("parses");
    assert_eq!(
        print(&spec),
        "((from d)
 (test (http (port 80)) (console (expect x)))
 (image (partition (name a) (spec a) (size 2G))
        (partition (name b) (spec b) (size 1536M))
        (partition (name c) (spec c) (size 4097))
        (partition (name d) (spec d) (size 512))))
"
    );
}

#[test]
fn size_helpers_are_public_and_agree() {
    assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
    assert_eq!(format_size(1536 << 20), "1536M");
    assert!(parse_size("1.5X").is_err());
}

/// A spec using every `test` and `image` construct, built by hand.
fn with_test_and_image() -> Spec {
    let web = Spec {
        child_builds: vec![],
        from: at("debian:bookworm".into()),
        bootstrap: None,
        sandbox: None,
        ops: vec![at(Op::Workdir("/srv".into()))],
        test: None,
        image: None,
        appliance: None,
    };
    let check = |name: Option<&str>, timeout, kind| {
        at(Check {
            name: name.map(str::to_string),
            timeout,
            kind,
        })
    };
    Spec {
        child_builds: vec![at(ChildBuild {
            name: "web".into(),
            spec: web,
        })],
        from: at("debian:bookworm".into()),
        bootstrap: None,
        sandbox: None,
        ops: vec![at(Op::Comment("combo".into()))],
        test: Some(at(TestSpec {
            memory_mb: Some(512),
            cpus: None,
            boot_timeout: Some(90),
            checks: vec![
                check(
                    None,
                    60,
                    CheckKind::Console {
                        expect: "login:".into(),
                    },
                ),
                check(Some("ssh"), 5, CheckKind::Port { port: 22 }),
                check(
                    Some("page"),
                    60,
                    CheckKind::Http {
                        port: 80,
                        path: "/a b%20c".replace(' ', "%20"),
                        status: 301,
                        body: Some("moved \"here\"".into()),
                    },
                ),
                check(
                    None,
                    7,
                    CheckKind::Tcp {
                        port: 11211,
                        send: "stats\r\n".into(),
                        expect: "STAT pid".into(),
                    },
                ),
            ],
        })),
        image: Some(at(ImageSpec {
            partitions: vec![
                at(PartitionSpec {
                    name: "web".into(),
                    source: PartitionSource::Build("web".into()),
                    size: Some(3 << 30),
                    label: Some("WEB".into()),
                }),
                at(PartitionSpec {
                    name: "db".into(),
                    source: PartitionSource::Spec("specs/db.spec".into()),
                    size: Some((1 << 20) + 1),
                    label: None,
                }),
            ],
            default: Some("db".into()),
            node_types: vec!["pc3000".into()],
            arches: vec!["amd64".into()],
        })),
        appliance: None,
    }
}

#[test]
fn hand_built_test_and_image_round_trip() {
    let spec = with_test_and_image();
    let printed = print(&spec);
    let reparsed = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(reparsed, spec, "{printed}");
    assert_eq!(print(&reparsed), printed);
    assert_eq!(
        printed,
        r#"((build web
   ((from debian:bookworm)
    (workdir /srv)))
 (from debian:bookworm)
 (comment combo)
 (test (memory 512)
       (boot-timeout 90)
       (console (expect login:))
       (port (name ssh) (port 22) (timeout 5))
       (http (name page)
             (port 80)
             (path /a%20b%20c)
             (status 301)
             (body "moved \"here\""))
       (tcp (port 11211) (send "stats\r\n") (expect "STAT pid") (timeout 7)))
 (image (partition (name web) (build web) (size 3G) (label WEB))
        (partition (name db) (spec specs/db.spec) (size 1048577))
        (default db)
        (node-types pc3000)
        (arch amd64)))
"#
    );
}

#[test]
fn round_trip_detects_changed_test_and_image_fields() {
    // Guards the round-trip tests: equality must see the new fields.
    let spec = with_test_and_image();
    let mut other = parse(&print(&spec)).expect("parses");
    other.test = None;
    assert_ne!(other, spec);
    let mut other = parse(&print(&spec)).expect("parses");
    if let Some(t) = other.test.as_mut() {
        t.value.checks[1].value.timeout = 6;
    }
    assert_ne!(other, spec);
    let mut other = parse(&print(&spec)).expect("parses");
    if let Some(i) = other.image.as_mut() {
        i.value.partitions[1].value.size = Some(1 << 20);
    }
    assert_ne!(other, spec);
    let mut other = parse(&print(&spec)).expect("parses");
    other.image = None;
    assert_ne!(other, spec);
}

#[test]
fn sandbox_form_names_a_known_sandbox() {
    let spec = kiln_spec::parse("((from debian:bookworm) (sandbox qemu) (run (shell true)))")
        .expect("parses");
    assert_eq!(
        spec.sandbox.map(|s| s.value),
        Some(kiln_spec::SandboxKind::Qemu)
    );
    let err = kiln_spec::parse("((from debian:bookworm)\n (sandbox qmeu))").unwrap_err();
    assert_eq!((err.pos.line, err.pos.col), (2, 11), "{err}");
    assert!(err.to_string().contains("did you mean `qemu`"), "{err}");
    let err = kiln_spec::parse("((from a) (sandbox qemu) (sandbox chroot))").unwrap_err();
    assert!(err.to_string().contains("second `sandbox`"), "{err}");
    let err = kiln_spec::parse("((sandbox qemu) (from a))").unwrap_err();
    assert!(err.to_string().contains("before `from`"), "{err}");
}

#[test]
fn appliance_form_parses_prints_back_and_rejects_mistakes() {
    let text = r#"((from debian:bookworm)
 (appliance (train "memcached -u nobody -d; sleep 1" "true")
            (run "/usr/bin/memcached -u nobody")
            (postrun "echo done")
            (include /etc/memcached.conf "/usr/lib/x86_64-linux-gnu/sasl2/*")
            (compress gzip)))
"#;
    let spec = parse(text).unwrap();
    let a = &spec.appliance.as_ref().unwrap().value;
    assert_eq!(a.train, ["memcached -u nobody -d; sleep 1", "true"]);
    assert_eq!(a.run, "/usr/bin/memcached -u nobody");
    assert_eq!(a.postrun.as_deref(), Some("echo done"));
    assert_eq!(a.prerun, None);
    assert_eq!(a.include.len(), 2);
    assert_eq!(a.compress.as_deref(), Some("gzip"));
    let printed = print(&spec);
    assert_eq!(print(&parse(&printed).unwrap()), printed, "round trip");
    assert_eq!(
        parse(&printed).unwrap().appliance.map(|a| a.value),
        spec.appliance.clone().map(|a| a.value)
    );
    for (bad, want) in [
        (
            "((from debian:bookworm) (appliance (train \"x\")))",
            "missing its `run`",
        ),
        (
            "((from debian:bookworm) (appliance (run x) (compress xz)))",
            "unknown compression",
        ),
        (
            "((from debian:bookworm) (appliance (run x) (trian y)))",
            "unknown field `trian`",
        ),
        (
            "((from debian:bookworm) (appliance (run x)) (appliance (run y)))",
            "second `appliance`",
        ),
    ] {
        let e = parse(bad).unwrap_err().to_string();
        assert!(e.contains(want), "{bad}: {e}");
    }
}
