//! `kiln appliance`, `kiln run DIR` and `kiln cpio` end to end: appliances traced from a
//! Debian bookworm layer (the shared store's; its first step is the one `vm_bases.rs`
//! builds, so the kernel is installed once per run), booted under QEMU (TCG here), read
//! through the serial console and forwarded ports. Boots are shared: one boot checks
//! several things.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The layer: Debian with a kernel and sshd (the step `vm_bases.rs` shares), memcached,
/// nc and a minimal Python, and a Python program that imports its modules only when run.
const SPEC: &str = r#"((from debian:bookworm)
 (run (network host)
      (cache (apt-lists (target /var/lib/apt/lists)))
      (shell "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 systemd-sysv udev openssh-server sudo && apt-get clean"))
 (run (network host)
      (cache (apt-lists (target /var/lib/apt/lists)))
      (shell "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends memcached netcat-openbsd python3-minimal && apt-get clean"))
 (copy (src app.py) (dst /srv/app.py)))
"#;

/// Imports inside main(): nothing of csv, ipaddress, base64 or hashlib (whose OpenSSL
/// backend is a C extension, dlopen'd from lib-dynload, linked with libcrypto) is loaded
/// before the program runs, so only tracing the run can find them.
const APP_PY: &str = "def main():\n    import csv, io, ipaddress, base64, hashlib\n    rows = list(csv.reader(io.StringIO('a,b\\n1,2\\n')))\n    net = ipaddress.ip_network('10.0.2.0/24')\n    import _hashlib\n    digest = hashlib.sha256(b'kiln').hexdigest()[:12]\n    print('py-result', rows[1], net.num_addresses, base64.b64encode(b'kiln').decode(), digest, flush=True)\n\nmain()\n";

const PY_RESULT: &str = "py-result ['1', '2'] 256 a2lsbg== cdfe9ad58b46";

/// A directory holding the spec and app.py.
fn context(name: &str) -> PathBuf {
    let dir = test_dir(name);
    std::fs::write(dir.join("app.spec"), SPEC).unwrap();
    std::fs::write(dir.join("app.py"), APP_PY).unwrap();
    dir
}

fn report(app: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(app.join("report.json")).expect("report.json");
    serde_json::from_str(&text).expect("report.json is JSON")
}

/// A free loopback port (bound, then released for QEMU to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `kiln run DIR` with its serial console captured from stdout and fed from stdin.
struct Console {
    child: Child,
    text: Arc<Mutex<String>>,
}

impl Console {
    fn boot(app: &Path, append: &str, publish: &[(u16, u16)]) -> Console {
        Console::boot_with(app, append, publish, &[])
    }

