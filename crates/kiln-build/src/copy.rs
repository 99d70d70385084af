//! `(copy …)`: where the sources land, their manifest (which enters the step id) and
//! the copy itself.
//!
//! Placement follows OBuilder ([`Placement`]), for sources from the context and from a
//! build stage alike: with a `dst` ending in `/` every source goes inside it under its own
//! name, a directory included; otherwise the single source is copied *as* `dst`.
//!
//! Paths inside an image are resolved against its root with the image's own symlinks
//! ([`resolve_in_root`]), so a symlink such as `/bin -> usr/bin` works and an absolute
//! symlink can never lead the copy out of the image into the host.

use crate::context::join_workdir;
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
    /// The file, directory or symlink on the host (in the context or a mounted stage).
    pub host: PathBuf,
    /// Its absolute destination in the image and what it is, as hashed into the step id.
    pub entry: ManifestEntry,
    /// Kept on copied files.
    pub mtime: i64,
}

/// Where a copy's sources land: OBuilder's rule, decided by `dst`'s trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// `dst` ends in `/`: each source goes to `DIR/NAME` (a directory with everything in
    /// it), except a source named `.`, whose contents go straight into `DIR`.
    Into(String),
    /// `dst` does not end in `/`: the one source is copied as this path (a directory's
    /// contents become this directory's).
    As(String),
}

impl Placement {
    /// Where `copy`'s sources go, a relative `dst` being joined onto `workdir`. `None` when
    /// several sources would all be copied as one path (a `dst` without `/`), which
    /// OBuilder refuses too.
    pub fn of(copy: &Copy, workdir: &str) -> Option<Placement> {
        let path = join_workdir(workdir, &copy.dst);
        if copy.dst.ends_with('/') {
            Some(Placement::Into(path))
        } else if copy.src.len() <= 1 {
            Some(Placement::As(path))
        } else {
            None
        }
    }

    /// The absolute path in the image where source `src` (as written) lands.
    pub fn target(&self, src: &str) -> String {
        match self {
            Placement::As(path) => path.clone(),
            Placement::Into(dir) => match Copy::source_name(src) {
                None => dir.clone(),
                Some(name) if dir == "/" => format!("/{name}"),
                Some(name) => format!("{dir}/{name}"),
            },
        }
    }

    /// The destination as it enters the step id: `DIR/` or the path (`/` for the root).
    pub fn hashed_dst(&self) -> String {
        match self {
            Placement::Into(dir) if dir == "/" => dir.clone(),
            Placement::Into(dir) => format!("{dir}/"),
            Placement::As(path) => path.clone(),
        }
    }
}

