//! Value rules: the checks on what an atom says, once the parser knows where it sits.
//!
//! Each check takes the atom it judges so its error points at it. Shape rules
//! (which forms and fields exist, how many arguments) live in `parse.rs`.

use crate::sexp::Atom;
use crate::size::parse_size;
use crate::SpecError;
use std::ops::RangeInclusive;

/// The highest uid/gid accepted; `u32::MAX` is `(uid_t)-1`, which means "no id".
pub(crate) const MAX_ID: u32 = u32::MAX - 1;

/// mmdebstrap's variants, the values `(bootstrap (variant V))` accepts.
pub const BOOTSTRAP_VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

/// Debian's release architectures, the values `(image (arch A…))` accepts.
pub const DEBIAN_ARCHES: &[&str] = &[
    "amd64", "arm64", "armhf", "armel", "i386", "mips64el", "ppc64el", "riscv64", "s390x",
];

/// The longest label an ext4 filesystem holds, in bytes.
pub(crate) const MAX_LABEL_LEN: usize = 16;

/// The known name closest to `name`, if it is close enough to be a likely typo.
///
/// Uses the optimal-string-alignment distance (a swap of two neighbours costs 1)
/// on lowercased names; short names may be one edit off, longer ones two.
pub(crate) fn suggest<'a>(name: &str, known: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let lower = name.to_lowercase();
    let limit = if lower.chars().count() <= 3 { 1 } else { 2 };
    let mut best: Option<(usize, &str)> = None;
    for candidate in known {
        let distance = strsim::osa_distance(&lower, candidate);
        if distance <= limit && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c.to_string())
}

/// `env` names must be `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn env_name(atom: &Atom) -> Result<(), SpecError> {
    let mut chars = atom.text.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Ok(());
    }
    Err(SpecError::new(
        atom.pos,
        format!(
            "invalid environment variable name `{}`: a name starts with a letter or `_` and has only letters, digits and `_`",
            atom.text
        ),
    ))
}

/// A cache or secret id must not be empty. `kind` is `cache` or `secret`.
pub(crate) fn mount_id(kind: &str, atom: &Atom) -> Result<(), SpecError> {
    if atom.text.is_empty() {
        return Err(SpecError::new(
            atom.pos,
            format!("empty {kind} id: give the {kind} a name, e.g. `(my-{kind} (target /path))`"),
        ));
    }
    Ok(())
}

/// A cache or secret target must not be empty. Anything else parses: OBuilder's Windows
/// specs write `C:\\cache`, and only the sandbox that runs the step knows what fits it.
pub(crate) fn mount_target(kind: &str, atom: &Atom) -> Result<(), SpecError> {
    if atom.text.is_empty() {
        return Err(SpecError::new(
            atom.pos,
            format!("empty {kind} target: write the path inside the build, e.g. `(target /var/cache/{kind})`"),
        ));
    }
    Ok(())
}

/// A copy source may not climb out of its root with a `..` component.
pub(crate) fn copy_source(atom: &Atom) -> Result<(), SpecError> {
    if atom.text.split('/').any(|component| component == "..") {
        return Err(SpecError::new(
            atom.pos,
            format!(
                "copy source `{}` contains `..`: sources must stay inside the build context or build result; move the files there",
                atom.text
            ),
        ));
    }
    Ok(())
}

/// `(bootstrap (skeleton DIR))`: a directory of the build context, named relative to it.
pub(crate) fn skeleton_dir(atom: &Atom) -> Result<(), SpecError> {
    relative_inside(
        atom,
        "skeleton directory",
        "(skeleton skeleton)",
        "the build context",
    )
}

/// A path that must be relative and stay inside `inside`; `what` and `example` name it
/// in the error.
fn relative_inside(atom: &Atom, what: &str, example: &str, inside: &str) -> Result<(), SpecError> {
    let text = &atom.text;
    let problem = if text.is_empty() {
        format!("is empty: write e.g. `{example}`")
    } else if text.starts_with('/') {
        format!("is absolute: write it relative to {inside}")
    } else if text.split('/').any(|component| component == "..") {
        format!("contains `..`: it must be inside {inside}; move it there")
    } else {
        return Ok(());
    };
    Err(SpecError::new(
        atom.pos,
        format!("{what} `{text}` {problem}"),
    ))
}

