//! `KILN_ACCEL` overrides detection without probing. Alone in its test binary
//! because it changes the process environment.

use std::time::{Duration, Instant};

use kiln_vm::{detect, Accel};

#[test]
fn kiln_accel_overrides_detection() {
    for (value, expected) in [
        ("kvm", Accel::Kvm),
        ("tcg", Accel::Tcg),
        ("KVM", Accel::Kvm),
    ] {
        std::env::set_var("KILN_ACCEL", value);
        let started = Instant::now();
        assert_eq!(detect(), expected, "KILN_ACCEL={value}");
        // No probe ran (a probe of a hanging /dev/kvm takes seconds).
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    std::env::remove_var("KILN_ACCEL");
}
