//! The canonical printer.
//!
//! # Layout
//!
//! The layout is sexplib's "hum" style with fixed rules, so one AST has exactly one
//! text and that text parses back to the same AST:
//!
//! - A spec list always has one item per line: `((` before its first item, then each
//!   further item on a new line, one column right of the spec's `(`. Items come in
//!   a fixed order: child builds, `from`, `bootstrap`, the ops, `test`, `image`,
//!   `appliance`.
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
//! - Comments ([`print_spec_with_comments`]) stay next to what they annotate, at any
//!   depth. The reader gives each comment to a datum: one on the line where an item
//!   ends trails that item, others lead the item after them or end their list. The
//!   printer pairs its layout with the source tree (it reorders items of different kinds,
//!   never two of the same kind, so the n-th `run` is the n-th `run`), and then: a
//!   leading comment goes on its own line at the item's column, before it; a trailing
//!   one follows the item on its line, except after the last item of a list, where the
//!   `)` would be swallowed, so it leads that item; comments leading a form's head lead
//!   the form, and those leading a spec list's first item lead the list (above the spec,
//!   or under `(build NAME`); comments ending a list sit on their own lines before a `)`
//!   on a line of its own, except at the end of the outermost spec, where they go below
//!   it. A form holding a comment never goes on one line; the first argument of a form
//!   moves to the next line when a comment leads it or trails the head. Comments of a
//!   field the printer leaves out (a default) lead the next field that stays. `#;`
//!   datum comments are kept as written. A blank line before an item or comment (or
//!   between the comments above the spec and the spec) is kept as one, except right
//!   after a `(`.

use crate::sexp::{self, ends_bare_atom, Comment, Notes, Sexp};
use crate::size::format_size;
use crate::{
    Bootstrap, Check, CheckKind, ChildBuild, Copy, CopyFrom, ImageSpec, Op, PartitionSource,
    PartitionSpec, Pos, Run, Spec, SpecError, TestSpec, User, DEFAULT_CHECK_TIMEOUT,
    DEFAULT_HTTP_PATH, DEFAULT_HTTP_STATUS,
};
use std::mem::take;

/// The column budget for putting a form on one line.
const WIDTH: usize = 80;

/// Prints `spec` in canonical layout.
pub(crate) fn print_spec(spec: &Spec) -> String {
    render(spec_doc(spec))
}

/// Prints `spec`, parsed from `text`, in canonical layout with every comment of `text`
/// placed next to what it annotates (see the module docs).
pub(crate) fn print_spec_with_comments(spec: &Spec, text: &str) -> Result<String, SpecError> {
    let source = sexp::read(text)?;
    let mut doc = spec_doc(spec);
    annotate(&mut doc, source);
    Ok(render(doc))
}

/// Lays out a whole spec: its leading comments above it, its trailing ones below.
fn render(mut doc: Doc) -> String {
    // Comments before the spec list's `)` read best below it, where nothing follows.
    let end = take(&mut doc.notes.inner_end);
    doc.notes.trailing.splice(0..0, end);
    let header_len = doc.notes.leading.len();
    settle(&mut doc);
    let mut printer = Printer {
        text: String::new(),
    };
    // A blank line after the comments above the spec stays, before the comments that
    // the spec's first item brought up or before the spec itself.
    let blank_after_header = doc.notes.blank_before;
    for (i, comment) in doc.notes.leading.iter().enumerate() {
        if i > 0 && (comment.blank_before || (i == header_len && blank_after_header)) {
            printer.text.push('\n');
        }
        printer.text.push_str(&comment.text);
        printer.text.push('\n');
    }
    if blank_after_header && header_len > 0 && header_len == doc.notes.leading.len() {
        printer.text.push('\n');
    }
    printer.doc(&doc, 0, 0);
    printer.text.push('\n');
    for comment in &doc.notes.trailing {
        if comment.blank_before {
            printer.text.push('\n');
        }
        printer.text.push_str(&comment.text);
        printer.text.push('\n');
    }
    printer.text
}

/// What the layout works on: the spec turned into nested lists of rendered atoms, each
/// with the comments that go with it.
struct Doc {
    kind: Kind,
    notes: Notes,
}

