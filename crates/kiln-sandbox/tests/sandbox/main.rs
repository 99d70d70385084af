//! Integration tests of the namespace sandbox and the mount helpers, against the real
//! kernel: namespaces, overlayfs, seccomp, and a busybox root filesystem.
//!
//! Needs root and `busybox-static` (`apt-get install -y busybox-static`).
//! `main` calls `kiln_sandbox::maybe_run_init()` first, so this binary is its own sandbox
//! init (`/proc/self/exe`). Run a subset with `cargo test -p kiln-sandbox --test sandbox -- NAME`.

mod behaviour;
mod fixture;
mod lifecycle;
mod mounts;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use fixture::{Fixture, TestResult, BUSYBOX};

/// First argument that turns this binary into a test helper process.
pub const HELPER_ARG: &str = "__kiln-sandbox-test-helper";

type Test = (&'static str, fn(&Fixture) -> TestResult);

const TESTS: &[Test] = &[
    ("exit_codes_and_signals", behaviour::exit_codes_and_signals),
    ("traced_paths", behaviour::traced_paths),
    (
        "command_not_found_is_127",
        behaviour::command_not_found_is_127,
    ),
    (
        "output_is_streamed_and_complete",
        behaviour::output_is_streamed_and_complete,
    ),
    ("env_cwd_uid_gid", behaviour::env_cwd_uid_gid),
    (
        "command_inherits_only_stdio",
        behaviour::command_inherits_only_stdio,
    ),
    (
        "upper_holds_only_the_commands_writes",
        behaviour::upper_holds_only_the_commands_writes,
    ),
    (
        "copied_up_dir_kept_when_command_wrote_there",
        behaviour::copied_up_dir_kept_when_command_wrote_there,
    ),
    (
        "existing_mountpoints_leave_no_trace",
        behaviour::existing_mountpoints_leave_no_trace,
    ),
    ("flat_dir_root", behaviour::flat_dir_root),
    ("pid_namespace", behaviour::pid_namespace),
    ("hostname_is_set", behaviour::hostname_is_set),
    (
        "network_is_only_loopback_and_up",
        behaviour::network_is_only_loopback_and_up,
    ),
    (
        "host_network_shows_host_interfaces",
        behaviour::host_network_shows_host_interfaces,
    ),
    (
        "dev_has_exactly_the_expected_nodes",
        behaviour::dev_has_exactly_the_expected_nodes,
    ),
    ("sys_is_read_only", behaviour::sys_is_read_only),
    ("tmp_is_an_empty_tmpfs", behaviour::tmp_is_an_empty_tmpfs),
    (
        "secret_readable_read_only_and_gone_afterwards",
        behaviour::secret_readable_read_only_and_gone_afterwards,
    ),
    (
        "cache_bind_writable_and_read_only",
        behaviour::cache_bind_writable_and_read_only,
    ),
    ("fast_sync_filter", behaviour::fast_sync_filter),
    (
        "setup_failure_names_the_step",
        behaviour::setup_failure_names_the_step,
    ),
    ("failed_setup_cleans_up", behaviour::failed_setup_cleans_up),
    (
        "layers_stack_and_paths_are_escaped",
        behaviour::layers_stack_and_paths_are_escaped,
    ),
    (
        "mounts_inside_tmp_and_dev",
        behaviour::mounts_inside_tmp_and_dev,
    ),
    (
        "symlinks_cannot_escape_the_root",
        behaviour::symlinks_cannot_escape_the_root,
    ),
    (
        "concurrent_runs_are_independent",
        behaviour::concurrent_runs_are_independent,
    ),
    (
        "background_process_is_killed_and_run_returns",
        lifecycle::background_process_is_killed_and_run_returns,
    ),
    (
        "sigint_to_the_process_group_ends_the_sandbox",
        lifecycle::sigint_to_the_process_group_ends_the_sandbox,
    ),
    (
        "cancel_flag_ends_the_running_step",
        lifecycle::cancel_flag_ends_the_running_step,
    ),
    (
        "killed_kiln_leaves_no_sandbox",
        lifecycle::killed_kiln_leaves_no_sandbox,
    ),
    ("mount_union_and_whiteouts", mounts::union_and_whiteouts),
];

fn main() {
    kiln_sandbox::maybe_run_init();
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(HELPER_ARG) {
        std::process::exit(run_helper(&args[2..]));
    }
    let filters: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let fixture = match preflight().and_then(|()| Fixture::new()) {
        Ok(f) => f,
        Err(e) => {
            println!("cannot run the sandbox tests: {e}");
            println!("0 passed, 1 failed");
            std::process::exit(1);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    let started = Instant::now();
    for (name, test) in TESTS
        .iter()
        .filter(|(n, _)| filters.is_empty() || filters.iter().any(|f| n.contains(f)))
    {
        let start = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| test(&fixture)))
            .unwrap_or_else(|panic| Err(format!("panicked: {}", panic_message(&panic))));
        let ms = start.elapsed().as_millis();
        match result {
            Ok(()) => {
                passed += 1;
                println!("test {name} ... ok ({ms} ms)");
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED ({ms} ms)\n    {}",
                    e.replace('\n', "\n    ")
                );
            }
        }
    }
    drop(fixture); // exit() below skips destructors; remove the temp dirs now
    let verdict = if failed == 0 { "ok" } else { "FAILED" };
    let secs = started.elapsed().as_secs_f64();
    // libtest's summary line too, which scripts/test.sh adds up across the workspace.
    println!("test result: {verdict}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out; finished in {secs:.2}s");
    println!("{passed} passed, {failed} failed");
    std::process::exit(if failed == 0 { 0 } else { 1 });
}

fn preflight() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("they need root (namespaces, mounts); run as root".into());
    }
    if !std::path::Path::new(BUSYBOX).exists() {
        return Err(format!(
            "{BUSYBOX} is missing; install it with: apt-get install -y busybox-static"
        ));
    }
    Ok(())
}

fn run_helper(args: &[String]) -> i32 {
    let result = match args.first().map(String::as_str) {
        Some("interrupt") => lifecycle::helper_interrupt(&args[1..]),
        Some("stand-in") => lifecycle::helper_stand_in(&args[1..]),
        Some("mounts") => mounts::helper_mounts(&args[1..]),
        other => Err(format!("unknown helper {other:?}")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}
