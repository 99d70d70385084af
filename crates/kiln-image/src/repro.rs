//! Finding why two builds differ, for `kiln build --check-reproducible`: compare the
//! image files with [`file_digest`]; when they differ, walk the two root filesystems with
//! [`first_difference`] and report the first file that does not match, and how.

use crate::ImageError;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which of the two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    First,
    Second,
}

/// The type of a directory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    CharDevice,
    BlockDevice,
    Fifo,
    Socket,
}

impl FileKind {
    fn of(meta: &fs::Metadata) -> FileKind {
        let t = meta.file_type();
        if t.is_dir() {
            FileKind::Directory
        } else if t.is_symlink() {
            FileKind::Symlink
        } else if t.is_char_device() {
            FileKind::CharDevice
        } else if t.is_block_device() {
            FileKind::BlockDevice
        } else if t.is_fifo() {
            FileKind::Fifo
        } else if t.is_socket() {
            FileKind::Socket
        } else {
            FileKind::File
        }
    }
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::File => "regular file",
            FileKind::Directory => "directory",
            FileKind::Symlink => "symlink",
            FileKind::CharDevice => "character device",
            FileKind::BlockDevice => "block device",
            FileKind::Fifo => "fifo",
            FileKind::Socket => "socket",
        })
    }
}

/// How one path differs; each variant holds the first tree's value, then the second's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DifferenceKind {
    /// The path exists in one tree only.
    OnlyIn(Side),
    Type(FileKind, FileKind),
    SymlinkTarget(PathBuf, PathBuf),
    /// `(sha256 hex, size)` of each side.
    Content((String, u64), (String, u64)),
    /// Permission bits with setuid, setgid and sticky.
    Mode(u32, u32),
    /// `(uid, gid)`.
    Owner((u32, u32), (u32, u32)),
    /// `(major, minor)` of a device node.
    Device((u32, u32), (u32, u32)),
    /// Hard link count of a non-directory.
    LinkCount(u64, u64),
    /// The first extended attribute (by name) whose value differs; `None` when absent.
    Xattr(String, Option<Vec<u8>>, Option<Vec<u8>>),
    /// `(seconds, nanoseconds)`.
    Mtime((i64, i64), (i64, i64)),
}

/// The first path at which two trees differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Relative to the tops of the trees (empty for the tops themselves).
    pub path: PathBuf,
    pub kind: DifferenceKind,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}: ", self.path.display())?;
        match &self.kind {
            DifferenceKind::OnlyIn(Side::First) => write!(f, "only in the first tree"),
            DifferenceKind::OnlyIn(Side::Second) => write!(f, "only in the second tree"),
            DifferenceKind::Type(a, b) => write!(f, "type differs ({a} vs {b})"),
            DifferenceKind::SymlinkTarget(a, b) => write!(
                f,
                "symlink target differs ({} vs {})",
                a.display(),
                b.display()
            ),
            DifferenceKind::Content((a, a_size), (b, b_size)) => {
                write!(f, "content differs (sha256 {}… vs {}…", short(a), short(b))?;
                if a_size != b_size {
                    write!(f, ", {a_size} vs {b_size} bytes")?;
                }
                write!(f, ")")
            }
            DifferenceKind::Mode(a, b) => write!(f, "mode differs ({a:04o} vs {b:04o})"),
            DifferenceKind::Owner(a, b) => {
                write!(f, "owner differs ({}:{} vs {}:{})", a.0, a.1, b.0, b.1)
            }
            DifferenceKind::Device(a, b) => write!(
                f,
                "device numbers differ ({}:{} vs {}:{})",
                a.0, a.1, b.0, b.1
            ),
            DifferenceKind::LinkCount(a, b) => {
                write!(f, "hard link count differs ({a} vs {b})")
            }
            DifferenceKind::Xattr(name, a, b) => write!(
                f,
                "extended attribute {name} differs ({} vs {})",
                describe_xattr(a.as_deref()),
                describe_xattr(b.as_deref())
            ),
            DifferenceKind::Mtime(a, b) => {
                write!(f, "mtime differs ({} vs {})", timestamp(*a), timestamp(*b))
            }
        }
    }
}

fn short(hex: &str) -> &str {
    &hex[..hex.len().min(12)]
}

fn describe_xattr(value: Option<&[u8]>) -> String {
    match value {
        None => "absent".to_string(),
        Some(v) => match std::str::from_utf8(v) {
            Ok(text) if v.len() <= 40 && !text.contains(char::is_control) => format!("{text:?}"),
            _ => format!(
                "{} bytes, sha256 {}…",
                v.len(),
                short(&hex::encode(Sha256::digest(v)))
            ),
        },
    }
}

fn timestamp((secs, nanos): (i64, i64)) -> String {
    if nanos == 0 {
        secs.to_string()
    } else {
        format!("{secs}.{nanos:09}")
    }
}

