//! The canonical printer.
//!
//! # Layout
//!
//! The layout is sexplib's "hum" style with fixed rules, so one AST has exactly one
//! text and that text parses back to the same AST:
//!
//! - A spec list always has one item per line: `((` before its first item, then each
//!   further item on a new line, one column right of the spec's `(`. Items come in
//!   a fixed order: child builds, `from`, `bootstrap`, the ops, `test`, `image`.
//!   `test` and `image` go last because they say what to do with the result of
//!   the ops (boot and check it, put it on a disk), and read best after them.
//! - A child build is `(build NAME` then, on the next line and two columns right of
//!   the build's `(`, its spec laid out by the rule above.
//! - Any other form goes on one line when it fits in 80 columns, counting the `)`s
//!   that close right after it. Otherwise its first argument stays on the form's
//!   line and each further argument gets its own line, aligned under the first;
//!   arguments are laid out by the same rule, so a long `cache` list breaks inside
//!   while a short `(network host)` stays whole:
//!
//!   ```text
//!    (run (cache (opam-archives (target /home/opam/.opam/download-cache))
//!                (opam-builds (target /home/opam/.cache/dune)))
//!         (network host)
//!         (shell "opam install -y --deps-only ."))
//!   ```
//! - Fields follow OBuilder's order: `run` is cache, network, secrets, shell;
//!   `copy` is from, src, dst, exclude; `user` is uid, gid or name; `bootstrap` is
//!   variant, include, skeleton, mirror, arch. kiln's own forms: `test` is memory, cpus,
//!   boot-timeout, then the checks in spec order; a check is name, its own fields
//!   (`console`: expect; `port`: port; `http`: port, path, status, body; `tcp`:
//!   port, send, expect), then timeout; `image` is the partitions in spec order,
//!   then default, node-types, arch; a partition is name, build or spec, size,
//!   label. Fields holding their default are left out: `(from context)`, empty
//!   `cache`/`network`/`secrets`/`exclude`/`include`, a check's `(timeout 60)`,
//!   an http check's `(path /)` and `(status 200)`.
//! - Numbers print in decimal without leading zeros. A partition size prints in
//!   the largest of `T`, `G`, `M`, `K` (powers of 1024) that divides it exactly,
//!   else in bytes: 2147483648 is `2G`, 1536 MiB is `1536M`, `1.5G` is `1536M`.
//! - An atom prints bare when it reads back as itself: non-empty printable ASCII
//!   without whitespace, `(`, `)`, `"`, `;`, `\`, `#|` or `|#`. Otherwise it is
//!   double-quoted with `\"`, `\\`, `\n`, `\t`, `\r`, `\b`, `\DDD` for other control
//!   characters, and non-ASCII characters written as themselves.
//! - Long atoms are never split, so a line may exceed 80 columns.
//! - The text ends with one newline.
//! - Comments ([`print_spec_with_comments`]): those before or after the spec list stay
//!   there, each on its own line; one between the spec's items goes on its own line
//!   at the items' column, before the item that followed it, and moves with it when
//!   items are reordered; a comment after code on the same line stays after that item
//!   (before it when the item is the last, where the spec's `)` follows). Comments
//!   inside a form, and `#;` datum comments, cannot be placed and are refused.

use crate::sexp::{ends_bare_atom, top_level_comments, SourceComment};
use crate::size::format_size;
use crate::{
    Bootstrap, Check, CheckKind, ChildBuild, Copy, CopyFrom, ImageSpec, Op, PartitionSource,
    PartitionSpec, Pos, Run, Spec, TestSpec, User, DEFAULT_CHECK_TIMEOUT, DEFAULT_HTTP_PATH,
    DEFAULT_HTTP_STATUS,
};

/// The column budget for putting a form on one line.
const WIDTH: usize = 80;

/// Prints `spec` in canonical layout.
pub(crate) fn print_spec(spec: &Spec) -> String {
    let mut out = Printer {
        text: String::new(),
    };
    out.doc(&spec_doc(spec), 0, 0);
    out.text.push('\n');
    out.text
}

