//! `kiln shell`: a shell in a fresh temporary layer on top of a stored one, through the
//! namespace sandbox; with `--save NAME` a clean exit commits the layer ("captured") and
//! points NAME at it. `kiln names` lists and removes names.
//!
//! The temporary layer is an ordinary `result-tmp/<id>` under its step lock, so a kiln
//! killed mid-shell leaves nothing the next open does not purge.

use crate::cli::{NamesArgs, NetworkArg, ShellArgs, ShellSandboxArg};
use crate::layers::resolve_id;
use anyhow::{bail, Context};
use kiln_build::context;
use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_sandbox::{Outcome, RootFs, RunSpec, Sandbox, SandboxError};
use kiln_store::{BaseConfig, FsStore, LayerId, Store};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// How the shell ended, and what became of its layer.
pub(crate) struct Ending {
    /// The shell's exit code (128 + N when killed by signal N, 130 when interrupted).
    pub(crate) status: i32,
    pub(crate) saved: Option<LayerId>,
}

pub fn shell(store_dir: &Path, args: ShellArgs) -> anyhow::Result<ExitCode> {
    if let Some(name) = &args.save {
        kiln_store::check_name(name)?;
    }
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let store = FsStore::open(store_dir)?;
    let parent = resolve_id(&store, &args.layer)?;
    if args.sandbox == ShellSandboxArg::Qemu {
        return crate::cmd_shell_vm::shell(&store, parent, &args);
    }
    let _pin = store.pin(&parent)?;
    let id = captured_id(&parent, args.save.as_deref().unwrap_or(""))?;
    let chain = store.chain(&parent)?;
    let mut spec = shell_spec(&store, &parent, &chain, &args)?;
    let _lock = store.lock_step(&id)?;
    let tmp = store.begin(&id, Some(&parent), false)?;
    spec.root = RootFs::Overlay {
        lower: chain,
        upper: tmp.rootfs.clone(),
        work: tmp.work.clone(),
    };
    let mut out: Box<dyn Write> = match args.json {
        true => Box::new(std::io::stderr()),
        false => Box::new(std::io::stdout()),
    };
    let ended = run_shell(&spec, &mut out);
    drop(out);
    let status = match ended {
        Ok(status) => status,
        Err(e) => {
            store.abort(tmp)?;
            return Err(e.into());
        }
    };
    let ending = finish(&store, tmp, status, args.save.as_deref())?;
    report(&ending, &args);
    Ok(ExitCode::from(ending.status.clamp(0, 255) as u8))
}

/// Runs the shell; returns its exit code (130 when kiln or the shell was interrupted).
fn run_shell(spec: &RunSpec, out: &mut dyn Write) -> Result<i32, SandboxError> {
    let cancelled = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, cancelled.clone())
            .map_err(|e| SandboxError::sys("install the Ctrl-C handler", e))?;
    }
    let sandbox = NamespaceSandbox::new().with_cancel_flag(cancelled);
    match sandbox.run(spec, out) {
        Ok(Outcome::Exited(code)) => Ok(code),
        Ok(Outcome::Signalled(signal)) => Ok(128 + signal),
        Err(SandboxError::Interrupted { .. }) => Ok(130),
        Err(e) => Err(e),
    }
}

/// Commits the layer and moves the name to it when asked to and the shell ended well (or
/// the user confirms); otherwise throws the layer away.
pub(crate) fn finish(
    store: &FsStore,
    tmp: kiln_store::TmpLayer,
    status: i32,
    save: Option<&str>,
) -> anyhow::Result<Ending> {
    let keep = save.is_some() && (status == 0 || confirm_save(status)?);
    let Some(name) = save.filter(|_| keep) else {
        store.abort(tmp)?;
        return Ok(Ending {
            status,
            saved: None,
        });
    };
    let info = store.commit(tmp, &format!("captured: {name} (kiln shell)"), None)?;
    store.set_name(name, &info.meta.id)?;
    Ok(Ending {
        status,
        saved: Some(info.meta.id),
    })
}

/// On a terminal, asks whether to keep the changes of a shell that failed; elsewhere no.
fn confirm_save(status: i32) -> anyhow::Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    eprint!("kiln: the shell ended with status {status}; save anyway? [y/N] ");
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer")?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

pub(crate) fn report(ending: &Ending, args: &ShellArgs) {
    if args.json {
        let json = serde_json::json!({
            "id": ending.saved.as_ref().map(|id| id.as_str()),
            "name": ending.saved.as_ref().and(args.save.as_deref()),
            "saved": ending.saved.is_some(),
            "status": ending.status,
        });
        println!("{json}");
        return;
    }
    match (&ending.saved, &args.save) {
        (Some(id), Some(name)) => println!("---> saved as \"{id}\" (name {name})"),
        (None, Some(_)) => eprintln!(
            "kiln: the shell ended with status {}: nothing saved (exit 0 to save)",
            ending.status
        ),
        _ => {}
    }
}

