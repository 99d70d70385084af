//! `healthcheck`: problems a user should know about, in words. Reports only; repairs
//! happen at open.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;

use crate::fsutil::entry_names;
use crate::layers::OnDisk;
use crate::layout::unique_suffix;
use crate::{FsStore, LayerId, StoreError};

/// Filesystems that cannot hold overlayfs upper directories.
const UNSUITABLE_FS: &[(i64, &str)] = &[
    (
        0x794c_7630,
        "overlayfs (is kiln running in a container? mount a volume for the store)",
    ),
    (0x6969, "NFS"),
    (0xff53_4d42, "CIFS/SMB"),
];

pub(crate) fn check(store: &FsStore) -> Result<Vec<String>, StoreError> {
    let mut problems = Vec::new();
    check_writable(store, &mut problems);
    check_filesystem(store, &mut problems);
    check_overlayfs(&mut problems)?;
    check_layers(store, &mut problems)?;
    Ok(problems)
}

fn check_writable(store: &FsStore, problems: &mut Vec<String>) {
    let probe = store
        .layout
        .scratch()
        .join(format!(".healthcheck.{}", unique_suffix()));
    let written = std::fs::File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
    let _ = std::fs::remove_file(&probe);
    if let Err(e) = written {
        problems.push(format!(
            "the store is not writable ({}: {e}): fix its permissions or choose another store directory",
            probe.display()
        ));
    }
}

fn check_filesystem(store: &FsStore, problems: &mut Vec<String>) {
    let Ok(stat) = nix::sys::statfs::statfs(store.layout.root()) else {
        return;
    };
    #[allow(clippy::unnecessary_cast)] // the field's integer type differs between targets
    let kind = stat.filesystem_type().0 as i64;
    if let Some((_, name)) = UNSUITABLE_FS.iter().find(|(magic, _)| *magic == kind) {
        problems.push(format!(
            "the store {} is on {name}, which cannot hold overlayfs upper directories: \
             put the store on a local filesystem (ext4, xfs, btrfs, tmpfs)",
            store.layout.root().display()
        ));
    }
}

fn check_overlayfs(problems: &mut Vec<String>) -> Result<(), StoreError> {
    let path = "/proc/filesystems";
    let listed = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
    if !listed
        .lines()
        .any(|line| line.split_whitespace().last() == Some("overlay"))
    {
        problems.push(
            "overlayfs is not available in this kernel (not in /proc/filesystems): run `modprobe overlay` as root"
                .to_string(),
        );
    }
    Ok(())
}

/// The index matches result/, every layer is readable and has its parent and short link.
fn check_layers(store: &FsStore, problems: &mut Vec<String>) -> Result<(), StoreError> {
    let on_disk: BTreeSet<String> = entry_names(&store.layout.result())?.into_iter().collect();
    let indexed: BTreeSet<String> = store.index.ids()?.into_iter().collect();
    for name in on_disk.difference(&indexed) {
        problems.push(format!(
            "result/{name} is not in the index (reopening the store re-indexes it)"
        ));
    }
    for name in indexed.difference(&on_disk) {
        problems.push(format!(
            "index row {name} has no result/ directory (reopening the store drops it)"
        ));
    }
    let present: HashSet<&String> = on_disk.iter().collect();
    for name in &on_disk {
        let Ok(id) = LayerId::parse(name) else {
            problems.push(format!(
                "result/{name} is not a layer id (reopening the store deletes it)"
            ));
            continue;
        };
        match store.inspect(&id)? {
            OnDisk::Valid(meta) => {
                if let Some(parent) = meta.parent.filter(|p| !present.contains(&p.to_string())) {
                    problems.push(format!(
                        "layer {id}: its parent {parent} is missing: delete it with `kiln rm {}`",
                        id.short()
                    ));
                }
                if !store.layout.short_link(&id).exists() {
                    problems.push(format!(
                        "layer {id}: short link is missing (reopening the store recreates it)"
                    ));
                }
            }
            OnDisk::Invalid(why) => problems.push(format!(
                "result/{name}: {why} (reopening the store deletes it)"
            )),
            OnDisk::Missing => {}
        }
    }
    Ok(())
}
