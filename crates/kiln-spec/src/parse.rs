//! From S-expressions to the [`Spec`] AST, checking the shape of every form.
//!
//! A spec is `((build NAME SPEC)* (from BASE) ITEM…)` where each ITEM is an
//! OBuilder op or a kiln form. kiln forms are top-level forms OBuilder never
//! uses; to add one (say `(deploy …)`), name it in [`KILN_FORMS`], give [`Spec`]
//! a field, and parse it in [`SpecParts::kiln_form`]. `(test …)` is parsed in
//! `parse/checks.rs`, `(image …)` in `parse/image.rs`.
//!
//! Value rules (env names, absolute targets, `..` in sources, …) are in
//! `validate.rs`; this module calls them with the atom being judged.
//!
//! Record-like forms (`run`, `copy`, `user`, `bootstrap`, cache and secret
//! mounts, checks, partitions) take their fields in any order, each at most
//! once. `(network …)` accepts any names, as OBuilder does; only `host` changes
//! anything. `test` and `image` hold repeated items (checks, partitions) among
//! their once-only fields, and are accepted only in the outermost spec.

mod appliance;
mod checks;
mod image;

use crate::sexp::{self, Atom, List, Sexp};
use crate::validate::{self, suggest};
use crate::{
    ApplianceSpec, Bootstrap, ChildBuild, Copy, CopyFrom, ImageSpec, Located, Mount, Op, Pos, Run,
    SandboxKind, Spec, SpecError, TestSpec, User,
};

/// Forms that structure a spec.
const STRUCTURE_FORMS: &[&str] = &["build", "from"];
/// kiln's own top-level forms; each may appear once, anywhere after `from`.
const KILN_FORMS: &[&str] = &["bootstrap", "sandbox", "test", "image", "appliance"];
/// kiln forms that only the outermost spec may hold.
const TOP_LEVEL_ONLY_FORMS: &[&str] = &["test", "image", "appliance"];
/// OBuilder's operations.
const OP_FORMS: &[&str] = &["comment", "workdir", "shell", "run", "copy", "user", "env"];

const RUN_FIELDS: &[&str] = &["cache", "network", "secrets", "shell"];
const COPY_FIELDS: &[&str] = &["from", "src", "dst", "exclude"];
const USER_FIELDS: &[&str] = &["uid", "gid", "name"];
const BOOTSTRAP_FIELDS: &[&str] = &["variant", "include", "skeleton", "mirror", "arch"];
const MOUNT_FIELDS: &[&str] = &["target", "buildkit_options"];
/// `test` settings; each at most once, among any number of checks.
const TEST_SETTINGS: &[&str] = &["memory", "cpus", "boot-timeout"];
const CHECK_KINDS: &[&str] = &["console", "port", "http", "tcp"];
const CONSOLE_FIELDS: &[&str] = &["name", "expect", "timeout"];
const PORT_FIELDS: &[&str] = &["name", "port", "timeout"];
const HTTP_FIELDS: &[&str] = &["name", "port", "path", "status", "body", "timeout"];
const TCP_FIELDS: &[&str] = &["name", "port", "send", "expect", "timeout"];
/// `image` fields; `partition` may repeat, the others appear at most once.
const IMAGE_FIELDS: &[&str] = &["partition", "default", "node-types", "arch"];
const PARTITION_FIELDS: &[&str] = &["name", "build", "spec", "size", "label"];
const APPLIANCE_FIELDS: &[&str] = &[
    "train", "run", "prerun", "postrun", "include", "exclude", "compress",
];

/// Reads and validates a whole spec.
pub(crate) fn parse_spec(text: &str) -> Result<Spec, SpecError> {
    match sexp::read(text)? {
        Sexp::List(list) => spec_from_list(&list, None),
        Sexp::Atom(atom) => Err(SpecError::new(
            atom.pos,
            format!(
                "a spec is a list like `((from BASE) OP…)`, found the atom `{}`: wrap the spec in parentheses",
                atom.text
            ),
        )),
    }
}

/// Reads a spec list; `child_of` names the child build it belongs to, if any.
fn spec_from_list(list: &List, child_of: Option<&str>) -> Result<Spec, SpecError> {
    let mut parts = SpecParts {
        child_of: child_of.map(str::to_string),
        ..SpecParts::default()
    };
    for item in &list.items {
        parts.item(item)?;
    }
    parts.finish(list.pos)
}

