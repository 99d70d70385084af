//! The EFI system partition: systemd-boot, its loader configuration, and each bootable
//! partition's kernel and initrd under `/<partition name>/`.
//!
//! Where kiln's boot initramfs (kiln-init, see [`crate::boot_initrd`]) can boot a
//! partition, its entry loads that one (`kiln-initrd.img`): a distribution initramfs
//! starts udev and waits for it to settle, seconds of every emulated boot. The image's
//! own initramfs stays on the ESP with an entry of its own, `<name>-initramfs`, in the
//! boot menu (any key held at power-on shows it), for hardware whose disk needs a driver
//! kiln-init does not carry.
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
    /// kiln's boot initramfs for this kernel (host path), loaded instead of the image's.
    pub kiln_initrd: Option<PathBuf>,
    /// Kernel command line.
    pub options: String,
}

/// The ESP name of kiln's boot initramfs, beside `vmlinuz` and `initrd.img`.
pub(crate) const KILN_INITRD: &str = "kiln-initrd.img";
/// Suffix of the entry that boots a partition with the image's own initramfs when the
/// default one boots it with kiln's.
pub(crate) const IMAGE_INITRD_ENTRY_SUFFIX: &str = "-initramfs";

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
        for initrd in entry.kernel.initrd.iter().chain(&entry.kiln_initrd) {
            total += size(initrd)?;
        }
    }
    Ok(total)
}

/// `/loader/loader.conf`: boot the default at once; keep the firmware's console mode.
pub(crate) fn loader_conf(default: &str) -> String {
    format!("default {default}.conf\ntimeout 0\nconsole-mode keep\n")
}

/// The loader entries of one boot entry, as `(file stem, text)`: `/loader/entries/
/// <stem>.conf` (Boot Loader Specification, type 1). With kiln's initramfs, a second
/// entry boots the same kernel with the image's own.
pub(crate) fn entry_confs(entry: &BootEntry) -> Vec<(String, String)> {
    let conf = |title: &str, initrd: Option<&str>| {
        let mut text = format!(
            "title {title}\nversion {}\nlinux /{}/vmlinuz\n",
            entry.kernel.release, entry.name
        );
        if let Some(initrd) = initrd {
            text.push_str(&format!("initrd /{}/{initrd}\n", entry.name));
        }
        text.push_str(&format!("options {}\n", entry.options));
        text
    };
    let image_initrd = entry.kernel.initrd.as_ref().map(|_| "initrd.img");
    match &entry.kiln_initrd {
        None => vec![(entry.name.clone(), conf(&entry.title, image_initrd))],
        Some(_) => {
            let mut confs = vec![(entry.name.clone(), conf(&entry.title, Some(KILN_INITRD)))];
            if image_initrd.is_some() {
                confs.push((
                    format!("{}{IMAGE_INITRD_ENTRY_SUFFIX}", entry.name),
                    conf(
                        &format!("{} (its own initramfs)", entry.title),
                        image_initrd,
                    ),
                ));
            }
            confs
        }
    }
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
        for (stem, body) in entry_confs(entry) {
            let conf = text(&format!("entry-{stem}.conf"), body)?;
            fat.copy_in(&conf, &format!("/loader/entries/{stem}.conf"))?;
        }
        fat.mkdir_all(&format!("/{}", entry.name), &mut dirs)?;
        fat.copy_in(&entry.kernel.vmlinuz, &format!("/{}/vmlinuz", entry.name))?;
        if let Some(initrd) = &entry.kernel.initrd {
            fat.copy_in(initrd, &format!("/{}/initrd.img", entry.name))?;
        }
        if let Some(initrd) = &entry.kiln_initrd {
            fat.copy_in(initrd, &format!("/{}/{KILN_INITRD}", entry.name))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(initrd: bool) -> BootEntry {
        BootEntry {
            kiln_initrd: None,
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
            entry_confs(&entry(true)),
            [(
                "web".to_string(),
                "title Debian GNU/Linux 12 (bookworm)\nversion 6.1.0-26-amd64\n\
                 linux /web/vmlinuz\ninitrd /web/initrd.img\noptions root=PARTUUID=x rw\n"
                    .to_string()
            )]
        );
        assert!(!entry_confs(&entry(false))[0].1.contains("initrd"));
    }

    #[test]
    fn kilns_initramfs_boots_by_default_and_the_images_own_stays_in_the_menu() {
        let mut e = entry(true);
        e.kiln_initrd = Some("/scratch/kiln-initrd.img".into());
        let confs = entry_confs(&e);
        assert_eq!(confs.len(), 2);
        assert_eq!(confs[0].0, "web");
        assert!(
            confs[0].1.contains("initrd /web/kiln-initrd.img\n"),
            "{}",
            confs[0].1
        );
        assert_eq!(confs[1].0, "web-initramfs");
        assert!(confs[1]
            .1
            .contains("title Debian GNU/Linux 12 (bookworm) (its own initramfs)\n"));
        assert!(confs[1].1.contains("initrd /web/initrd.img\n"));
        assert!(confs
            .iter()
            .all(|(_, t)| t.contains("options root=PARTUUID=x rw\n")));
        // A kernel without an initramfs of its own: kiln's entry only.
        let mut e = entry(false);
        e.kiln_initrd = Some("/scratch/kiln-initrd.img".into());
        assert_eq!(entry_confs(&e).len(), 1);
    }

    #[test]
    fn loader_boots_the_default_at_once() {
        assert_eq!(
            loader_conf("web"),
            "default web.conf\ntimeout 0\nconsole-mode keep\n"
        );
    }
}
