//! Crash consistency: a child process builds, commits, deletes and prunes layers in a loop
//! and is SIGKILLed at moments picked from its own progress reports (plus a random busy
//! offset); after every kill the store is reopened and must hold only complete layers,
//! every layer the child reported as committed, and an index that matches result/.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{check_expected, id, names, write_expected};
use kiln_store::{FsStore, LayerId, LayerMeta, Store};

const CHILD_ROOT: &str = "KILN_STORE_CRASH_CHILD_ROOT";
const CHILD_RUN: &str = "KILN_STORE_CRASH_CHILD_RUN";
const KILLS: u64 = 25;

/// The child's loop. Runs only when the parent test sets the environment.
#[test]
#[ignore = "child process of crash_consistency_under_sigkill"]
fn crash_child() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN)
        .expect("run number")
        .parse()
        .expect("number");
    let store = FsStore::open(Path::new(&root)).expect("open");
    let mut out = std::io::stdout().lock();
    let mut report = |line: String| {
        writeln!(out, "{line}").expect("report");
        out.flush().expect("flush");
    };
    let mut parent: Option<LayerId> = None;
    for k in 0..100_000u64 {
        if k % 9 == 8 {
            report("BEGIN-DELETE".into());
            let deleted = if k % 18 == 8 {
                delete_oldest_base(&store, parent.as_ref())
            } else {
                let total = store.total_size().expect("size");
                store.prune(total * 2 / 3).expect("prune")
            };
            let ids: Vec<String> = deleted.iter().map(|d| d.to_string()).collect();
            report(format!("END-DELETE {}", ids.join(" ")));
            parent = parent.filter(|p| !deleted.contains(p));
            continue;
        }
        let layer = id(1000 + run, k);
        let below = if k % 4 == 0 { None } else { parent.clone() };
        let _lock = store.lock_step(&layer).expect("lock");
        let tmp = store
            .begin(&layer, below.as_ref(), below.is_none())
            .expect("begin");
        write_expected(&tmp.rootfs, &layer);
        // What overlayfs leaves behind in its workdir.
        std::fs::create_dir(tmp.work.join("work")).expect("mkdir");
        std::fs::set_permissions(
            tmp.work.join("work"),
            std::os::unix::fs::PermissionsExt::from_mode(0o000),
        )
        .expect("chmod");
        std::fs::write(&tmp.log, format!("log of {layer}\n")).expect("log");
        store
            .commit(tmp, &format!("crash run {run} step {k}"), None)
            .expect("commit");
        report(format!("COMMIT {layer}"));
        parent = Some(layer);
    }
}

/// Deletes the oldest flat layer (and what is built on it) other than the current chain's.
fn delete_oldest_base(store: &FsStore, current: Option<&LayerId>) -> Vec<LayerId> {
    let current_base = current.map(|tip| {
        let mut layer = tip.clone();
        loop {
            let info = store
                .get(&layer)
                .expect("get")
                .expect("chain layer present");
            match info.meta.parent {
                Some(parent) if !info.meta.flat => layer = parent,
                _ => return layer,
            }
        }
    });
    let oldest = store
        .list()
        .expect("list")
        .into_iter()
        .filter(|i| i.meta.flat && Some(&i.meta.id) != current_base.as_ref())
        .map(|i| i.meta.id)
        .min_by(|a, b| a.as_str()[16..].cmp(&b.as_str()[16..]));
    match oldest {
        Some(base) => store.delete(&base).expect("delete"),
        None => Vec::new(),
    }
}

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn crash_consistency_under_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("store");
    drop(FsStore::open(&root).expect("open"));
    let seed = std::env::var("KILN_STORE_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        })
        | 1;
    eprintln!("crash test seed {seed} (set KILN_STORE_CRASH_SEED to replay)");
    let mut rng = Rng(seed);
    let mut progress = Progress::default();
    let mut step_time = Duration::from_millis(2);
    // kills that left: a temp dir, an unindexed layer, a deletion half done
    let mut stats = (0usize, 0usize, 0usize);

    for run in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "crash_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ])
            .env(CHILD_ROOT, &root)
            .env(CHILD_RUN, run.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("piped stdout");
        let target = 1 + rng.next() % 12;
        let mut reports = 0;
        let mut last = None::<Instant>;
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            if !progress.apply(&line.expect("child output")) {
                continue;
            }
            let now = Instant::now();
            if let Some(previous) = last {
                step_time = (step_time + (now - previous)) / 2;
            }
            last = Some(now);
            reports += 1;
            if reports == target {
                break;
            }
        }
        assert_eq!(
            reports, target,
            "child ended early; run it alone to see why"
        );
        // Kill somewhere within the next step or two.
        let offset = step_time.mul_f64((rng.next() % 1000) as f64 / 600.0);
        let until = Instant::now() + offset;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // What the child reported after the chosen moment happened too.
        for line in lines {
            progress.apply(&line.expect("child output"));
        }

        let store = FsStore::open(&root).expect("reopen after kill");
        stats.0 += usize::from(!store.recovery().purged.is_empty());
        stats.1 += store.recovery().reindexed.len();
        let present = check_store(&store, &root);
        stats.2 += usize::from(progress.deleting);
        if progress.deleting {
            // Killed mid-deletion: any layer may be gone (check_store saw only whole subtrees go).
            progress.committed.retain(|l| present.contains(l));
            progress.deleting = false;
        }
        let lost: Vec<_> = progress.committed.difference(&present).collect();
        assert!(
            lost.is_empty(),
            "run {run} (seed {seed}): committed layers lost: {lost:?}"
        );
    }
    eprintln!(
        "{KILLS} kills: {} interrupted a build, {} hit between rename and index insert, {} interrupted a deletion; {} layers remain",
        stats.0,
        stats.1,
        stats.2,
        progress.committed.len()
    );
}

