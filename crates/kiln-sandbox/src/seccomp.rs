//! The fast-sync seccomp filter: the sync family of system calls returns 0 at once.
//!
//! Build steps (dpkg above all) fsync every file they write; the layer is committed
//! atomically by the store afterwards, so those flushes only cost time.

use std::collections::BTreeMap;

use nix::errno::Errno;
use seccompiler::{sock_filter, BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Native system calls that flush data to disk.
const SYNC_SYSCALLS: [i64; 6] = [
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync,
    libc::SYS_syncfs,
    libc::SYS_msync,
    libc::SYS_sync_file_range,
];

#[cfg(target_arch = "x86_64")]
const NATIVE: Option<(TargetArch, u32)> = Some((TargetArch::x86_64, 0xC000_003E)); // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const NATIVE: Option<(TargetArch, u32)> = Some((TargetArch::aarch64, 0xC000_00B7)); // AUDIT_ARCH_AARCH64
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const NATIVE: Option<(TargetArch, u32)> = None;

/// Offset of `arch` in `struct seccomp_data` (after the 32-bit syscall number).
const SECCOMP_DATA_ARCH_OFFSET: u32 = 4;
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_RET_K: u16 = 0x06;

/// Compiles the fast-sync filter: the sync family returns 0 (`SECCOMP_RET_ERRNO` with errno
/// 0), everything else is allowed.
///
/// seccompiler's program kills a process making a system call of another architecture
/// (e.g. a 32-bit i386 program on x86_64); we put an arch check in front that lets those
/// through unfiltered, so such programs run and merely sync for real.
pub(crate) fn fast_sync_program() -> Result<BpfProgram, String> {
    let (arch, audit_arch) = NATIVE.ok_or_else(|| {
        format!(
            "fast_sync is only implemented for x86_64 and aarch64, not {}; turn it off",
            std::env::consts::ARCH
        )
    })?;
    let rules = SYNC_SYSCALLS
        .iter()
        .map(|&nr| (nr, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(0), arch)
        .map_err(|e| format!("build the fast_sync seccomp filter: {e}"))?;
    let native: BpfProgram = filter
        .try_into()
        .map_err(|e| format!("compile the fast_sync seccomp filter: {e}"))?;
    let mut program = vec![
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SECCOMP_DATA_ARCH_OFFSET,
        },
        sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 1,
            jf: 0,
            k: audit_arch,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    program.extend(native);
    Ok(program)
}

/// Installs `program` on the calling thread.
///
/// Without `no_new_privs`: we call this as root (CAP_SYS_ADMIN) before dropping to the
/// step's user, so setuid programs such as `sudo` keep working in user steps, as they do
/// in OBuilder. The filter only turns syncs into no-ops, so it grants nothing to abuse.
pub(crate) fn install(program: &BpfProgram) -> Result<(), Errno> {
    let len = u16::try_from(program.len()).map_err(|_| Errno::E2BIG)?;
    let fprog = libc::sock_fprog {
        len,
        // seccompiler's sock_filter is #[repr(C)] with the kernel's layout, like libc's.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `program`, which outlives the call; the kernel copies it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    Errno::result(rc).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_starts_with_foreign_arch_pass_through() {
        let program = fast_sync_program().unwrap();
        assert_eq!(program[0].k, SECCOMP_DATA_ARCH_OFFSET);
        assert_eq!(program[2].k, libc::SECCOMP_RET_ALLOW);
        // seccompiler's own arch check follows, then the rules.
        assert!(program.len() > 3 + 3 + SYNC_SYSCALLS.len());
    }

    /// fsync(-1) fails with EBADF, unless the filter answers 0 before the kernel looks.
    /// Needs root (the filter is installed without no_new_privs).
    #[test]
    fn filter_turns_sync_calls_into_successful_no_ops() {
        let program = fast_sync_program().unwrap();
        // SAFETY: plain syscalls; fsync(-1) touches nothing.
        assert_eq!(
            unsafe { libc::fsync(-1) },
            -1,
            "fsync(-1) should fail unfiltered"
        );
        // SAFETY: the child only makes system calls and _exits (no allocation, no locks).
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let installed = install(&program).is_ok();
            // SAFETY: as above.
            let (fsync, sync_range, pid) = unsafe {
                (
                    libc::fsync(-1),
                    libc::sync_file_range(-1, 0, 0, 0),
                    libc::getpid(),
                )
            };
            let ok = installed && fsync == 0 && sync_range == 0 && pid > 0;
            // SAFETY: ends the forked child without running the parent's destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }
}
