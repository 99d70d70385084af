//! A spec written as a Dockerfile, as `obuilder dockerfile` writes it (`kiln dockerfile`).
//!
//! The text follows OBuilder's converter:
//! - child builds first, each as `FROM BASE as NAME` and its instructions, then a blank
//!   line; nested builds come before the build that holds them; the main stage is last;
//! - `(comment T)` is `# T`, `(workdir P)` is `WORKDIR P`, `(shell A B)` is
//!   `SHELL [ "A", "B" ]`, `(user (uid U) (gid G))` is `USER U:G`, `(user (name N))` is
//!   `USER N`, `(env K V)` is `ENV K="V"` with `"` and the escape character escaped by it;
//! - `(run …)` is `RUN CMD`; each line of a multi-line command is trimmed and they are
//!   joined by ` \`, a line break and four spaces, so Docker reads them as one line;
//! - `(copy …)` is `COPY [--chown=U:G] [--from=NAME] SRC… DST`, with `--chown` when the
//!   current user (root at the start of every stage) is not root; but a `DST/` gets one
//!   `COPY SRC DST/NAME` per source (see below);
//! - with BuildKit, each secret then each cache of a run is a
//!   `--mount=type=secret|cache,id=ID,target=PATH,uid=UID` before the command, followed
//!   by the mount's `buildkit_options` pairs; without it, mounts are left out.
//!
//! With [`Escape::Windows`] (OBuilder's `--escape windows`) the text starts with the parser
//! directive `` #escape=` ``: the backtick is Docker's escape character and joins the lines
//! of a command (a space, a backtick, a line break and four spaces), `\` may end Windows
//! paths, every stage starts as Windows' `ContainerAdministrator`, and no copy gets
//! `--chown` (Docker has none for Windows containers; OBuilder writes none for Windows users).
//!
//! Where OBuilder's text would build something else, or nothing, kiln writes more or refuses:
//! - a copy into `DST/` is one `COPY SRC DST/NAME` per source, `NAME` being the source's
//!   last component (`COPY . DST/` for `.`): kiln and OBuilder put a directory source under
//!   its own name there, while Docker's `COPY DIR DST/` would copy only its contents, so
//!   OBuilder's single `COPY SRC… DST/` builds something else whenever a source is a directory;
//! - BuildKit output starts with `# syntax=docker/dockerfile:1` (the `--mount` flags need
//!   it), or `…:1.19` when a `COPY --exclude` needs that version, where the flag became
//!   stable; with `--escape windows`, `` #escape=` `` follows it (both are parser directives);
//! - `(network host)` is `RUN --network=host` with BuildKit (OBuilder drops it); with
//!   `--escape windows` it is dropped, as Windows containers have no host network (their
//!   default network reaches out);
//! - `(exclude NAME…)` is `COPY --exclude=**/NAME…` with BuildKit (kiln, like OBuilder,
//!   leaves out files and directories of that name at any depth); a plain Dockerfile cannot
//!   exclude, so without BuildKit such a copy is refused (OBuilder drops the excludes);
//! - with `--escape unix`, a named user's copies get `--chown=NAME` (kiln owns them by that
//!   user; OBuilder's named users are Windows accounts and get none), and a BuildKit mount
//!   under a named user other than `root` is refused, as `--mount` takes only a numeric uid;
//! - with `--escape windows`, a BuildKit mount has no `uid=` (OBuilder's converter stops
//!   at a mount under a Windows user; BuildKit's Windows support ignores the owner), and
//!   `(user (uid …) (gid …))` is refused, as Windows accounts have names, not ids;
//! - `$` in an `ENV` value is escaped too (env values are literal, Docker would expand it),
//!   `SHELL` arguments are JSON strings, a multi-line comment is one `#` line per line,
//!   blank or `#` lines at either end of a run command are left out (Docker would otherwise
//!   join the next instruction into the `RUN`, or comment out the whole command), and a
//!   command line's own trailing continuation (an odd run of the escape character) gives
//!   way to the Dockerfile's;
//! - `(sandbox …)` is left out: it says where steps run, not what they make, and a
//!   Dockerfile's steps run in containers;
//! - kiln forms (`bootstrap`, `test`, `image`) and `file:` bases are refused, as are values
//!   Docker would read differently: a line break outside comments and commands, a command
//!   ending in the escape character or holding a here-document (`<<EOF`, whose body Docker
//!   reads from the Dockerfile), a space, the escape character, `$` or quote in a path,
//!   user, base or exclude, a wildcard in a copy source or exclude (kiln reads them as
//!   written), a stage name Docker does not accept or that repeats (stage names are global
//!   in a Dockerfile).
//!
//! As in OBuilder, the lines of a multi-line command become one shell line: write them as
//! one command (`a &&` / `b`), not as separate commands. Runs without `(network host)` get
//! BuildKit's default network, where kiln gives them none.
//!
//! Every refusal is a [`SpecError`] at the `line:col` of the form at fault, saying how to fix it.

