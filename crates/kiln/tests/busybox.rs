//! End-to-end tests of `kiln build` and the store commands on a tiny busybox base:
//! real namespaces, overlayfs and SQLite, no network needed.

mod common;

use common::*;
use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

fn base() -> String {
    format!("(from file:{})", busybox_tar().display())
}

fn layer_count(store: &std::path::Path, dir: &std::path::Path) -> usize {
    let run = kiln(store, dir, &["ls", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("ls --json is JSON");
    v.as_array().expect("array").len()
}

#[test]
fn rebuild_hits_cache_and_an_edit_reruns_only_the_last_step() {
    let dir = test_dir("rebuild");
    let store = dir.join("store");
    let n = nonce();
    let spec = |last: &str| {
        format!(
            "({base}\n (run (shell \"echo {n} > /one\"))\n (env GREETING hi)\n (workdir /work)\n (run (shell \"echo $GREETING > two\"))\n (run (shell \"{last}\")))\n",
            base = base()
        )
    };
    let first = build(&store, &dir, &spec("echo three > three"), &[]).ok();
    assert_eq!(first.count("---> saved as"), 4, "{}", first.stdout);
    let again = build(&store, &dir, &spec("echo three > three"), &[]).ok();
    assert_eq!(again.count("---> saved as"), 0, "{}", again.stdout);
    assert_eq!(again.count("from cache"), 4, "{}", again.stdout);
    assert_eq!(first.got(), again.got());
    let edited = build(&store, &dir, &spec("echo four > four"), &[]).ok();
    assert_eq!(edited.count("---> saved as"), 1, "{}", edited.stdout);
    assert_eq!(edited.count("from cache"), 3, "{}", edited.stdout);
    assert_ne!(edited.got(), first.got());
    // The step's workdir and env reached the command.
    let tar = export_tar(&store, &dir, &edited.got());
    assert_eq!(tar_read(&tar, "work/two").as_deref(), Some(&b"hi\n"[..]));
    assert_eq!(tar_read(&tar, "work/four").as_deref(), Some(&b"four\n"[..]));
    assert!(tar_read(&tar, "work/three").is_none());
}

#[test]
fn a_failing_step_stores_nothing_and_the_fix_reuses_earlier_steps() {
    let dir = test_dir("failing");
    let store = dir.join("store");
    let n = nonce();
    let spec = |cmd: &str| {
        format!("({}\n (run (shell \"echo {n} > /a\"))\n (run (shell \"echo b > /b\"))\n (run (shell \"{cmd}\")))\n", base())
    };
    let failed = build(
        &store,
        &dir,
        &spec("echo about to fail; echo detail >&2; exit 3"),
        &[],
    );
    assert_eq!(failed.code, 1, "{}\n{}", failed.stdout, failed.stderr);
    assert!(failed.stderr.contains("exit status 3"), "{}", failed.stderr);
    assert!(
        failed.stderr.contains("about to fail") && failed.stderr.contains("detail"),
        "{}",
        failed.stderr
    );
    assert!(failed.stderr.contains("build.spec"), "{}", failed.stderr);
    assert_eq!(
        layer_count(&store, &dir),
        3,
        "base + two good steps, nothing for the failed one"
    );
    assert_eq!(
        fs::read_dir(store.join("result-tmp"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    let fixed = build(&store, &dir, &spec("echo fixed > /c"), &[]).ok();
    assert_eq!(fixed.count("from cache"), 3, "{}", fixed.stdout);
    assert_eq!(fixed.count("---> saved as"), 1, "{}", fixed.stdout);
}

#[test]
fn secrets_are_readable_in_their_step_and_nowhere_else() {
    let dir = test_dir("secret");
    let store = dir.join("store");
    let value = format!("s3cr3t-{}", nonce());
    fs::write(dir.join("token"), &value).unwrap();
    let spec = format!(
        "({}\n (run (secrets (token (target /run/secrets/token)))\n      (shell \"sha256sum /run/secrets/token | cut -d' ' -f1 > /token.sha; cat /run/secrets/token; echo\"))\n (run (shell \"test ! -e /run/secrets/token && echo gone\")))\n",
        base()
    );
    let missing = build(&store, &dir, &spec, &[]);
    assert_ne!(missing.code, 0);
    assert!(
        missing.stderr.contains("secret `token`") && missing.stderr.contains("--secret token:FILE"),
        "{}",
        missing.stderr
    );

    let run = build(&store, &dir, &spec, &["--secret", "token:token"]).ok();
    assert!(
        !run.stdout.contains(&value),
        "secret printed on the terminal:\n{}",
        run.stdout
    );
    assert!(run.stdout.contains("***"), "{}", run.stdout);
    assert!(run.stdout.contains("gone"));
    let tar = export_tar(&store, &dir, &run.got());
    let sha = tar_read(&tar, "token.sha").expect("token.sha in the image");
    let expected = Command::new("sha256sum")
        .arg(dir.join("token"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&sha).trim(),
        String::from_utf8_lossy(&expected.stdout)
            .split(' ')
            .next()
            .unwrap()
    );
    assert!(
        tar_entries(&tar)
            .iter()
            .all(|e| !e.0.starts_with("run/secrets")),
        "secret mountpoint left in the layer"
    );
    assert!(
        !fs::read(&tar)
            .unwrap()
            .windows(value.len())
            .any(|w| w == value.as_bytes()),
        "secret in the export"
    );
    assert_eq!(
        tree_contains(&store, value.as_bytes()),
        None,
        "secret stored in a layer or log"
    );
}

#[test]
fn runs_are_isolated_from_the_network_unless_host() {
    let dir = test_dir("network");
    let store = dir.join("store");
    let n = nonce();
    let spec = format!(
        "({}\n (run (shell \"echo {n}; ls /sys/class/net | tr '\\\\n' ' ' > /isolated\"))\n (run (network host) (shell \"ls /sys/class/net | wc -l > /host\")))\n",
        base()
    );
    let run = build(&store, &dir, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &run.got());
    assert_eq!(
        String::from_utf8(tar_read(&tar, "isolated").unwrap())
            .unwrap()
            .trim(),
        "lo"
    );
    let host_ifaces = fs::read_dir("/sys/class/net").unwrap().count();
    assert!(
        host_ifaces > 1,
        "this test needs a host with a network interface besides lo"
    );
    assert_eq!(
        String::from_utf8(tar_read(&tar, "host").unwrap())
            .unwrap()
            .trim(),
        host_ifaces.to_string()
    );
}

#[test]
fn cache_mounts_persist_across_builds_and_stay_out_of_layers() {
    let dir = test_dir("cachemount");
    let store = dir.join("store");
    let spec = |n: &str| {
        format!("({}\n (run (cache (counter (target /var/cache/counter))) (shell \"echo {n} >> /var/cache/counter/log; wc -l < /var/cache/counter/log > /seen\")))\n", base())
    };
    build(&store, &dir, &spec(&nonce()), &[]).ok();
    let second = build(&store, &dir, &spec(&nonce()), &[]).ok();
    let tar = export_tar(&store, &dir, &second.got());
    assert_eq!(
        String::from_utf8(tar_read(&tar, "seen").unwrap())
            .unwrap()
            .trim(),
        "2"
    );
    assert!(
        tar_entries(&tar)
            .iter()
            .all(|e| !e.0.starts_with("var/cache/counter")),
        "cache mountpoint leaked into the layer"
    );
}

#[test]
fn copy_honours_workdir_user_exclude_and_modes() {
    let dir = test_dir("copy");
    let store = dir.join("store");
    fs::create_dir_all(dir.join("app/.git")).unwrap();
    fs::write(dir.join("app/run.sh"), format!("echo {}\n", nonce())).unwrap();
    fs::set_permissions(
        dir.join("app/run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o750),
    )
    .unwrap();
    fs::write(dir.join("app/.git/HEAD"), "ref").unwrap();
    let spec = format!(
        "({}\n (workdir /srv)\n (user (name builder))\n (copy (src app) (dst app) (exclude .git))\n (copy (src app/run.sh) (dst app/tools/))\n (run (shell \"id -u > /tmp/x; ls -ln app > listing; cp /tmp/x uid\")))\n",
        base()
    );
    let run = build(&store, &dir, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &run.got());
    let entries = tar_entries(&tar);
    let find = |p: &str| find_entry(&entries, p);
    // One directory to a dst without `/` is copied as dst; a file goes into dst/.
    assert_eq!(find("srv/app/run.sh").1, 1000);
    assert_eq!(find("srv/app/run.sh").3, 0o750);
    assert_eq!(find("srv/app/tools/run.sh").3, 0o750);
    assert_eq!(find("srv/app").1, 1000, "created parent owned by the user");
    assert!(entries.iter().all(|e| !e.0.contains(".git")));
    assert_eq!(
        String::from_utf8(tar_read(&tar, "srv/uid").unwrap())
            .unwrap()
            .trim(),
        "1000"
    );
}

#[test]
fn copy_from_a_build_stage_with_exclude() {
    let dir = test_dir("stagecopy");
    let store = dir.join("store");
    let n = nonce();
    let spec = format!(
        "((build dev\n        ({base}\n         (workdir /out)\n         (run (shell \"echo {n} > app; mkdir -p lib/.cache; echo x > lib/a; echo y > lib/.cache/b; chmod 700 app\"))))\n {base}\n (user (uid 1000) (gid 1000))\n (copy (from (build dev)) (src /out/app /out/lib) (dst /opt/) (exclude .cache)))\n",
        base = base()
    );
    let run = build(&store, &dir, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &run.got());
    let entries = tar_entries(&tar);
    let find = |p: &str| find_entry(&entries, p);
    assert_eq!((find("opt/app").1, find("opt/app").3), (1000, 0o700));
    assert_eq!(
        tar_read(&tar, "opt/app").unwrap(),
        format!("{n}\n").as_bytes()
    );
    assert_eq!(
        find("opt/lib/a").1,
        1000,
        "into dst/ a directory source keeps its name"
    );
    assert!(entries.iter().all(|e| e.0 != "opt/a"));
    assert!(entries.iter().all(|e| !e.0.contains(".cache")));
    assert!(
        entries.iter().all(|e| !e.0.starts_with("out")),
        "the stage's own tree stays in the stage"
    );
}

/// The target of the symlink at `member` in `tar`, if it is one.
fn tar_symlink(tar: &std::path::Path, member: &str) -> Option<String> {
    let mut archive = tar::Archive::new(fs::File::open(tar).expect("open tar"));
    let entries = archive.entries().expect("tar entries");
    entries.map(|e| e.expect("tar entry")).find_map(|e| {
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let is_link = e.header().entry_type() == tar::EntryType::Symlink;
        (path.trim_start_matches("./") == member && is_link)
            .then(|| e.link_name().ok().flatten())
            .flatten()
            .map(|l| l.to_string_lossy().into_owned())
    })
}

#[test]
fn copy_places_sources_as_obuilder_does() {
    let dir = test_dir("copyplace");
    let store = dir.join("store");
    let ctx = dir.join("ctx");
    fs::create_dir_all(ctx.join("dir/sub")).unwrap();
    let n = nonce();
    fs::write(ctx.join("file"), &n).unwrap();
    fs::write(ctx.join("dir/sub/x"), "x").unwrap();
    std::os::unix::fs::symlink("file", ctx.join("link")).unwrap();
    let spec = format!(
        "((build stage\n  ({base}\n   (run (shell \"mkdir -p /out/tree/deep && echo y > /out/tree/deep/y && echo {n} > /out/note\"))))\n {base}\n (user (uid 1000) (gid 1000))\n (copy (src file dir link) (dst /t/))\n (copy (src .) (dst /src/))\n (copy (src dir) (dst /d))\n (copy (from (build stage)) (src /out/tree /out/note) (dst /s/))\n (copy (from (build stage)) (src /out/tree) (dst /made/for/as)))\n",
        base = base()
    );
    let run = build(&store, &ctx, &spec, &[]).ok();
    let tar = export_tar(&store, &dir, &run.got());
    let entries = tar_entries(&tar);
    let find = |p: &str| find_entry(&entries, p);
    let has = |p: &str| entries.iter().any(|e| e.0 == p);
    // Into dst/: files, directories and symlinks alike keep their names.
    assert_eq!(tar_read(&tar, "t/file").unwrap(), n.as_bytes());
    assert_eq!(find("t/dir").4, tar::EntryType::Directory);
    assert_eq!(tar_read(&tar, "t/dir/sub/x").unwrap(), b"x");
    assert_eq!(tar_symlink(&tar, "t/link").as_deref(), Some("file"));
    assert!(
        !has("t/sub"),
        "a directory's contents went to dst (Docker's rule)"
    );
    assert_eq!((find("t").1, find("t").2, find("t").3), (1000, 1000, 0o755));
    assert_eq!(find("t/dir/sub/x").1, 1000);
    // `.` fills dst with the context's contents.
    for member in ["src/file", "src/dir/sub/x", "src/link", "src/build.spec"] {
        assert!(has(member), "{member} missing");
    }
    assert!(!has("src/ctx"));
    // One directory to a dst without `/` is copied as dst.
    assert_eq!(tar_read(&tar, "d/sub/x").unwrap(), b"x");
    assert!(!has("d/dir"));
    // From a build stage: the same rule; missing parents are made for the user.
    assert_eq!(tar_read(&tar, "s/tree/deep/y").unwrap(), b"y\n");
    assert_eq!(
        tar_read(&tar, "s/note").unwrap(),
        format!("{n}\n").as_bytes()
    );
    assert!(!has("s/deep"));
    assert_eq!(tar_read(&tar, "made/for/as/deep/y").unwrap(), b"y\n");
    assert!(!has("made/for/as/tree"));
    for parent in ["made", "made/for"] {
        let e = find(parent);
        assert_eq!((e.1, e.2, e.3), (1000, 1000, 0o755), "{parent}");
    }
}

#[test]
fn copy_and_mount_targets_the_sandbox_cannot_take_fail_at_their_line_and_column() {
    let dir = test_dir("copyplace-bad");
    let store = dir.join("store");
    fs::write(dir.join("a"), "a").unwrap();
    fs::write(dir.join("b"), "b").unwrap();
    let spec = format!(
        "({}\n (workdir /srv)\n   (copy (src a b) (dst www)))\n",
        base()
    );
    let run = build(&store, &dir, &spec, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("build.spec:3:4: copy of 2 sources to `www`")
            && run.stderr.contains("`(dst www/)`"),
        "{}",
        run.stderr
    );
    let spec = format!(
        "({}\n (run (cache (c (target \"C:\\\\cache\"))) (shell \"true\")))\n",
        base()
    );
    let run = build(&store, &dir, &spec, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(r"build.spec:2:2: cache `c` has target `C:\cache`")
            && run.stderr.contains("absolute"),
        "{}",
        run.stderr
    );
}

#[test]
fn kill_9_at_random_moments_never_leaves_a_half_layer() {
    let dir = test_dir("kill9");
    let store = dir.join("store");
    let n = nonce();
    // Each step writes 200 files then a marker; a visible layer must have all of them.
    let steps: String = (0..6)
        .map(|i| format!(" (run (shell \"for f in $(seq 200); do echo {n}-{i}-$f > /s{i}-$f; done; echo step {i} done; touch /s{i}-complete\"))\n"))
        .collect();
    let spec = format!("({}\n{steps})\n", base());
    fs::write(dir.join("build.spec"), &spec).unwrap();
    let mut rng = u64::from_str_radix(&nonce(), 16).unwrap();
    for attempt in 0..20 {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let kill_after_lines = (rng % 14) as usize;
        let mut child = Command::new(KILN)
            .args([
                "--store",
                store.to_str().unwrap(),
                "build",
                "-f",
                "build.spec",
                ".",
            ])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for _ in 0..kill_after_lines {
            if lines.next().is_none() {
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        check_layers_complete(&store, &dir, attempt);
    }
    let done = build(&store, &dir, &spec, &[]).ok();
    let healthy = kiln(&store, &dir, &["healthcheck"]);
    assert_eq!(healthy.code, 0, "{}", healthy.stdout);
    let tar = export_tar(&store, &dir, &done.got());
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    for i in 0..6 {
        assert!(names.contains(&format!("s{i}-complete")));
        assert!(names.contains(&format!("s{i}-200")));
    }
}

/// Every committed layer's upper dir holds a whole step: all 200 files and the marker.
fn check_layers_complete(store: &std::path::Path, dir: &std::path::Path, attempt: usize) {
    let ls = kiln(store, dir, &["ls", "--json"]).ok();
    let layers: serde_json::Value = serde_json::from_str(&ls.stdout).unwrap();
    for layer in layers.as_array().unwrap() {
        let id = layer["meta"]["id"].as_str().unwrap();
        if layer["meta"]["parent"].is_null() {
            continue;
        }
        let rootfs = store.join("result").join(id).join("rootfs");
        let files: Vec<String> = fs::read_dir(&rootfs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let complete: Vec<&String> = files.iter().filter(|f| f.ends_with("-complete")).collect();
        assert_eq!(
            complete.len(),
            1,
            "attempt {attempt}: layer {id} has no single marker: {files:?}"
        );
        assert_eq!(
            files.len(),
            201,
            "attempt {attempt}: layer {id} is partial ({} entries)",
            files.len()
        );
    }
}

#[test]
fn concurrent_builds_of_one_spec_run_each_step_once() {
    let dir = test_dir("concurrent");
    let store = dir.join("store");
    let n = nonce();
    let spec = format!(
        "({}\n (run (shell \"echo ran-one-{n}; for i in $(seq 300); do echo $i > /one-$i; done\"))\n (run (shell \"echo ran-two-{n}; for i in $(seq 300); do echo $i > /two-$i; done\")))\n",
        base()
    );
    // Build the base first so both builds race on the run steps.
    build(&store, &dir, &format!("({})\n", base()), &[]).ok();
    fs::write(dir.join("build.spec"), &spec).unwrap();
    let spawn = || {
        Command::new(KILN)
            .args([
                "--store",
                store.to_str().unwrap(),
                "build",
                "-f",
                "build.spec",
                ".",
            ])
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let (a, b) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    assert_eq!(
        a.matches("---> saved as").count() + b.matches("---> saved as").count(),
        2,
        "each step built once:\n{a}\n{b}"
    );
    assert_eq!(a.lines().last(), b.lines().last(), "same final id");
    // The waiting build replays the step's log.
    let printed = |out: &str| out.lines().filter(|l| *l == format!("ran-one-{n}")).count();
    assert_eq!(
        printed(&a) + printed(&b),
        2,
        "one build ran the step, the other replayed its log"
    );
}

#[test]
fn deep_chains_are_flattened_and_still_build() {
    let dir = test_dir("deep");
    let store = dir.join("store");
    let n = nonce();
    let steps: String = (0..110)
        .map(|i| format!(" (run (shell \"echo {n} > /f{i}\"))\n"))
        .collect();
    let run = build(
        &store,
        &dir,
        &format!("({}\n (run (shell \"rm /bin/vi\"))\n{steps})\n", base()),
        &[],
    )
    .ok();
    let tar = export_tar(&store, &dir, &run.got());
    let names: Vec<String> = tar_entries(&tar).into_iter().map(|e| e.0).collect();
    assert!((0..110).all(|i| names.contains(&format!("f{i}"))));
    assert!(
        !names.contains(&"bin/vi".to_string()),
        "a deletion below the flattened layer must stay deleted"
    );
    let rebuilt = build(
        &store,
        &dir,
        &format!("({}\n (run (shell \"rm /bin/vi\"))\n{steps})\n", base()),
        &[],
    )
    .ok();
    assert_eq!(rebuilt.count("---> saved as"), 0);
}

#[test]
fn ctrl_c_cancels_the_running_step_cleanly() {
    let dir = test_dir("sigint");
    let store = dir.join("store");
    let n = nonce();
    let spec = format!(
        "({}\n (run (shell \"echo {n} > /a\"))\n (run (shell \"echo started; sleep 600\")))\n",
        base()
    );
    fs::write(dir.join("build.spec"), &spec).unwrap();
    // A terminal's Ctrl-C signals the whole foreground process group; `kill -INT PID`
    // (or systemd's SIGTERM) signals kiln alone. Both must stop the step and exit 130.
    for whole_group in [true, false] {
        let mut cmd = Command::new(KILN);
        cmd.args([
            "--store",
            store.to_str().unwrap(),
            "build",
            "-f",
            "build.spec",
            ".",
        ])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            if line.unwrap() == "started" {
                break;
            }
        }
        let pid = child.id() as i32;
        let target = if whole_group { -pid } else { pid };
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(target),
            nix::sys::signal::Signal::SIGINT,
        )
        .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "group signal: {whole_group}");
        assert_eq!(
            layer_count(&store, &dir),
            2,
            "base + first step; nothing for the cancelled one"
        );
        assert_eq!(
            fs::read_dir(store.join("result-tmp"))
                .map(|d| d.count())
                .unwrap_or(0),
            0
        );
    }
}

#[test]
fn store_commands_list_delete_prune_and_clean() {
    let dir = test_dir("storecmds");
    let store = dir.join("store");
    let n = nonce();
    let a = build(
        &store,
        &dir,
        &format!(
            "({}\n (run (shell \"echo {n} > /a; head -c 300000 /dev/urandom > /big\")))\n",
            base()
        ),
        &[],
    )
    .ok();
    let b = build(
        &store,
        &dir,
        &format!("({}\n (run (shell \"echo {n} > /b\")))\n", base()),
        &[],
    )
    .ok();
    assert_eq!(layer_count(&store, &dir), 3);
    let ls = kiln(&store, &dir, &["ls"]).ok();
    assert!(
        ls.stdout.contains(&a.got()[..12]) && ls.stdout.contains("3 layers"),
        "{}",
        ls.stdout
    );
    // Prune to a size that fits the base and one small leaf: the LRU leaf (a) goes first.
    let json = kiln(&store, &dir, &["ls", "--json"]).ok();
    let layers: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let total: u64 = layers
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum();
    let pruned = kiln(
        &store,
        &dir,
        &["prune", "--keep-bytes", &(total - 1).to_string(), "--json"],
    )
    .ok();
    assert!(
        pruned.stdout.contains(&a.got()) && !pruned.stdout.contains(&b.got()),
        "{}",
        pruned.stdout
    );
    // Deleting the base deletes its descendants.
    let base_id = layers
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["meta"]["parent"].is_null())
        .unwrap()["meta"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deleted = kiln(&store, &dir, &["delete", &base_id[..10]]).ok();
    assert!(
        deleted.stdout.contains(&b.got()) && deleted.stdout.contains("2 layers deleted"),
        "{}",
        deleted.stdout
    );
    assert_eq!(layer_count(&store, &dir), 0);
    build(&store, &dir, &format!("({})\n", base()), &[]).ok();
    kiln(&store, &dir, &["clean"]).ok();
    assert_eq!(layer_count(&store, &dir), 0);
    assert_eq!(kiln(&store, &dir, &["healthcheck"]).code, 0);
    let bad = kiln(&store, &dir, &["delete", "zzzz"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("zzzz"), "{}", bad.stderr);
}

#[test]
fn spec_errors_name_file_line_and_column() {
    let dir = test_dir("specerr");
    let store = dir.join("store");
    let run = build(
        &store,
        &dir,
        &format!("({}\n (rnu (shell \"true\")))\n", base()),
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("build.spec:2:2") && run.stderr.contains("did you mean `run`"),
        "{}",
        run.stderr
    );
    assert!(
        !store.join("result").exists() || fs::read_dir(store.join("result")).unwrap().count() == 0
    );
}

#[test]
fn fmt_prints_canonical_layout() {
    let dir = test_dir("fmt");
    fs::write(
        dir.join("messy.spec"),
        "(  (from busybox)   (run (shell \"true\")) )",
    )
    .unwrap();
    let out = kiln(&dir, &dir, &["fmt", "messy.spec"]).ok();
    fs::write(dir.join("canon.spec"), &out.stdout).unwrap();
    assert_eq!(kiln(&dir, &dir, &["fmt", "--check", "canon.spec"]).code, 0);
    assert_eq!(kiln(&dir, &dir, &["fmt", "--check", "messy.spec"]).code, 1);
    // Comments between items stay, with the item they precede.
    fs::write(
        dir.join("commented.spec"),
        "; header\n((from busybox)\n   ; why\n (run (shell \"a;b\")))\n",
    )
    .unwrap();
    let kept = kiln(&dir, &dir, &["fmt", "commented.spec"]).ok();
    assert_eq!(
        kept.stdout,
        "; header\n((from busybox)\n ; why\n (run (shell \"a;b\")))\n"
    );
    // One inside a form stays where it is, and the output formats to itself.
    fs::write(
        dir.join("inside.spec"),
        "((from busybox)\n (run ; why\n  (shell \"a;b\")))\n",
    )
    .unwrap();
    let inside = kiln(&dir, &dir, &["fmt", "inside.spec"]).ok();
    assert_eq!(
        inside.stdout,
        "((from busybox)\n (run ; why\n      (shell \"a;b\")))\n"
    );
    fs::write(dir.join("inside.spec"), &inside.stdout).unwrap();
    assert_eq!(kiln(&dir, &dir, &["fmt", "--check", "inside.spec"]).code, 0);
    // A spec that does not read: FILE:LINE:COL, nothing printed.
    fs::write(
        dir.join("broken.spec"),
        "((from busybox)\n (run (shell x))\n",
    )
    .unwrap();
    let refused = kiln(&dir, &dir, &["fmt", "broken.spec"]);
    assert_eq!(refused.code, 1);
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert!(
        refused.stderr.contains("broken.spec:1:1: unclosed"),
        "{}",
        refused.stderr
    );
}

#[test]
fn export_as_directory_keeps_owners() {
    let dir = test_dir("exportdir");
    let store = dir.join("store");
    let run = build(
        &store,
        &dir,
        &format!(
            "({}\n (run (shell \"echo {} > /x; chown 1000:1000 /x\")))\n",
            base(),
            nonce()
        ),
        &[],
    )
    .ok();
    let out = dir.join("rootfs");
    kiln(
        &store,
        &dir,
        &[
            "export",
            &run.got(),
            "--format",
            "dir",
            "-o",
            out.to_str().unwrap(),
        ],
    )
    .ok();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(fs::metadata(out.join("x")).unwrap().uid(), 1000);
    assert!(out.join("bin/busybox").exists());
}

#[test]
fn check_reproducible_passes_twice_built_disks_and_names_the_file_that_differs() {
    let dir = test_dir("repro");
    let store = dir.join("store");
    let stable = format!(
        "({}\n (run (shell \"echo {} > /x && mkdir -p /srv/data && echo y > /srv/data/y\")))\n",
        base(),
        nonce()
    );
    let image = dir.join("small.qcow2");
    let good = build(
        &store,
        &dir,
        &stable,
        &[
            "-o",
            image.to_str().unwrap(),
            "--boot",
            "none",
            "--check-reproducible",
        ],
    )
    .ok();
    // Raw and qcow2 were both built twice and compared; the qcow2 kept is the one compared.
    let line = |ext: &str| {
        good.stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("reproducible {ext}: sha256 ")))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no {ext} verdict in\n{}", good.stdout))
    };
    line("raw");
    let sha = Command::new("sha256sum").arg(&image).output().unwrap();
    assert!(String::from_utf8_lossy(&sha.stdout).starts_with(&line("qcow2")));
    let manifest = fs::read_to_string(dir.join("small.qcow2.manifest.json")).unwrap();
    assert!(manifest.contains("\"name\": \"small.qcow2\""), "{manifest}");

    // A step that writes a random value cannot be reproduced: the report names its file.
    let unstable = format!(
        "({}\n (run (shell \"echo {} > /x\"))\n (run (shell \"cat /proc/sys/kernel/random/uuid > /stamp\")))\n",
        base(),
        nonce()
    );
    let tar = dir.join("out.tar");
    let bad = build(
        &store,
        &dir,
        &unstable,
        &["-o", tar.to_str().unwrap(), "--check-reproducible"],
    );
    assert_eq!(bad.code, 1, "{}\n{}", bad.stdout, bad.stderr);
    assert!(
        bad.stdout.contains("NOT reproducible tar"),
        "{}",
        bad.stdout
    );
    assert!(
        bad.stdout
            .lines()
            .any(|l| l.starts_with("first difference:") && l.contains("/stamp")),
        "{}",
        bad.stdout
    );
    assert!(!tar.exists(), "a failed check must not leave an output");
    // Neither check wrote into the user's store: it builds in fresh stores of its own.
    assert_eq!(layer_count(&store, &dir), 0);
}
