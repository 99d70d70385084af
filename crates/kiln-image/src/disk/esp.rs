//! The EFI system partition: systemd-boot, its loader configuration, and each bootable
//! partition's kernel and initrd under `/<partition name>/`.
//!
//! It is built as a FAT32 image file of its own (mkfs.vfat sizes its clusters from the
//! file) and filled with mtools, every time stamped `SOURCE_DATE_EPOCH`.

use crate::tools::mkfs_vfat;
use crate::tools::mtools::FatImage;
use crate::{ImageError, KernelFiles};
use std::fs;
use std::path::{Path, PathBuf};

/// Where Debian's `systemd-boot-efi` package installs the x86-64 boot loader.
pub(crate) const SYSTEMD_BOOT: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
/// The ESP's FAT label.
pub(crate) const ESP_LABEL: &str = "ESP";

/// One boot menu entry.
#[derive(Debug, Clone)]
pub(crate) struct BootEntry {
    /// The partition name: the entry file is `/loader/entries/<name>.conf` and the
    /// kernel and initrd go to `/<name>/`.
    pub name: String,
    pub title: String,
    pub kernel: KernelFiles,
    /// Kernel command line.
    pub options: String,
}

/// What goes into the ESP.
#[derive(Debug, Clone)]
pub(crate) struct EspContent {
    /// The systemd-boot binary (host path).
    pub loader: PathBuf,
    pub entries: Vec<BootEntry>,
    /// Name of the entry booted by default.
    pub default: String,
}

/// The systemd-boot binary to install: the image's own when its default partition has
/// one (the image then does not depend on the host's version), else the host's.
pub(crate) fn find_systemd_boot(default_rootfs: &Path) -> Result<PathBuf, ImageError> {
    let in_image = crate::osinfo::resolve_in_root(default_rootfs, Path::new(SYSTEMD_BOOT))?;
    let host = Path::new("/").join(SYSTEMD_BOOT);
    in_image
        .filter(|p| p.is_file())
        .or_else(|| host.is_file().then_some(host.clone()))
        .ok_or_else(|| {
            ImageError::Tool(format!(
                "{} is missing: UEFI images boot with systemd-boot; install the Debian \
                 package `systemd-boot-efi` (apt-get install systemd-boot-efi)",
                host.display()
            ))
        })
}

/// Bytes the ESP's files take: the loader twice, kernels and initrds.
pub(crate) fn payload_bytes(content: &EspContent) -> Result<u64, ImageError> {
    let size = |p: &Path| {
        fs::metadata(p)
            .map(|m| m.len())
            .map_err(|e| ImageError::io(p, e))
    };
    let mut total = 2 * size(&content.loader)?;
    for entry in &content.entries {
        total += size(&entry.kernel.vmlinuz)?;
        if let Some(initrd) = &entry.kernel.initrd {
            total += size(initrd)?;
        }
    }
    Ok(total)
}

/// `/loader/loader.conf`: boot the default at once; keep the firmware's console mode.
pub(crate) fn loader_conf(default: &str) -> String {
    format!("default {default}.conf\ntimeout 0\nconsole-mode keep\n")
}

/// `/loader/entries/<name>.conf` (Boot Loader Specification, type 1).
pub(crate) fn entry_conf(entry: &BootEntry) -> String {
    let mut text = format!(
        "title {}\nversion {}\nlinux /{}/vmlinuz\n",
        entry.title, entry.kernel.release, entry.name
    );
    if entry.kernel.initrd.is_some() {
        text.push_str(&format!("initrd /{}/initrd.img\n", entry.name));
    }
    text.push_str(&format!("options {}\n", entry.options));
    text
}

/// Makes the ESP as the file `image` of `size` bytes, for a partition starting at
/// sector `first_sector`. Small text files are staged in `work_dir`.
pub(crate) fn build(
    image: &Path,
    size: u64,
    volume_id: u32,
    first_sector: u64,
    content: &EspContent,
    epoch: i64,
    work_dir: &Path,
) -> Result<(), ImageError> {
    let file = fs::File::create(image).map_err(|e| ImageError::io(image, e))?;
    file.set_len(size).map_err(|e| ImageError::io(image, e))?;
    drop(file);
    mkfs_vfat::format_fat32(image, volume_id, ESP_LABEL, first_sector)?;
    let fat = FatImage {
        path: image,
        time: epoch,
    };
    let mut dirs = Vec::new();
    fat.mkdir_all("/EFI/BOOT", &mut dirs)?;
    fat.mkdir_all("/EFI/systemd", &mut dirs)?;
    fat.copy_in(&content.loader, "/EFI/BOOT/BOOTX64.EFI")?;
    fat.copy_in(&content.loader, "/EFI/systemd/systemd-bootx64.efi")?;
    fat.mkdir_all("/loader/entries", &mut dirs)?;
    let text = |name: &str, body: String| -> Result<PathBuf, ImageError> {
        let path = work_dir.join(name);
        fs::write(&path, body).map_err(|e| ImageError::io(&path, e))?;
        Ok(path)
    };
    fat.copy_in(
        &text("loader.conf", loader_conf(&content.default))?,
        "/loader/loader.conf",
    )?;
    for entry in &content.entries {
        let conf = text(&format!("entry-{}.conf", entry.name), entry_conf(entry))?;
        fat.copy_in(&conf, &format!("/loader/entries/{}.conf", entry.name))?;
        fat.mkdir_all(&format!("/{}", entry.name), &mut dirs)?;
        fat.copy_in(&entry.kernel.vmlinuz, &format!("/{}/vmlinuz", entry.name))?;
        if let Some(initrd) = &entry.kernel.initrd {
            fat.copy_in(initrd, &format!("/{}/initrd.img", entry.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(initrd: bool) -> BootEntry {
        BootEntry {
            name: "web".into(),
            title: "Debian GNU/Linux 12 (bookworm)".into(),
            kernel: KernelFiles {
                vmlinuz: "/r/boot/vmlinuz-6.1.0-26-amd64".into(),
                initrd: initrd.then(|| "/r/boot/initrd.img-6.1.0-26-amd64".into()),
                release: "6.1.0-26-amd64".into(),
            },
            options: "root=PARTUUID=x rw".into(),
        }
    }

    #[test]
    fn entry_names_kernel_initrd_and_options() {
        assert_eq!(
            entry_conf(&entry(true)),
            "title Debian GNU/Linux 12 (bookworm)\nversion 6.1.0-26-amd64\n\
             linux /web/vmlinuz\ninitrd /web/initrd.img\noptions root=PARTUUID=x rw\n"
        );
        assert!(!entry_conf(&entry(false)).contains("initrd"));
    }

    #[test]
    fn loader_boots_the_default_at_once() {
        assert_eq!(
            loader_conf("web"),
            "default web.conf\ntimeout 0\nconsole-mode keep\n"
        );
    }
}
