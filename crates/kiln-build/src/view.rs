//! Read-only views of a layer's files, whatever its payload.

use kiln_sandbox::mount::MountGuard;
use kiln_sandbox::DiskView;
use std::path::Path;

/// A layer's files: an overlay mount of a tree chain, or a disk layer seen through the
/// VM sandbox. Unmounted on drop.
pub(crate) enum TreeView {
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