enum Kind {
    /// An atom, already quoted if it needs to be.
    Atom(String),
    /// A form: flat if it fits, else broken with arguments aligned.
    Form(Vec<Doc>),
    /// A spec list: always one item per line.
    Spec(Vec<Doc>),
    /// `(build NAME` with its spec on the next line.
    Build(Vec<Doc>),
}

impl Doc {
    fn new(kind: Kind) -> Doc {
        Doc {
            kind,
            notes: Notes::default(),
        }
    }

    fn items(&self) -> &[Doc] {
        match &self.kind {
            Kind::Atom(_) => &[],
            Kind::Form(items) | Kind::Spec(items) | Kind::Build(items) => items,
        }
    }

    fn items_mut(&mut self) -> Option<&mut Vec<Doc>> {
        match &mut self.kind {
            Kind::Atom(_) => None,
            Kind::Form(items) | Kind::Spec(items) | Kind::Build(items) => Some(items),
        }
    }

    /// Width on one line, or `None` if it never goes on one line (a spec list, or
    /// comments inside that need line breaks).
    fn flat_width(&self) -> Option<usize> {
        match &self.kind {
            Kind::Atom(text) => Some(text.chars().count()),
            Kind::Form(items) => {
                if !self.notes.inner_end.is_empty() {
                    return None;
                }
                let mut width = 2 + items.len().saturating_sub(1);
                for item in items {
                    if !item.notes.leading.is_empty() || !item.notes.trailing.is_empty() {
                        return None;
                    }
                    width += item.flat_width()?;
                }
                Some(width)
            }
            Kind::Spec(_) | Kind::Build(_) => None,
        }
    }

    /// How it pairs with a source datum: atoms in order, lists by their head atom.
    fn key(&self) -> Key {
        match self.items().first().map(|d| &d.kind) {
            _ if matches!(self.kind, Kind::Atom(_)) => Key::Atom,
            Some(Kind::Atom(head)) if !matches!(self.kind, Kind::Spec(_)) => {
                Key::Head(head.clone())
            }
            _ => Key::List,
        }
    }
}

#[derive(PartialEq, Eq)]
enum Key {
    Atom,
    /// A list whose first item is this atom, as printed.
    Head(String),
    List,
}

fn source_key(sexp: &Sexp) -> Key {
    match sexp {
        Sexp::Atom(_) => Key::Atom,
        Sexp::List(list) => match list.items.first() {
            Some(Sexp::Atom(head)) => Key::Head(quote(&head.text)),
            _ => Key::List,
        },
    }
}

/// Gives `doc` and its parts the comments of the source datum they were parsed from.
///
/// The printer reorders fields and items of different kinds but never items of the same
/// kind, so the n-th item with a given head pairs with the n-th source item with that
/// head. Comments of a source item the printer leaves out (a default such as
/// `(from context)`) go to the next item that stays, or to the end of the list.
fn annotate(doc: &mut Doc, mut source: Sexp) {
    doc.notes = take(source.notes_mut());
    let Sexp::List(list) = source else {
        return;
    };
    let items = match &mut doc.kind {
        Kind::Form(items) | Kind::Spec(items) | Kind::Build(items) => items,
        // Not expected: keep the comments rather than lose them.
        Kind::Atom(_) => {
            doc.notes
                .leading
                .extend(list.items.iter().flat_map(Sexp::all_comments));
            return;
        }
    };
    let mut sources: Vec<Option<Sexp>> = list.items.into_iter().map(Some).collect();
    let keys: Vec<Key> = sources.iter().flatten().map(source_key).collect();
    let mut used = vec![false; sources.len()];
    let pairs: Vec<Option<usize>> = items
        .iter()
        .map(|item| {
            let key = item.key();
            let j = (0..keys.len()).find(|&j| !used[j] && keys[j] == key)?;
            used[j] = true;
            Some(j)
        })
        .collect();
    let mut pending: Vec<Comment> = Vec::new();
    for (j, slot) in sources.iter_mut().enumerate() {
        if used[j] {
            if let Some(item) = slot {
                item.notes_mut().leading.splice(0..0, take(&mut pending));
            }
        } else if let Some(dropped) = slot.take() {
            pending.extend(dropped.all_comments());
        }
    }
    doc.notes.inner_end.splice(0..0, pending);
    for (item, j) in items.iter_mut().zip(pairs) {
        if let Some(source) = j.and_then(|j| sources[j].take()) {
            annotate(item, source);
        }
    }
}

