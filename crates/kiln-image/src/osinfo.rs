//! What operating system a root filesystem holds: its `os-release` identity, its Debian
//! architecture and its installed dpkg packages.
//!
//! Everything here reads files *inside* a root filesystem that is not the running system.
//! Symbolic links in it (Debian's `/etc/os-release` is a link to `../usr/lib/os-release`,
//! `/bin/sh` a link to `dash`, `/bin` a link to `usr/bin`) are therefore resolved with
//! [`resolve_in_root`], which treats the tree's top as `/`: an absolute target never reaches
//! the host's files and `..` never climbs above the tree.

use crate::{ImageError, OsDescriptor};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

/// The most symbolic links followed while resolving one path, as Linux's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// Resolves `path` (absolute or relative, both meaning "from the top of the tree") inside
/// `root` the way the kernel would if `root` were `/`, following every symbolic link.
///
/// Returns the host path of the final file, always under `root`, or `None` when some
/// component does not exist (or is not a directory where one is needed).
pub fn resolve_in_root(root: &Path, path: &Path) -> Result<Option<PathBuf>, ImageError> {
    let mut pending: VecDeque<OsString> = normal_components(path).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links_followed = 0;
    while let Some(name) = pending.pop_front() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = join_all(root, &resolved).join(&name);
        let meta = match fs::symlink_metadata(&candidate) {
            Ok(meta) => meta,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(ImageError::io(&candidate, e)),
        };
        if !meta.file_type().is_symlink() {
            resolved.push(name);
            continue;
        }
        links_followed += 1;
        if links_followed > MAX_SYMLINKS {
            return Err(ImageError::Tool(format!(
                "{}: too many levels of symbolic links while resolving {} inside {}; \
                 fix the link loop in the image",
                candidate.display(),
                path.display(),
                root.display()
            )));
        }
        let target = fs::read_link(&candidate).map_err(|e| ImageError::io(&candidate, e))?;
        if target.is_absolute() {
            resolved.clear();
        }
        for (i, part) in normal_components(&target).enumerate() {
            pending.insert(i, part);
        }
    }
    Ok(Some(join_all(root, &resolved)))
}

/// The components of `path` that name something (`..` kept, `/` and `.` dropped).
fn normal_components(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_os_string()),
        Component::ParentDir => Some(OsString::from("..")),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

fn join_all(root: &Path, parts: &[OsString]) -> PathBuf {
    let mut out = root.to_path_buf();
    out.extend(parts);
    out
}

