//! `(test …)`: the test VM's settings and the checks run against the booted image.

use super::{backquoted, Fields, Form, CHECK_KINDS, TEST_SETTINGS};
use super::{CONSOLE_FIELDS, HTTP_FIELDS, PORT_FIELDS, TCP_FIELDS};
use crate::print::quote;
use crate::sexp::{Atom, Sexp};
use crate::validate::{self, suggest};
use crate::{
    Check, CheckKind, Located, SpecError, TestSpec, DEFAULT_CHECK_TIMEOUT, DEFAULT_HTTP_PATH,
    DEFAULT_HTTP_STATUS,
};

/// The smallest guest memory accepted, in MiB; less does not boot a Debian kernel.
const MIN_MEMORY_MB: u32 = 64;

/// Parses `(test SETTING… CHECK…)`, settings and checks in any order.
pub(super) fn test(form: Form) -> Result<TestSpec, SpecError> {
    let mut settings = Fields::new("`test`".into(), form.pos);
    let mut spec = TestSpec::default();
    for arg in form.args {
        let item = Form::of(arg, "`test`")?;
        let name = item.name();
        if CHECK_KINDS.contains(&name) {
            spec.checks.push(Located::new(check(item)?, item.pos));
            continue;
        }
        if !TEST_SETTINGS.contains(&name) {
            return Err(unknown_item(item));
        }
        settings.add(item, TEST_SETTINGS)?;
        let slot = match name {
            "memory" => &mut spec.memory_mb,
            "cpus" => &mut spec.cpus,
            // `boot-timeout`, the last of `TEST_SETTINGS`.
            _ => &mut spec.boot_timeout,
        };
        *slot = Some(setting(item)?);
    }
    if spec.checks.is_empty() {
        return Err(SpecError::new(
            form.pos,
            "`test` has no checks: add at least one, e.g. `(console (expect \"login:\"))` or `(http (port 80))`",
        ));
    }
    Ok(spec)
}

fn unknown_item(item: Form) -> SpecError {
    let known = CHECK_KINDS.iter().chain(TEST_SETTINGS).copied();
    SpecError::new(
        item.pos,
        format!(
            "unknown check or setting `{}` in `test`: the checks are {}, the settings are {}",
            item.name(),
            backquoted(CHECK_KINDS.iter().copied()),
            backquoted(TEST_SETTINGS.iter().copied())
        ),
    )
    .with_suggestion(suggest(item.name(), known))
}

/// `(memory MIB)`, `(cpus N)` or `(boot-timeout SECONDS)`.
fn setting(item: Form) -> Result<u32, SpecError> {
    let (min, unit, usage) = match item.name() {
        "memory" => (MIN_MEMORY_MB, " MiB", "(memory 1024)"),
        "cpus" => (1, "", "(cpus 2)"),
        _ => (1, " second", "(boot-timeout 120)"),
    };
    let atom = item.atom(usage)?;
    validate::number_at_least(item.name(), atom, min, unit, usage)
}

/// One check: `(console …)`, `(port …)`, `(http …)` or `(tcp …)`.
fn check(form: Form) -> Result<Check, SpecError> {
    let kind = form.name();
    let (known, usage) = match kind {
        "console" => (CONSOLE_FIELDS, "(console (expect X))"),
        "port" => (PORT_FIELDS, "(port (port X))"),
        "http" => (HTTP_FIELDS, "(http (port X))"),
        _ => (TCP_FIELDS, "(tcp (port X) (send \"…\") (expect \"…\"))"),
    };
    // `(port 22)` is the likeliest slip; say exactly what to write instead.
    if let Some(Sexp::Atom(atom)) = form.args.first() {
        return Err(SpecError::new(
            atom.pos,
            format!(
                "`{kind}` check takes fields, found the atom `{}`: write `{}`",
                atom.text,
                usage.replace('X', &quote(&atom.text))
            ),
        ));
    }
    let fields = Fields::of(format!("`{kind}` check"), form.pos, form.args, known)?;
    let name = fields.atom("name", "(name NAME)")?;
    if let Some(name) = name {
        validate::non_empty("check name", "(name boots)", name)?;
    }
    let timeout = match fields.atom("timeout", "(timeout 60)")? {
        Some(atom) => validate::number_at_least("timeout", atom, 1, " second", "(timeout 60)")?,
        None => DEFAULT_CHECK_TIMEOUT,
    };
    let kind = match kind {
        "console" => CheckKind::Console {
            expect: expect(&fields, "(expect \"login:\")")?,
        },
        "port" => CheckKind::Port {
            port: port(&fields, "(port 22)")?,
        },
        "http" => http(&fields)?,
        _ => CheckKind::Tcp {
            port: port(&fields, "(port 11211)")?,
            send: fields
                .require("send", "(send \"TEXT\")")?
                .atom("(send \"TEXT\")")?
                .text
                .clone(),
            expect: expect(&fields, "(expect \"TEXT\")")?,
        },
    };
    Ok(Check {
        name: name.map(|n| n.text.clone()),
        timeout,
        kind,
    })
}

fn http(fields: &Fields) -> Result<CheckKind, SpecError> {
    let port = port(fields, "(port 80)")?;
    let path = match fields.atom("path", "(path /index.html)")? {
        Some(atom) => {
            validate::http_path(atom)?;
            atom.text.clone()
        }
        None => DEFAULT_HTTP_PATH.to_string(),
    };
    let status = match fields.atom("status", "(status 200)")? {
        Some(atom) => u16_number("status", atom, 100, 599, "(status 200)")?,
        None => DEFAULT_HTTP_STATUS,
    };
    let body = fields.atom("body", "(body \"TEXT\")")?;
    if let Some(body) = body.filter(|b| b.text.is_empty()) {
        return Err(SpecError::new(
            body.pos,
            "`body` text is empty: write the text the page must contain, or delete `body` to check only the status",
        ));
    }
    Ok(CheckKind::Http {
        port,
        path,
        status,
        body: body.map(|b| b.text.clone()),
    })
}

/// The required `(port N)` of a check.
fn port(fields: &Fields, usage: &str) -> Result<u16, SpecError> {
    let atom = fields.require("port", usage)?.atom("(port N)")?;
    u16_number("port", atom, 1, u16::MAX, usage)
}

/// The required, non-empty `(expect TEXT)` of a `console` or `tcp` check.
fn expect(fields: &Fields, usage: &str) -> Result<String, SpecError> {
    let atom = fields.require("expect", usage)?.atom(usage)?;
    validate::non_empty("`expect` text", usage, atom)?;
    Ok(atom.text.clone())
}

fn u16_number(
    field: &str,
    atom: &Atom,
    min: u16,
    max: u16,
    example: &str,
) -> Result<u16, SpecError> {
    let range = u64::from(min)..=u64::from(max);
    let n = validate::number_in(field, atom, range, example)?;
    u16::try_from(n).map_err(|_| SpecError::new(atom.pos, "internal error: number out of range"))
}