/// What the child reported.
#[derive(Default)]
struct Progress {
    /// Layers committed and not since reported deleted: they must survive any kill.
    committed: BTreeSet<LayerId>,
    /// A delete or prune started and did not report its end.
    deleting: bool,
}

impl Progress {
    /// Applies one line of the child's output; false if it is not a report.
    fn apply(&mut self, line: &str) -> bool {
        if let Some(layer) = line.strip_prefix("COMMIT ") {
            self.committed.insert(LayerId::parse(layer).expect("id"));
        } else if line == "BEGIN-DELETE" {
            self.deleting = true;
        } else if let Some(ids) = line.strip_prefix("END-DELETE") {
            self.deleting = false;
            for gone in ids.split_whitespace() {
                self.committed.remove(&LayerId::parse(gone).expect("id"));
            }
        } else {
            return false;
        }
        true
    }
}

/// Checks every invariant of a recovered store; returns the layers present.
fn check_store(store: &FsStore, root: &Path) -> BTreeSet<LayerId> {
    let present: BTreeSet<LayerId> = names(&root.join("result"))
        .iter()
        .map(|n| LayerId::parse(n).expect("result/ holds only ids"))
        .collect();
    for layer in &present {
        let dir = root.join("result").join(layer.as_str());
        let meta: LayerMeta =
            serde_json::from_slice(&std::fs::read(dir.join("meta.json")).expect("meta.json"))
                .expect("valid meta.json");
        assert_eq!(&meta.id, layer);
        check_expected(&dir.join("rootfs"), layer)
            .unwrap_or_else(|e| panic!("incomplete layer: {e}"));
        assert_eq!(
            std::fs::read_to_string(dir.join("log")).expect("log"),
            format!("log of {layer}\n")
        );
        assert!(!dir.join("work").exists());
        if let Some(parent) = &meta.parent {
            assert!(
                present.contains(parent),
                "layer {layer} lost its parent {parent}"
            );
        }
        let chain = store.chain(layer).expect("chain");
        assert!(chain.iter().all(|link| link.join("f0").is_file()));
    }
    let indexed: BTreeSet<LayerId> = store
        .list()
        .expect("list")
        .into_iter()
        .map(|i| i.meta.id)
        .collect();
    assert_eq!(indexed, present, "index does not match result/");
    for sub in ["result-tmp", "trash", "cache-tmp", "tmp"] {
        assert!(
            names(&root.join(sub)).is_empty(),
            "{sub}/ not empty: {:?}",
            names(&root.join(sub))
        );
    }
    assert_eq!(
        store.healthcheck().expect("healthcheck"),
        Vec::<String>::new()
    );
    present
}
