//! The files of a QEMU-built layer, read on the host: the layer's qcow2 chain is
//! converted to one sparse raw file (QEMU reads the chain; only allocated data is
//! written) and its ext4 filesystem mounted read-only through a loop device. Used to
//! look up a step's user, to copy from a VM-built stage, and by `kiln export`.

use kiln_image::tools::qemu_img;
use kiln_sandbox::mount::mount_ext4_image_readonly;
use kiln_sandbox::{DiskView, SandboxError};
use std::path::Path;

/// A read-only view of `disk` (qcow2, with its backing chain) at `scratch/root`; the
/// raw copy lives in `scratch` (which the caller removes after dropping the view).
pub fn open(disk: &Path, scratch: &Path) -> Result<DiskView, SandboxError> {
    let raw = scratch.join("disk.raw");
    qemu_img::convert_to_raw(disk, "qcow2", &raw)
        .map_err(|e| SandboxError::Setup(format!("reading the VM disk {}: {e}", disk.display())))?;
    let root = scratch.join("root");
    let mount = mount_ext4_image_readonly(&raw, &root)?;
    Ok(DiskView {
        path: root,
        guard: Box::new((mount, RemoveOnDrop(raw))),
    })
}

/// A file deleted on drop (after the mount declared before it is detached).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
