//! Parsing details of each op and kiln form, and round trips of hand-built specs.

use kiln_spec::{
    parse, print, Bootstrap, ChildBuild, Copy, CopyFrom, Located, Mount, Op, Pos, Run, SandboxKind,
    Spec, User,
};

/// The ops of `((from base) OPS)`.
fn ops(text: &str) -> Vec<Op> {
    let spec = parse(&format!("((from base)\n {text})")).unwrap_or_else(|e| panic!("{text}: {e}"));
    spec.ops.into_iter().map(|op| op.value).collect()
}

fn one_op(text: &str) -> Op {
    let mut all = ops(text);
    assert_eq!(all.len(), 1, "{text}");
    all.remove(0)
}

fn error(text: &str) -> String {
    match parse(&format!("((from base)\n {text})")) {
        Ok(spec) => panic!("{text} parsed: {spec:?}"),
        Err(e) => e.to_string(),
    }
}

fn at<T>(value: T) -> Located<T> {
    Located::new(value, Pos::default())
}

#[test]
fn workdir_keeps_the_path_verbatim() {
    assert_eq!(one_op("(workdir /src)"), Op::Workdir("/src".into()));
    assert_eq!(one_op("(workdir src/lib)"), Op::Workdir("src/lib".into()));
    assert_eq!(one_op("(workdir \"/a b/c\")"), Op::Workdir("/a b/c".into()));
    assert_eq!(
        one_op("(workdir ../up)"),
        Op::Workdir("../up".into()),
        "workdir may be relative"
    );
    assert_eq!(one_op("(workdir \"\")"), Op::Workdir(String::new()));
    assert!(error("(workdir)").contains("`workdir` takes 1 argument, found 0"));
    assert!(error("(workdir a b)").starts_with("2:13: `workdir` takes 1 argument, found 2"));
}

#[test]
fn user_accepts_both_forms_in_any_field_order() {
    assert_eq!(
        one_op("(user (uid 1000) (gid 100))"),
        Op::User(User::Unix {
            uid: 1000,
            gid: 100
        })
    );
    assert_eq!(
        one_op("(user (gid 100) (uid 1000))"),
        Op::User(User::Unix {
            uid: 1000,
            gid: 100
        })
    );
    assert_eq!(
        one_op("(user (uid 0) (gid 0))"),
        Op::User(User::Unix { uid: 0, gid: 0 })
    );
    assert_eq!(
        one_op("(user (name opam))"),
        Op::User(User::Name("opam".into()))
    );
    assert_eq!(
        one_op("(user (name ContainerAdministrator))"),
        Op::User(User::Name("ContainerAdministrator".into()))
    );
    assert!(error("(user (gid 1))").contains("missing its `uid` field"));
    assert!(error("(user (uid 1) (gid 1) (name x))").contains("not both"));
    assert!(error("(user (uid 1.5) (gid 1))").contains("`uid` must be a number, found `1.5`"));
    assert!(error("(user (uid (1)) (gid 1))").contains("`uid` takes atoms"));
}

#[test]
fn env_sets_name_and_value() {
    assert_eq!(
        one_op("(env PATH /usr/bin:/bin)"),
        Op::Env("PATH".into(), "/usr/bin:/bin".into())
    );
    assert_eq!(
        one_op("(env _A1 \"\")"),
        Op::Env("_A1".into(), String::new())
    );
    assert_eq!(
        one_op("(env X \"a b=c\")"),
        Op::Env("X".into(), "a b=c".into())
    );
    assert!(error("(env \"\" x)").contains("invalid environment variable name ``"));
    assert!(error("(env A=B x)").contains("invalid environment variable name `A=B`"));
}

#[test]
fn shell_takes_an_argv_prefix() {
    assert_eq!(
        one_op("(shell /bin/bash -c)"),
        Op::Shell(vec!["/bin/bash".into(), "-c".into()])
    );
    assert_eq!(one_op("(shell /bin/sh)"), Op::Shell(vec!["/bin/sh".into()]));
    assert_eq!(
        one_op("(shell cmd /S /C)"),
        Op::Shell(vec!["cmd".into(), "/S".into(), "/C".into()])
    );
    assert!(error("(shell)").contains("needs at least one argument"));
    assert!(error("(shell /bin/sh (-c))").contains("takes atoms"));
}

