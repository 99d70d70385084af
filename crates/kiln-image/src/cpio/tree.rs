//! Archives and directory trees: [`unpack`] (which refuses an archive that would write
//! anywhere outside its target, before writing anything), [`pack`] (deterministic) and
//! [`merge`] (later archives override earlier ones, as the kernel applies them).

use super::{clamp_time, Compression, Entry, Kind, Writer};
use crate::ImageError;
use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What [`unpack`] wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub entries: usize,
    pub bytes: u64,
}

fn refused(path: &str, reason: &str) -> ImageError {
    ImageError::Tool(format!(
        "refusing to unpack {path:?}: {reason}; nothing was written"
    ))
}

/// An entry's name as a relative path without `.` components: `None` for the archive's
/// root (`.`); an error for an absolute name or one with a `..` component.
pub fn normalize(name: &str) -> Result<Option<String>, ImageError> {
    if name.starts_with('/') {
        return Err(refused(name, "an absolute path"));
    }
    let mut parts = Vec::new();
    for part in name.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(refused(name, "a `..` component leaves the target")),
            p => parts.push(p),
        }
    }
    Ok((!parts.is_empty()).then(|| parts.join("/")))
}

/// `a`, `a/b` for `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

/// Checks every entry before anything is written: names stay inside the target, and no
/// entry is written through a symbolic link (one made by an earlier entry, or one already
/// in `dest`), since a link may point anywhere.
fn plan(entries: &[Entry], dest: &Path) -> Result<Vec<(String, usize)>, ImageError> {
    let mut links: HashMap<&str, bool> = HashMap::new();
    let mut names = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let Some(rel) = normalize(&e.path)? else {
            continue;
        };
        names.push((rel, i));
    }
    for (rel, i) in &names {
        for dir in ancestors(rel) {
            let through_link = match links.get(dir) {
                Some(is_link) => *is_link,
                None => fs::symlink_metadata(dest.join(dir)).is_ok_and(|m| m.is_symlink()),
            };
            if through_link {
                return Err(refused(
                    &entries[*i].path,
                    &format!("it would be written through the symbolic link {dir:?}"),
                ));
            }
        }
        links.insert(rel, matches!(entries[*i].kind, Kind::Symlink(_)));
    }
    Ok(names)
}

/// Writes `entries` under `dest` (created if missing). Owners are applied when running
/// as root; permissions and times always. Every name is checked first ([`plan`]): a
/// hostile archive is refused whole.
pub fn unpack(entries: &[Entry], dest: &Path) -> Result<Unpacked, ImageError> {
    fs::create_dir_all(dest).map_err(|e| ImageError::io(dest, e))?;
    let names = plan(entries, dest)?;
    let root = nix::unistd::geteuid().is_root();
    let mut dirs = Vec::new();
    let mut done = Unpacked::default();
    for (rel, i) in &names {
        let e = &entries[*i];
        let path = dest.join(rel);
        let io = |err| ImageError::io(&path, err);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && matches!(e.kind, Kind::Dir) => {}
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).map_err(io)?,
            Ok(_) => fs::remove_file(&path).map_err(io)?,
            Err(_) => {}
        }
        match &e.kind {
            Kind::Dir => {
                if !path.is_dir() {
                    fs::create_dir(&path).map_err(io)?;
                }
                dirs.push((path.clone(), e));
            }
            Kind::File(data) => {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .mode(0o600)
                    .open(&path)
                    .map_err(io)?;
                f.write_all(data).map_err(io)?;
                done.bytes += data.len() as u64;
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &path).map_err(io)?,
            Kind::CharDevice(major, minor) | Kind::BlockDevice(major, minor) => {
                let kind = if matches!(e.kind, Kind::CharDevice(..)) {
                    nix::sys::stat::SFlag::S_IFCHR
                } else {
                    nix::sys::stat::SFlag::S_IFBLK
                };
                let dev = nix::sys::stat::makedev((*major).into(), (*minor).into());
                nix::sys::stat::mknod(
                    &path,
                    kind,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    dev,
                )
                .map_err(|err| io(err.into()))?;
            }
            Kind::Fifo => {
                nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
                    .map_err(|err| io(err.into()))?
            }
        }
        if !matches!(e.kind, Kind::Dir) {
            finish_metadata(&path, e, root)?;
        }
        done.entries += 1;
    }
    // Directories last, deepest first: writing into them changed their times, and a
    // read-only directory could not have been filled.
    for (path, e) in dirs.iter().rev() {
        finish_metadata(path, e, root)?;
    }
    Ok(done)
}

