//! What a command sees and leaves behind in the sandbox.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use kiln_sandbox::{BindMount, Outcome, RootFs, Sandbox, SandboxError, Secret};

use crate::check;
use crate::fixture::{run, run_ok, set, spec, tree, Fixture, TestResult};

pub fn exit_codes_and_signals(fx: &Fixture) -> TestResult {
    for (script, want) in [
        ("true", Outcome::Exited(0)),
        ("exit 3", Outcome::Exited(3)),
        ("kill -9 $$", Outcome::Signalled(9)),
    ] {
        let layer = fx.layer();
        let (outcome, out) = run(&spec(fx.root(&layer), script)).map_err(|e| e.to_string())?;
        check!(
            outcome == want,
            "{script}: got {outcome:?}, want {want:?}; output: {out}"
        );
    }
    Ok(())
}

pub fn command_not_found_is_127(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut s = spec(fx.root(&layer), "");
    s.argv = vec!["no-such-command".into(), "arg".into()];
    let (outcome, out) = run(&s).map_err(|e| e.to_string())?;
    check!(outcome == Outcome::Exited(127), "got {outcome:?}");
    check!(
        out.contains("no-such-command: command not found"),
        "output: {out:?}"
    );
    // A bare name is found through the spec's PATH.
    s.argv = vec!["echo".into(), "found-via-path".into()];
    let out = run_ok(&s)?;
    check!(out == "found-via-path\n", "output: {out:?}");
    Ok(())
}

/// Output arrives while the command still runs: the command waits (up to 10 s) for a
/// reply the test sends only after it has seen the first line.
pub fn output_is_streamed_and_complete(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let sync_dir = layer.dir.path().join("sync");
    std::fs::create_dir(&sync_dir).map_err(|e| e.to_string())?;
    let fifo = sync_dir.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(|e| e.to_string())?;
    let script = "echo first; exec 3<>/sync/fifo; if read -t 10 x <&3; then echo \"got $x\"; else echo timeout; fi; seq 1 20000";
    let mut s = spec(fx.root(&layer), script);
    s.mounts.push(BindMount {
        source: sync_dir,
        target: "/sync".into(),
        readonly: false,
    });
    let mut sink = Handshake {
        fifo,
        seen: Vec::new(),
        writer: None,
    };
    let outcome = kiln_sandbox::chroot::NamespaceSandbox::new()
        .run(&s, &mut sink)
        .map_err(|e| e.to_string())?;
    let out = String::from_utf8_lossy(&sink.seen).into_owned();
    check!(outcome == Outcome::Exited(0), "got {outcome:?}");
    check!(
        out.starts_with("first\ngot go\n"),
        "the reply did not arrive while the command ran: {:?}",
        &out[..out.len().min(80)]
    );
    let numbers: Vec<&str> = out.lines().skip(2).collect();
    check!(
        numbers.len() == 20000 && numbers[0] == "1" && numbers[19999] == "20000",
        "got {} lines",
        numbers.len()
    );
    Ok(())
}

/// Replies "go" on the fifo once "first" has been seen.
struct Handshake {
    fifo: PathBuf,
    seen: Vec<u8>,
    writer: Option<std::fs::File>,
}