#[test]
fn comment_keeps_its_text() {
    assert_eq!(
        one_op("(comment \"Build: step 1\")"),
        Op::Comment("Build: step 1".into())
    );
    assert_eq!(one_op("(comment bare)"), Op::Comment("bare".into()));
}

#[test]
fn run_fields_come_in_any_order() {
    let want = Op::Run(Run {
        cache: vec![Mount {
            id: "c".into(),
            target: "/c".into(),
            ..Default::default()
        }],
        network: vec!["host".into()],
        secrets: vec![Mount {
            id: "s".into(),
            target: "/s".into(),
            ..Default::default()
        }],
        shell: "make".into(),
    });
    assert_eq!(
        one_op(
            "(run (cache (c (target /c))) (network host) (secrets (s (target /s))) (shell make))"
        ),
        want
    );
    assert_eq!(
        one_op(
            "(run (shell make) (secrets (s (target /s))) (network host) (cache (c (target /c))))"
        ),
        want
    );
    let plain = Op::Run(Run {
        shell: "make".into(),
        ..Run::default()
    });
    assert_eq!(
        one_op("(run (network) (cache) (secrets) (shell make))"),
        plain
    );
}

#[test]
fn copy_defaults_and_sources() {
    let Op::Copy(copy) = one_op("(copy (src a) (dst b))") else {
        panic!("copy expected")
    };
    assert_eq!(
        copy,
        Copy {
            from: CopyFrom::Context,
            src: vec!["a".into()],
            dst: "b".into(),
            exclude: vec![]
        }
    );
    let Op::Copy(copy) = one_op("(copy (exclude .git) (dst /x/) (src a b) (from context))") else {
        panic!("copy expected")
    };
    assert_eq!(copy.src, vec!["a", "b"]);
    assert_eq!(copy.exclude, vec![".git"]);
    assert_eq!(copy.from, CopyFrom::Context);
    // OBuilder parses several sources into a `dst` without `/`; the builder refuses them.
    let Op::Copy(copy) = one_op("(copy (src a b) (dst /x))") else {
        panic!("copy expected")
    };
    assert_eq!((copy.src.len(), copy.dst.as_str()), (2, "/x"));
}

#[test]
fn mount_targets_and_buildkit_options_are_kept_as_written() {
    let text = r#"(run (cache (opam (target "C:\Users\opam\AppData\Local\opam\download-cache")
                         (buildkit_options ((sharing locked) (mode 0700))))
                  (dune (target C:/cache)))
             (secrets (tok (target rel/tok)))
             (shell "mkdir C:\obuilder"))"#;
    let Op::Run(run) = one_op(text) else {
        panic!("run expected")
    };
    assert_eq!(
        run.cache[0].target,
        r"C:\Users\opam\AppData\Local\opam\download-cache"
    );
    assert_eq!(
        run.cache[0].buildkit_options,
        [
            ("sharing".into(), "locked".into()),
            ("mode".into(), "0700".into())
        ]
    );
    assert_eq!(run.cache[1].target, "C:/cache");
    assert_eq!(run.secrets[0].target, "rel/tok");
    assert_eq!(run.shell, r"mkdir C:\obuilder");
    let spec = parse(&format!("((from base)\n {text})")).unwrap();
    assert_eq!(parse(&print(&spec)).unwrap(), spec);
    assert!(print(&spec).contains("(buildkit_options ((sharing locked) (mode 0700)))"));
    assert!(
        error("(run (cache (c (target /c) (buildkit_options (sharing locked)))) (shell x))")
            .contains("found the atom `sharing`")
    );
    assert!(
        error("(run (cache (c (target /c) (buildkit_options x))) (shell x))")
            .contains("one list of (KEY VALUE) pairs")
    );
}

