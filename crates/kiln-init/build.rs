//! Compiles `src/program.rs` into a static executable (`$OUT_DIR/kiln-init`) that the
//! library embeds. It runs as the first process of a VM, before any shared library is
//! reachable, hence static; std only, so one rustc call builds it for the target cargo
//! builds for.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=src/program.rs");
    println!("cargo:rerun-if-changed=src/agent_proto.rs");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "kiln_init",
        ])
        .args(["--target", &target])
        .args([
            "-C",
            "opt-level=s",
            "-C",
            "panic=abort",
            "-C",
            "codegen-units=1",
        ])
        .args(["-C", "target-feature=+crt-static", "-C", "strip=symbols"])
        .arg("src/program.rs")
        .arg("-o")
        .arg(out.join("kiln-init"))
        .status()
        .expect("running rustc to build kiln-init");
    assert!(
        status.success(),
        "building the static kiln-init failed: linking statically needs the C library's \
         static archive (Debian package libc6-dev)"
    );
}
