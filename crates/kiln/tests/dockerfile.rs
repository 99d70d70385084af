//! `kiln dockerfile` through the real binary: the text on stdout (or in `-o FILE`), exit
//! codes, and refusals reported as FILE:LINE:COL.

mod common;

use common::*;
use std::fs;
use std::path::Path;

fn examples() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

fn obuilder_specs() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../kiln-spec/tests/obuilder")
}

#[test]
fn dockerfile_prints_the_expected_text_and_refuses_kiln_forms_at_file_line_col() {
    let dir = test_dir("dockerfile");
    let ex = examples();
    let spec = ex.join("multi-stage/app.spec");
    let spec = spec.to_str().expect("utf-8 path");

    let out = kiln(&dir, &dir, &["dockerfile", "--buildkit", "-f", spec]).ok();
    let want = fs::read_to_string(ex.join("multi-stage/app.buildkit.dockerfile")).expect("fixture");
    assert_eq!(out.stdout, want);
    assert_eq!(out.stderr, "");

    let busybox = ex.join("busybox/busybox.spec");
    let out = kiln(
        &dir,
        &dir,
        &[
            "dockerfile",
            "-f",
            busybox.to_str().expect("utf-8"),
            "-o",
            "Dockerfile",
        ],
    )
    .ok();
    assert_eq!(out.stdout, "");
    let want = fs::read_to_string(ex.join("busybox/busybox.dockerfile")).expect("fixture");
    assert_eq!(
        fs::read_to_string(dir.join("Dockerfile")).expect("-o file"),
        want
    );

    // A kiln form: exit 1, FILE:LINE:COL naming it, nothing printed, no -o file written.
    fs::write(
        dir.join("bad.spec"),
        "((from debian:bookworm)\n (bootstrap (include curl))\n (run (shell true)))\n",
    )
    .expect("writing spec");
    let refused = kiln(
        &dir,
        &dir,
        &["dockerfile", "-f", "bad.spec", "-o", "bad.Dockerfile"],
    );
    assert_eq!(refused.code, 1, "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("bad.spec:2:2: (bootstrap …) is a kiln extension"),
        "{}",
        refused.stderr
    );
    assert_eq!(refused.stdout, "");
    assert!(!dir.join("bad.Dockerfile").exists());

    // Without --buildkit an exclude is refused at the copy, in the file it is in.
    let refused = kiln(&dir, &dir, &["dockerfile", "-f", spec]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("app.spec:4:10: (copy …) has (exclude …)"),
        "{}",
        refused.stderr
    );
}

#[test]
fn dockerfile_escape_windows_converts_what_unix_escapes_refuse() {
    let dir = test_dir("dockerfile-windows");
    let spec = obuilder_specs().join("windows-style.spec");
    let spec = spec.to_str().expect("utf-8 path");

    // `dir C:\` ends a command with Docker's Unix escape: refused, pointing at --escape.
    let refused = kiln(&dir, &dir, &["dockerfile", "-f", spec]);
    assert_eq!(refused.code, 1);
    assert!(
        refused
            .stderr
            .contains("windows-style.spec:6:2: (run …): the command ends with `\\`")
            && refused.stderr.contains("--escape windows"),
        "{}",
        refused.stderr
    );

    let out = kiln(
        &dir,
        &dir,
        &["dockerfile", "--escape", "windows", "-f", spec],
    )
    .ok();
    let want = fs::read_to_string(obuilder_specs().join("windows-style.windows.dockerfile"))
        .expect("fixture");
    assert!(out.stdout.starts_with("#escape=`\n"), "{}", out.stdout);
    assert_eq!(out.stdout, want);

    let bad = kiln(&dir, &dir, &["dockerfile", "--escape", "dos", "-f", spec]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    assert!(bad.stderr.contains("windows"), "{}", bad.stderr);
}
