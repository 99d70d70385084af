//! The changes a partition's filesystem gets after `mke2fs -d` has copied its tree in:
//! the image's `/etc/fstab`, mount points, an empty `/etc/machine-id`, and the removal of
//! the few well-known files that record when the image was built ([`REMOVED`],
//! [`EMPTIED`]). They are planned by reading the source tree (never changed) and made
//! with debugfs in the image, so no copy of the tree is needed.
//!
//! A removed file's blocks are zeroed once freed (unless another hard link keeps them):
//! its old bytes (a machine id, a random seed, log times) must not linger in free space.

use crate::tools::debugfs::quote;
use crate::ImageError;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Files removed (when they are regular files): caches and state that programs
/// rebuild, whose bytes depend on the build's time or randomness.
pub const REMOVED: &[&str] = &[
    // ldconfig's cache of library mtimes and inode numbers.
    "var/cache/ldconfig/aux-cache",
    // apt's binary caches, rebuilt on the next apt run.
    "var/cache/apt/pkgcache.bin",
    "var/cache/apt/srcpkgcache.bin",
    // apt's solver dump, compressed (emptying would leave an invalid .xz).
    "var/log/apt/eipp.log.xz",
    // A random seed must not be shared by every machine booted from the image.
    "var/lib/systemd/random-seed",
    // D-Bus falls back to /etc/machine-id (Debian makes this a symlink to it).
    "var/lib/dbus/machine-id",
];

/// Files emptied (kept, with their owner and mode): package tools log the time of each
/// action, and `/etc/machine-id` must be empty for systemd to make a new one at first boot.
pub const EMPTIED: &[&str] = &[
    "etc/machine-id",
    "var/log/dpkg.log",
    "var/log/alternatives.log",
    "var/log/bootstrap.log",
    "var/log/apt/history.log",
    "var/log/apt/term.log",
];

/// What a partition's filesystem gets besides its tree.
#[derive(Debug, Clone)]
pub(crate) struct Edits<'a> {
    /// The whole `/etc/fstab`.
    pub fstab: &'a str,
    /// Directories to create when missing (mount points such as `boot/efi`).
    pub mount_points: &'a [&'a str],
}

/// One change, in the filesystem's absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// A new directory owned by root, mode 0755.
    Mkdir(Vec<u8>),
    /// Remove a file; `zap`: zero its blocks (data and extent tree) once freed.
    Remove { path: Vec<u8>, zap: bool },
    /// A new regular file with the contents of the host file `source`.
    Create {
        path: Vec<u8>,
        source: PathBuf,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

/// The changes for the tree at `tree`. Host files the new files are made from are
/// written to `work_dir`.
pub(crate) fn plan(tree: &Path, edits: &Edits, work_dir: &Path) -> Result<Vec<Op>, ImageError> {
    let mut ops = Vec::new();
    let fstab = work_dir.join("fstab");
    fs::write(&fstab, edits.fstab).map_err(|e| ImageError::io(&fstab, e))?;
    let empty = work_dir.join("empty");
    fs::write(&empty, b"").map_err(|e| ImageError::io(&empty, e))?;

    replace(tree, "etc/fstab", &fstab, (0o644, 0, 0), &mut ops)?;
    for dir in edits.mount_points {
        let missing = ensure_dirs(tree, Path::new(dir), &mut ops)?;
        if !missing {
            let at = tree.join(dir);
            if !fs::symlink_metadata(&at)
                .map(|m| m.is_dir())
                .unwrap_or(false)
            {
                return Err(not_a_directory(&at));
            }
        }
    }
    for rel in REMOVED {
        if let Some(meta) = existing_file(tree, rel)? {
            ops.push(Op::Remove {
                path: absolute(rel),
                zap: meta.nlink() == 1,
            });
        }
    }
    for rel in EMPTIED {
        if let Some(meta) = existing_file(tree, rel)?.filter(|m| m.len() > 0) {
            ops.push(Op::Remove {
                path: absolute(rel),
                zap: meta.nlink() == 1,
            });
            ops.push(Op::Create {
                path: absolute(rel),
                source: empty.clone(),
                mode: meta.permissions().mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
            });
        }
    }
    Ok(ops)
}

/// The debugfs commands for `ops`; `blocks` gives the physical blocks of a file to zap.
pub(crate) fn script(
    ops: &[Op],
    mut blocks: impl FnMut(&[u8]) -> Result<Vec<u64>, ImageError>,
) -> Result<Vec<u8>, ImageError> {
    let mut s = Vec::new();
    let mut line = |parts: &[&[u8]]| {
        s.extend(parts.join(&b' '));
        s.push(b'\n');
    };
    for op in ops {
        match op {
            Op::Mkdir(path) => {
                let q = quote(path)?;
                line(&[b"mkdir", &q]);
                set_owner_mode(&mut line, &q, 0o40755, 0, 0);
            }
            Op::Remove { path, zap } => {
                // The block list includes extent tree blocks, which `rm` still needs:
                // zero the blocks once they are free (nothing has reused them yet).
                let freed = if *zap { blocks(path)? } else { Vec::new() };
                line(&[b"rm", &quote(path)?]);
                for block in freed {
                    line(&[b"zap_block -p 0", block.to_string().as_bytes()]);
                }
            }
            Op::Create {
                path,
                source,
                mode,
                uid,
                gid,
            } => {
                let (parent, name) = split(path);
                line(&[b"cd", &quote(parent)?]);
                line(&[
                    b"write",
                    &quote(source.as_os_str().as_bytes())?,
                    &quote(name)?,
                ]);
                line(&[b"cd /"]);
                set_owner_mode(&mut line, &quote(path)?, 0o100000 | mode, *uid, *gid);
            }
        }
    }
    Ok(s)
}

fn set_owner_mode(line: &mut impl FnMut(&[&[u8]]), quoted: &[u8], mode: u32, uid: u32, gid: u32) {
    line(&[b"sif", quoted, b"mode", format!("0{mode:o}").as_bytes()]);
    line(&[b"sif", quoted, b"uid", uid.to_string().as_bytes()]);
    line(&[b"sif", quoted, b"gid", gid.to_string().as_bytes()]);
}

/// `/a/b` → (`/a`, `b`); `/a` → (`/`, `a`).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (b"/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (b"/", path),
    }
}

