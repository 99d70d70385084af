//! `debugfs` (e2fsprogs): reading and editing an ext4 filesystem inside an image file.
//!
//! kiln uses it after `mke2fs -d` to set what no system call can set on the source tree
//! (inode change times), to clamp times, and to make the few file edits an image needs
//! (its `/etc/fstab`, an empty machine id) without copying the tree first.

use super::{e2fs_device_arg, split_image_path, Program};
use crate::ImageError;
use std::path::Path;
use std::process::Output;

pub(crate) const DEBUGFS: Program = Program::new("debugfs", "e2fsprogs");

/// `path` as one debugfs command argument: in double quotes, a quote doubled. A newline
/// cannot be expressed (commands are lines).
pub fn quote(path: &[u8]) -> Result<Vec<u8>, ImageError> {
    if path.contains(&b'\n') {
        return Err(ImageError::Tool(format!(
            "`{}`: debugfs cannot name a path containing a newline; rename it in the spec",
            String::from_utf8_lossy(path).escape_debug()
        )));
    }
    let mut out = Vec::with_capacity(path.len() + 2);
    out.push(b'"');
    for &b in path {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
    Ok(out)
}

/// Runs the debugfs commands in `script` (one per line) read-write on the filesystem at
/// `offset` in `image`. The script is written to `work_dir`. debugfs goes on after a
/// failed command, so any complaint on its stderr makes this an error.
pub fn run_script(
    image: &Path,
    offset: u64,
    script: &[u8],
    work_dir: &Path,
) -> Result<(), ImageError> {
    let script_path = work_dir.join("kiln-debugfs-script.txt");
    std::fs::write(&script_path, script).map_err(|e| ImageError::io(&script_path, e))?;
    let (dir, name) = split_image_path(image)?;
    let mut cmd = DEBUGFS.command()?;
    cmd.current_dir(&dir)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(e2fs_device_arg(&name, offset));
    let doing = format!(
        "editing the filesystem at offset {offset} of {}",
        image.display()
    );
    let output = DEBUGFS.run(&mut cmd, &doing)?;
    let complaints = command_errors(&output);
    if complaints.is_empty() {
        Ok(())
    } else {
        Err(ImageError::Tool(format!(
            "{doing}: `debugfs` (e2fsprogs) reported:\n{complaints}"
        )))
    }
}

/// The physical block numbers of the file at `path`'s data.
pub fn blocks(image: &Path, offset: u64, path: &[u8]) -> Result<Vec<u64>, ImageError> {
    let mut req = b"blocks ".to_vec();
    req.extend(quote(path)?);
    let output = request(image, offset, &req)?;
    let complaints = command_errors(&output);
    if !complaints.is_empty() {
        return Err(ImageError::Tool(format!(
            "listing the blocks of {} in {}: {complaints}",
            String::from_utf8_lossy(path),
            image.display()
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .map(|n| {
            n.parse().map_err(|_| {
                ImageError::Tool(format!(
                    "debugfs `blocks` printed `{n}`, not a block number"
                ))
            })
        })
        .collect()
}

/// The contents of the file at `path` (absolute, inside the filesystem).
pub fn cat(image: &Path, offset: u64, path: &str) -> Result<Vec<u8>, ImageError> {
    let mut req = b"cat ".to_vec();
    req.extend(quote(path.as_bytes())?);
    let output = request(image, offset, &req)?;
    let complaints = command_errors(&output);
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
    let mut req = b"stat ".to_vec();
    req.extend(quote(path.as_bytes())?);
    let output = request(image, offset, &req)?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    if text.contains("Inode:") {
        Ok(text)
    } else {
        Err(ImageError::Tool(format!(
            "stat {path} in {}: {}",
            image.display(),
            command_errors(&output)
        )))
    }
}

/// Runs one read-only request (`debugfs -R`).
fn request(image: &Path, offset: u64, request: &[u8]) -> Result<Output, ImageError> {
    use std::os::unix::ffi::OsStrExt;
    let (dir, name) = split_image_path(image)?;
    let mut cmd = DEBUGFS.command()?;
    cmd.current_dir(&dir)
        .arg("-R")
        .arg(std::ffi::OsStr::from_bytes(request))
        .arg(e2fs_device_arg(&name, offset));
    let doing = format!(
        "debugfs {} on {}",
        String::from_utf8_lossy(request),
        image.display()
    );
    DEBUGFS.run(&mut cmd, &doing)
}

/// debugfs' stderr without its version banner.
fn command_errors(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_refuses_newlines() {
        assert_eq!(quote(b"/a b").unwrap(), b"\"/a b\"");
        assert_eq!(quote(b"/a\"b").unwrap(), b"\"/a\"\"b\"");
        assert!(quote(b"/a\nb").is_err());
    }
}
