//! Finding a root filesystem's kernel and initrd, and extracting them next to an image:
//! `vmlinuz` and `initrd.img` for QEMU's `-kernel`/`-initrd`, and `vmlinux`, the
//! uncompressed ELF kernel that gem5 boots.
//!
//! Debian installs kernels as `boot/vmlinuz-<release>` with `boot/initrd.img-<release>`,
//! and points the `/vmlinuz` and `/initrd.img` links (or `/boot/vmlinuz`, with
//! `link_in_boot`) at the default one. A `vmlinuz` is usually a self-decompressing image
//! (x86's bzImage) whose payload is the ELF kernel compressed with gzip, xz, zstd, lz4,
//! bzip2 or lzma; [`find_elf_payload`] finds that payload by its magic bytes.

use crate::osinfo::resolve_in_root;
use crate::{ImageError, KernelFiles};
use std::cmp::Ordering;
use std::fmt;
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Finds the tree's kernel: the one the `/vmlinuz` (or `/boot/vmlinuz`) link names when
/// that link exists and leads to a `vmlinuz-<release>` file in the tree (it is what the
/// system was set to boot), else the newest `boot/vmlinuz-<release>` by Debian version
/// order of the release. The initrd is the one the `/initrd.img` link names for the same
/// release, else `boot/initrd.img-<release>`, else none. `None` when there is no kernel.
///
/// Returned paths are host paths under `rootfs`, with links already resolved in the tree.
pub fn find_kernel(rootfs: &Path) -> Result<Option<KernelFiles>, ImageError> {
    if let Some(found) = kernel_from_links(rootfs)? {
        return Ok(Some(found));
    }
    newest_in_boot(rootfs)
}

/// The default kernel by the `/vmlinuz` link convention, if the tree follows it.
fn kernel_from_links(rootfs: &Path) -> Result<Option<KernelFiles>, ImageError> {
    for link in ["vmlinuz", "boot/vmlinuz"] {
        let Some(target) = regular_file_via_link(rootfs, link)? else {
            continue;
        };
        let Some(release) = name_suffix(&target, "vmlinuz-") else {
            continue;
        };
        let initrd = initrd_for(rootfs, &release)?;
        return Ok(Some(KernelFiles {
            vmlinuz: target,
            initrd,
            release,
        }));
    }
    Ok(None)
}

/// Where the symbolic link `link` (in-tree path) leads, when it is a link to a regular file.
fn regular_file_via_link(rootfs: &Path, link: &str) -> Result<Option<PathBuf>, ImageError> {
    let link = Path::new(link);
    let (Some(parent), Some(name)) = (link.parent(), link.file_name()) else {
        return Ok(None);
    };
    // The parent is resolved in the tree first, so an odd `boot` link cannot make the
    // lstat below look at the host's own files.
    let Some(parent) = resolve_in_root(rootfs, parent)? else {
        return Ok(None);
    };
    let at = parent.join(name);
    match fs::symlink_metadata(&at) {
        Ok(meta) if meta.file_type().is_symlink() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ImageError::io(&at, e)),
    }
    let target = resolve_in_root(rootfs, link)?;
    Ok(target.filter(|t| t.is_file()))
}

/// The initrd that goes with `release`.
fn initrd_for(rootfs: &Path, release: &str) -> Result<Option<PathBuf>, ImageError> {
    let wanted = format!("initrd.img-{release}");
    for link in ["initrd.img", "boot/initrd.img"] {
        if let Some(target) = regular_file_via_link(rootfs, link)? {
            if target.file_name().is_some_and(|n| n == wanted.as_str()) {
                return Ok(Some(target));
            }
        }
    }
    let named = resolve_in_root(rootfs, &Path::new("boot").join(&wanted))?;
    Ok(named.filter(|p| p.is_file()))
}

