//! kiln appliances: a RAM-only system for one program. The program's training run is
//! traced in the namespace sandbox (`kiln_sandbox::RunSpec::trace`); [`closure`] turns the
//! traced paths into the files the appliance needs; [`assemble`] writes them, kiln-init
//! (appliance mode) as `/init`, the `/app` scripts and the virtio drivers as a cpio
//! initrd with `kiln_image::cpio`.

pub mod assemble;
pub mod closure;
pub mod elf;
pub mod root;