/// Moves comments to where the layout can print them: a comment trailing the last item
/// of a list would swallow the `)` after it, so it leads that item instead; comments
/// leading a form's head, or a spec list's first item, lead the whole list.
fn settle(doc: &mut Doc) {
    let end_is_empty = doc.notes.inner_end.is_empty();
    let hoists_first = match &doc.kind {
        Kind::Atom(_) => return,
        Kind::Spec(_) => true,
        Kind::Form(items) | Kind::Build(items) => {
            matches!(items.first().map(|d| &d.kind), Some(Kind::Atom(_)))
        }
    };
    let Some(items) = doc.items_mut() else {
        return;
    };
    items.iter_mut().for_each(settle);
    if end_is_empty {
        if let Some(last) = items.last_mut() {
            let trailing = take(&mut last.notes.trailing);
            last.notes.leading.extend(trailing);
        }
    }
    let hoisted = match items.first_mut() {
        Some(first) if hoists_first => take(&mut first.notes.leading),
        _ => Vec::new(),
    };
    doc.notes.leading.extend(hoisted);
}

struct Printer {
    text: String,
}

/// Where an item of a broken list goes when nothing forces a line break before it.
#[derive(Clone, Copy)]
enum Place {
    /// On the current line (after the `(`, or after a space), else at this column.
    Inline(usize),
    /// On a line of its own at this column.
    Line(usize),
}

impl Printer {
    /// Writes `doc` starting at column `col`; `trail` `)`s follow it on its last line.
    fn doc(&mut self, doc: &Doc, col: usize, trail: usize) {
        let items = doc.items();
        let places: Vec<Place> = match &doc.kind {
            Kind::Atom(text) => return self.text.push_str(text),
            Kind::Form(_) => match doc.flat_width() {
                Some(width) if col + width + trail <= WIDTH => return self.flat(doc),
                _ => broken_form_places(items, col),
            },
            Kind::Spec(_) => places(items.len(), &[Place::Inline(col + 1)], col + 1),
            Kind::Build(_) => places(items.len(), &[Place::Inline(col + 2); 2], col + 2),
        };
        self.list(doc, &places, trail);
    }

    /// `(`, the items at their places with their comments, the end comments, `)`.
    fn list(&mut self, doc: &Doc, places: &[Place], trail: usize) {
        let items = doc.items();
        self.text.push('(');
        let mut last_col = 0;
        for (i, (item, place)) in items.iter().zip(places).enumerate() {
            let after_trailing = i > 0 && !items[i - 1].notes.trailing.is_empty();
            let col = match *place {
                Place::Inline(col) if item.notes.leading.is_empty() && !after_trailing => {
                    if i > 0 {
                        self.text.push(' ');
                    }
                    col
                }
                Place::Inline(col) | Place::Line(col) => {
                    self.leading(item, col, i == 0);
                    col
                }
            };
            let end = i + 1 == items.len() && doc.notes.inner_end.is_empty();
            self.doc(item, col, if end { trail + 1 } else { 0 });
            for comment in &item.notes.trailing {
                self.text.push(' ');
                self.text.push_str(&comment.text);
            }
            last_col = col;
        }
        if !doc.notes.inner_end.is_empty() {
            for comment in &doc.notes.inner_end {
                self.newline(last_col, comment.blank_before);
                self.text.push_str(&comment.text);
            }
            self.newline(last_col, false);
        }
        self.text.push(')');
    }

    /// A line break, then `item`'s leading comments each on its own line at `col`, then a
    /// line break to `col` for the item. Blank lines are kept except at the list's start.
    fn leading(&mut self, item: &Doc, col: usize, at_start: bool) {
        let mut first = at_start;
        for comment in &item.notes.leading {
            self.newline(col, comment.blank_before && !first);
            self.text.push_str(&comment.text);
            first = false;
        }
        self.newline(col, item.notes.blank_before && !first);
    }