/// sha256 (lowercase hex) and size in bytes of a file's content.
pub fn file_digest(path: &Path) -> Result<(String, u64), ImageError> {
    let mut hasher = Sha256::new();
    let size = crate::manifest::for_each_chunk(path, |chunk| hasher.update(chunk))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Walks the trees at `a` and `b` together, entries of each directory in byte order of
/// their names, and returns the first path that differs, or `None` when they match.
///
/// For each path the checks run in this order: type, symlink target, device numbers,
/// content (sha256), mode, owner, hard link count, extended attributes, mtime. A
/// directory's mtime is compared after everything inside it, because a difference inside
/// usually changes it too and the inner difference is the useful answer. Symbolic links
/// are compared, never followed.
///
/// `clamp`: the SOURCE_DATE_EPOCH images clamp file times to. Times after it compare as
/// the epoch itself, as they will be in the image (trees built at different times differ
/// there, images do not).
pub fn first_difference(
    a: &Path,
    b: &Path,
    clamp: Option<i64>,
) -> Result<Option<Difference>, ImageError> {
    compare_path(a, b, Path::new(""), clamp)
}

fn compare_path(
    a_root: &Path,
    b_root: &Path,
    rel: &Path,
    clamp: Option<i64>,
) -> Result<Option<Difference>, ImageError> {
    let (a, b) = (a_root.join(rel), b_root.join(rel));
    let a_meta = fs::symlink_metadata(&a).map_err(|e| ImageError::io(&a, e))?;
    let b_meta = fs::symlink_metadata(&b).map_err(|e| ImageError::io(&b, e))?;
    let differ = |kind| {
        Ok(Some(Difference {
            path: rel.to_path_buf(),
            kind,
        }))
    };
    if let Some(kind) = compare_entry(&a, &b, &a_meta, &b_meta, clamp)? {
        return differ(kind);
    }
    if a_meta.is_dir() {
        if let Some(found) = compare_children(a_root, b_root, rel, clamp)? {
            return Ok(Some(found));
        }
        if let Some(kind) = compare_mtime(&a_meta, &b_meta, clamp) {
            return differ(kind);
        }
    }
    Ok(None)
}

/// Everything but a directory's mtime (and its contents).
fn compare_entry(
    a: &Path,
    b: &Path,
    a_meta: &fs::Metadata,
    b_meta: &fs::Metadata,
    clamp: Option<i64>,
) -> Result<Option<DifferenceKind>, ImageError> {
    let kind = FileKind::of(a_meta);
    if kind != FileKind::of(b_meta) {
        return Ok(Some(DifferenceKind::Type(kind, FileKind::of(b_meta))));
    }
    if let Some(found) = compare_payload(kind, a, b, a_meta, b_meta)? {
        return Ok(Some(found));
    }
    let mode = |m: &fs::Metadata| m.mode() & 0o7777;
    if mode(a_meta) != mode(b_meta) {
        return Ok(Some(DifferenceKind::Mode(mode(a_meta), mode(b_meta))));
    }
    let owner = |m: &fs::Metadata| (m.uid(), m.gid());
    if owner(a_meta) != owner(b_meta) {
        return Ok(Some(DifferenceKind::Owner(owner(a_meta), owner(b_meta))));
    }
    if kind != FileKind::Directory && a_meta.nlink() != b_meta.nlink() {
        return Ok(Some(DifferenceKind::LinkCount(
            a_meta.nlink(),
            b_meta.nlink(),
        )));
    }
    if let Some(found) = compare_xattrs(a, b)? {
        return Ok(Some(found));
    }
    if kind != FileKind::Directory {
        return Ok(compare_mtime(a_meta, b_meta, clamp));
    }
    Ok(None)
}

/// What the entry holds: a link target, device numbers, or file content.
fn compare_payload(
    kind: FileKind,
    a: &Path,
    b: &Path,
    a_meta: &fs::Metadata,
    b_meta: &fs::Metadata,
) -> Result<Option<DifferenceKind>, ImageError> {
    match kind {
        FileKind::Symlink => {
            let a_target = fs::read_link(a).map_err(|e| ImageError::io(a, e))?;
            let b_target = fs::read_link(b).map_err(|e| ImageError::io(b, e))?;
            Ok((a_target != b_target).then_some(DifferenceKind::SymlinkTarget(a_target, b_target)))
        }
        FileKind::CharDevice | FileKind::BlockDevice => {
            let numbers = |m: &fs::Metadata| (libc::major(m.rdev()), libc::minor(m.rdev()));
            let (a_dev, b_dev) = (numbers(a_meta), numbers(b_meta));
            Ok((a_dev != b_dev).then_some(DifferenceKind::Device(a_dev, b_dev)))
        }
        FileKind::File => {
            let (a_digest, b_digest) = (file_digest(a)?, file_digest(b)?);
            Ok((a_digest != b_digest).then_some(DifferenceKind::Content(a_digest, b_digest)))
        }
        FileKind::Directory | FileKind::Fifo | FileKind::Socket => Ok(None),
    }
}

fn compare_mtime(
    a_meta: &fs::Metadata,
    b_meta: &fs::Metadata,
    clamp: Option<i64>,
) -> Option<DifferenceKind> {
    let mtime = |m: &fs::Metadata| match clamp {
        Some(epoch) if m.mtime() >= epoch => (epoch, 0),
        _ => (m.mtime(), m.mtime_nsec()),
    };
    (mtime(a_meta) != mtime(b_meta)).then(|| DifferenceKind::Mtime(mtime(a_meta), mtime(b_meta)))
}

/// Merges the two sorted listings of directory `rel`, recursing into common entries.
fn compare_children(
    a_root: &Path,
    b_root: &Path,
    rel: &Path,
    clamp: Option<i64>,
) -> Result<Option<Difference>, ImageError> {
    let a_names = sorted_names(&a_root.join(rel))?;
    let b_names = sorted_names(&b_root.join(rel))?;
    let (mut i, mut j) = (0, 0);
    while i < a_names.len() || j < b_names.len() {
        let order = match (a_names.get(i), b_names.get(j)) {
            (Some(a), Some(b)) => a.as_bytes().cmp(b.as_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        let only_in = |side, name: &OsString| {
            Ok(Some(Difference {
                path: rel.join(name),
                kind: DifferenceKind::OnlyIn(side),
            }))
        };
        match order {
            std::cmp::Ordering::Less => return only_in(Side::First, &a_names[i]),
            std::cmp::Ordering::Greater => return only_in(Side::Second, &b_names[j]),
            std::cmp::Ordering::Equal => {
                if let Some(found) = compare_path(a_root, b_root, &rel.join(&a_names[i]), clamp)? {
                    return Ok(Some(found));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(None)
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, ImageError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| ImageError::io(dir, e))? {
        names.push(entry.map_err(|e| ImageError::io(dir, e))?.file_name());
    }
    names.sort_by(|x, y| x.as_bytes().cmp(y.as_bytes()));
    Ok(names)
}

fn compare_xattrs(a: &Path, b: &Path) -> Result<Option<DifferenceKind>, ImageError> {
    let (a_attrs, b_attrs) = (xattrs(a)?, xattrs(b)?);
    if a_attrs == b_attrs {
        return Ok(None);
    }
    let mut names: Vec<&String> = a_attrs.keys().chain(b_attrs.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names.into_iter().find_map(|name| {
        let (x, y) = (a_attrs.get(name), b_attrs.get(name));
        (x != y).then(|| DifferenceKind::Xattr(name.clone(), x.cloned(), y.cloned()))
    }))
}

/// All extended attributes of `path` (not following a final symlink); empty where the
/// filesystem has none.
fn xattrs(path: &Path) -> Result<BTreeMap<String, Vec<u8>>, ImageError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| ImageError::Tool(format!("{}: path contains a NUL byte", path.display())))?;
    let list = match read_sized(|buf, len| {
        // SAFETY: c_path is NUL-terminated; buf is null with len 0 (a size query) or
        // points to `len` writable bytes.
        unsafe { libc::llistxattr(c_path.as_ptr(), buf.cast(), len) }
    }) {
        Ok(list) => list,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(BTreeMap::new()),
        Err(e) => return Err(ImageError::io(path, e)),
    };
    let mut attrs = BTreeMap::new();
    for name in list.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let c_name = CString::new(name).map_err(|e| ImageError::Tool(e.to_string()))?;
        let value = read_sized(|buf, len| {
            // SAFETY: as above, with c_name NUL-terminated.
            unsafe { libc::lgetxattr(c_path.as_ptr(), c_name.as_ptr(), buf.cast(), len) }
        });
        match value {
            Ok(value) => {
                attrs.insert(String::from_utf8_lossy(name).into_owned(), value);
            }
            // Removed between listing and reading: it is not there.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(ImageError::io(path, e)),
        }
    }
    Ok(attrs)
}

/// Calls a size-query-then-fill syscall pair, retrying if the data grows in between.
fn read_sized(call: impl Fn(*mut u8, usize) -> isize) -> io::Result<Vec<u8>> {
    loop {
        let size = call(std::ptr::null_mut(), 0);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        let got = call(buf.as_mut_ptr(), buf.len());
        if got >= 0 {
            buf.truncate(got as usize);
            return Ok(buf);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE) {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_formats() {
        let d = Difference {
            path: "etc/ld.so.cache".into(),
            kind: DifferenceKind::Content(
                ("1a2b3c4d5e6f7a8b".into(), 10),
                ("3c4d5e6f7a8b9c0d".into(), 10),
            ),
        };
        assert_eq!(
            d.to_string(),
            "/etc/ld.so.cache: content differs (sha256 1a2b3c4d5e6f… vs 3c4d5e6f7a8b…)"
        );
        let d = Difference {
            path: "".into(),
            kind: DifferenceKind::Mtime((5, 0), (5, 250_000_000)),
        };
        assert_eq!(d.to_string(), "/: mtime differs (5 vs 5.250000000)");
        let d = Difference {
            path: "bin/ping".into(),
            kind: DifferenceKind::Xattr("security.capability".into(), Some(vec![1, 0, 0, 2]), None),
        };
        assert!(d.to_string().starts_with(
            "/bin/ping: extended attribute security.capability differs (4 bytes, sha256 "
        ));
        assert!(d.to_string().ends_with(" vs absent)"));
    }
}
