//! Times committing a freshly written tree as a flat layer (what every base and
//! flattened layer pays): `cargo run --release -p kiln-store --example commit_tree -- SRC`
//! copies SRC (e.g. a bootstrapped rootfs) into a temp layer with `cp -a`, then commits it.

use kiln_store::{FsStore, LayerId, Store, StoreError};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), StoreError> {
    let src = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/".into()));
    let dir = std::env::temp_dir().join(format!("kiln-commit-tree.{}", std::process::id()));
    let store = FsStore::open(&dir.join("store"))?;
    let id = LayerId::from_digest(&[7u8; 32]);
    let tmp = store.begin(&id, None, true)?;
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(src.join("."))
        .arg(&tmp.rootfs)
        .status()
        .map_err(|e| StoreError::io(&src, e))?;
    if !copied.success() {
        return Err(StoreError::Other(format!("cp -a {} failed", src.display())));
    }
    let start = Instant::now();
    let info = store.commit(tmp, "tree", None)?;
    println!(
        "commit of {} bytes: {:.1} ms",
        info.size,
        start.elapsed().as_secs_f64() * 1000.0
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
