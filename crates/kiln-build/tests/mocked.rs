//! The builder's caching, failure, secret and cache-mount logic against the real
//! on-disk store with a scripted sandbox and fetcher behind the same seams.

use kiln_build::{BuildError, BuildOptions, Builder};
use kiln_fetch::{BaseSource, FetchError, Fetcher, ResolvedBase};
use kiln_sandbox::{CopyEntry, Outcome, Payload, RootFs, RunSpec, Sandbox, SandboxError};
use kiln_spec::hash::base_id;
use kiln_spec::SandboxKind;
use kiln_store::{BaseConfig, BasePin, FsStore, Store};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Runs nothing: records each spec, writes a file named after the command into the
/// upper dir, prints a line, and fails commands containing `fail`.
#[derive(Default)]
struct ScriptedSandbox {
    runs: Mutex<Vec<RunSpec>>,
    /// When set, every run waits up to 2 s for a second run to arrive, so two builds that
    /// both (wrongly) ran the same step would be caught running it at the same time.
    rendezvous: Option<(Mutex<usize>, Condvar)>,
}

impl Sandbox for ScriptedSandbox {
    fn run(&self, spec: &RunSpec, output: &mut dyn Write) -> Result<Outcome, SandboxError> {
        let cmd = spec.argv.last().cloned().unwrap_or_default();
        self.runs.lock().unwrap().push(spec.clone());
        if let Some((count, cv)) = &self.rendezvous {
            let mut n = count.lock().unwrap();
            *n += 1;
            cv.notify_all();
            let _ = cv
                .wait_timeout_while(n, Duration::from_secs(2), |n| *n % 2 == 1)
                .unwrap();
        }
        let upper = match &spec.root {
            RootFs::Overlay { upper, .. } => upper.clone(),
            RootFs::Dir(dir) => dir.clone(),
            RootFs::Disk { .. } => panic!("the tree sandbox got a disk root"),
        };
        let name: String = cmd
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        std::fs::write(upper.join(name), &cmd).unwrap();
        for m in &spec.mounts {
            std::fs::write(m.source.join("touched"), &cmd).unwrap();
        }
        for s in &spec.secrets {
            writeln!(output, "secret is {}", String::from_utf8_lossy(&s.value)).unwrap();
        }
        writeln!(output, "ran: {cmd}").unwrap();
        Ok(if cmd.contains("fail") {
            Outcome::Exited(2)
        } else {
            Outcome::Exited(0)
        })
    }
}

struct FakeBase;

impl Fetcher for FakeBase {
    fn resolve(&self, source: &BaseSource) -> Result<ResolvedBase, FetchError> {
        // Registry images come back pinned, as the real fetcher's do.
        let pin = match source {
            BaseSource::Oci(_) => Some(fake_pin()),
            _ => None,
        };
        Ok(ResolvedBase {
            source: source.clone(),
            id: base_id("fake", &[("src", &format!("{source:?}"))]),
            description: "fake".into(),
            pin,
        })
    }
    fn fetch(
        &self,
        _base: &ResolvedBase,
        rootfs: &Path,
        source_date_epoch: Option<i64>,
        progress: &mut dyn Write,
    ) -> Result<BaseConfig, FetchError> {
        std::fs::create_dir_all(rootfs.join("usr/bin")).unwrap();
        std::fs::write(rootfs.join("usr/bin/bash"), "").unwrap();
        writeln!(progress, "fetched fake base, epoch {source_date_epoch:?}").unwrap();
        Ok(BaseConfig {
            env: vec![("PATH".into(), "/bin".into()), ("LANG".into(), "C".into())],
            workdir: None,
            user: None,
        })
    }
    fn seed_apt_lists(&self, _base: &ResolvedBase, into: &Path) -> Result<usize, FetchError> {
        std::fs::write(into.join("base_dists_InRelease"), "from the bootstrap").unwrap();
        Ok(1)
    }
}

fn fake_pin() -> BasePin {
    BasePin {
        reference: "registry-1.docker.io/library/busybox:latest".into(),
        digest: format!("sha256:{}", "e".repeat(64)),
        registry: Some("127.0.0.1:5000".into()),
        mirror: true,
    }
}

