//! JUnit XML for a [`TestReport`]: one `<testcase>` per check, the console's
//! tail in `<system-out>`. The output depends on the report alone (no host
//! name, no wall-clock timestamp), so equal reports give equal files.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use crate::checks::TestReport;
use crate::error::{Result, VmError};

/// Writes `report` as JUnit XML to `path` (atomically: a temporary file next
/// to it, then a rename).
pub fn write_junit(report: &TestReport, suite_name: &str, path: &Path) -> Result<()> {
    let xml = junit_xml(report, suite_name);
    let io = |what, source| VmError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .map_err(|e| io("could not create a temporary file next to", e))?;
    std::io::Write::write_all(&mut tmp, xml.as_bytes())
        .map_err(|e| io("could not write the JUnit report", e))?;
    tmp.persist(path)
        .map_err(|e| io("could not write the JUnit report", e.error))?;
    Ok(())
}

/// The JUnit XML text for `report`.
pub fn junit_xml(report: &TestReport, suite_name: &str) -> String {
    let tests = report.checks.len();
    let failures = report.failures();
    let time = secs(report.total);
    let suite = escape(suite_name);
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"kiln\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" time=\"{time}\">"
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{suite}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{time}\">"
    );
    x.push_str("    <properties>\n");
    property(&mut x, "accel", report.accel.as_str());
    if let Some(boot) = report.boot_time {
        property(&mut x, "boot_time", &secs(boot));
    }
    x.push_str("    </properties>\n");
    for check in &report.checks {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{suite}\" time=\"{}\"",
            escape(&check.name),
            secs(check.elapsed)
        );
        if check.passed {
            x.push_str("/>\n");
        } else {
            let first_line = check.message.lines().next().unwrap_or_default();
            let _ = writeln!(
                x,
                ">\n      <failure message=\"{}\" type=\"CheckFailed\">{}</failure>\n    </testcase>",
                escape(first_line),
                escape_text(&check.message)
            );
        }
    }
    let _ = writeln!(
        x,
        "    <system-out>{}</system-out>",
        escape_text(&report.serial_log_tail)
    );
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

fn property(x: &mut String, name: &str, value: &str) {
    let _ = writeln!(
        x,
        "      <property name=\"{}\" value=\"{}\"/>",
        escape(name),
        escape(value)
    );
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// Escapes text for an XML attribute value. Characters XML 1.0 cannot hold at
/// all (most control characters, which consoles do print) become U+FFFD.
pub fn escape(text: &str) -> String {
    escape_xml(text, true)
}

/// Escapes text for XML element content (newlines and tabs stay as they are).
pub fn escape_text(text: &str) -> String {
    escape_xml(text, false)
}

fn escape_xml(text: &str, attribute: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Attribute values normalise whitespace to spaces, and parsers turn a
            // literal CR into LF anywhere: encode them so they survive.
            '\n' | '\t' if attribute => out.push_str(if c == '\n' { "&#10;" } else { "&#9;" }),
            '\r' => out.push_str("&#13;"),
            c if allowed_in_xml(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
    out
}

fn allowed_in_xml(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accel::Accel;
    use crate::checks::CheckResult;

    fn report() -> TestReport {
        TestReport {
            checks: vec![
                CheckResult {
                    name: "console shows \"login:\"".into(),
                    passed: true,
                    elapsed: Duration::from_millis(6500),
                    finished: Duration::from_millis(6500),
                    message: "seen".into(),
                },
                CheckResult {
                    name: "GET / on port 80 answers 200 with \"<b>&\"".into(),
                    passed: false,
                    elapsed: Duration::from_secs(3),
                    finished: Duration::from_millis(9500),
                    message: "expected <b>&\nsaw \x1b[0m".into(),
                },
            ],
            boot_time: Some(Duration::from_millis(6500)),
            total: Duration::from_millis(10250),
            accel: Accel::Tcg,
            serial_log_tail: "KILN-READY\n]]> & \x07bell".into(),
        }
    }

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(escape("a<b>&\"'"), "a&lt;b&gt;&amp;&quot;&apos;");
        assert_eq!(escape("x\x1b\x00y\n"), "x\u{FFFD}\u{FFFD}y&#10;");
        assert_eq!(escape_text("a\tb\r\n"), "a\tb&#13;\n");
    }

    #[test]
    fn xml_has_counts_and_is_deterministic() {
        let x = junit_xml(&report(), "web & co");
        assert_eq!(x, junit_xml(&report(), "web & co"));
        assert!(
            x.contains("<testsuite name=\"web &amp; co\" tests=\"2\" failures=\"1\""),
            "{x}"
        );
        assert!(x.contains("time=\"10.250\""), "{x}");
        assert!(
            x.contains("<property name=\"boot_time\" value=\"6.500\"/>"),
            "{x}"
        );
        assert!(
            x.contains("<failure message=\"expected &lt;b&gt;&amp;\""),
            "{x}"
        );
        assert!(x.contains("]]&gt; &amp; \u{FFFD}bell"), "{x}");
        assert!(!x.contains('\x1b'));
    }

    #[test]
    fn writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junit.xml");
        write_junit(&report(), "suite", &path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            junit_xml(&report(), "suite")
        );
        let err = write_junit(&report(), "suite", &dir.path().join("no/such/dir/j.xml"));
        assert!(err.unwrap_err().to_string().contains("no/such/dir"));
    }
}
