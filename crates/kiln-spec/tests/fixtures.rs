//! Fixture-driven tests: OBuilder specs, canonical layout files, the malformed corpus.

use kiln_spec::{
    comments, parse, parse_file, print, print_with_comments, CopyFrom, Mount, Op, Spec, User,
};
use std::fs;
use std::path::{Path, PathBuf};

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(name)
}

/// The `.spec` files of a fixture directory, sorted, with their text.
fn specs_in(name: &str) -> Vec<(String, String)> {
    let mut paths: Vec<PathBuf> = fs::read_dir(fixture_dir(name))
        .unwrap_or_else(|e| panic!("reading tests/{name}: {e}"))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "spec"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let text =
                fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (
                p.file_name()
                    .expect("file name")
                    .to_string_lossy()
                    .into_owned(),
                text,
            )
        })
        .collect()
}

fn parse_ok(file: &str, text: &str) -> Spec {
    parse_file(text, file).unwrap_or_else(|e| panic!("{e}"))
}

fn assert_round_trips(file: &str, spec: &Spec) {
    let printed = print(spec);
    let reparsed = parse_file(&printed, file)
        .unwrap_or_else(|e| panic!("printed {file} does not parse: {e}\n{printed}"));
    assert_eq!(
        &reparsed, spec,
        "{file}: print/parse changed the spec:\n{printed}"
    );
    assert_eq!(
        print(&reparsed),
        printed,
        "{file}: printing is not idempotent"
    );
}

fn mount(id: &str, target: &str) -> Mount {
    Mount {
        id: id.into(),
        target: target.into(),
        ..Default::default()
    }
}

#[test]
fn obuilder_specs_parse_unchanged_and_round_trip() {
    let specs = specs_in("obuilder");
    assert!(
        specs.len() >= 4,
        "expected the OBuilder fixtures, found {}",
        specs.len()
    );
    for (file, text) in &specs {
        let spec = parse_ok(file, text);
        assert!(
            spec.bootstrap.is_none() && spec.test.is_none() && spec.image.is_none(),
            "{file}: OBuilder specs have no kiln forms"
        );
        assert_round_trips(file, &spec);
    }
}

/// Every spec of OBuilder's own repository reads, and `kiln fmt` keeps every one of its
/// comments, means the same spec and formats its own output to itself.
#[test]
fn obuilder_repository_specs_format_idempotently_keeping_every_comment() {
    let upstream: Vec<_> = specs_in("obuilder")
        .into_iter()
        .filter(|(file, _)| file.starts_with("upstream-"))
        .collect();
    assert_eq!(upstream.len(), 21, "the OBuilder repository corpus");
    let mut commented = 0;
    for (file, text) in &upstream {
        let spec = parse_ok(file, text);
        let out = print_with_comments(&spec, text).unwrap_or_else(|e| panic!("{file}: {e}"));
        let again = parse_file(&out, file).unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert_eq!(again, spec, "{file}: formatting changed the spec:\n{out}");
        let again_out = print_with_comments(&again, &out).expect("formats");
        assert_eq!(again_out, out, "{file}: kiln fmt is not idempotent");
        let mut before = comments(text).expect("reads");
        let mut after = comments(&out).expect("reads");
        before.sort();
        after.sort();
        assert_eq!(after, before, "{file}: comments lost or duplicated:\n{out}");
        commented += usize::from(!before.is_empty());
    }
    // example.spec, example.windows.spec and both FreeBSD specs have comments inside forms.
    assert!(commented >= 4, "only {commented} commented specs");
}

#[test]
fn obuilder_multi_stage_spec_means_what_it_says() {
    let text =
        fs::read_to_string(fixture_dir("obuilder").join("multi-stage.spec")).expect("fixture");
    let spec = parse_ok("multi-stage.spec", &text);
    assert_eq!(spec.from.value, "debian:bookworm-slim");
    assert_eq!(spec.from.pos.line, 14);
    let [dev] = spec.child_builds.as_slice() else {
        panic!("one child build expected")
    };
    assert_eq!(dev.value.name, "dev");
    assert_eq!((dev.pos.line, dev.pos.col), (2, 2));
    let inner = &dev.value.spec;
    assert!(inner.from.value.starts_with("ocaml/opam@sha256:02f01da5"));
    assert_eq!(inner.ops.len(), 8);
    assert_eq!(
        inner.ops[1].value,
        Op::User(User::Unix {
            uid: 1000,
            gid: 1000
        })
    );
    let Op::Run(run) = &inner.ops[5].value else {
        panic!("run expected")
    };
    assert_eq!(
        run.cache,
        vec![mount("opam-archives", "/home/opam/.opam/download-cache")]
    );
    assert_eq!(run.network, vec!["host".to_string()]);
    assert_eq!(
        run.shell,
        "opam pin add -yn . && opam install --deps-only ."
    );
    let Op::Copy(exclude) = &inner.ops[6].value else {
        panic!("copy expected")
    };
    assert_eq!(exclude.exclude, vec![".git", "_build", "_opam"]);
    let Op::Copy(copy) = &spec.ops[1].value else {
        panic!("copy expected")
    };
    assert_eq!(copy.from, CopyFrom::Build("dev".into()));
    assert_eq!(copy.src, vec!["/src/_build/default/main.exe"]);
    assert_eq!(copy.dst, "/usr/local/bin/app");
    assert_eq!((spec.ops[1].pos.line, spec.ops[1].pos.col), (16, 2));
}