fn build(
    store: &FsStore,
    sandbox: &ScriptedSandbox,
    spec: &str,
    options: BuildOptions,
) -> (Result<kiln_spec::LayerId, BuildError>, String) {
    let ctx = tempfile::tempdir().unwrap();
    build_in(store, sandbox, spec, ctx.path(), options)
}

/// [`build`] with `context` as the build context.
fn build_in(
    store: &FsStore,
    sandbox: &ScriptedSandbox,
    spec: &str,
    context: &Path,
    options: BuildOptions,
) -> (Result<kiln_spec::LayerId, BuildError>, String) {
    let spec = kiln_spec::parse(spec).unwrap();
    let builder = Builder {
        store,
        sandbox,
        fetcher: &FakeBase,
        options,
        vm_sandbox: None,
    };
    let mut out = Vec::new();
    let result = builder.build(&spec, context, &mut out);
    (result, String::from_utf8(out).unwrap())
}

/// A store for tests whose copy steps mount overlays: this thread moves to a private mount
/// namespace (so nothing leaks to the host) and the store lives on the target dir's disk
/// (overlayfs needs an upper dir on a real filesystem).
fn store_for_copies() -> (tempfile::TempDir, FsStore) {
    kiln_sandbox::mount::enter_private_mount_namespace().expect("tests run as root");
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    (dir, store)
}

const SPEC: &str = r#"((from debian:bookworm)
 (run (shell "one"))
 (env A 1)
 (workdir src)
 (user (uid 7) (gid 8))
 (run (shell "two")))
"#;

#[test]
fn second_build_runs_nothing_and_replays_logs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let (first, out1) = build(&store, &sandbox, SPEC, BuildOptions::default());
    let first = first.unwrap();
    assert_eq!(sandbox.runs.lock().unwrap().len(), 2);
    assert_eq!(out1.matches("---> saved as").count(), 3);
    let (second, out2) = build(&store, &sandbox, SPEC, BuildOptions::default());
    assert_eq!(second.unwrap(), first);
    assert_eq!(sandbox.runs.lock().unwrap().len(), 2, "nothing re-run");
    assert_eq!(out2.matches("from cache").count(), 3);
    assert!(
        out2.contains("ran: two") && out2.contains("fetched fake base"),
        "logs replayed:\n{out2}"
    );
    assert!(out2.ends_with(&format!("Got: \"{first}\"\n")));
}

#[test]
fn registry_bases_print_and_record_their_pin() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let line = format!(
        "---> busybox:latest resolved to sha256:{} (by 127.0.0.1:5000, the mirror)\n",
        "e".repeat(64)
    );
    let (id, out) = build(
        &store,
        &sandbox,
        "((from busybox))\n",
        BuildOptions::default(),
    );
    let id = id.unwrap();
    assert!(out.contains(&format!("(from busybox)\n{line}")), "{out}");
    assert_eq!(store.get(&id).unwrap().unwrap().meta.pin, Some(fake_pin()));
    // A cache hit still says what the tag resolved to.
    let (again, out) = build(
        &store,
        &sandbox,
        "((from busybox))\n",
        BuildOptions::default(),
    );
    assert_eq!(again.unwrap(), id);
    assert!(out.contains(&line) && out.contains("from cache"), "{out}");
    // Other bases print no such line.
    let (_, out) = build(&store, &sandbox, SPEC, BuildOptions::default());
    assert!(!out.contains("resolved to"), "{out}");
}

