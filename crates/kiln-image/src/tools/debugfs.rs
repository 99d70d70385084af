//! `debugfs` (e2fsprogs): reading files of an ext4 image and fixing inode fields that
//! `mke2fs -d` copies from the host but no program can set there (ctime).

use super::{e2fs_device_arg, split_image_path, Program};
use crate::ImageError;
use std::fmt::Write as _;
use std::ops::RangeInclusive;
use std::path::Path;

pub(crate) const DEBUGFS: Program = Program::new("debugfs", "e2fsprogs");

/// Sets the change time of every inode in `inodes` to `time` (seconds since the epoch),
/// in one `debugfs -w` run. The command file is written to `work_dir`.
pub fn set_ctimes(
    image: &Path,
    offset: u64,
    inodes: &[RangeInclusive<u32>],
    time: i64,
    work_dir: &Path,
) -> Result<(), ImageError> {
    let mut script = String::new();
    for ino in inodes.iter().flat_map(|r| r.clone()) {
        // `sif` writes the inode back with a fresh checksum.
        let _ = writeln!(script, "sif <{ino}> ctime @{time}");
    }
    let script_path = work_dir.join("kiln-debugfs-ctime.txt");
    std::fs::write(&script_path, script).map_err(|e| ImageError::io(&script_path, e))?;
    let (dir, name) = split_image_path(image)?;
    let mut cmd = DEBUGFS.command()?;
    cmd.current_dir(&dir)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(e2fs_device_arg(&name, offset));
    let doing = format!("fixing inode change times in {}", image.display());
    let output = DEBUGFS.run(&mut cmd, &doing)?;
    // debugfs exits 0 even when a command fails: its complaints go to stderr.
    let complaints = command_errors(&String::from_utf8_lossy(&output.stderr));
    if complaints.is_empty() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!(
            "{doing}: `debugfs` (e2fsprogs) reported:\n{complaints}"
        )))
    }
}

/// The contents of the file at `path` (absolute, inside the filesystem).
pub fn cat(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>, ImageError> {
    let output = request(image, offset, &format!("cat \"{path}\""))?;
    let complaints = command_errors(&String::from_utf8_lossy(&output.stderr));
    if complaints.is_empty() {
        Ok(output.stdout)
    } else {
        Err(ImageError::Tool(format!(
            "reading {path} in {}: {complaints}",
            image.display()
        )))
    }
}

/// `debugfs stat` of `path`: inode number, type, mode, owner, times, as debugfs prints them.
pub fn stat(image: &Path, offset: u64, path: &str) -> Result<String, ImageError> {
    let output = request(image, offset, &format!("stat \"{path}\""))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.contains("Inode:") {
        Ok(text)
    } else {
        Err(ImageError::Tool(format!(
            "stat {path} in {}: {}",
            image.display(),
            command_errors(&String::from_utf8_lossy(&output.stderr))
        )))
    }
}

fn request(image: &Path, offset: u64, request: &str) -> Result<std::process::Output, ImageError> {
    if request.matches('"').count() != 2 || request.contains('\n') {
        return Err(ImageError::Tool(format!(
            "debugfs cannot name a path containing a double quote or a newline: {request}"
        )));
    }
    let (dir, name) = split_image_path(image)?;
    let mut cmd = DEBUGFS.command()?;
    cmd.current_dir(&dir)
        .arg("-R")
        .arg(request)
        .arg(e2fs_device_arg(&name, offset));
    DEBUGFS.run(
        &mut cmd,
        &format!("debugfs {request} on {}", image.display()),
    )
}

/// debugfs' stderr without its version banner.
fn command_errors(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect::<Vec<_>>()
        .join("\n")
}