/// The newest `boot/vmlinuz-<release>` that is a regular file (links followed in the tree).
fn newest_in_boot(rootfs: &Path) -> Result<Option<KernelFiles>, ImageError> {
    let Some(boot) = resolve_in_root(rootfs, Path::new("boot"))? else {
        return Ok(None);
    };
    if !boot.is_dir() {
        return Ok(None);
    }
    let mut best: Option<(String, PathBuf)> = None;
    for entry in fs::read_dir(&boot).map_err(|e| ImageError::io(&boot, e))? {
        let entry = entry.map_err(|e| ImageError::io(&boot, e))?;
        let Some(release) = name_suffix(&entry.path(), "vmlinuz-") else {
            continue;
        };
        if is_dpkg_leftover(&release) {
            continue;
        }
        let in_tree = Path::new("boot").join(entry.file_name());
        let Some(file) = resolve_in_root(rootfs, &in_tree)?.filter(|p| p.is_file()) else {
            continue;
        };
        let newer = match &best {
            None => true,
            Some((old, _)) => compare_releases(&release, old) == Ordering::Greater,
        };
        if newer {
            best = Some((release, file));
        }
    }
    let Some((release, vmlinuz)) = best else {
        return Ok(None);
    };
    let initrd = initrd_for(rootfs, &release)?;
    Ok(Some(KernelFiles {
        vmlinuz,
        initrd,
        release,
    }))
}

/// dpkg's temporary names (`vmlinuz-X.dpkg-new` …) are not installed kernels.
fn is_dpkg_leftover(release: &str) -> bool {
    [
        ".dpkg-new",
        ".dpkg-tmp",
        ".dpkg-old",
        ".dpkg-bak",
        ".dpkg-dist",
    ]
    .iter()
    .any(|suffix| release.ends_with(suffix))
}

/// `path`'s file name after `prefix`, when it has that prefix and something after it.
fn name_suffix(path: &Path, prefix: &str) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix(prefix)?;
    (!rest.is_empty()).then(|| rest.to_string())
}

/// Orders kernel releases by Debian version rules ([`compare_versions`]), and equal ones
/// (`1.0` and `1.00`) by their bytes so that the order is total and the choice stable.
pub fn compare_releases(a: &str, b: &str) -> Ordering {
    compare_versions(a, b).then_with(|| a.cmp(b))
}

/// Compares two Debian package versions (`[epoch:]upstream[-revision]`) the way dpkg
/// does: epochs numerically, then upstream versions, then revisions, each by dpkg's
/// algorithm (runs of non-digits compared with letters before other characters and `~`
/// before everything, even the end; runs of digits compared as numbers).
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    let (a_epoch, a_upstream, a_revision) = split_version(a);
    let (b_epoch, b_upstream, b_revision) = split_version(b);
    a_epoch
        .cmp(&b_epoch)
        .then_with(|| compare_version_part(a_upstream, b_upstream))
        .then_with(|| compare_version_part(a_revision, b_revision))
}

/// `(epoch, upstream, revision)`; a missing or unparsable epoch counts as 0.
fn split_version(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((e, rest)) if !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()) => {
            (e.parse().unwrap_or(u64::MAX), rest)
        }
        _ => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// The weight dpkg gives a character in a non-digit run; `None` is the end of the string.
fn char_order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(b'~') => -1,
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_version_part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !a[i].is_ascii_digit()) || (j < b.len() && !b[j].is_ascii_digit()) {
            let (ac, bc) = (char_order(a.get(i).copied()), char_order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_difference = Ordering::Equal;
        while i < a.len() && a[i].is_ascii_digit() && j < b.len() && b[j].is_ascii_digit() {
            if first_difference == Ordering::Equal {
                first_difference = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if i < a.len() && a[i].is_ascii_digit() {
            return Ordering::Greater;
        }
        if j < b.len() && b[j].is_ascii_digit() {
            return Ordering::Less;
        }
        if first_difference != Ordering::Equal {
            return first_difference;
        }
    }
    Ordering::Equal
}

/// A compression format a kernel payload can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    Xz,
    Zstd,
    /// LZ4's legacy frame format, the one the kernel's build uses.
    Lz4Legacy,
    Bzip2,
    /// The `.lzma` ("LZMA alone") format.
    Lzma,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Lz4Legacy => "lz4 (legacy frame)",
            Compression::Bzip2 => "bzip2",
            Compression::Lzma => "lzma",
        })
    }
}