use crate::{Copy, CopyFrom, Located, Mount, Op, Pos, Run, Spec, SpecError, User};

/// How [`dockerfile()`] writes its output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DockerfileOptions {
    /// Use BuildKit syntax: cache and secret mounts, `--network=host`, `COPY --exclude`.
    pub buildkit: bool,
    /// The escape character, and the user every stage starts as (OBuilder's `--escape`).
    pub escape: Escape,
}

/// The Dockerfile's escape style, as OBuilder's `--escape unix|windows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Escape {
    /// `\` escapes and continues lines; stages start as uid 0.
    #[default]
    Unix,
    /// `` ` `` escapes and continues lines (the output starts with `` #escape=` ``), so `\`
    /// can end Windows paths; stages start as `ContainerAdministrator`.
    Windows,
}

impl Escape {
    /// The character Docker reads as its escape and line continuation.
    pub fn char(self) -> char {
        match self {
            Escape::Unix => '\\',
            Escape::Windows => '`',
        }
    }

    /// The escape character as error messages name it.
    fn named(self) -> &'static str {
        match self {
            Escape::Unix => "`\\`",
            Escape::Windows => "a backtick",
        }
    }

    /// The user every stage starts as: uid 0, or Windows' administrator account.
    fn root(self) -> User {
        match self {
            Escape::Unix => User::Unix { uid: 0, gid: 0 },
            Escape::Windows => User::Name(WINDOWS_ROOT.to_string()),
        }
    }
}

/// The first line of BuildKit output: the Dockerfile syntax `RUN --mount` needs.
pub const BUILDKIT_SYNTAX: &str = "# syntax=docker/dockerfile:1";
/// The first line of BuildKit output with a `COPY --exclude` (stable since this version).
pub const BUILDKIT_EXCLUDE_SYNTAX: &str = "# syntax=docker/dockerfile:1.19";
/// The parser directive that starts `--escape windows` output (after any syntax line).
pub const WINDOWS_ESCAPE_DIRECTIVE: &str = "#escape=`";
/// The account Windows stages start as, as in OBuilder.
const WINDOWS_ROOT: &str = "ContainerAdministrator";

/// Writes `spec` as a Dockerfile (see the module docs for the rules).
///
/// `Err` names the first form, in the order the Dockerfile is written, that has no
/// faithful Dockerfile equivalent, at its `line:col`.
pub fn dockerfile(spec: &Spec, options: DockerfileOptions) -> Result<String, SpecError> {
    let mut writer = Writer {
        buildkit: options.buildkit,
        escape: options.escape,
        out: String::new(),
        stages: Vec::new(),
    };
    if options.buildkit {
        let syntax = if uses_exclude(spec) {
            BUILDKIT_EXCLUDE_SYNTAX
        } else {
            BUILDKIT_SYNTAX
        };
        writer.line(syntax);
    }
    if options.escape == Escape::Windows {
        writer.line(WINDOWS_ESCAPE_DIRECTIVE);
    }
    writer.stage(spec, None)?;
    Ok(writer.out)
}

/// Whether any copy of `spec` or of its builds has an `(exclude …)`.
fn uses_exclude(spec: &Spec) -> bool {
    let here = spec
        .ops
        .iter()
        .any(|op| matches!(&op.value, Op::Copy(c) if !c.exclude.is_empty()));
    here || spec
        .child_builds
        .iter()
        .any(|b| uses_exclude(&b.value.spec))
}

