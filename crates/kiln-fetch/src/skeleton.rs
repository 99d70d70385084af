//! `(bootstrap (skeleton DIR…))`: directories of the build context whose contents go into
//! a new Debian root before any package is installed, as mmdebstrap setup hooks or mkosi's
//! skeleton trees do. Typical contents are settings that packages' scripts read while
//! they install: initramfs-tools configuration and hooks, dpkg path excludes, module
//! options, apt preferences.
//!
//! The trees enter the base's id through [`digest`] (paths, kinds, modes, contents and
//! symlink targets, never times or owners). At bootstrap time they are copied into a
//! staging directory first and that copy is digested again, so what lands in the root
//! is exactly what the id names: an edit made meanwhile is an error, not a wrong cache.

use sha2::{Digest, Sha256};
use std::fs;
use std::io;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One entry of a skeleton as `lstat` sees it.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    Dir { mode: u32 },
    File { mode: u32 },
    Symlink { target: PathBuf },
}

/// Why a skeleton could not be read or staged: the path concerned and the problem.
#[derive(Debug)]
pub struct SkeletonError {
    pub path: PathBuf,
    pub problem: String,
}

impl SkeletonError {
    fn io(path: &Path, e: io::Error) -> Self {
        SkeletonError {
            path: path.to_path_buf(),
            problem: e.to_string(),
        }
    }
}

/// The digest (hex SHA-256) of the trees `dirs`, in order.
pub fn digest(dirs: &[PathBuf]) -> Result<String, SkeletonError> {
    visit(dirs, None)
}

/// Copies the trees `dirs` into `into` (created, must not exist), later ones over earlier
/// ones (directories merge), and returns the digest of exactly the bytes copied, computed
/// as [`digest`] does: equal to it unless a source changed meanwhile.
pub fn stage(dirs: &[PathBuf], into: &Path) -> Result<String, SkeletonError> {
    fs::create_dir(into).map_err(|e| SkeletonError::io(into, e))?;
    visit(dirs, Some(into))
}

/// Digests every entry of `dirs`, copying each into `copy_into` when given; a copied
/// file is hashed as it is read for the copy.
fn visit(dirs: &[PathBuf], copy_into: Option<&Path>) -> Result<String, SkeletonError> {
    let mut h = Sha256::new();
    for dir in dirs {
        check_dir(dir)?;
        h.update(b"skeleton\0");
        for (rel, kind) in walk(dir)? {
            let from = dir.join(&rel);
            let content = match copy_into {
                Some(into) => copy_entry(&from, &into.join(&rel), &kind),
                None => hash_content(&from, &kind),
            }
            .map_err(|e| SkeletonError::io(&from, e))?;
            hash_entry(&mut h, &rel, &kind, content);
        }
    }
    Ok(hex::encode(h.finalize()))
}

fn check_dir(dir: &Path) -> Result<(), SkeletonError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(SkeletonError {
            path: dir.to_path_buf(),
            problem: "is not a directory: a skeleton is a directory whose contents mirror the root (e.g. skeleton/etc/…)".into(),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(SkeletonError {
            path: dir.to_path_buf(),
            problem: "does not exist in the build context".into(),
        }),
        Err(e) => Err(SkeletonError::io(dir, e)),
    }
}

/// Every entry below `dir` (not `dir` itself), sorted by name, parents first.
fn walk(dir: &Path) -> Result<Vec<(PathBuf, Kind)>, SkeletonError> {
    let mut out = Vec::new();
    let walker = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for item in walker {
        let item = item.map_err(|e| SkeletonError {
            path: e.path().unwrap_or(dir).to_path_buf(),
            problem: e.to_string(),
        })?;
        let rel = item.path().strip_prefix(dir).unwrap_or(item.path());
        out.push((rel.to_path_buf(), kind_of(item.path())?));
    }
    Ok(out)
}

fn kind_of(path: &Path) -> Result<Kind, SkeletonError> {
    let meta = fs::symlink_metadata(path).map_err(|e| SkeletonError::io(path, e))?;
    let mode = meta.permissions().mode() & 0o7777;
    let file_type = meta.file_type();
    if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(|e| SkeletonError::io(path, e))?;
        Ok(Kind::Symlink { target })
    } else if file_type.is_dir() {
        Ok(Kind::Dir { mode })
    } else if file_type.is_file() {
        Ok(Kind::File { mode })
    } else {
        Err(SkeletonError {
            path: path.to_path_buf(),
            problem: format!(
                "is a special file (mode {:o}): a skeleton holds regular files, directories and symlinks",
                meta.mode()
            ),
        })
    }
}

/// A regular file's SHA-256 (`None` for other kinds).
fn hash_content(path: &Path, kind: &Kind) -> io::Result<Option<[u8; 32]>> {
    if !matches!(kind, Kind::File { .. }) {
        return Ok(None);
    }
    let mut h = Sha256::new();
    io::copy(&mut fs::File::open(path)?, &mut h)?;
    Ok(Some(h.finalize().into()))
}