/// Missing files and "not a directory" both mean the path does not exist in the tree.
fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// Describes the OS in the tree at `rootfs`.
///
/// Identity comes from `etc/os-release`, or `usr/lib/os-release` when the former is absent
/// (os-release(5): the first one found is used exclusively). Fields the file lacks take the
/// defaults os-release(5) gives (`ID=linux`, `NAME=Linux`, `PRETTY_NAME=Linux`).
///
/// When neither file exists the result has `id` `"unknown"` and empty names, and this is
/// not an error: a partition may legitimately hold something that is not a full
/// distribution (a data partition, a busybox or appliance tree), and the image is still
/// worth building and describing; the descriptor just says that nothing identified it.
///
/// The architecture comes from [`debian_arch`]; `"unknown"` when nothing tells it.
pub fn os_descriptor(rootfs: &Path) -> Result<OsDescriptor, ImageError> {
    let arch = debian_arch(rootfs)?.unwrap_or_else(|| "unknown".to_string());
    let Some(fields) = os_release(rootfs)? else {
        return Ok(OsDescriptor {
            id: "unknown".to_string(),
            arch,
            ..OsDescriptor::default()
        });
    };
    let field = |key: &str, default: &str| {
        fields
            .get(key)
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    Ok(OsDescriptor {
        id: field("ID", "linux"),
        name: field("NAME", "Linux"),
        version: field("VERSION_ID", ""),
        pretty_name: field("PRETTY_NAME", "Linux"),
        arch,
    })
}

/// All fields of the tree's os-release file, or `None` when it has none.
pub fn os_release(rootfs: &Path) -> Result<Option<BTreeMap<String, String>>, ImageError> {
    for candidate in ["etc/os-release", "usr/lib/os-release"] {
        if let Some(text) = read_in_root(rootfs, Path::new(candidate))? {
            return Ok(Some(parse_os_release(&text)));
        }
    }
    Ok(None)
}

/// Reads a text file inside the tree (links resolved in it); `None` when it does not exist
/// or is not a regular file.
pub(crate) fn read_in_root(rootfs: &Path, path: &Path) -> Result<Option<String>, ImageError> {
    let Some(host) = resolve_in_root(rootfs, path)? else {
        return Ok(None);
    };
    if !host.is_file() {
        return Ok(None);
    }
    let bytes = fs::read(&host).map_err(|e| ImageError::io(&host, e))?;
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Parses os-release(5) text: `KEY=value` assignments in shell syntax.
///
/// Values may be unquoted (a backslash escapes the next character), in single quotes
/// (literal) or in double quotes (a backslash escapes only `$`, `` ` ``, `"`, `\` and a
/// newline, as in the shell); quoted and unquoted pieces next to each other concatenate.
/// Nothing is expanded. Comments (`#` at the start of a line) and blank lines are skipped,
/// lines that are not assignments are ignored, and a later assignment of a key wins.
/// Unquoted spaces inside a value are kept and trailing ones dropped, as systemd does for
/// files that do not quote `NAME=Debian GNU/Linux`.
pub fn parse_os_release(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut chars = text.chars().peekable();
    while chars.peek().is_some() {
        skip_blanks(&mut chars);
        let key = take_key(&mut chars);
        if key.is_empty() || chars.peek() != Some(&'=') {
            skip_line(&mut chars);
            continue;
        }
        chars.next();
        if let Some(value) = take_value(&mut chars) {
            fields.insert(key, value);
        }
    }
    fields
}

type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

fn skip_blanks(chars: &mut Chars) {
    while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
}

fn skip_line(chars: &mut Chars) {
    for c in chars.by_ref() {
        if c == '\n' {
            break;
        }
    }
}

/// A shell variable name: `[A-Za-z_][A-Za-z0-9_]*`; empty when the line has none.
fn take_key(chars: &mut Chars) -> String {
    let mut key = String::new();
    while let Some(c) = chars.next_if(|c| c.is_ascii_alphanumeric() || *c == '_') {
        key.push(c);
    }
    if key.starts_with(|c: char| c.is_ascii_digit()) {
        key.clear();
    }
    key
}

/// Reads one value up to the end of its line; `None` (and the rest of the input skipped
/// up to a line end) when a quote is never closed.
fn take_value(chars: &mut Chars) -> Option<String> {
    let mut value = String::new();
    // Length of `value` up to its last character that is not unquoted whitespace.
    let mut kept = 0;
    while let Some(c) = chars.next() {
        match c {
            '\n' => break,
            '\'' => {
                take_single_quoted(chars, &mut value)?;
                kept = value.len();
            }
            '"' => {
                take_double_quoted(chars, &mut value)?;
                kept = value.len();
            }
            '\\' => match chars.next() {
                Some('\n') | None => {}
                Some(escaped) => {
                    value.push(escaped);
                    kept = value.len();
                }
            },
            ' ' | '\t' | '\r' => value.push(c),
            c => {
                value.push(c);
                kept = value.len();
            }
        }
    }
    value.truncate(kept);
    Some(value)
}

fn take_single_quoted(chars: &mut Chars, value: &mut String) -> Option<()> {
    for c in chars.by_ref() {
        if c == '\'' {
            return Some(());
        }
        value.push(c);
    }
    None
}

fn take_double_quoted(chars: &mut Chars, value: &mut String) -> Option<()> {
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(()),
            '\\' => match chars.next_if(|n| matches!(n, '$' | '`' | '"' | '\\' | '\n')) {
                Some('\n') => {}
                Some(escaped) => value.push(escaped),
                None => value.push('\\'),
            },
            c => value.push(c),
        }
    }
    None
}

