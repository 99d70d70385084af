//! Read-only views of a layer's files, whatever its payload.

use crate::BuildError;
use kiln_sandbox::mount::{self, MountGuard};
use kiln_sandbox::{DiskView, Sandbox};
use kiln_spec::LayerId;
use kiln_store::{Store, DISK_FILE};
use std::path::Path;

/// A layer's files: an overlay mount of a tree chain, or a disk layer seen through the
/// VM sandbox. Unmounted on drop.
pub enum TreeView {
    Mount(MountGuard),
    Disk(DiskView),
}

impl TreeView {
    pub fn path(&self) -> &Path {
        match self {
            TreeView::Mount(m) => m.path(),
            TreeView::Disk(d) => &d.path,
        }
    }
}

/// A read-only view of `layer`'s files at `scratch/root`: an overlay mount of its chain,
/// or, for a disk layer, `vm`'s view of its disk (which may keep files in `scratch`).
pub fn open_layer(
    store: &dyn Store,
    vm: Option<&dyn Sandbox>,
    layer: &LayerId,
    scratch: &Path,
) -> Result<TreeView, BuildError> {
    let info = store
        .get(layer)?
        .ok_or_else(|| kiln_store::StoreError::NotFound(layer.to_string()))?;
    if info.meta.disk {
        let vm = vm.ok_or(BuildError::NoVmSandbox)?;
        let disk = store.layer_dir(layer).join(DISK_FILE);
        return Ok(TreeView::Disk(vm.open_disk(&disk, scratch)?));
    }
    Ok(TreeView::Mount(mount::mount_lower_readonly(
        &store.chain(layer)?,
        &scratch.join("root"),
    )?))
}

/// Whether the tree at `root` has a kernel to boot (`/boot/vmlinuz-*`, as Debian's
/// kernel packages install it).
pub(crate) fn has_kernel(root: &Path) -> bool {
    std::fs::read_dir(root.join("boot")).is_ok_and(|dir| {
        dir.flatten().any(|e| {
            e.file_name().to_string_lossy().starts_with("vmlinuz-")
                && e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink())
        })
    })
}
