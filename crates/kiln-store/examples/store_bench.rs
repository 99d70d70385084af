//! Times the store operations every build pays for: opening a store (crash recovery
//! included) with many layers, and committing a small step over a large parent.
//!
//! `cargo run --release -p kiln-store --example store_bench -- [DIR] [LAYERS]`
//! (DIR defaults to a fresh directory under /var/tmp, removed afterwards).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_store::{Durability, FsStore, LayerId, Store, StoreError, StoreOptions};

fn main() -> Result<(), StoreError> {
    let mut args = std::env::args().skip(1);
    let dir = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("kiln-store-bench.{}", std::process::id()))
    });
    let layers: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(500);
    let root = dir.join("store");
    let result = run(&root, layers);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run(root: &Path, layers: u64) -> Result<(), StoreError> {
    let base = layer_id(0);
    {
        let store = FsStore::open_with(
            root,
            StoreOptions {
                durability: Durability::MetadataOnly,
            },
        )?;
        let tmp = store.begin(&base, None, true)?;
        let block = vec![0x5au8; 1 << 20];
        for i in 0..200 {
            let path = tmp.rootfs.join(format!("blob{i}"));
            std::fs::write(&path, &block).map_err(|e| StoreError::io(path, e))?;
        }
        store.commit(tmp, "200 MB base", None)?;
    }
    let store = FsStore::open(root)?;
    let mut parent = base;
    let mut commits = Vec::new();
    for n in 1..layers {
        let id = layer_id(n);
        // Branch every 50 layers so chains stay realistic.
        let below = if n % 50 == 0 {
            layer_id(0)
        } else {
            parent.clone()
        };
        let tmp = store.begin(&id, Some(&below), false)?;
        for f in 0..5 {
            let path = tmp.rootfs.join(format!("f{f}"));
            std::fs::write(&path, id.as_str()).map_err(|e| StoreError::io(path, e))?;
        }
        let started = Instant::now();
        store.commit(tmp, "bench step", None)?;
        commits.push(started.elapsed());
        parent = id;
    }
    drop(store);
    let mut opens = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let store = FsStore::open(root)?;
        opens.push(started.elapsed());
        drop(store);
    }
    println!(
        "commit of a 5-file step over a 200 MB parent: {}",
        summary(&mut commits)
    );
    println!(
        "open of a store with {layers} layers:           {}",
        summary(&mut opens)
    );
    Ok(())
}

fn layer_id(n: u64) -> LayerId {
    LayerId::parse(&format!(
        "{:016x}{:048x}",
        n.wrapping_mul(0x9e37_79b9_7f4a_7c15),
        n
    ))
    .expect("64 hex digits")
}

fn summary(times: &mut [Duration]) -> String {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "min {:.2} ms, median {:.2} ms, max {:.2} ms",
        ms(times[0]),
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1])
    )
}