/// The magic bytes each payload starts with.
const MAGICS: [(&[u8], Compression); 6] = [
    (&[0x1f, 0x8b, 0x08], Compression::Gzip),
    (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Compression::Xz),
    (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
    (&LZ4_LEGACY_MAGIC.to_le_bytes(), Compression::Lz4Legacy),
    (b"BZh", Compression::Bzip2),
    (&[0x5d, 0x00, 0x00], Compression::Lzma),
];

/// An uncompressed kernel bigger than this is not a kernel (and not worth filling a disk).
const MAX_VMLINUX_BYTES: u64 = 2 << 30;
/// liblzma's memory limit for a candidate: the kernel's `lzma -9` needs 64 MiB of
/// dictionary; garbage that merely looks like a header asks for more and fails at once.
const LZMA_MEMLIMIT: u64 = 512 << 20;

/// Every place in `image` where a compressed payload may start, in file order.
pub fn payload_candidates(image: &[u8]) -> impl Iterator<Item = (usize, Compression)> + '_ {
    let first_bytes: Vec<u8> = MAGICS.iter().map(|(magic, _)| magic[0]).collect();
    (0..image.len())
        .filter(move |&offset| first_bytes.contains(&image[offset]))
        .flat_map(move |offset| {
            MAGICS
                .iter()
                .filter(move |(magic, _)| image[offset..].starts_with(magic))
                .map(move |(_, compression)| (offset, *compression))
        })
}

/// A decoder for the payload of kind `compression` at the start of `data`.
fn decoder(compression: Compression, data: &[u8]) -> io::Result<Box<dyn Read + '_>> {
    Ok(match compression {
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(data)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(data)),
        Compression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(data)?.single_frame();
            d.window_log_max(31)?;
            Box::new(d)
        }
        Compression::Lz4Legacy => Box::new(Lz4Legacy::new(data)),
        Compression::Bzip2 => Box::new(bzip2::read::BzDecoder::new(data)),
        Compression::Lzma => {
            let stream = liblzma::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT)
                .map_err(io::Error::other)?;
            Box::new(liblzma::read::XzDecoder::new_stream(data, stream))
        }
    })
}

/// Whether `header` starts like an ELF file (magic, a valid class, byte order and version).
pub fn is_elf(header: &[u8]) -> bool {
    header.len() >= 7
        && header.starts_with(b"\x7fELF")
        && matches!(header[4], 1 | 2)
        && matches!(header[5], 1 | 2)
        && header[6] == 1
}

/// Decompresses only far enough to see whether the payload is an ELF file.
fn payload_is_elf(image: &[u8], offset: usize, compression: Compression) -> bool {
    let mut head = [0u8; 16];
    decoder(compression, &image[offset..])
        .and_then(|mut d| d.read_exact(&mut head))
        .is_ok_and(|()| is_elf(&head))
}

/// Finds the compressed ELF kernel in a kernel image and writes it, uncompressed, to `out`
/// (truncated first). Candidates are tried in file order; the first one that decompresses
/// completely to something starting like an ELF file wins. Returns its format and offset,
/// or `None` when no candidate does (the image holds no ELF kernel, as arm64's `Image`).
pub fn find_elf_payload(
    image: &[u8],
    out: &mut fs::File,
) -> io::Result<Option<(Compression, usize)>> {
    for (offset, compression) in payload_candidates(image) {
        if !payload_is_elf(image, offset, compression) {
            continue;
        }
        out.set_len(0)?;
        out.rewind()?;
        let decoded = decoder(compression, &image[offset..]).and_then(|d| {
            let mut writer = io::BufWriter::with_capacity(1 << 20, &mut *out);
            let n = io::copy(&mut d.take(MAX_VMLINUX_BYTES + 1), &mut writer)?;
            writer.flush()?;
            Ok(n)
        });
        match decoded {
            Ok(n) if n <= MAX_VMLINUX_BYTES => return Ok(Some((compression, offset))),
            // Too big, or corrupt part-way: a false start; try the next candidate.
            Ok(_) | Err(_) => continue,
        }
    }
    out.set_len(0)?;
    Ok(None)
}

