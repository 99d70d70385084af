//! `kiln cpio ls|unpack|pack|merge`: newc archives through `kiln_image::cpio`.

use crate::cli::{CompressArg, CompressionArg, CpioCommand};
use anyhow::Context;
use kiln_image::cpio::{self, Compression, Entry, Kind};
use std::path::Path;
use std::process::ExitCode;

pub fn cpio(cmd: CpioCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CpioCommand::Ls(args) => {
            for e in read(&args.archive)? {
                println!("{}", if args.json { json(&e) } else { line(&e) });
            }
        }
        CpioCommand::Unpack(args) => {
            let entries = read(&args.archive)?;
            let done = cpio::unpack(&entries, &args.dir)
                .with_context(|| format!("unpacking {}", args.archive.display()))?;
            eprintln!(
                "kiln: unpacked {} entries ({} bytes of files) into {}",
                done.entries,
                done.bytes,
                args.dir.display()
            );
        }
        CpioCommand::Pack(args) => {
            if !args.dir.is_dir() {
                anyhow::bail!("{}: not a directory", args.dir.display());
            }
            let mtime = match args.mtime {
                Some(t) => t,
                None => source_date_epoch()?,
            };
            let entries = cpio::pack(&args.dir, mtime)?;
            write(&entries, &args.output, &args.compress)?;
        }
        CpioCommand::Merge(args) => {
            let archives = args
                .archives
                .iter()
                .map(|a| read(a))
                .collect::<anyhow::Result<Vec<_>>>()?;
            write(&cpio::merge(archives), &args.output, &args.compress)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn read(path: &Path) -> anyhow::Result<Vec<Entry>> {
    let input = cpio::open_archive(path).with_context(|| format!("opening {}", path.display()))?;
    cpio::read_all(input).with_context(|| format!("reading {}", path.display()))
}

fn write(entries: &[Entry], out: &Path, arg: &CompressArg) -> anyhow::Result<()> {
    let compression = match arg.compress {
        None => Compression::from_path(out),
        Some(CompressionArg::None) => Compression::None,
        Some(CompressionArg::Gzip) => Compression::Gzip,
        Some(CompressionArg::Zstd) => Compression::Zstd,
    };
    let bytes = cpio::write_file(entries, out, compression)?;
    eprintln!(
        "kiln: wrote {} ({} entries, {bytes} bytes)",
        out.display(),
        entries.len()
    );
    Ok(())
}

fn source_date_epoch() -> anyhow::Result<i64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v}: expected seconds since 1970")),
        Err(_) => Ok(0),
    }
}

fn size(e: &Entry) -> usize {
    e.kind.data().len()
}

fn line(e: &Entry) -> String {
    let target = match &e.kind {
        Kind::Symlink(t) => format!(" -> {t}"),
        _ => String::new(),
    };
    format!(
        "{} {:>5}/{:<5} {:>10} {:>10} {}{target}",
        e.mode_text(),
        e.uid,
        e.gid,
        size(e),
        e.mtime,
        e.path
    )
}

fn json(e: &Entry) -> String {
    let (kind, target) = match &e.kind {
        Kind::Dir => ("dir", None),
        Kind::File(_) => ("file", None),
        Kind::Symlink(t) => ("symlink", Some(t.as_str())),
        Kind::CharDevice(..) => ("char", None),
        Kind::BlockDevice(..) => ("block", None),
        Kind::Fifo => ("fifo", None),
    };
    serde_json::json!({
        "path": e.path, "kind": kind, "mode": format!("{:04o}", e.perm),
        "uid": e.uid, "gid": e.gid, "size": size(e), "mtime": e.mtime, "target": target,
    })
    .to_string()
}