/// A list whose first element is an atom: `(NAME ARG…)`.
#[derive(Clone, Copy)]
struct Form<'a> {
    name: &'a Atom,
    args: &'a [Sexp],
    pos: Pos,
}

impl<'a> Form<'a> {
    /// Views `sexp` as a form; `context` says where it sits, for the error.
    fn of(sexp: &'a Sexp, context: &str) -> Result<Form<'a>, SpecError> {
        let list = match sexp {
            Sexp::List(list) => list,
            Sexp::Atom(atom) => {
                return Err(SpecError::new(
                    atom.pos,
                    format!(
                        "expected a form like `(name …)` in {context}, found the atom `{}`",
                        atom.text
                    ),
                ))
            }
        };
        match list.items.split_first() {
            Some((Sexp::Atom(name), args)) => Ok(Form {
                name,
                args,
                pos: list.pos,
            }),
            Some((Sexp::List(inner), _)) => Err(SpecError::new(
                inner.pos,
                format!("expected a name at the start of this list in {context}, found a list"),
            )),
            None => Err(SpecError::new(
                list.pos,
                format!("empty list `()` in {context}: delete it or write a form like `(name …)`"),
            )),
        }
    }

    fn name(&self) -> &'a str {
        &self.name.text
    }

    /// Requires exactly `N` atom arguments; `usage` is shown in the error.
    fn atoms<const N: usize>(&self, usage: &str) -> Result<[&'a Atom; N], SpecError> {
        if self.args.len() != N {
            let plural = if N == 1 { "argument" } else { "arguments" };
            let pos = self.args.get(N).map_or(self.pos, Sexp::pos);
            return Err(SpecError::new(
                pos,
                format!(
                    "`{}` takes {N} {plural}, found {}: write `{usage}`",
                    self.name(),
                    self.args.len()
                ),
            ));
        }
        let atoms = self.any_atoms(usage)?;
        atoms
            .try_into()
            .map_err(|_| SpecError::new(self.pos, "internal error: argument count changed"))
    }

    /// Requires every argument to be an atom, however many there are.
    fn any_atoms(&self, usage: &str) -> Result<Vec<&'a Atom>, SpecError> {
        self.args
            .iter()
            .map(|arg| match arg {
                Sexp::Atom(atom) => Ok(atom),
                Sexp::List(list) => Err(SpecError::new(
                    list.pos,
                    format!(
                        "`{}` takes atoms, found a list: write `{usage}`",
                        self.name()
                    ),
                )),
            })
            .collect()
    }

    /// Requires at least one atom argument.
    fn some_atoms(&self, usage: &str) -> Result<Vec<&'a Atom>, SpecError> {
        if self.args.is_empty() {
            return Err(SpecError::new(
                self.pos,
                format!(
                    "`{}` needs at least one argument: write `{usage}`",
                    self.name()
                ),
            ));
        }
        self.any_atoms(usage)
    }

    /// The single atom argument.
    fn atom(&self, usage: &str) -> Result<&'a Atom, SpecError> {
        let [atom] = self.atoms::<1>(usage)?;
        Ok(atom)
    }
}

/// The fields of a record-like form (`run`, `copy`, `user`, `bootstrap`, mounts):
/// each field a form named from a fixed set, in any order, at most once.
struct Fields<'a> {
    /// How errors name the owner, e.g. "`run`" or "cache `opam`".
    owner: String,
    pos: Pos,
    found: Vec<Form<'a>>,
}

impl<'a> Fields<'a> {
    fn of(
        owner: String,
        pos: Pos,
        args: &'a [Sexp],
        known: &[&str],
    ) -> Result<Fields<'a>, SpecError> {
        let mut fields = Fields::new(owner, pos);
        for arg in args {
            let field = Form::of(arg, &fields.owner)?;
            fields.add(field, known)?;
        }
        Ok(fields)
    }

    fn new(owner: String, pos: Pos) -> Fields<'a> {
        Fields {
            owner,
            pos,
            found: Vec::new(),
        }
    }

    /// Adds one field, which must be in `known` and not seen before.
    fn add(&mut self, field: Form<'a>, known: &[&str]) -> Result<(), SpecError> {
        let owner = &self.owner;
        if !known.contains(&field.name()) {
            return Err(SpecError::new(
                field.pos,
                format!(
                    "unknown field `{}` in {owner}: its fields are {}",
                    field.name(),
                    backquoted(known.iter().copied())
                ),
            )
            .with_suggestion(suggest(field.name(), known.iter().copied())));
        }
        if let Some(first) = self.found.iter().find(|f| f.name() == field.name()) {
            return Err(SpecError::new(
                field.pos,
                format!(
                    "duplicate field `{}` in {owner} (the first is at {}): keep only one",
                    field.name(),
                    first.pos
                ),
            ));
        }
        self.found.push(field);
        Ok(())
    }

    fn get(&self, name: &str) -> Option<Form<'a>> {
        self.found.iter().find(|f| f.name() == name).copied()
    }

    fn require(&self, name: &str, usage: &str) -> Result<Form<'a>, SpecError> {
        self.get(name).ok_or_else(|| {
            SpecError::new(
                self.pos,
                format!(
                    "{} is missing its `{name}` field: add `{usage}`",
                    self.owner
                ),
            )
        })
    }

    /// The single atom of an optional field.
    fn atom(&self, name: &str, usage: &str) -> Result<Option<&'a Atom>, SpecError> {
        self.get(name).map(|f| f.atom(usage)).transpose()
    }
}