/// The LZ4 legacy frame's magic number (little-endian in the file).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Every block but the last of a legacy frame decompresses to exactly this much.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;

/// Reads an LZ4 legacy frame: the magic, then blocks of `u32` little-endian compressed
/// size + LZ4 block data. A block shorter than 8 MiB is the last one; the kernel's build
/// appends the uncompressed size after the frame, which is therefore never read as a block.
struct Lz4Legacy<'a> {
    input: &'a [u8],
    pos: usize,
    block: Vec<u8>,
    block_pos: usize,
    finished: bool,
    blocks_read: usize,
}

impl<'a> Lz4Legacy<'a> {
    fn new(input: &'a [u8]) -> Self {
        let magic = LZ4_LEGACY_MAGIC.to_le_bytes();
        Lz4Legacy {
            input,
            pos: if input.starts_with(&magic) { 4 } else { 0 },
            block: Vec::new(),
            block_pos: 0,
            finished: false,
            blocks_read: 0,
        }
    }

    fn read_u32(&self, at: usize) -> Option<u32> {
        let bytes = self.input.get(at..at + 4)?;
        Some(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// Decodes the next block into `self.block`; `false` at the end of the frame.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            let Some(word) = self.read_u32(self.pos) else {
                return Ok(false);
            };
            if word == LZ4_LEGACY_MAGIC {
                self.pos += 4;
                continue;
            }
            let size = word as usize;
            let start = self.pos + 4;
            let Some(data) = self.input.get(start..start.saturating_add(size)) else {
                return Ok(false);
            };
            if size == 0 {
                return Ok(false);
            }
            self.block.resize(LZ4_LEGACY_BLOCK, 0);
            match lz4_flex::block::decompress_into(data, &mut self.block) {
                Ok(n) => {
                    self.block.truncate(n);
                    self.block_pos = 0;
                    self.pos = start + size;
                    self.blocks_read += 1;
                    self.finished = n < LZ4_LEGACY_BLOCK;
                    return Ok(true);
                }
                // After a full block, what follows may be the size the kernel appends
                // (when the output is a multiple of 8 MiB): the frame simply ended.
                Err(_) if self.blocks_read > 0 => return Ok(false),
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        }
    }
}

impl Read for Lz4Legacy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.block_pos == self.block.len() {
            if self.finished {
                return Ok(0);
            }
            if !self.next_block()? {
                self.finished = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.block_pos);
        buf[..n].copy_from_slice(&self.block[self.block_pos..self.block_pos + n]);
        self.block_pos += n;
        Ok(n)
    }
}

/// Where the extracted `vmlinux` came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmlinuxSource {
    /// Copied from an uncompressed kernel the tree ships (in-tree path), such as
    /// `usr/lib/debug/boot/vmlinux-<release>` from a `-dbg` package.
    Shipped(PathBuf),
    /// The kernel image is itself an ELF file.
    Uncompressed,
    /// Decompressed from the payload at `offset` in the kernel image.
    Decompressed {
        compression: Compression,
        offset: u64,
    },
    /// The kernel holds no ELF kernel (arm64's `Image`, for one, is not ELF).
    NotFound,
}

/// The files [`extract`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// `OUT/vmlinuz`: the kernel image as installed.
    pub vmlinuz: PathBuf,
    /// `OUT/initrd.img`, when the kernel has an initrd.
    pub initrd: Option<PathBuf>,
    /// `OUT/vmlinux`, the uncompressed ELF kernel, when one was found.
    pub vmlinux: Option<PathBuf>,
    pub vmlinux_source: VmlinuxSource,
}

/// In-tree places where Debian keeps an uncompressed kernel for `release`.
fn shipped_vmlinux_paths(release: &str) -> [PathBuf; 3] {
    [
        PathBuf::from(format!("boot/vmlinux-{release}")),
        PathBuf::from(format!("usr/lib/debug/boot/vmlinux-{release}")),
        PathBuf::from(format!("usr/lib/debug/lib/modules/{release}/vmlinux")),
    ]
}