/// The tree's Debian architecture (`amd64`, `arm64`, …), or `None` when nothing tells it.
///
/// Asked in order of authority: the `Architecture` dpkg records for the installed
/// `base-files` (then `dpkg`) package, both native by construction; then the first line
/// of `var/lib/dpkg/arch` (dpkg writes the native architecture first, though dpkg before
/// 1.17 listed only foreign ones there, hence its second place); then the ELF machine of
/// `bin/sh` or `usr/bin/sh`, for trees without dpkg.
pub fn debian_arch(rootfs: &Path) -> Result<Option<String>, ImageError> {
    let packages = installed_packages(rootfs)?;
    for wanted in ["base-files", "dpkg"] {
        if let Some(p) = packages.iter().find(|p| p.name == wanted) {
            if !p.arch.is_empty() && p.arch != "all" {
                return Ok(Some(p.arch.clone()));
            }
        }
    }
    if let Some(text) = read_in_root(rootfs, Path::new("var/lib/dpkg/arch"))? {
        if let Some(first) = text.lines().map(str::trim).find(|l| !l.is_empty()) {
            return Ok(Some(first.to_string()));
        }
    }
    for shell in ["bin/sh", "usr/bin/sh"] {
        if let Some(host) = resolve_in_root(rootfs, Path::new(shell))? {
            if let Some(arch) = elf_file_arch(&host)? {
                return Ok(Some(arch));
            }
        }
    }
    Ok(None)
}

/// The Debian architecture of the ELF file at `path`; `None` when it is not an ELF file
/// (or not a regular file) or its machine has no Debian name here.
pub fn elf_file_arch(path: &Path) -> Result<Option<String>, ImageError> {
    if !path.is_file() {
        return Ok(None);
    }
    let mut header = Vec::with_capacity(64);
    fs::File::open(path)
        .and_then(|f| f.take(64).read_to_end(&mut header))
        .map_err(|e| ImageError::io(path, e))?;
    Ok(elf_arch(&header).map(str::to_string))
}

/// Maps an ELF header's class, byte order, machine and (for 32-bit ARM) float ABI flag to
/// the Debian architecture name.
pub fn elf_arch(header: &[u8]) -> Option<&'static str> {
    if header.len() < 52 || &header[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match header[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match header[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let u16_at = |at: usize| {
        let b = [header[at], header[at + 1]];
        if little {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        }
    };
    let flags_at = if is64 { 48 } else { 36 };
    let flags = {
        let b = [
            header[flags_at],
            header[flags_at + 1],
            header[flags_at + 2],
            header[flags_at + 3],
        ];
        if little {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        }
    };
    machine_arch(u16_at(18), is64, little, flags)
}

fn machine_arch(machine: u16, is64: bool, little: bool, flags: u32) -> Option<&'static str> {
    const EF_ARM_ABI_FLOAT_HARD: u32 = 0x400;
    Some(match (machine, is64, little) {
        (62, true, true) => "amd64",
        (62, false, true) => "x32",
        (3, false, true) => "i386",
        (183, true, true) => "arm64",
        (40, false, true) if flags & EF_ARM_ABI_FLOAT_HARD != 0 => "armhf",
        (40, false, true) => "armel",
        (243, true, true) => "riscv64",
        (21, true, true) => "ppc64el",
        (21, true, false) => "ppc64",
        (20, false, false) => "powerpc",
        (22, true, false) => "s390x",
        (8, true, true) => "mips64el",
        (8, false, true) => "mipsel",
        (258, true, true) => "loong64",
        _ => return None,
    })
}

/// One package dpkg records as installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpkgPackage {
    /// `Package`.
    pub name: String,
    /// `Version`, with its epoch if any (`1:2.3-4`).
    pub version: String,
    /// `Architecture` (`amd64`, `all`, …).
    pub arch: String,
    /// `Maintainer`, e.g. `GNU Libc Maintainers <debian-glibc@lists.debian.org>`.
    pub maintainer: Option<String>,
    /// Source package name (the `Source` field without its version), when it differs.
    pub source: Option<String>,
}