#[test]
fn context_reaches_the_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    build(&store, &sandbox, SPEC, BuildOptions::default())
        .0
        .unwrap();
    let runs = sandbox.runs.lock().unwrap().clone();
    let two = &runs[1];
    assert_eq!(two.argv, vec!["/usr/bin/env", "bash", "-c", "two"]);
    assert_eq!((two.uid, two.gid), (7, 8));
    assert_eq!(two.cwd, "/src");
    assert_eq!(
        two.env,
        vec![
            ("PATH".into(), "/bin".into()),
            ("LANG".into(), "C".into()),
            ("A".into(), "1".into())
        ]
    );
    assert!(!two.host_network && two.fast_sync);
    // SOURCE_DATE_EPOCH reaches the base's fetch and the steps, but not their ids.
    let dir2 = tempfile::tempdir().unwrap();
    let store2 = FsStore::open(dir2.path()).unwrap();
    let sandbox2 = ScriptedSandbox::default();
    let options = BuildOptions {
        source_date_epoch: Some(1_600_000_000),
        ..Default::default()
    };
    let (with_epoch, log) = build(&store2, &sandbox2, SPEC, options);
    let with_epoch = with_epoch.unwrap();
    assert!(
        log.contains("fetched fake base, epoch Some(1600000000)"),
        "{log}"
    );
    let without = build(&store, &sandbox, SPEC, BuildOptions::default())
        .0
        .unwrap();
    assert_eq!(with_epoch, without);
    let runs2 = sandbox2.runs.lock().unwrap();
    assert!(runs2[1]
        .env
        .contains(&("SOURCE_DATE_EPOCH".into(), "1600000000".into())));
    match &two.root {
        RootFs::Overlay { lower, .. } => assert_eq!(lower.len(), 2, "step one over the base"),
        other => panic!("expected an overlay, got {other:?}"),
    }
}

#[test]
fn a_failed_step_is_not_stored_and_earlier_steps_are_reused() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let spec = |last: &str| {
        format!("((from debian:bookworm)\n (run (shell \"one\"))\n (run (shell \"{last}\")))\n")
    };
    let (result, _) = build(
        &store,
        &sandbox,
        &spec("please fail"),
        BuildOptions::default(),
    );
    match result {
        Err(BuildError::StepFailed {
            outcome, tail, pos, ..
        }) => {
            assert_eq!(outcome, Outcome::Exited(2));
            assert!(tail.contains("ran: please fail"), "{tail}");
            assert_eq!((pos.line, pos.col), (3, 2));
        }
        other => panic!("expected StepFailed, got {other:?}"),
    }
    assert_eq!(store.list().unwrap().len(), 2);
    let (fixed, out) = build(&store, &sandbox, &spec("fixed"), BuildOptions::default());
    fixed.unwrap();
    assert_eq!(out.matches("from cache").count(), 2);
    assert_eq!(sandbox.runs.lock().unwrap().len(), 3);
}

#[test]
fn secrets_enter_the_hash_and_are_masked() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let spec =
        "((from debian:bookworm)\n (run (secrets (tok (target /run/tok))) (shell \"use\")))\n";
    let (missing, _) = build(&store, &sandbox, spec, BuildOptions::default());
    assert!(matches!(missing, Err(BuildError::MissingSecret { .. })));
    let with = |v: &str| BuildOptions {
        secrets: [("tok".to_string(), v.as_bytes().to_vec())].into(),
        ..Default::default()
    };
    let (a, out) = build(&store, &sandbox, spec, with("hunter2"));
    assert!(
        !out.contains("hunter2") && out.contains("secret is ***"),
        "{out}"
    );
    let (b, _) = build(&store, &sandbox, spec, with("other"));
    assert_ne!(a.unwrap(), b.unwrap());
    let log = std::fs::read_to_string(
        store.log_path(
            &store
                .list()
                .unwrap()
                .iter()
                .find(|l| l.meta.parent.is_some())
                .unwrap()
                .meta
                .id,
        ),
    )
    .unwrap();
    assert!(!log.contains("hunter2"));
}

