//! `run_test` against a real guest under TCG: every kind of check, passing and
//! failing, and the JUnit report read back by an XML parser.

mod support;

use std::time::Duration;

use kiln_spec::{Check, CheckKind, Located, Pos, TestSpec};
use kiln_vm::{run_checks, run_test, write_junit, Accel, TestReport};
use quick_xml::events::Event;
use support::*;

fn check(timeout: u32, kind: CheckKind) -> Located<Check> {
    Located::new(
        Check {
            name: None,
            timeout,
            kind,
        },
        Pos::default(),
    )
}

fn http(path: &str, status: u16, body: Option<&str>, timeout: u32) -> Located<Check> {
    check(
        timeout,
        CheckKind::Http {
            port: HTTP_PORT,
            path: path.into(),
            status,
            body: body.map(Into::into),
        },
    )
}

fn tcp(send: &str, expect: &str, timeout: u32) -> Located<Check> {
    check(
        timeout,
        CheckKind::Tcp {
            port: ECHO_PORT,
            send: send.into(),
            expect: expect.into(),
        },
    )
}

/// The spec's checks: the even-numbered ones pass, the others must fail.
fn spec() -> TestSpec {
    TestSpec {
        memory_mb: Some(256),
        cpus: Some(1),
        boot_timeout: Some(120),
        checks: vec![
            check(
                60,
                CheckKind::Console {
                    expect: READY.into(),
                },
            ),
            check(10, CheckKind::Port { port: HTTP_PORT }),
            check(3, CheckKind::Port { port: CLOSED_PORT }),
            http("/index.html", 200, Some(PAGE_TEXT), 10),
            http("/index.html", 200, Some("text that is not there"), 3),
            http("/missing.html", 200, None, 3),
            tcp("ping\n", "ping", 10),
            tcp("ping\n", "pong", 3),
        ],
    }
}

#[test]
fn run_test_reports_each_check_and_writes_junit() {
    let dir = tempfile::tempdir().unwrap();
    let serial_log = dir.path().join("serial.log");
    let mut cfg = kernel_config("");
    cfg.serial_log = Some(serial_log.clone());
    cfg.snapshot = true;

    let report = run_test(cfg, &spec()).expect("the VM runs");
    let summary: Vec<_> = report
        .checks
        .iter()
        .map(|c| format!("{} {}: {}", c.passed, c.name, c.message))
        .collect();
    eprintln!("{}", summary.join("\n"));
    let passed: Vec<bool> = report.checks.iter().map(|c| c.passed).collect();
    assert_eq!(
        passed,
        [true, true, false, true, false, false, true, false],
        "{summary:#?}\nconsole:\n{}",
        report.serial_log_tail
    );
    assert_eq!(report.accel, Accel::Tcg);
    assert!(!report.passed());
    assert_eq!(report.failures(), 4);

    let boot = report.boot_time.expect("the console check passed");
    assert_eq!(boot, report.checks[0].finished);
    assert!(report.total > boot);
    assert!(report.serial_log_tail.contains(READY));
    let logged = std::fs::read_to_string(&serial_log).unwrap();
    assert!(logged.contains(READY), "serial log: {logged}");

    assert_failures_are_clear(&report);
    assert_junit_reads_back(&report, dir.path());
}

fn assert_failures_are_clear(report: &TestReport) {
    let closed = &report.checks[2];
    assert!(
        closed.message.contains("port 81 is closed"),
        "{}",
        closed.message
    );
    // Fails within its own 3 s timeout (plus one attempt's slack), not the boot's.
    assert!(
        closed.elapsed < Duration::from_secs(5),
        "{:?}",
        closed.elapsed
    );

    let wrong_body = &report.checks[4].message;
    assert!(
        wrong_body.contains("\"text that is not there\"")
            && wrong_body.contains("status 200")
            && wrong_body.contains(PAGE_TEXT),
        "{wrong_body}"
    );
    let wrong_status = &report.checks[5].message;
    assert!(
        wrong_status.contains("expected status 200") && wrong_status.contains("status 404"),
        "{wrong_status}"
    );
    let wrong_reply = &report.checks[7].message;
    assert!(
        wrong_reply.contains("\"pong\"") && wrong_reply.contains("received \"ping\\n\""),
        "{wrong_reply}"
    );
    for failed in report.checks.iter().filter(|c| !c.passed) {
        assert!(failed.elapsed < Duration::from_secs(6), "{failed:?}");
    }
}

fn assert_junit_reads_back(report: &TestReport, dir: &std::path::Path) {
    let path = dir.join("junit.xml");
    write_junit(report, "kiln-vm <guest> & co", &path).unwrap();
    let xml = std::fs::read_to_string(&path).unwrap();

    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut testcases, mut failures, mut suite_attrs, mut system_out) =
        (0, 0, Vec::new(), String::new());
    let mut in_system_out = false;
    loop {
        match reader.read_event().expect("well-formed JUnit XML") {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testcase" => testcases += 1,
                b"failure" => failures += 1,
                b"system-out" => in_system_out = true,
                b"testsuite" => {
                    for a in e.attributes() {
                        let a = a.unwrap();
                        let key = String::from_utf8(a.key.as_ref().to_vec()).unwrap();
                        let value = a.unescape_value().unwrap().into_owned();
                        suite_attrs.push((key, value));
                    }
                }
                _ => {}
            },
            Event::Text(t) if in_system_out => system_out.push_str(&t.unescape().unwrap()),
            Event::End(e) if e.name().as_ref() == b"system-out" => in_system_out = false,
            Event::Eof => break,
            _ => {}
        }
    }
    assert_eq!((testcases, failures), (8, 4), "{xml}");
    let attr = |k: &str| {
        suite_attrs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    assert_eq!(attr("name"), "kiln-vm <guest> & co");
    assert_eq!(attr("tests"), "8");
    assert_eq!(attr("failures"), "4");
    assert!(system_out.contains(READY), "{system_out}");
}

/// An HTTP check started while the guest boots must pass soon after the
/// service comes up: requests sent too early must not hold it back.
#[test]
fn http_check_answers_soon_after_the_guest_is_up() {
    let mut cfg = kernel_config("");
    cfg.snapshot = true;
    cfg.forwards = vec![kiln_vm::Forward {
        host: 0,
        guest: HTTP_PORT,
    }];
    let vm = kiln_vm::Vm::start(cfg).unwrap();
    let page = http("/index.html", 200, Some(PAGE_TEXT), 120).value;
    let (ready_at, results) = std::thread::scope(|s| {
        let ready = s.spawn(|| {
            vm.wait_console(READY, Duration::from_secs(120))
                .expect("the guest boots")
        });
        let results = run_checks(&vm, [&page], Duration::ZERO);
        (ready.join().unwrap(), results)
    });
    let result = &results[0];
    assert!(result.passed, "{result:?}");
    // The guest prints READY right after starting httpd.
    let lag = result.finished.saturating_sub(ready_at);
    eprintln!(
        "ready after {ready_at:?}, page served after {:?}",
        result.finished
    );
    assert!(
        lag < Duration::from_secs(3),
        "the check lagged {lag:?} behind the boot"
    );
}
