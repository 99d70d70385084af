//! The QEMU sandbox for real: a busybox base made with `make_base` from Debian's kernel,
//! steps on qcow2 overlays, booted under TCG with kiln-init as the agent.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_init::agent_proto::{ExitStatus, RunRequest};
use kiln_sandbox::{
    BindMount, BootFiles, CopyEntry, CopyKind, Outcome, RootFs, RunSpec, Sandbox, SandboxError,
    Secret,
};
use kiln_vm::{Accel, AgentVm, Boot, QemuSandbox, VmConfig};
use sha2::{Digest, Sha256};

fn sandbox() -> QemuSandbox {
    QemuSandbox {
        accel: Some(Accel::Tcg),
        ..QemuSandbox::default()
    }
}

/// The VM base, made once per test process: `base/disk.qcow2` and `base/boot/`.
fn base() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-vm-sandbox");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tree")).unwrap();
        support::busybox_tree(&dir.join("tree"));
        let base = dir.join("base");
        std::fs::create_dir(&base).unwrap();
        let mut log = Vec::new();
        sandbox()
            .make_base(&dir.join("tree"), support::kernel_tree(), &base, &mut log)
            .unwrap_or_else(|e| panic!("make_base: {e}"));
        let log = String::from_utf8_lossy(&log);
        assert!(log.contains("VM base ready"), "{log}");
        assert!(base.join("boot").join(BootFiles::INITRD).is_file());
        base
    })
}

/// A fresh step directory `<tmp>/<name>/` whose `disk.qcow2` is an overlay on `parent`
/// (given relative to it, as the builder does).
fn step(tmp: &Path, name: &str, parent: &str) -> PathBuf {
    let dir = tmp.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.qcow2");
    sandbox()
        .make_disk(Path::new(parent), &disk, false)
        .unwrap_or_else(|e| panic!("make_disk: {e}"));
    disk
}

/// A scratch directory next to the base, so that relative backing paths reach it.
fn scratch(name: &str) -> PathBuf {
    let dir = base().parent().unwrap().join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spec(disk: &Path, script: &str) -> RunSpec {
    RunSpec {
        root: RootFs::Disk {
            disk: disk.to_path_buf(),
            boot: base().join("boot"),
        },
        argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        host_network: false,
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "kiln-step".into(),
        fast_sync: false,
        interactive: false,
        trace: None,
    }
}

fn run(spec: &RunSpec) -> (Outcome, String) {
    let mut out = Vec::new();
    let outcome = sandbox()
        .run(spec, &mut out)
        .unwrap_or_else(|e| panic!("run: {e}"));
    (outcome, String::from_utf8_lossy(&out).into_owned())
}

/// The whole chain of `disk` as a raw file.
fn raw_of(disk: &Path) -> PathBuf {
    let raw = disk.with_extension("raw");
    kiln_image::tools::qemu_img::convert_to_raw(disk, "qcow2", &raw).unwrap();
    raw
}

#[test]
fn steps_run_with_env_cwd_user_and_see_their_parents_files() {
    let tmp = scratch("chain");
    let first = step(&tmp, "one", "../../base/disk.qcow2");
    let mut s = spec(
        &first,
        "echo out; echo err >&2; echo \"$GREETING\" > /work/f; id -u; pwd; hostname; exit 3",
    );
    s.env
        .push(("GREETING".into(), "hello from step one".into()));
    s.cwd = "/work".into();
    s.uid = 1000;
    s.gid = 1000;
    let (outcome, out) = run(&s);
    assert_eq!(outcome, Outcome::Exited(3), "{out}");
    assert!(out.contains("out\n") && out.contains("err\n"), "{out}");
    assert!(out.contains("1000\n/work\nkiln-step\n"), "{out}");

    let second = step(&tmp, "two", "../one/disk.qcow2");
    let (outcome, out) = run(&spec(
        &second,
        "cat /work/f; stat -c '%u %a' /work; ls -d /proc/1 /tmp /dev/null",
    ));
    assert_eq!(outcome, Outcome::Exited(0), "{out}");
    assert!(out.starts_with("hello from step one\n1000 755\n"), "{out}");

    // The agent's mount points were created for the steps and removed again: the disks
    // hold only what the commands wrote.
    let raw = raw_of(&second);
    for path in ["/proc", "/sys", "/dev", "/tmp", "/run", "/lost+found"] {
        assert!(
            kiln_image::tools::debugfs::stat(&raw, 0, path).is_err(),
            "{path} is on the disk"
        );
    }
    let _ = std::fs::remove_file(raw);
}

#[test]
fn copy_in_is_byte_exact_for_a_large_file() {
    let tmp = scratch("copy");
    let disk = step(&tmp, "copy", "../../base/disk.qcow2");
    let big = tmp.join("big.bin");
    let mut hasher = Sha256::new();
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..200 {
            for b in block.chunks_exact_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            hasher.update(&block);
            f.write_all(&block).unwrap();
        }
    }
    let want = hex::encode(hasher.finalize());
    let root = RootFs::Disk {
        disk: disk.clone(),
        boot: base().join("boot"),
    };
    let entries = vec![
        CopyEntry {
            path: "/data/sub".into(),
            kind: CopyKind::Dir { mode: 0o750 },
        },
        CopyEntry {
            path: "/data/sub/big.bin".into(),
            kind: CopyKind::File {
                host: big.clone(),
                mode: 0o640,
                mtime: 1_000_000_000,
            },
        },
        CopyEntry {
            path: "/data/link".into(),
            kind: CopyKind::Symlink {
                target: "sub/big.bin".into(),
            },
        },
    ];
    let started = Instant::now();
    let mut log = Vec::new();
    sandbox()
        .copy_in(&root, &entries, 1000, 1000, &mut log)
        .unwrap_or_else(|e| panic!("copy_in: {e}"));
    println!(
        "copy_in of 200 MiB took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let (outcome, out) = run(&spec(
        &disk,
        "sha256sum /data/link; stat -c '%u:%g %a %Y' /data /data/sub /data/sub/big.bin",
    ));
    assert_eq!(outcome, Outcome::Exited(0), "{out}");
    assert!(
        out.starts_with(&format!("{want}  /data/link\n")),
        "{want}\n{out}"
    );
    assert!(
        out.contains("1000:1000 755 ") && out.contains("1000:1000 750 "),
        "{out}"
    );
    assert!(out.contains("1000:1000 640 1000000000\n"), "{out}");
    let _ = std::fs::remove_file(big);
}