#[test]
fn a_new_apt_lists_cache_starts_from_the_base_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let spec = "((from debian:bookworm)
 (run (cache (lists (target /var/lib/apt/lists/)) (debs (target /var/cache/apt/archives)))
      (shell \"update one\"))
 (run (cache (lists (target /var/lib/apt/lists))) (shell \"update two\")))
";
    let (result, out) = build(&store, &sandbox, spec, BuildOptions::default());
    result.unwrap();
    assert_eq!(
        out.matches("cache lists: starts from the base's 1 apt index files")
            .count(),
        1,
        "seeded once, while empty:\n{out}"
    );
    assert!(!out.contains("cache debs"), "{out}");
    let lease = store.cache_acquire("lists").unwrap();
    assert!(lease.dir.join("base_dists_InRelease").exists());
    store.cache_release(lease, false).unwrap();
    let lease = store.cache_acquire("debs").unwrap();
    assert!(!lease.dir.join("base_dists_InRelease").exists());
    store.cache_release(lease, false).unwrap();
}

#[test]
fn cache_mounts_are_kept_after_success_and_dropped_after_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let spec = |cmd: &str| {
        format!("((from debian:bookworm)\n (run (cache (c (target /c))) (shell \"{cmd}\")))\n")
    };
    build(&store, &sandbox, &spec("keep"), BuildOptions::default())
        .0
        .unwrap();
    let lease = store.cache_acquire("c").unwrap();
    assert_eq!(
        std::fs::read_to_string(lease.dir.join("touched")).unwrap(),
        "keep"
    );
    store.cache_release(lease, false).unwrap();
    assert!(
        build(&store, &sandbox, &spec("now fail"), BuildOptions::default())
            .0
            .is_err()
    );
    let lease = store.cache_acquire("c").unwrap();
    assert_eq!(
        std::fs::read_to_string(lease.dir.join("touched")).unwrap(),
        "keep"
    );
    store.cache_release(lease, false).unwrap();
}

#[test]
fn cancellation_discards_the_running_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let options = BuildOptions::default();
    let flag = options.cancelled.clone();
    // Cancel once the base is stored: the run step starts, then the flag is seen.
    struct CancelAfterRun<'a>(&'a ScriptedSandbox, Arc<std::sync::atomic::AtomicBool>);
    impl Sandbox for CancelAfterRun<'_> {
        fn run(&self, spec: &RunSpec, output: &mut dyn Write) -> Result<Outcome, SandboxError> {
            self.1.store(true, Ordering::SeqCst);
            self.0.run(spec, output)
        }
    }
    let cancelling = CancelAfterRun(&sandbox, flag);
    let spec = kiln_spec::parse("((from debian:bookworm)\n (run (shell \"long\")))\n").unwrap();
    let builder = Builder {
        store: &store,
        sandbox: &cancelling,
        fetcher: &FakeBase,
        options,
        vm_sandbox: None,
    };
    let ctx = tempfile::tempdir().unwrap();
    let result = builder.build(&spec, ctx.path(), &mut Vec::new());
    assert!(matches!(result, Err(BuildError::Cancelled)), "{result:?}");
    assert_eq!(store.list().unwrap().len(), 1, "only the base");
}

#[test]
fn two_concurrent_builds_share_each_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox {
        rendezvous: Some((Mutex::new(0), Condvar::new())),
        ..Default::default()
    };
    build(
        &store,
        &sandbox,
        "((from debian:bookworm))\n",
        BuildOptions::default(),
    )
    .0
    .unwrap();
    let spec = "((from debian:bookworm)\n (run (shell \"a\"))\n (run (shell \"b\")))\n";
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| s.spawn(|| build(&store, &sandbox, spec, BuildOptions::default())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<_> = results.into_iter().map(|(r, _)| r.unwrap()).collect();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(sandbox.runs.lock().unwrap().len(), 2, "each step ran once");
}

/// The id kiln gave the copy step of this spec, with `f` as [`copy_rule_context`] writes
/// it, on commit 48b8903: before copy ids carried the placement rule's version, when a
/// directory source's contents went to `dst` (Dockerfile style). Stores filled then hold it.
const OLD_RULE_COPY_ID: &str = "41f4c8a57435135eafb4663e317cbb7a6a17dac7f91fb2b95f221bffe112f210";
const COPY_RULE_SPEC: &str = "((from debian:bookworm)\n (copy (src f) (dst /t/)))\n";

fn copy_rule_context() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let ctx = tempfile::tempdir().unwrap();
    let f = ctx.path().join("f");
    std::fs::write(&f, "kiln copy rule\n").unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    ctx
}

