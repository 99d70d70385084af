//! `(copy …)`: the sources' manifest (which enters the step id) and the copy itself.
//!
//! Paths inside an image are resolved against its root with the image's own symlinks
//! ([`resolve_in_root`]), so a symlink such as `/bin -> usr/bin` works and an absolute
//! symlink can never lead the copy out of the image into the host.

use crate::BuildError;
use kiln_spec::{Copy, ManifestEntry, ManifestKind};
use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// One thing to copy: where it is on the host and where it goes in the image.
#[derive(Debug, Clone)]
pub struct CopyItem {
    pub host: PathBuf,
    pub entry: ManifestEntry,
    pub mtime: i64,
}

/// Walks every source of `copy` under `src_root` (the context dir or a stage's mounted
/// root) and lists what lands where; `entry.path` is the absolute destination in the image.
pub fn plan(
    src_root: &Path,
    copy: &Copy,
    dst: &str,
    what: &str,
) -> Result<Vec<CopyItem>, BuildError> {
    let mut items = Vec::new();
    let into_dir = dst.ends_with('/');
    for src in &copy.src {
        let host = resolve_in_root(src_root, src, false, None)
            .map_err(|e| BuildError::Copy(format!("source `{src}` in {what}: {e}")))?;
        let meta = host
            .symlink_metadata()
            .map_err(|_| BuildError::Copy(format!("source `{src}` not found in {what}")))?;
        // As Dockerfile COPY (OBuilder specs translate to it one to one): a directory
        // source copies its contents to dst; a file goes into dst/ or becomes dst.
        let base = if meta.is_dir() || !into_dir {
            dst.trim_end_matches('/').to_string()
        } else {
            let name = Path::new(src)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{}/{name}", dst.trim_end_matches('/'))
        };
        if meta.is_dir() {
            walk_dir(&host, &base, &copy.exclude, &mut items)?;
        } else {
            items.push(item(&host, &base, &meta)?);
        }
    }
    Ok(items)
}

fn walk_dir(
    dir: &Path,
    base: &str,
    exclude: &[String],
    items: &mut Vec<CopyItem>,
) -> Result<(), BuildError> {
    let walker = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
        .into_iter();
    let walker = walker
        .filter_entry(|e| e.depth() == 0 || !exclude.iter().any(|x| e.file_name() == x.as_str()));
    for entry in walker {
        let entry =
            entry.map_err(|e| BuildError::Copy(format!("reading {}: {e}", dir.display())))?;
        let rel = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        let dest = if rel.as_os_str().is_empty() {
            base.to_string()
        } else {
            format!("{}/{}", base.trim_end_matches('/'), rel.to_string_lossy())
        };
        let meta = entry
            .metadata()
            .map_err(|e| BuildError::Copy(format!("{}: {e}", entry.path().display())))?;
        items.push(item(entry.path(), &dest, &meta)?);
    }
    Ok(())
}

fn item(host: &Path, dest: &str, meta: &fs::Metadata) -> Result<CopyItem, BuildError> {
    let mode = meta.permissions().mode() & 0o7777;
    let kind = if meta.file_type().is_symlink() {
        let target = fs::read_link(host)
            .map_err(|e| BuildError::Copy(format!("{}: {e}", host.display())))?;
        ManifestKind::Symlink {
            target: target.to_string_lossy().into_owned(),
        }
    } else if meta.is_dir() {
        ManifestKind::Dir { mode }
    } else if meta.is_file() {
        ManifestKind::File {
            sha256: sha256_file(host)?,
            mode,
        }
    } else {
        return Err(BuildError::Copy(format!(
            "{} is not a regular file, directory or symlink; copy cannot take sockets, fifos or devices",
            host.display()
        )));
    };
    Ok(CopyItem {
        host: host.to_path_buf(),
        entry: ManifestEntry {
            path: dest.to_string(),
            kind,
        },
        mtime: meta.mtime(),
    })
}

