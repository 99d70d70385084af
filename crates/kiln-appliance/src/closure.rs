//! The closure of a set of paths in a root: every symbolic link on the way to each file
//! (and along its target chain), ELF interpreters and `DT_NEEDED` libraries found the
//! way the dynamic loader finds them (`DT_RPATH` unless there is a `DT_RUNPATH`, then
//! `DT_RUNPATH`, with `$ORIGIN`, `$LIB` and `$PLATFORM` expanded; the root's
//! `ld.so.cache`; the default directories), script interpreters (`#!`), and whatever the
//! include globs name. Nothing under /proc, /sys or /dev: the appliance's init creates
//! those.

use crate::elf::{self, ElfInfo};
use crate::root::{host, resolve};
pub use globset::GlobSet;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::Path;

/// Kernel filesystems: never copied.
const VIRTUAL: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Whether `path` (absolute, in-root) is under one of the kernel's filesystems.
pub fn is_virtual(path: &str) -> bool {
    VIRTUAL
        .iter()
        .any(|v| path == *v || path.strip_prefix(v).is_some_and(|r| r.starts_with('/')))
}

/// Finds and records the closure; see the module documentation.
pub struct Closure<'r> {
    root: &'r Path,
    /// Files, links and directories (absolute in-root paths) the appliance holds.
    pub paths: BTreeSet<String>,
    ld_cache: Vec<(String, String)>,
    /// Parsed ELF files by real path (None: not ELF).
    elves: HashMap<String, Option<ElfInfo>>,
}

impl<'r> Closure<'r> {
    pub fn new(root: &'r Path) -> Closure<'r> {
        let ld_cache = fs::read(host(root, "/etc/ld.so.cache"))
            .map(|d| elf::parse_ld_cache(&d))
            .unwrap_or_default();
        Closure {
            root,
            paths: BTreeSet::new(),
            ld_cache,
            elves: HashMap::new(),
        }
    }

    /// Adds `path` and everything it needs. Paths that do not exist in the root (what
    /// the training wrote, or looked for in vain) add nothing; false then.
    pub fn add(&mut self, path: &str) -> bool {
        let mut todo = vec![path.to_string()];
        let mut found = false;
        let first = path;
        while let Some(p) = todo.pop() {
            if is_virtual(&p) || !p.starts_with('/') {
                continue;
            }
            let r = resolve(self.root, &p);
            let Some(real) = r.target else {
                continue;
            };
            if p == first {
                found = true;
            }
            for link in r.links {
                if !is_virtual(&link) {
                    self.paths.insert(link);
                }
            }
            if is_virtual(&real) || !self.paths.insert(real.clone()) {
                continue;
            }
            todo.extend(self.needs(&real));
        }
        found
    }

    /// Adds every file of the root that `globs` match (paths matched without the
    /// leading `/`). Returns how many matched.
    pub fn add_matching(&mut self, globs: &GlobSet) -> usize {
        if globs.is_empty() {
            return 0;
        }
        let mut matched = Vec::new();
        for entry in walkdir::WalkDir::new(self.root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| {
                let rel = e.path().strip_prefix(self.root).unwrap_or(e.path());
                !is_virtual(&format!("/{}", rel.display()))
            })
            .flatten()
        {
            let rel = entry.path().strip_prefix(self.root).unwrap_or(entry.path());
            if globs.is_match(rel) {
                matched.push(format!("/{}", rel.display()));
            }
        }
        for p in &matched {
            self.add(p);
        }
        matched.len()
    }

    /// Removes what `globs` match (the appliance's own files are added afterwards).
    pub fn exclude(&mut self, globs: &GlobSet) {
        self.paths
            .retain(|p| !globs.is_match(p.trim_start_matches('/')));
    }

    /// What the real file `real` needs: an ELF file's interpreter and libraries, a
    /// script's interpreter.
    fn needs(&mut self, real: &str) -> Vec<String> {
        let file = host(self.root, real);
        let Ok(meta) = fs::metadata(&file) else {
            return Vec::new();
        };
        if !meta.is_file() {
            return Vec::new();
        }
        let mut head = [0u8; 256];
        let n = fs::File::open(&file)
            .and_then(|mut f| f.read(&mut head))
            .unwrap_or(0);
        let head = &head[..n];
        if let Some(line) = head.strip_prefix(b"#!") {
            let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
            let text = String::from_utf8_lossy(line);
            return text
                .split_whitespace()
                .next()
                .map(str::to_string)
                .into_iter()
                .collect();
        }
        if !head.starts_with(b"\x7fELF") {
            return Vec::new();
        }
        let Some(info) = self.elf(real) else {
            return Vec::new();
        };
        let mut out: Vec<String> = info.interp.iter().cloned().collect();
        for lib in &info.needed {
            match self.find_library(lib, real, &info) {
                Some(path) => out.push(path),
                None => tracing_free_warning(real, lib),
            }
        }
        out
    }

    fn elf(&mut self, real: &str) -> Option<ElfInfo> {
        if let Some(known) = self.elves.get(real) {
            return known.clone();
        }
        let info = fs::read(host(self.root, real))
            .ok()
            .and_then(|d| elf::parse(&d));
        self.elves.insert(real.to_string(), info.clone());
        info
    }

    /// Where the loader would find library `name` for the object at `real`.
    fn find_library(&mut self, name: &str, real: &str, info: &ElfInfo) -> Option<String> {
        if name.contains('/') {
            return Some(name.to_string());
        }
        let origin = Path::new(real)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/".into());
        let expand = |dir: &String| {
            dir.replace("${ORIGIN}", &origin)
                .replace("$ORIGIN", &origin)
                .replace("${LIB}", "lib")
                .replace("$LIB", "lib")
                .replace("${PLATFORM}", "x86_64")
                .replace("$PLATFORM", "x86_64")
        };
        let mut dirs: Vec<String> = Vec::new();
        if info.runpath.is_empty() {
            dirs.extend(info.rpath.iter().map(expand));
        }
        dirs.extend(info.runpath.iter().map(expand));
        for dir in &dirs {
            let candidate = format!("{}/{name}", dir.trim_end_matches('/'));
            if self.compatible(&candidate, info) {
                return Some(candidate);
            }
        }
        let cached: Vec<String> = self
            .ld_cache
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, p)| p.clone())
            .collect();
        cached
            .into_iter()
            .chain(
                elf::default_dirs(info)
                    .into_iter()
                    .map(|d| format!("{d}/{name}")),
            )
            .find(|candidate| self.compatible(candidate, info))
    }

    /// Whether `candidate` exists in the root as an ELF file of the same class and machine.
    fn compatible(&mut self, candidate: &str, info: &ElfInfo) -> bool {
        let Some(real) = resolve(self.root, candidate).target else {
            return false;
        };
        self.elf(&real)
            .is_some_and(|i| i.class64 == info.class64 && i.machine == info.machine)
    }
}