fn absolute(rel: &str) -> Vec<u8> {
    format!("/{rel}").into_bytes()
}

/// Replaces (or creates) the file `rel` with the host file `source`.
fn replace(
    tree: &Path,
    rel: &str,
    source: &Path,
    (mode, uid, gid): (u32, u32, u32),
    ops: &mut Vec<Op>,
) -> Result<(), ImageError> {
    let rel_path = Path::new(rel);
    let parent = rel_path.parent().unwrap_or(Path::new(""));
    let parent_missing = ensure_dirs(tree, parent, ops)?;
    if !parent_missing {
        let at = tree.join(rel);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {
                return Err(ImageError::Tool(format!(
                "{} is a directory: kiln writes the image's /{rel} there; remove it in the spec",
                at.display()
            )))
            }
            Ok(m) => ops.push(Op::Remove {
                path: absolute(rel),
                zap: m.is_file() && m.nlink() == 1,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io(&at, e)),
        }
    }
    ops.push(Op::Create {
        path: absolute(rel),
        source: source.to_path_buf(),
        mode,
        uid,
        gid,
    });
    Ok(())
}

/// Checks that every component of `rel` in `tree` is a real directory (never a link)
/// and plans the missing ones. Returns whether any was missing.
fn ensure_dirs(tree: &Path, rel: &Path, ops: &mut Vec<Op>) -> Result<bool, ImageError> {
    let mut at = tree.to_path_buf();
    let mut image_path = Vec::new();
    let mut missing = false;
    for part in rel.iter() {
        at.push(part);
        image_path.push(b'/');
        image_path.extend_from_slice(part.as_bytes());
        if missing {
            ops.push(Op::Mkdir(image_path.clone()));
            continue;
        }
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(not_a_directory(&at)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                ops.push(Op::Mkdir(image_path.clone()));
            }
            Err(e) => return Err(ImageError::io(&at, e)),
        }
    }
    Ok(missing)
}

fn not_a_directory(at: &Path) -> ImageError {
    ImageError::Tool(format!(
        "{} is not a directory (a symlink or a file): kiln needs to write below it in \
         the image; make it a directory in the spec",
        at.display()
    ))
}