/// A `uid` or `gid`: a decimal number from 0 to [`MAX_ID`].
pub(crate) fn unix_id(field: &str, atom: &Atom) -> Result<u32, SpecError> {
    let text = &atom.text;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::new(
            atom.pos,
            format!("`{field}` must be a number, found `{text}`: write e.g. `({field} 1000)`"),
        ));
    }
    match text.parse::<u32>() {
        Ok(n) if n <= MAX_ID => Ok(n),
        _ => Err(SpecError::new(
            atom.pos,
            format!("`{field}` {text} is out of range: it must be from 0 to {MAX_ID}"),
        )),
    }
}

/// A `(bootstrap (variant V))` must name an mmdebstrap variant.
pub(crate) fn bootstrap_variant(atom: &Atom) -> Result<(), SpecError> {
    if BOOTSTRAP_VARIANTS.contains(&atom.text.as_str()) {
        return Ok(());
    }
    Err(SpecError::new(
        atom.pos,
        format!(
            "unknown bootstrap variant `{}`: use one of {}",
            atom.text,
            BOOTSTRAP_VARIANTS.join(", ")
        ),
    )
    .with_suggestion(suggest(&atom.text, BOOTSTRAP_VARIANTS.iter().copied())))
}

/// Names that must not be empty: the base in `from`, a child build's name.
pub(crate) fn non_empty(what: &str, example: &str, atom: &Atom) -> Result<(), SpecError> {
    if atom.text.is_empty() {
        return Err(SpecError::new(
            atom.pos,
            format!("{what} is empty: write e.g. `{example}`"),
        ));
    }
    Ok(())
}

/// A decimal number within `range`, e.g. a port; `example` shows the field written correctly.
pub(crate) fn number_in(
    field: &str,
    atom: &Atom,
    range: RangeInclusive<u64>,
    example: &str,
) -> Result<u64, SpecError> {
    match digits(field, atom, example)?.parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(n),
        _ => Err(SpecError::new(
            atom.pos,
            format!(
                "`{field}` {} is out of range: it must be from {} to {}",
                atom.text,
                range.start(),
                range.end()
            ),
        )),
    }
}

/// A decimal number from `min` up, e.g. a timeout; `unit` (e.g. " MiB") follows
/// `min` in the error, `example` shows the field written correctly.
pub(crate) fn number_at_least(
    field: &str,
    atom: &Atom,
    min: u32,
    unit: &str,
    example: &str,
) -> Result<u32, SpecError> {
    let text = digits(field, atom, example)?;
    let problem = match text.parse::<u32>() {
        Ok(n) if n >= min => return Ok(n),
        Ok(_) => format!("is too small: it must be at least {min}{unit}"),
        Err(_) => format!("is too large: it must be at most {}", u32::MAX),
    };
    Err(SpecError::new(
        atom.pos,
        format!("`{field}` {text} {problem}"),
    ))
}

/// The atom's text, if it is all decimal digits.
fn digits<'a>(field: &str, atom: &'a Atom, example: &str) -> Result<&'a str, SpecError> {
    let text = &atom.text;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SpecError::new(
            atom.pos,
            format!("`{field}` must be a number, found `{text}`: write e.g. `{example}`"),
        ));
    }
    Ok(text)
}

/// An HTTP check's path: absolute, and free of anything that would break the request line.
pub(crate) fn http_path(atom: &Atom) -> Result<(), SpecError> {
    let text = &atom.text;
    if !text.starts_with('/') {
        return Err(SpecError::new(
            atom.pos,
            format!("http path `{text}` does not start with `/`: write `/{text}`"),
        ));
    }
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SpecError::new(
            atom.pos,
            format!(
                "http path `{}` contains a space or control character: percent-encode it, e.g. a space as `%20`",
                crate::print::quote(text)
            ),
        ));
    }
    Ok(())
}