fn sha256_file(path: &Path) -> Result<[u8; 32], BuildError> {
    let mut file =
        fs::File::open(path).map_err(|e| BuildError::Copy(format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    io::copy(&mut file, &mut h)
        .map_err(|e| BuildError::Copy(format!("{}: {e}", path.display())))?;
    Ok(h.finalize().into())
}

/// Copies planned items into the image mounted at `root`, owned by `uid:gid`.
/// Missing parent directories are created (mode 755, same owner).
pub fn apply(root: &Path, items: &[CopyItem], uid: u32, gid: u32) -> Result<(), BuildError> {
    for it in items {
        apply_one(root, it, uid, gid)
            .map_err(|e| BuildError::Copy(format!("copying to {}: {e}", it.entry.path)))?;
    }
    Ok(())
}

fn apply_one(root: &Path, it: &CopyItem, uid: u32, gid: u32) -> io::Result<()> {
    let owner = Some((uid, gid));
    let target = resolve_in_root(root, &it.entry.path, false, owner)?;
    let existing = target.symlink_metadata().ok();
    match &it.entry.kind {
        ManifestKind::Dir { mode } => {
            match existing {
                Some(m) if m.is_dir() => {}
                Some(_) => {
                    fs::remove_file(&target)?;
                    fs::create_dir(&target)?;
                }
                None => fs::create_dir(&target)?,
            }
            std::os::unix::fs::chown(&target, Some(uid), Some(gid))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(*mode))?;
        }
        ManifestKind::File { mode, .. } => {
            remove_non_dir(&target, existing.as_ref())?;
            fs::copy(&it.host, &target)?;
            std::os::unix::fs::chown(&target, Some(uid), Some(gid))?;
            fs::set_permissions(&target, fs::Permissions::from_mode(*mode))?;
            set_mtime(&target, it.mtime)?;
        }
        ManifestKind::Symlink { target: link } => {
            remove_non_dir(&target, existing.as_ref())?;
            std::os::unix::fs::symlink(link, &target)?;
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))?;
        }
    }
    Ok(())
}

fn remove_non_dir(path: &Path, existing: Option<&fs::Metadata>) -> io::Result<()> {
    match existing {
        Some(m) if m.is_dir() => Err(io::Error::other("a directory is in the way of a file")),
        Some(_) => fs::remove_file(path),
        None => Ok(()),
    }
}

fn set_mtime(path: &Path, mtime: i64) -> io::Result<()> {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(mtime.max(0) as u64);
    fs::File::options().write(true).open(path)?.set_modified(t)
}

/// Resolves `path` as the image rooted at `root` sees it: `..` stops at the root and
/// symlinks (absolute ones relative to `root`) are followed, except the last component
/// unless `follow_last`. With `create_owner`, missing directories on the way are created.
pub fn resolve_in_root(
    root: &Path,
    path: &str,
    follow_last: bool,
    create_owner: Option<(u32, u32)>,
) -> io::Result<PathBuf> {
    let mut pending: Vec<String> = components(path);
    pending.reverse();
    let mut current = root.to_path_buf();
    let mut hops = 0;
    while let Some(comp) = pending.pop() {
        if comp == ".." {
            if current != root {
                current.pop();
            }
            continue;
        }
        let candidate = current.join(&comp);
        let last = pending.is_empty();
        match candidate.symlink_metadata() {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_last) => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!(
                        "too many levels of symlinks resolving {path}"
                    )));
                }
                let link = fs::read_link(&candidate)?;
                let link = link.to_string_lossy();
                if link.starts_with('/') {
                    current = root.to_path_buf();
                }
                pending.extend(components(&link).into_iter().rev());
            }
            Ok(m) if !last && !m.is_dir() => {
                return Err(io::Error::other(format!("{} is not a directory", comp)));
            }
            Ok(_) => current = candidate,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !last => match create_owner {
                Some((uid, gid)) => {
                    fs::create_dir(&candidate)?;
                    fs::set_permissions(&candidate, fs::Permissions::from_mode(0o755))?;
                    std::os::unix::fs::chown(&candidate, Some(uid), Some(gid))?;
                    current = candidate;
                }
                None => return Err(e),
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => current = candidate,
            Err(e) => return Err(e),
        }
    }
    Ok(current)
}

