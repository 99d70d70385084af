//! mtools (`mmd`, `mcopy`, `mtype`, `mdir`): filling and reading a FAT image file
//! without mounting it.
//!
//! Every run gets `SOURCE_DATE_EPOCH`, which mtools uses instead of the clock for the
//! times it writes (new directories, copied files without `-m`), and `TZ=UTC` (FAT
//! stores local time); together they make the filesystem bytes reproducible.

use super::Program;
use crate::ImageError;
use std::path::Path;
use std::process::Command;

const MMD: Program = Program::new("mmd", "mtools");
const MCOPY: Program = Program::new("mcopy", "mtools");
const MTYPE: Program = Program::new("mtype", "mtools");
const MDIR: Program = Program::new("mdir", "mtools");

/// A FAT image file and the time to stamp on what is written to it.
#[derive(Debug, Clone, Copy)]
pub struct FatImage<'a> {
    pub path: &'a Path,
    /// Seconds since the epoch.
    pub time: i64,
}

impl FatImage<'_> {
    fn command(&self, program: &Program) -> Result<Command, ImageError> {
        let mut cmd = program.command()?;
        cmd.env("MTOOLS_SKIP_CHECK", "1")
            .env("MTOOLSRC", "/dev/null")
            .env("SOURCE_DATE_EPOCH", self.time.to_string())
            .arg("-i")
            .arg(self.path);
        Ok(cmd)
    }

    /// Creates the directory `dir` (absolute, e.g. `/EFI/BOOT`) and its missing parents.
    pub fn mkdir_all(&self, dir: &str, existing: &mut Vec<String>) -> Result<(), ImageError> {
        let mut current = String::new();
        for part in dir.split('/').filter(|p| !p.is_empty()) {
            current.push('/');
            current.push_str(part);
            if existing.iter().any(|d| d.eq_ignore_ascii_case(&current)) {
                continue;
            }
            let mut cmd = self.command(&MMD)?;
            cmd.arg(format!("::{current}"));
            MMD.run(
                &mut cmd,
                &format!("creating {current} in {}", self.path.display()),
            )?;
            existing.push(current.clone());
        }
        Ok(())
    }

    /// Copies the host file `src` to `dest` (absolute path in the image).
    pub fn copy_in(&self, src: &Path, dest: &str) -> Result<(), ImageError> {
        let mut cmd = self.command(&MCOPY)?;
        cmd.arg("-o").arg(src).arg(format!("::{dest}"));
        MCOPY.run(
            &mut cmd,
            &format!(
                "copying {} to {dest} in {}",
                src.display(),
                self.path.display()
            ),
        )?;
        Ok(())
    }

    /// The contents of the file `path` in the image.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let mut cmd = self.command(&MTYPE)?;
        cmd.arg(format!("::{path}"));
        let output = MTYPE.run(
            &mut cmd,
            &format!("reading {path} in {}", self.path.display()),
        )?;
        Ok(output.stdout)
    }

    /// Every path in the image (files and directories), as `mdir -/ -b` lists them.
    pub fn list(&self) -> Result<Vec<String>, ImageError> {
        let mut cmd = self.command(&MDIR)?;
        cmd.args(["-/", "-b", "::/"]);
        let output = MDIR.run(&mut cmd, &format!("listing {}", self.path.display()))?;
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim_start_matches("::").to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}