fn hash_entry(h: &mut Sha256, rel: &Path, kind: &Kind, content: Option<[u8; 32]>) {
    let path = rel.as_os_str().as_encoded_bytes();
    h.update((path.len() as u64).to_le_bytes());
    h.update(path);
    match kind {
        Kind::Dir { mode } => {
            h.update(b"d");
            h.update(mode.to_le_bytes());
        }
        Kind::File { mode } => {
            h.update(b"f");
            h.update(mode.to_le_bytes());
            h.update(content.unwrap_or_default());
        }
        Kind::Symlink { target } => {
            let target = target.as_os_str().as_encoded_bytes();
            h.update(b"l");
            h.update((target.len() as u64).to_le_bytes());
            h.update(target);
        }
    }
}

/// Copies one entry, replacing what an earlier skeleton put at the same path (directories
/// merge); a file's content hash is returned, of the bytes written.
fn copy_entry(from: &Path, to: &Path, kind: &Kind) -> io::Result<Option<[u8; 32]>> {
    match kind {
        Kind::Dir { mode } => {
            match fs::symlink_metadata(to) {
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(to)?;
                    fs::create_dir(to)?;
                }
                Err(_) => fs::create_dir(to)?,
            }
            fs::set_permissions(to, fs::Permissions::from_mode(*mode))?;
            Ok(None)
        }
        Kind::File { mode } => {
            remove_existing(to)?;
            let mut reader = HashingReader {
                inner: fs::File::open(from)?,
                hash: Sha256::new(),
            };
            io::copy(&mut reader, &mut fs::File::create_new(to)?)?;
            fs::set_permissions(to, fs::Permissions::from_mode(*mode))?;
            Ok(Some(reader.hash.finalize().into()))
        }
        Kind::Symlink { target } => {
            remove_existing(to)?;
            symlink(target, to)?;
            Ok(None)
        }
    }
}

/// Hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hash: Sha256,
}

impl<R: io::Read> io::Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

fn remove_existing(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        fs::create_dir_all(root.join("etc/conf.d")).unwrap();
        fs::write(root.join("etc/conf.d/a.conf"), "A=1\n").unwrap();
        fs::write(root.join("etc/hook"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("etc/hook"), fs::Permissions::from_mode(0o755)).unwrap();
        symlink("conf.d/a.conf", root.join("etc/link")).unwrap();
    }

    #[test]
    fn digest_covers_contents_modes_and_links_but_not_times() {
        let dir = tempfile::tempdir().unwrap();
        let skel = dir.path().join("skel");
        tree(&skel);
        let first = digest(std::slice::from_ref(&skel)).unwrap();
        let same = || digest(std::slice::from_ref(&skel)).unwrap();
        filetime_touch(&skel.join("etc/hook"));
        assert_eq!(first, same(), "a new mtime is not a new skeleton");
        fs::write(skel.join("etc/conf.d/a.conf"), "A=2\n").unwrap();
        let edited = same();
        assert_ne!(first, edited);
        fs::set_permissions(skel.join("etc/hook"), fs::Permissions::from_mode(0o700)).unwrap();
        let chmodded = same();
        assert_ne!(edited, chmodded);
        fs::remove_file(skel.join("etc/link")).unwrap();
        symlink("hook", skel.join("etc/link")).unwrap();
        assert_ne!(chmodded, same());
    }

    #[test]
    fn stage_merges_in_order_and_returns_the_sources_digest() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        tree(&a);
        fs::create_dir_all(b.join("etc/conf.d")).unwrap();
        fs::write(b.join("etc/conf.d/a.conf"), "A=from b\n").unwrap();
        fs::write(b.join("etc/hook"), "b's hook\n").unwrap();
        let dirs = vec![a.clone(), b.clone()];
        let staged = dir.path().join("staged");
        let got = stage(&dirs, &staged).unwrap();
        assert_eq!(got, digest(&dirs).unwrap());
        assert_eq!(
            fs::read_to_string(staged.join("etc/conf.d/a.conf")).unwrap(),
            "A=from b\n"
        );
        let hook = fs::metadata(staged.join("etc/hook")).unwrap();
        assert_eq!(hook.permissions().mode() & 0o777, 0o644, "b's mode wins");
        assert_eq!(
            fs::read_link(staged.join("etc/link")).unwrap(),
            Path::new("conf.d/a.conf")
        );
        // What was staged is what was digested: an edit after the digest shows.
        let before = digest(&dirs).unwrap();
        fs::write(b.join("etc/hook"), "edited\n").unwrap();
        let again = stage(&dirs, &dir.path().join("staged-again")).unwrap();
        assert_ne!(before, again);
        assert!(
            stage(&dirs, &staged).is_err(),
            "the staging directory must be new"
        );
    }

    #[test]
    fn missing_files_and_special_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = digest(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(e.path, missing);
        assert!(e.problem.contains("does not exist"), "{}", e.problem);
        let file = dir.path().join("file");
        fs::write(&file, "x").unwrap();
        let e = digest(std::slice::from_ref(&file)).unwrap_err();
        assert!(e.problem.contains("is not a directory"), "{}", e.problem);
        let skel = dir.path().join("skel");
        fs::create_dir(&skel).unwrap();
        nix::unistd::mkfifo(&skel.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = digest(std::slice::from_ref(&skel)).unwrap_err();
        assert_eq!(e.path, skel.join("fifo"));
        assert!(e.problem.contains("special file"), "{}", e.problem);
    }

    /// Sets a file's mtime to an hour ago.
    fn filetime_touch(path: &Path) {
        let file = fs::File::options().write(true).open(path).unwrap();
        let hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        file.set_modified(hour_ago).unwrap();
    }
}
