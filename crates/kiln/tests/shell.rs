//! End-to-end tests of `kiln shell` (driven by commands on stdin, as when stdin is not a
//! terminal), `kiln names` and `(from layer:NAME)`, on the busybox base.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Builds the busybox base alone; returns its id.
fn busybox_base(store: &Path, dir: &Path) -> String {
    let spec = format!("((from file:{}))\n", busybox_tar().display());
    build(store, dir, &spec, &[]).ok().got()
}

fn names_json(store: &Path, dir: &Path) -> serde_json::Value {
    let run = kiln(store, dir, &["names", "--json"]).ok();
    serde_json::from_str(&run.stdout).expect("names --json is JSON")
}

#[test]
fn shell_save_gives_a_named_layer_that_specs_build_from_and_export_reads() {
    let dir = test_dir("shell-save");
    let store = dir.join("store");
    let base = busybox_base(&store, &dir);
    let n = nonce();
    let input = format!("echo hi {n} > /captured\necho in-the-shell\nexit 0\n");
    let shell = kiln_stdin(
        &store,
        &dir,
        &["shell", &base[..12], "--save", "tools", "--json"],
        &input,
    )
    .ok();
    assert!(shell.stderr.contains("in-the-shell"), "{}", shell.stderr);
    let summary: serde_json::Value = serde_json::from_str(&shell.stdout).expect("JSON");
    assert_eq!(summary["saved"], true, "{}", shell.stdout);
    let id = summary["id"].as_str().expect("id").to_string();
    let names = names_json(&store, &dir);
    assert_eq!(names[0]["name"], "tools");
    assert_eq!(names[0]["id"], id.as_str());
    let ls = kiln(&store, &dir, &["ls", "--json"]).ok();
    let layers: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    let captured = layers
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meta"]["id"] == id.as_str())
        .expect("captured layer listed");
    assert_eq!(captured["meta"]["parent"], base.as_str());
    assert_eq!(
        captured["meta"]["description"],
        "captured: tools (kiln shell)"
    );
    // A spec builds from it by name, and its steps chain from its id.
    let spec = "((from layer:tools)\n (run (shell \"cat /captured > /copy\")))\n";
    let built = build(&store, &dir, spec, &[]).ok();
    assert!(built.stdout.contains(&id), "{}", built.stdout);
    let tar = export_tar(&store, &dir, &built.got());
    let expected = format!("hi {n}\n");
    assert_eq!(tar_read(&tar, "copy").as_deref(), Some(expected.as_bytes()));
    // `kiln export NAME` reads the captured layer itself.
    let by_name = dir.join("by-name.tar");
    kiln(
        &store,
        &dir,
        &["export", "tools", "-o", by_name.to_str().unwrap()],
    )
    .ok();
    assert_eq!(
        tar_read(&by_name, "captured").as_deref(),
        Some(expected.as_bytes())
    );
    assert!(tar_read(&by_name, "copy").is_none());
    // The name keeps the layer through a prune to nothing.
    kiln(&store, &dir, &["prune", "--keep-bytes", "0"]).ok();
    let spec_by_id = format!("((from layer:{id})\n (run (shell \"cat /captured\")))\n");
    build(&store, &dir, &spec_by_id, &[]).ok();
}

#[test]
fn a_failing_shell_saves_nothing_and_asks_nothing_without_a_terminal() {
    let dir = test_dir("shell-fail");
    let store = dir.join("store");
    let base = busybox_base(&store, &dir);
    let shell = kiln_stdin(
        &store,
        &dir,
        &["shell", &base, "--save", "broken"],
        "echo partial > /partial\nexit 3\n",
    );
    assert_eq!(shell.code, 3, "{}\n{}", shell.stdout, shell.stderr);
    assert!(shell.stderr.contains("nothing saved"), "{}", shell.stderr);
    assert!(!shell.stderr.contains("save anyway"), "{}", shell.stderr);
    assert_eq!(names_json(&store, &dir), serde_json::json!([]));
    let ls = kiln(&store, &dir, &["ls", "--json"]).ok();
    let layers: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    assert_eq!(layers.as_array().unwrap().len(), 1, "{}", ls.stdout);
    let tmp = std::fs::read_dir(store.join("result-tmp")).unwrap().count();
    assert_eq!(tmp, 0, "the temporary layer was left behind");
}

#[test]
fn an_unknown_layer_name_in_from_fails_at_its_line_and_column() {
    let dir = test_dir("shell-unknown");
    let store = dir.join("store");
    let spec = "; a comment\n(\n  (from layer:nobody-saved-this)\n (run (shell \"true\")))\n";
    let run = build(&store, &dir, spec, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stderr.contains("build.spec:3:9") && run.stderr.contains("nobody-saved-this"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("kiln names"), "{}", run.stderr);
}

#[test]
fn ctrl_c_during_the_shell_saves_nothing() {
    use std::io::{BufRead, BufReader};
    let dir = test_dir("shell-int");
    let store = dir.join("store");
    let base = busybox_base(&store, &dir);
    let mut child = Command::new(KILN)
        .arg("--store")
        .arg(&store)
        .args(["shell", &base, "--save", "interrupted"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running kiln");
    let mut stdin = child.stdin.take().expect("stdin");
    // The shell has written a file and is waiting for more input when kiln is signalled.
    stdin
        .write_all(b"echo x > /written; echo ready\n")
        .expect("writing stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.any(|l| l.is_ok_and(|l| l == "ready"));
    assert!(ready, "the shell never said ready");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("kill -INT");
    let status = child.wait().expect("wait");
    drop(stdin);
    assert_eq!(status.code(), Some(130));
    assert_eq!(names_json(&store, &dir), serde_json::json!([]));
    let ls = kiln(&store, &dir, &["ls", "--json"]).ok();
    let layers: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    assert_eq!(layers.as_array().unwrap().len(), 1, "{}", ls.stdout);
    assert_eq!(
        std::fs::read_dir(store.join("result-tmp")).unwrap().count(),
        0
    );
}