struct Writer {
    buildkit: bool,
    escape: Escape,
    out: String,
    /// Stage names written so far, lowercased as Docker compares them, with their `(build`.
    stages: Vec<(String, Pos)>,
}

impl Writer {
    fn line(&mut self, text: &str) {
        self.out.push_str(text);
        self.out.push('\n');
    }

    /// Writes one stage, after the builds it holds; `name` is `None` for the main stage.
    fn stage(&mut self, spec: &Spec, name: Option<(&str, Pos)>) -> Result<(), SpecError> {
        if let Some((name, pos)) = name {
            check_stage_name(name, pos)?;
        }
        for build in &spec.child_builds {
            let child = &build.value;
            self.stage(&child.spec, Some((&child.name, build.pos)))?;
            self.out.push('\n');
        }
        let from = self.stage_header(&spec.from, name)?;
        self.line(&from);
        let kiln_form = first_kiln_form(spec);
        let mut user = self.escape.root();
        for op in &spec.ops {
            if let Some(refusal) = kiln_form.as_ref().filter(|k| k.pos < op.pos) {
                return Err(refusal.clone());
            }
            let text = self.op(op, &mut user)?;
            self.line(&text);
        }
        kiln_form.map_or(Ok(()), Err)
    }

    /// `FROM BASE [as NAME]`, after checking the base and registering the stage name.
    fn stage_header(
        &mut self,
        base: &Located<String>,
        name: Option<(&str, Pos)>,
    ) -> Result<String, SpecError> {
        check_base(base, self.escape)?;
        if let Some(at) = self.stage_at(&base.value) {
            return Err(SpecError::new(
                base.pos,
                format!(
                    "(from …) base `{}` has the name of the build stage at {at}: in a Dockerfile, \
                     `FROM {}` would start from that stage, not from the image; rename the stage",
                    base.value, base.value
                ),
            ));
        }
        let Some((name, pos)) = name else {
            return Ok(format!("FROM {}", base.value));
        };
        if let Some(first) = self.stage_at(name) {
            return Err(SpecError::new(
                pos,
                format!(
                    "build stage `{name}` has the name of the build stage at {first}: Dockerfile stage \
                     names are shared by all nested builds (and compared ignoring case); rename one of them"
                ),
            ));
        }
        self.stages.push((name.to_ascii_lowercase(), pos));
        Ok(format!("FROM {} as {name}", base.value))
    }

