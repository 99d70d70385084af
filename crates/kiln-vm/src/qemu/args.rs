//! Turns a [`VmConfig`] into QEMU's command line. Pure: no files are touched.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use super::{Boot, ConsoleMode, Firmware, Network, VmConfig};
use crate::accel::Accel;

/// What the command line needs beyond the configuration, prepared by the caller.
pub(super) struct Runtime<'a> {
    pub accel: Accel,
    /// Firmware and the VM's private copy of its variable store (UEFI only).
    pub uefi: Option<(&'a Firmware, &'a Path)>,
    /// The inherited, already-listening QMP socket.
    pub qmp_fd: i32,
    /// Where QEMU listens for the agent port's host end ([`VmConfig::agent`]).
    pub agent_socket: Option<&'a Path>,
}

/// A q35 PC without the built-in devices a kiln VM never uses (its disk and network
/// are virtio, its console serial): no AHCI, SMBus, PS/2 or VMware port, so the guest
/// spends no boot time probing them or loading their drivers.
const MACHINE: &str = "q35,sata=off,smbus=off,i8042=off,vmport=off";

/// The full argument list (without the program name).
pub(super) fn build(cfg: &VmConfig, rt: &Runtime) -> Vec<OsString> {
    let mut a = Args::default();
    a.push_all(["-name", "kiln", "-nodefaults", "-no-user-config"]);
    a.push_all(["-display", "none", "-machine", MACHINE]);
    a.push_all(rt.accel.qemu_args());
    a.push_all(["-m", &cfg.memory_mb.to_string()]);
    a.push_all(["-smp", &cfg.cpus.to_string()]);
    boot(&mut a, cfg, rt);
    disk(&mut a, cfg);
    a.push_all(["-nic", &nic(cfg)]);
    if let Some(socket) = rt.agent_socket {
        agent_port(&mut a, socket);
    }
    if cfg.no_reboot {
        a.push("-no-reboot");
    }
    console(&mut a, cfg);
    a.push("-chardev");
    a.push(format!("socket,id=qmp,fd={},server=on,wait=off", rt.qmp_fd));
    a.push_all(["-mon", "chardev=qmp,mode=control"]);
    if cfg.snapshot {
        a.push("-snapshot");
    }
    a.0
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, arg: impl Into<OsString>) {
        self.0.push(arg.into());
    }

    fn push_all<'s>(&mut self, args: impl IntoIterator<Item = &'s str>) {
        self.0.extend(args.into_iter().map(OsString::from));
    }

    /// `prefix` followed by a path escaped for QEMU's `key=value,…` syntax.
    fn push_with_path(&mut self, prefix: &str, path: &Path, suffix: &str) {
        let mut arg = OsString::from(prefix);
        arg.push(escape_opt(path.as_os_str()));
        arg.push(suffix);
        self.0.push(arg);
    }
}

/// In QEMU option strings a comma separates options; a literal one is doubled.
pub(crate) fn escape_opt(value: &OsStr) -> OsString {
    let mut out = Vec::with_capacity(value.len());
    for &b in value.as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

fn boot(a: &mut Args, cfg: &VmConfig, rt: &Runtime) {
    match &cfg.boot {
        Boot::Uefi => {
            if let Some((fw, vars)) = rt.uefi {
                a.push("-drive");
                a.push_with_path(
                    "if=pflash,format=raw,unit=0,readonly=on,file=",
                    &fw.code,
                    "",
                );
                // Read-only: OVMF then keeps its variables in RAM (its emulated store)
                // instead of writing them to the emulated flash, which under TCG costs
                // ~1.3 s of every boot (its first-boot boot options, then systemd-boot's).
                // Nothing is lost: `vars` is this VM's private copy, deleted with it.
                a.push("-drive");
                a.push_with_path("if=pflash,format=raw,unit=1,readonly=on,file=", vars, "");
            }
        }
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            a.push("-kernel");
            a.push(kernel.as_os_str());
            if let Some(initrd) = initrd {
                a.push("-initrd");
                a.push(initrd.as_os_str());
            }
            a.push("-append");
            a.push(kernel_cmdline(cmdline, rt.accel));
        }
        Boot::Disk => {}
    }
}

/// Kernel parameters added when the CPU is emulated. The crypto self-tests check each
/// algorithm's implementation against the CPU it runs on; under TCG that CPU is QEMU's
/// translator, and the tests cost about a second of every boot. (With `fips=1` the
/// kernel runs them regardless.)
const TCG_KERNEL_ARGS: [(&str, &str); 1] = [("cryptomgr.notests", "cryptomgr.notests=1")];

