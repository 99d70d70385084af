//! `kiln shell REF --sandbox qemu`: a shell in a VM booted from a qcow2 overlay on the
//! layer's disk (a tree layer is first made a VM base, exactly as a `(sandbox qemu)`
//! stage's base is, through the builder). kiln's stdin is streamed to the shell (the
//! agent's Stdin frames, or ssh's stdin on an imported base); `--save NAME` commits the
//! overlay as a captured disk layer, as the namespace shell does for trees.

use crate::builder::build_all;
use crate::cli::{SandboxArg, ShellArgs, VmArgs};
use crate::cmd_shell::{base_config, captured_id, finish, report};
use anyhow::{bail, Context};
use kiln_build::BuildOptions;
use kiln_sandbox::{Outcome, RootFs, RunSpec, Sandbox, SandboxError};
use kiln_store::{FsStore, LayerId, Store, DISK_FILE};
use kiln_vm::sandbox::QemuSandbox;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub fn shell(store: &FsStore, layer: LayerId, args: &ShellArgs) -> anyhow::Result<ExitCode> {
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let info = store
        .get(&layer)?
        .with_context(|| format!("layer {layer} vanished"))?;
    let parent = if info.meta.disk {
        layer
    } else {
        vm_base_of(store, &layer, cancelled.clone())?
    };
    let _pin = store.pin(&parent)?;
    let config = base_config(store, &parent)?;
    let (uid, gid) = numeric(args.user.as_deref())?;
    let mut env = config.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    let boot = boot_dir(store, &parent)?;
    let id = captured_id(&parent, args.save.as_deref().unwrap_or(""))?;
    let _lock = store.lock_step(&id)?;
    let tmp = store.begin(&id, Some(&parent), false)?;
    let qemu = QemuSandbox {
        cancel: Some(cancelled),
        ..QemuSandbox::default()
    };
    let disk = tmp.dir.join(DISK_FILE);
    let backing = Path::new("../../result")
        .join(parent.as_str())
        .join(DISK_FILE);
    let ran = qemu.make_disk(&backing, &disk, false).and_then(|()| {
        let spec = RunSpec {
            root: RootFs::Disk {
                disk: disk.clone(),
                boot,
            },
            argv: vec![args.shell.clone().unwrap_or_else(|| "/bin/sh".into())],
            env,
            cwd: config.workdir.clone().unwrap_or_else(|| "/".into()),
            uid,
            gid,
            host_network: args.network.is_some(),
            mounts: Vec::new(),
            secrets: Vec::new(),
            hostname: "kiln".into(),
            fast_sync: false,
            interactive: true,
            trace: None,
        };
        let mut out: Box<dyn std::io::Write> = match args.json {
            true => Box::new(std::io::stderr()),
            false => Box::new(std::io::stdout()),
        };
        qemu.run(&spec, &mut out)
    });
    let status = match ran {
        Ok(Outcome::Exited(code)) => code,
        Ok(Outcome::Signalled(signal)) => 128 + signal,
        Err(SandboxError::Interrupted { .. }) => 130,
        Err(e) => {
            store.abort(tmp)?;
            return Err(e.into());
        }
    };
    let ending = finish(store, tmp, status, args.save.as_deref())?;
    report(&ending, args);
    Ok(ExitCode::from(ending.status.clamp(0, 255) as u8))
}

/// The VM base of the tree layer `tree`, made (or found) by the builder as for a
/// `(sandbox qemu)` stage on `(from layer:ID)`.
fn vm_base_of(
    store: &FsStore,
    tree: &LayerId,
    cancelled: Arc<AtomicBool>,
) -> anyhow::Result<LayerId> {
    let text = format!("((from layer:{tree}) (sandbox qemu))\n");
    let spec = kiln_spec::parse_file(&text, "(kiln shell --sandbox qemu)")?;
    let options = BuildOptions {
        cancelled,
        sandbox: kiln_spec::SandboxKind::Qemu,
        ..Default::default()
    };
    let vm = VmArgs {
        sandbox: SandboxArg::Qemu,
        qemu_cpus: 2,
        qemu_memory: 1024,
    };
    let context = store.scratch_dir("shell-vm")?;
    let mut out = std::io::stderr();
    let built = build_all(
        store,
        options,
        &vm,
        &spec,
        Path::new("(kiln shell)"),
        &context,
        &mut out,
    );
    let _ = store.remove_scratch(&context);
    Ok(built?.0)
}

/// The `boot/` directory of the VM base `layer` descends from.
fn boot_dir(store: &FsStore, layer: &LayerId) -> anyhow::Result<PathBuf> {
    let mut current = layer.clone();
    loop {
        let dir = store.layer_dir(&current).join("boot");
        if dir.is_dir() {
            return Ok(dir);
        }
        match store.get(&current)?.and_then(|i| i.meta.parent) {
            Some(parent) => current = parent,
            None => bail!("layer {layer} is a disk layer without a VM base below it (no boot/)"),
        }
    }
}

/// `--user` in a VM: UID[:GID] only (names would need the disk read on the host).
fn numeric(user: Option<&str>) -> anyhow::Result<(u32, u32)> {
    let Some(user) = user else {
        return Ok((0, 0));
    };
    let (u, g) = user.split_once(':').unwrap_or((user, user));
    match (u.parse(), g.parse()) {
        (Ok(uid), Ok(gid)) => Ok((uid, gid)),
        _ => bail!("--user {user}: with --sandbox qemu give UID[:GID]"),
    }
}