fn components(path: &str) -> Vec<String> {
    Path::new(path)
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(src: &[&str], dst: &str, exclude: &[&str]) -> Copy {
        Copy {
            from: kiln_spec::CopyFrom::Context,
            src: src.iter().map(|s| s.to_string()).collect(),
            dst: dst.into(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn paths(items: &[CopyItem]) -> Vec<&str> {
        items.iter().map(|i| i.entry.path.as_str()).collect()
    }

    #[test]
    fn plans_dirs_files_and_excludes() {
        let ctx = tempfile::tempdir().unwrap();
        fs::create_dir_all(ctx.path().join("app/.git")).unwrap();
        fs::write(ctx.path().join("app/main.c"), "int main;").unwrap();
        fs::write(ctx.path().join("app/.git/HEAD"), "x").unwrap();
        fs::write(ctx.path().join("README"), "r").unwrap();
        // A directory's contents go to dst; files go into dst/.
        let items = plan(
            ctx.path(),
            &copy(&["app", "README"], "/src/", &[".git"]),
            "/src/",
            "ctx",
        )
        .unwrap();
        assert_eq!(paths(&items), vec!["/src", "/src/main.c", "/src/README"]);
        let items = plan(
            ctx.path(),
            &copy(&["app"], "/opt/app", &[]),
            "/opt/app",
            "ctx",
        )
        .unwrap();
        assert_eq!(
            paths(&items),
            vec![
                "/opt/app",
                "/opt/app/.git",
                "/opt/app/.git/HEAD",
                "/opt/app/main.c"
            ]
        );
        let items = plan(ctx.path(), &copy(&["."], "/src/", &["app"]), "/src/", "ctx").unwrap();
        assert_eq!(paths(&items), vec!["/src", "/src/README"]);
        let items = plan(ctx.path(), &copy(&["README"], "/doc", &[]), "/doc", "ctx").unwrap();
        assert_eq!(paths(&items), vec!["/doc"]);
    }

    #[test]
    fn manifest_changes_with_content_and_mode() {
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("f"), "one").unwrap();
        let c = copy(&["f"], "/f", &[]);
        let a = plan(ctx.path(), &c, "/f", "ctx").unwrap();
        fs::write(ctx.path().join("f"), "two").unwrap();
        let b = plan(ctx.path(), &c, "/f", "ctx").unwrap();
        assert_ne!(a[0].entry, b[0].entry);
        fs::set_permissions(ctx.path().join("f"), fs::Permissions::from_mode(0o755)).unwrap();
        let d = plan(ctx.path(), &c, "/f", "ctx").unwrap();
        assert_ne!(b[0].entry, d[0].entry);
    }

    #[test]
    fn symlinks_never_escape_the_root() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.path().join("bin")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("evil")).unwrap();
        let p = resolve_in_root(root.path(), "/bin/tool", false, None).unwrap();
        assert_eq!(p, root.path().join("usr/bin/tool"));
        let p = resolve_in_root(root.path(), "/evil/passwd", false, Some((0, 0))).unwrap();
        assert_eq!(p, root.path().join("etc/passwd"));
        let p = resolve_in_root(root.path(), "/../../x", false, None).unwrap();
        assert_eq!(p, root.path().join("x"));
    }

    #[test]
    fn apply_sets_owner_mode_and_creates_parents() {
        let ctx = tempfile::tempdir().unwrap();
        let root = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("run.sh"), "#!/bin/sh").unwrap();
        fs::set_permissions(ctx.path().join("run.sh"), fs::Permissions::from_mode(0o750)).unwrap();
        std::os::unix::fs::symlink("run.sh", ctx.path().join("link")).unwrap();
        let items = plan(
            ctx.path(),
            &copy(&["run.sh", "link"], "/opt/app/", &[]),
            "/opt/app/",
            "ctx",
        )
        .unwrap();
        apply(root.path(), &items, 1000, 1001).unwrap();
        let m = fs::metadata(root.path().join("opt/app/run.sh")).unwrap();
        assert_eq!(
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777),
            (1000, 1001, 0o750)
        );
        let d = fs::metadata(root.path().join("opt/app")).unwrap();
        assert_eq!((d.uid(), d.permissions().mode() & 0o777), (1000, 0o755));
        assert_eq!(
            fs::read_link(root.path().join("opt/app/link")).unwrap(),
            Path::new("run.sh")
        );
    }

    #[test]
    fn missing_source_names_it() {
        let ctx = tempfile::tempdir().unwrap();
        let err = plan(
            ctx.path(),
            &copy(&["nope"], "/x", &[]),
            "/x",
            "the build context",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`nope` not found in the build context"),
            "{err}"
        );
    }
}