#[test]
fn secrets_reach_the_step_but_not_the_disk_and_caches_persist() {
    let tmp = scratch("secrets");
    let cache = tmp.join("cache");
    let disk = step(&tmp, "one", "../../base/disk.qcow2");
    let secret = b"kiln-secret-5f3a9c1e-never-on-disk".to_vec();
    let mut s = spec(
        &disk,
        "cat /run/secrets/token; echo; echo cached > /var/cache/x/file; echo $? ",
    );
    s.secrets.push(Secret {
        target: "/run/secrets/token".into(),
        value: secret.clone(),
    });
    s.mounts.push(BindMount {
        source: cache.clone(),
        target: "/var/cache/x".into(),
        readonly: false,
    });
    let (outcome, out) = run(&s);
    assert_eq!(outcome, Outcome::Exited(0), "{out}");
    assert!(
        out.contains("kiln-secret-5f3a9c1e-never-on-disk\n0\n"),
        "{out}"
    );

    let raw = raw_of(&disk);
    let bytes = std::fs::read(&raw).unwrap();
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_slice()),
        "the secret is on the disk"
    );
    assert!(
        kiln_image::tools::debugfs::stat(&raw, 0, "/var").is_err(),
        "the cache's mount point was left on the disk"
    );
    drop(bytes);
    let _ = std::fs::remove_file(raw);

    let second = step(&tmp, "two", "../one/disk.qcow2");
    let mut s = spec(&second, "cat /var/cache/x/file");
    s.mounts.push(BindMount {
        source: cache,
        target: "/var/cache/x".into(),
        readonly: false,
    });
    let (outcome, out) = run(&s);
    assert_eq!(outcome, Outcome::Exited(0), "{out}");
    assert_eq!(out, "cached\n");
}

#[test]
fn only_host_network_steps_reach_the_host() {
    let tmp = scratch("net");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = String::new();
        conn.read_to_string(&mut got).unwrap();
        got
    });
    let script = format!("echo via-slirp | nc -w 10 10.0.2.2 {port}; echo rc=$?");

    let disk = step(&tmp, "closed", "../../base/disk.qcow2");
    let (_, out) = run(&spec(&disk, &script));
    assert!(
        !out.contains("rc=0"),
        "reached the host without host_network: {out}"
    );

    let disk = step(&tmp, "open", "../../base/disk.qcow2");
    let mut s = spec(&disk, &script);
    s.host_network = true;
    let (_, out) = run(&s);
    assert!(out.contains("rc=0"), "{out}");
    assert_eq!(server.join().unwrap(), "via-slirp\n");
}

#[test]
fn a_guest_that_cannot_boot_is_a_quick_error_with_console_lines() {
    let tmp = scratch("broken");
    let boot = tmp.join("boot");
    std::fs::create_dir(&boot).unwrap();
    for f in [BootFiles::VMLINUX, BootFiles::VMLINUZ, BootFiles::INITRD] {
        let src = base().join("boot").join(f);
        if src.exists() {
            std::fs::copy(src, boot.join(f)).unwrap();
        }
    }
    std::fs::write(
        boot.join(BootFiles::CMDLINE),
        "root=/dev/vdz rw console=ttyS0 kiln.rootwait=1",
    )
    .unwrap();
    let disk = step(&tmp, "step", "../../base/disk.qcow2");
    let mut s = spec(&disk, "true");
    s.root = RootFs::Disk { disk, boot };
    let sb = QemuSandbox {
        ready_timeout: Duration::from_secs(60),
        ..sandbox()
    };
    let started = Instant::now();
    let err = sb.run(&s, &mut Vec::new()).unwrap_err();
    let took = started.elapsed();
    match &err {
        SandboxError::Guest { what, console } => {
            assert!(console.contains("kiln-init: error"), "{what}\n{console}");
            assert!(console.contains("/dev/vdz"), "{console}");
        }
        other => panic!("expected a guest error, got {other}"),
    }
    // It powered off by itself: no waiting for the ready timeout.
    assert!(took < Duration::from_secs(50), "took {took:?}: {err}");
}