/// The image's command line plus, under TCG, [`TCG_KERNEL_ARGS`] it does not set itself.
fn kernel_cmdline(cmdline: &str, accel: Accel) -> String {
    let mut out = cmdline.to_string();
    if accel == Accel::Tcg {
        for (key, arg) in TCG_KERNEL_ARGS {
            let set = cmdline
                .split_whitespace()
                .any(|w| w.split('=').next() == Some(key));
            if !set {
                out.push(' ');
                out.push_str(arg);
            }
        }
    }
    out
}

fn disk(a: &mut Args, cfg: &VmConfig) {
    let extra = cfg.extra_disks.iter().map(|d| (&d.path, &d.format));
    for (image, format) in cfg.image.iter().map(|i| (i, &cfg.format)).chain(extra) {
        a.push("-drive");
        let suffix = format!(",format={format},if=virtio,cache=writeback");
        a.push_with_path("file=", image, &suffix);
    }
}

/// The agent's virtio-serial port, named as kiln-init looks for it; QEMU listens on
/// `socket` and kiln connects once QEMU is up.
fn agent_port(a: &mut Args, socket: &Path) {
    a.push_all(["-device", "virtio-serial-pci,id=kiln-serial"]);
    a.push("-chardev");
    a.push_with_path("socket,id=kiln-agent,server=on,wait=off,path=", socket, "");
    a.push("-device");
    a.push(format!(
        "virtserialport,bus=kiln-serial.0,chardev=kiln-agent,name={}",
        kiln_init::agent_proto::PORT_NAME
    ));
}

/// User-mode networking, by default with `restrict=on`: the guest reaches nothing but
/// the forwarded ports, never the host's network.
fn nic(cfg: &VmConfig) -> String {
    let mut nic = String::from("user,model=virtio-net-pci");
    if cfg.network == Network::Restricted {
        nic.push_str(",restrict=on");
    }
    for f in &cfg.forwards {
        nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:{}", f.host, f.guest));
    }
    nic
}