    /// Where the stage Docker would take `name` for was defined, if there is one.
    fn stage_at(&self, name: &str) -> Option<Pos> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|(stage, _)| *stage == lower)
            .map(|(_, pos)| *pos)
    }

    /// One op as Dockerfile text (one instruction, perhaps on several lines); updates `user`.
    fn op(&self, op: &Located<Op>, user: &mut User) -> Result<String, SpecError> {
        let pos = op.pos;
        match &op.value {
            Op::Comment(text) => Ok(comment(text)),
            Op::Workdir(path) => {
                check_word("(workdir …)", path, Word::Line, self.escape, pos)?;
                Ok(format!("WORKDIR {path}"))
            }
            Op::Shell(args) => Ok(shell(args)),
            Op::Run(run) => self.run(run, user, pos),
            Op::Copy(copy) => self.copy(copy, user, pos),
            Op::User(new) => {
                let text = user_line(new, self.escape, pos)?;
                *user = new.clone();
                Ok(text)
            }
            Op::Env(name, value) => env(name, value, self.escape, pos),
        }
    }

    /// `RUN [--network=host] [--mount=…]… CMD`.
    fn run(&self, run: &Run, user: &User, pos: Pos) -> Result<String, SpecError> {
        let mut text = String::from("RUN ");
        if self.buildkit {
            // Windows containers have no host network; their default one reaches out.
            let host = run.network.iter().any(|n| n == "host");
            if host && self.escape == Escape::Unix {
                text.push_str("--network=host ");
            }
            let mounts = run.secrets.iter().map(|m| ("secret", m));
            for (kind, mount) in mounts.chain(run.cache.iter().map(|m| ("cache", m))) {
                text.push_str(&mount_flag(kind, mount, user, self.escape, pos)?);
                text.push(' ');
            }
        }
        text.push_str(&command(&run.shell, self.escape, pos)?);
        Ok(text)
    }

    /// `COPY [--chown=…] [--from=…] [--exclude=…]… SRC… DST`.
    fn copy(&self, copy: &Copy, user: &User, pos: Pos) -> Result<String, SpecError> {
        if !copy.exclude.is_empty() && !self.buildkit {
            return Err(SpecError::new(
                pos,
                "(copy …) has (exclude …), which a plain Dockerfile COPY cannot express: convert with \
                 --buildkit (it writes COPY --exclude=…), or remove the exclude and list those files \
                 in a .dockerignore",
            ));
        }
        let mut flags = String::new();
        if let Some(owner) = chown(user).filter(|_| self.escape == Escape::Unix) {
            flags.push_str(&format!("--chown={owner} "));
        }
        if let CopyFrom::Build(name) = &copy.from {
            flags.push_str(&format!("--from={name} "));
        }
        for name in &copy.exclude {
            check_word("(copy …) exclude", name, Word::Name, self.escape, pos)?;
            flags.push_str(&format!("--exclude=**/{name} "));
        }
        for src in &copy.src {
            check_word("(copy …) source", src, Word::Path, self.escape, pos)?;
            if src.starts_with('-') {
                return Err(SpecError::new(
                    pos,
                    format!("(copy …) source `{src}` starts with `-`, which a Dockerfile COPY reads as a flag: write it as `./{src}`"),
                ));
            }
        }
        check_word(
            "(copy …) destination",
            &copy.dst,
            Word::Arg,
            self.escape,
            pos,
        )?;
        if !copy.dst.ends_with('/') {
            return Ok(format!("COPY {flags}{} {}", copy.src.join(" "), copy.dst));
        }
        // Into `dst/`, kiln (as OBuilder) puts a directory under its own name, where
        // Docker would spill its contents into `dst/`: name each source's place.
        let lines: Vec<String> = copy
            .src
            .iter()
            .map(|src| match Copy::source_name(src) {
                Some(name) => format!("COPY {flags}{src} {}{name}", copy.dst),
                None => format!("COPY {flags}{src} {}", copy.dst),
            })
            .collect();
        Ok(lines.join("\n"))
    }
}

/// The kiln form of `spec` that comes first in its text, as a refusal.
fn first_kiln_form(spec: &Spec) -> Option<SpecError> {
    let how =
        "`kiln dockerfile` converts OBuilder specs only: remove the form to convert the rest, \
               or keep building this spec with `kiln build`";
    let bootstrap = spec.bootstrap.as_ref().map(|b| {
        SpecError::new(
            b.pos,
            format!(
                "(bootstrap …) is a kiln extension (mmdebstrap options for `{}`) with no Dockerfile \
                 equivalent; without it the base becomes Docker's `{}` image. {how}",
                spec.from.value, spec.from.value
            ),
        )
    });
    let test = spec.test.as_ref().map(|t| {
        SpecError::new(
            t.pos,
            format!("(test …) is a kiln extension (checks of the booted image) with no Dockerfile equivalent. {how}"),
        )
    });
    let image = spec.image.as_ref().map(|i| {
        SpecError::new(
            i.pos,
            format!("(image …) is a kiln extension (a disk of several OS partitions) with no Dockerfile equivalent. {how}"),
        )
    });
    let appliance = spec.appliance.as_ref().map(|a| {
        SpecError::new(
            a.pos,
            format!("(appliance …) is a kiln extension (a traced RAM-only system for one program) with no Dockerfile equivalent. {how}"),
        )
    });
    [bootstrap, test, image, appliance]
        .into_iter()
        .flatten()
        .min_by_key(|e| e.pos)
}