/// Owner (as root), permissions (not of links) and modification time of one entry.
fn finish_metadata(path: &Path, e: &Entry, root: bool) -> Result<(), ImageError> {
    let io = |err: std::io::Error| ImageError::io(path, err);
    if root {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid)).map_err(io)?;
    }
    if !matches!(e.kind, Kind::Symlink(_)) {
        fs::set_permissions(path, fs::Permissions::from_mode(e.perm)).map_err(io)?;
    }
    let t = nix::sys::time::TimeSpec::new(e.mtime.into(), 0);
    nix::sys::stat::utimensat(
        None,
        path,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|err| io(err.into()))
}

/// The entries of the tree `dir`, parents before children, names in byte order, owners
/// and permissions as they are; every time is `mtime`, so the same tree gives the same
/// archive. Hard links become separate copies; sockets are refused.
pub fn pack(dir: &Path, mtime: i64) -> Result<Vec<Entry>, ImageError> {
    let mut out = Vec::new();
    for item in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let item = item.map_err(|e| {
            let path = e.path().unwrap_or(dir).to_path_buf();
            ImageError::io(path, e.into())
        })?;
        let path = item.path();
        let io = |err| ImageError::io(path, err);
        let rel = path
            .strip_prefix(dir)
            .ok()
            .and_then(|p| p.to_str())
            .ok_or_else(|| {
                ImageError::Tool(format!("{}: a name that is not UTF-8", path.display()))
            })?;
        let m = fs::symlink_metadata(path).map_err(io)?;
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let rdev = (
            nix::sys::stat::major(m.rdev()) as u32,
            nix::sys::stat::minor(m.rdev()) as u32,
        );
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File(fs::read(path).map_err(io)?)
        } else if ft.is_symlink() {
            let target = fs::read_link(path).map_err(io)?;
            Kind::Symlink(target.to_str().map(str::to_string).ok_or_else(|| {
                ImageError::Tool(format!(
                    "{}: a link target that is not UTF-8",
                    path.display()
                ))
            })?)
        } else if ft.is_char_device() {
            Kind::CharDevice(rdev.0, rdev.1)
        } else if ft.is_block_device() {
            Kind::BlockDevice(rdev.0, rdev.1)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            return Err(ImageError::Tool(format!(
                "{}: a socket cannot be archived",
                path.display()
            )));
        };
        out.push(Entry {
            path: rel.to_string(),
            perm: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            mtime: clamp_time(mtime),
            kind,
        });
    }
    Ok(out)
}

/// One archive from several: an entry of a later archive replaces the entry of an earlier
/// one with the same path (in the earlier one's place, so parents still come first), as
/// the kernel's unpacking of concatenated archives would leave the files.
pub fn merge(archives: Vec<Vec<Entry>>) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for archive in archives {
        for e in archive {
            let key = match normalize(&e.path) {
                Ok(Some(k)) => k,
                Ok(None) => ".".to_string(),
                Err(_) => e.path.clone(),
            };
            match at.get(&key) {
                Some(&i) => out[i] = e,
                None => {
                    at.insert(key, out.len());
                    out.push(e);
                }
            }
        }
    }
    out
}

/// Writes `entries` as one archive to `dest` (through a temporary file renamed into place,
/// so a failure leaves nothing), compressed as asked. Returns the file's size.
pub fn write_file(
    entries: &[Entry],
    dest: &Path,
    compression: Compression,
) -> Result<u64, ImageError> {
    let mut w = Writer::new(Vec::new(), 0);
    for e in entries {
        w.add_entry(e).map_err(|err| ImageError::io(dest, err))?;
    }
    let (bytes, _) = w.finish().map_err(|err| ImageError::io(dest, err))?;
    let bytes = compression
        .compress(&bytes)
        .map_err(|err| ImageError::io(dest, err))?;
    let tmp = tmp_path(dest);
    let written = fs::write(&tmp, &bytes).and_then(|()| fs::rename(&tmp, dest));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(ImageError::io(dest, err));
    }
    Ok(bytes.len() as u64)
}

fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.kiln-tmp"))
}