impl Write for Handshake {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.seen.extend_from_slice(buf);
        if self.writer.is_none() && self.seen.starts_with(b"first\n") {
            // Read-write so the open does not wait for a reader; kept open so the line
            // stays in the fifo until the command reads it.
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.fifo)?;
            f.write_all(b"go\n")?;
            self.writer = Some(f);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn env_cwd_uid_gid(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut s = spec(
        fx.root(&layer),
        "echo \"FOO=$FOO\"; pwd; id -u; id -g; id -G; env",
    );
    s.env.push(("FOO".into(), "bar baz".into()));
    s.cwd = "/home/build".into();
    s.uid = 1000;
    s.gid = 1001;
    let out = run_ok(&s)?;
    let lines: Vec<&str> = out.lines().collect();
    check!(
        lines[..5] == ["FOO=bar baz", "/home/build", "1000", "1001", "1001"],
        "output: {out}"
    );
    let env: Vec<&str> = lines[5..]
        .iter()
        .copied()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL="))
        .collect();
    check!(
        env.iter().all(|l| *l == "PATH=/bin" || *l == "FOO=bar baz"),
        "unexpected environment: {env:?}"
    );
    let cwd = std::fs::metadata(layer.upper.join("home/build"))
        .map_err(|e| format!("cwd not in upper: {e}"))?;
    check!(
        cwd.uid() == 1000 && cwd.gid() == 1001,
        "cwd owned by {}:{}",
        cwd.uid(),
        cwd.gid()
    );
    Ok(())
}

/// The upper dir holds exactly what the command wrote: no /proc, /dev, /sys, /tmp, secret
/// or cache mountpoints, and no directory copied up only because a mountpoint was made in it.
pub fn upper_holds_only_the_commands_writes(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let cache = layer.dir.path().join("cache");
    std::fs::create_dir(&cache).map_err(|e| e.to_string())?;
    let script = "cat /etc/kiln/token; echo; echo data > /var/cache/kiln/new; echo hi > /file; \
                  mkdir /dir; echo y > /dir/y; echo t > /tmp/t; ls /proc /dev /sys > /dev/null";
    let mut s = spec(fx.root(&layer), script);
    s.secrets.push(Secret {
        target: "/etc/kiln/token".into(),
        value: b"s3cret".to_vec(),
    });
    s.mounts.push(BindMount {
        source: cache.clone(),
        target: "/var/cache/kiln".into(),
        readonly: false,
    });
    let out = run_ok(&s)?;
    check!(out == "s3cret\n", "output: {out:?}");
    check!(
        layer.contents() == set(&["dir", "dir/y", "file"]),
        "upper: {:?}",
        layer.contents()
    );
    let new =
        std::fs::read_to_string(cache.join("new")).map_err(|e| format!("cache write lost: {e}"))?;
    check!(new == "data\n", "cache file: {new:?}");
    Ok(())
}

/// A directory copied up because of a mountpoint stays when the command wrote into it.
pub fn copied_up_dir_kept_when_command_wrote_there(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut s = spec(fx.root(&layer), "echo x > /etc/newfile");
    s.secrets.push(Secret {
        target: "/etc/kiln/token".into(),
        value: b"v".to_vec(),
    });
    run_ok(&s)?;
    check!(
        layer.contents() == set(&["etc", "etc/newfile"]),
        "upper: {:?}",
        layer.contents()
    );
    Ok(())
}

/// With /proc, /dev, /sys, /tmp, /run and /var/cache already in the image, a command that
/// writes nothing leaves an empty upper dir, secrets and caches included.
pub fn existing_mountpoints_leave_no_trace(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let cache = layer.dir.path().join("cache");
    std::fs::create_dir(&cache).map_err(|e| e.to_string())?;
    let mut s = spec(
        layer.overlay(std::slice::from_ref(&fx.lower_full)),
        "cat /run/token > /dev/null",
    );
    s.secrets.push(Secret {
        target: "/run/token".into(),
        value: b"v".to_vec(),
    });
    s.mounts.push(BindMount {
        source: cache,
        target: "/var/cache/c".into(),
        readonly: true,
    });
    run_ok(&s)?;
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

pub fn flat_dir_root(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let before = tree(&fx.lower);
    let flat = layer.dir.path().join("flat");
    copy_tree(&fx.lower, &flat)?;
    run_ok(&spec(
        RootFs::Dir(flat.clone()),
        "echo x > /written; ls /proc/self > /dev/null",
    ))?;
    let mut want = before;
    want.insert("written".into());
    check!(tree(&flat) == want, "flat root now: {:?}", tree(&flat));
    Ok(())
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<(), String> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .map_err(|e| e.to_string())?;
    check!(status.success(), "cp -a failed: {status}");
    Ok(())
}

pub fn pid_namespace(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_ok(&spec(fx.root(&layer), "echo $$; ls /proc"))?;
    let mut lines = out.lines();
    check!(lines.next() == Some("2"), "the shell is not pid 2: {out}");
    let pids: Vec<u32> = lines.filter_map(|l| l.parse().ok()).collect();
    check!(
        pids.contains(&1) && pids.iter().all(|&p| p < 10),
        "host processes visible: {pids:?}"
    );
    let out = run_ok(&spec(fx.root(&layer), "ps -o pid,comm"))?;
    check!(out.lines().count() <= 4, "ps lists too much: {out}");
    Ok(())
}

pub fn hostname_is_set(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut s = spec(fx.root(&layer), "hostname; cat /proc/sys/kernel/hostname");
    s.hostname = "step-42".into();
    let out = run_ok(&s)?;
    check!(out == "step-42\nstep-42\n", "output: {out:?}");
    Ok(())
}

pub fn network_is_only_loopback_and_up(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_ok(&spec(
        fx.root(&layer),
        "cat /proc/net/dev; ls /sys/class/net; cat /sys/class/net/lo/flags",
    ))?;
    let interfaces: Vec<&str> = out
        .lines()
        .skip(2)
        .take_while(|l| l.contains(':'))
        .filter_map(|l| l.split(':').next())
        .map(str::trim)
        .collect();
    check!(interfaces == ["lo"], "interfaces: {interfaces:?}\n{out}");
    let flags = out.lines().last().unwrap_or("");
    let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16)
        .map_err(|_| format!("flags {flags:?}"))?;
    check!(flags & 1 == 1, "lo is down (flags {flags:#x})");
    Ok(())
}

pub fn host_network_shows_host_interfaces(fx: &Fixture) -> TestResult {
    let host_ns = std::fs::read_link("/proc/self/ns/net").map_err(|e| e.to_string())?;
    let host_ns = host_ns.to_string_lossy();
    for host_network in [true, false] {
        let layer = fx.layer();
        let mut s = spec(
            fx.root(&layer),
            "readlink /proc/self/ns/net; ls /sys/class/net",
        );
        s.host_network = host_network;
        let out = run_ok(&s)?;
        let mut lines = out.lines();
        let ns = lines.next().unwrap_or_default();
        check!(
            (ns == host_ns) == host_network,
            "host_network={host_network}: namespace {ns}, host's {host_ns}"
        );
        if host_network {
            let inside: Vec<&str> = lines.collect();
            let mut host: Vec<String> = std::fs::read_dir("/sys/class/net")
                .map_err(|e| e.to_string())?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            host.sort();
            check!(inside == host, "inside {inside:?}, host {host:?}");
        }
    }
    Ok(())
}

pub fn dev_has_exactly_the_expected_nodes(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let script = "ls -A /dev; echo x > /dev/null && echo null-ok; head -c 3 /dev/zero | wc -c; \
                  readlink /dev/ptmx; test -c /dev/pts/ptmx && echo ptmx-ok; head -c 4 /dev/urandom | wc -c; \
                  grep ' /dev/shm ' /proc/mounts | cut -d' ' -f3";
    let out = run_ok(&spec(fx.root(&layer), script))?;
    let want =
        "fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n\
                null-ok\n3\npts/ptmx\nptmx-ok\n4\ntmpfs\n";
    check!(out == want, "output:\n{out}");
    Ok(())
}

pub fn sys_is_read_only(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_ok(&spec(
        fx.root(&layer),
        "touch /sys/kiln-test 2>&1; grep ' /sys ' /proc/mounts; true",
    ))?;
    check!(
        out.contains("Read-only file system"),
        "write to /sys did not fail as read-only: {out}"
    );
    check!(out.contains("sysfs /sys sysfs ro,"), "/sys mount: {out}");
    Ok(())
}

pub fn tmp_is_an_empty_tmpfs(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = run_ok(&spec(
        fx.root(&layer),
        "grep ' /tmp ' /proc/mounts | cut -d' ' -f1-3; ls -A /tmp | wc -l; echo x > /tmp/f",
    ))?;
    check!(out == "tmpfs /tmp tmpfs\n0\n", "output: {out:?}");
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

pub fn secret_readable_read_only_and_gone_afterwards(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let script = "cat /run/secrets/tok; echo; (echo x > /run/secrets/tok) 2>/dev/null || echo write-failed; \
                  stat -c '%u %a' /run/secrets/tok; grep -c ' /run/secrets/tok ' /proc/mounts; \
                  grep ' /proc ' /proc/mounts | cut -d' ' -f1";
    let mut s = spec(fx.root(&layer), script);
    s.uid = 1000;
    s.gid = 1000;
    s.secrets.push(Secret {
        target: "/run/secrets/tok".into(),
        value: b"s3cret".to_vec(),
    });
    let out = run_ok(&s)?;
    // The last line: only proc is mounted at /proc, the secrets' staging tmpfs is gone.
    check!(
        out == "s3cret\nwrite-failed\n1000 400\n1\nproc\n",
        "output: {out:?}"
    );
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

pub fn cache_bind_writable_and_read_only(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let (rw, ro) = (layer.dir.path().join("rw"), layer.dir.path().join("ro"));
    std::fs::create_dir(&rw).map_err(|e| e.to_string())?;
    std::fs::create_dir(&ro).map_err(|e| e.to_string())?;
    std::fs::write(ro.join("seed"), "seed\n").map_err(|e| e.to_string())?;
    let mut s = spec(fx.root(&layer), "echo w > /cache/rw/f; cat /cache/ro/seed; (echo x > /cache/ro/g) 2>/dev/null || echo ro-ok");
    s.mounts.push(BindMount {
        source: rw.clone(),
        target: "/cache/rw".into(),
        readonly: false,
    });
    s.mounts.push(BindMount {
        source: ro.clone(),
        target: "/cache/ro".into(),
        readonly: true,
    });
    let out = run_ok(&s)?;
    check!(out == "seed\nro-ok\n", "output: {out:?}");
    check!(
        std::fs::read_to_string(rw.join("f")).ok().as_deref() == Some("w\n"),
        "write did not reach the host dir"
    );
    check!(!ro.join("g").exists(), "read-only bind was written");
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

pub fn fast_sync_filter(fx: &Fixture) -> TestResult {
    for (fast, want) in [
        (true, "NoNewPrivs:\t0\nSeccomp:\t2\nsynced\n"),
        (false, "NoNewPrivs:\t0\nSeccomp:\t0\nsynced\n"),
    ] {
        // NoNewPrivs stays 0 so setuid programs (sudo in user steps) keep working.
        let layer = fx.layer();
        let mut s = spec(
            fx.root(&layer),
            "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status; sync && echo synced",
        );
        s.fast_sync = fast;
        let out = run_ok(&s)?;
        check!(out == want, "fast_sync={fast}: {out:?}");
    }
    Ok(())
}

pub fn setup_failure_names_the_step(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let missing = layer.dir.path().join("no-such-layer");
    let s = spec(layer.overlay(&[missing]), "true");
    match run(&s) {
        Err(SandboxError::Setup(message)) => {
            check!(
                message.contains("mount overlay at"),
                "message does not name the step: {message}"
            );
        }
        other => return Err(format!("expected a set-up error, got {other:?}")),
    }
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

/// Layer paths with `:` and `,` are escaped, and an upper dir written by one run works as
/// a lower dir of the next, whiteouts included.
pub fn layers_stack_and_paths_are_escaped(fx: &Fixture) -> TestResult {
    let first = fx.layer();
    let weird = first.dir.path().join("lay:er,1");
    std::fs::create_dir(&weird).map_err(|e| e.to_string())?;
    std::fs::write(weird.join("marker"), "escaped\n").map_err(|e| e.to_string())?;
    let lower = vec![weird.clone(), fx.lower.clone()];
    let out = run_ok(&spec(
        first.overlay(&lower),
        "cat /marker; echo a > /a; rm /etc/passwd",
    ))?;
    check!(out == "escaped\n", "output: {out:?}");
    let second = fx.layer();
    let stacked = vec![first.upper.clone(), weird, fx.lower.clone()];
    let out = run_ok(&spec(
        second.overlay(&stacked),
        "cat /a; test -e /etc/passwd && echo passwd-visible; ls /etc | wc -l",
    ))?;
    check!(out == "a\n0\n", "output: {out:?}");
    Ok(())
}

/// Targets inside /tmp and /dev get their mountpoints in those tmpfs mounts, not the layer.
pub fn mounts_inside_tmp_and_dev(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let cache = layer.dir.path().join("cache");
    std::fs::create_dir(&cache).map_err(|e| e.to_string())?;
    let mut s = spec(
        fx.root(&layer),
        "cat /tmp/s; echo; cat /dev/kiln/s2; echo; echo c > /tmp/cache/c",
    );
    s.secrets.push(Secret {
        target: "/tmp/s".into(),
        value: b"one".to_vec(),
    });
    s.secrets.push(Secret {
        target: "/dev/kiln/s2".into(),
        value: b"two".to_vec(),
    });
    s.mounts.push(BindMount {
        source: cache.clone(),
        target: "/tmp/cache".into(),
        readonly: false,
    });
    let out = run_ok(&s)?;
    check!(out == "one\ntwo\n", "output: {out:?}");
    check!(cache.join("c").exists(), "cache write lost");
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

/// A symlink in the image pointing at a host path cannot aim a mount at the host: targets
/// resolve inside the root (here the link dangles there, so its target is created inside).
pub fn symlinks_cannot_escape_the_root(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let host_dir = layer.dir.path().join("host");
    std::fs::create_dir(&host_dir).map_err(|e| e.to_string())?;
    let evil = layer.dir.path().join("evil");
    std::fs::create_dir_all(evil.join("etc")).map_err(|e| e.to_string())?;
    std::os::unix::fs::symlink(&host_dir, evil.join("etc/evil")).map_err(|e| e.to_string())?;
    let root = layer.overlay(&[evil, fx.lower.clone()]);
    let mut s = spec(root, "cat /etc/evil/token");
    s.secrets.push(Secret {
        target: "/etc/evil/token".into(),
        value: b"inside".to_vec(),
    });
    let out = run_ok(&s)?;
    check!(out == "inside", "output: {out:?}");
    check!(
        tree(&host_dir).is_empty(),
        "the host directory was written: {:?}",
        tree(&host_dir)
    );
    check!(layer.contents().is_empty(), "upper: {:?}", layer.contents());
    Ok(())
}

/// Several sandboxes at once (the builder runs steps in parallel) do not hold each other's
/// pipes open or mix their output.
pub fn concurrent_runs_are_independent(fx: &Fixture) -> TestResult {
    let layers: Vec<_> = (0..4).map(|_| fx.layer()).collect();
    let specs: Vec<_> = layers
        .iter()
        .enumerate()
        .map(|(i, layer)| {
            spec(
                fx.root(layer),
                &format!("seq 1 {} | wc -l; echo {i} > /id", 1000 * (i + 1)),
            )
        })
        .collect();
    let outputs = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .map(|s| scope.spawn(move || run_ok(s)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("thread panicked".into())))
            .collect::<Vec<_>>()
    });
    for (i, (out, layer)) in outputs.into_iter().zip(&layers).enumerate() {
        let out = out?;
        check!(out == format!("{}\n", 1000 * (i + 1)), "run {i}: {out:?}");
        let id = std::fs::read_to_string(layer.upper.join("id")).unwrap_or_default();
        check!(id == format!("{i}\n"), "run {i} wrote {id:?}");
    }
    Ok(())
}

/// Set-up failures in the supervisor and in pid 1 name the step, and leave no mountpoints.
pub fn failed_setup_cleans_up(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let mut s = spec(fx.root(&layer), "true");
    s.secrets.push(Secret {
        target: "/etc/passwd/x".into(),
        value: b"v".to_vec(),
    });
    match run(&s) {
        Err(SandboxError::Setup(m)) => check!(
            m.contains("/etc/passwd/x") && m.contains("ENOTDIR"),
            "message: {m}"
        ),
        other => return Err(format!("expected a set-up error, got {other:?}")),
    }
    check!(
        layer.contents().is_empty(),
        "upper after a supervisor failure: {:?}",
        layer.contents()
    );

    let file = layer.dir.path().join("file");
    std::fs::write(&file, "f").map_err(|e| e.to_string())?;
    let mut s = spec(fx.root(&layer), "true");
    s.mounts.push(BindMount {
        source: file,
        target: "/etc".into(),
        readonly: false,
    });
    match run(&s) {
        Err(SandboxError::Setup(m)) => check!(
            m.contains("bind-mount") && m.contains("at /etc"),
            "message: {m}"
        ),
        other => return Err(format!("expected a set-up error, got {other:?}")),
    }
    check!(
        layer.contents().is_empty(),
        "upper after a pid 1 failure: {:?}",
        layer.contents()
    );
    Ok(())
}

/// The command gets stdin (/dev/null) and the output pipe, nothing else: no status pipe,
/// no lifeline, no fd on a host directory.
pub fn command_inherits_only_stdio(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let script = "ls /proc/self/fd | sort -n | tr '\\n' ' '; echo; readlink /proc/self/fd/0; \
                  ls /proc/1/fd | sort -n | tr '\\n' ' '";
    let out = run_ok(&spec(fx.root(&layer), script))?;
    // 3 is ls's own directory fd; pid 1 keeps stdio, the status pipe (4), the lifeline (5).
    check!(out == "0 1 2 3 \n/dev/null\n0 1 2 4 5 ", "output: {out:?}");
    Ok(())
}

/// `RunSpec::trace`: successful opens, stats, accesses, readlinks and execs of every
/// process (forks and a background child included), relative paths made absolute against
/// the cwd; failed calls are not recorded and the exit status is kept.
pub fn traced_paths(fx: &Fixture) -> TestResult {
    let layer = fx.layer();
    let out = layer.dir.path().join("traced");
    let mut s = spec(
        fx.root(&layer),
        "mkdir -p /srv/app && echo x > /srv/app/data && echo y > /srv/bg && cd /srv/app && \
         cat data >/dev/null; (sleep 0; test -e /etc/hostname-missing; cat ../bg) & wait; \
         ls ./ >/dev/null; exit 3",
    );
    s.trace = Some(out.clone());
    let (outcome, output) = run(&s).map_err(|e| e.to_string())?;
    check!(outcome == Outcome::Exited(3), "{outcome:?}: {output}");
    let bytes = std::fs::read(&out).map_err(|e| e.to_string())?;
    let paths: Vec<&str> = bytes
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| std::str::from_utf8(p).unwrap())
        .collect();
    for want in ["/bin/sh", "/srv/app/data", "/srv/app", "/srv/app/../bg"] {
        check!(paths.contains(&want), "{want} missing from {paths:?}");
    }
    check!(
        !paths.contains(&"/etc/hostname-missing"),
        "a failed stat is recorded: {paths:?}"
    );
    check!(paths.windows(2).all(|w| w[0] < w[1]), "sorted and unique");
    Ok(())
}
