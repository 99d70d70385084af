//! A rootfs as a POSIX (pax) tar stream.
//!
//! Entries come in sorted path order with owners, modes, mtimes, symlinks, hardlinks
//! (second and later names become link entries), device nodes, fifos and extended
//! attributes (as `SCHILY.xattr.*` pax records, the form GNU tar and the `tar` crate read).

use crate::ImageError;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use tar::{EntryType, Header};

/// Writes the tree under `root` to `out` as a tar archive with paths relative to `root`
/// (`./etc/passwd` style names without the leading `./`). Returns the number of entries.
pub fn write_tar(root: &Path, out: impl Write) -> Result<u64, ImageError> {
    write_tar_with_progress(root, out, &mut |_, _| {})
}

/// [`write_tar`], calling `progress(entries, bytes)` after each entry.
pub fn write_tar_with_progress(
    root: &Path,
    out: impl Write,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImageError> {
    write_tar_with(root, out, TarOptions::default(), progress)
}

/// What an archive records beyond [`write_tar`]'s defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TarOptions {
    /// Also archive `root` itself, as the entry `.` (its owner, mode, mtime, xattrs).
    pub root_entry: bool,
    /// Keep sub-second mtimes (a pax `mtime` record), so extracting restores them exactly.
    pub exact_times: bool,
}

/// [`write_tar_with_progress`] with `options`: a layer archived this way and extracted
/// again has the same tree, owners, modes, times and xattrs (kiln's registry build cache).
pub fn write_tar_with(
    root: &Path,
    out: impl Write,
    options: TarOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<u64, ImageError> {
    let mut bytes = 0;
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    let mut count = 0;
    let min_depth = if options.root_entry { 0 } else { 1 };
    for entry in walkdir::WalkDir::new(root)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(min_depth)
    {
        let entry =
            entry.map_err(|e| ImageError::Tool(format!("reading {}: {e}", root.display())))?;
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned();
        let rel = if rel.is_empty() { ".".to_string() } else { rel };
        let meta = fs::symlink_metadata(path).map_err(|e| ImageError::io(path, e))?;
        let mtime = (options.exact_times && meta.mtime_nsec() != 0)
            .then(|| format!("{}.{:09}", meta.mtime(), meta.mtime_nsec()));
        append_xattrs(&mut builder, path, mtime)?;
        append_entry(&mut builder, path, &rel, &meta, &mut links)?;
        count += 1;
        if meta.is_file() {
            bytes += meta.len();
        }
        progress(count, bytes);
    }
    builder
        .into_inner()
        .map_err(|e| ImageError::io(root, e))?
        .flush()
        .map_err(|e| ImageError::io(root, e))?;
    Ok(count)
}

fn append_entry<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    rel: &str,
    meta: &fs::Metadata,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<(), ImageError> {
    let mut header = Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
    let ft = meta.file_type();
    let io = |e| ImageError::io(path, e);
    if ft.is_file() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            header.set_entry_type(EntryType::Link);
            header.set_size(0);
            return builder.append_link(&mut header, rel, first).map_err(io);
        }
        links.insert((meta.dev(), meta.ino()), rel.to_string());
    }
    if ft.is_file() {
        let file = fs::File::open(path).map_err(io)?;
        builder.append_data(&mut header, rel, file).map_err(io)
    } else if ft.is_symlink() {
        let target = fs::read_link(path).map_err(io)?;
        header.set_size(0);
        builder.append_link(&mut header, rel, target).map_err(io)
    } else if ft.is_dir() {
        header.set_size(0);
        builder
            .append_data(&mut header, rel, std::io::empty())
            .map_err(io)
    } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
        let kind = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        header.set_entry_type(kind);
        header.set_size(0);
        let rdev = meta.rdev();
        header.set_device_major(libc::major(rdev)).map_err(io)?;
        header.set_device_minor(libc::minor(rdev)).map_err(io)?;
        builder
            .append_data(&mut header, rel, std::io::empty())
            .map_err(io)
    } else {
        // Sockets cannot be archived and carry no data; skipping them is what tar does too.
        Ok(())
    }
}

/// Adds a pax header with the file's extended attributes and its exact `mtime`, if it
/// has any.
fn append_xattrs<W: Write>(
    builder: &mut tar::Builder<W>,
    path: &Path,
    mtime: Option<String>,
) -> Result<(), ImageError> {
    let names = list_xattrs(path);
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(mtime) = mtime {
        records.push(("mtime".to_string(), mtime.into_bytes()));
    }
    for name in names.into_iter().filter(|n| exported_xattr(n)) {
        if let Some(value) = get_xattr(path, &name) {
            records.push((format!("SCHILY.xattr.{name}"), value));
        }
    }
    if records.is_empty() {
        return Ok(());
    }
    builder
        .append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
        .map_err(|e| ImageError::io(path, e))
}

/// Whether an extended attribute belongs in the archive. overlayfs keeps bookkeeping of
/// its own in an upper directory: `origin` (a file handle of the lower file, meaningless
/// on another file system, and binary: a newline in it also breaks the `tar` crate's pax
/// reader, which splits records at newlines), `impure`, `nlink`, `upper`, `index`. Only
/// `opaque` says something about the tree (its directory hides the layers below).
fn exported_xattr(name: &str) -> bool {
    match name.strip_prefix("trusted.overlay.") {
        Some(rest) => rest == "opaque",
        None => true,
    }
}

