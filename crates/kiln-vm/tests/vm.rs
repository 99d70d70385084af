//! The VM lifecycle against real QEMU under TCG: snapshots, forwards, console
//! waits, start-up errors, UEFI firmware, and no QEMU left behind.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use kiln_spec::{Check, CheckKind};
use kiln_vm::{run_checks, Accel, Boot, Firmware, Forward, Vm, VmConfig, VmError};
use sha2::{Digest, Sha256};
use support::*;

fn sha256(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// Boots the guest with a data disk that /init writes to; returns the image's
/// hash before and after, and the serial log.
fn boot_with_disk(snapshot: bool) -> (String, String, Vec<u8>, String) {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("data.raw");
    zero_disk(&image, 1 << 20);
    let before = sha256(&image);
    let log = dir.path().join("serial.log");
    let mut cfg = kernel_config("kiln.disk kiln.nonet");
    cfg.image = Some(image.clone());
    cfg.format = "raw".into();
    cfg.snapshot = snapshot;
    cfg.serial_log = Some(log.clone());

    let mut vm = Vm::start(cfg).unwrap();
    let pid = vm.pid();
    vm.wait_console(READY, Duration::from_secs(90)).unwrap();
    assert!(
        vm.serial_text().contains(DISK_WRITTEN),
        "{}",
        vm.serial_tail(20)
    );
    // The guest ignores ACPI power-off: shutdown falls back to killing (or, with
    // snapshot, QEMU quits at once); either way nothing is left behind.
    vm.shutdown().unwrap();
    assert!(process_gone(pid), "QEMU {pid} still exists after shutdown");
    drop(vm);
    let after = sha256(&image);
    let content = std::fs::read(&image).unwrap();
    (
        before,
        after,
        content,
        std::fs::read_to_string(log).unwrap(),
    )
}

#[test]
fn snapshot_leaves_the_image_unchanged() {
    let (before, after, content, log) = boot_with_disk(true);
    assert_eq!(before, after);
    assert!(content.iter().all(|&b| b == 0));
    assert!(log.contains(DISK_WRITTEN) && log.contains(READY), "{log}");
}

#[test]
fn without_snapshot_guest_writes_reach_the_image() {
    let (before, after, content, _) = boot_with_disk(false);
    assert_ne!(before, after);
    assert_eq!(&content[512..512 + DISK_MARKER.len()], DISK_MARKER);
}

#[test]
fn port_check_needs_the_guest_to_accept_and_drop_kills_qemu() {
    let mut cfg = kernel_config("kiln.nonet");
    cfg.forwards = vec![Forward {
        host: 0,
        guest: HTTP_PORT,
    }];
    let vm = Vm::start(cfg).unwrap();
    let pid = vm.pid();
    let host = vm.host_port(HTTP_PORT).expect("a forward for port 80");
    vm.wait_console(READY, Duration::from_secs(90)).unwrap();

    // The guest has no network at all, yet QEMU accepts on the host side and
    // holds the connection open: a plain connect would wrongly pass.
    let mut naive = std::net::TcpStream::connect(("127.0.0.1", host)).unwrap();
    naive.set_nonblocking(true).unwrap();
    let peeked = naive.read(&mut [0u8; 1]);
    assert!(
        matches!(&peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{peeked:?}"
    );

    let check = Check {
        name: None,
        timeout: 3,
        kind: CheckKind::Port { port: HTTP_PORT },
    };
    let results = run_checks(&vm, [&check], Duration::ZERO);
    assert!(!results[0].passed, "{results:?}");
    assert!(results[0].message.contains("did not answer"), "{results:?}");
    assert!(results[0].elapsed < Duration::from_secs(5), "{results:?}");

    let err = vm
        .wait_console("TEXT-NEVER-PRINTED", Duration::from_millis(300))
        .unwrap_err();
    assert!(
        matches!(&err, VmError::ConsoleTimeout { tail, .. } if tail.contains(READY)),
        "{err}"
    );

    drop(vm);
    assert!(process_gone(pid), "QEMU {pid} survived the drop of its Vm");
}

#[test]
fn explicit_forward_and_busy_port_errors() {
    // A port that is taken: QEMU fails, and its own explanation is reported.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = kernel_config("kiln.nonet");
    cfg.forwards = vec![Forward {
        host: port,
        guest: HTTP_PORT,
    }];
    let err = match Vm::start(cfg.clone()) {
        Ok(_) => panic!("QEMU started although port {port} is taken"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(matches!(err, VmError::QemuExited { .. }), "{text}");
    assert!(
        text.contains("forwarding") && text.contains(&port.to_string()),
        "{text}"
    );
    assert!(
        text.contains("hint: a forwarded host port is already in use"),
        "{text}"
    );

    // Once free, the same explicit port is used as asked.
    drop(taken);
    let vm = Vm::start(cfg).unwrap();
    assert_eq!(vm.host_port(HTTP_PORT), Some(port));
    assert_eq!(vm.host_port(CLOSED_PORT), None);
    assert_eq!(vm.accel(), Accel::Tcg);
}

#[test]
fn missing_qemu_binary_names_the_packages() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kernel_config("");
    cfg.qemu = dir.path().join("qemu-system-x86_64");
    let text = Vm::start(cfg.clone())
        .err()
        .expect("no QEMU there")
        .to_string();
    assert!(text.contains("apt-get install qemu-system-x86"), "{text}");
    assert!(!text.contains("ovmf"), "{text}");

    cfg.boot = Boot::Uefi;
    let text = Vm::start(cfg).err().expect("no QEMU there").to_string();
    assert!(
        text.contains("qemu-system-x86") && text.contains("ovmf"),
        "{text}"
    );
}

#[test]
fn missing_firmware_names_ovmf() {
    let mut cfg = VmConfig::new(Boot::Uefi);
    cfg.accel = Some(Accel::Tcg);
    cfg.firmware = Some(Firmware {
        code: "/nonexistent/OVMF_CODE.fd".into(),
        vars: "/nonexistent/OVMF_VARS.fd".into(),
    });
    let text = Vm::start(cfg).err().expect("no firmware there").to_string();
    assert!(text.contains("apt-get install ovmf"), "{text}");
}

#[test]
fn uefi_firmware_reaches_the_serial_console() {
    let firmware = Firmware::locate().expect("OVMF is installed (apt-get install ovmf)");
    let vars_before = sha256(&firmware.vars);
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("empty.raw");
    zero_disk(&image, 1 << 20);
    let mut cfg = VmConfig::with_image(Boot::Uefi, &image);
    cfg.accel = Some(Accel::Tcg);
    cfg.memory_mb = 256;
    cfg.cpus = 1;
    cfg.snapshot = true;
    let started = Instant::now();
    let mut vm = Vm::start(cfg).unwrap();
    // OVMF's boot manager reports on the serial console as it tries each device.
    vm.wait_console("BdsDxe", Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("no firmware output: {e}"));
    eprintln!("OVMF reached the console after {:?}", started.elapsed());
    vm.shutdown().unwrap();
    // The VM wrote to its private copy of the variable store, never to Debian's.
    assert_eq!(sha256(&firmware.vars), vars_before);
}

/// Run by `qemu_dies_with_its_parent` in a child process: starts a VM, prints
/// QEMU's pid and waits to be killed.
#[test]
#[ignore = "helper process for qemu_dies_with_its_parent"]
fn helper_start_a_vm_and_wait() {
    if std::env::var_os("KILN_VM_TEST_HELPER").is_none() {
        return;
    }
    let vm = Vm::start(kernel_config("kiln.nonet")).unwrap();
    println!("QEMU-PID {}", vm.pid());
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    loop {
        std::thread::park();
    }
}

#[test]
fn qemu_dies_with_its_parent() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // Orphans come to this process instead of the machine's init, so that the
    // test can reap QEMU itself and check that nothing is left.
    // SAFETY: plain prctl.
    assert_eq!(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) }, 0);
    let mut helper = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_start_a_vm_and_wait",
            "--ignored",
            "--nocapture",
        ])
        .env("KILN_VM_TEST_HELPER", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = std::io::BufReader::new(helper.stdout.take().unwrap());
    let pid: i32 = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|l| l.strip_prefix("QEMU-PID ").and_then(|p| p.parse().ok()))
        .expect("the helper printed QEMU's pid");
    let qemu = pidfd_open(pid);
    // SIGKILL: no destructor runs in the helper; only PR_SET_PDEATHSIG can act.
    helper.kill().unwrap();
    helper.wait().unwrap();
    let exited = wait_for_exit(qemu, Duration::from_secs(10));
    if !exited {
        // Clean up before failing; the orphan is this process's child now.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
    }
    let reaped = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    assert!(exited, "QEMU {pid} outlived the process that started it");
    assert!(reaped.is_ok(), "{reaped:?}");
    assert!(process_gone(pid as u32));
}