/// The metadata of `rel` when it is a regular file reached through real directories.
fn existing_file(tree: &Path, rel: &str) -> Result<Option<fs::Metadata>, ImageError> {
    let mut at = tree.to_path_buf();
    let rel = Path::new(rel);
    let count = rel.iter().count();
    for (i, part) in rel.iter().enumerate() {
        at.push(part);
        let meta = match fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(ImageError::io(&at, e)),
        };
        let last = i + 1 == count;
        if last {
            return Ok(meta.is_file().then_some(meta));
        }
        if !meta.is_dir() {
            return Ok(None);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits() -> Edits<'static> {
        Edits {
            fstab: "UUID=x / ext4 defaults 0 1\n",
            mount_points: &["boot/efi"],
        }
    }

    #[test]
    fn plans_fstab_mount_point_and_leftovers() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, work) = (tmp.path().join("t"), tmp.path().join("w"));
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::create_dir_all(tree.join("var/log")).unwrap();
        fs::create_dir_all(&work).unwrap();
        fs::write(tree.join("etc/fstab"), "old").unwrap();
        fs::write(tree.join("etc/machine-id"), "abc\n").unwrap();
        fs::set_permissions(
            tree.join("etc/machine-id"),
            fs::Permissions::from_mode(0o444),
        )
        .unwrap();
        fs::write(tree.join("var/log/dpkg.log"), "").unwrap(); // already empty: left alone
        let ops = plan(&tree, &edits(), &work).unwrap();
        let fstab = work.join("fstab");
        assert_eq!(fs::read_to_string(&fstab).unwrap(), edits().fstab);
        assert_eq!(
            ops,
            vec![
                Op::Remove {
                    path: b"/etc/fstab".to_vec(),
                    zap: true
                },
                Op::Create {
                    path: b"/etc/fstab".to_vec(),
                    source: fstab,
                    mode: 0o644,
                    uid: 0,
                    gid: 0
                },
                Op::Mkdir(b"/boot".to_vec()),
                Op::Mkdir(b"/boot/efi".to_vec()),
                Op::Remove {
                    path: b"/etc/machine-id".to_vec(),
                    zap: true
                },
                Op::Create {
                    path: b"/etc/machine-id".to_vec(),
                    source: work.join("empty"),
                    mode: 0o444,
                    uid: 0,
                    gid: 0
                },
            ]
        );
    }

    #[test]
    fn links_are_never_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let (tree, work) = (tmp.path().join("t"), tmp.path().join("w"));
        fs::create_dir_all(tree.join("var")).unwrap();
        fs::create_dir_all(&work).unwrap();
        std::os::unix::fs::symlink("/etc", tree.join("etc")).unwrap();
        let err = plan(&tree, &edits(), &work).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
        // A linked directory on the way to a leftover: the leftover is not touched.
        fs::remove_file(tree.join("etc")).unwrap();
        fs::create_dir(tree.join("etc")).unwrap();
        std::os::unix::fs::symlink("/var/log", tree.join("var/log")).unwrap();
        let ops = plan(&tree, &edits(), &work).unwrap();
        assert!(ops
            .iter()
            .all(|op| !matches!(op, Op::Remove { path, .. } if path.starts_with(b"/var"))));
        // A hard-linked leftover is unlinked without zeroing the blocks it shares.
        fs::create_dir_all(tree.join("var/cache/ldconfig")).unwrap();
        fs::write(tree.join("var/cache/ldconfig/aux-cache"), "x").unwrap();
        fs::hard_link(tree.join("var/cache/ldconfig/aux-cache"), tree.join("keep")).unwrap();
        let ops = plan(&tree, &edits(), &work).unwrap();
        assert!(ops.contains(&Op::Remove {
            path: b"/var/cache/ldconfig/aux-cache".to_vec(),
            zap: false
        }));
    }

    #[test]
    fn script_zaps_removes_writes_and_sets_owners() {
        let ops = vec![
            Op::Mkdir(b"/boot/efi".to_vec()),
            Op::Remove {
                path: b"/etc/machine-id".to_vec(),
                zap: true,
            },
            Op::Create {
                path: b"/etc/machine-id".to_vec(),
                source: "/w/empty".into(),
                mode: 0o444,
                uid: 0,
                gid: 0,
            },
        ];
        let s = script(&ops, |p| {
            assert_eq!(p, b"/etc/machine-id");
            Ok(vec![7, 9])
        })
        .unwrap();
        let s = String::from_utf8(s).unwrap();
        assert_eq!(
            s,
            "mkdir \"/boot/efi\"\nsif \"/boot/efi\" mode 040755\nsif \"/boot/efi\" uid 0\nsif \"/boot/efi\" gid 0\n\
             rm \"/etc/machine-id\"\nzap_block -p 0 7\nzap_block -p 0 9\n\
             cd \"/etc\"\nwrite \"/w/empty\" \"machine-id\"\ncd /\n\
             sif \"/etc/machine-id\" mode 0100444\nsif \"/etc/machine-id\" uid 0\nsif \"/etc/machine-id\" gid 0\n"
        );
    }
}