/// Prints `spec`, parsed from `text`, in canonical layout with the comments of `text`
/// that sit around the spec list or between its items (see the module docs). `Err` is
/// the position of a comment that cannot be kept (inside a form, or `#;`).
pub(crate) fn print_spec_with_comments(spec: &Spec, text: &str) -> Result<String, Pos> {
    let comments = top_level_comments(text)?;
    let items = spec_items(spec);
    let first = items.iter().map(|(pos, _)| *pos).min();
    let mut leading: Vec<Vec<String>> = vec![Vec::new(); items.len()];
    let mut trailing: Vec<Vec<String>> = vec![Vec::new(); items.len()];
    let (mut header, mut footer) = (Vec::new(), Vec::new());
    for c in comments {
        let SourceComment {
            pos,
            text,
            depth,
            end_of_line,
        } = c;
        if depth == 0 {
            if first.is_some_and(|f| pos < f) {
                header.push(text);
            } else {
                footer.push(text);
            }
            continue;
        }
        let before = (0..items.len())
            .filter(|&i| items[i].0 < pos)
            .max_by_key(|&i| items[i].0);
        let after = (0..items.len())
            .filter(|&i| items[i].0 > pos)
            .min_by_key(|&i| items[i].0);
        match (end_of_line, before, after) {
            (true, Some(i), _) => trailing[i].push(text),
            (_, _, Some(i)) => leading[i].push(text),
            _ => footer.push(text),
        }
    }
    // The last item's `)`s follow it on its line, so its own comments go before it.
    if let Some(last) = items.len().checked_sub(1) {
        let moved = std::mem::take(&mut trailing[last]);
        leading[last].extend(moved);
    }
    let docs = items
        .into_iter()
        .zip(leading.into_iter().zip(trailing))
        .map(|((_, doc), (lead, trail))| {
            if lead.is_empty() && trail.is_empty() {
                doc
            } else {
                Doc::Commented(lead, Box::new(doc), trail)
            }
        })
        .collect();
    let mut out = String::new();
    for line in header {
        out.push_str(&line);
        out.push('\n');
    }
    let mut printer = Printer {
        text: String::new(),
    };
    printer.doc(&Doc::Spec(docs), 0, 0);
    out.push_str(&printer.text);
    out.push('\n');
    for line in footer {
        out.push_str(&line);
        out.push('\n');
    }
    Ok(out)
}

/// What the layout works on: the spec turned into nested lists of rendered atoms.
enum Doc {
    /// An atom, already quoted if it needs to be.
    Atom(String),
    /// A form: flat if it fits, else broken with arguments aligned.
    Form(Vec<Doc>),
    /// A spec list: always one item per line.
    Spec(Vec<Doc>),
    /// `(build NAME` with its spec on the next line.
    Build(String, Box<Doc>),
    /// A spec item with the comments on their own lines before it and those after it
    /// on its last line.
    Commented(Vec<String>, Box<Doc>, Vec<String>),
}

impl Doc {
    /// Width on one line, or `None` if it never goes on one line.
    fn flat_width(&self) -> Option<usize> {
        match self {
            Doc::Atom(text) => Some(text.chars().count()),
            Doc::Form(items) => {
                let mut width = 2 + items.len().saturating_sub(1);
                for item in items {
                    width += item.flat_width()?;
                }
                Some(width)
            }
            Doc::Spec(_) | Doc::Build(..) | Doc::Commented(..) => None,
        }
    }
}

struct Printer {
    text: String,
}