/// Walks every source of `copy` under `src_root` (the context dir or a stage's mounted
/// root) and lists what lands where, as `placement` says; `what` names `src_root` in
/// errors.
pub fn plan(
    src_root: &Path,
    copy: &Copy,
    placement: &Placement,
    what: &str,
) -> Result<Vec<CopyItem>, BuildError> {
    let mut items = Vec::new();
    for src in &copy.src {
        let host = resolve_in_root(src_root, src, false, None)
            .map_err(|e| BuildError::Copy(format!("source `{src}` in {what}: {e}")))?;
        let meta = host
            .symlink_metadata()
            .map_err(|_| BuildError::Copy(format!("source `{src}` not found in {what}")))?;
        let dest = placement.target(src);
        if meta.is_dir() {
            walk_dir(&host, &dest, &copy.exclude, &mut items)?;
        } else {
            items.push(item(&host, &dest, &meta)?);
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

    /// Plans `copy` from `ctx` with the workdir `/`.
    fn plan_in(ctx: &Path, copy: &Copy) -> Vec<CopyItem> {
        let placement = Placement::of(copy, "/").expect("a valid placement");
        plan(ctx, copy, &placement, "ctx").unwrap()
    }

    fn paths(items: &[CopyItem]) -> Vec<&str> {
        items.iter().map(|i| i.entry.path.as_str()).collect()
    }

    /// A context with a file, a directory with a subdirectory, and a symlink.
    fn context() -> tempfile::TempDir {
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("file"), "f").unwrap();
        fs::create_dir_all(ctx.path().join("dir/sub")).unwrap();
        fs::write(ctx.path().join("dir/sub/x"), "x").unwrap();
        std::os::unix::fs::symlink("file", ctx.path().join("link")).unwrap();
        ctx
    }

    #[test]
    fn placement_follows_the_trailing_slash() {
        let into =
            |src: &[&str], dst: &str, workdir: &str| Placement::of(&copy(src, dst, &[]), workdir);
        assert_eq!(
            into(&["a", "b"], "/t/", "/"),
            Some(Placement::Into("/t".into()))
        );
        assert_eq!(into(&["a"], "/t/", "/"), Some(Placement::Into("/t".into())));
        assert_eq!(
            into(&["a"], "bin/", "/srv"),
            Some(Placement::Into("/srv/bin".into()))
        );
        assert_eq!(
            into(&["a"], "./", "/srv"),
            Some(Placement::Into("/srv".into()))
        );
        assert_eq!(into(&["a"], "/", "/srv"), Some(Placement::Into("/".into())));
        assert_eq!(into(&["a"], "/d", "/"), Some(Placement::As("/d".into())));
        assert_eq!(
            into(&["a"], "www", "/srv"),
            Some(Placement::As("/srv/www".into()))
        );
        assert_eq!(
            into(&["a"], ".", "/srv"),
            Some(Placement::As("/srv".into()))
        );
        // Several sources as one path: refused (the builder names the op's line:col).
        assert_eq!(into(&["a", "b"], "/d", "/"), None);
        assert_eq!(into(&["a", "b"], "www", "/srv"), None);
    }

    #[test]
    fn a_source_keeps_its_last_name_and_dot_means_its_contents() {
        let into = Placement::Into("/t".into());
        assert_eq!(into.target("file"), "/t/file");
        assert_eq!(into.target("a/b/dir"), "/t/dir");
        assert_eq!(into.target("dir/"), "/t/dir");
        assert_eq!(
            into.target("dir/."),
            "/t/dir",
            "OBuilder drops `.` components"
        );
        assert_eq!(into.target("/out/lib"), "/t/lib");
        for whole in [".", "./", "/", "./."] {
            assert_eq!(into.target(whole), "/t", "{whole}");
        }
        assert_eq!(Placement::Into("/".into()).target("f"), "/f");
        assert_eq!(Placement::As("/d".into()).target("x/y"), "/d");
        assert_eq!(Placement::Into("/t".into()).hashed_dst(), "/t/");
        assert_eq!(Placement::Into("/".into()).hashed_dst(), "/");
        assert_eq!(Placement::As("/d".into()).hashed_dst(), "/d");
    }

    #[test]
    fn into_a_dir_every_source_keeps_its_name_directories_too() {
        let ctx = context();
        let items = plan_in(ctx.path(), &copy(&["file", "dir", "link"], "/t/", &[]));
        assert_eq!(
            paths(&items),
            vec!["/t/file", "/t/dir", "/t/dir/sub", "/t/dir/sub/x", "/t/link"]
        );
        assert!(
            matches!(&items[4].entry.kind, ManifestKind::Symlink { target } if target == "file")
        );
        assert!(matches!(items[1].entry.kind, ManifestKind::Dir { .. }));
    }

    #[test]
    fn dot_into_a_dir_copies_the_contents() {
        let ctx = context();
        let items = plan_in(ctx.path(), &copy(&["."], "/src/", &["sub"]));
        assert_eq!(
            paths(&items),
            vec!["/src", "/src/dir", "/src/file", "/src/link"],
            "contents straight into /src, `sub` excluded at any depth"
        );
    }

    #[test]
    fn a_single_source_is_copied_as_dst() {
        let ctx = context();
        let items = plan_in(ctx.path(), &copy(&["dir"], "/d", &[]));
        assert_eq!(paths(&items), vec!["/d", "/d/sub", "/d/sub/x"]);
        let items = plan_in(ctx.path(), &copy(&["file"], "/etc/f.conf", &[]));
        assert_eq!(paths(&items), vec!["/etc/f.conf"]);
        let items = plan_in(ctx.path(), &copy(&["link"], "/l", &[]));
        assert!(matches!(&items[0].entry.kind, ManifestKind::Symlink { .. }));
        assert_eq!(paths(&items), vec!["/l"]);
    }

    #[test]
    fn manifest_changes_with_content_and_mode() {
        let ctx = tempfile::tempdir().unwrap();
        fs::write(ctx.path().join("f"), "one").unwrap();
        let c = copy(&["f"], "/f", &[]);
        let a = plan_in(ctx.path(), &c);
        fs::write(ctx.path().join("f"), "two").unwrap();
        let b = plan_in(ctx.path(), &c);
        assert_ne!(a[0].entry, b[0].entry);
        fs::set_permissions(ctx.path().join("f"), fs::Permissions::from_mode(0o755)).unwrap();
        let d = plan_in(ctx.path(), &c);
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
    fn apply_places_sets_owner_mode_and_creates_parents_for_the_user() {
        let ctx = context();
        fs::set_permissions(ctx.path().join("file"), fs::Permissions::from_mode(0o750)).unwrap();
        fs::set_permissions(
            ctx.path().join("dir/sub"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join("opt")).unwrap();
        let items = plan_in(
            ctx.path(),
            &copy(&["file", "dir", "link"], "/opt/app/t/", &[]),
        );
        apply(root.path(), &items, 1000, 1001).unwrap();
        let meta = |p: &str| fs::symlink_metadata(root.path().join(p)).unwrap();
        let owner_mode = |p: &str| {
            let m = meta(p);
            (m.uid(), m.gid(), m.permissions().mode() & 0o7777)
        };
        assert_eq!(owner_mode("opt/app/t/file"), (1000, 1001, 0o750));
        assert_eq!(
            owner_mode("opt/app/t/dir/sub"),
            (1000, 1001, 0o700),
            "modes kept"
        );
        assert_eq!(
            fs::read(root.path().join("opt/app/t/dir/sub/x")).unwrap(),
            b"x"
        );
        // Missing parents of dst are made for the current user; existing ones are left alone.
        assert_eq!(owner_mode("opt/app"), (1000, 1001, 0o755));
        assert_eq!(owner_mode("opt/app/t"), (1000, 1001, 0o755));
        assert_eq!((meta("opt").uid(), meta("opt").gid()), (0, 0));
        assert!(meta("opt/app/t/link").file_type().is_symlink());
        assert_eq!(
            (meta("opt/app/t/link").uid(), meta("opt/app/t/link").gid()),
            (1000, 1001)
        );
        assert_eq!(
            fs::read_link(root.path().join("opt/app/t/link")).unwrap(),
            Path::new("file")
        );
    }

    #[test]
    fn apply_as_dst_creates_its_parents_for_the_user() {
        let ctx = context();
        let root = tempfile::tempdir().unwrap();
        apply(
            root.path(),
            &plan_in(ctx.path(), &copy(&["dir"], "/a/b/d", &[])),
            7,
            8,
        )
        .unwrap();
        apply(
            root.path(),
            &plan_in(ctx.path(), &copy(&["file"], "/a/c/f", &[])),
            7,
            8,
        )
        .unwrap();
        for dir in ["a", "a/b", "a/c"] {
            let m = fs::metadata(root.path().join(dir)).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.permissions().mode() & 0o777),
                (7, 8, 0o755),
                "{dir}"
            );
        }
        assert_eq!(fs::read(root.path().join("a/b/d/sub/x")).unwrap(), b"x");
        assert_eq!(fs::read(root.path().join("a/c/f")).unwrap(), b"f");
        assert!(
            !root.path().join("a/b/d/dir").exists(),
            "contents become /a/b/d"
        );
    }

    #[test]
    fn missing_source_names_it() {
        let ctx = tempfile::tempdir().unwrap();
        let c = copy(&["nope"], "/x", &[]);
        let placement = Placement::of(&c, "/").unwrap();
        let err = plan(ctx.path(), &c, &placement, "the build context").unwrap_err();
        assert!(
            err.to_string()
                .contains("`nope` not found in the build context"),
            "{err}"
        );
    }
}