/// Refuses bases Docker cannot pull, or would read differently.
fn check_base(base: &Located<String>, escape: Escape) -> Result<(), SpecError> {
    if let Some(rest) = base.value.strip_prefix("file:") {
        let path = rest.strip_prefix("//").unwrap_or(rest);
        return Err(SpecError::new(
            base.pos,
            format!(
                "(from …) base `{}` is a rootfs tarball only kiln reads; Docker cannot pull it: import it \
                 (`docker import {path} NAME`) and write `(from NAME)`",
                base.value
            ),
        ));
    }
    if base.value.starts_with("layer:") {
        return Err(SpecError::new(
            base.pos,
            format!(
                "(from …) base `{}` is a layer in kiln's store; Docker cannot pull it: export it \
                 (`kiln export NAME -o root.tar`), import it (`docker import root.tar NAME`) and write `(from NAME)`",
                base.value
            ),
        ));
    }
    check_word("(from …) base", &base.value, Word::Arg, escape, base.pos)
}

/// Docker lowercases a stage name, then wants `[a-z][a-z0-9_.-]*`.
fn check_stage_name(name: &str, pos: Pos) -> Result<(), SpecError> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Ok(());
    }
    Err(SpecError::new(
        pos,
        format!(
            "build stage `{name}` cannot be a Dockerfile stage name, which starts with a letter and \
             has only letters, digits, `_`, `.` and `-`: rename the build"
        ),
    ))
}

/// Where a value is written, which decides what Docker reads specially in it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Word {
    /// The rest of the line (`WORKDIR`): spaces are kept.
    Line,
    /// One argument (`FROM`, `USER`, a `COPY` destination): a space would split it.
    Arg,
    /// A `COPY` source: one argument, where Docker also expands wildcards.
    Path,
    /// A file name for `--exclude=**/NAME`: a pattern, where `/` and a leading `!` mean more.
    Name,
}

/// Refuses an empty value, and characters Docker reads specially in instruction arguments: it expands `$`
/// variables, takes `\` as its escape, removes quotes, splits at spaces, expands wildcards
/// in sources and patterns, and a line break ends the instruction.
fn check_word(
    what: &str,
    text: &str,
    word: Word,
    escape: Escape,
    pos: Pos,
) -> Result<(), SpecError> {
    if text.is_empty() {
        return Err(SpecError::new(
            pos,
            format!("{what} is empty, and the Dockerfile needs a value there: write one"),
        ));
    }
    let bang = (word == Word::Name && text.starts_with('!'))
        .then_some("a leading `!`, which makes a Docker pattern an exception");
    let why = |c| special_in_word(c, word, escape);
    match bang.or_else(|| text.chars().find_map(why)) {
        None => Ok(()),
        Some(reason) => Err(SpecError::new(
            pos,
            format!(
                "{what} `{}` contains {reason}, so a Dockerfile cannot say it as kiln means it: \
                 rename it, or write the Dockerfile by hand",
                shown(text)
            ),
        )),
    }
}

/// Why Docker reads `c` specially in a `word`, if it does.
fn special_in_word(c: char, word: Word, escape: Escape) -> Option<&'static str> {
    let glob = matches!(word, Word::Path | Word::Name);
    match c {
        '\n' | '\r' => Some("a line break, which ends a Dockerfile instruction"),
        '$' => Some("`$`, which Docker expands as a variable"),
        c if c == escape.char() => Some(match escape {
            Escape::Unix => "`\\`, Docker's escape character (a Windows spec converts with --escape windows, whose escape is a backtick)",
            Escape::Windows => "a backtick, Docker's escape character with --escape windows",
        }),
        '"' | '\'' => Some("a quote, which Docker removes"),
        ' ' | '\t' if word != Word::Line => Some("a space, which separates Dockerfile arguments"),
        '*' | '?' | '[' if glob => {
            Some("a wildcard, which Docker expands where kiln reads it as written")
        }
        '/' if word == Word::Name => {
            Some("`/`: kiln compares excludes with file names, which never hold one")
        }
        '\\' if word == Word::Name => Some(
            "`\\`, a path separator on Windows: kiln compares excludes with file names, which never hold one",
        ),
        c if c.is_control() => Some("a control character"),
        _ => None,
    }
}

