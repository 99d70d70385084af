//! kiln's build spec language: a strict superset of OBuilder's S-expression specs.
//!
//! This crate is pure: it reads and writes text and computes hashes, and never
//! touches the filesystem. The pieces:
//! - [`parse()`] and [`parse_file()`]: text → validated [`Spec`], errors carry `line:col` and "did you mean";
//! - [`print()`]: [`Spec`] → canonical text (`parse(print(s)) == s`; canonical text prints back byte for byte);
//! - [`hash`]: step ids ([`LayerId`]) computed as the store contract in DESIGN.md says;
//!   `(test …)` and `(image …)` do not enter them;
//! - [`parse_size`] and [`format_size`]: byte sizes as specs write them (`512M`, `1.5G`).

pub mod ast;
pub mod dockerfile;
mod error;
pub mod hash;
mod parse;
mod print;
mod sexp;
mod size;
mod validate;

pub use ast::*;
pub use dockerfile::{dockerfile, DockerfileOptions};
pub use error::SpecError;
pub use hash::{LayerId, ManifestEntry, ManifestKind, StepContext};
pub use print::quote;
pub use size::{format_size, parse_size, SizeError};
pub use validate::{BOOTSTRAP_VARIANTS, DEBIAN_ARCHES};

/// Parses and validates a spec.
///
/// The syntax is sexplib's (comments `;`, `#| |#`, `#;`; quoted atoms with OCaml
/// escapes). The first error found is returned, with the `line:col` of the form
/// or atom at fault and, for misspelt names, the closest known one.
pub fn parse(text: &str) -> Result<Spec, SpecError> {
    parse::parse_spec(text)
}

/// Parses and validates a spec read from `file`; errors then read `FILE:LINE:COL: …`.
///
/// The crate does no I/O: the caller reads the file and passes its text and name.
pub fn parse_file(text: &str, file: &str) -> Result<Spec, SpecError> {
    parse::parse_spec(text).map_err(|e| e.in_file(file))
}

/// Prints a spec in canonical layout.
///
/// The layout is fixed, so printing is deterministic and idempotent: the spec list
/// has one item per line (`((` then one-space indent), child builds are
/// `(build NAME` with the spec two columns in on the next line, other forms sit on
/// one line when they fit in 80 columns and otherwise keep their first argument on
/// the form's line and align the rest under it. Atoms are bare when they read back
/// as themselves, else quoted. `src/print.rs` documents every rule.
pub fn print(spec: &Spec) -> String {
    print::print_spec(spec)
}

/// Like [`print()`] for the spec parsed from `text`, keeping every comment of `text`
/// (`;`, `#| |#`, `#;`) next to what it annotates, and single blank lines between items.
/// `Err` only if `text` does not read as an S-expression.
pub fn print_with_comments(spec: &Spec, text: &str) -> Result<String, SpecError> {
    print::print_spec_with_comments(spec, text)
}

/// Every comment of `text` (`;`, `#| |#`, `#;` with its datum), as written, in source
/// order; `Err` if `text` does not read as one S-expression. Lets a caller check that a
/// formatted spec lost no comment.
pub fn comments(text: &str) -> Result<Vec<String>, SpecError> {
    Ok(sexp::read(text)?
        .all_comments()
        .into_iter()
        .map(|c| c.text)
        .collect())
}

/// Prints one op on a single line, the way build output names a step.
pub fn print_op(op: &Op) -> String {
    print::print_op_line(op)
}