/// A pidfd for `pid` (it becomes readable once the process has exited).
fn pidfd_open(pid: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain syscall; the returned descriptor is owned from here on.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
}

fn wait_for_exit(pidfd: std::os::fd::OwnedFd, timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let mut poll = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let ready = unsafe { libc::poll(&mut poll, 1, timeout.as_millis() as i32) };
    ready == 1
}

#[test]
fn waits_and_checks_end_when_qemu_dies() {
    let mut cfg = kernel_config("kiln.nonet");
    cfg.forwards = vec![Forward {
        host: 0,
        guest: HTTP_PORT,
    }];
    let vm = Vm::start(cfg).unwrap();
    let started = Instant::now();
    let err = std::thread::scope(|s| {
        let waiter = s.spawn(|| vm.wait_console("TEXT-NEVER-PRINTED", Duration::from_secs(120)));
        let pid = nix::unistd::Pid::from_raw(vm.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGKILL).unwrap();
        waiter.join().unwrap().unwrap_err()
    });
    let text = err.to_string();
    assert!(matches!(err, VmError::QemuExited { .. }), "{text}");
    assert!(text.contains("killed by signal 9"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "{text}");

    let check = Check {
        name: None,
        timeout: 60,
        kind: CheckKind::Port { port: HTTP_PORT },
    };
    let started = Instant::now();
    let results = run_checks(&vm, [&check], Duration::ZERO);
    assert!(!results[0].passed);
    assert!(results[0].message.contains("QEMU exited"), "{results:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{results:?}");
}
