//! Safe extraction of tar streams (rootfs tarballs and OCI layers) into a root directory.
//!
//! Every entry is created relative to a directory descriptor opened component by component
//! with `O_NOFOLLOW`, so an entry can never escape the root: absolute paths and `..` are
//! refused, and so is any path whose parent is a symlink (`link -> /etc` then `link/passwd`).
//! Ownership, permission bits (set-id included), mtimes, `SCHILY.xattr.*` extended attributes,
//! symlinks, hard links, device nodes and FIFOs are restored exactly; we run as root.
//!
//! In [`Whiteouts::Apply`] mode the OCI layer rules hold: `.wh.NAME` deletes `NAME` from the
//! layers below and `.wh..wh..opq` empties its directory of what the layers below put there.
//! Either marker spares what the current layer itself wrote, wherever it sits in the stream.

use crate::fsutil::{self, is_dir, list_names, lstat_at, open_dir_at, reopen_dir};
use crate::tarball::Compression;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{futimens, mkdirat, Mode};
use nix::sys::time::TimeSpec;
use nix::unistd::linkat;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use tar_core::EntryType;

/// How `.wh.` entries are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whiteouts {
    /// Plain tarball: `.wh.` names are ordinary files.
    Literal,
    /// OCI layer: `.wh.` names delete from the layers below.
    Apply,
}