fn list_xattrs(path: &Path) -> Vec<String> {
    let c = match std::ffi::CString::new(path.as_os_str().as_bytes()) {
        Ok(c) => c,
        Err(_) => return Vec::new(),
    };
    // SAFETY: c is a valid NUL-terminated path; a null buffer asks for the size.
    let size = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if size <= 0 {
        return Vec::new();
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf has room for `size` bytes.
    let got = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got <= 0 {
        return Vec::new();
    }
    buf.truncate(got as usize);
    let mut names: Vec<String> = buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    names
}

fn get_xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let n = std::ffi::CString::new(name).ok()?;
    // SAFETY: valid C strings; a null buffer asks for the size.
    let size = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    if size < 0 {
        return None;
    }
    let mut buf = vec![0u8; size as usize];
    // SAFETY: buf has room for `size` bytes.
    let got =
        unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if got < 0 {
        return None;
    }
    buf.truncate(got as usize);
    Some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// overlayfs' own bookkeeping in an upper directory stays out of the archive (a binary
    /// `origin` with a newline made the `tar` crate's reader refuse the whole entry); its
    /// opaque marker and ordinary xattrs go in, and every pax record reads back.
    #[test]
    fn overlay_bookkeeping_xattrs_are_left_out_and_opaque_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("work");
        fs::create_dir(&dir).unwrap();
        let set = |name: &str, value: &[u8]| {
            xattr_set(&dir, name, value).unwrap_or_else(|e| panic!("setting {name}: {e}"))
        };
        set("trusted.overlay.origin", b"\x00\xfb\n\x01handle\n");
        set("trusted.overlay.impure", b"y");
        set("trusted.overlay.opaque", b"y");
        set("user.note", b"kept");
        let mut out = Vec::new();
        write_tar(root.path(), &mut out).unwrap();
        let mut archive = tar::Archive::new(out.as_slice());
        let mut keys = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if let Some(pax) = entry.pax_extensions().unwrap() {
                for ext in pax {
                    keys.push(ext.unwrap().key().unwrap().to_string());
                }
            }
        }
        keys.sort();
        assert_eq!(
            keys,
            [
                "SCHILY.xattr.trusted.overlay.opaque",
                "SCHILY.xattr.user.note"
            ]
        );
    }

    fn xattr_set(path: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
        let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let n = std::ffi::CString::new(name).unwrap();
        // SAFETY: both strings are NUL-terminated; value is a valid buffer of its length.
        let r = unsafe {
            libc::lsetxattr(
                p.as_ptr(),
                n.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }

    #[test]
    fn archives_owners_modes_links_and_devices() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc/app")).unwrap();
        fs::write(r.join("etc/app/conf"), "k=v\n").unwrap();
        fs::set_permissions(r.join("etc/app/conf"), fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(r.join("etc/app/conf"), Some(1000), Some(1001)).unwrap();
        fs::hard_link(r.join("etc/app/conf"), r.join("etc/app/conf2")).unwrap();
        std::os::unix::fs::symlink("app/conf", r.join("etc/link")).unwrap();
        nix::sys::stat::mknod(
            &r.join("null"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            libc::makedev(1, 3),
        )
        .unwrap();
        let mut buf = Vec::new();
        assert_eq!(write_tar(r, &mut buf).unwrap(), 6);
        let mut archive = tar::Archive::new(buf.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            seen.push(path.clone());
            match path.as_str() {
                "etc/app/conf" => {
                    assert_eq!(
                        (
                            h.uid().unwrap(),
                            h.gid().unwrap(),
                            h.mode().unwrap() & 0o7777
                        ),
                        (1000, 1001, 0o640)
                    );
                }
                "etc/app/conf2" => {
                    assert_eq!(h.entry_type(), EntryType::Link);
                    assert_eq!(
                        e.link_name().unwrap().unwrap().to_string_lossy(),
                        "etc/app/conf"
                    );
                }
                "etc/link" => assert_eq!(h.entry_type(), EntryType::Symlink),
                "null" => {
                    assert_eq!(h.entry_type(), EntryType::Char);
                    assert_eq!(
                        (h.device_major().unwrap(), h.device_minor().unwrap()),
                        (Some(1), Some(3))
                    );
                }
                _ => {}
            }
        }
        assert_eq!(
            seen,
            vec![
                "etc",
                "etc/app",
                "etc/app/conf",
                "etc/app/conf2",
                "etc/link",
                "null"
            ]
        );
    }

    #[test]
    fn same_tree_gives_same_bytes() {
        let root = tempfile::tempdir().unwrap();
        for name in ["b", "a", "c"] {
            fs::write(root.path().join(name), name).unwrap();
        }
        let (mut x, mut y) = (Vec::new(), Vec::new());
        write_tar(root.path(), &mut x).unwrap();
        write_tar(root.path(), &mut y).unwrap();
        assert_eq!(x, y);
    }

    #[test]
    fn the_root_entry_and_nanosecond_mtimes_are_kept_when_asked() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::write(r.join("f"), "x").unwrap();
        let when = nix::sys::time::TimeSpec::new(1_700_000_000, 123_456_789);
        nix::sys::stat::utimensat(
            None,
            &r.join("f"),
            &when,
            &when,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
        let options = TarOptions {
            root_entry: true,
            exact_times: true,
        };
        let mut buf = Vec::new();
        assert_eq!(
            write_tar_with(r, &mut buf, options, &mut |_, _| {}).unwrap(),
            2
        );
        let mut archive = tar::Archive::new(buf.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let mtime = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .flatten()
                .find(|x| x.key() == Ok("mtime"))
                .map(|x| x.value().unwrap().to_string());
            seen.push((e.path().unwrap().display().to_string(), mtime));
        }
        assert_eq!(seen[0].0, ".");
        assert_eq!(
            seen[1],
            ("f".to_string(), Some("1700000000.123456789".to_string()))
        );
        // Without the options: no root entry and whole seconds, as before.
        let mut plain = Vec::new();
        assert_eq!(write_tar(r, &mut plain).unwrap(), 1);
    }
}
