//! Stored layers as the commands name and write them: ids from prefixes, tar exports.

use anyhow::{bail, Context};
use kiln_store::{LayerId, Store};
use std::fs;
use std::path::Path;

/// Accepts a layer name (`kiln shell --save NAME`; a name wins over an id prefix it also
/// reads as), a full id or a unique prefix of a stored one.
pub fn resolve_id(store: &dyn Store, text: &str) -> anyhow::Result<LayerId> {
    if kiln_store::check_name(text).is_ok() {
        if let Some(id) = store.lookup_name(text)? {
            if store.get(&id)?.is_none() {
                bail!("name `{text}` points at layer {id}, which is no longer in the store: save it again, or remove it with `kiln names --rm {text}`");
            }
            return Ok(id);
        }
    }
    if let Ok(id) = LayerId::parse(text) {
        if store.get(&id)?.is_some() {
            return Ok(id);
        }
        bail!("layer {text} is not in the store (see `kiln ls`)");
    }
    if text.len() < 4 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{text}` is not a layer name (see `kiln names`), a layer id or an id prefix of at least 4 hex digits");
    }
    let matches: Vec<LayerId> = store
        .list()?
        .into_iter()
        .map(|l| l.meta.id)
        .filter(|id| id.as_str().starts_with(text))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no stored layer id starts with {text} (see `kiln ls`)"),
        many => bail!(
            "{} stored layers start with {text}; give more digits",
            many.len()
        ),
    }
}

/// Writes the tree at `root` as a tar next to `output` and renames it into place, so a
/// failed export never leaves half a file. Shows progress on a terminal.
pub fn write_tar_atomically(root: &Path, output: &Path, id: &LayerId) -> anyhow::Result<()> {
    let tmp = output.with_extension("tar.kiln-tmp");
    let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let bar =
        indicatif::ProgressBar::new_spinner().with_message(format!("exporting {}", id.short()));
    let mut progress = |entries: u64, bytes: u64| {
        if entries.is_multiple_of(256) {
            bar.set_message(format!(
                "exporting {}: {entries} entries, {}",
                id.short(),
                crate::size::human(bytes)
            ));
            bar.tick();
        }
    };
    let written = kiln_image::tar_export::write_tar_with_progress(
        root,
        std::io::BufWriter::new(file),
        &mut progress,
    );
    bar.finish_and_clear();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    fs::rename(&tmp, output).with_context(|| format!("writing {}", output.display()))?;
    Ok(())
}

/// A read-only view of `layer`'s files, a tree or a VM disk alike, under `dir` (created if
/// missing; the view may keep files there until it is dropped).
pub fn open_layer(
    store: &kiln_store::FsStore,
    layer: &LayerId,
    dir: &Path,
) -> anyhow::Result<kiln_build::view::TreeView> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let vm = kiln_vm::sandbox::QemuSandbox::default();
    Ok(kiln_build::view::open_layer(store, Some(&vm), layer, dir)?)
}