#[test]
fn a_copy_layer_stored_under_the_old_rule_is_rebuilt() {
    let (_dir, store) = store_for_copies();
    let sandbox = ScriptedSandbox::default();
    let ctx = copy_rule_context();
    let base = build_in(
        &store,
        &sandbox,
        "((from debian:bookworm))\n",
        ctx.path(),
        BuildOptions::default(),
    )
    .0
    .unwrap();
    // What an older kiln left: a layer under the old id, on the same base.
    let old = kiln_spec::LayerId::parse(OLD_RULE_COPY_ID).unwrap();
    {
        let _lock = store.lock_step(&old).unwrap();
        let tmp = store.begin(&old, Some(&base), false).unwrap();
        std::fs::write(tmp.rootfs.join("made-by-the-old-rule"), "").unwrap();
        store.commit(tmp, "copy under the old rule", None).unwrap();
    }
    let (id, out) = build_in(
        &store,
        &sandbox,
        COPY_RULE_SPEC,
        ctx.path(),
        BuildOptions::default(),
    );
    let id = id.unwrap();
    assert_ne!(id, old, "the copy step's id must change with the rule");
    assert!(!out.contains(OLD_RULE_COPY_ID), "{out}");
    assert_eq!(out.matches("---> saved as").count(), 1, "{out}");
    let top = store.chain(&id).unwrap().into_iter().next().unwrap();
    assert_eq!(std::fs::read(top.join("t/f")).unwrap(), b"kiln copy rule\n");
    assert!(!top.join("made-by-the-old-rule").exists());
    // And the new layer is reused from then on.
    let (again, out) = build_in(
        &store,
        &sandbox,
        COPY_RULE_SPEC,
        ctx.path(),
        BuildOptions::default(),
    );
    assert_eq!(again.unwrap(), id);
    assert_eq!(out.matches("from cache").count(), 2, "{out}");
}

#[test]
fn several_copy_sources_need_a_dst_ending_in_slash() {
    let (_dir, store) = store_for_copies();
    let sandbox = ScriptedSandbox::default();
    let ctx = copy_rule_context();
    std::fs::write(ctx.path().join("g"), "g").unwrap();
    let spec = "((from debian:bookworm)\n (workdir /srv)\n  (copy (src f g) (dst www)))\n";
    let (result, _) = build_in(&store, &sandbox, spec, ctx.path(), BuildOptions::default());
    let err = result.unwrap_err();
    assert_eq!(err.leading_pos().map(|p| (p.line, p.col)), Some((3, 3)));
    let message = err.to_string();
    assert!(
        message.starts_with("3:3: copy of 2 sources to `www`") && message.contains("`(dst www/)`"),
        "{message}"
    );
    assert_eq!(store.list().unwrap().len(), 1, "only the base");
    // With the trailing `/` both go inside it.
    let spec = spec.replace("(dst www)", "(dst www/)");
    let (id, _) = build_in(&store, &sandbox, &spec, ctx.path(), BuildOptions::default());
    let top = store
        .chain(&id.unwrap())
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    assert!(top.join("srv/www/f").is_file() && top.join("srv/www/g").is_file());
}

#[test]
fn relative_and_windows_mount_targets_are_refused_when_the_step_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let sandbox = ScriptedSandbox::default();
    let options = || BuildOptions {
        secrets: [("tok".to_string(), b"v".to_vec())].into(),
        ..Default::default()
    };
    let cases = [
        (
            r#"(cache (c (target "C:\\cache")))"#,
            "cache `c`",
            r"`C:\cache`",
        ),
        ("(cache (c (target var/cache)))", "cache `c`", "`var/cache`"),
        (
            "(secrets (tok (target run/tok)))",
            "secret `tok`",
            "`run/tok`",
        ),
    ];
    for (mount, kind, target) in cases {
        let spec = format!(
            "((from debian:bookworm)\n (run (shell \"ok\"))\n (run {mount} (shell \"use\")))\n"
        );
        let (result, _) = build(&store, &sandbox, &spec, options());
        let err = result.unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, BuildError::MountTargetNotAbsolute { pos, .. } if (pos.line, pos.col) == (3, 2)),
            "{err:?}"
        );
        assert!(
            message.starts_with(&format!("3:2: {kind} has target {target}"))
                && message.contains("absolute"),
            "{message}"
        );
    }
    let runs = sandbox.runs.lock().unwrap();
    assert!(
        runs.iter().all(|r| r.argv.last().unwrap() == "ok"),
        "a step with a bad target reached the sandbox"
    );
    // The steps before it were built once and reused.
    assert_eq!(runs.len(), 1);
}