/// Paths (normalised) of `entries`, for comparisons.
pub fn paths(entries: &[Entry]) -> BTreeSet<String> {
    entries
        .iter()
        .filter_map(|e| normalize(&e.path).ok().flatten())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, data: &str) -> Entry {
        Entry {
            path: path.into(),
            perm: 0o644,
            uid: 0,
            gid: 0,
            mtime: 5,
            kind: Kind::File(data.as_bytes().to_vec()),
        }
    }

    fn link(path: &str, target: &str) -> Entry {
        Entry {
            kind: Kind::Symlink(target.into()),
            perm: 0o777,
            ..file(path, "")
        }
    }

    fn dir(path: &str) -> Entry {
        Entry {
            kind: Kind::Dir,
            perm: 0o755,
            ..file(path, "")
        }
    }

    /// Every path under `root`, relative.
    fn listing(root: &Path) -> Vec<String> {
        walkdir::WalkDir::new(root)
            .min_depth(1)
            .sort_by_file_name()
            .into_iter()
            .map(|e| {
                e.unwrap()
                    .path()
                    .strip_prefix(root)
                    .unwrap()
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn hostile_archives_write_nothing_anywhere() {
        let hostile: Vec<(Vec<Entry>, &str)> = vec![
            (vec![file("ok", "1"), file("../x", "evil")], "`..`"),
            (vec![file("a/../../x", "evil")], "`..`"),
            (vec![file("ok", "1"), file("/etc/x", "evil")], "absolute"),
            (
                vec![link("escape", "/"), file("escape/tmp/x", "evil")],
                "symbolic link \"escape\"",
            ),
            (
                vec![link("up", "../.."), dir("up/d")],
                "symbolic link \"up\"",
            ),
            (
                vec![
                    dir("d"),
                    link("d/l", "../../outside"),
                    file("d/l/x", "evil"),
                ],
                "symbolic link \"d/l\"",
            ),
        ];
        for (entries, why) in hostile {
            let scratch = tempfile::tempdir().unwrap();
            let target = scratch.path().join("target");
            let err = unpack(&entries, &target).unwrap_err().to_string();
            assert!(
                err.contains(why) && err.contains("nothing was written"),
                "{err}"
            );
            assert_eq!(listing(scratch.path()), ["target"], "{why}: {err}");
        }
        // A link already in the target is not followed either.
        let scratch = tempfile::tempdir().unwrap();
        let target = scratch.path().join("target");
        let outside = scratch.path().join("outside");
        fs::create_dir_all(&target).unwrap();
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, target.join("l")).unwrap();
        let err = unpack(&[file("l/x", "evil")], &target).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(listing(&outside).is_empty());
    }

    #[test]
    fn unpack_then_pack_keeps_every_kind_mode_and_time() {
        let scratch = tempfile::tempdir().unwrap();
        let entries = vec![
            dir("./etc"),
            Entry {
                perm: 0o600,
                ..file("etc/secret", "s")
            },
            link("etc/alias", "secret"),
            file("bin/tool", "#!/bin/sh\n"),
            Entry {
                kind: Kind::Fifo,
                perm: 0o644,
                ..file("etc/fifo", "")
            },
            dir("."),
        ];
        let got = unpack(&entries, scratch.path()).unwrap();
        assert_eq!(got.entries, 5);
        let m = fs::metadata(scratch.path().join("etc/secret")).unwrap();
        assert_eq!((m.mode() & 0o7777, m.mtime()), (0o600, 5));
        assert_eq!(
            fs::read_link(scratch.path().join("etc/alias")).unwrap(),
            Path::new("secret")
        );
        let packed = pack(scratch.path(), 9).unwrap();
        let names: Vec<&str> = packed.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/tool",
                "etc",
                "etc/alias",
                "etc/fifo",
                "etc/secret"
            ]
        );
        assert!(packed.iter().all(|e| e.mtime == 9));
        assert_eq!(pack(scratch.path(), 9).unwrap(), packed, "deterministic");
    }

    #[test]
    fn merge_lets_later_archives_override() {
        let a = vec![dir("etc"), file("etc/conf", "old"), file("a", "1")];
        let b = vec![file("./etc/conf", "new"), file("b", "2")];
        let merged = merge(vec![a, b]);
        let names: Vec<&str> = merged.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["etc", "./etc/conf", "a", "b"]);
        assert_eq!(merged[1].kind, Kind::File(b"new".to_vec()));
    }

    #[test]
    fn written_archives_read_back_compressed() {
        let scratch = tempfile::tempdir().unwrap();
        let entries = vec![dir("d"), file("d/f", "x")];
        for name in ["a.cpio", "a.cpio.gz", "a.cpio.zst"] {
            let dest = scratch.path().join(name);
            write_file(&entries, &dest, Compression::from_path(&dest)).unwrap();
            let back = super::super::read_all(super::super::open_archive(&dest).unwrap()).unwrap();
            assert_eq!(back, entries);
        }
    }
}