/// `text` for an error message: control characters escaped, the rest as written.
fn shown(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// `# TEXT`, one comment line per line of `text`.
fn comment(text: &str) -> String {
    let lines: Vec<String> = text.split('\n').map(|line| format!("# {line}")).collect();
    lines.join("\n")
}

/// `SHELL [ "A", "B" ]`, each argument a JSON string.
fn shell(args: &[String]) -> String {
    let quoted: Vec<String> = args.iter().map(|a| json_string(a)).collect();
    format!("SHELL [ {} ]", quoted.join(", "))
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `USER UID:GID` or `USER NAME`.
fn user_line(user: &User, escape: Escape, pos: Pos) -> Result<String, SpecError> {
    match user {
        User::Unix { uid, gid } if escape == Escape::Windows => Err(SpecError::new(
            pos,
            format!(
                "(user (uid {uid}) (gid {gid})) has no Windows equivalent: Windows containers run as \
                 named accounts, not ids; write (user (name {WINDOWS_ROOT})) or another account \
                 name, or convert with --escape unix"
            ),
        )),
        User::Unix { uid, gid } => Ok(format!("USER {uid}:{gid}")),
        User::Name(name) => {
            check_word("(user …) name", name, Word::Arg, escape, pos)?;
            Ok(format!("USER {name}"))
        }
    }
}

/// Names OBuilder (`ContainerAdministrator`, on Windows) and kiln (`root`) take as root.
fn is_root_name(name: &str) -> bool {
    name == "root" || name == WINDOWS_ROOT
}

/// The `--chown` value for copies made as `user`; `None` for root.
fn chown(user: &User) -> Option<String> {
    match user {
        User::Unix { uid: 0, gid: 0 } => None,
        User::Unix { uid, gid } => Some(format!("{uid}:{gid}")),
        User::Name(name) if is_root_name(name) => None,
        User::Name(name) => Some(name.clone()),
    }
}

/// `ENV NAME="VALUE"`, with `"`, the escape character and `$` escaped by the escape
/// character, so Docker keeps the value as written.
fn env(name: &str, value: &str, escape: Escape, pos: Pos) -> Result<String, SpecError> {
    if value.contains(['\n', '\r']) {
        return Err(SpecError::new(
            pos,
            format!(
                "(env {name} …): the value contains a line break, which a Dockerfile ENV cannot hold: \
                 set it in the run steps that need it instead"
            ),
        ));
    }
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '$') || c == escape.char() {
            escaped.push(escape.char());
        }
        escaped.push(c);
    }
    Ok(format!("ENV {name}=\"{escaped}\""))
}

/// `--mount=type=KIND,id=ID,target=PATH[,uid=UID][,K=V…]` for a secret or cache mount.
fn mount_flag(
    kind: &str,
    mount: &Mount,
    user: &User,
    escape: Escape,
    pos: Pos,
) -> Result<String, SpecError> {
    let uid = mount_uid(kind, mount, user, escape, pos)?;
    let fixed = [("id", mount.id.as_str()), ("target", &mount.target)];
    let owner = uid.as_deref().map(|uid| ("uid", uid));
    let extra = mount
        .buildkit_options
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let mut text = format!("--mount=type={kind}");
    for (key, value) in fixed.into_iter().chain(owner).chain(extra) {
        check_mount_field(kind, &mount.id, key, escape, pos)?;
        check_mount_field(kind, &mount.id, value, escape, pos)?;
        text.push_str(&format!(",{key}={value}"));
    }
    Ok(text)
}

/// The `uid=` of a mount used as `user`: none on Windows, whose accounts have no uid (and
/// BuildKit's Windows support ignores it); a named user other than `root` is refused.
fn mount_uid(
    kind: &str,
    mount: &Mount,
    user: &User,
    escape: Escape,
    pos: Pos,
) -> Result<Option<String>, SpecError> {
    match user {
        _ if escape == Escape::Windows => Ok(None),
        User::Unix { uid, .. } => Ok(Some(uid.to_string())),
        User::Name(name) if name == "root" => Ok(Some("0".to_string())),
        User::Name(name) => Err(SpecError::new(
            pos,
            format!(
                "(run …): the {kind} mount `{}` is used as (user (name {name})), but BuildKit's --mount \
                 takes only a numeric uid: write the user as (user (uid N) (gid N)), or convert \
                 without --buildkit (or with --escape windows, if this is a Windows spec)",
                mount.id
            ),
        )),
    }
}