/// The installed packages in the tree's `var/lib/dpkg/status`, in file order; empty when
/// the tree has no dpkg database.
///
/// "Installed" means dpkg's state word is `installed`, whatever the selection
/// (`install ok installed`, `hold ok installed`, and `deinstall ok installed` for a package
/// marked for removal but still on disk); `config-files`, `half-installed` and the like are
/// left out because their files are not (all) there.
pub fn installed_packages(rootfs: &Path) -> Result<Vec<DpkgPackage>, ImageError> {
    let status_path = Path::new("var/lib/dpkg/status");
    let Some(text) = read_in_root(rootfs, status_path)? else {
        return Ok(Vec::new());
    };
    let origin = rootfs.join(status_path);
    let paragraphs = parse_deb822(&text).map_err(|e| {
        ImageError::Tool(format!(
            "{}: {e}; the dpkg database is damaged: restore it from status-old next to it, \
             or rebuild the image",
            origin.display()
        ))
    })?;
    Ok(paragraphs.iter().filter_map(package_if_installed).collect())
}

fn package_if_installed(paragraph: &Paragraph) -> Option<DpkgPackage> {
    let status = paragraph.get("Status")?;
    if status.split_whitespace().nth(2) != Some("installed") {
        return None;
    }
    let name = paragraph.get("Package")?.trim().to_string();
    let source = paragraph
        .get("Source")
        .and_then(|s| s.split_whitespace().next())
        .filter(|s| *s != name)
        .map(str::to_string);
    Some(DpkgPackage {
        version: paragraph
            .get("Version")
            .unwrap_or_default()
            .trim()
            .to_string(),
        arch: paragraph
            .get("Architecture")
            .unwrap_or_default()
            .trim()
            .to_string(),
        maintainer: paragraph.get("Maintainer").map(|m| m.trim().to_string()),
        source,
        name,
    })
}

/// One deb822 paragraph: fields in file order; names compare case-insensitively.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paragraph {
    /// `(name, value)`; a multi-line value keeps its continuation lines after `\n`,
    /// each without its leading space.
    pub fields: Vec<(String, String)>,
}