/// A library the loader would not find either: the program would fail the same way in
/// the full layer, so this is the layer's problem, reported on stderr and not fatal.
fn tracing_free_warning(object: &str, lib: &str) {
    eprintln!("kiln: warning: {object} needs {lib}, which is not in the layer");
}

/// A glob set from patterns written as absolute in-root paths (`/usr/lib/**/*.so`);
/// an invalid one is an error naming it.
pub fn globs(patterns: &[String], flag: &str) -> Result<GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        let glob = globset::GlobBuilder::new(p.trim_start_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{flag} {p}: {e}"))?;
        b.add(glob);
    }
    b.build().map_err(|e| format!("{flag}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A root with this test binary as /usr/bin/prog and the host's libraries it needs,
    /// copied where the host has them, behind a usrmerge /lib link.
    #[test]
    fn elf_closure_follows_interpreter_needed_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let me = std::env::current_exe().unwrap();
        fs::create_dir_all(r.join("usr/bin")).unwrap();
        fs::copy(&me, r.join("usr/bin/prog")).unwrap();
        let info = elf::parse(&fs::read(&me).unwrap()).unwrap();
        let mut wanted = vec![info.interp.clone().unwrap()];
        for lib in &info.needed {
            let host_path = format!("/usr/lib/x86_64-linux-gnu/{lib}");
            assert!(Path::new(&host_path).exists(), "{host_path}");
            wanted.push(host_path);
        }
        for path in &wanted {
            let real = fs::canonicalize(path).unwrap();
            let inside = r.join(real.strip_prefix("/").unwrap());
            fs::create_dir_all(inside.parent().unwrap()).unwrap();
            fs::copy(&real, &inside).unwrap();
        }
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink("usr/lib64", r.join("lib64")).unwrap();
        fs::create_dir_all(r.join("usr/lib64")).unwrap();
        symlink(
            "../lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            r.join("usr/lib64/ld-linux-x86-64.so.2"),
        )
        .unwrap();
        symlink("/usr/bin/prog", r.join("usr/bin/alias")).unwrap();
        fs::write(r.join("usr/bin/script"), "#!/usr/bin/alias -x\n").unwrap();

        let mut c = Closure::new(r);
        assert!(c.add("/usr/bin/script"));
        assert!(!c.add("/tmp/written-by-training"));
        assert!(!c.add("/proc/self/exe"));
        let paths = &c.paths;
        for want in [
            "/usr/bin/script",
            "/usr/bin/alias",
            "/usr/bin/prog",
            "/lib64",
            "/usr/lib64/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            assert!(paths.contains(want), "{want} missing from {paths:?}");
        }
        let mut b = globset::GlobSetBuilder::new();
        b.add(globset::Glob::new("usr/lib/x86_64-linux-gnu/libc.*").unwrap());
        c.exclude(&b.build().unwrap());
        assert!(!c.paths.contains("/usr/lib/x86_64-linux-gnu/libc.so.6"));
        assert!(is_virtual("/dev/null") && is_virtual("/proc") && !is_virtual("/devices"));
    }
}
