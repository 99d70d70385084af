//! `kiln base ls|rm|import|build`: VM bases for `(from vm:NAME)`.
//!
//! A registered base is a disk layer named `vm:NAME` in the store's `names/` (one
//! symlink, set atomically, and protected from `prune` like any name). What is needed to
//! drive it lives in the layer: an imported base's `boot/` holds `base.json` (kind `ssh`,
//! user, firmware, the imported file's sha256) and the user's private key `ssh_key`
//! (mode 600); a base kiln builds is an ordinary QEMU-sandbox VM base (kind `agent`,
//! driven by kiln-init), and a key pair kiln generated for it is kept in
//! `STORE/vm-bases/NAME.key` (removed by `kiln base rm`).

use crate::builder::build_all;
use crate::cli::{BaseBuildArgs, BaseCommand, BaseImportArgs, BaseRmArgs, JsonArg, VmArgs};
use anyhow::{bail, Context};
use kiln_build::BuildOptions;
use kiln_image::tools::qemu_img;
use kiln_store::{FsStore, LayerId, Store, DISK_FILE, VM_BASE_PREFIX};
use kiln_vm::ssh_runner::{BaseDescription, BaseKind, FirmwareKind, SshVm, BASE_FILE, KEY_FILE};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Disk formats `kiln base import` takes (qemu's names).
const FORMATS: &[&str] = &["qcow2", "raw", "vmdk", "vhdx", "vdi", "vpc"];

pub fn base(store_dir: &Path, cmd: BaseCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BaseCommand::Ls(json) => ls(store_dir, json),
        BaseCommand::Rm(args) => rm(store_dir, args),
        BaseCommand::Import(args) => import(store_dir, args),
        BaseCommand::Build(args) => build(store_dir, args),
    }
}

fn layer_name(name: &str) -> anyhow::Result<String> {
    let full = format!("{VM_BASE_PREFIX}{name}");
    if name.contains(':') || kiln_store::check_name(&full).is_err() {
        bail!("`{name}` is not a VM base name: use letters, digits, `-`, `_` and `.`, starting with a letter or digit");
    }
    Ok(full)
}

/// Where `kiln base build` keeps a key pair it generated for base `name`.
fn generated_key(store_dir: &Path, name: &str) -> PathBuf {
    store_dir.join("vm-bases").join(format!("{name}.key"))
}