impl Paragraph {
    /// The value of field `name` (case-insensitive), if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses deb822 text (dpkg's status file, control files, DEP-5 copyright files):
/// paragraphs separated by blank lines, `Name: value` fields, continuation lines starting
/// with a space or tab. Lines starting with `#` are comments. A line that is none of
/// these is an error naming its line number.
pub fn parse_deb822(text: &str) -> Result<Vec<Paragraph>, String> {
    let mut paragraphs = Vec::new();
    let mut current = Paragraph::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            if !current.fields.is_empty() {
                paragraphs.push(std::mem::take(&mut current));
            }
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            let Some((_, value)) = current.fields.last_mut() else {
                return Err(format!(
                    "line {}: continuation line without a field before it",
                    index + 1
                ));
            };
            value.push('\n');
            value.push_str(&line[1..]);
        } else if let Some((name, value)) = line.split_once(':') {
            if name.is_empty() || name.contains(char::is_whitespace) {
                return Err(format!("line {}: bad field name {name:?}", index + 1));
            }
            current
                .fields
                .push((name.to_string(), value.trim().to_string()));
        } else {
            return Err(format!(
                "line {}: expected `Field: value`, found {line:?}",
                index + 1
            ));
        }
    }
    if !current.fields.is_empty() {
        paragraphs.push(current);
    }
    Ok(paragraphs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn os_release_quoting() {
        let text = concat!(
            "# comment\n",
            "\n",
            "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n",
            "NAME='Debian GNU/Linux'\n",
            "VERSION_ID=\"12\"\n",
            "ID=debian\n",
            "ESCAPED=\"a \\\"quoted\\\" \\$HOME \\\\ back\\slash\"\n",
            "SINGLE='no \\escapes $here'\n",
            "UNQUOTED=a\\ b\\$c\n",
            "CONCAT=\"ab\"'cd'ef\n",
            "LOOSE=Debian GNU/Linux   \n",
            "MULTI=\"one\ntwo\"\n",
            "not an assignment\n",
            "1BAD=x\n",
            "EMPTY=\n",
            "UNTERMINATED=\"oops\n",
        );
        let f = parse_os_release(text);
        assert_eq!(f["PRETTY_NAME"], "Debian GNU/Linux 12 (bookworm)");
        assert_eq!(f["NAME"], "Debian GNU/Linux");
        assert_eq!(f["VERSION_ID"], "12");
        assert_eq!(f["ID"], "debian");
        assert_eq!(f["ESCAPED"], "a \"quoted\" $HOME \\ back\\slash");
        assert_eq!(f["SINGLE"], "no \\escapes $here");
        assert_eq!(f["UNQUOTED"], "a b$c");
        assert_eq!(f["CONCAT"], "abcdef");
        assert_eq!(f["LOOSE"], "Debian GNU/Linux");
        assert_eq!(f["MULTI"], "one\ntwo");
        assert_eq!(f["EMPTY"], "");
        assert!(!f.contains_key("1BAD"));
        assert!(!f.contains_key("UNTERMINATED"));
        assert_eq!(f.len(), 11);
    }

    #[test]
    fn later_assignment_wins() {
        let f = parse_os_release("ID=a\nID=b\n");
        assert_eq!(f["ID"], "b");
    }

    #[test]
    fn resolves_links_inside_the_root_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("usr/lib/target"), "x").unwrap();
        // Absolute and climbing links must land inside the tree.
        symlink("/usr/lib/target", root.join("etc/abs")).unwrap();
        symlink("../../../../../usr/lib/target", root.join("etc/climb")).unwrap();
        symlink("usr", root.join("u")).unwrap();
        symlink("loop2", root.join("loop1")).unwrap();
        symlink("loop1", root.join("loop2")).unwrap();
        let want = Some(root.join("usr/lib/target"));
        assert_eq!(resolve_in_root(root, Path::new("etc/abs")).unwrap(), want);
        assert_eq!(
            resolve_in_root(root, Path::new("/etc/climb")).unwrap(),
            want
        );
        assert_eq!(
            resolve_in_root(root, Path::new("u/lib/target")).unwrap(),
            want
        );
        assert_eq!(resolve_in_root(root, Path::new("nope/x")).unwrap(), None);
        assert_eq!(
            resolve_in_root(root, Path::new("usr/lib/target/x")).unwrap(),
            None
        );
        let err = resolve_in_root(root, Path::new("loop1")).unwrap_err();
        assert!(err.to_string().contains("too many levels"), "{err}");
    }

    fn elf_header(class: u8, data: u8, machine: u16, flags: u32) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[6] = 1;
        let m = if data == 1 {
            machine.to_le_bytes()
        } else {
            machine.to_be_bytes()
        };
        h[18..20].copy_from_slice(&m);
        let at = if class == 2 { 48 } else { 36 };
        let f = if data == 1 {
            flags.to_le_bytes()
        } else {
            flags.to_be_bytes()
        };
        h[at..at + 4].copy_from_slice(&f);
        h
    }

    #[test]
    fn elf_machines_map_to_debian_names() {
        let cases = [
            (2, 1, 62, 0, Some("amd64")),
            (1, 1, 3, 0, Some("i386")),
            (2, 1, 183, 0, Some("arm64")),
            (1, 1, 40, 0x0500_0400, Some("armhf")),
            (1, 1, 40, 0x0500_0200, Some("armel")),
            (2, 1, 243, 5, Some("riscv64")),
            (2, 1, 21, 2, Some("ppc64el")),
            (2, 2, 22, 0, Some("s390x")),
            (2, 1, 9999, 0, None),
        ];
        for (class, data, machine, flags, want) in cases {
            assert_eq!(
                elf_arch(&elf_header(class, data, machine, flags)),
                want,
                "machine {machine}"
            );
        }
        assert_eq!(elf_arch(b"#!/bin/sh\n"), None);
        assert_eq!(elf_arch(&elf_header(2, 1, 62, 0)[..20]), None);
    }

    #[test]
    fn deb822_paragraphs_and_continuations() {
        let text = "Package: a\nDescription: short\n long line\n .\n more\n\n\n\
                    Package: b\nstatus: install ok installed\n# comment\n";
        let ps = parse_deb822(text).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[0].get("description"), Some("short\nlong line\n.\nmore"));
        assert_eq!(ps[1].get("Status"), Some("install ok installed"));
        assert!(parse_deb822(" leading continuation\n")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse_deb822("Package: a\ngarbage\n")
            .unwrap_err()
            .contains("line 2"));
    }
}