/// Partition names and labels, node types: `[A-Za-z0-9._-]+`.
pub(crate) fn identifier(what: &str, atom: &Atom) -> Result<(), SpecError> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if !atom.text.is_empty() && atom.text.chars().all(ok) {
        return Ok(());
    }
    Err(SpecError::new(
        atom.pos,
        format!(
            "invalid {what} `{}`: use one or more letters, digits, `.`, `_` and `-`",
            atom.text
        ),
    ))
}

/// A partition label: an identifier short enough for an ext4 label.
pub(crate) fn partition_label(atom: &Atom) -> Result<(), SpecError> {
    identifier("partition label", atom)?;
    if atom.text.len() > MAX_LABEL_LEN {
        return Err(SpecError::new(
            atom.pos,
            format!(
                "partition label `{}` has {} characters, but an ext4 label holds at most {MAX_LABEL_LEN}: shorten it",
                atom.text,
                atom.text.len()
            ),
        ));
    }
    Ok(())
}

/// `(partition (spec PATH))`: a path relative to the spec's directory, staying inside it.
pub(crate) fn partition_spec_path(atom: &Atom) -> Result<(), SpecError> {
    relative_inside(
        atom,
        "partition spec path",
        "(spec db.spec)",
        "this spec's directory",
    )
}

/// A partition size such as `2G`, in bytes.
pub(crate) fn partition_size(atom: &Atom) -> Result<u64, SpecError> {
    parse_size(&atom.text)
        .map_err(|e| SpecError::new(atom.pos, format!("partition size `{}` {e}", atom.text)))
}

/// An `(arch …)` value must be a Debian architecture.
pub(crate) fn debian_arch(atom: &Atom) -> Result<(), SpecError> {
    if DEBIAN_ARCHES.contains(&atom.text.as_str()) {
        return Ok(());
    }
    Err(SpecError::new(
        atom.pos,
        format!(
            "unknown architecture `{}`: use Debian's names, one of {}",
            atom.text,
            DEBIAN_ARCHES.join(", ")
        ),
    )
    .with_suggestion(
        suggest(&atom.text, DEBIAN_ARCHES.iter().copied()).or_else(|| arch_alias(&atom.text)),
    ))
}