/// What an extraction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct UnpackStats {
    /// Entries read from the archive.
    pub entries: u64,
    /// Extended attributes the target filesystem does not support (skipped).
    pub skipped_xattrs: u64,
}

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UnpackError {
    #[error("reading the archive failed: {0}")]
    Read(#[source] io::Error),
    #[error("entry `{entry}`: {message}")]
    Entry { entry: String, message: String },
}

/// Extracts the tar stream `reader` into the directory `root`.
pub(crate) fn unpack(
    reader: impl Read,
    root: &Path,
    whiteouts: Whiteouts,
) -> Result<UnpackStats, UnpackError> {
    let root_fd = fsutil::open_dir(root).map_err(|e| UnpackError::Entry {
        entry: ".".into(),
        message: format!("opening the target: {e}"),
    })?;
    let mut unpacker = Unpacker {
        root: root_fd,
        whiteouts,
        layer_paths: HashSet::new(),
        dir_times: Vec::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = TarReader::new(reader);
    while let Some(entry) = archive.next_entry().map_err(UnpackError::Read)? {
        unpacker.stats.entries += 1;
        unpacker
            .entry(&entry, &mut archive)
            .map_err(|message| UnpackError::Entry {
                entry: String::from_utf8_lossy(&entry.path).into_owned(),
                message,
            })?;
    }
    unpacker.finish().map_err(|message| UnpackError::Entry {
        entry: "(directory times)".into(),
        message,
    })?;
    Ok(unpacker.stats)
}

/// Decompresses `reader` as `compression` says and unpacks the tar stream into `root`.
pub(crate) fn unpack_compressed(
    reader: impl io::BufRead,
    compression: Compression,
    root: &Path,
    whiteouts: Whiteouts,
) -> Result<UnpackStats, UnpackError> {
    match compression {
        Compression::None => unpack(reader, root, whiteouts),
        Compression::Gzip => unpack(
            flate2::bufread::MultiGzDecoder::new(reader),
            root,
            whiteouts,
        ),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(reader).map_err(UnpackError::Read)?;
            unpack(decoder, root, whiteouts)
        }
    }
}

mod create;
mod reader;

use create::{make_file, make_node, make_symlink, read_meta, set_dir_meta, Meta};
use reader::{Entry, Expanded, TarReader};

/// A step's failure, already worded for the user.
type Step<T> = Result<T, String>;

struct Unpacker {
    root: OwnedFd,
    whiteouts: Whiteouts,
    /// Paths (and their ancestors) written by the current layer; whiteouts spare them.
    layer_paths: HashSet<PathBuf>,
    /// Directory mtimes, applied last because creating children changes them.
    dir_times: Vec<(Vec<OsString>, TimeSpec)>,
    stats: UnpackStats,
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &Entry, archive: &mut TarReader<R>) -> Step<()> {
        let kind = entry.kind;
        let comps = normalize(&entry.path)?;
        if self.whiteouts == Whiteouts::Apply {
            if let Some((dir, name)) = comps.split_last().map(|(n, d)| (d, n)) {
                if let Some(target) = name.as_bytes().strip_prefix(b".wh.") {
                    return self.whiteout(dir, target);
                }
            }
        }
        let meta = read_meta(entry)?;
        let Some((name, dir)) = comps.split_last() else {
            return self.root_entry(kind, meta);
        };
        let parent = self.parent(dir, true)?.ok_or("parent directory vanished")?;
        match kind {
            EntryType::Directory => self.make_dir(&parent, &comps, meta)?,
            EntryType::Regular | EntryType::Continuous | EntryType::GnuSparse => {
                let mut content = archive.content();
                match &entry.sparse {
                    None => make_file(&parent, name, &mut content, &meta, &mut self.stats)?,
                    Some((regions, size)) => {
                        let mut full = Expanded::new(content, regions, *size).map_err(|e| e.to_string())?;
                        make_file(&parent, name, &mut full, &meta, &mut self.stats)?
                    }
                }
            }
            EntryType::Symlink => {
                let target = entry.link.as_deref().ok_or("symlink without a target")?;
                make_symlink(&parent, name, target, &meta, &mut self.stats)?;
            }
            EntryType::Link => {
                let raw = entry.link.as_deref().ok_or("hard link without a target")?;
                let target = normalize(raw).map_err(|e| format!("hard link target `{}`: {e}", String::from_utf8_lossy(raw)))?;
                self.make_hardlink(&parent, name, &comps, &target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (major, minor) = entry.device;
                make_node(&parent, name, kind, libc::makedev(major, minor), &meta, &mut self.stats)?;
            }
            other => return Err(format!("unsupported entry type {other:?}; only files, directories, links, devices and FIFOs are allowed")),
        }
        self.mark(&comps);
        Ok(())
    }

    /// The entry naming the root itself (`./`): only its metadata applies.
    fn root_entry(&mut self, kind: EntryType, meta: Meta) -> Step<()> {
        if kind != EntryType::Directory {
            return Err("the archive root must be a directory".into());
        }
        let root = reopen_dir(&self.root).map_err(|e| format!("opening the root: {e}"))?;
        set_dir_meta(&root, &meta, &mut self.stats)?;
        self.dir_times.push((Vec::new(), meta.mtime));
        Ok(())
    }

    /// Opens the directory `dir` (components under the root) without following symlinks,
    /// creating missing components when `create` is set. `None`: missing and not created.
    fn parent(&self, dir: &[OsString], create: bool) -> Step<Option<OwnedFd>> {
        let mut fd = reopen_dir(&self.root).map_err(|e| format!("opening the root: {e}"))?;
        for (i, comp) in dir.iter().enumerate() {
            fd = match open_dir_at(&fd, comp) {
                Ok(next) => next,
                Err(Errno::ENOENT) if create => {
                    mkdirat(Some(fd.as_raw_fd()), comp.as_os_str(), Mode::from_bits_truncate(0o755))
                        .map_err(|e| format!("creating directory `{}`: {e}", shown(&dir[..=i])))?;
                    open_dir_at(&fd, comp).map_err(|e| format!("opening directory `{}`: {e}", shown(&dir[..=i])))?
                }
                Err(Errno::ENOENT) => return Ok(None),
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    return Err(format!(
                        "`{}` is a symlink or not a directory; refusing to write through it (it could point outside the root)",
                        shown(&dir[..=i])
                    ))
                }
                Err(e) => return Err(format!("opening directory `{}`: {e}", shown(&dir[..=i]))),
            };
        }
        Ok(Some(fd))
    }

    fn make_dir(&mut self, parent: &OwnedFd, comps: &[OsString], meta: Meta) -> Step<()> {
        let name = comps.last().ok_or("empty directory name")?;
        match lstat_at(parent, name).map_err(|e| format!("inspecting: {e}"))? {
            Some(st) if is_dir(&st) => {}
            existing => {
                if existing.is_some() {
                    fsutil::remove_at(parent, name)
                        .map_err(|e| format!("replacing the existing entry: {e}"))?;
                }
                mkdirat(
                    Some(parent.as_raw_fd()),
                    name.as_os_str(),
                    Mode::from_bits_truncate(0o700),
                )
                .map_err(|e| format!("creating the directory: {e}"))?;
            }
        }
        let dir = open_dir_at(parent, name).map_err(|e| format!("opening the directory: {e}"))?;
        set_dir_meta(&dir, &meta, &mut self.stats)?;
        self.dir_times.push((comps.to_vec(), meta.mtime));
        Ok(())
    }

    fn make_hardlink(
        &mut self,
        parent: &OwnedFd,
        name: &OsStr,
        comps: &[OsString],
        target: &[OsString],
    ) -> Step<()> {
        let Some((target_name, target_dir)) = target.split_last() else {
            return Err("hard link to the root directory".into());
        };
        if target == comps {
            return Ok(());
        }
        let missing = || {
            format!(
                "hard link target `{}` does not exist (it must come earlier in the archive)",
                shown(target)
            )
        };
        let target_parent = self.parent(target_dir, false)?.ok_or_else(missing)?;
        match lstat_at(&target_parent, target_name)
            .map_err(|e| format!("inspecting the link target: {e}"))?
        {
            None => return Err(missing()),
            Some(st) if is_dir(&st) => {
                return Err(format!(
                    "hard link target `{}` is a directory",
                    shown(target)
                ))
            }
            Some(_) => {}
        }
        fsutil::remove_at(parent, name)
            .map_err(|e| format!("replacing the existing entry: {e}"))?;
        linkat(
            Some(target_parent.as_raw_fd()),
            target_name.as_os_str(),
            Some(parent.as_raw_fd()),
            name,
            AtFlags::empty(),
        )
        .map_err(|e| format!("creating the hard link to `{}`: {e}", shown(target)))
    }

    /// Applies `DIR/.wh.TARGET` (or the opaque marker when `TARGET` is `.wh..opq`).
    fn whiteout(&mut self, dir: &[OsString], target: &[u8]) -> Step<()> {
        self.mark(dir);
        let dir_path: PathBuf = dir.iter().collect();
        if target == b".wh..opq" {
            let fd = self.parent(dir, true)?.ok_or("opaque directory vanished")?;
            for child in
                list_names(&fd).map_err(|e| format!("listing the opaque directory: {e}"))?
            {
                self.remove_lower(&fd, &dir_path.join(&child), &child)?;
            }
            return Ok(());
        }
        if target.starts_with(b".wh.") {
            // Other `.wh..wh.` names are aufs bookkeeping, not content.
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." || target.contains(&b'/') {
            return Err("malformed whiteout name".into());
        }
        let Some(fd) = self.parent(dir, false)? else {
            return Ok(());
        };
        let name = OsStr::from_bytes(target);
        self.remove_lower(&fd, &dir_path.join(name), name)
    }

    /// Removes `name` (at `rel` under the root) as far as the layers below put it there.
    fn remove_lower(&self, dir: &OwnedFd, rel: &Path, name: &OsStr) -> Step<()> {
        if !self.layer_paths.contains(rel) {
            return fsutil::remove_at(dir, name)
                .map_err(|e| format!("removing `{}`: {e}", rel.display()));
        }
        let st = lstat_at(dir, name).map_err(|e| format!("inspecting `{}`: {e}", rel.display()))?;
        if st.is_some_and(|st| is_dir(&st)) {
            let sub =
                open_dir_at(dir, name).map_err(|e| format!("opening `{}`: {e}", rel.display()))?;
            for child in
                list_names(&sub).map_err(|e| format!("listing `{}`: {e}", rel.display()))?
            {
                self.remove_lower(&sub, &rel.join(&child), &child)?;
            }
        }
        Ok(())
    }

    /// Records `comps` and its ancestors as written by the current layer.
    fn mark(&mut self, comps: &[OsString]) {
        if self.whiteouts == Whiteouts::Apply {
            for end in 1..=comps.len() {
                self.layer_paths.insert(comps[..end].iter().collect());
            }
        }
    }

    /// Sets directory mtimes now that no more children will be created.
    fn finish(&mut self) -> Step<()> {
        for (comps, mtime) in std::mem::take(&mut self.dir_times) {
            let dir = match comps.split_last() {
                None => Some(reopen_dir(&self.root).map_err(|e| format!("opening the root: {e}"))?),
                Some((name, parent)) => match self.parent(parent, false)? {
                    Some(parent) => open_dir_at(&parent, name).ok(),
                    None => None,
                },
            };
            if let Some(dir) = dir {
                futimens(dir.as_raw_fd(), &mtime, &mtime)
                    .map_err(|e| format!("setting the mtime of `{}`: {e}", shown(&comps)))?;
            }
        }
        Ok(())
    }
}

