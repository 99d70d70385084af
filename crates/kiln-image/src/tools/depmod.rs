//! `depmod` (kmod): the module tables of a kernel that was unpacked, not installed.

use super::Program;
use crate::ImageError;
use std::fs;
use std::path::{Path, PathBuf};

const DEPMOD: Program = Program::new("depmod", "kmod");

/// Writes `modules.dep`, `modules.alias`, `modules.softdep` (and the rest depmod makes)
/// for kernel `release` of the module tree `modules_dir` (`…/lib/modules/<release>`)
/// without touching it: depmod runs on a base directory in `scratch` whose module
/// directory links to `modules_dir`'s entries, and writes its tables there. Returns that
/// module directory, which reads like `modules_dir` with the tables added.
pub fn tables_beside(
    modules_dir: &Path,
    release: &str,
    scratch: &Path,
) -> Result<PathBuf, ImageError> {
    let linked = scratch.join("lib/modules").join(release);
    fs::create_dir_all(&linked).map_err(|e| ImageError::io(&linked, e))?;
    for entry in fs::read_dir(modules_dir).map_err(|e| ImageError::io(modules_dir, e))? {
        let entry = entry.map_err(|e| ImageError::io(modules_dir, e))?;
        let link = linked.join(entry.file_name());
        std::os::unix::fs::symlink(entry.path(), &link).map_err(|e| ImageError::io(&link, e))?;
    }
    let mut cmd = DEPMOD.command()?;
    cmd.arg("-b").arg(scratch).arg(release);
    DEPMOD.run(
        &mut cmd,
        &format!("computing the module tables of {}", modules_dir.display()),
    )?;
    Ok(linked)
}