impl Printer {
    /// Writes `doc` starting at column `col`; `trail` `)`s follow it on its last line.
    fn doc(&mut self, doc: &Doc, col: usize, trail: usize) {
        match doc {
            Doc::Atom(text) => self.text.push_str(text),
            Doc::Form(items) => match doc.flat_width() {
                Some(width) if col + width + trail <= WIDTH => self.flat(doc),
                _ => self.broken_form(items, col, trail),
            },
            Doc::Spec(items) => {
                self.text.push('(');
                self.lines(items, col + 1, trail);
                self.text.push(')');
            }
            Doc::Build(name, spec) => {
                self.text.push_str("(build ");
                self.text.push_str(name);
                self.newline(col + 2);
                self.doc(spec, col + 2, trail + 1);
                self.text.push(')');
            }
            Doc::Commented(leading, item, trailing) => {
                for comment in leading {
                    self.text.push_str(comment);
                    self.newline(col);
                }
                self.doc(item, col, trail);
                for comment in trailing {
                    self.text.push(' ');
                    self.text.push_str(comment);
                }
            }
        }
    }

    fn flat(&mut self, doc: &Doc) {
        match doc {
            Doc::Atom(text) => self.text.push_str(text),
            Doc::Form(items) => {
                self.text.push('(');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.text.push(' ');
                    }
                    self.flat(item);
                }
                self.text.push(')');
            }
            // Never flat (see `flat_width`); lay out in place rather than fail.
            Doc::Spec(_) | Doc::Build(..) | Doc::Commented(..) => self.doc(doc, 0, 0),
        }
    }

    /// `(head first` then the other arguments one per line under `first`.
    fn broken_form(&mut self, items: &[Doc], col: usize, trail: usize) {
        self.text.push('(');
        match items.split_first() {
            Some((Doc::Atom(head), args)) if !args.is_empty() => {
                self.text.push_str(head);
                self.text.push(' ');
                let arg_col = col + 1 + head.chars().count() + 1;
                self.lines(args, arg_col, trail);
            }
            _ => self.lines(items, col + 1, trail),
        }
        self.text.push(')');
    }

    /// Writes `items` one per line at column `col`; the last one is followed by `trail + 1` `)`s.
    fn lines(&mut self, items: &[Doc], col: usize, trail: usize) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                self.newline(col);
            }
            let after = if i + 1 == items.len() { trail + 1 } else { 0 };
            self.doc(item, col, after);
        }
    }

    fn newline(&mut self, col: usize) {
        self.text.push('\n');
        self.text.extend(std::iter::repeat_n(' ', col));
    }
}

fn spec_doc(spec: &Spec) -> Doc {
    Doc::Spec(spec_items(spec).into_iter().map(|(_, doc)| doc).collect())
}

/// The spec's items in print order, each with where it was in the source.
fn spec_items(spec: &Spec) -> Vec<(Pos, Doc)> {
    let mut items: Vec<(Pos, Doc)> = spec
        .child_builds
        .iter()
        .map(|b| (b.pos, build_doc(&b.value)))
        .collect();
    items.push((spec.from.pos, form("from", [atom(&spec.from.value)])));
    if let Some(b) = &spec.bootstrap {
        items.push((b.pos, bootstrap_doc(&b.value)));
    }
    items.extend(spec.ops.iter().map(|op| (op.pos, op_doc(&op.value))));
    if let Some(t) = &spec.test {
        items.push((t.pos, test_doc(&t.value)));
    }
    if let Some(i) = &spec.image {
        items.push((i.pos, image_doc(&i.value)));
    }
    items
}

fn build_doc(build: &ChildBuild) -> Doc {
    Doc::Build(quote(&build.name), Box::new(spec_doc(&build.spec)))
}

fn op_doc(op: &Op) -> Doc {
    match op {
        Op::Comment(text) => form("comment", [atom(text)]),
        Op::Workdir(path) => form("workdir", [atom(path)]),
        Op::Shell(args) => form("shell", atoms(args)),
        Op::Env(name, value) => form("env", [atom(name), atom(value)]),
        Op::User(user) => user_doc(user),
        Op::Run(run) => run_doc(run),
        Op::Copy(copy) => copy_doc(copy),
    }
}