/// Writes `vmlinuz`, `initrd.img` and `vmlinux` into `out_dir` (created if missing), each
/// with mode 0644 and mtime `source_date_epoch`, each atomically (written under a
/// temporary name, then renamed).
///
/// `vmlinux` is the tree's own uncompressed kernel when it ships one for the release
/// ([`shipped_vmlinux_paths`]), else the ELF payload decompressed from the kernel image.
/// An `initrd.img` or `vmlinux` left in `out_dir` by an earlier run is removed when this
/// kernel has none, so that the directory always describes one kernel.
///
/// Paths in `files` may be host paths under `rootfs` (as [`find_kernel`] returns) or
/// in-tree absolute paths (`/boot/vmlinuz-…`), which are then looked up inside `rootfs`.
pub fn extract(
    files: &KernelFiles,
    rootfs: &Path,
    out_dir: &Path,
    source_date_epoch: i64,
) -> Result<Extracted, ImageError> {
    fs::create_dir_all(out_dir).map_err(|e| ImageError::io(out_dir, e))?;
    let mtime = system_time(source_date_epoch);
    let vmlinuz_src = host_path(rootfs, &files.vmlinuz)?;
    let vmlinuz = out_dir.join("vmlinuz");
    install_copy(&vmlinuz_src, &vmlinuz, mtime)?;

    let initrd_out = out_dir.join("initrd.img");
    let initrd = match &files.initrd {
        Some(src) => {
            install_copy(&host_path(rootfs, src)?, &initrd_out, mtime)?;
            Some(initrd_out)
        }
        None => {
            remove_stale(&initrd_out)?;
            None
        }
    };

    let vmlinux_out = out_dir.join("vmlinux");
    let vmlinux_source = write_vmlinux(files, rootfs, &vmlinuz_src, &vmlinux_out, mtime)?;
    let vmlinux = if vmlinux_source == VmlinuxSource::NotFound {
        remove_stale(&vmlinux_out)?;
        None
    } else {
        Some(vmlinux_out)
    };
    Ok(Extracted {
        vmlinuz,
        initrd,
        vmlinux,
        vmlinux_source,
    })
}