/// A disk sandbox without QEMU: a "disk" is a text file of the commands run on it, the
/// first line naming its backing file, which must resolve from the step's directory.
struct FakeDisk {
    runs: Mutex<Vec<RunSpec>>,
}

impl FakeDisk {
    fn lines(disk: &Path) -> Vec<String> {
        let text = std::fs::read_to_string(disk).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        if let Some(backing) = lines.first().and_then(|l| l.strip_prefix("backing ")) {
            let mut below = FakeDisk::lines(&disk.parent().unwrap().join(backing));
            below.extend(lines.drain(1..));
            return below;
        }
        lines
    }
}

impl Sandbox for FakeDisk {
    fn run(&self, spec: &RunSpec, _output: &mut dyn Write) -> Result<Outcome, SandboxError> {
        self.runs.lock().unwrap().push(spec.clone());
        let RootFs::Disk { disk, boot } = &spec.root else {
            panic!("the disk sandbox got a tree root")
        };
        assert!(boot.join("vmlinux").is_file(), "boot files of the VM base");
        let cmd = spec.argv.last().cloned().unwrap_or_default();
        let mut f = std::fs::OpenOptions::new().append(true).open(disk).unwrap();
        writeln!(f, "run {cmd}").unwrap();
        for m in &spec.mounts {
            std::fs::write(m.source.join("disk.qcow2"), &cmd).unwrap();
        }
        Ok(Outcome::Exited(if cmd.contains("fail") { 1 } else { 0 }))
    }
    fn payload(&self) -> Payload {
        Payload::Disk
    }
    fn make_base(
        &self,
        tree: &Path,
        kernel_tree: &Path,
        dest: &Path,
        _output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        assert!(
            tree.join("usr/bin/bash").is_file(),
            "the base's files are visible"
        );
        assert!(kernel_tree.is_dir());
        std::fs::create_dir(dest.join("boot")).unwrap();
        std::fs::write(dest.join("boot/vmlinux"), "kernel").unwrap();
        std::fs::write(dest.join("disk.qcow2"), "base\n").unwrap();
        Ok(())
    }
    fn make_disk(&self, parent: &Path, disk: &Path, flatten: bool) -> Result<(), SandboxError> {
        let resolved = disk.parent().unwrap().join(parent);
        assert!(resolved.is_file(), "backing {} resolves", parent.display());
        if flatten {
            let all = FakeDisk::lines(&resolved).join("\n");
            std::fs::write(disk, format!("{all}\n")).unwrap();
        } else {
            std::fs::write(disk, format!("backing {}\n", parent.display())).unwrap();
        }
        Ok(())
    }
    fn copy_in(
        &self,
        root: &RootFs,
        entries: &[CopyEntry],
        uid: u32,
        _gid: u32,
        _output: &mut dyn Write,
    ) -> Result<(), SandboxError> {
        let RootFs::Disk { disk, .. } = root else {
            panic!("copy_in got a tree root")
        };
        let mut f = std::fs::OpenOptions::new().append(true).open(disk).unwrap();
        for e in entries {
            writeln!(f, "copy {} uid {uid}", e.path).unwrap();
        }
        Ok(())
    }
}

fn build_vm(
    store: &FsStore,
    vm: &FakeDisk,
    spec: &str,
    options: BuildOptions,
) -> (Result<kiln_spec::LayerId, BuildError>, String) {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), "file").unwrap();
    let spec = kiln_spec::parse(spec).unwrap();
    let tree = ScriptedSandbox::default();
    let builder = Builder {
        store,
        sandbox: &tree,
        fetcher: &FakeBase,
        options,
        vm_sandbox: Some(vm),
    };
    let mut out = Vec::new();
    let result = builder.build(&spec, ctx.path(), &mut out);
    assert!(
        tree.runs.lock().unwrap().is_empty(),
        "no step ran in namespaces"
    );
    (result, String::from_utf8(out).unwrap())
}

