//! Paths inside a root filesystem seen from the host: resolved component by component
//! with the root's own symbolic links (an absolute target starts again at the root, `..`
//! never climbs above it), remembering every link passed, since the appliance needs each
//! of them to reach the file the same way.

use std::fs;
use std::path::{Path, PathBuf};

/// Links followed before giving up, as the kernel's `ELOOP` limit.
const MAX_LINKS: usize = 40;

/// Where a path leads in a root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Every symbolic link passed on the way (absolute in-root paths), in order.
    pub links: Vec<String>,
    /// The real path reached, when it exists.
    pub target: Option<String>,
}

/// The host path of the in-root absolute path `path`.
pub fn host(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn join(parts: &[String]) -> String {
    format!("/{}", parts.join("/"))
}

/// Resolves `path` (absolute, in-root) in `root`.
pub fn resolve(root: &Path, path: &str) -> Resolved {
    let mut out = Resolved::default();
    let mut done: Vec<String> = Vec::new();
    let mut todo: Vec<String> = components(path).into_iter().rev().collect();
    let mut followed = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "." => continue,
            ".." => {
                done.pop();
                continue;
            }
            _ => {}
        }
        done.push(part);
        let here = join(&done);
        let Ok(meta) = fs::symlink_metadata(host(root, &here)) else {
            return out;
        };
        if !meta.is_symlink() {
            if !meta.is_dir() && !todo.is_empty() {
                return out; // a file in the middle of a path: ENOTDIR
            }
            continue;
        }
        followed += 1;
        if followed > MAX_LINKS {
            return out;
        }
        let Ok(target) = fs::read_link(host(root, &here)) else {
            return out;
        };
        out.links.push(here);
        done.pop();
        let target = target.to_string_lossy().into_owned();
        if target.starts_with('/') {
            done.clear();
        }
        todo.extend(components(&target).into_iter().rev());
    }
    out.target = Some(join(&done));
    out
}

fn components(path: &str) -> Vec<String> {
    path.split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_followed_inside_the_root_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("usr/lib/x86_64-linux-gnu")).unwrap();
        fs::write(r.join("usr/lib/x86_64-linux-gnu/libc.so.6"), "elf").unwrap();
        symlink("usr/lib", r.join("lib")).unwrap();
        symlink(
            "/lib/x86_64-linux-gnu/libc.so.6",
            r.join("usr/lib/libc-abs"),
        )
        .unwrap();
        symlink("../../../..", r.join("usr/lib/up")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let got = resolve(r, "/lib/x86_64-linux-gnu/./libc.so.6");
        assert_eq!(got.links, ["/lib"]);
        assert_eq!(
            got.target.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        let got = resolve(r, "/usr/lib/libc-abs");
        assert_eq!(got.links, ["/usr/lib/libc-abs", "/lib"]);
        assert_eq!(
            got.target.as_deref(),
            Some("/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        // `..` stops at the root: the host's parent directories are never reached.
        let got = resolve(r, "/usr/lib/up/usr/lib");
        assert_eq!(got.target.as_deref(), Some("/usr/lib"));
        assert_eq!(resolve(r, "/loop").target, None);
        assert_eq!(resolve(r, "/missing/x").target, None);
        assert_eq!(resolve(r, "/lib/x86_64-linux-gnu/libc.so.6/x").target, None);
    }
}
