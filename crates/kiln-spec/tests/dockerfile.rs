//! `kiln_spec::dockerfile`: specs written as Dockerfiles, as `obuilder dockerfile` writes them.
//!
//! - OBuilder's own expectations (its `test/test.ml`, `test_docker_unix` and
//!   `test_docker_windows`) reproduced case by case; where kiln's text differs, the test
//!   says where and why.
//! - Fixtures: every spec of `tests/obuilder/` and `examples/` that has expectations next to
//!   it (`NAME[.windows][.buildkit].dockerfile`, or `….err` for a refusal) is compared
//!   exactly; every `upstream-*` spec has both Unix ones. The expected texts were checked by
//!   hand against OBuilder's rules.
//! - Refusals: kiln forms, `file:` bases, excludes without BuildKit and values a Dockerfile
//!   would read differently, each at its `line:col`.

use kiln_spec::dockerfile::{
    Escape, BUILDKIT_EXCLUDE_SYNTAX, BUILDKIT_SYNTAX, WINDOWS_ESCAPE_DIRECTIVE,
};
use kiln_spec::{dockerfile, parse, DockerfileOptions, Spec};
use std::fs;
use std::path::{Path, PathBuf};

const PLAIN: DockerfileOptions = DockerfileOptions {
    buildkit: false,
    escape: Escape::Unix,
};
const BUILDKIT: DockerfileOptions = DockerfileOptions {
    buildkit: true,
    escape: Escape::Unix,
};
const WINDOWS: DockerfileOptions = DockerfileOptions {
    buildkit: false,
    escape: Escape::Windows,
};
const WINDOWS_BUILDKIT: DockerfileOptions = DockerfileOptions {
    buildkit: true,
    escape: Escape::Windows,
};