#[test]
fn bootstrap_skeleton_names_context_directories() {
    let spec =
        parse("((from debian:bookworm) (bootstrap (skeleton skel conf/more)))").expect("parses");
    let b = spec.bootstrap.expect("bootstrap").value;
    assert_eq!(b.skeleton, vec!["skel", "conf/more"]);
    let e = error("(bootstrap (skeleton skel /etc))");
    assert!(e.starts_with("2:28: ") && e.contains("is absolute"), "{e}");
    let e = error("(bootstrap (skeleton a/../../b))");
    assert!(e.contains("contains `..`"), "{e}");
    let e = error("(bootstrap (skeleton))");
    assert!(e.contains("needs at least one argument"), "{e}");
}

#[test]
fn bootstrap_fields_are_optional_and_go_after_from() {
    let spec = parse("((from debian:bookworm) (run (shell true)) (bootstrap))").expect("parses");
    assert_eq!(spec.bootstrap.map(|b| b.value), Some(Bootstrap::default()));
    let spec = parse(
        "((from debian:trixie) (bootstrap (arch arm64) (include a b) (mirror http://m/debian) (variant apt)))",
    )
    .expect("parses");
    let b = spec.bootstrap.expect("bootstrap").value;
    assert_eq!(b.variant.as_deref(), Some("apt"));
    assert_eq!(b.include, vec!["a", "b"]);
    assert_eq!(b.mirror.as_deref(), Some("http://m/debian"));
    assert_eq!(b.arch.as_deref(), Some("arm64"));
    assert!(b.skeleton.is_empty());
    let printed =
        print(&parse("((from d) (run (shell true)) (bootstrap (arch arm64)))").expect("parses"));
    assert_eq!(
        printed,
        "((from d)\n (bootstrap (arch arm64))\n (run (shell true)))\n"
    );
}

#[test]
fn positions_point_at_forms_and_the_base() {
    let spec = parse("((build b ((from x)))\n (from  base)\n  (workdir /a))").expect("parses");
    assert_eq!(spec.child_builds[0].pos, Pos { line: 1, col: 2 });
    assert_eq!(
        spec.child_builds[0].value.spec.from.pos,
        Pos { line: 1, col: 18 }
    );
    assert_eq!(spec.from.pos, Pos { line: 2, col: 9 });
    assert_eq!(spec.ops[0].pos, Pos { line: 3, col: 3 });
}

#[test]
fn child_build_scopes_are_separate() {
    let text = "((build a ((build inner ((from x))) (from y) (copy (from (build inner)) (src /i) (dst /i))))
 (from z)
 (copy (from (build a)) (src /i) (dst /i)))";
    let spec = parse(text).expect("parses");
    assert_eq!(
        spec.child_builds[0].value.spec.child_builds[0].value.name,
        "inner"
    );
    let bad = "((build a ((build inner ((from x))) (from y)))\n (from z)\n (copy (from (build inner)) (src /i) (dst /i)))";
    assert!(parse(bad)
        .expect_err("inner is not visible")
        .to_string()
        .contains("unknown build `inner`"));
}