/// Produces `dest` from a shipped vmlinux or the kernel image's payload.
fn write_vmlinux(
    files: &KernelFiles,
    rootfs: &Path,
    vmlinuz_src: &Path,
    dest: &Path,
    mtime: SystemTime,
) -> Result<VmlinuxSource, ImageError> {
    for in_tree in shipped_vmlinux_paths(&files.release) {
        if let Some(host) = resolve_in_root(rootfs, &in_tree)?.filter(|p| p.is_file()) {
            if starts_like_elf(&host)? {
                install_copy(&host, dest, mtime)?;
                return Ok(VmlinuxSource::Shipped(in_tree));
            }
        }
    }
    let image = fs::read(vmlinuz_src).map_err(|e| ImageError::io(vmlinuz_src, e))?;
    if is_elf(&image) {
        install_copy(vmlinuz_src, dest, mtime)?;
        return Ok(VmlinuxSource::Uncompressed);
    }
    let tmp = temp_name(dest);
    let mut out = fs::File::create(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
    let found = find_elf_payload(&image, &mut out).map_err(|e| ImageError::io(&tmp, e));
    let found = match found {
        Ok(found) => found,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let Some((compression, offset)) = found else {
        drop(out);
        fs::remove_file(&tmp).map_err(|e| ImageError::io(&tmp, e))?;
        return Ok(VmlinuxSource::NotFound);
    };
    finish_file(out, &tmp, dest, mtime)?;
    Ok(VmlinuxSource::Decompressed {
        compression,
        offset: offset as u64,
    })
}

fn starts_like_elf(path: &Path) -> Result<bool, ImageError> {
    let mut head = Vec::with_capacity(16);
    fs::File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| ImageError::io(path, e))?;
    Ok(is_elf(&head))
}

/// `path` as a host path: unchanged when under `rootfs`, else resolved inside it.
fn host_path(rootfs: &Path, path: &Path) -> Result<PathBuf, ImageError> {
    if path.starts_with(rootfs) {
        return Ok(path.to_path_buf());
    }
    resolve_in_root(rootfs, path)?.ok_or_else(|| {
        ImageError::Tool(format!(
            "{} does not exist inside {}; look for the kernel again with find_kernel",
            path.display(),
            rootfs.display()
        ))
    })
}

/// The time `epoch` seconds from 1970 (before it when negative).
fn system_time(epoch: i64) -> SystemTime {
    let magnitude = Duration::from_secs(epoch.unsigned_abs());
    if epoch >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// `.NAME.kiln-tmp` next to `dest`.
fn temp_name(dest: &Path) -> PathBuf {
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    dest.with_file_name(format!(".{name}.kiln-tmp"))
}

/// Copies `src` to `dest` atomically with mode 0644 and the given mtime.
fn install_copy(src: &Path, dest: &Path, mtime: SystemTime) -> Result<(), ImageError> {
    let tmp = temp_name(dest);
    let copied = fs::copy(src, &tmp).map_err(|e| ImageError::io(src, e));
    let opened = copied.and_then(|_| {
        fs::OpenOptions::new()
            .write(true)
            .open(&tmp)
            .map_err(|e| ImageError::io(&tmp, e))
    });
    match opened {
        Ok(file) => finish_file(file, &tmp, dest, mtime),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Sets mode and times on the temporary file, then renames it into place.
fn finish_file(
    file: fs::File,
    tmp: &Path,
    dest: &Path,
    mtime: SystemTime,
) -> Result<(), ImageError> {
    let result = file
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| file.set_times(fs::FileTimes::new().set_accessed(mtime).set_modified(mtime)))
        .map_err(|e| ImageError::io(tmp, e))
        .and_then(|()| fs::rename(tmp, dest).map_err(|e| ImageError::io(dest, e)));
    if result.is_err() {
        let _ = fs::remove_file(tmp);
    }
    result
}

fn remove_stale(path: &Path) -> Result<(), ImageError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ImageError::io(path, e)),
    }
}