fn spec(text: &str) -> Spec {
    parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn convert(text: &str, options: DockerfileOptions) -> String {
    dockerfile(&spec(text), options).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn refusal(text: &str, options: DockerfileOptions) -> String {
    match dockerfile(&spec(text), options) {
        Ok(out) => panic!("converted, but should be refused:\n{out}"),
        Err(e) => e.to_string(),
    }
}

/// Checks that `err` is at `pos` and says `needle`.
fn assert_refused(err: &str, pos: &str, needle: &str) {
    assert!(
        err.starts_with(&format!("{pos}: ")) && err.contains(needle),
        "want {pos}: …{needle}…, got\n{err}"
    );
}

// ---- OBuilder's test.ml, test_docker_unix -------------------------------------------

/// test.ml's "Dockerfile" and "BuildKit" spec, with the copy that has an exclude.
const OBUILDER_DOCKERFILE_SPEC: &str = r#"
     ((from base)
      (comment "A test comment")
      (workdir /src)
      (run (shell "command1"))
      (shell /bin/sh -c)
      (run
       (cache (a (target /data))
              (b (target /srv)))
       (shell "command2 &&
               command3"))
      (copy (src a b) (dst c))
      (copy (src a b) (dst c) (exclude .git _build))
      (env DEBUG 1)
      (env ESCAPE "\"quote\\sla\\sh\"")
      (user (uid 1) (gid 2))
      (copy (src a b) (dst c))
     ) "#;

/// OBuilder's expected text for it without BuildKit, with the exclude copy's line.
const OBUILDER_DOCKERFILE: &str = r#"FROM base
# A test comment
WORKDIR /src
RUN command1
SHELL [ "/bin/sh", "-c" ]
RUN command2 && \
    command3
COPY a b c
COPY a b c
ENV DEBUG="1"
ENV ESCAPE="\"quote\\sla\\sh\""
USER 1:2
COPY --chown=1:2 a b c
"#;

#[test]
fn obuilder_case_dockerfile_without_the_exclude_is_obuilders_text() {
    // OBuilder drops the excludes of the second copy; kiln refuses them without BuildKit,
    // so the spec minus that copy must give OBuilder's text minus its line.
    let without = OBUILDER_DOCKERFILE_SPEC
        .replace("      (copy (src a b) (dst c) (exclude .git _build))\n", "");
    let expected = OBUILDER_DOCKERFILE.replacen("COPY a b c\nCOPY a b c\n", "COPY a b c\n", 1);
    assert_eq!(convert(&without, PLAIN), expected);
}

#[test]
fn obuilder_case_dockerfile_with_the_exclude_is_refused_at_the_copy() {
    let err = refusal(OBUILDER_DOCKERFILE_SPEC, PLAIN);
    assert_refused(&err, "13:7", "(copy …) has (exclude …)");
    assert!(
        err.contains("--buildkit") && err.contains(".dockerignore"),
        "{err}"
    );
}

#[test]
fn obuilder_case_dockerfile_with_buildkit_keeps_every_line_and_adds_mounts_and_excludes() {
    let expected = r#"# syntax=docker/dockerfile:1.19
FROM base
# A test comment
WORKDIR /src
RUN command1
SHELL [ "/bin/sh", "-c" ]
RUN --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 command2 && \
    command3
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
ENV DEBUG="1"
ENV ESCAPE="\"quote\\sla\\sh\""
USER 1:2
COPY --chown=1:2 a b c
"#;
    assert_eq!(convert(OBUILDER_DOCKERFILE_SPEC, BUILDKIT), expected);
}

/// test.ml's "BuildKit" case.
const OBUILDER_BUILDKIT_SPEC: &str = r#"
     ((from base)
      (comment "A test comment")
      (workdir /src)
      (run (shell "command1"))
      (shell /bin/sh -c)
      (run
       (cache (a (target /data))
              (b (target /srv)))
       (shell "command2"))
      (copy (src a b) (dst c))
      (copy (src a b) (dst c) (exclude .git _build))
      (env DEBUG 1)
      (user (uid 1) (gid 2))
      (copy (src a b) (dst c))
     ) "#;

#[test]
fn obuilder_case_buildkit() {
    // OBuilder's expected text, plus kiln's syntax line (1.19: COPY --exclude) and the
    // exclude copy's --exclude flags, which OBuilder drops.
    let expected = r#"# syntax=docker/dockerfile:1.19
FROM base
# A test comment
WORKDIR /src
RUN command1
SHELL [ "/bin/sh", "-c" ]
RUN --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 command2
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
ENV DEBUG="1"
USER 1:2
COPY --chown=1:2 a b c
"#;
    assert_eq!(convert(OBUILDER_BUILDKIT_SPEC, BUILDKIT), expected);
    // Without the exclude copy: OBuilder's text exactly, after the plain syntax line.
    let without = OBUILDER_BUILDKIT_SPEC
        .replace("      (copy (src a b) (dst c) (exclude .git _build))\n", "");
    let expected = expected
        .replace(BUILDKIT_EXCLUDE_SYNTAX, BUILDKIT_SYNTAX)
        .replace("COPY --exclude=**/.git --exclude=**/_build a b c\n", "");
    assert_eq!(convert(&without, BUILDKIT), expected);
}

const OBUILDER_MULTI_STAGE_SPEC: &str = r#"
     ((build tools
             ((from base)
              (run (shell "make tools"))))
      (from base)
      (copy (from (build tools)) (src binary) (dst /usr/local/bin/))
     ) "#;

#[test]
fn copies_into_a_directory_name_each_source_place() {
    let spec =
        "((from base) (copy (src app conf/. . /out/lib/) (dst /opt/)) (copy (src a b) (dst c)))";
    assert_eq!(
        convert(spec, PLAIN),
        "FROM base\nCOPY app /opt/app\nCOPY conf/. /opt/conf\nCOPY . /opt/\nCOPY /out/lib/ /opt/lib\nCOPY a b c\n"
    );
}

#[test]
fn obuilder_case_multi_stage() {
    // OBuilder writes `COPY --from=tools binary /usr/local/bin/`, which Docker would build
    // differently were `binary` a directory (its contents, not itself, in bin/): kiln names
    // the source's place.
    let expected = "FROM base as tools\nRUN make tools\n\nFROM base\nCOPY --from=tools binary /usr/local/bin/binary\n";
    assert_eq!(convert(OBUILDER_MULTI_STAGE_SPEC, PLAIN), expected);
    assert_eq!(
        convert(OBUILDER_MULTI_STAGE_SPEC, BUILDKIT),
        format!("{BUILDKIT_SYNTAX}\n{expected}")
    );
}

#[test]
fn obuilder_case_secrets() {
    let text = r#"
     ((build tools
            ((from base)
             (run (shell "make tools"))))
      (from base)
      (run
       (secrets (a (target /secrets/a))
                (b (target /secrets/b)))
       (shell "command1"))
     ) "#;
    let expected = "FROM base as tools
RUN make tools

FROM base
RUN --mount=type=secret,id=a,target=/secrets/a,uid=0 --mount=type=secret,id=b,target=/secrets/b,uid=0 command1
";
    assert_eq!(
        convert(text, BUILDKIT),
        format!("{BUILDKIT_SYNTAX}\n{expected}")
    );
    // Without BuildKit the secrets are left out, as OBuilder does.
    assert_eq!(
        convert(text, PLAIN),
        "FROM base as tools\nRUN make tools\n\nFROM base\nRUN command1\n"
    );
}

// ---- OBuilder's test.ml, test_docker_windows -----------------------------------------

/// test.ml's Windows "Dockerfile" spec, with the copy that has an exclude.
const OBUILDER_WINDOWS_SPEC: &str = r#"
     ((from base)
      (comment "A test comment")
      (workdir C:/src)
      (run (shell "command1"))
      (shell C:/Windows/System32/cmd.exe /c)
      (run
       (cache (a (target /data))
              (b (target /srv)))
       (shell "command2 &&
               command3"))
      (copy (src a b) (dst c))
      (copy (src a b) (dst c) (exclude .git _build))
      (env DEBUG 1)
      (user (name Zaphod))
      (copy (src a b) (dst c))
     ) "#;

/// OBuilder's expected text for it (`--escape windows`, no BuildKit), with the exclude
/// copy's line.
const OBUILDER_WINDOWS: &str = r#"#escape=`
FROM base
# A test comment
WORKDIR C:/src
RUN command1
SHELL [ "C:/Windows/System32/cmd.exe", "/c" ]
RUN command2 && `
    command3
COPY a b c
COPY a b c
ENV DEBUG="1"
USER Zaphod
COPY a b c
"#;

#[test]
fn obuilder_windows_case_dockerfile_without_the_exclude_is_obuilders_text() {
    // As in Unix mode: OBuilder drops the excludes, kiln refuses them without BuildKit.
    let without =
        OBUILDER_WINDOWS_SPEC.replace("      (copy (src a b) (dst c) (exclude .git _build))\n", "");
    let expected = OBUILDER_WINDOWS.replacen("COPY a b c\nCOPY a b c\n", "COPY a b c\n", 1);
    assert_eq!(convert(&without, WINDOWS), expected);
    assert_refused(
        &refusal(OBUILDER_WINDOWS_SPEC, WINDOWS),
        "13:7",
        "(copy …) has (exclude …)",
    );
}

#[test]
fn obuilder_windows_case_dockerfile_with_buildkit_has_mounts_without_uid() {
    // OBuilder stops at a mount under a Windows user (it has no uid to give); kiln writes
    // the mount without one, after its syntax line, and adds the excludes.
    let expected = r#"# syntax=docker/dockerfile:1.19
#escape=`
FROM base
# A test comment
WORKDIR C:/src
RUN command1
SHELL [ "C:/Windows/System32/cmd.exe", "/c" ]
RUN --mount=type=cache,id=a,target=/data --mount=type=cache,id=b,target=/srv command2 && `
    command3
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
ENV DEBUG="1"
USER Zaphod
COPY a b c
"#;
    assert_eq!(convert(OBUILDER_WINDOWS_SPEC, WINDOWS_BUILDKIT), expected);
}

#[test]
fn obuilder_windows_case_multi_stage() {
    // As in unix mode, the copy into bin/ names the source's place (OBuilder: `bin/`).
    let expected = "#escape=`\nFROM base as tools\nRUN make tools\n\nFROM base\nCOPY --from=tools binary /usr/local/bin/binary\n";
    assert_eq!(convert(OBUILDER_MULTI_STAGE_SPEC, WINDOWS), expected);
    assert_eq!(
        convert(OBUILDER_MULTI_STAGE_SPEC, WINDOWS_BUILDKIT),
        format!("{BUILDKIT_SYNTAX}\n{expected}")
    );
}

// ---- fixtures ---------------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compares `spec_path`'s conversion in one mode with the expectation next to it.
/// `Ok(false)` if there is none.
fn check_fixture(spec_path: &Path, options: DockerfileOptions) -> Result<bool, String> {
    let text =
        fs::read_to_string(spec_path).map_err(|e| format!("{}: {e}", spec_path.display()))?;
    let stem = spec_path.with_extension("");
    let mode = mode_suffix(options);
    let expected_text = PathBuf::from(format!("{}{mode}.dockerfile", stem.display()));
    let expected_err = PathBuf::from(format!("{}{mode}.dockerfile.err", stem.display()));
    let got = parse(&text)
        .map_err(|e| format!("{}: {e}", spec_path.display()))
        .map(|spec| dockerfile(&spec, options).map_err(|e| e.to_string()))?;
    let (file, want, got) = match (expected_text.exists(), expected_err.exists()) {
        (false, false) => return Ok(false),
        (true, true) => return Err(format!("{}: both a .dockerfile and a .err", stem.display())),
        (true, false) => (expected_text, None, got),
        (false, true) => (expected_err, Some(()), got),
    };
    let want_text = fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let matches = match (want, &got) {
        (None, Ok(out)) => *out == want_text,
        (Some(()), Err(e)) => *e == want_text.trim_end_matches('\n'),
        _ => false,
    };
    if matches {
        Ok(true)
    } else {
        Err(format!(
            "{}:\n--- want\n{want_text}\n--- got\n{got:?}",
            file.display()
        ))
    }
}

/// How fixture names say the mode: `.windows` and `.buildkit`, in that order.
fn mode_suffix(options: DockerfileOptions) -> String {
    let windows = if options.escape == Escape::Windows {
        ".windows"
    } else {
        ""
    };
    let buildkit = if options.buildkit { ".buildkit" } else { "" };
    format!("{windows}{buildkit}")
}

/// The `.spec` files directly in `dir` and one level below, sorted.
fn specs_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            out.extend(
                specs_under(&path)
                    .into_iter()
                    .filter(|p| p.parent() == Some(&path)),
            );
        } else if path.extension().is_some_and(|e| e == "spec") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Checks every fixture under `dir`; returns the `NAME[.windows][.buildkit]` of those checked.
fn check_fixtures(dir: &Path) -> Vec<String> {
    let mut checked = Vec::new();
    let mut failures = Vec::new();
    for spec_path in specs_under(dir) {
        for options in [PLAIN, BUILDKIT, WINDOWS, WINDOWS_BUILDKIT] {
            match check_fixture(&spec_path, options) {
                Ok(true) => {
                    let name = spec_path.file_stem().expect("stem").to_string_lossy();
                    checked.push(format!("{name}{}", mode_suffix(options)));
                }
                Ok(false) => {}
                Err(e) => failures.push(e),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    checked
}

/// The specs of `tests/obuilder/` written for Windows, which have `.windows` fixtures too.
const WINDOWS_SPECS: [&str; 8] = [
    "windows-style",
    "upstream-09-doc-qemu-md",
    "upstream-10-doc-windows-md",
    "upstream-11-doc-windows-mld",
    "upstream-13-example-windows-hcs-spec",
    "upstream-14-example-windows-spec",
    "upstream-22-test-test-ml",
    "upstream-23-test-test-ml",
];

#[test]
fn obuilder_fixtures_convert_to_the_expected_text() {
    let dir = root().join("crates/kiln-spec/tests/obuilder");
    let checked = check_fixtures(&dir);
    // Every upstream spec (OBuilder's own 21) has a Unix expectation in both modes.
    let upstream: Vec<String> = specs_under(&dir)
        .iter()
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .filter(|name| name.starts_with("upstream-"))
        .collect();
    assert_eq!(upstream.len(), 21, "{upstream:?}");
    let ours = ["multi-stage", "opam-ci", "secrets", "windows-style"];
    let unix = ours.iter().map(|n| n.to_string()).chain(upstream);
    let unix_modes = unix.flat_map(|n| [n.clone(), format!("{n}.buildkit")]);
    let windows_modes = WINDOWS_SPECS
        .iter()
        .flat_map(|n| [format!("{n}.windows"), format!("{n}.windows.buildkit")]);
    let missing: Vec<String> = unix_modes
        .chain(windows_modes)
        .filter(|want| !checked.contains(want))
        .collect();
    assert!(
        missing.is_empty(),
        "no .dockerfile or .dockerfile.err for {missing:?}"
    );
}

#[test]
fn example_fixtures_convert_to_the_expected_text() {
    let checked = check_fixtures(&root().join("examples"));
    for want in ["busybox", "busybox.buildkit", "app.buildkit"] {
        assert!(
            checked.contains(&want.to_string()),
            "no expectation for {want}: {checked:?}"
        );
    }
}

/// The examples that use kiln forms are refused at the first one, in both modes.
#[test]
fn examples_with_kiln_forms_are_refused_at_the_form() {
    let cases = [
        (
            "examples/webserver/web.spec",
            "25:2",
            "(test …) is a kiln extension",
        ),
        (
            "examples/memcached/memcached.spec",
            "2:2",
            "(bootstrap …) is a kiln extension",
        ),
        (
            "examples/combo/combo.spec",
            "15:2",
            "(test …) is a kiln extension",
        ),
        (
            "examples/multi-stage/app.spec",
            "4:10",
            "(copy …) has (exclude …)",
        ),
    ];
    for (file, pos, needle) in cases {
        let text = fs::read_to_string(root().join(file)).expect(file);
        assert_refused(&refusal(&text, PLAIN), pos, needle);
        if !needle.starts_with("(copy") {
            assert_refused(&refusal(&text, BUILDKIT), pos, needle);
        }
    }
}

// ---- rules ------------------------------------------------------------------------------

#[test]
fn nested_builds_come_first_each_stage_starts_as_root() {
    let text = r#"((build outer
        ((build inner ((from alpine) (user (uid 5) (gid 6)) (run (shell "a"))))
         (from alpine)
         (copy (from (build inner)) (src /x) (dst /y))))
      (from alpine)
      (run (cache (c (target /c))) (shell "b"))
      (copy (from (build outer)) (src /y) (dst /z)))"#;
    let expected = "# syntax=docker/dockerfile:1
FROM alpine as inner
USER 5:6
RUN a

FROM alpine as outer
COPY --from=inner /x /y

FROM alpine
RUN --mount=type=cache,id=c,target=/c,uid=0 b
COPY --from=outer /y /z
";
    assert_eq!(convert(text, BUILDKIT), expected);
}

#[test]
fn users_set_chown_and_mount_uids() {
    let text = r#"((from alpine)
      (user (uid 0) (gid 7))
      (copy (src a) (dst /a))
      (user (uid 9) (gid 0))
      (run (cache (c (target /c) (buildkit_options ((sharing locked) (mode 0700))))) (shell "x"))
      (copy (src a) (dst /a))
      (user (name root))
      (copy (src a) (dst /a))
      (run (secrets (s (target /s))) (shell "y"))
      (user (name app))
      (copy (src a) (dst /a)))"#;
    let expected = "# syntax=docker/dockerfile:1
FROM alpine
USER 0:7
COPY --chown=0:7 a /a
USER 9:0
RUN --mount=type=cache,id=c,target=/c,uid=9,sharing=locked,mode=0700 x
COPY --chown=9:0 a /a
USER root
COPY a /a
RUN --mount=type=secret,id=s,target=/s,uid=0 y
USER app
COPY --chown=app a /a
";
    assert_eq!(convert(text, BUILDKIT), expected);
}

#[test]
fn a_mount_under_a_named_user_is_refused_with_buildkit_only() {
    let text = "((from alpine)\n (user (name app))\n (run (cache (c (target /c))) (shell x)))";
    let err = refusal(text, BUILDKIT);
    assert_refused(
        &err,
        "3:2",
        "the cache mount `c` is used as (user (name app))",
    );
    assert_eq!(convert(text, PLAIN), "FROM alpine\nUSER app\nRUN x\n");
}

#[test]
fn network_host_is_a_buildkit_flag_and_other_networks_change_nothing() {
    let text = r#"((from alpine)
      (run (network host) (secrets (s (target /s))) (cache (c (target /c))) (shell "a"))
      (run (network bridge) (shell "b")))"#;
    assert_eq!(
        convert(text, BUILDKIT),
        "# syntax=docker/dockerfile:1\nFROM alpine\n\
         RUN --network=host --mount=type=secret,id=s,target=/s,uid=0 --mount=type=cache,id=c,target=/c,uid=0 a\n\
         RUN b\n"
    );
    assert_eq!(convert(text, PLAIN), "FROM alpine\nRUN a\nRUN b\n");
}

#[test]
fn env_values_keep_quotes_backslashes_and_dollars_literal() {
    let text = r#"((from alpine) (env PS1 "\\u \"$HOME\" $(x)") (env EMPTY ""))"#;
    assert_eq!(
        convert(text, PLAIN),
        "FROM alpine\nENV PS1=\"\\\\u \\\"\\$HOME\\\" \\$(x)\"\nENV EMPTY=\"\"\n"
    );
}

#[test]
fn shell_arguments_are_json_strings() {
    let text = r#"((from alpine) (shell /bin/sh -c) (shell "a \"b\"" "c\\d" "e\tf"))"#;
    assert_eq!(
        convert(text, PLAIN),
        "FROM alpine\nSHELL [ \"/bin/sh\", \"-c\" ]\nSHELL [ \"a \\\"b\\\"\", \"c\\\\d\", \"e\\tf\" ]\n"
    );
}

#[test]
fn multi_line_comments_are_one_comment_line_each() {
    let text = r#"((from alpine) (comment "first\nsecond") (comment ""))"#;
    assert_eq!(convert(text, PLAIN), "FROM alpine\n# first\n# second\n# \n");
}

#[test]
fn multi_line_commands_are_trimmed_and_continued() {
    // OBuilder's rule: each line trimmed, joined by " \" + newline + 4 spaces. kiln also
    // drops blank and # lines at both ends, and a line's own trailing `\` continuation.
    let text = "((from alpine) (run (shell \"\n  # set up\n  apt-get update &&\n\n  apt-get install \\\\\n     curl\n  # done\n  \")))";
    assert_eq!(
        convert(text, PLAIN),
        "FROM alpine\nRUN apt-get update && \\\n     \\\n    apt-get install  \\\n    curl\n"
    );
    // An even run of backslashes is no continuation: it stays.
    let text = "((from alpine) (run (shell \"echo \\\\\\\\\n done\")))";
    assert_eq!(
        convert(text, PLAIN),
        "FROM alpine\nRUN echo \\\\ \\\n    done\n"
    );
}

#[test]
fn the_buildkit_syntax_line_names_1_19_only_when_an_exclude_needs_it() {
    let nested = "((build b ((from alpine) (copy (src .) (dst /s) (exclude x)))) (from alpine))";
    assert!(convert(nested, BUILDKIT)
        .starts_with(&format!("{BUILDKIT_EXCLUDE_SYNTAX}\nFROM alpine as b\n")));
    let plain = "((from alpine) (copy (src .) (dst /s)))";
    assert!(convert(plain, BUILDKIT).starts_with(&format!("{BUILDKIT_SYNTAX}\nFROM")));
    assert!(convert(plain, PLAIN).starts_with("FROM alpine\n"));
}

// ---- refusals ---------------------------------------------------------------------------

#[test]
fn kiln_forms_are_refused_at_their_line_and_column() {
    let text = "((from debian:bookworm)\n (bootstrap (include curl))\n (run (shell true)))";
    let err = refusal(text, PLAIN);
    assert_refused(&err, "2:2", "(bootstrap …) is a kiln extension");
    assert!(err.contains("Docker's `debian:bookworm` image"), "{err}");

    let text = "((from alpine)\n (run (shell true))\n (test (port (port 22))))";
    assert_refused(
        &refusal(text, BUILDKIT),
        "3:2",
        "(test …) is a kiln extension",
    );

    let text =
        "((build a ((from alpine)))\n (from alpine)\n (image (partition (name a) (build a))))";
    assert_refused(
        &refusal(text, PLAIN),
        "3:2",
        "(image …) is a kiln extension",
    );

    // A bootstrap in a child build is refused there.
    let text =
        "((build a\n  ((from debian:trixie)\n   (bootstrap (variant apt))))\n (from alpine))";
    assert_refused(&refusal(text, PLAIN), "3:4", "(bootstrap …)");
}

#[test]
fn the_first_refusal_in_the_text_wins() {
    // The exclude copy comes before the test form: it is named.
    let text = "((from alpine)\n (copy (src .) (dst /s) (exclude x))\n (test (port (port 22))))";
    assert_refused(&refusal(text, PLAIN), "2:2", "(copy …) has (exclude …)");
    // A test form before a bad op is named first.
    let text = "((from alpine)\n (test (port (port 22)))\n (copy (src .) (dst /s) (exclude x)))";
    assert_refused(&refusal(text, PLAIN), "2:2", "(test …)");
}

#[test]
fn file_bases_are_refused_at_the_base() {
    let text = "((from file:rootfs.tar.gz)\n (run (shell true)))";
    let err = refusal(text, BUILDKIT);
    assert_refused(
        &err,
        "1:8",
        "(from …) base `file:rootfs.tar.gz` is a rootfs tarball",
    );
    assert!(err.contains("docker import rootfs.tar.gz"), "{err}");
    // A file:// URL, in a child build.
    let text = "((build a ((from file:///srv/root.tar)))\n (from alpine))";
    let err = refusal(text, PLAIN);
    assert_refused(&err, "1:18", "(from …) base `file:///srv/root.tar`");
    assert!(err.contains("docker import /srv/root.tar NAME"), "{err}");
}

#[test]
fn layer_bases_are_refused_at_the_base() {
    let text = "((from layer:tools)\n (run (shell true)))";
    let err = refusal(text, PLAIN);
    assert_refused(
        &err,
        "1:8",
        "(from …) base `layer:tools` is a layer in kiln's store",
    );
    assert!(err.contains("kiln export NAME"), "{err}");
}

#[test]
fn values_docker_would_read_differently_are_refused() {
    let cases = [
        ("(workdir \"/a$HOME\")", "`$`"),
        ("(workdir \"/a\\nRUN rm\")", "a line break"),
        ("(copy (src \"a b\") (dst /x))", "a space"),
        ("(copy (src \"*.txt\") (dst /x))", "a wildcard"),
        ("(copy (src a) (dst \"C:\\\\x\"))", "`\\`"),
        ("(copy (src --x) (dst /x))", "reads as a flag"),
        ("(copy (src a) (dst /x) (exclude sub/x))", "`/`"),
        ("(copy (src a) (dst /x) (exclude !x))", "a leading `!`"),
        ("(user (name \"a'b\"))", "a quote"),
        ("(workdir \"\")", "(workdir …) is empty"),
        ("(env A \"x\\ny\")", "the value contains a line break"),
        ("(run (shell \"dir C:\\\\\"))", "the command ends with `\\`"),
        (
            "(run (shell \"cat > f <<EOF\\nhi\\nEOF\"))",
            "here-document `<<EOF`",
        ),
        ("(run (shell \"  # nothing\\n\"))", "the command is empty"),
        (
            "(run (cache (c (target \"/a b\"))) (shell x))",
            "the cache mount `c` has `/a b`",
        ),
        // Shown as written, not with Rust's escapes.
        (
            "(run (cache (c (target \"C:\\\\c\"))) (shell x))",
            "the cache mount `c` has `C:\\c`",
        ),
        (
            "(run (secrets (s (target /s) (buildkit_options ((mode \"0,4\"))))) (shell x))",
            "the secret mount `s` has `0,4`",
        ),
    ];
    for (op, needle) in cases {
        let text = format!("((from alpine)\n {op})");
        assert_refused(&refusal(&text, BUILDKIT), "2:2", needle);
    }
    // Here-strings and shifts are no here-documents.
    convert(
        "((from alpine) (run (shell \"cat <<< hi; echo $((1 << 2))\")))",
        PLAIN,
    );
}

#[test]
fn stage_names_docker_would_not_take_are_refused() {
    let text = "((build 1st ((from alpine)))\n (from alpine))";
    assert_refused(
        &refusal(text, PLAIN),
        "1:2",
        "build stage `1st` cannot be a Dockerfile stage name",
    );
    // Stage names are global in a Dockerfile, and compared ignoring case.
    let text = "((build a ((build Dev ((from alpine))) (from alpine)))\n (build dev ((from alpine)))\n (from alpine))";
    assert_refused(
        &refusal(text, PLAIN),
        "2:2",
        "build stage `dev` has the name of the build stage at 1:12",
    );
    // A base named like an earlier stage would start from that stage.
    let text = "((build tools ((from alpine)))\n (from tools))";
    assert_refused(
        &refusal(text, PLAIN),
        "2:8",
        "(from …) base `tools` has the name of the build stage at 1:2",
    );
}

// ---- --escape windows -------------------------------------------------------------------

#[test]
fn windows_escape_is_a_backtick_in_env_values_continuations_and_paths() {
    let text = r#"((from mcr.microsoft.com/windows/nanoserver:ltsc2022)
      (env PS "a`b \"c\" $d C:\\e\\")
      (workdir "C:\\work")
      (run (shell "powershell -Command `
                   Write-Host hi
                   dir C:\\"))
      (copy (src "a\\b") (dst "C:\\x\\")))"#;
    // A line's own trailing backtick (PowerShell's continuation) gives way to the
    // Dockerfile's; `\` is an ordinary character, even at the end of a line.
    let expected = "#escape=`
FROM mcr.microsoft.com/windows/nanoserver:ltsc2022
ENV PS=\"a``b `\"c`\" `$d C:\\e\\\"
WORKDIR C:\\work
RUN powershell -Command  `
    Write-Host hi `
    dir C:\\
COPY a\\b C:\\x\\
";
    assert_eq!(convert(text, WINDOWS), expected);
    assert_eq!(
        convert(text, WINDOWS_BUILDKIT),
        format!("{BUILDKIT_SYNTAX}\n{expected}")
    );
}

#[test]
fn windows_stages_start_as_container_administrator_and_copies_get_no_chown() {
    let text = r#"((build b ((from base) (user (name app)) (copy (src a) (dst C:/a))))
      (from base)
      (copy (src a) (dst C:/a))
      (user (name app))
      (run (network host)
           (secrets (s (target "C:\\s")))
           (cache (c (target "C:\\c") (buildkit_options ((sharing locked)))))
           (shell x))
      (copy (from (build b)) (src C:/a) (dst C:/b)))"#;
    // Mounts have no uid (Windows accounts have none), (network host) is dropped (Windows
    // containers have no host network), and no copy gets --chown.
    let expected = format!(
        "{BUILDKIT_SYNTAX}\n{WINDOWS_ESCAPE_DIRECTIVE}
FROM base as b
USER app
COPY a C:/a

FROM base
COPY a C:/a
USER app
RUN --mount=type=secret,id=s,target=C:\\s --mount=type=cache,id=c,target=C:\\c,sharing=locked x
COPY --from=b C:/a C:/b
"
    );
    assert_eq!(convert(text, WINDOWS_BUILDKIT), expected);
    // Without BuildKit the mounts are left out, as in Unix mode.
    assert!(convert(text, WINDOWS).contains("\nUSER app\nRUN x\n"));
}

#[test]
fn windows_refusals_name_the_backtick_and_unix_users() {
    let cases = [
        (
            "(workdir \"C:\\\\a`b\")",
            "contains a backtick, Docker's escape character",
        ),
        ("(copy (src a) (dst \"C:\\\\x`\"))", "contains a backtick"),
        (
            "(run (shell \"Write-Host a `\"))",
            "the command ends with a backtick",
        ),
        (
            "(copy (src a) (dst /x) (exclude \"a\\\\b\"))",
            "a path separator on Windows",
        ),
        (
            "(user (uid 1) (gid 2))",
            "(user (uid 1) (gid 2)) has no Windows equivalent",
        ),
        (
            "(run (cache (c (target \"C:\\\\c`\"))) (shell x))",
            "the cache mount `c` has `C:\\c``",
        ),
    ];
    for (op, needle) in cases {
        let text = format!("((from base)\n {op})");
        assert_refused(&refusal(&text, WINDOWS_BUILDKIT), "2:2", needle);
    }
    let err = refusal("((from base)\n (user (uid 0) (gid 0)))", WINDOWS);
    assert!(
        err.contains("(user (name ContainerAdministrator))") && err.contains("--escape unix"),
        "{err}"
    );
}

#[test]
fn unix_refusals_of_windows_paths_point_at_escape_windows() {
    for op in [
        "(run (shell \"dir C:\\\\\"))",
        "(workdir \"C:\\\\src\")",
        "(run (cache (c (target \"C:\\\\c\"))) (shell x))",
    ] {
        let text = format!("((from base)\n {op})");
        let err = refusal(&text, BUILDKIT);
        assert!(err.contains("--escape windows"), "{err}");
        convert(&text, WINDOWS_BUILDKIT);
    }
}
