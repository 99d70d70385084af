//! kiln's QEMU runner: boots disk images (or a kernel and initrd) under
//! `qemu-system-x86_64` and runs acceptance checks against them.
//!
//! - [`accel`]: KVM only when it really runs guest code (probed in a child with a
//!   hard timeout), else TCG; `KILN_ACCEL=tcg|kvm` overrides.
//! - [`qemu`]: [`VmConfig`] → a running [`Vm`]: UEFI (OVMF), direct kernel or
//!   legacy BIOS boot; virtio disk and network; loopback-only port forwards on
//!   a `restrict=on` user network (the guest reaches nothing else); a captured
//!   or interactive serial console; QMP control; `-snapshot`.
//! - [`checks`]: the spec's `(test …)` checks against a running VM, and
//!   [`run_test`] to boot, check and stop in one call.
//! - [`junit`]: a [`TestReport`] as JUnit XML.
//! - [`agent`]: [`AgentVm`], a VM running kiln-init's agent, driven over virtio-serial.
//! - [`sandbox`]: [`QemuSandbox`], build steps in VMs behind `kiln_sandbox::Sandbox`.
//! - [`ssh_runner`]: steps on imported VM bases over SSH ([`ssh`], [`ssh_keygen`]: the
//!   openssh-client programs).

pub mod accel;
pub mod agent;
pub mod checks;
pub mod disk_view;
mod error;
pub mod junit;
pub mod partitions;
pub mod qemu;
pub mod sandbox;
pub mod ssh;
pub mod ssh_keygen;
pub mod ssh_runner;

pub use accel::{detect, Accel, Detection};
pub use agent::AgentVm;
pub use checks::{run_checks, run_test, CheckResult, TestReport};
pub use error::{ExitStatusText, Result, VmError};
pub use junit::write_junit;
pub use qemu::{Boot, ConsoleMode, ExtraDisk, Firmware, Forward, Network, Vm, VmConfig};
pub use sandbox::QemuSandbox;