fn user_doc(user: &User) -> Doc {
    match user {
        User::Unix { uid, gid } => form(
            "user",
            [
                form("uid", [Doc::Atom(uid.to_string())]),
                form("gid", [Doc::Atom(gid.to_string())]),
            ],
        ),
        User::Name(name) => form("user", [form("name", [atom(name)])]),
    }
}

fn run_doc(run: &Run) -> Doc {
    let mut fields = Vec::new();
    if !run.cache.is_empty() {
        fields.push(form("cache", run.cache.iter().map(mount_doc)));
    }
    if !run.network.is_empty() {
        fields.push(form("network", atoms(&run.network)));
    }
    if !run.secrets.is_empty() {
        fields.push(form("secrets", run.secrets.iter().map(mount_doc)));
    }
    fields.push(form("shell", [atom(&run.shell)]));
    form("run", fields)
}

fn mount_doc(mount: &crate::Mount) -> Doc {
    let mut items = vec![atom(&mount.id), form("target", [atom(&mount.target)])];
    if !mount.buildkit_options.is_empty() {
        let pairs = mount
            .buildkit_options
            .iter()
            .map(|(k, v)| Doc::Form(vec![atom(k), atom(v)]));
        items.push(form("buildkit_options", [Doc::Form(pairs.collect())]));
    }
    Doc::Form(items)
}

fn copy_doc(copy: &Copy) -> Doc {
    let mut fields = Vec::new();
    if let CopyFrom::Build(name) = &copy.from {
        fields.push(form("from", [form("build", [atom(name)])]));
    }
    fields.push(form("src", atoms(&copy.src)));
    fields.push(form("dst", [atom(&copy.dst)]));
    if !copy.exclude.is_empty() {
        fields.push(form("exclude", atoms(&copy.exclude)));
    }
    form("copy", fields)
}

fn bootstrap_doc(b: &Bootstrap) -> Doc {
    let mut fields = Vec::new();
    if let Some(v) = &b.variant {
        fields.push(form("variant", [atom(v)]));
    }
    if !b.include.is_empty() {
        fields.push(form("include", atoms(&b.include)));
    }
    if !b.skeleton.is_empty() {
        fields.push(form("skeleton", atoms(&b.skeleton)));
    }
    if let Some(m) = &b.mirror {
        fields.push(form("mirror", [atom(m)]));
    }
    if let Some(a) = &b.arch {
        fields.push(form("arch", [atom(a)]));
    }
    form("bootstrap", fields)
}

fn test_doc(test: &TestSpec) -> Doc {
    let mut fields = Vec::new();
    if let Some(m) = test.memory_mb {
        fields.push(number("memory", m));
    }
    if let Some(c) = test.cpus {
        fields.push(number("cpus", c));
    }
    if let Some(t) = test.boot_timeout {
        fields.push(number("boot-timeout", t));
    }
    fields.extend(test.checks.iter().map(|c| check_doc(&c.value)));
    form("test", fields)
}

fn check_doc(check: &Check) -> Doc {
    let mut fields = Vec::new();
    if let Some(name) = &check.name {
        fields.push(form("name", [atom(name)]));
    }
    let kind = match &check.kind {
        CheckKind::Console { expect } => {
            fields.push(form("expect", [atom(expect)]));
            "console"
        }
        CheckKind::Port { port } => {
            fields.push(number("port", *port));
            "port"
        }
        CheckKind::Http {
            port,
            path,
            status,
            body,
        } => {
            fields.push(number("port", *port));
            if path != DEFAULT_HTTP_PATH {
                fields.push(form("path", [atom(path)]));
            }
            if *status != DEFAULT_HTTP_STATUS {
                fields.push(number("status", *status));
            }
            if let Some(body) = body {
                fields.push(form("body", [atom(body)]));
            }
            "http"
        }
        CheckKind::Tcp { port, send, expect } => {
            fields.push(number("port", *port));
            fields.push(form("send", [atom(send)]));
            fields.push(form("expect", [atom(expect)]));
            "tcp"
        }
    };
    if check.timeout != DEFAULT_CHECK_TIMEOUT {
        fields.push(number("timeout", check.timeout));
    }
    form(kind, fields)
}