/// A spec using every construct, built by hand.
fn everything() -> Spec {
    let dev = Spec {
        child_builds: vec![],
        from: at("ocaml/opam:debian-12-ocaml-5.1".into()),
        bootstrap: None,
        sandbox: Some(at(SandboxKind::Qemu)),
        ops: vec![
            at(Op::User(User::Unix { uid: 1000, gid: 1000 })),
            at(Op::Workdir("/home/opam/app".into())),
            at(Op::Run(Run {
                cache: vec![
                    Mount { id: "opam-archives".into(), target: "/home/opam/.opam/download-cache".into(), ..Default::default()},
                    Mount { id: "dune".into(), target: "/home/opam/.cache/dune".into(), ..Default::default()},
                ],
                network: vec!["host".into()],
                secrets: vec![],
                shell: "opam install -y --deps-only . && opam exec -- dune build --profile=release @install".into(),
            })),
        ],
        test: None,
        image: None,
        appliance: None,
    };
    Spec {
        child_builds: vec![at(ChildBuild {
            name: "dev".into(),
            spec: dev,
        })],
        from: at("debian:bookworm".into()),
        bootstrap: Some(at(Bootstrap {
            variant: Some("minbase".into()),
            include: vec!["ca-certificates".into()],
            skeleton: vec!["skeleton".into(), "more/skel".into()],
            mirror: Some("http://deb.debian.org/debian".into()),
            arch: None,
        })),
        sandbox: None,
        ops: vec![
            at(Op::Comment(
                "multi-line\ncomment with \"quotes\", tabs\t, unicode ✓ and a backslash \\".into(),
            )),
            at(Op::Shell(vec![
                "/bin/bash".into(),
                "-e".into(),
                "-c".into(),
            ])),
            at(Op::Env("LANG".into(), "C.UTF-8".into())),
            at(Op::Copy(Copy {
                from: CopyFrom::Build("dev".into()),
                src: vec!["/home/opam/app/_build/default/bin/main.exe".into()],
                dst: "/usr/local/bin/app".into(),
                exclude: vec![],
            })),
            at(Op::Copy(Copy {
                from: CopyFrom::Context,
                src: vec!["etc/app.conf".into(), "etc/app with space.conf".into()],
                dst: "/etc/app/".into(),
                exclude: vec![".git".into(), "*~".into()],
            })),
            at(Op::Run(Run {
                cache: vec![],
                network: vec![],
                secrets: vec![Mount {
                    id: "token".into(),
                    target: "/run/secrets/token".into(),
                    ..Default::default()
                }],
                shell: "printf '%s\\n' \"$(cat /run/secrets/token | wc -c)\"\nexit 0".into(),
            })),
            at(Op::User(User::Name("app".into()))),
            at(Op::Env("EMPTY".into(), String::new())),
            at(Op::Workdir("".into())),
        ],
        test: None,
        image: None,
        appliance: None,
    }
}

#[test]
fn hand_built_spec_round_trips() {
    let spec = everything();
    let printed = print(&spec);
    let reparsed = parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
    assert_eq!(reparsed, spec, "{printed}");
    assert_eq!(print(&reparsed), printed);
}

#[test]
fn round_trip_detects_a_changed_field() {
    // Guards the round-trip tests themselves: equality must see every field.
    let spec = everything();
    let mut other = parse(&print(&spec)).expect("parses");
    other.ops[5] = at(Op::Run(Run {
        shell: "different".into(),
        ..Run::default()
    }));
    assert_ne!(other, spec);
    let mut other = parse(&print(&spec)).expect("parses");
    other.bootstrap = None;
    assert_ne!(other, spec);
}

#[test]
fn hand_built_spec_prints_in_canonical_layout() {
    let expected = r#"((build dev
   ((from ocaml/opam:debian-12-ocaml-5.1)
    (sandbox qemu)
    (user (uid 1000) (gid 1000))
    (workdir /home/opam/app)
    (run (cache (opam-archives (target /home/opam/.opam/download-cache))
                (dune (target /home/opam/.cache/dune)))
         (network host)
         (shell "opam install -y --deps-only . && opam exec -- dune build --profile=release @install"))))
 (from debian:bookworm)
 (bootstrap (variant minbase)
            (include ca-certificates)
            (skeleton skeleton more/skel)
            (mirror http://deb.debian.org/debian))
 (comment "multi-line\ncomment with \"quotes\", tabs\t, unicode ✓ and a backslash \\")
 (shell /bin/bash -e -c)
 (env LANG C.UTF-8)
 (copy (from (build dev))
       (src /home/opam/app/_build/default/bin/main.exe)
       (dst /usr/local/bin/app))
 (copy (src etc/app.conf "etc/app with space.conf")
       (dst /etc/app/)
       (exclude .git *~))
 (run (secrets (token (target /run/secrets/token)))
      (shell "printf '%s\\n' \"$(cat /run/secrets/token | wc -c)\"\nexit 0"))
 (user (name app))
 (env EMPTY "")
 (workdir ""))
"#;
    assert_eq!(print(&everything()), expected);
}
