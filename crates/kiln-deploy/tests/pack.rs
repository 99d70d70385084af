//! `pack` and `unpack` on real files: sparse data, zero blocks, holes, ext4 free blocks,
//! qcow2 input, resuming, and bad input refused before anything is written.

use kiln_deploy::{pack, unpack};
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::process::Command;

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// A 64 MiB sparse disk: random blocks, text blocks, explicit zero blocks and holes.
fn make_disk(path: &Path) -> Vec<u8> {
    let f = File::create(path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut rng = fastrand::Rng::with_seed(7);
    for i in 0..400u64 {
        let offset = rng.u64(0..(64 << 20) / 4096) * 4096;
        let len = rng.usize(1..40) * 4096;
        let len = len.min((64 << 20) - offset as usize);
        let data: Vec<u8> = match i % 3 {
            0 => (0..len).map(|_| rng.u8(..)).collect(),
            1 => b"kiln deploy ".iter().copied().cycle().take(len).collect(),
            _ => vec![0; len],
        };
        f.write_all_at(&data, offset).unwrap();
    }
    f.write_all_at(b"end", (64 << 20) - 3).unwrap();
    fs::read(path).unwrap()
}

fn no_progress(_: u64, _: u64) {}

#[test]
fn pack_then_unpack_gives_the_same_bytes_sparse() {
    let tmp = scratch();
    let raw = tmp.path().join("disk.raw");
    let bytes = make_disk(&raw);
    let kzi = tmp.path().join("disk.kzi");
    let opts = pack::PackOptions {
        chunk_size: 256 << 10,
        ..Default::default()
    };
    let report = pack::pack(&raw, &kzi, &opts, &no_progress).unwrap();
    let nonzero = bytes
        .chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count() as u64;
    // Exactly the non-zero blocks (the last one is partial: 3 bytes + its zeros).
    assert_eq!(report.data_bytes, nonzero * 4096);
    assert!(report.chunks > 1);
    assert_eq!(report.disk_size, 64 << 20);
    assert_eq!(fs::metadata(&kzi).unwrap().len(), report.file_bytes);

    let out = tmp.path().join("out.raw");
    let u = unpack::unpack(&kzi, &out, false, &no_progress).unwrap();
    assert_eq!(u.chunks, report.chunks);
    assert_eq!(u.chunks_present, 0);
    assert!(fs::read(&out).unwrap() == bytes, "unpacked bytes differ");
    let allocated = fs::metadata(&out).unwrap().blocks() * 512;
    assert!(
        allocated <= report.data_bytes + (1 << 20),
        "target not sparse: {allocated} bytes allocated for {} of data",
        report.data_bytes
    );

    // Resume: damage one chunk's range and leave junk in a hole; unpack again rewrites
    // only that chunk and clears the junk.
    let meta = unpack::Kzi::open(&kzi).unwrap().meta;
    let f = fs::OpenOptions::new().write(true).open(&out).unwrap();
    let victim = &meta.index[1].ranges[0];
    f.write_all_at(b"XXXX", victim.offset).unwrap();
    let hole = (0..bytes.len() as u64 / 4096)
        .map(|b| b * 4096)
        .find(|&o| bytes[o as usize..][..4096].iter().all(|&x| x == 0))
        .unwrap();
    f.write_all_at(b"junk", hole).unwrap();
    drop(f);
    let again = unpack::unpack(&kzi, &out, false, &no_progress).unwrap();
    assert_eq!(again.chunks_present, report.chunks - 1);
    assert!(fs::read(&out).unwrap() == bytes, "resumed unpack differs");
}

#[test]
fn bad_images_and_targets_are_refused_before_writing() {
    let tmp = scratch();
    let raw = tmp.path().join("disk.raw");
    make_disk(&raw);
    let kzi = tmp.path().join("disk.kzi");
    pack::pack(&raw, &kzi, &Default::default(), &no_progress).unwrap();
    let out = tmp.path().join("never.raw");

    let truncated = tmp.path().join("cut.kzi");
    let all = fs::read(&kzi).unwrap();
    fs::write(&truncated, &all[..all.len() - 100]).unwrap();
    let err = unpack::unpack(&truncated, &out, false, &no_progress).unwrap_err();
    assert!(format!("{err:#}").contains("truncated"), "{err:#}");
    assert!(!out.exists());

    let foreign = tmp.path().join("foreign.kzi");
    fs::write(
        &foreign,
        b"\x7fELF and then some more bytes than a header holds",
    )
    .unwrap();
    let err = unpack::unpack(&foreign, &out, false, &no_progress).unwrap_err();
    assert!(format!("{err:#}").contains("not a kiln image"), "{err:#}");
    assert!(!out.exists());

    // A record damaged in the file: unpack stops at it, having written nothing of it.
    let meta = unpack::Kzi::open(&kzi).unwrap().meta;
    let damaged = tmp.path().join("damaged.kzi");
    let mut bytes = all.clone();
    let e = &meta.index[0];
    let at = (e.offset + e.record_len as u64 - 10) as usize;
    bytes[at] ^= 0xff;
    fs::write(&damaged, &bytes).unwrap();
    let err = unpack::unpack(&damaged, &out, false, &no_progress).unwrap_err();
    assert!(format!("{err:#}").contains("chunk 0"), "{err:#}");
    let written = fs::read(&out).unwrap();
    assert!(
        written.iter().all(|&b| b == 0),
        "a failing chunk was written"
    );
    fs::remove_file(&out).unwrap();

    // A directory is no target.
    let err = unpack::unpack(&kzi, tmp.path(), false, &no_progress).unwrap_err();
    assert!(
        format!("{err:#}").contains("neither a block device"),
        "{err:#}"
    );
}

/// Runs `cmd` and panics with its output when it fails.
fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn ext4_free_blocks_are_left_out_and_qcow2_is_read() {
    let tmp = scratch();
    let raw = tmp.path().join("fs.raw");
    File::create(&raw).unwrap().set_len(64 << 20).unwrap();
    run(Command::new("mke2fs")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-E",
            "lazy_itable_init=0",
        ])
        .arg(&raw));
    // Write 8 MiB of random data as a file, then delete it: its blocks stay dirty but free.
    let junk = tmp.path().join("junk");
    let mut rng = fastrand::Rng::with_seed(1);
    fs::write(&junk, (0..8 << 20).map(|_| rng.u8(..)).collect::<Vec<u8>>()).unwrap();
    let keep = tmp.path().join("keep");
    fs::write(&keep, b"kept file\n".repeat(1000)).unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg(&raw)
        .args(["-R", &format!("write {} junk", junk.display())]));
    run(Command::new("debugfs")
        .arg("-w")
        .arg(&raw)
        .args(["-R", &format!("write {} keep", keep.display())]));
    run(Command::new("debugfs")
        .arg("-w")
        .arg(&raw)
        .args(["-R", "rm junk"]));

    let with = tmp.path().join("with.kzi");
    let without = tmp.path().join("without.kzi");
    let skip = pack::pack(&raw, &with, &Default::default(), &no_progress).unwrap();
    let all = pack::PackOptions {
        skip_fs_free: false,
        ..Default::default()
    };
    let full = pack::pack(&raw, &without, &all, &no_progress).unwrap();
    assert!(skip.fs_free_bytes >= 8 << 20, "{skip:?}");
    assert!(
        full.data_bytes >= skip.data_bytes + (8 << 20),
        "deleted data still packed: {skip:?} vs {full:?}"
    );
    // The filesystem restored from the smaller image is intact and holds the kept file.
    let out = tmp.path().join("out.raw");
    unpack::unpack(&with, &out, false, &no_progress).unwrap();
    run(Command::new("e2fsck").args(["-fn"]).arg(&out));
    let dumped = tmp.path().join("dumped");
    run(Command::new("debugfs")
        .arg(&out)
        .args(["-R", &format!("dump keep {}", dumped.display())]));
    assert_eq!(fs::read(&dumped).unwrap(), fs::read(&keep).unwrap());

    // The same disk as qcow2 packs to the same data.
    let qcow2 = tmp.path().join("fs.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    let from_qcow2 = tmp.path().join("q.kzi");
    let q = pack::pack(&qcow2, &from_qcow2, &Default::default(), &no_progress).unwrap();
    assert_eq!(q.data_bytes, skip.data_bytes);
    assert_eq!(q.disk_size, 64 << 20);
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.starts_with(".kzi")), "{names:?}");
}