/// Writes to a `Write` so tests can build payloads with the same encoders.
#[cfg(test)]
fn compress(compression: Compression, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    match compression {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(&mut out, flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap();
        }
        Compression::Xz => {
            let mut e = liblzma::write::XzEncoder::new(&mut out, 6);
            e.write_all(data).unwrap();
            e.finish().unwrap();
        }
        Compression::Zstd => out = zstd::encode_all(data, 3).unwrap(),
        Compression::Lz4Legacy => {
            out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
            for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
                let block = lz4_flex::block::compress(chunk);
                out.extend_from_slice(&(block.len() as u32).to_le_bytes());
                out.extend_from_slice(&block);
            }
        }
        Compression::Bzip2 => {
            let mut e = bzip2::write::BzEncoder::new(&mut out, bzip2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap();
        }
        Compression::Lzma => {
            let opts = liblzma::stream::LzmaOptions::new_preset(6).unwrap();
            let stream = liblzma::stream::Stream::new_lzma_encoder(&opts).unwrap();
            let mut e = liblzma::write::XzEncoder::new_stream(&mut out, stream);
            e.write_all(data).unwrap();
            e.finish().unwrap();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_version_order() {
        let less = [
            ("6.1.0-9-amd64", "6.1.0-26-amd64"),
            ("6.1.0-26-amd64", "6.10.0-1-amd64"),
            ("1.0~rc1", "1.0"),
            ("1.0", "1.0+b1"),
            ("1.0", "1.0a"),
            ("1.0a", "1.0+"),
            ("9:1.0", "10:0.1"),
            ("2.30-1", "2.30-10"),
            ("1.0-1~bpo1", "1.0-1"),
            ("0:1.2", "1:0.1"),
            ("1.2.3", "1.2.3.0"),
            ("~~", "~~a"),
            ("~", ""),
        ];
        for (a, b) in less {
            assert_eq!(compare_versions(a, b), Ordering::Less, "{a} < {b}");
            assert_eq!(compare_versions(b, a), Ordering::Greater, "{b} > {a}");
        }
        assert_eq!(compare_versions("1.0", "1.00"), Ordering::Equal);
        assert_eq!(compare_versions("0:1.0-1", "1.0-1"), Ordering::Equal);
        assert_eq!(compare_releases("1.0", "1.00"), Ordering::Less);
    }

    /// A tiny 64-bit little-endian ELF header followed by recognisable filler.
    pub(crate) fn tiny_elf() -> Vec<u8> {
        let mut elf = vec![0u8; 64];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[6] = 1;
        elf[18] = 62;
        elf.extend((0..20_000u32).flat_map(|i| (i * 7919).to_le_bytes()));
        elf
    }

    /// Something laid out like a bzImage: a boot sector and setup code, a decoy payload
    /// that is not ELF, the real payload, the appended size, then decompressor code.
    fn fake_bzimage(compression: Compression, elf: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; 0x200];
        image[0x1fe..].copy_from_slice(&[0x55, 0xaa]);
        image.extend_from_slice(b"HdrS");
        image.extend_from_slice(&[0x5d, 0x00, 0x00, 0x12, 0x34]); // lzma-looking garbage
        image.extend(compress(Compression::Gzip, b"not an ELF file at all"));
        image.extend_from_slice(&[0x1f, 0x8b, 0x08, 0xff]); // a broken gzip header
        image.extend(compress(compression, elf));
        image.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        image.extend((0..4096u32).map(|i| (i % 251) as u8));
        image
    }

    #[test]
    fn extracts_elf_payload_of_every_format() {
        let elf = tiny_elf();
        let dir = tempfile::tempdir().unwrap();
        for compression in [
            Compression::Gzip,
            Compression::Xz,
            Compression::Zstd,
            Compression::Lz4Legacy,
            Compression::Bzip2,
            Compression::Lzma,
        ] {
            let image = fake_bzimage(compression, &elf);
            let path = dir.path().join("out");
            let mut out = fs::File::create(&path).unwrap();
            let found = find_elf_payload(&image, &mut out).unwrap();
            drop(out);
            let (got, offset) = found.unwrap_or_else(|| panic!("{compression}: not found"));
            assert_eq!(got, compression);
            assert!(offset > 0x200, "{compression}: offset {offset}");
            assert!(fs::read(&path).unwrap() == elf, "{compression}: content");
        }
    }

    #[test]
    fn no_elf_payload_is_none() {
        let mut image = vec![0u8; 1024];
        image.extend(compress(Compression::Xz, b"MZ arm64 Image, not ELF"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut out = fs::File::create(&path).unwrap();
        assert_eq!(find_elf_payload(&image, &mut out).unwrap(), None);
        assert_eq!(fs::metadata(&path).unwrap().len(), 0);
    }

    #[test]
    fn truncated_payload_is_rejected() {
        let elf = tiny_elf();
        let mut image = vec![0u8; 512];
        let xz = compress(Compression::Xz, &elf);
        image.extend_from_slice(&xz[..xz.len() / 2]);
        let dir = tempfile::tempdir().unwrap();
        let mut out = fs::File::create(dir.path().join("out")).unwrap();
        assert_eq!(find_elf_payload(&image, &mut out).unwrap(), None);
    }

    #[test]
    fn lz4_legacy_spanning_blocks() {
        let data: Vec<u8> = (0..(LZ4_LEGACY_BLOCK + 1000) as u32)
            .map(|i| (i % 97) as u8)
            .collect();
        let mut framed = compress(Compression::Lz4Legacy, &data);
        framed.extend_from_slice(&(data.len() as u32).to_le_bytes());
        framed.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
        let mut back = Vec::new();
        Lz4Legacy::new(&framed).read_to_end(&mut back).unwrap();
        assert!(back == data);
    }
}