/// Splits an entry path into components, refusing absolute paths and `..`.
fn normalize(raw: &[u8]) -> Step<Vec<OsString>> {
    if raw.starts_with(b"/") {
        return Err(
            "absolute path; entries must be relative to the root (refusing to write outside it)"
                .into(),
        );
    }
    let mut comps = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("the path contains `..`, which would escape the root".into()),
            _ => comps.push(OsStr::from_bytes(comp).to_os_string()),
        }
    }
    Ok(comps)
}

fn shown(comps: &[OsString]) -> String {
    comps.iter().collect::<PathBuf>().display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType;

    #[test]
    fn normalize_refuses_escapes() {
        assert!(normalize(b"/etc/passwd").is_err());
        assert!(normalize(b"a/../../x").is_err());
        assert!(normalize(b"..").is_err());
        assert_eq!(
            normalize(b"./a//b/./c").unwrap(),
            vec![
                OsString::from("a"),
                OsString::from("b"),
                OsString::from("c")
            ]
        );
        assert!(normalize(b"./").unwrap().is_empty());
    }

    /// A tar of (path, kind, data-or-link-target) entries, all root-owned.
    fn tar(entries: &[(&str, EntryType, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(if *kind == EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_600_000_000);
            match kind {
                EntryType::Symlink | EntryType::Link => {
                    h.set_size(0);
                    b.append_link(&mut h, path, data).unwrap();
                }
                _ => {
                    h.set_size(data.len() as u64);
                    b.append_data(&mut h, path, data.as_bytes()).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    fn layer(root: &Path, entries: &[(&str, EntryType, &str)]) -> Result<UnpackStats, UnpackError> {
        unpack(&tar(entries)[..], root, Whiteouts::Apply)
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                out.push(path.strip_prefix(root).unwrap().display().to_string());
                if path.symlink_metadata().unwrap().is_dir() {
                    stack.push(path);
                }
            }
        }
        out.sort();
        out
    }

    use EntryType::{Directory as D, Link as L, Regular as F, Symlink as S};

    #[test]
    fn whiteouts_spare_the_current_layer() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        layer(
            r,
            &[
                ("a", D, ""),
                ("a/old", F, "1"),
                ("keep", F, "lower"),
                ("d", D, ""),
                ("d/x", F, ""),
                ("d/sub", D, ""),
                ("d/sub/y", F, ""),
            ],
        )
        .unwrap();
        // Same layer: `keep` is rewritten then whited out (the whiteout only hits lower
        // layers); `d/sub/z` is new, then `d` turns opaque: only this layer's entries stay.
        layer(
            r,
            &[
                ("keep", F, "upper"),
                (".wh.keep", F, ""),
                ("d/sub/z", F, ""),
                ("d/.wh..wh..opq", F, ""),
                ("a/.wh.old", F, ""),
                ("a/.wh.never-existed", F, ""),
            ],
        )
        .unwrap();
        assert_eq!(listing(r), ["a", "d", "d/sub", "d/sub/z", "keep"]);
        assert_eq!(std::fs::read(r.join("keep")).unwrap(), b"upper");
    }

    #[test]
    fn upper_entries_replace_lower_ones_of_another_kind() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        layer(
            r,
            &[
                ("x", D, ""),
                ("x/inner", F, ""),
                ("y", F, "file"),
                ("z", S, "/etc"),
                ("lower", F, "shared"),
            ],
        )
        .unwrap();
        layer(
            r,
            &[
                ("x", F, "now a file"),
                ("y", D, ""),
                ("z", D, ""),
                ("z/in", F, ""),
                ("hard", L, "lower"),
            ],
        )
        .unwrap();
        assert_eq!(listing(r), ["hard", "lower", "x", "y", "z", "z/in"]);
        assert_eq!(std::fs::read(r.join("x")).unwrap(), b"now a file");
        let (a, b) = (
            r.join("hard").symlink_metadata().unwrap(),
            r.join("lower").symlink_metadata().unwrap(),
        );
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&a),
            std::os::unix::fs::MetadataExt::ino(&b)
        );
    }

    #[test]
    fn literal_mode_keeps_whiteout_names_as_files() {
        let root = tempfile::tempdir().unwrap();
        unpack(
            &tar(&[("a", F, ""), (".wh.a", F, "")])[..],
            root.path(),
            Whiteouts::Literal,
        )
        .unwrap();
        assert_eq!(listing(root.path()), [".wh.a", "a"]);
    }

    #[test]
    fn whiteouts_do_not_reach_through_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("victim"), b"x").unwrap();
        let root = tempfile::tempdir().unwrap();
        layer(
            root.path(),
            &[("link", S, &outside.path().display().to_string())],
        )
        .unwrap();
        let err = layer(root.path(), &[("link/.wh.victim", F, "")]).unwrap_err();
        assert!(err.to_string().contains("is a symlink"), "{err}");
        assert!(outside.path().join("victim").exists());
        layer(root.path(), &[("link/.wh..wh..opq", F, "")]).unwrap_err();
        assert!(outside.path().join("victim").exists());
    }

    /// One pax record: its length counts its own digits.
    fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
        let body = 3 + key.len() + value.len(); // ' ', '=', '\n'
        let mut len = body + 1;
        while len != body + len.to_string().len() {
            len = body + len.to_string().len();
        }
        let mut out = format!("{len} {key}=").into_bytes();
        out.extend_from_slice(value);
        out.push(b'\n');
        out
    }

    /// Appends a pax header carrying `records`, then `kind` at `path` (its ustar name).
    fn append_with_pax(
        b: &mut tar::Builder<Vec<u8>>,
        records: &[(&str, &[u8])],
        path: &str,
        kind: EntryType,
        data: &str,
    ) {
        let pax: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        x.set_path("PaxHeaders/x").unwrap();
        x.set_size(pax.len() as u64);
        x.set_mode(0o644);
        x.set_cksum();
        b.append(&x, &pax[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        h.set_mtime(1_600_000_000);
        h.set_path(path).unwrap();
        if kind == S {
            h.set_link_name(data).unwrap();
            h.set_size(0);
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        } else {
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append(&h, data.as_bytes()).unwrap();
        }
    }

    fn xattr(path: &Path, name: &str) -> Vec<u8> {
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let name = std::ffi::CString::new(name).unwrap();
        let mut buf = vec![0u8; 256];
        // SAFETY: both strings are NUL-terminated and `buf` is as long as we say.
        let n = unsafe {
            libc::lgetxattr(
                path.as_ptr(),
                name.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        assert!(n >= 0, "getxattr: {}", io::Error::last_os_error());
        buf.truncate(n as usize);
        buf
    }

    /// Binary xattr values with newline bytes (file capabilities, overlayfs' handles) come
    /// back whole, and the text after such a newline is not taken for a record: a fake
    /// `linkpath` inside a value does not redirect a symlink.
    #[test]
    fn pax_values_may_hold_newlines() {
        let cap: &[u8] = b"\x01\x00\x00\x02\n\x00\x0a22 linkpath=/etc/evil\n";
        let mut b = tar::Builder::new(Vec::new());
        append_with_pax(
            &mut b,
            &[("SCHILY.xattr.trusted.kiln", cap)],
            "f",
            F,
            "data",
        );
        append_with_pax(
            &mut b,
            &[("comment", b"a\n22 linkpath=/etc/evil\n")],
            "l",
            S,
            "harmless",
        );
        let root = tempfile::tempdir().unwrap();
        unpack(&b.into_inner().unwrap()[..], root.path(), Whiteouts::Apply).unwrap();
        assert_eq!(std::fs::read(root.path().join("f")).unwrap(), b"data");
        assert_eq!(xattr(&root.path().join("f"), "trusted.kiln"), cap);
        assert_eq!(
            std::fs::read_link(root.path().join("l")).unwrap(),
            Path::new("harmless")
        );
    }

    /// Go's archive/tar (Docker, BuildKit) sorts pax keys: `SCHILY.xattr.*` comes before
    /// `path`. A newline in the xattr must not cost the long path that follows it.
    #[test]
    fn a_long_pax_path_after_a_binary_xattr_is_kept() {
        let long = format!("d/{}", "n".repeat(150));
        let mut b = tar::Builder::new(Vec::new());
        append_with_pax(&mut b, &[], "d", D, "");
        append_with_pax(
            &mut b,
            &[
                ("SCHILY.xattr.trusted.kiln", b"\n"),
                ("mtime", b"1700000000.25"),
                ("path", long.as_bytes()),
            ],
            "d/truncated",
            F,
            "x",
        );
        let root = tempfile::tempdir().unwrap();
        unpack(&b.into_inner().unwrap()[..], root.path(), Whiteouts::Apply).unwrap();
        assert_eq!(listing(root.path()), ["d", long.as_str()]);
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(root.path().join(&long)).unwrap();
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_700_000_000, 250_000_000)
        );
    }

    /// GNU tar's sparse files (`tar --sparse`) come back with the same bytes.
    #[test]
    fn gnu_sparse_files_unpack_whole() {
        let src = tempfile::tempdir().unwrap();
        let file = src.path().join("sparse");
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::File::create(&file).unwrap();
            f.set_len(8 << 20).unwrap();
            f.write_all_at(b"start", 0).unwrap();
            f.write_all_at(b"middle", 3 << 20).unwrap();
        }
        let out = std::process::Command::new("tar")
            .args(["--sparse", "--format=gnu", "-cf", "-", "-C"])
            .arg(src.path())
            .arg("sparse")
            .output()
            .expect("GNU tar (Debian package `tar`)");
        assert!(out.status.success());
        let root = tempfile::tempdir().unwrap();
        unpack(&out.stdout[..], root.path(), Whiteouts::Literal).unwrap();
        assert_eq!(
            std::fs::read(root.path().join("sparse")).unwrap(),
            std::fs::read(&file).unwrap()
        );
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let whole = tar(&[("a", F, &"x".repeat(5000))]);
        for cut in [100, 700, 3000] {
            let root = tempfile::tempdir().unwrap();
            let err = unpack(&whole[..cut], root.path(), Whiteouts::Apply).unwrap_err();
            assert!(err.to_string().contains("ends inside"), "{cut}: {err}");
        }
    }
}