fn image_doc(image: &ImageSpec) -> Doc {
    let mut fields: Vec<Doc> = image
        .partitions
        .iter()
        .map(|p| partition_doc(&p.value))
        .collect();
    if let Some(d) = &image.default {
        fields.push(form("default", [atom(d)]));
    }
    if !image.node_types.is_empty() {
        fields.push(form("node-types", atoms(&image.node_types)));
    }
    if !image.arches.is_empty() {
        fields.push(form("arch", atoms(&image.arches)));
    }
    form("image", fields)
}

fn partition_doc(p: &PartitionSpec) -> Doc {
    let mut fields = vec![form("name", [atom(&p.name)])];
    fields.push(match &p.source {
        PartitionSource::Build(name) => form("build", [atom(name)]),
        PartitionSource::Spec(path) => form("spec", [atom(path)]),
    });
    if let Some(size) = p.size {
        fields.push(form("size", [Doc::Atom(format_size(size))]));
    }
    if let Some(label) = &p.label {
        fields.push(form("label", [atom(label)]));
    }
    form("partition", fields)
}

/// `(NAME N)` for a number field.
fn number(name: &str, n: impl ToString) -> Doc {
    form(name, [Doc::Atom(n.to_string())])
}

fn form(name: &str, args: impl IntoIterator<Item = Doc>) -> Doc {
    let mut items = vec![Doc::Atom(name.to_string())];
    items.extend(args);
    Doc::Form(items)
}

fn atom(text: &str) -> Doc {
    Doc::Atom(quote(text))
}

fn atoms(texts: &[String]) -> Vec<Doc> {
    texts.iter().map(|t| atom(t)).collect()
}

/// Whether `text` reads back as the same bare atom.
fn can_be_bare(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_graphic() && !ends_bare_atom(c) && c != '\\')
        && !text.contains("#|")
        && !text.contains("|#")
}

/// `text` as an atom: bare if it can be, else quoted and escaped.
pub(crate) fn quote(text: &str) -> String {
    if can_be_bare(text) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x08' => out.push_str("\\b"),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Prints one op on a single line, as build logs show it (`(run (shell "make"))`).
pub(crate) fn print_op_line(op: &Op) -> String {
    let mut out = Printer {
        text: String::new(),
    };
    out.flat(&op_doc(op));
    out.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(quote("debian:bookworm"), "debian:bookworm");
        assert_eq!(quote("/home/opam/.opam"), "/home/opam/.opam");
        assert_eq!(quote("#a"), "#a");
        assert_eq!(quote(""), "\"\"");
        assert_eq!(quote("a b"), "\"a b\"");
        assert_eq!(quote("a;b"), "\"a;b\"");
        assert_eq!(quote("a#|b"), "\"a#|b\"");
        assert_eq!(quote("a|#"), "\"a|#\"");
        assert_eq!(quote("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
        assert_eq!(quote("c:\\x"), "\"c:\\\\x\"");
        assert_eq!(quote("\x01\x7f\x08\t\r"), "\"\\001\\127\\b\\t\\r\"");
        assert_eq!(quote("café"), "\"café\"");
    }

    #[test]
    fn op_lines_stay_on_one_line_however_long() {
        let run = Op::Run(crate::Run {
            network: vec!["host".into()],
            shell: format!("echo {}\nexit 0", "x".repeat(100)),
            ..Default::default()
        });
        let line = print_op_line(&run);
        assert_eq!(
            line,
            format!(
                "(run (network host) (shell \"echo {}\\nexit 0\"))",
                "x".repeat(100)
            )
        );
        assert_eq!(
            print_op_line(&Op::Env("A".into(), "".into())),
            "(env A \"\")"
        );
    }
}