    /// [`Console::boot`] with more `kiln run` arguments.
    fn boot_with(app: &Path, append: &str, publish: &[(u16, u16)], extra: &[&str]) -> Console {
        let mut cmd = Command::new(KILN);
        cmd.arg("run")
            .arg(app)
            .args(["--memory", "512", "--append", append])
            .args(extra);
        for (host, guest) in publish {
            cmd.args(["-p", &format!("{host}:{guest}")]);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting kiln run");
        let text = Arc::new(Mutex::new(String::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let text = text.clone();
            // Chunks as they come, not lines: a shell's prompt ends without a newline.
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Keep an incomplete UTF-8 sequence for the next chunk.
                    let valid = match std::str::from_utf8(&pending) {
                        Ok(_) => pending.len(),
                        Err(e) if e.error_len().is_none() => e.valid_up_to(),
                        Err(_) => pending.len(),
                    };
                    let chunk: Vec<u8> = pending.drain(..valid).collect();
                    text.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&chunk));
                }
            });
        }
        Console { child, text }
    }

    fn text(&self) -> String {
        self.text.lock().unwrap().clone()
    }

    /// Waits until the console has printed `needle` `times` times.
    fn wait_for_n(&self, needle: &str, times: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.text().matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "{needle:?} (x{times}) not on the console within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for(&self, needle: &str, limit: Duration) {
        self.wait_for_n(needle, 1, limit)
    }

    fn send(&mut self, text: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for `kiln run` (QEMU) to exit on its own; its success.
    fn wait_exit(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "the VM did not power off within {limit:?}:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `request` to 127.0.0.1:`port` and reads until `until` arrives.
fn exchange(port: u16, request: &[u8], until: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            if s.write_all(request).is_ok() {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                    if String::from_utf8_lossy(&got).contains(until) {
                        return String::from_utf8_lossy(&got).into_owned();
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no {until:?} from port {port}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Acceptance 1: memcached from a ≥150 MB layer, ≥50× smaller, answers set/get on the
/// forwarded port; `shutdown` ends `run`, and appEnd=halt powers the VM off.
#[test]
fn memcached_appliance_serves_and_halts() {
    let store = shared_store();
    let dir = context("appliance-memcached");
    let app = dir.join("apps/memcached");
    kiln(
        &store,
        &dir,
        &[
            "appliance",
            "-f",
            "app.spec",
            ".",
            "--train",
            "memcached -u nobody -d; sleep 1; printf 'stats\\r\\nquit\\r\\n' | nc -q1 127.0.0.1 11211",
            "--run",
            "/usr/bin/memcached -u nobody -A",
            "--include",
            "/etc/memcached.conf",
            "--exclude",
            "/usr/bin/nc*",
            "-o",
            "apps/memcached",
        ],
    )
    .ok();
    let r = report(&app);
    let layer_bytes = r["layer"]["bytes"].as_u64().unwrap();
    assert!(layer_bytes >= 150 << 20, "the layer is {layer_bytes} bytes");
    let reduction = r["reduction"].as_f64().unwrap();
    assert!(reduction >= 50.0, "only {reduction}x smaller: {r:#}");
    let files: Vec<&str> = r["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap())
        .collect();
    assert!(files.contains(&"/usr/bin/memcached"));
    assert!(files.iter().any(|f| f.contains("libevent")), "{files:?}");
    assert!(!files
        .iter()
        .any(|f| f.starts_with("/proc") || f.starts_with("/dev")));
    assert!(
        !files.contains(&"/usr/bin/python3.11"),
        "untouched files stay out"
    );
    assert!(files.contains(&"/etc/memcached.conf"), "--include");
    let traced = r["traced"].to_string();
    assert!(traced.contains("/usr/bin/nc"), "training ran nc: {traced}");
    assert!(
        !files.iter().any(|f| f.starts_with("/usr/bin/nc")),
        "--exclude: {files:?}"
    );
    for name in ["vmlinuz", "initrd.cpio.zst", "cmdline"] {
        assert!(app.join(name).is_file(), "{name} missing");
    }

    let port = free_port();
    let mut vm = Console::boot(&app, "appEnd=halt", &[(port, 11211)]);
    vm.wait_for("kiln-init: run: starting", Duration::from_secs(240));
    let got = exchange(port, b"set kiln 0 0 5\r\nhello\r\nget kiln\r\n", "END\r\n");
    assert!(
        got.contains("STORED\r\nVALUE kiln 0 5\r\nhello\r\nEND"),
        "{got}"
    );
    // memcached -A: `shutdown` makes it exit, which ends the run phase.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"shutdown\r\n").unwrap();
    assert!(vm.wait_exit(Duration::from_secs(180)), "{}", vm.text());
    let text = vm.text();
    assert!(text.contains("kiln-init: run: exit status 0"), "{text}");
    assert!(text.contains("appEnd=halt: powering off"), "{text}");
}

/// Builds the appliance of `args` from the shared layer into `dir/out`.
fn appliance(dir: &Path, out: &str, args: &[&str]) -> PathBuf {
    let mut all = vec!["appliance", "-f", "app.spec", ".", "-o", out];
    all.extend_from_slice(args);
    kiln(&shared_store(), dir, &all).ok();
    dir.join(out)
}

/// Acceptance 3 and 4 (merge): one boot of a merged initrd checks appDebug (a shell on
/// the console before prerun), appCmds (through sh), appArgs, the merge's override of
/// /app/postrun and appEnd=reboot; a second boot checks appEnd=sshd.
#[test]
fn console_parameters_merged_override_reboot_and_sshd() {
    let dir = context("appliance-console");
    let app = appliance(
        &dir,
        "app",
        &[
            "--train",
            "ssh-keygen -A >/dev/null && mkdir -p /run/sshd && /usr/sbin/sshd -t && echo trained",
            "--run",
            "/bin/echo run-args:",
            "--postrun",
            "echo postrun-original",
        ],
    );
    // An archive that replaces /app/postrun, merged after the appliance's own.
    let over = dir.join("over");
    std::fs::create_dir_all(over.join("app")).unwrap();
    std::fs::write(over.join("app/postrun"), "#!/bin/sh\necho postrun-merged\n").unwrap();
    let mut perm = std::fs::metadata(over.join("app/postrun"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(over.join("app/postrun"), perm).unwrap();
    let store = shared_store();
    kiln(&store, &dir, &["cpio", "pack", "over", "-o", "over.cpio"]).ok();
    let merged = dir.join("merged");
    std::fs::create_dir_all(&merged).unwrap();
    kiln(
        &store,
        &dir,
        &[
            "cpio",
            "merge",
            "app/initrd.cpio.zst",
            "over.cpio",
            "-o",
            "merged/initrd.cpio.zst",
        ],
    )
    .ok();
    for f in ["vmlinuz", "vmlinux", "cmdline"] {
        if app.join(f).exists() {
            std::fs::copy(app.join(f), merged.join(f)).unwrap();
        }
    }
    let listing = kiln(&store, &dir, &["cpio", "ls", "merged/initrd.cpio.zst"]).ok();
    assert_eq!(
        listing.stdout.matches(" app/postrun\n").count(),
        1,
        "{}",
        listing.stdout
    );

    let mut vm = Console::boot(
        &merged,
        "appDebug appCmds='echo cmd-one:echo cmd-$((2+3))' appArgs='a  b' appEnd=reboot",
        &[],
    );
    vm.wait_for("appliance# ", Duration::from_secs(240));
    vm.send("echo dbg-$((6*7))\nexit\n");
    vm.wait_for("dbg-42", Duration::from_secs(120));
    vm.wait_for("appEnd=reboot: rebooting", Duration::from_secs(180));
    vm.wait_for_n("Linux version", 2, Duration::from_secs(180));
    let text = vm.text();
    let order = [
        "appDebug: a shell",
        "dbg-42",
        "cmd-5",
        "exit status 0",
        "run-args: a b",
        "kiln-init: run: exit status 0",
        "postrun-merged",
        "kiln-init: postrun: exit status 0",
        "appEnd=reboot: rebooting",
    ];
    let mut at = 0;
    for needle in order {
        let found = text[at..].find(needle).map(|i| at + i);
        at = found.unwrap_or_else(|| panic!("{needle:?} missing or out of order:\n{text}"));
    }
    assert!(
        !text.contains("postrun-original"),
        "the merge did not override:\n{text}"
    );
    drop(vm);

    let port = free_port();
    let vm = Console::boot(&app, "appEnd=sshd", &[(port, 22)]);
    vm.wait_for("appEnd=sshd: starting", Duration::from_secs(240));
    let banner = exchange(port, b"", "SSH-2.0-OpenSSH");
    assert!(banner.starts_with("SSH-2.0-"), "{banner}");
    let text = vm.text();
    assert!(text.contains("kiln-init: run: exit status 0"), "{text}");
}

/// Acceptance 2: a Python program whose standard-library modules (one a C extension) are
/// imported only when it runs: tracing finds them, and the appliance runs it. The
/// training and run commands come from the spec's `(appliance …)` form.
#[test]
fn python_appliance_with_lazily_imported_modules() {
    let dir = context("appliance-python");
    // The spec's own (appliance …) form says what to train and run.
    let spec = SPEC.trim_end().strip_suffix(')').unwrap().to_string()
        + "\n (appliance (train \"python3 /srv/app.py\") (run \"/usr/bin/python3 /srv/app.py\")))\n";
    std::fs::write(dir.join("py.spec"), spec).unwrap();
    kiln(
        &shared_store(),
        &dir,
        &["appliance", "-f", "py.spec", ".", "-o", "py"],
    )
    .ok();
    let app = dir.join("py");
    let r = report(&app);
    let traced = r["traced"].to_string();
    for module in [
        "csv.py",
        "ipaddress.py",
        "base64.py",
        "lib-dynload/_hashlib",
    ] {
        assert!(traced.contains(module), "{module} not traced: {traced}");
    }
    let files = r["files"].to_string();
    assert!(
        files.contains("libcrypto.so"),
        "the extension's library: {files}"
    );
    assert!(
        !files.contains("argparse.py"),
        "a module never imported was kept"
    );
    // appEnd=shell: a shell on the console after postrun; leaving it powers the VM off.
    let mut vm = Console::boot(&app, "appEnd=shell", &[]);
    vm.wait_for(PY_RESULT, Duration::from_secs(240));
    vm.wait_for("appliance# ", Duration::from_secs(120));
    vm.send("echo shell-$((3*4))\nexit\n");
    vm.wait_for("shell-12", Duration::from_secs(120));
    assert!(vm.wait_exit(Duration::from_secs(180)));
    assert!(
        vm.text().contains("appEnd=shell: powering off"),
        "{}",
        vm.text()
    );
    assert!(
        vm.text().contains("kiln-init: run: exit status 0"),
        "{}",
        vm.text()
    );
}

/// Acceptance 6: bad input gets a clear error and writes nothing.
#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let store = shared_store();
    let dir = context("appliance-errors");
    let refuse = |args: &[&str], want: &[&str]| {
        let mut all = vec!["appliance", "-o", "out"];
        all.extend_from_slice(args);
        let run = kiln(&store, &dir, &all);
        assert_ne!(run.code, 0, "{args:?} succeeded");
        for w in want {
            assert!(
                run.stderr.contains(w),
                "{args:?}: no {w:?} in\n{}",
                run.stderr
            );
        }
        assert!(!dir.join("out").exists() && !dir.join(".out.kiln-tmp").exists());
    };
    let debian = ["-f", "app.spec", "."];
    refuse(
        &[
            &debian[..],
            &[
                "--train",
                "echo training-said-this; exit 3",
                "--run",
                "/usr/bin/memcached",
            ],
        ]
        .concat(),
        &["training command", "exit status 3", "training-said-this"],
    );
    refuse(
        &[&debian[..], &["--run", "/usr/bin/no-such-program -x"]].concat(),
        &[
            "/usr/bin/no-such-program",
            "not an executable file in the layer",
        ],
    );
    refuse(
        &[
            &debian[..],
            &[
                "--run",
                "/usr/bin/memcached",
                "--include",
                "/no/such/*.conf",
            ],
        ]
        .concat(),
        &["--include /no/such/*.conf", "matches nothing"],
    );
    std::fs::write(
        dir.join("busybox.spec"),
        format!("((from file:{}))\n", busybox_tar().display()),
    )
    .unwrap();
    refuse(
        &["-f", "busybox.spec", ".", "--run", "/bin/busybox"],
        &["has no kernel", "--kernel"],
    );
    // An existing directory that is not an app directory is never replaced.
    std::fs::create_dir(dir.join("out")).unwrap();
    std::fs::write(dir.join("out/keep"), "mine").unwrap();
    let run = kiln(
        &store,
        &dir,
        &[
            "appliance",
            "-f",
            "busybox.spec",
            ".",
            "--run",
            "/bin/busybox",
            "-o",
            "out",
        ],
    );
    assert!(
        run.stderr.contains("not an app directory"),
        "{}",
        run.stderr
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("out/keep")).unwrap(),
        "mine"
    );
}

/// Acceptance 4 (unpack): hostile archives are refused whole by `kiln cpio unpack`;
/// `pack` is deterministic and `ls` lists what it packed.
#[test]
fn cpio_cli_refuses_hostile_archives_and_packs_deterministically() {
    use kiln_image::cpio::{Entry, Kind};
    let store = shared_store();
    let dir = test_dir("cpio-cli");
    let outside = dir.join("outside");
    std::fs::create_dir(&outside).unwrap();
    let file = |path: &str| Entry {
        path: path.into(),
        perm: 0o644,
        uid: 0,
        gid: 0,
        mtime: 1,
        kind: Kind::File(b"evil".to_vec()),
    };
    let link = |path: &str, target: &str| Entry {
        kind: Kind::Symlink(target.into()),
        ..file(path)
    };
    let hostile = [
        vec![file("fine"), file("../outside/x")],
        vec![file("fine"), file(&format!("{}/x", outside.display()))],
        vec![link("esc", outside.to_str().unwrap()), file("esc/x")],
        vec![link("up", ".."), file("up/outside/x")],
    ];
    for (n, entries) in hostile.iter().enumerate() {
        let archive = dir.join(format!("hostile{n}.cpio.gz"));
        kiln_image::cpio::write_file(entries, &archive, kiln_image::cpio::Compression::Gzip)
            .unwrap();
        let target = dir.join(format!("target{n}"));
        let run = kiln(
            &store,
            &dir,
            &[
                "cpio",
                "unpack",
                archive.to_str().unwrap(),
                target.to_str().unwrap(),
            ],
        );
        assert_ne!(run.code, 0, "hostile archive {n} was unpacked");
        assert!(run.stderr.contains("refusing"), "{}", run.stderr);
        assert_eq!(
            std::fs::read_dir(&target).unwrap().count(),
            0,
            "archive {n}"
        );
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "archive {n}"
        );
    }

    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/conf"), "x=1\n").unwrap();
    std::os::unix::fs::symlink("conf", tree.join("etc/link")).unwrap();
    for out in ["a.cpio.zst", "b.cpio.zst"] {
        kiln_env(
            &store,
            &dir,
            &["cpio", "pack", "tree", "-o", out],
            &[("SOURCE_DATE_EPOCH", "100")],
        )
        .ok();
    }
    assert_eq!(
        std::fs::read(dir.join("a.cpio.zst")).unwrap(),
        std::fs::read(dir.join("b.cpio.zst")).unwrap()
    );
    let ls = kiln(&store, &dir, &["cpio", "ls", "a.cpio.zst"]).ok();
    assert!(ls.stdout.contains(" etc/link -> conf\n"), "{}", ls.stdout);
    assert!(
        ls.stdout.contains("        100 etc/conf\n"),
        "{}",
        ls.stdout
    );
    kiln(&store, &dir, &["cpio", "unpack", "a.cpio.zst", "back"]).ok();
    assert_eq!(
        std::fs::read_to_string(dir.join("back/etc/conf")).unwrap(),
        "x=1\n"
    );
}

/// The deploy loader (the deploy issue's node side): an appliance made from kiln itself
/// boots on a node with an empty disk, loads a `.kzi` over HTTP from `kiln deploy serve
/// --http` (the unicast fallback; QEMU's user network carries no multicast) onto its
/// /dev/vda, verifies it and powers off; the disk then holds the image byte for byte.
#[test]
fn deploy_loader_appliance_writes_the_nodes_disk() {
    let store = shared_store();
    let dir = test_dir("appliance-loader");
    // The layer's first step is the shared one (kernel, udev, sshd); then kiln, without
    // its debug information (the test binary's is ~150 MB).
    let stripped = Command::new("objcopy")
        .args(["--strip-debug", KILN])
        .arg(dir.join("kiln"))
        .output()
        .expect("objcopy (binutils)");
    assert!(
        stripped.status.success(),
        "{}",
        String::from_utf8_lossy(&stripped.stderr)
    );
    let first_step = SPEC.lines().take(4).collect::<Vec<_>>().join("\n");
    let spec = format!(
        "{first_step}\n (copy (src kiln) (dst /usr/local/bin/kiln))\n \
         (appliance (train \"/usr/local/bin/kiln deploy load --help\") \
         (run \"/usr/local/bin/kiln deploy load --json\")))\n"
    );
    std::fs::write(dir.join("loader.spec"), &spec).unwrap();
    kiln(
        &store,
        &dir,
        &["appliance", "-f", "loader.spec", ".", "-o", "loader"],
    )
    .ok();
    let app = dir.join("loader");
    let files = report(&app)["files"].to_string();
    assert!(files.contains("/usr/local/bin/kiln"), "{files}");
    assert!(files.contains("libc.so.6"), "kiln's ELF closure: {files}");

    // The image: 32 MiB, eight data blocks between holes; the node's disk is 48 MiB of
    // something else.
    let raw = dir.join("disk.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(32 << 20).unwrap();
    for i in 0..8u64 {
        let block: Vec<u8> = (0..512 * 1024u64)
            .map(|b| (b * 13 + i * 101) as u8)
            .collect();
        std::os::unix::fs::FileExt::write_all_at(&f, &block, i * (4 << 20)).unwrap();
    }
    drop(f);
    let kzi = dir.join("disk.kzi");
    kiln(
        &store,
        &dir,
        &["deploy", "pack", "disk.raw", "-o", "disk.kzi"],
    )
    .ok();
    let node_disk = dir.join("node.raw");
    std::fs::write(&node_disk, vec![0xCD; 48 << 20]).unwrap();

    let (mut server, addr) = deploy_http_server(&kzi, 600);
    let port = addr.rsplit(':').next().unwrap();
    let append = format!(
        "appIp=10.0.2.15/24 appGw=10.0.2.2 appEnd=halt \
         appArgs='--http http://10.0.2.2:{port}/disk.kzi --target /dev/vda --zero-rest'"
    );
    let node = node_disk.to_str().unwrap();
    let mut vm = Console::boot_with(&app, &append, &[], &["--disk", node, "--network", "host"]);
    let powered_off = vm.wait_exit(Duration::from_secs(300));
    let text = vm.text();
    let _ = server.kill();
    let _ = server.wait();
    assert!(powered_off, "{text}");
    assert!(text.contains("kiln-init: run: exit status 0"), "{text}");
    assert!(
        text.contains("\"chunks_written\""),
        "the loader's report: {text}"
    );
    let loaded = std::fs::read(&node_disk).unwrap();
    assert!(
        loaded[..32 << 20] == std::fs::read(&raw).unwrap()[..],
        "the node's disk differs"
    );
    assert!(
        loaded[32 << 20..].iter().all(|&b| b == 0xCD),
        "written past the image"
    );
}