fn console(a: &mut Args, cfg: &VmConfig) {
    match cfg.console {
        // QEMU writes the serial port to its stdout, a pipe that `Vm` reads.
        ConsoleMode::Capture => {
            a.push_all(["-chardev", "stdio,id=con0,signal=off"]);
            a.push_all(["-serial", "chardev:con0"]);
        }
        // The terminal, shared by serial and monitor (Ctrl-A C switches, Ctrl-A X
        // quits); QEMU itself can tee it into the log.
        ConsoleMode::Interactive => {
            a.push("-chardev");
            match &cfg.serial_log {
                Some(log) => a.push_with_path("stdio,id=con0,mux=on,signal=off,logfile=", log, ""),
                None => a.push("stdio,id=con0,mux=on,signal=off"),
            }
            a.push_all([
                "-serial",
                "chardev:con0",
                "-mon",
                "chardev=con0,mode=readline",
            ]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qemu::Forward;
    use std::path::PathBuf;

    fn text(cfg: &VmConfig, rt: &Runtime) -> String {
        build(cfg, rt)
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn tcg_kernel_args_only_under_tcg_and_never_twice() {
        assert_eq!(
            kernel_cmdline("root=/dev/vda1", Accel::Kvm),
            "root=/dev/vda1"
        );
        assert_eq!(
            kernel_cmdline("root=/dev/vda1", Accel::Tcg),
            "root=/dev/vda1 cryptomgr.notests=1"
        );
        assert_eq!(
            kernel_cmdline("cryptomgr.notests=0 ro", Accel::Tcg),
            "cryptomgr.notests=0 ro",
            "the image's own setting wins"
        );
    }

    fn rt() -> Runtime<'static> {
        Runtime {
            accel: Accel::Tcg,
            uefi: None,
            qmp_fd: 7,
            agent_socket: None,
        }
    }

    #[test]
    fn agent_port_extra_disks_and_full_network() {
        let mut cfg = VmConfig::with_image(Boot::Disk, "/l/disk.qcow2");
        cfg.agent = true;
        cfg.no_reboot = true;
        cfg.network = Network::Full;
        cfg.extra_disks = vec![crate::qemu::ExtraDisk {
            path: "/c/a,b.qcow2".into(),
            format: "qcow2".into(),
        }];
        let socket = PathBuf::from("/tmp/vm/agent.sock");
        let with_agent = Runtime {
            agent_socket: Some(&socket),
            ..rt()
        };
        let t = text(&cfg, &with_agent);
        assert!(
            t.contains("-device virtio-serial-pci,id=kiln-serial"),
            "{t}"
        );
        assert!(
            t.contains("socket,id=kiln-agent,server=on,wait=off,path=/tmp/vm/agent.sock"),
            "{t}"
        );
        assert!(
            t.contains("virtserialport,bus=kiln-serial.0,chardev=kiln-agent,name=kiln.agent"),
            "{t}"
        );
        let first = t
            .find("file=/l/disk.qcow2,format=qcow2")
            .expect("root disk");
        let second = t
            .find("file=/c/a,,b.qcow2,format=qcow2,if=virtio")
            .expect("extra");
        assert!(first < second, "the root disk comes first: {t}");
        assert!(
            t.contains("-nic user,model=virtio-net-pci ") && !t.contains("restrict"),
            "{t}"
        );
        assert!(t.contains("-no-reboot"), "{t}");
        let t = text(&VmConfig::new(Boot::Disk), &rt());
        assert!(
            t.contains("restrict=on") && !t.contains("virtio-serial") && !t.contains("-no-reboot"),
            "{t}"
        );
    }

    #[test]
    fn kernel_boot_with_forwards_and_snapshot() {
        let mut cfg = VmConfig::with_image(
            Boot::Kernel {
                kernel: "/k/vmlinuz".into(),
                initrd: Some("/k/initrd".into()),
                cmdline: "console=ttyS0 quiet".into(),
            },
            "/img/disk,1.qcow2",
        );
        cfg.forwards = vec![
            Forward { host: 0, guest: 80 },
            Forward {
                host: 2222,
                guest: 22,
            },
        ];
        cfg.snapshot = true;
        let args = build(&cfg, &rt());
        let t = text(&cfg, &rt());
        assert!(t.contains("-machine q35,sata=off"), "{t}");
        assert!(t.contains("-accel tcg,thread=multi -cpu qemu64,"), "{t}");
        assert!(t.contains("-m 1024 -smp 2"), "{t}");
        assert!(t.contains("-kernel /k/vmlinuz -initrd /k/initrd"), "{t}");
        // the cmdline stays one argument; under TCG without the crypto self-tests
        assert!(args
            .iter()
            .any(|a| a == "console=ttyS0 quiet cryptomgr.notests=1"));
        assert!(
            t.contains("file=/img/disk,,1.qcow2,format=qcow2,if=virtio"),
            "{t}"
        );
        assert!(t.contains(
            "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:0-:80,hostfwd=tcp:127.0.0.1:2222-:22"
        ), "{t}");
        assert!(t.contains("socket,id=qmp,fd=7,server=on,wait=off"), "{t}");
        assert!(t.ends_with("-snapshot"), "{t}");
        assert!(
            t.contains("-serial chardev:con0") && !t.contains("mux=on"),
            "{t}"
        );
    }

    #[test]
    fn uefi_maps_code_and_a_private_vars_copy_read_only() {
        let fw = Firmware {
            code: "/fw/CODE.fd".into(),
            vars: "/fw/VARS.fd".into(),
        };
        let vars = PathBuf::from("/tmp/vm/VARS.fd");
        let cfg = VmConfig::new(Boot::Uefi);
        let rt = Runtime {
            accel: Accel::Kvm,
            uefi: Some((&fw, &vars)),
            qmp_fd: 3,
            agent_socket: None,
        };
        let t = text(&cfg, &rt);
        assert!(
            t.contains("if=pflash,format=raw,unit=0,readonly=on,file=/fw/CODE.fd"),
            "{t}"
        );
        assert!(
            t.contains("if=pflash,format=raw,unit=1,readonly=on,file=/tmp/vm/VARS.fd"),
            "{t}"
        );
        assert!(!t.contains("/fw/VARS.fd"), "{t}");
        assert!(t.contains("-accel kvm -cpu host"), "{t}");
        assert!(!t.contains("-snapshot") && !t.contains("-kernel"), "{t}");
    }

    #[test]
    fn interactive_console_muxes_monitor_and_logs() {
        let mut cfg = VmConfig::new(Boot::Disk);
        cfg.console = ConsoleMode::Interactive;
        cfg.serial_log = Some("/logs/serial.log".into());
        let t = text(&cfg, &rt());
        assert!(
            t.contains("stdio,id=con0,mux=on,signal=off,logfile=/logs/serial.log"),
            "{t}"
        );
        assert!(t.contains("-mon chardev=con0,mode=readline"), "{t}");
    }
}
