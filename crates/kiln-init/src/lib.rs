//! kiln-init, the `/init` of the boot initramfs kiln writes for `--boot kernel` images,
//! the QEMU sandbox's in-guest agent (`kiln.agent`) and the init of `kiln appliance`'s
//! RAM-only systems (`kiln.appliance`).
//!
//! The program is one std-only file, `program.rs`, compiled by the build script into a
//! static executable; [`BINARY`] is that executable. Its configuration format is
//! described at the top of `program.rs` and written by `kiln_image::boot_initrd`.

pub mod agent_proto;

/// The static kiln-init executable, to be written to an initramfs as `/init`.
pub const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kiln-init"));

/// Where kiln-init reads its configuration, inside the initramfs.
pub const CONFIG_PATH: &str = "etc/kiln-init.conf";

#[cfg(test)]
#[path = "program.rs"]
#[allow(dead_code)]
// program.rs includes agent_proto.rs itself (it is built alone for the guest).
#[allow(clippy::duplicate_mod)]
mod program;

#[cfg(test)]
mod tests {
    #[test]
    fn binary_is_a_static_executable() {
        let elf = super::BINARY;
        assert_eq!(&elf[..4], b"\x7fELF");
        // No PT_INTERP program header: nothing to load before it runs.
        let text = String::from_utf8_lossy(elf);
        assert!(
            !text.contains("/lib64/ld-linux"),
            "kiln-init must be linked statically"
        );
    }
}