/// Refuses what would break `--mount`'s comma-separated `key=value` list.
fn check_mount_field(
    kind: &str,
    id: &str,
    text: &str,
    escape: Escape,
    pos: Pos,
) -> Result<(), SpecError> {
    let bad = |c: char| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ',' | '"' | '\'' | '$')
            || c == escape.char()
    };
    if !text.is_empty() && !text.contains(bad) {
        return Ok(());
    }
    let windows = if escape == Escape::Unix && text.contains('\\') {
        ", or with --escape windows if this is a Windows spec"
    } else {
        ""
    };
    Err(SpecError::new(
        pos,
        format!(
            "(run …): the {kind} mount `{}` has `{}`, which BuildKit's --mount=… list cannot hold (it must \
             be non-empty, with no space, comma, quote, `$` or {}): change it, or convert without --buildkit{windows}",
            shown(id),
            shown(text),
            escape.named()
        ),
    ))
}

/// The characters OBuilder trims from each command line (OCaml's `String.trim`).
fn is_trimmed(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c')
}

/// A run command as `RUN` text: lines trimmed and joined with continuations (` \`, or
/// `` ` `` with `--escape windows`).
fn command(shell: &str, escape: Escape, pos: Pos) -> Result<String, SpecError> {
    let lines: Vec<&str> = shell
        .split('\n')
        .map(|l| l.trim_matches(is_trimmed))
        .collect();
    // Docker skips blank and `#` lines inside a continued instruction: at the end that would
    // join the next instruction into this one, and a `#` first line would comment out all.
    let kept = |l: &&str| !l.is_empty() && !l.starts_with('#');
    let (Some(first), Some(last)) = (lines.iter().position(kept), lines.iter().rposition(kept))
    else {
        return Err(SpecError::new(
            pos,
            "(run …): the command is empty (or only # comments), and a Dockerfile RUN needs one: \
             write a command, or remove the run",
        ));
    };
    let lines = &lines[first..=last];
    if lines[lines.len() - 1].ends_with(escape.char()) {
        return Err(trailing_escape(escape, pos));
    }
    if let Some(word) = shell.split_whitespace().find(|w| is_heredoc(w)) {
        return Err(SpecError::new(
            pos,
            format!(
                "(run …): the command has the here-document `{word}`, whose body a Dockerfile RUN would take \
                 from the Dockerfile's next lines, not from the command: write the text with printf \
                 or copy it in as a file"
            ),
        ));
    }
    let last = lines.len() - 1;
    let joined: Vec<&str> = (lines.iter().enumerate())
        .map(|(i, line)| {
            if i < last {
                without_continuation(line, escape.char())
            } else {
                line
            }
        })
        .collect();
    Ok(joined.join(&format!(" {}\n    ", escape.char())))
}

/// The refusal of a command whose last line ends with the escape character.
fn trailing_escape(escape: Escape, pos: Pos) -> SpecError {
    let fix = match escape {
        Escape::Unix => {
            "remove the trailing backslash (or, for a Windows spec, convert with --escape windows, \
             where `\\` is no escape)"
        }
        Escape::Windows => "remove the trailing backtick",
    };
    SpecError::new(
        pos,
        format!(
            "(run …): the command ends with {}, which a Dockerfile reads as a line continuation (the \
             next instruction would join the command): {fix}",
            escape.named()
        ),
    )
}

/// `line` without a final line continuation of its own (an odd run of the escape character
/// `esc` at its end, as `\` continues a shell line and `` ` `` a PowerShell one): the
/// Dockerfile continuation that replaces the line break joins the lines as the shell would.
fn without_continuation(line: &str, esc: char) -> &str {
    let run = line.len() - line.trim_end_matches(esc).len();
    if run % 2 == 1 {
        &line[..line.len() - 1]
    } else {
        line
    }
}

/// Whether a word of a command is a here-document operator as Dockerfiles read them
/// (`<<EOF`, `<<-"EOF"`, `0<<EOF`; not `<<<` or a lone `<<`).
fn is_heredoc(word: &str) -> bool {
    let rest = word.trim_start_matches(|c: char| c.is_ascii_digit());
    let Some(rest) = rest.strip_prefix("<<") else {
        return false;
    };
    let name = rest.strip_prefix('-').unwrap_or(rest);
    !name.is_empty() && !name.contains('<')
}