/// The run spec of the shell, but for its root (set once the temporary layer exists): the layer's environment and working
/// directory (from its base's config), the chosen shell and user, kiln's TERM.
fn shell_spec(
    store: &FsStore,
    parent: &LayerId,
    chain: &[PathBuf],
    args: &ShellArgs,
) -> anyhow::Result<RunSpec> {
    let bottom = chain.last().cloned().unwrap_or_default();
    let ctx = context::initial(&base_config(store, parent)?, &bottom);
    let mut env = ctx.env;
    if let Ok(term) = std::env::var("TERM") {
        context::set_env(&mut env, "TERM", &term);
    }
    let shell = match &args.shell {
        Some(shell) => shell.clone(),
        None if in_chain(chain, &["bin/bash", "usr/bin/bash"]) => "/bin/bash".into(),
        None => "/bin/sh".into(),
    };
    let (uid, gid) = numeric_user(chain, args.user.as_deref())?;
    Ok(RunSpec {
        root: RootFs::Dir(PathBuf::new()),
        argv: vec![shell],
        env,
        cwd: ctx.workdir,
        uid,
        gid,
        host_network: args.network == Some(NetworkArg::Host),
        mounts: Vec::new(),
        secrets: Vec::new(),
        hostname: "kiln".into(),
        fast_sync: true,
        interactive: true,
        trace: None,
    })
}

/// The config of the base at the bottom of `id`'s chain (env, workdir).
pub(crate) fn base_config(store: &FsStore, id: &LayerId) -> anyhow::Result<BaseConfig> {
    let mut current = id.clone();
    loop {
        let info = store
            .get(&current)?
            .with_context(|| format!("layer {current} vanished"))?;
        match (info.meta.config, info.meta.parent) {
            (Some(config), _) => return Ok(config),
            (None, Some(parent)) => current = parent,
            (None, None) => return Ok(BaseConfig::default()),
        }
    }
}

/// Whether any layer of the chain holds one of `paths` (whiteouts are not looked at).
fn in_chain(chain: &[PathBuf], paths: &[&str]) -> bool {
    chain
        .iter()
        .any(|dir| paths.iter().any(|p| dir.join(p).symlink_metadata().is_ok()))
}

/// `--user`: UID[:GID] as given (GID defaults to UID), a name from the topmost
/// /etc/passwd of the chain, or root.
fn numeric_user(chain: &[PathBuf], user: Option<&str>) -> anyhow::Result<(u32, u32)> {
    let Some(user) = user else {
        return Ok((0, 0));
    };
    let (first, second) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if let Ok(uid) = first.parse::<u32>() {
        let gid = match second {
            Some(g) => g
                .parse()
                .with_context(|| format!("--user {user}: `{g}` is not a numeric gid"))?,
            None => uid,
        };
        return Ok((uid, gid));
    }
    let passwd = chain
        .iter()
        .find_map(|dir| std::fs::read_to_string(dir.join("etc/passwd")).ok())
        .unwrap_or_default();
    match context::lookup_passwd(&passwd, user) {
        Some(ids) => Ok(ids),
        None => bail!("--user {user}: no such user in the layer's /etc/passwd; give UID[:GID] or one of its users"),
    }
}

/// A fresh id no build step can have: sha256 over a tag of its own, the parent, the name,
/// the time and 16 random bytes.
pub(crate) fn captured_id(parent: &LayerId, name: &str) -> anyhow::Result<LayerId> {
    use sha2::Digest;
    let mut random = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .context("reading /dev/urandom for a captured layer's id")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut h = sha2::Sha256::new();
    for part in [
        b"kiln captured layer".as_slice(),
        parent.as_str().as_bytes(),
        name.as_bytes(),
        &nanos.to_le_bytes(),
        &random,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    Ok(LayerId::from_digest(&h.finalize()))
}

pub fn names(store_dir: &Path, args: NamesArgs) -> anyhow::Result<ExitCode> {
    let store = FsStore::open(store_dir)?;
    if let Some(name) = &args.rm {
        let Some(id) = store.remove_name(name)? else {
            bail!("there is no layer name `{name}` (see `kiln names`)");
        };
        match args.json.json {
            true => println!(
                "{}",
                serde_json::json!({ "removed": name, "id": id.as_str() })
            ),
            false => println!("removed name {name} (layer {id} stays until deleted or pruned)"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let names = store.names()?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&names)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:<24}  {:<12}  DESCRIPTION", "NAME", "ID");
    for n in &names {
        let description = match store.get(&n.id)? {
            Some(info) => info.meta.description,
            None => "(layer missing: save it again or remove the name)".into(),
        };
        println!("{:<24}  {:<12}  {description}", n.name, n.id.short());
    }
    Ok(ExitCode::SUCCESS)
}
