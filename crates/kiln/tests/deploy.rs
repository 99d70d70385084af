//! `kiln deploy` end to end on a network the test builds: a server namespace with a
//! bridge, eight receiver namespaces on veth pairs, `tc netem` for loss. Needs root and
//! iproute2; everything is removed afterwards.
//!
//! One 1 GiB image (70 % holes, some explicit zero blocks) serves every scenario:
//! N = 1, 2, 4, 8 receivers; 5 % loss; a corrupted chunk; a receiver killed at 50 % and
//! restarted beside a late joiner. Then bad input, refused before anything is written.

mod common;

use common::deploy_http_server;
use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::KILN;
const MIB: u64 = 1 << 20;
const DISK: u64 = 1 << 30;
const GROUP: &str = "239.192.7.1:7100";
const RECEIVERS: usize = 8;

/// The server namespace (bridge `br0`, 10.99.0.1) and receiver namespaces (`eth0`,
/// 10.99.0.(i+2)), removed on drop.
struct Net {
    prefix: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Net {
    fn new() -> Net {
        let net = Net {
            prefix: format!("kzt{}", std::process::id() % 100_000),
        };
        net.remove();
        let s = net.server();
        ip(&["netns", "add", &s]);
        ip(&["-n", &s, "link", "set", "lo", "up"]);
        // No IGMP snooping: a plain switch that floods multicast.
        ip(&[
            "-n",
            &s,
            "link",
            "add",
            "br0",
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ]);
        ip(&["-n", &s, "addr", "add", "10.99.0.1/24", "dev", "br0"]);
        ip(&["-n", &s, "link", "set", "br0", "up"]);
        ip(&["-n", &s, "route", "add", "224.0.0.0/4", "dev", "br0"]);
        for i in 0..RECEIVERS {
            let r = net.receiver(i);
            let port = format!("p{i}");
            ip(&["netns", "add", &r]);
            ip(&["-n", &r, "link", "set", "lo", "up"]);
            ip(&[
                "link", "add", &port, "netns", &s, "type", "veth", "peer", "name", "eth0", "netns",
                &r,
            ]);
            ip(&["-n", &s, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("10.99.0.{}/24", i + 2);
            ip(&["-n", &r, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &r, "link", "set", "eth0", "up"]);
            ip(&["-n", &r, "route", "add", "224.0.0.0/4", "dev", "eth0"]);
        }
        net
    }

    fn server(&self) -> String {
        format!("{}s", self.prefix)
    }

    fn receiver(&self, i: usize) -> String {
        format!("{}r{i}", self.prefix)
    }

    /// `loss` percent on every receiver link, both ways (0 removes it): `tc netem`, or
    /// where the kernel lacks `sch_netem` (this project's host has none), iptables'
    /// `statistic` match dropping the same share of what each end receives.
    fn set_loss(&self, loss: u32) {
        let mut ends: Vec<(String, String)> = vec![];
        for i in 0..RECEIVERS {
            ends.push((self.server(), format!("p{i}")));
            ends.push((self.receiver(i), "eth0".into()));
        }
        let netem = |ns: &str, dev: &str| {
            let pct = format!("{loss}%");
            let mut args = vec!["-n", ns, "qdisc"];
            if loss == 0 {
                args.extend(["del", "dev", dev, "root"]);
            } else {
                args.extend(["replace", "dev", dev, "root", "netem", "loss", &pct]);
            }
            Command::new("tc").args(&args).output().expect("run tc")
        };
        let first = netem(&ends[0].0, &ends[0].1);
        let netem_missing = String::from_utf8_lossy(&first.stderr).contains("unknown");
        if !netem_missing && loss > 0 {
            assert!(
                first.status.success(),
                "tc: {}",
                String::from_utf8_lossy(&first.stderr)
            );
            for (ns, dev) in &ends[1..] {
                let out = netem(ns, dev);
                assert!(
                    out.status.success(),
                    "tc: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            return;
        }
        if !netem_missing {
            for (ns, dev) in &ends[1..] {
                netem(ns, dev);
            }
            return;
        }
        let mut namespaces = vec![self.server()];
        namespaces.extend((0..RECEIVERS).map(|i| self.receiver(i)));
        for ns in namespaces {
            let mut args = vec!["netns", "exec", &ns, "iptables"];
            let p = format!("{:.2}", loss as f64 / 100.0);
            if loss == 0 {
                args.extend(["-F", "INPUT"]);
            } else {
                args.extend(["-A", "INPUT", "-m", "statistic", "--mode", "random"]);
                args.extend(["--probability", &p, "-j", "DROP"]);
            }
            let out = Command::new("ip")
                .args(&args)
                .output()
                .expect("run iptables");
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn remove(&self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.server()])
            .output();
        for i in 0..RECEIVERS {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.receiver(i)])
                .output();
        }
    }

    fn kiln(&self, ns: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, KILN]).args(args);
        cmd
    }

    /// `kiln deploy serve` at 400 Mbit/s with a 2 s idle timeout, unless `extra` says
    /// otherwise.
    fn serve(&self, kzi: &Path, extra: &[&str]) -> Child {
        let kzi = kzi.to_str().unwrap();
        let mut args = vec![
            "deploy", "serve", kzi, "--group", GROUP, "--iface", "br0", "--json",
        ];
        for (flag, default) in [("--rate", "400M"), ("--idle-timeout", "2")] {
            if !extra.contains(&flag) {
                args.extend([flag, default]);
            }
        }
        args.extend(extra);
        self.kiln(&self.server(), &args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap()
    }

    fn load(&self, i: usize, target: &Path) -> Child {
        self.kiln(
            &self.receiver(i),
            &[
                "deploy",
                "load",
                "--group",
                GROUP,
                "--iface",
                "eth0",
                "--timeout",
                "30",
                "--json",
                "--target",
                target.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.remove();
    }
}

fn json(out: &Output, what: &str) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn sha256(path: &Path) -> String {
    // openssl uses the CPU's SHA instructions: several times sha256sum's speed.
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split(' ')
        .next()
        .unwrap()
        .to_string()
}

/// The test disk: 1 GiB, data in 30 % of its MiBs (every fifth block of those an
/// explicit zero block), the rest holes. Each data block is stamped with its offset,
/// then 1 KiB from a random pool and 3 KiB of text: about 4× compressible, like a
/// root filesystem. Returns the bytes of non-zero data.
fn make_disk(path: &Path) -> u64 {
    use std::io::Read;
    let mut pool = vec![0u8; 8 << 20];
    File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut pool)
        .unwrap();
    let text: Vec<u8> = b"root:x:0:0:root:/root:/bin/sh\nkiln deploy test data\n"
        .iter()
        .copied()
        .cycle()
        .take(3072)
        .collect();
    let f = File::create(path).unwrap();
    f.set_len(DISK).unwrap();
    let mut data = 0;
    let mut mib = vec![0u8; MIB as usize];
    for i in 0..DISK / MIB {
        if (i.wrapping_mul(2_654_435_761) >> 7) % 100 >= 30 {
            continue;
        }
        for (b, block) in mib.chunks_mut(4096).enumerate() {
            if b % 5 == 4 {
                block.fill(0);
                continue;
            }
            let offset = i * MIB + b as u64 * 4096;
            block[..8].copy_from_slice(&offset.to_le_bytes());
            let at = (offset as usize / 4096 * 7919) % (pool.len() - 1016);
            block[8..1024].copy_from_slice(&pool[at..at + 1016]);
            block[1024..].copy_from_slice(&text);
            data += 4096;
        }
        f.write_all_at(&mib, i * MIB).unwrap();
    }
    data
}

struct Fixture {
    dir: PathBuf,
    kzi: PathBuf,
    sha: String,
    data: u64,
    chunks: u64,
}

/// Serves once and loads onto `n` receivers; checks every target; returns the serve
/// report and each loader's report.
fn round(
    net: &Net,
    fx: &Fixture,
    n: usize,
    serve_extra: &[&str],
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let targets: Vec<PathBuf> = (0..n).map(|i| fx.dir.join(format!("t{i}.raw"))).collect();
    for t in &targets {
        let _ = fs::remove_file(t);
    }
    let start = Instant::now();
    let server = net.serve(&fx.kzi, serve_extra);
    let loaders: Vec<Child> = (0..n).map(|i| net.load(i, &targets[i])).collect();
    let reports: Vec<_> = loaders
        .into_iter()
        .enumerate()
        .map(|(i, c)| json(&c.wait_with_output().unwrap(), &format!("load {i}")))
        .collect();
    let loaded = start.elapsed();
    let serve = json(&server.wait_with_output().unwrap(), "serve");
    eprintln!(
        "N={n}{serve_extra:?}: loaded in {:.1} s; server {serve}",
        loaded.as_secs_f64()
    );
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(sha256(t), fx.sha, "target {i} of {n} differs");
        let allocated = fs::metadata(t).unwrap().blocks() * 512;
        assert!(
            allocated <= fx.data + 16 * MIB,
            "target {i} is not sparse: {allocated} bytes for {} of data",
            fx.data
        );
        assert_eq!(reports[i]["chunks_written"], fx.chunks, "{}", reports[i]);
        fs::remove_file(t).unwrap();
    }
    (serve, reports)
}

#[test]
fn multicast_loading_on_a_real_network() {
    // In RAM: eight sparse targets of ~250 MiB each would otherwise load the host's
    // shared disk (and its other users) for nothing; tmpfs keeps holes as ext4 does.
    let scratch = tempfile::tempdir_in("/dev/shm").unwrap();
    let dir = scratch.path().to_path_buf();
    let raw = dir.join("disk.raw");
    let data = make_disk(&raw);
    assert!(data <= DISK * 60 / 100, "at least 40 % holes");
    let kzi = dir.join("disk.kzi");
    let out = Command::new(KILN)
        .args(["deploy", "pack", "--json", "-o"])
        .arg(&kzi)
        .arg(&raw)
        .output()
        .unwrap();
    let packed = json(&out, "pack");
    assert_eq!(packed["data_bytes"], data, "{packed}");
    let fx = Fixture {
        sha: sha256(&raw),
        kzi,
        data,
        chunks: packed["chunks"].as_u64().unwrap(),
        dir,
    };
    fs::remove_file(&raw).unwrap();
    let net = Net::new();

    // 1. N = 1, 2, 4, 8: every target byte-identical and sparse; each chunk sent once
    // for everyone: with repairs of what receivers starved of CPU on a shared host drop,
    // well under twice the image whatever N (one copy per receiver would be N times).
    let records = fs::metadata(&fx.kzi).unwrap().len();
    for n in [1, 2, 4, 8] {
        let (serve, _) = round(&net, &fx, n, &[]);
        let sent = serve["data_bytes"].as_u64().unwrap();
        assert!(sent < records * 2, "{serve}");
    }

    // 4. A chunk corrupted in transit is detected, dropped and asked for again.
    let (_, reports) = round(&net, &fx, 2, &["--test-corrupt-chunk", "5"]);
    for r in &reports {
        assert_eq!(r["corrupt_chunks"], 1, "{r}");
    }

    // 2. 5 % loss on every receiver link.
    net.set_loss(5);
    let (_, reports) = round(&net, &fx, RECEIVERS, &[]);
    net.set_loss(0);
    assert!(reports
        .iter()
        .all(|r| r["repairs_requested"].as_u64() > Some(0)));

    // 3. A receiver killed at 50 % and restarted finishes without receiving again what
    // it had; a receiver joining late finishes too.
    resume_and_late_join(&net, &fx);

    // `kiln deploy nodes.toml`: one server, a loader per node through its `run` prefix.
    nodes_file(&net, &fx);
}

fn nodes_file(net: &Net, fx: &Fixture) {
    let mut toml = format!(
        "image = {:?}\ngroup = \"{GROUP}\"\niface = \"br0\"\nrate = \"400M\"\ntimeout = 20\n",
        fx.kzi.to_str().unwrap()
    );
    let targets: Vec<PathBuf> = (0..2)
        .map(|i| fx.dir.join(format!("node{i}.raw")))
        .collect();
    for (i, t) in targets.iter().enumerate() {
        toml += &format!(
            "\n[[node]]\nname = \"n{i}\"\nrun = [\"ip\", \"netns\", \"exec\", \"{}\"]\n\
             iface = \"eth0\"\ntarget = {:?}\nkiln = {KILN:?}\n",
            net.receiver(i),
            t.to_str().unwrap()
        );
    }
    let file = fx.dir.join("nodes.toml");
    fs::write(&file, toml).unwrap();
    let out = net
        .kiln(&net.server(), &["deploy", "--json", file.to_str().unwrap()])
        .output()
        .unwrap();
    let report = json(&out, "deploy nodes.toml");
    for (i, t) in targets.iter().enumerate() {
        assert_eq!(report["nodes"][i]["ok"], true, "{report}");
        assert_eq!(
            report["nodes"][i]["load"]["chunks_written"], fx.chunks,
            "{report}"
        );
        assert_eq!(sha256(t), fx.sha, "node {i} differs");
        fs::remove_file(t).unwrap();
    }
}

fn resume_and_late_join(net: &Net, fx: &Fixture) {
    let target = fx.dir.join("resumed.raw");
    let late = fx.dir.join("late.raw");
    let server = net.serve(&fx.kzi, &["--rate", "100M", "--idle-timeout", "4"]);
    let mut first = net.load(0, &target);
    let stderr = first.stderr.take().unwrap();
    let mut killed_at = 0;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if let Some((done, total)) = line
            .strip_prefix("chunks: ")
            .and_then(|p| p.split_once('/'))
        {
            let (done, total): (u64, u64) = (done.parse().unwrap(), total.parse().unwrap());
            if done * 2 >= total {
                first.kill().unwrap();
                killed_at = done;
                break;
            }
        }
    }
    first.wait().unwrap();
    assert!(killed_at > 0, "the loader never reported progress");
    let joiner = net.load(1, &late);
    std::thread::sleep(Duration::from_millis(300));
    let again = net.load(0, &target);
    let resumed = json(&again.wait_with_output().unwrap(), "resumed load");
    let joined = json(&joiner.wait_with_output().unwrap(), "late joiner");
    json(&server.wait_with_output().unwrap(), "serve");
    eprintln!("killed at {killed_at}/{}; resumed {resumed}", fx.chunks);
    let present = resumed["chunks_present"].as_u64().unwrap();
    // What was written before the kill is found on the disk, bar the chunks in flight.
    assert!(
        present + 2 >= killed_at,
        "{present} present, killed at {killed_at}"
    );
    assert_eq!(
        resumed["chunks_written"].as_u64().unwrap(),
        fx.chunks - present
    );
    // It asked only for what it lacked (whole-chunk requests include timeouts' repeats).
    let asked = resumed["chunks_requested"].as_u64().unwrap();
    assert!(asked <= fx.chunks - present + fx.chunks / 10, "{resumed}");
    assert_eq!(joined["chunks_written"], fx.chunks);
    for t in [&target, &late] {
        assert_eq!(sha256(t), fx.sha, "{} differs", t.display());
        fs::remove_file(t).unwrap();
    }
}

/// The unicast fallback: `serve --http` and `load --http` on loopback, then a resumed
/// load that fetches only the damaged chunk.
#[test]
fn http_range_fallback_loads_and_resumes() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = scratch.path();
    let raw = dir.join("disk.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(64 * MIB).unwrap();
    for i in 0..40u64 {
        let block: Vec<u8> = (0..256 * 1024)
            .map(|b| (b as u64 * 31 + i * 7) as u8)
            .collect();
        f.write_all_at(&block, i * 1536 * 1024).unwrap();
    }
    drop(f);
    let kzi = dir.join("disk.kzi");
    let packed = Command::new(KILN)
        .args(["deploy", "pack", "--json", "--chunk-size", "256K", "-o"])
        .arg(&kzi)
        .arg(&raw)
        .output()
        .unwrap();
    let chunks = json(&packed, "pack")["chunks"].as_u64().unwrap();
    let (mut server, addr) = deploy_http_server(&kzi, 5);
    let url = format!("http://{addr}/disk.kzi");
    let target = dir.join("out.raw");
    let load = |what: &str| {
        let out = Command::new(KILN)
            .args([
                "deploy",
                "load",
                "--json",
                "--readback",
                "--http",
                &url,
                "--target",
            ])
            .arg(&target)
            .output()
            .unwrap();
        json(&out, what)
    };
    let first = load("http load");
    assert_eq!(first["chunks_written"], chunks);
    assert_eq!(fs::read(&target).unwrap(), fs::read(&raw).unwrap());
    let f = fs::OpenOptions::new().write(true).open(&target).unwrap();
    f.write_all_at(b"damage", 1536 * 1024 * 3).unwrap();
    drop(f);
    let second = load("resumed http load");
    assert_eq!(second["chunks_written"], 1, "{second}");
    assert_eq!(second["chunks_present"], chunks - 1, "{second}");
    assert_eq!(fs::read(&target).unwrap(), fs::read(&raw).unwrap());

    // A real block device (a loop device over a file of 0xAB, larger than the image):
    // only the image's ranges are written; `unpack --zero-rest` zeroes the rest of it.
    let backing = dir.join("device");
    fs::write(&backing, vec![0xAB; 80 * MIB as usize]).unwrap();
    let dev = Loop::attach(&backing);
    let out = Command::new(KILN)
        .args([
            "deploy", "load", "--json", "--http", &url, "--target", &dev.0,
        ])
        .output()
        .unwrap();
    let onto_device = json(&out, "http load onto a block device");
    assert_eq!(onto_device["chunks_written"], chunks, "{onto_device}");
    let image = fs::read(&raw).unwrap();
    let device = || fs::read(&backing).unwrap();
    let written = device();
    for i in 0..40usize {
        let at = i * 1536 * 1024;
        assert_eq!(
            written[at..at + 256 * 1024],
            image[at..at + 256 * 1024],
            "block {i}"
        );
    }
    assert!(
        written[MIB as usize..][..4096].iter().all(|&b| b == 0xAB),
        "a hole was written"
    );
    assert!(written[64 * MIB as usize..].iter().all(|&b| b == 0xAB));
    let out = Command::new(KILN)
        .args(["deploy", "unpack", "--zero-rest"])
        .arg(&kzi)
        .arg(&dev.0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let zeroed = device();
    assert!(
        zeroed[..64 * MIB as usize] == image[..],
        "--zero-rest left other bytes"
    );
    assert!(
        zeroed[64 * MIB as usize..].iter().all(|&b| b == 0xAB),
        "past the image"
    );
    drop(dev);
    server.kill().unwrap();
    server.wait().unwrap();
}

/// Bad input is refused with a clear error before anything is written.
#[test]
fn bad_input_is_refused_before_writing() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let dir = scratch.path();
    let raw = dir.join("small.raw");
    let f = File::create(&raw).unwrap();
    f.set_len(64 * MIB).unwrap();
    f.write_all_at(&[0xAB; 1 << 20], 8 * MIB).unwrap();
    drop(f);
    let kzi = dir.join("small.kzi");
    let out = Command::new(KILN)
        .args(["deploy", "pack", "-o"])
        .arg(&kzi)
        .arg(&raw)
        .output()
        .unwrap();
    assert!(out.status.success());
    let fails = |args: &[&str], expect: &str| {
        let out = Command::new(KILN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{args:?}: {err}"
        );
    };
    let never = dir.join("never.raw");
    let never_s = never.to_str().unwrap();
    fails(
        &[
            "deploy",
            "load",
            "--group",
            "10.1.2.3:7000",
            "--target",
            never_s,
        ],
        "not a multicast address",
    );
    let truncated = dir.join("cut.kzi");
    let bytes = fs::read(&kzi).unwrap();
    fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails(
        &["deploy", "unpack", truncated.to_str().unwrap(), never_s],
        "truncated",
    );
    fails(
        &["deploy", "serve", truncated.to_str().unwrap()],
        "truncated",
    );
    let foreign = dir.join("foreign.kzi");
    fs::write(&foreign, vec![b'x'; 4096]).unwrap();
    fails(
        &["deploy", "unpack", foreign.to_str().unwrap(), never_s],
        "not a kiln image",
    );
    assert!(!never.exists());

    // A loop device smaller than the image, and one with a mounted filesystem.
    let small = dir.join("loop-small");
    File::create(&small).unwrap().set_len(16 * MIB).unwrap();
    let dev = Loop::attach(&small);
    fails(
        &["deploy", "unpack", kzi.to_str().unwrap(), &dev.0],
        "too small",
    );
    let big = dir.join("loop-big");
    File::create(&big).unwrap().set_len(80 * MIB).unwrap();
    let out = Command::new("mke2fs")
        .args(["-q", "-F"])
        .arg(&big)
        .output()
        .unwrap();
    assert!(out.status.success());
    let dev = Loop::attach(&big);
    let script = format!(
        "mkdir -p {m} && mount {d} {m} && {k} deploy unpack {i} {d}; rc=$?; umount {m}; exit $rc",
        m = dir.join("mnt").display(),
        d = dev.0,
        k = KILN,
        i = kzi.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("mounted"), "{err}");
    drop(dev);
    // Nothing of the image reached the device.
    let after = fs::read(&big).unwrap();
    assert!(!after[8 << 20..9 << 20].iter().all(|&b| b == 0xAB));
}

/// A loop device, detached on drop.
struct Loop(String);

impl Loop {
    fn attach(file: &Path) -> Loop {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).output();
    }
}