/// Kills QEMU as soon as the command's first output arrives.
struct KillOnOutput(u32);

impl Write for KillOnOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // SAFETY: a plain signal to QEMU, our child.
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn agent_config(disk: &Path) -> VmConfig {
    let boot = base().join("boot");
    let cmdline = std::fs::read_to_string(boot.join(BootFiles::CMDLINE)).unwrap();
    let mut cfg = VmConfig::with_image(
        Boot::Kernel {
            kernel: kiln_vm::qemu::pvh::fastest_kernel(&boot),
            initrd: Some(boot.join(BootFiles::INITRD)),
            cmdline: format!("{} kiln.agent panic=-1", cmdline.trim()),
        },
        disk,
    );
    cfg.accel = Some(Accel::Tcg);
    cfg.no_reboot = true;
    cfg
}

#[test]
fn killing_qemu_mid_run_is_an_error_not_a_hang() {
    let tmp = scratch("kill");
    let disk = step(&tmp, "step", "../../base/disk.qcow2");
    let mut vm = AgentVm::boot(agent_config(&disk), Duration::from_secs(120)).unwrap();
    let pid = vm.vm().pid();
    let req = RunRequest {
        argv: vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo started; sleep 600".into(),
        ],
        env: vec![("PATH".into(), "/bin".into())],
        cwd: "/".into(),
        ..RunRequest::default()
    };
    let err = vm.run(&req, &mut KillOnOutput(pid), None).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("broke off"), "{text}");
    assert!(support::process_gone(pid) || vm.vm().exit_status().is_some());
}

#[test]
fn step_overhead_and_stdin_streaming() {
    let tmp = scratch("overhead");
    let disk = step(&tmp, "step", "../../base/disk.qcow2");
    let t0 = Instant::now();
    let mut vm = AgentVm::boot(agent_config(&disk), Duration::from_secs(120)).unwrap();
    let ready = t0.elapsed();
    let t1 = Instant::now();
    let status = vm
        .run(
            &RunRequest {
                argv: vec!["/bin/true".into()],
                cwd: "/".into(),
                ..RunRequest::default()
            },
            &mut Vec::new(),
            None,
        )
        .unwrap();
    let ran = t1.elapsed();
    assert_eq!(status, ExitStatus::Code(0));
    let mut out = Vec::new();
    let status = vm
        .run(
            &RunRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), "tr a-z A-Z".into()],
                env: vec![("PATH".into(), "/bin".into())],
                cwd: "/".into(),
                ..RunRequest::default()
            },
            &mut out,
            Some(Box::new(&b"typed on stdin\n"[..])),
        )
        .unwrap();
    assert_eq!(status, ExitStatus::Code(0));
    assert_eq!(String::from_utf8_lossy(&out), "TYPED ON STDIN\n");
    let t2 = Instant::now();
    vm.shutdown().unwrap();
    let stopped = t2.elapsed();

    let t3 = Instant::now();
    let disk = step(&tmp, "whole", "../../base/disk.qcow2");
    let (outcome, _) = run(&spec(&disk, "true"));
    assert_eq!(outcome, Outcome::Exited(0));
    let whole = t3.elapsed();
    println!(
        "QEMU sandbox step overhead (TCG): boot to Ready {:.2} s, run `true` {:.2} s, \
         shutdown {:.2} s; a whole `true` step through QemuSandbox::run {:.2} s",
        ready.as_secs_f64(),
        ran.as_secs_f64(),
        stopped.as_secs_f64(),
        whole.as_secs_f64()
    );
}

/// Writes through to `inner` and sets `flag` once `needle` has been written.
struct SetWhenSeen {
    seen: Vec<u8>,
    needle: &'static [u8],
    flag: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Write for SetWhenSeen {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.seen.extend_from_slice(buf);
        if self
            .seen
            .windows(self.needle.len())
            .any(|w| w == self.needle)
        {
            self.flag.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn the_cancel_flag_stops_a_running_step() {
    let tmp = scratch("cancel");
    let disk = step(&tmp, "one", "../../base/disk.qcow2");
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sandbox = QemuSandbox {
        cancel: Some(flag.clone()),
        ..sandbox()
    };
    let mut out = SetWhenSeen {
        seen: Vec::new(),
        needle: b"sleeping now",
        flag,
    };
    let started = Instant::now();
    let result = sandbox.run(&spec(&disk, "echo sleeping now; sleep 600"), &mut out);
    assert!(
        matches!(result, Err(SandboxError::Interrupted { signal: 2 })),
        "{result:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "stopped long before the command's end: {:?}",
        started.elapsed()
    );
}
