//! External programs, one module each.
//!
//! Every wrapper finds its program first (so a missing one is reported with the Debian
//! package that provides it, before anything is written) and turns a failure into an
//! [`ImageError::Tool`] carrying the program's own stderr. All programs run with
//! `LC_ALL=C` (stable messages, byte-order sorting in `mke2fs -d`) and `TZ=UTC` (FAT
//! stores local time: a fixed zone keeps FAT timestamps reproducible).

pub mod debugfs;
pub mod depmod;
pub mod dumpe2fs;
pub mod e2fsck;
pub mod fsck_vfat;
pub mod mke2fs;
pub mod mkfs_vfat;
pub mod mtools;
pub mod qemu_img;
pub mod sfdisk;

use crate::ImageError;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Directories searched after `PATH`: e2fsprogs and fdisk install into `sbin`, which a
/// non-login shell's `PATH` may lack.
const SBIN_DIRS: [&str; 4] = ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin"];

/// An external program and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Program {
    pub name: &'static str,
    pub package: &'static str,
}

impl Program {
    pub(crate) const fn new(name: &'static str, package: &'static str) -> Self {
        Program { name, package }
    }

    /// The program's full path, or an error saying which package to install.
    pub(crate) fn locate(&self) -> Result<PathBuf, ImageError> {
        let path_var = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path_var)
            .chain(SBIN_DIRS.iter().map(PathBuf::from))
            .map(|dir| dir.join(self.name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                ImageError::Tool(format!(
                    "`{}` is not installed: install the Debian package `{}` (apt-get install {})",
                    self.name, self.package, self.package
                ))
            })
    }

    /// A command for this program with the fixed locale and time zone.
    pub(crate) fn command(&self) -> Result<Command, ImageError> {
        let mut cmd = Command::new(self.locate()?);
        cmd.env("LC_ALL", "C")
            .env("TZ", "UTC")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(cmd)
    }

    /// Runs `cmd` (made by [`Program::command`]) to completion; a non-zero exit becomes
    /// an error that says what was being done (`doing`), the exit status and stderr.
    pub(crate) fn run(&self, cmd: &mut Command, doing: &str) -> Result<Output, ImageError> {
        let output = cmd.output().map_err(|e| self.spawn_error(doing, e))?;
        if output.status.success() {
            Ok(output)
        } else {
            Err(self.failure(doing, &output))
        }
    }

    pub(crate) fn spawn_error(&self, doing: &str, e: std::io::Error) -> ImageError {
        ImageError::Tool(format!(
            "{doing}: cannot run `{}` ({e}); it comes from the Debian package `{}`",
            self.name, self.package
        ))
    }

    /// The error for a finished run that failed.
    pub(crate) fn failure(&self, doing: &str, output: &Output) -> ImageError {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        let detail = [stderr.trim(), stdout.trim()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        ImageError::Tool(format!(
            "{doing}: `{}` ({}) failed with {}{}",
            self.name,
            self.package,
            output.status,
            if detail.is_empty() {
                String::new()
            } else {
                format!(":\n{}", last_lines(&detail, 20))
            }
        ))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The last `n` lines of `text`: tools that fail late print their cause at the end.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `image?offset=N`: the e2fsprogs way to open a filesystem that starts `offset` bytes
/// into a file. The name is relative (the command runs in the image's directory) so that
/// a `?` elsewhere in the path cannot be mistaken for the option separator.
pub(crate) fn e2fs_device_arg(file_name: &Path, offset: u64) -> OsString {
    let mut arg = file_name.as_os_str().to_owned();
    if offset != 0 {
        arg.push(format!("?offset={offset}"));
    }
    arg
}

/// Splits `image` into the directory to run in and a file name usable with
/// [`e2fs_device_arg`]; errors when the file name itself contains `?`.
pub(crate) fn split_image_path(image: &Path) -> Result<(PathBuf, PathBuf), ImageError> {
    let name = image
        .file_name()
        .ok_or_else(|| ImageError::Tool(format!("{}: not a file name", image.display())))?;
    if name.to_string_lossy().contains('?') {
        return Err(ImageError::Tool(format!(
            "{}: e2fsprogs cannot open a file whose name contains `?`: rename it",
            image.display()
        )));
    }
    let dir = match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((dir, PathBuf::from(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_its_package() {
        let err = Program::new("kiln-no-such-program", "kiln-test-pkg")
            .locate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install kiln-test-pkg"), "{err}");
    }

    #[test]
    fn failure_reports_stderr() {
        let sh = Program::new("sh", "dash");
        let mut cmd = sh.command().unwrap();
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let err = sh.run(&mut cmd, "testing").unwrap_err().to_string();
        assert!(
            err.contains("boom") && err.contains("testing") && err.contains("3"),
            "{err}"
        );
    }

    #[test]
    fn device_arg_with_offset() {
        assert_eq!(e2fs_device_arg(Path::new("d.raw"), 0), "d.raw");
        assert_eq!(e2fs_device_arg(Path::new("d.raw"), 512), "d.raw?offset=512");
        assert!(split_image_path(Path::new("/x/a?b")).is_err());
        let (dir, name) = split_image_path(Path::new("disk.raw")).unwrap();
        assert_eq!(
            (dir.as_path(), name.as_path()),
            (Path::new("."), Path::new("disk.raw"))
        );
    }
}
