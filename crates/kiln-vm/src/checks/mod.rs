//! Acceptance checks (`(test …)` in a spec) run against a booted VM.
//!
//! Checks run in order. Each retries with a short, bounded backoff until it
//! passes or its own timeout runs out; until the first check passes, the boot
//! timeout also applies (the first checks implicitly wait for the boot).
//! Failures say what was expected and what was seen.

mod http;
mod port;
mod tcp;

use std::time::{Duration, Instant};

use kiln_spec::{Check, CheckKind, TestSpec};
use serde::Serialize;

use crate::accel::Accel;
use crate::error::Result;
use crate::qemu::{Vm, VmConfig};

/// How long the first checks may wait for the guest to boot when the spec
/// gives no `(boot-timeout …)`.
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// How many console lines a report keeps.
pub const SERIAL_TAIL_LINES: usize = 40;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckResult {
    pub name: String,
    pub passed: bool,
    /// How long the check ran.
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    /// When it finished, counted from the VM's start.
    #[serde(serialize_with = "seconds")]
    pub finished: Duration,
    /// What was seen (on success) or what was expected and seen instead.
    pub message: String,
}

/// The outcome of a whole `(test …)` run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestReport {
    pub checks: Vec<CheckResult>,
    /// From the VM's start until the first check passed (`None`: none did).
    #[serde(serialize_with = "optional_seconds")]
    pub boot_time: Option<Duration>,
    /// From the VM's start until it was shut down.
    #[serde(serialize_with = "seconds")]
    pub total: Duration,
    pub accel: Accel,
    /// The console's last lines, for diagnosing failures.
    pub serial_log_tail: String,
}

impl TestReport {
    /// True when every check passed.
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    /// How many checks failed.
    pub fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

fn optional_seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A description of `check` for reports, unless it was given a `(name …)`.
pub fn check_name(check: &Check) -> String {
    if let Some(name) = &check.name {
        return name.clone();
    }
    match &check.kind {
        CheckKind::Console { expect } => format!("console shows {expect:?}"),
        CheckKind::Port { port } => format!("port {port} accepts connections"),
        CheckKind::Http {
            port,
            path,
            status,
            body,
        } => match body {
            Some(body) => format!("GET {path} on port {port} answers {status} with {body:?}"),
            None => format!("GET {path} on port {port} answers {status}"),
        },
        CheckKind::Tcp { port, send, expect } => {
            format!("port {port} answers {send:?} with {expect:?}")
        }
    }
}

/// The guest ports `checks` connect to, in first-use order.
pub fn guest_ports<'a>(checks: impl IntoIterator<Item = &'a Check>) -> Vec<u16> {
    let mut ports = Vec::new();
    for check in checks {
        let port = match check.kind {
            CheckKind::Console { .. } => continue,
            CheckKind::Port { port }
            | CheckKind::Http { port, .. }
            | CheckKind::Tcp { port, .. } => port,
        };
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    ports
}

/// Boots `cfg` (with the test's memory and CPUs, and a forward for every port
/// the checks use), runs the checks in order, and shuts the VM down.
///
/// An `Err` means the VM could not be run at all; failed checks are in the report.
pub fn run_test(mut cfg: VmConfig, test: &TestSpec) -> Result<TestReport> {
    if let Some(memory) = test.memory_mb {
        cfg.memory_mb = memory;
    }
    if let Some(cpus) = test.cpus {
        cfg.cpus = cpus;
    }
    let checks: Vec<&Check> = test.checks.iter().map(|c| &c.value).collect();
    for port in guest_ports(checks.iter().copied()) {
        cfg.ensure_forward(port);
    }
    let boot_timeout = test
        .boot_timeout
        .map(|s| Duration::from_secs(u64::from(s)))
        .unwrap_or(DEFAULT_BOOT_TIMEOUT);

    let mut vm = Vm::start(cfg)?;
    let results = run_checks(&vm, checks, boot_timeout);
    let boot_time = results.iter().find(|c| c.passed).map(|c| c.finished);
    let serial_log_tail = vm.serial_tail(SERIAL_TAIL_LINES);
    if let Err(e) = vm.shutdown() {
        tracing::warn!("stopping the VM after its checks: {e}");
    }
    Ok(TestReport {
        checks: results,
        boot_time,
        total: vm.started_at().elapsed(),
        accel: vm.accel(),
        serial_log_tail,
    })
}

/// Runs `checks` in order against `vm`. Until one passes, each may also wait
/// until `boot_timeout` after the VM's start.
pub fn run_checks<'a>(
    vm: &Vm,
    checks: impl IntoIterator<Item = &'a Check>,
    boot_timeout: Duration,
) -> Vec<CheckResult> {
    let boot_deadline = vm.started_at() + boot_timeout;
    let mut booted = false;
    let mut results = Vec::new();
    for check in checks {
        let started = Instant::now();
        let mut deadline = started + Duration::from_secs(u64::from(check.timeout));
        if !booted {
            deadline = deadline.max(boot_deadline);
        }
        let outcome = run_one(vm, &check.kind, deadline);
        let result = CheckResult {
            name: check_name(check),
            passed: outcome.is_ok(),
            elapsed: started.elapsed(),
            finished: vm.started_at().elapsed(),
            message: outcome.unwrap_or_else(|failure| failure),
        };
        booted |= result.passed;
        tracing::info!(check = %result.name, passed = result.passed, "{}", result.message);
        results.push(result);
    }
    results
}