/// Debian's name for an architecture other tools name differently (`x86_64`…).
fn arch_alias(name: &str) -> Option<String> {
    let debian = match name.to_lowercase().as_str() {
        "x86_64" | "x86-64" | "x64" => "amd64",
        "aarch64" => "arm64",
        "i686" | "i586" | "i486" | "x86" => "i386",
        "ppc64le" => "ppc64el",
        _ => return None,
    };
    Some(debian.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Pos;

    fn atom(text: &str) -> Atom {
        Atom {
            notes: Default::default(),
            text: text.into(),
            pos: Pos { line: 1, col: 1 },
        }
    }

    #[test]
    fn suggest_picks_the_closest_and_ignores_far_names() {
        let known = ["run", "copy", "user", "env", "workdir"];
        assert_eq!(suggest("rnu", known).as_deref(), Some("run"));
        assert_eq!(suggest("RUN", known).as_deref(), Some("run"));
        assert_eq!(suggest("wrokdir", known).as_deref(), Some("workdir"));
        assert_eq!(suggest("copyy", known).as_deref(), Some("copy"));
        assert_eq!(suggest("xyz", known), None);
        assert_eq!(suggest("install", known), None);
    }

    #[test]
    fn env_names() {
        for ok in ["A", "_", "PATH", "a_1", "_X9"] {
            assert!(env_name(&atom(ok)).is_ok(), "{ok}");
        }
        for bad in ["", "1A", "A-B", "A B", "É", "A="] {
            assert!(env_name(&atom(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn unix_ids() {
        assert_eq!(unix_id("uid", &atom("0")), Ok(0));
        assert_eq!(unix_id("uid", &atom("4294967294")), Ok(MAX_ID));
        assert_eq!(unix_id("uid", &atom("007")), Ok(7));
        assert!(unix_id("uid", &atom("4294967295"))
            .unwrap_err()
            .message
            .contains("out of range"));
        assert!(unix_id("uid", &atom("99999999999999999999"))
            .unwrap_err()
            .message
            .contains("out of range"));
        for bad in ["", "-1", "+1", "1e3", "root", " 1"] {
            assert!(
                unix_id("gid", &atom(bad))
                    .unwrap_err()
                    .message
                    .contains("must be a number"),
                "{bad}"
            );
        }
    }

    #[test]
    fn numbers_with_bounds() {
        assert_eq!(number_in("port", &atom("1"), 1..=65535, "(port 1)"), Ok(1));
        assert_eq!(
            number_in("port", &atom("065535"), 1..=65535, "(port 1)"),
            Ok(65535)
        );
        for bad in ["0", "65536", "99999999999999999999999"] {
            let err = number_in("port", &atom(bad), 1..=65535, "(port 1)").unwrap_err();
            assert!(err.message.contains("from 1 to 65535"), "{bad}: {err}");
        }
        assert_eq!(
            number_at_least("cpus", &atom("1"), 1, "", "(cpus 1)"),
            Ok(1)
        );
        assert_eq!(
            number_at_least("cpus", &atom("4294967295"), 1, "", "(cpus 1)"),
            Ok(u32::MAX)
        );
        let small = number_at_least("memory", &atom("63"), 64, " MiB", "(memory 64)");
        assert!(small.unwrap_err().message.ends_with("at least 64 MiB"));
        let large = number_at_least("cpus", &atom("4294967296"), 1, "", "(cpus 1)");
        assert!(large.unwrap_err().message.contains("too large"));
        for bad in ["", "-1", "+1", "1.0", "1K", " 1"] {
            let err = number_at_least("cpus", &atom(bad), 1, "", "(cpus 1)").unwrap_err();
            assert!(err.message.contains("must be a number"), "{bad}");
        }
    }

    #[test]
    fn identifiers_labels_and_paths() {
        for ok in ["a", "A.b_c-9", "..", "-"] {
            assert!(identifier("partition name", &atom(ok)).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", "a:b"] {
            assert!(identifier("partition name", &atom(bad)).is_err(), "{bad}");
        }
        assert!(partition_label(&atom(&"x".repeat(16))).is_ok());
        assert!(partition_label(&atom(&"x".repeat(17))).is_err());
        for ok in ["db.spec", "sub/db.spec", "./db.spec", "..db/x"] {
            assert!(partition_spec_path(&atom(ok)).is_ok(), "{ok}");
        }
        for bad in ["", "/db.spec", "../db.spec", "a/../../b", "a/.."] {
            assert!(partition_spec_path(&atom(bad)).is_err(), "{bad}");
        }
        for ok in ["/", "/index.html", "/a?b=c&d#e", "/caf%C3%A9"] {
            assert!(http_path(&atom(ok)).is_ok(), "{ok}");
        }
        for bad in ["", "index.html", "/a b", "/a\tb", "/a\u{7f}"] {
            assert!(http_path(&atom(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn arches_suggest_debian_names() {
        assert!(debian_arch(&atom("riscv64")).is_ok());
        let typo = debian_arch(&atom("amd46")).unwrap_err();
        assert_eq!(typo.suggestion.as_deref(), Some("amd64"));
        let alias = debian_arch(&atom("aarch64")).unwrap_err();
        assert_eq!(alias.suggestion.as_deref(), Some("arm64"));
        let alias = debian_arch(&atom("x86_64")).unwrap_err();
        assert_eq!(alias.suggestion.as_deref(), Some("amd64"));
        assert_eq!(debian_arch(&atom("sparc")).unwrap_err().suggestion, None);
    }

    #[test]
    fn copy_paths() {
        for bad in ["..", "../x", "a/../b", "a/..", "/.."] {
            assert!(copy_source(&atom(bad)).is_err(), "{bad}");
        }
        for ok in ["...", "a..b", "..a", "./x", "/src/"] {
            assert!(copy_source(&atom(ok)).is_ok(), "{ok}");
        }
    }
}