fn ls(store_dir: &Path, json: JsonArg) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    let mut rows = Vec::new();
    for n in store.names()? {
        let Some(name) = n.name.strip_prefix(VM_BASE_PREFIX) else {
            continue;
        };
        let dir = store.layer_dir(&n.id);
        let desc = BaseDescription::read(&dir.join("boot")).unwrap_or(None);
        let key = match &desc {
            Some(_) => Some(dir.join("boot").join(KEY_FILE)),
            None => Some(generated_key(store_dir, name)).filter(|k| k.is_file()),
        };
        let present = store.get(&n.id)?.is_some();
        rows.push(serde_json::json!({
            "name": name,
            "id": n.id.as_str(),
            "kind": if desc.is_some() { "ssh" } else { "agent" },
            "user": desc.as_ref().map(|d| d.user.clone()).or_else(|| key.as_ref().map(|_| "build".to_string())),
            "firmware": desc.as_ref().map(|d| d.firmware),
            "sha256": desc.as_ref().map(|d| d.sha256.clone()),
            "key": key,
            "present": present,
        }));
    }
    if json.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<20}  {:<12}  {:<5}  {:<8}  DETAILS",
        "NAME", "ID", "KIND", "USER"
    );
    for r in &rows {
        let details = match (&r["sha256"], &r["key"], r["present"].as_bool()) {
            (_, _, Some(false)) => "(layer missing: import or build it again)".to_string(),
            (serde_json::Value::String(sha), _, _) => {
                format!(
                    "{} sha256:{}",
                    r["firmware"].as_str().unwrap_or(""),
                    &sha[..12.min(sha.len())]
                )
            }
            (_, serde_json::Value::String(key), _) => format!("key {key}"),
            _ => String::new(),
        };
        println!(
            "{:<20}  {:<12}  {:<5}  {:<8}  {details}",
            r["name"].as_str().unwrap_or(""),
            &r["id"].as_str().unwrap_or("")[..12],
            r["kind"].as_str().unwrap_or(""),
            r["user"].as_str().unwrap_or("-"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(store_dir: &Path, args: BaseRmArgs) -> anyhow::Result<ExitCode> {
    let full = layer_name(&args.name)?;
    let store = FsStore::open(store_dir)?;
    let Some(id) = store.remove_name(&full)? else {
        bail!("there is no VM base `{}` (see `kiln base ls`)", args.name);
    };
    let key = generated_key(store_dir, &args.name);
    for path in [key.clone(), key.with_extension("key.pub")] {
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
    }
    if args.json.json {
        println!(
            "{}",
            serde_json::json!({"removed": args.name, "id": id.as_str()})
        );
    } else {
        println!(
            "removed VM base {} (layer {id} stays until deleted or pruned)",
            args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Lower-case hex sha256 of a file, read in 1 MiB pieces.
fn sha256_file(path: &Path) -> anyhow::Result<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn digest_id(parts: &[&[u8]]) -> LayerId {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    LayerId::from_digest(&h.finalize())
}

/// OVMF when the disk has a GPT (protective MBR entry 0xEE), else SeaBIOS.
fn firmware_of(disk: &Path, scratch: &Path) -> anyhow::Result<FirmwareKind> {
    let head = scratch.join("head.raw");
    qemu_img::read_head(disk, "qcow2", &head, 34)?;
    let bytes = fs::read(&head).with_context(|| format!("reading {}", head.display()))?;
    let _ = fs::remove_file(&head);
    let mbr_ok = bytes.len() >= 512 && bytes[510..512] == [0x55, 0xAA];
    let gpt = mbr_ok && (0..4).any(|i| bytes[446 + 16 * i + 4] == 0xEE)
        || bytes.len() >= 520 && &bytes[512..520] == b"EFI PART";
    Ok(if gpt {
        FirmwareKind::Uefi
    } else {
        FirmwareKind::Bios
    })
}

fn import(store_dir: &Path, args: BaseImportArgs) -> anyhow::Result<ExitCode> {
    let full = layer_name(&args.name)?;
    let started = Instant::now();
    let file = fs::canonicalize(&args.file)
        .with_context(|| format!("the image {} cannot be read", args.file.display()))?;
    let key = fs::canonicalize(&args.key)
        .with_context(|| format!("the key {} cannot be read", args.key.display()))?;
    let key_bytes = fs::read(&key).with_context(|| format!("reading the key {}", key.display()))?;
    if !String::from_utf8_lossy(&key_bytes).contains("PRIVATE KEY") {
        bail!(
            "{} is not a private key (give the file without .pub, e.g. ~/.ssh/id_ed25519)",
            key.display()
        );
    }
    let info = qemu_img::info(&file)
        .with_context(|| format!("{} is not a disk image qemu-img reads", file.display()))?;
    if !FORMATS.contains(&info.format.as_str()) {
        bail!(
            "{}: format `{}` is not one kiln imports ({})",
            file.display(),
            info.format,
            FORMATS.join(", ")
        );
    }
    if info.virtual_size < 64 << 20 {
        bail!(
            "{}: a virtual size of {} bytes is too small for a bootable system",
            file.display(),
            info.virtual_size
        );
    }
    println!(
        "kiln: {} is {} with a virtual size of {} MiB",
        file.display(),
        info.format,
        info.virtual_size >> 20
    );
    let sha256 = sha256_file(&file)?;
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let id = digest_id(&[
        b"kiln imported VM base",
        sha256.as_bytes(),
        args.user.as_bytes(),
        &key_bytes,
    ]);
    let _lock = store.lock_step(&id)?;
    if store.get(&id)?.is_none() {
        let tmp = store.begin(&id, None, true)?;
        let made = make_import(&tmp.dir, &file, &info, &sha256, &args, &key_bytes, started);
        match made {
            Ok(()) => {
                let description = format!(
                    "VM base {} imported from {} (sha256:{})",
                    args.name,
                    file.display(),
                    &sha256[..12]
                );
                store.commit(tmp, &description, None)?;
            }
            Err(e) => {
                store.abort(tmp)?;
                return Err(e);
            }
        }
    } else {
        println!(
            "kiln: this image, user and key are in the store already ({})",
            id.short()
        );
    }
    store.set_name(&full, &id)?;
    if args.json.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "id": id.as_str(), "sha256": sha256})
        );
    } else {
        println!(
            "---> VM base {} is \"{id}\" (sha256:{sha256}); build on it with (from vm:{})",
            args.name, args.name
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Fills the temporary layer `dir`: the disk as qcow2, `boot/` with the description and
/// the key, then boots it once (on a throw-away snapshot) until SSH answers.
fn make_import(
    dir: &Path,
    file: &Path,
    info: &qemu_img::ImageInfo,
    sha256: &str,
    args: &BaseImportArgs,
    key: &[u8],
    started: Instant,
) -> anyhow::Result<()> {
    let disk = dir.join(DISK_FILE);
    qemu_img::convert_format(file, &info.format, &disk, "qcow2")
        .with_context(|| format!("converting {} into the store", file.display()))?;
    let firmware = firmware_of(&disk, dir)?;
    let boot = dir.join("boot");
    fs::create_dir_all(&boot).with_context(|| format!("creating {}", boot.display()))?;
    let key_path = boot.join(KEY_FILE);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&key_path)
            .with_context(|| format!("writing {}", key_path.display()))?;
        f.write_all(key)?;
    }
    fs::set_permissions(&key_path, fs::Permissions::from_mode(0o600))?;
    let desc = BaseDescription {
        kind: BaseKind::Ssh,
        user: args.user.clone(),
        firmware,
        sha256: sha256.to_string(),
        source: file.display().to_string(),
        format: info.format.clone(),
        virtual_size: info.virtual_size,
    };
    fs::write(boot.join(BASE_FILE), serde_json::to_vec_pretty(&desc)?)
        .with_context(|| format!("writing {}", boot.join(BASE_FILE).display()))?;
    println!(
        "kiln: booting it ({}) until `ssh {}@…` answers (at most {} s)",
        match firmware {
            FirmwareKind::Uefi => "UEFI",
            FirmwareKind::Bios => "BIOS",
        },
        args.user,
        args.timeout
    );
    let mut cfg = desc.config(&disk);
    cfg.snapshot = true;
    cfg.memory_mb = args.qemu_memory;
    let timeout = Duration::from_secs(args.timeout);
    let vm = SshVm::boot(cfg, &args.user, &key_path, timeout)
        .with_context(|| format!("{} did not answer on SSH: not registered", file.display()))?;
    println!(
        "kiln: it answered on SSH {:.1} s after the import started",
        started.elapsed().as_secs_f64()
    );
    drop(vm);
    Ok(())
}

/// The files the generated spec of `kiln base build` copies in.
const DHCP_NETWORK: &str = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n";
const SSHD_CONFIG: &str = "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin no\nPubkeyAuthentication yes\n";
const HOSTKEYS_UNIT: &str = "[Unit]\nDescription=SSH host keys, made at first boot (kiln base)\nBefore=ssh.service\nConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key\n\n[Service]\nType=oneshot\nExecStart=/usr/bin/ssh-keygen -A\nRemainAfterExit=yes\n\n[Install]\nWantedBy=multi-user.target\nRequiredBy=ssh.service\n";
const SETUP: &str = r#"set -e
useradd --create-home --shell /bin/bash --user-group build
usermod -p '*' build
install -d -m 700 -o build -g build /home/build/.ssh
install -m 600 -o build -g build /etc/kiln-base/authorized_keys /home/build/.ssh/authorized_keys
rm -rf /etc/kiln-base
echo 'build ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/90-kiln-build
chmod 440 /etc/sudoers.d/90-kiln-build
chmod 644 /etc/systemd/network/80-kiln-dhcp.network /etc/ssh/sshd_config.d/90-kiln.conf /etc/systemd/system/kiln-ssh-hostkeys.service
systemctl enable systemd-networkd kiln-ssh-hostkeys.service ssh.service
rm -f /etc/ssh/ssh_host_*
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id /root/.bash_history /home/build/.bash_history
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /tmp/* /var/tmp/*
"#;

/// The spec `kiln base build` builds (namespace sandbox), from `from`.
fn base_spec(from: &str) -> String {
    format!(
        r#"((from {from})
 (run (network host)
      (shell "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 systemd-sysv udev dbus openssh-server sudo ca-certificates && apt-get clean"))
 (copy (src authorized_keys) (dst /etc/kiln-base/authorized_keys))
 (copy (src 80-kiln-dhcp.network) (dst /etc/systemd/network/80-kiln-dhcp.network))
 (copy (src 90-kiln.conf) (dst /etc/ssh/sshd_config.d/90-kiln.conf))
 (copy (src kiln-ssh-hostkeys.service) (dst /etc/systemd/system/kiln-ssh-hostkeys.service))
 (copy (src setup.sh) (dst /etc/kiln-base/setup.sh))
 (run (shell "sh /etc/kiln-base/setup.sh")))
"#
    )
}

fn build(store_dir: &Path, args: BaseBuildArgs) -> anyhow::Result<ExitCode> {
    let full = layer_name(&args.name)?;
    if !args.from.starts_with("debian:") {
        bail!(
            "--from {}: `kiln base build` starts from a Debian base (e.g. debian:bookworm)",
            args.from
        );
    }
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let context = store.scratch_dir("base-build")?;
    let result = build_in(&store, store_dir, &context, &full, &args);
    let _ = store.remove_scratch(&context);
    let (id, key) = result?;
    if args.json.json {
        println!(
            "{}",
            serde_json::json!({"name": args.name, "id": id.as_str(), "key": key})
        );
    } else {
        println!(
            "---> VM base {} is \"{id}\"; build on it with (from vm:{})",
            args.name, args.name
        );
        if let Some(key) = key {
            println!(
                "     log in as build with {} (kiln run … then ssh -i)",
                key.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn build_in(
    store: &FsStore,
    store_dir: &Path,
    context: &Path,
    full: &str,
    args: &BaseBuildArgs,
) -> anyhow::Result<(LayerId, Option<PathBuf>)> {
    let write = |name: &str, text: &str| {
        fs::write(context.join(name), text)
            .with_context(|| format!("writing {name} in {}", context.display()))
    };
    // The key: the given public key, or a new pair kept in vm-bases/ once all went well.
    let staged = context.join("id_ed25519");
    let public = match &args.key {
        Some(path) => {
            let text = fs::read_to_string(path)
                .with_context(|| format!("reading the public key {}", path.display()))?;
            if !text.trim_start().starts_with("ssh-") && !text.trim_start().starts_with("ecdsa-") {
                bail!(
                    "{} is not an OpenSSH public key (give the .pub file)",
                    path.display()
                );
            }
            text
        }
        None => {
            kiln_vm::ssh_keygen::generate(&staged, &format!("build@kiln-base-{}", args.name))?;
            fs::read_to_string(staged.with_extension("pub"))?
        }
    };
    write("authorized_keys", &public)?;
    write("80-kiln-dhcp.network", DHCP_NETWORK)?;
    write("90-kiln.conf", SSHD_CONFIG)?;
    write("kiln-ssh-hostkeys.service", HOSTKEYS_UNIT)?;
    write("setup.sh", SETUP)?;
    let text = base_spec(&args.from);
    let spec = kiln_spec::parse_file(&text, "(kiln base build)")?;
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .context("installing the Ctrl-C handler")?;
    }
    let options = |sandbox| BuildOptions {
        cancelled: cancelled.clone(),
        source_date_epoch: Some(crate::cmd_image::source_date_epoch(&text).unwrap_or(0)),
        sandbox,
        ..Default::default()
    };
    let mut out: Box<dyn Write> = match args.json.json {
        true => Box::new(std::io::stderr()),
        false => Box::new(std::io::stdout()),
    };
    let vm: VmArgs = args.vm.clone();
    let (tree, _) = build_all(
        store,
        options(kiln_spec::SandboxKind::Chroot),
        &vm,
        &spec,
        Path::new("(kiln base build)"),
        context,
        &mut out,
    )?;
    // The same tree as a VM base: the QEMU sandbox's make_base (kernel, kiln's initramfs).
    let vm_text = format!("((from layer:{tree}) (sandbox qemu))\n");
    let vm_spec = kiln_spec::parse_file(&vm_text, "(kiln base build)")?;
    let (id, _) = build_all(
        store,
        options(kiln_spec::SandboxKind::Qemu),
        &vm,
        &vm_spec,
        Path::new("(kiln base build)"),
        context,
        &mut out,
    )?;
    drop(out);
    let kept = if args.key.is_none() {
        let name = full.strip_prefix(VM_BASE_PREFIX).unwrap_or(full);
        let dest = generated_key(store_dir, name);
        let dir = dest.parent().expect("in vm-bases/");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::rename(staged.with_extension("pub"), dest.with_extension("key.pub"))
            .with_context(|| format!("keeping the public key in {}", dir.display()))?;
        fs::rename(&staged, &dest)
            .with_context(|| format!("keeping the key at {}", dest.display()))?;
        Some(dest)
    } else {
        None
    };
    store.set_name(full, &id)?;
    Ok((id, kept))
}