/// `names` as "`a`, `b`, `c`", for messages that list what is allowed.
fn backquoted<'n>(names: impl IntoIterator<Item = &'n str>) -> String {
    names
        .into_iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A spec's items as they are read, checked for order and uniqueness.
#[derive(Default)]
struct SpecParts {
    /// The child build whose spec this is; `None` for the outermost spec.
    child_of: Option<String>,
    builds: Vec<Located<ChildBuild>>,
    from: Option<(Located<String>, Pos)>,
    bootstrap: Option<Located<Bootstrap>>,
    sandbox: Option<Located<SandboxKind>>,
    ops: Vec<Located<Op>>,
    test: Option<Located<TestSpec>>,
    image: Option<Located<ImageSpec>>,
    appliance: Option<Located<ApplianceSpec>>,
}

impl SpecParts {
    fn item(&mut self, item: &Sexp) -> Result<(), SpecError> {
        let form = Form::of(item, "the spec")?;
        let name = form.name();
        if name == "build" {
            return self.build(form);
        }
        if name == "from" {
            return self.from(form);
        }
        let known_here = KILN_FORMS.contains(&name) || OP_FORMS.contains(&name);
        if !known_here {
            let known = STRUCTURE_FORMS
                .iter()
                .chain(KILN_FORMS)
                .chain(OP_FORMS)
                .copied();
            return Err(
                SpecError::new(form.pos, format!("unknown directive `{name}`"))
                    .with_suggestion(suggest(name, known)),
            );
        }
        if self.from.is_none() {
            return Err(SpecError::new(
                form.pos,
                format!("`{name}` before `from`: a spec starts with its child builds, then `(from BASE)`, then the rest"),
            ));
        }
        if KILN_FORMS.contains(&name) {
            return self.kiln_form(form);
        }
        let op = op(form, &self.builds)?;
        self.ops.push(Located::new(op, form.pos));
        Ok(())
    }

    fn build(&mut self, form: Form) -> Result<(), SpecError> {
        if self.from.is_some() {
            return Err(SpecError::new(
                form.pos,
                "`build` after `from`: child builds come first; move this `(build …)` above `(from …)`",
            ));
        }
        let usage = "(build NAME ((from BASE) OP…))";
        let (name, spec) = match form.args {
            [Sexp::Atom(name), Sexp::List(spec)] => (name, spec),
            [_, _] => {
                return Err(SpecError::new(
                    form.pos,
                    format!("`build` takes a name and a spec list: write `{usage}`"),
                ))
            }
            args => {
                let pos = args.get(2).map_or(form.pos, Sexp::pos);
                return Err(SpecError::new(
                    pos,
                    format!(
                        "`build` takes 2 arguments, found {}: write `{usage}`",
                        args.len()
                    ),
                ));
            }
        };
        validate::non_empty("build name", "(build dev …)", name)?;
        if let Some(first) = self.builds.iter().find(|b| b.value.name == name.text) {
            return Err(SpecError::new(
                name.pos,
                format!(
                    "duplicate build name `{}` (the first is at {}): rename one of them",
                    name.text, first.pos
                ),
            ));
        }
        let spec = spec_from_list(spec, Some(&name.text))?;
        self.builds.push(Located::new(
            ChildBuild {
                name: name.text.clone(),
                spec,
            },
            form.pos,
        ));
        Ok(())
    }

    fn from(&mut self, form: Form) -> Result<(), SpecError> {
        if let Some((_, first)) = &self.from {
            return Err(SpecError::new(
                form.pos,
                format!(
                    "second `from` (the first is at {first}): a spec has one base; use `(build NAME …)` for another stage"
                ),
            ));
        }
        let base = form.atom("(from BASE)")?;
        validate::non_empty("`from` base", "(from debian:bookworm)", base)?;
        self.from = Some((Located::new(base.text.clone(), base.pos), form.pos));
        Ok(())
    }

    fn kiln_form(&mut self, form: Form) -> Result<(), SpecError> {
        let name = form.name();
        if let Some(build) = &self.child_of {
            if TOP_LEVEL_ONLY_FORMS.contains(&name) {
                return Err(SpecError::new(
                    form.pos,
                    format!(
                        "`{name}` inside child build `{build}`: `({name} …)` belongs to the outermost spec only; move it there"
                    ),
                ));
            }
        }
        let first = match name {
            "bootstrap" => self.bootstrap.as_ref().map(|f| f.pos),
            "sandbox" => self.sandbox.as_ref().map(|f| f.pos),
            "test" => self.test.as_ref().map(|f| f.pos),
            "image" => self.image.as_ref().map(|f| f.pos),
            "appliance" => self.appliance.as_ref().map(|f| f.pos),
            _ => None,
        };
        if let Some(first) = first {
            return Err(SpecError::new(
                form.pos,
                format!("second `{name}` (the first is at {first}): merge them into one"),
            ));
        }
        match name {
            "bootstrap" => self.bootstrap = Some(Located::new(bootstrap(form)?, form.pos)),
            "sandbox" => self.sandbox = Some(Located::new(sandbox(form)?, form.pos)),
            "test" => self.test = Some(Located::new(checks::test(form)?, form.pos)),
            "image" => self.image = Some(Located::new(image::image(form, &self.builds)?, form.pos)),
            "appliance" => {
                self.appliance = Some(Located::new(appliance::appliance(form)?, form.pos))
            }
            other => {
                return Err(SpecError::new(
                    form.pos,
                    format!("internal error: kiln form `{other}` has no parser"),
                ))
            }
        }
        Ok(())
    }

    fn finish(self, pos: Pos) -> Result<Spec, SpecError> {
        let Some((from, _)) = self.from else {
            return Err(SpecError::new(
                pos,
                "spec has no `from`: add `(from BASE)` after the child builds, e.g. `(from debian:bookworm)`",
            ));
        };
        Ok(Spec {
            child_builds: self.builds,
            from,
            bootstrap: self.bootstrap,
            sandbox: self.sandbox,
            ops: self.ops,
            test: self.test,
            image: self.image,
            appliance: self.appliance,
        })
    }
}

/// Parses one OBuilder op; `builds` are the stages `copy` may read from.
fn op(form: Form, builds: &[Located<ChildBuild>]) -> Result<Op, SpecError> {
    Ok(match form.name() {
        "comment" => Op::Comment(form.atom("(comment \"TEXT\")")?.text.clone()),
        "workdir" => Op::Workdir(form.atom("(workdir PATH)")?.text.clone()),
        "shell" => Op::Shell(texts(form.some_atoms("(shell /bin/sh -c)")?)),
        "env" => {
            let [name, value] = form.atoms::<2>("(env NAME VALUE)")?;
            validate::env_name(name)?;
            Op::Env(name.text.clone(), value.text.clone())
        }
        "user" => Op::User(user(form)?),
        "run" => Op::Run(run(form)?),
        "copy" => Op::Copy(copy(form, builds)?),
        other => {
            return Err(SpecError::new(
                form.pos,
                format!("internal error: op `{other}` has no parser"),
            ))
        }
    })
}

fn texts(atoms: Vec<&Atom>) -> Vec<String> {
    atoms.into_iter().map(|a| a.text.clone()).collect()
}

fn user(form: Form) -> Result<User, SpecError> {
    let fields = Fields::of("`user`".into(), form.pos, form.args, USER_FIELDS)?;
    if let Some(name) = fields.get("name") {
        if let Some(id) = fields.get("uid").or(fields.get("gid")) {
            return Err(SpecError::new(
                id.pos,
                "`user` takes either `(uid N) (gid N)` or `(name NAME)`, not both: delete one",
            ));
        }
        return Ok(User::Name(name.atom("(name NAME)")?.text.clone()));
    }
    if fields.found.is_empty() {
        return Err(SpecError::new(
            form.pos,
            "`user` is empty: write `(user (uid N) (gid N))` or `(user (name NAME))`",
        ));
    }
    let uid = fields.require("uid", "(uid N)")?.atom("(uid N)")?;
    let gid = fields.require("gid", "(gid N)")?.atom("(gid N)")?;
    Ok(User::Unix {
        uid: validate::unix_id("uid", uid)?,
        gid: validate::unix_id("gid", gid)?,
    })
}

fn run(form: Form) -> Result<Run, SpecError> {
    // `(run "make")` is the likeliest slip; say exactly what to write instead.
    if let Some(Sexp::Atom(command)) = form.args.first() {
        return Err(SpecError::new(
            command.pos,
            format!(
                "`run` takes fields, found the atom `{}`: write `(run (shell {}))`",
                command.text,
                crate::print::quote(&command.text)
            ),
        ));
    }
    let fields = Fields::of("`run`".into(), form.pos, form.args, RUN_FIELDS)?;
    let shell = fields
        .require("shell", "(shell \"COMMAND\")")?
        .atom("(shell \"COMMAND\")")?;
    let cache = match fields.get("cache") {
        Some(f) => mounts("cache", f)?,
        None => Vec::new(),
    };
    let secrets = match fields.get("secrets") {
        Some(f) => mounts("secret", f)?,
        None => Vec::new(),
    };
    let network = match fields.get("network") {
        Some(f) => texts(f.any_atoms("(network host)")?),
        None => Vec::new(),
    };
    Ok(Run {
        cache,
        network,
        secrets,
        shell: shell.text.clone(),
    })
}

/// `(cache (ID (target PATH))…)` or `(secrets …)`; `kind` is `cache` or `secret`.
fn mounts(kind: &str, field: Form) -> Result<Vec<Mount>, SpecError> {
    let context = format!("`{}`", field.name());
    let usage = format!("({} (ID (target /absolute/path)))", field.name());
    field
        .args
        .iter()
        .map(|arg| {
            let mount = Form::of(arg, &context).map_err(|e| SpecError {
                message: format!("{}: write `{usage}`", e.message),
                ..e
            })?;
            validate::mount_id(kind, mount.name)?;
            let owner = format!("{kind} `{}`", mount.name());
            let fields = Fields::of(owner, mount.pos, mount.args, MOUNT_FIELDS)?;
            let target = fields
                .require("target", "(target /absolute/path)")?
                .atom("(target PATH)")?;
            validate::mount_target(kind, target)?;
            let buildkit_options = match fields.get("buildkit_options") {
                Some(f) => buildkit_options(f)?,
                None => Vec::new(),
            };
            Ok(Mount {
                id: mount.name.text.clone(),
                target: target.text.clone(),
                buildkit_options,
            })
        })
        .collect()
}

/// `(buildkit_options ((KEY VALUE)…))`, as OBuilder writes the pairs.
fn buildkit_options(field: Form) -> Result<Vec<(String, String)>, SpecError> {
    let usage = "(buildkit_options ((sharing locked)))";
    let [Sexp::List(pairs)] = field.args else {
        let pos = field.args.first().map_or(field.pos, Sexp::pos);
        return Err(SpecError::new(
            pos,
            format!("`buildkit_options` takes one list of (KEY VALUE) pairs: write `{usage}`"),
        ));
    };
    pairs
        .items
        .iter()
        .map(|pair| match pair {
            Sexp::List(List { items, .. }) => match items.as_slice() {
                [Sexp::Atom(k), Sexp::Atom(v)] => Ok((k.text.clone(), v.text.clone())),
                _ => Err(SpecError::new(
                    pair.pos(),
                    format!("a buildkit option is a pair of atoms `(KEY VALUE)`: write `{usage}`"),
                )),
            },
            Sexp::Atom(a) => Err(SpecError::new(
                a.pos,
                format!("a buildkit option is a pair `(KEY VALUE)`, found the atom `{}`: write `{usage}`", a.text),
            )),
        })
        .collect()
}

fn copy(form: Form, builds: &[Located<ChildBuild>]) -> Result<Copy, SpecError> {
    let fields = Fields::of("`copy`".into(), form.pos, form.args, COPY_FIELDS)?;
    let from = match fields.get("from") {
        Some(f) => copy_from(f, builds)?,
        None => CopyFrom::Context,
    };
    let src_usage = "(src PATH…)";
    let src = fields.require("src", src_usage)?.some_atoms(src_usage)?;
    let dst = fields.require("dst", "(dst PATH)")?.atom("(dst PATH)")?;
    for path in &src {
        validate::copy_source(path)?;
    }
    // Several sources into a `dst` without `/` parse, as in OBuilder; the builder refuses
    // them when it runs the step (its error names this op's line:col).
    let exclude = match fields.get("exclude") {
        Some(f) => texts(f.any_atoms("(exclude NAME…)")?),
        None => Vec::new(),
    };
    Ok(Copy {
        from,
        src: texts(src),
        dst: dst.text.clone(),
        exclude,
    })
}

/// `(from context)` or `(from (build NAME))` inside a `copy`.
fn copy_from(field: Form, builds: &[Located<ChildBuild>]) -> Result<CopyFrom, SpecError> {
    let usage = "(from context)` or `(from (build NAME))";
    let [arg] = field.args else {
        let pos = field.args.get(1).map_or(field.pos, Sexp::pos);
        return Err(SpecError::new(
            pos,
            format!(
                "`from` in `copy` takes 1 argument, found {}: write `{usage}`",
                field.args.len()
            ),
        ));
    };
    let source = match arg {
        Sexp::Atom(atom) if atom.text == "context" => return Ok(CopyFrom::Context),
        Sexp::Atom(atom) => {
            return Err(SpecError::new(
                atom.pos,
                format!("`copy` cannot read from `{}`: write `{usage}`", atom.text),
            )
            .with_suggestion(suggest(&atom.text, ["context"])))
        }
        Sexp::List(_) => Form::of(arg, "`from`")?,
    };
    if source.name() != "build" {
        return Err(SpecError::new(
            source.name.pos,
            format!(
                "`copy` cannot read from `({} …)`: write `{usage}`",
                source.name()
            ),
        )
        .with_suggestion(suggest(source.name(), ["build"])));
    }
    let name = source.atom("(build NAME)")?;
    child_build("`copy` reads from", name, builds)?;
    Ok(CopyFrom::Build(name.text.clone()))
}

/// Checks that `name` is a child build of this spec; `user` begins the error,
/// e.g. "`copy` reads from".
fn child_build(user: &str, name: &Atom, builds: &[Located<ChildBuild>]) -> Result<(), SpecError> {
    if builds.iter().any(|b| b.value.name == name.text) {
        return Ok(());
    }
    let defined: Vec<&str> = builds.iter().map(|b| b.value.name.as_str()).collect();
    let hint = if defined.is_empty() {
        "this spec defines no child builds; add `(build NAME …)` before `from`".to_string()
    } else {
        format!("this spec defines {}", backquoted(defined.iter().copied()))
    };
    Err(SpecError::new(
        name.pos,
        format!("{user} unknown build `{}`: {hint}", name.text),
    )
    .with_suggestion(suggest(&name.text, defined)))
}

/// `(sandbox chroot|qemu)`.
fn sandbox(form: Form) -> Result<SandboxKind, SpecError> {
    let name = form.atom("(sandbox qemu)")?;
    SandboxKind::from_name(&name.text).ok_or_else(|| {
        SpecError::new(
            name.pos,
            format!(
                "unknown sandbox `{}`: write `(sandbox chroot)` (namespaces, the default) or `(sandbox qemu)` (a VM per step)",
                name.text
            ),
        )
        .with_suggestion(suggest(&name.text, SandboxKind::NAMES.iter().copied()))
    })
}

fn bootstrap(form: Form) -> Result<Bootstrap, SpecError> {
    let fields = Fields::of("`bootstrap`".into(), form.pos, form.args, BOOTSTRAP_FIELDS)?;
    let single = |name: &str, usage: &str| -> Result<Option<&Atom>, SpecError> {
        fields.get(name).map(|f| f.atom(usage)).transpose()
    };
    let variant = single("variant", "(variant minbase)")?;
    if let Some(v) = variant {
        validate::bootstrap_variant(v)?;
    }
    let include = match fields.get("include") {
        Some(f) => texts(f.any_atoms("(include PACKAGE…)")?),
        None => Vec::new(),
    };
    let skeleton = match fields.get("skeleton") {
        Some(f) => {
            let dirs = f.some_atoms("(skeleton DIRECTORY…)")?;
            for dir in &dirs {
                validate::skeleton_dir(dir)?;
            }
            texts(dirs)
        }
        None => Vec::new(),
    };
    Ok(Bootstrap {
        variant: variant.map(|a| a.text.clone()),
        include,
        skeleton,
        mirror: single("mirror", "(mirror URL)")?.map(|a| a.text.clone()),
        arch: single("arch", "(arch amd64)")?.map(|a| a.text.clone()),
    })
}