#[test]
fn qemu_stages_chain_disk_layers_on_a_vm_base() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let vm = FakeDisk {
        runs: Mutex::default(),
    };
    let spec = "((from busybox) (sandbox qemu) (run (shell one)) (copy (src f) (dst /f)) (run (cache (c (target /c))) (shell two)))";
    let (id, out) = build_vm(&store, &vm, spec, BuildOptions::default());
    let id = id.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(
        out.contains("has no kernel; booting linux-image-amd64"),
        "{out}"
    );
    let info = store.get(&id).unwrap().unwrap();
    assert!(info.meta.disk, "the last layer is a disk");
    let disk = store.layer_dir(&id).join("disk.qcow2");
    assert_eq!(
        FakeDisk::lines(&disk),
        ["base", "run one", "copy /f uid 0", "run two"],
        "each step's disk is backed by its parent's"
    );
    // The cache given to the VM is its own, apart from the namespace sandbox's `c`.
    assert!(dir.path().join("cache/c.vm").is_dir());
    assert!(!dir.path().join("cache/c").exists());

    // The same spec without `(sandbox qemu)` gives other ids: namespace layers and
    // QEMU layers are never mistaken for each other.
    let tree_spec = spec.replace("(sandbox qemu) ", "");
    let tree = ScriptedSandbox::default();
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("f"), "file").unwrap();
    let (tree_id, out) = build_in(
        &store,
        &tree,
        &tree_spec,
        ctx.path(),
        BuildOptions::default(),
    );
    assert_ne!(tree_id.unwrap_or_else(|e| panic!("{e}\n{out}")), id);

    // `--sandbox qemu` builds the plain spec exactly as `(sandbox qemu)` does: all cached.
    let options = BuildOptions {
        sandbox: SandboxKind::Qemu,
        ..BuildOptions::default()
    };
    let runs = vm.runs.lock().unwrap().len();
    let (again, out) = build_vm(&store, &vm, &tree_spec, options);
    assert_eq!(again.unwrap(), id);
    assert_eq!(vm.runs.lock().unwrap().len(), runs, "fully cached: {out}");
}

#[test]
fn failed_qemu_step_leaves_nothing_and_deep_chains_flatten() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let vm = FakeDisk {
        runs: Mutex::default(),
    };
    let options = BuildOptions {
        flatten_depth: 3,
        ..BuildOptions::default()
    };
    let spec = "((from busybox) (sandbox qemu) (run (shell a)) (run (shell b)) (run (shell c)) (run (shell d)))";
    let (id, out) = build_vm(&store, &vm, spec, options.clone());
    let id = id.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let disk = store.layer_dir(&id).join("disk.qcow2");
    assert_eq!(
        FakeDisk::lines(&disk),
        ["base", "run a", "run b", "run c", "run d"]
    );
    // base ← a ← b ← c reaches the depth of 3: c is a complete disk, d backed by it.
    let top = std::fs::read_to_string(&disk).unwrap();
    let backing = top
        .lines()
        .next()
        .unwrap()
        .strip_prefix("backing ")
        .unwrap();
    let c = std::fs::read_to_string(disk.parent().unwrap().join(backing)).unwrap();
    assert_eq!(c, "base\nrun a\nrun b\nrun c\n", "c was flattened");

    let (failed, _) = build_vm(
        &store,
        &vm,
        "((from busybox) (sandbox qemu) (run (shell fail)))",
        options,
    );
    assert!(
        matches!(failed, Err(BuildError::StepFailed { .. })),
        "{failed:?}"
    );
    let tmp: Vec<_> = std::fs::read_dir(dir.path().join("result-tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "no temporary left: {tmp:?}");
}

#[test]
fn chroot_stage_on_a_vm_disk_is_refused_and_qemu_needs_a_vm_sandbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    let tree = ScriptedSandbox::default();
    let (result, _) = build(
        &store,
        &tree,
        "((from busybox)\n (sandbox qemu) (run (shell a)))",
        BuildOptions::default(),
    );
    assert!(matches!(result, Err(BuildError::NoVmSandbox)), "{result:?}");
}
