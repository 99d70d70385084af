//! Accelerator detection on this machine: it must answer quickly and never
//! hang, whatever `/dev/kvm` does, and what it answers must be true.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_vm::accel::{self, Accel, PROBE_TIMEOUT};
use kiln_vm::Vm;
use support::*;

#[test]
fn detection_is_quick_and_truthful() {
    let qemu = Path::new("qemu-system-x86_64");
    let started = Instant::now();
    let detection = accel::probe(qemu, PROBE_TIMEOUT);
    let took = started.elapsed();
    eprintln!("probe: {detection:?} in {took:?}");
    assert!(took < Duration::from_secs(5), "the probe took {took:?}");
    assert!(!detection.reason.is_empty());
    match detection.accel {
        // A KVM verdict is checked by booting the test guest with it.
        Accel::Kvm => {
            let mut cfg = kernel_config("kiln.nonet");
            cfg.accel = Some(Accel::Kvm);
            let vm = Vm::start(cfg).unwrap();
            vm.wait_console(READY, Duration::from_secs(30)).unwrap();
        }
        Accel::Tcg => {
            let kvm_exists = Path::new("/dev/kvm").exists();
            assert!(
                !kvm_exists || detection.reason.contains("KVM is not usable"),
                "{detection:?}"
            );
        }
    }
}

#[test]
fn detection_is_cached_per_process() {
    // Whatever the first call costs (an override or a probe), the second is free.
    let first = accel::detection(Path::new("qemu-system-x86_64"));
    let started = Instant::now();
    let second = accel::detection(Path::new("qemu-system-x86_64"));
    assert_eq!(first, second);
    assert!(started.elapsed() < Duration::from_millis(100));
}

#[test]
fn probe_with_missing_qemu_falls_back_to_tcg() {
    let detection = accel::probe(Path::new("/nonexistent/qemu-system-x86_64"), PROBE_TIMEOUT);
    assert_eq!(detection.accel, Accel::Tcg);
}