/// `Ok(what was seen)` or `Err(what was expected, and seen instead)`.
fn run_one(vm: &Vm, kind: &CheckKind, deadline: Instant) -> std::result::Result<String, String> {
    match kind {
        CheckKind::Console { expect } => {
            let timeout = deadline.saturating_duration_since(Instant::now());
            vm.wait_console(expect, timeout)
                .map(|at| format!("seen {:.1}s after the VM started", at.as_secs_f64()))
                .map_err(|e| e.to_string())
        }
        CheckKind::Port { port } => port::check(vm, *port, deadline),
        CheckKind::Http {
            port,
            path,
            status,
            body,
        } => http::check(vm, *port, path, *status, body.as_deref(), deadline),
        CheckKind::Tcp { port, send, expect } => tcp::check(vm, *port, send, expect, deadline),
    }
}

/// The loopback port forwarded to `guest`, or a failure naming the problem.
fn forwarded(vm: &Vm, guest: u16) -> std::result::Result<u16, String> {
    vm.host_port(guest).ok_or_else(|| {
        format!("guest port {guest} is not forwarded: add a forward for it to the VM configuration")
    })
}

/// Pacing between attempts: 50 ms doubling to 250 ms, never past the deadline. Short,
/// because the pause is added to the boot time `kiln test` reports: an attempt costs
/// the host one loopback connection, a late verdict costs every user seconds.
struct Retry {
    deadline: Instant,
    delay: Duration,
    started: Instant,
}

impl Retry {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_millis(250);

    fn new(deadline: Instant) -> Retry {
        Retry {
            deadline,
            delay: Self::FIRST,
            started: Instant::now(),
        }
    }

    /// Time left before the deadline.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// How long the check has been retrying.
    fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits before the next attempt; `false` once the deadline has passed.
    fn pause(&mut self) -> bool {
        let left = self.left();
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.delay.min(left));
        self.delay = (self.delay * 2).min(Self::MAX);
        true
    }
}

/// A failure for a VM that is gone, or `None` while it runs.
fn vm_gone(vm: &Vm) -> Option<String> {
    vm.exit_status()
        .map(|_| vm.exited_error("while the check ran").to_string())
}

/// At most `max` characters of `bytes`, quoted with escapes, for messages.
fn excerpt(bytes: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let cut: String = text.chars().take(max).collect();
    if cut.len() < text.len() {
        format!("{cut:?}… ({} bytes in all)", bytes.len())
    } else {
        format!("{cut:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: CheckKind) -> Check {
        Check {
            name: None,
            timeout: 5,
            kind,
        }
    }

    #[test]
    fn names_describe_checks() {
        let c = check(CheckKind::Http {
            port: 80,
            path: "/".into(),
            status: 200,
            body: Some("hi".into()),
        });
        assert_eq!(check_name(&c), "GET / on port 80 answers 200 with \"hi\"");
        let mut named = check(CheckKind::Port { port: 22 });
        named.name = Some("ssh".into());
        assert_eq!(check_name(&named), "ssh");
    }

    #[test]
    fn ports_are_collected_once_in_order() {
        let checks = [
            check(CheckKind::Console { expect: "x".into() }),
            check(CheckKind::Tcp {
                port: 7777,
                send: "a".into(),
                expect: "b".into(),
            }),
            check(CheckKind::Port { port: 80 }),
            check(CheckKind::Port { port: 7777 }),
        ];
        assert_eq!(guest_ports(&checks), vec![7777, 80]);
    }

    #[test]
    fn excerpts_are_quoted_and_bounded() {
        assert_eq!(excerpt(b"a\r\nb", 10), "\"a\\r\\nb\"");
        let long = excerpt(&[b'x'; 50], 5);
        assert!(
            long.starts_with("\"xxxxx\"…") && long.contains("50 bytes"),
            "{long}"
        );
    }

    #[test]
    fn retry_stops_at_the_deadline() {
        let mut retry = Retry::new(Instant::now() + Duration::from_millis(250));
        let mut pauses = 0;
        while retry.pause() {
            pauses += 1;
            assert!(pauses < 10, "retry must end");
        }
        assert!(retry.waited() >= Duration::from_millis(250));
    }

    #[test]
    fn report_counts_failures() {
        let result = |passed| CheckResult {
            name: "c".into(),
            passed,
            elapsed: Duration::ZERO,
            finished: Duration::ZERO,
            message: String::new(),
        };
        let report = TestReport {
            checks: vec![result(true), result(false)],
            boot_time: None,
            total: Duration::from_millis(1500),
            accel: Accel::Tcg,
            serial_log_tail: String::new(),
        };
        assert!(!report.passed());
        assert_eq!(report.failures(), 1);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["total"], 1.5);
        assert_eq!(json["accel"], "tcg");
    }
}