#[test]
fn obuilder_secrets_and_windows_specs_mean_what_they_say() {
    let text = fs::read_to_string(fixture_dir("obuilder").join("secrets.spec")).expect("fixture");
    let spec = parse_ok("secrets.spec", &text);
    assert_eq!(
        spec.ops[0].value,
        Op::Shell(vec!["/bin/sh".into(), "-c".into()])
    );
    let Op::Run(run) = &spec.ops[2].value else {
        panic!("run expected")
    };
    assert_eq!(
        run.secrets,
        vec![
            mount("deploy-token", "/run/secrets/token"),
            mount("ssh-key", "/home/deploy/.ssh/id_ed25519")
        ]
    );
    assert!(run
        .shell
        .contains("\"Authorization: Bearer $(cat /run/secrets/token)\""));
    assert_eq!(spec.ops[3].value, Op::User(User::Name("deploy".into())));

    let text =
        fs::read_to_string(fixture_dir("obuilder").join("windows-style.spec")).expect("fixture");
    let spec = parse_ok("windows-style.spec", &text);
    assert_eq!(
        spec.ops[2].value,
        Op::Env("OPAMROOT".into(), "C:\\opam".into())
    );
    let Op::Run(run) = &spec.ops[3].value else {
        panic!("run expected")
    };
    assert_eq!(run.network, vec!["host", "nat"]);
    assert_eq!(run.shell, "echo hello & dir C:\\");
    assert_eq!(spec.ops.len(), 6, "the `#;` step is commented out");
}

#[test]
fn canonical_files_print_back_byte_for_byte() {
    let specs = specs_in("canonical");
    assert!(
        specs.len() >= 4,
        "expected canonical fixtures, found {}",
        specs.len()
    );
    for (file, text) in &specs {
        let spec = parse_ok(file, text);
        let printed = print(&spec);
        assert_eq!(printed, *text, "{file} is not reproduced byte for byte");
        assert_round_trips(file, &spec);
    }
}

#[test]
fn obuilder_specs_print_to_canonical_layout_once() {
    for (file, text) in specs_in("obuilder") {
        let once = print(&parse_ok(&file, &text));
        let twice = print(&parse_ok(&file, &once));
        assert_eq!(once, twice, "{file}");
        assert!(once.starts_with("(("), "{file}: {once}");
        assert!(once.ends_with(")\n"), "{file}: {once}");
    }
}

#[test]
fn malformed_specs_fail_with_the_expected_message() {
    let specs = specs_in("malformed");
    assert!(
        specs.len() >= 60,
        "expected at least 60 malformed specs, found {}",
        specs.len()
    );
    let mut failures = Vec::new();
    for (file, text) in &specs {
        let err_path = fixture_dir("malformed").join(file.replace(".spec", ".err"));
        let expected = fs::read_to_string(&err_path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", err_path.display()));
        let expected = expected.trim_end_matches('\n');
        match parse(text) {
            Ok(spec) => failures.push(format!(
                "{file}: parsed, but should fail with\n  {expected}\n  got {spec:?}"
            )),
            Err(e) if e.to_string() != expected => {
                failures.push(format!("{file}:\n  expected {expected}\n  got      {e}"))
            }
            Err(_) => {}
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} malformed specs:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
}

#[test]
fn malformed_corpus_names_are_numbered_and_paired() {
    for (file, _) in specs_in("malformed") {
        let stem = file.trim_end_matches(".spec");
        let (number, name) = stem
            .split_once('-')
            .unwrap_or_else(|| panic!("{file}: want NNN-short-name.spec"));
        assert!(
            number.len() == 3 && number.bytes().all(|b| b.is_ascii_digit()),
            "{file}"
        );
        assert!(!name.is_empty(), "{file}");
    }
}

#[test]
fn parse_file_names_the_file_in_errors() {
    let err = parse_file("((from a)\n (rnu (shell x)))", "app.spec").unwrap_err();
    assert_eq!(err.file.as_deref(), Some("app.spec"));
    assert_eq!(
        err.to_string(),
        "app.spec:2:2: unknown directive `rnu` (did you mean `run`?)"
    );
    assert!(parse_file("((from a))", "app.spec").is_ok());
}