    fn flat(&mut self, doc: &Doc) {
        match &doc.kind {
            Kind::Atom(text) => self.text.push_str(text),
            Kind::Form(items) => {
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
            Kind::Spec(_) | Kind::Build(_) => self.doc(doc, 0, 0),
        }
    }

    /// A line break (after a blank line if `blank`), indented to `col`.
    fn newline(&mut self, col: usize, blank: bool) {
        if blank {
            self.text.push('\n');
        }
        self.text.push('\n');
        self.text.extend(std::iter::repeat_n(' ', col));
    }
}

/// `(head first` then the other arguments one per line under `first`; a list without a
/// head atom has every item under the first.
fn broken_form_places(items: &[Doc], col: usize) -> Vec<Place> {
    match items.first().map(|d| &d.kind) {
        Some(Kind::Atom(head)) if items.len() > 1 => {
            let arg_col = col + 1 + head.chars().count() + 1;
            let inline = [Place::Inline(col + 1), Place::Inline(arg_col)];
            places(items.len(), &inline, arg_col)
        }
        _ => places(items.len(), &[Place::Inline(col + 1)], col + 1),
    }
}

/// `n` places: `inline` for the first items, then each on a line of its own at `col`.
fn places(n: usize, inline: &[Place], col: usize) -> Vec<Place> {
    (0..n)
        .map(|i| inline.get(i).copied().unwrap_or(Place::Line(col)))
        .collect()
}

fn spec_doc(spec: &Spec) -> Doc {
    Doc::new(Kind::Spec(
        spec_items(spec).into_iter().map(|(_, doc)| doc).collect(),
    ))
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
    if let Some(s) = &spec.sandbox {
        items.push((s.pos, form("sandbox", [atom(s.value.name())])));
    }
    items.extend(spec.ops.iter().map(|op| (op.pos, op_doc(&op.value))));
    if let Some(t) = &spec.test {
        items.push((t.pos, test_doc(&t.value)));
    }
    if let Some(i) = &spec.image {
        items.push((i.pos, image_doc(&i.value)));
    }
    if let Some(a) = &spec.appliance {
        items.push((a.pos, appliance_doc(&a.value)));
    }
    items
}

fn appliance_doc(a: &crate::ApplianceSpec) -> Doc {
    let mut fields = Vec::new();
    if !a.train.is_empty() {
        fields.push(form("train", atoms(&a.train)));
    }
    fields.push(form("run", [atom(&a.run)]));
    for (name, value) in [("prerun", &a.prerun), ("postrun", &a.postrun)] {
        if let Some(v) = value {
            fields.push(form(name, [atom(v)]));
        }
    }
    for (name, globs) in [("include", &a.include), ("exclude", &a.exclude)] {
        if !globs.is_empty() {
            fields.push(form(name, atoms(globs)));
        }
    }
    if let Some(c) = &a.compress {
        fields.push(form("compress", [atom(c)]));
    }
    form("appliance", fields)
}

fn build_doc(build: &ChildBuild) -> Doc {
    Doc::new(Kind::Build(vec![
        Doc::new(Kind::Atom("build".into())),
        atom(&build.name),
        spec_doc(&build.spec),
    ]))
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
                form("uid", [leaf(uid.to_string())]),
                form("gid", [leaf(gid.to_string())]),
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
            .map(|(k, v)| list_doc(vec![atom(k), atom(v)]));
        items.push(form("buildkit_options", [list_doc(pairs.collect())]));
    }
    list_doc(items)
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
        fields.push(form("size", [leaf(format_size(size))]));
    }
    if let Some(label) = &p.label {
        fields.push(form("label", [atom(label)]));
    }
    form("partition", fields)
}

/// `(NAME N)` for a number field.
fn number(name: &str, n: impl ToString) -> Doc {
    form(name, [leaf(n.to_string())])
}

fn form(name: &str, args: impl IntoIterator<Item = Doc>) -> Doc {
    let mut items = vec![leaf(name.to_string())];
    items.extend(args);
    list_doc(items)
}

fn leaf(text: String) -> Doc {
    Doc::new(Kind::Atom(text))
}

fn list_doc(items: Vec<Doc>) -> Doc {
    Doc::new(Kind::Form(items))
}

fn atom(text: &str) -> Doc {
    leaf(quote(text))
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
pub fn quote(text: &str) -> String {
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
