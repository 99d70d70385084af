//! End-to-end builds on a real Debian bookworm base bootstrapped from Debian's mirror
//! (once per test run: every test here shares one store).

mod common;

use common::*;
use std::path::{Path, PathBuf};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

#[test]
fn multi_stage_example_builds_with_every_file_owner_and_mode() {
    let store = shared_store();
    let ex = examples().join("multi-stage");
    let run = kiln(&store, &ex, &["build", "-f", "app.spec", "."]).ok();
    let dir = test_dir("multistage");
    let tar = export_tar(&store, &dir, &run.got());
    let entries = tar_entries(&tar);
    let find = |p: &str| find_entry(&entries, p);

    // apt install happened (with the network) and left no .deb in the layer (cache mount).
    assert!(entries.iter().any(|e| e.0 == "usr/bin/jq"));
    assert!(!entries
        .iter()
        .any(|e| e.0.starts_with("var/cache/apt/archives/") && e.0.ends_with(".deb")));
    // The user and its home.
    let passwd = String::from_utf8(tar_read(&tar, "etc/passwd").unwrap()).unwrap();
    assert!(passwd.contains("app:x:1001:1001::/srv/app:"), "{passwd}");
    // copy from the tool stage: into bin/ relative to the workdir, owned by the user, modes kept.
    let greet = find("srv/app/bin/greet");
    assert_eq!((greet.1, greet.2, greet.3), (1001, 1001, 0o755));
    let info = find("srv/app/bin/BUILD-INFO");
    assert_eq!((info.1, info.2, info.3), (1001, 1001, 0o644));
    assert!(
        String::from_utf8(tar_read(&tar, "srv/app/bin/BUILD-INFO").unwrap())
            .unwrap()
            .contains("Debian GNU/Linux 12")
    );
    assert!(
        entries
            .iter()
            .all(|e| !e.0.starts_with("srv/app/bin/greet.sh")),
        "only the named sources are copied"
    );
    // copy from the site stage: a directory to `www`, with the stage's own excludes and this copy's.
    assert_eq!(find("srv/app/www/index.html").1, 1001);
    assert!(entries.iter().any(|e| e.0 == "srv/app/www/style.css"));
    assert!(
        !entries.iter().any(|e| e.0.contains("drafts")),
        "excluded in the site stage"
    );
    assert!(
        !entries.iter().any(|e| e.0 == "srv/app/www/MANIFEST"),
        "excluded by the final copy"
    );
    // The last step ran as the user in the workdir, with the env.
    let greeting = find("srv/app/greeting.txt");
    assert_eq!((greeting.1, greeting.2), (1001, 1001));
    assert_eq!(
        tar_read(&tar, "srv/app/greeting.txt").unwrap(),
        b"hello from /srv/app\n"
    );
    let json = String::from_utf8(tar_read(&tar, "srv/app/greeting.json").unwrap()).unwrap();
    assert!(
        json.contains("\"greeting\": \"hello from /srv/app\""),
        "{json}"
    );

    // A second build is all cache hits.
    let again = kiln(&store, &ex, &["build", "-f", "app.spec", "."]).ok();
    assert_eq!(again.count("---> saved as"), 0, "{}", again.stdout);
    assert_eq!(again.got(), run.got());
}

#[test]
fn memcached_example_builds() {
    let store = shared_store();
    let ex = examples().join("memcached");
    let run = kiln(&store, &ex, &["build", "-f", "memcached.spec", "."]).ok();
    assert!(run.stdout.contains("memcached 1.6"), "{}", run.stdout);
    let dir = test_dir("memcached");
    let tar = export_tar(&store, &dir, &run.got());
    assert!(tar_entries(&tar).iter().any(|e| e.0 == "usr/bin/memcached"));
}

#[test]
fn apt_without_host_network_cannot_reach_the_mirror() {
    let store = shared_store();
    let dir = test_dir("nonet");
    let spec = format!(
        "((from debian:bookworm)\n (run (shell \"echo {}; apt-get update --error-on=any\")))\n",
        nonce()
    );
    let run = build(&store, &dir, &spec, &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains("deb.debian.org") || run.stderr.contains("deb.debian.org"),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn default_shell_is_bash_and_env_comes_from_the_base() {
    let store = shared_store();
    let dir = test_dir("shell");
    let spec = format!("((from debian:bookworm)\n (run (shell \"echo {} $BASH_VERSION; echo PATH=$PATH; [[ -n $BASH ]]\")))\n", nonce());
    let run = build(&store, &dir, &spec, &[]).ok();
    assert!(run.stdout.contains(" 5.2"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
        "{}",
        run.stdout
    );
}

#[test]
fn an_unreachable_mirror_is_a_clear_error_and_stores_nothing() {
    let dir = test_dir("badmirror");
    let store = dir.join("store");
    let spec = "((from debian:bookworm)\n (bootstrap (mirror http://127.0.0.1:9/debian)))\n";
    let run = build(&store, &dir, spec, &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("debian:bookworm") && run.stderr.contains("127.0.0.1:9"),
        "{}",
        run.stderr
    );
    let ls = kiln(&store, &dir, &["ls", "--json"]).ok();
    assert_eq!(ls.stdout.trim(), "[]");
}
