//! kiln's builder: walks a spec, computes each step's id, reuses stored results, and
//! runs what is missing in a sandbox, committing each result atomically.
//!
//! The builder talks to the world only through the seams [`Store`], [`Sandbox`] and
//! [`Fetcher`] plus overlay mounts (for `copy` and chain flattening), so its caching
//! logic is unit-tested with mocks and its behaviour end to end with the real ones.
//!
//! Concurrency: before building a step the builder takes the store's lock for that
//! step id and looks again, so two builds of the same spec share every identical step.

pub mod context;
pub mod copy;
mod error;
pub mod layer_cache;
pub mod output;
pub mod view;

pub use error::BuildError;

use kiln_fetch::{parse_base, BaseSource, Fetcher, ResolvedBase};
use kiln_sandbox::{
    mount, BindMount, CopyEntry, CopyKind, Payload, RootFs, RunSpec, Sandbox, Secret,
};
use kiln_spec::{
    hash, Bootstrap, Copy, CopyFrom, LayerId, Located, ManifestKind, Op, Run, SandboxKind, Spec,
    StepContext, User,
};
use kiln_store::{BaseConfig, Store, DISK_FILE};
use layer_cache::{Pushed, RegistryCache};
use output::StepOutput;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use view::TreeView;

/// Chains deeper than this are flattened into a full tree (overlayfs stacks at most a
/// few hundred layers, and its mount options must fit in one page).
pub const DEFAULT_FLATTEN_DEPTH: usize = 100;

/// Bytes of overlay mount options we allow ourselves (the kernel takes one page, 4096).
const MOUNT_OPTIONS_BUDGET: usize = 3900;

/// Knobs of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Make the sync family of syscalls no-ops inside `run` steps.
    pub fast_sync: bool,
    /// Secret values by id, from `--secret ID:FILE`.
    pub secrets: BTreeMap<String, Vec<u8>>,
    /// See [`DEFAULT_FLATTEN_DEPTH`].
    pub flatten_depth: usize,
    /// Set (e.g. by a SIGINT handler) to stop the build after the running step.
    pub cancelled: Arc<AtomicBool>,
    /// The hostname steps see.
    pub hostname: String,
    /// Exported to `run` steps as `SOURCE_DATE_EPOCH` (unless the spec sets it), so
    /// tools that honour it (dpkg, mkinitramfs, compilers) produce reproducible output.
    /// Like cache mounts it does not enter step ids: it describes how to build, not what.
    pub source_date_epoch: Option<i64>,
    /// Where stages without a `(sandbox …)` form run (`kiln build --sandbox`).
    pub sandbox: SandboxKind,
    /// `--cache-from`: a registry asked for a step's layer before the step runs.
    pub cache_from: Option<Arc<RegistryCache>>,
    /// `--cache-to`: a registry every layer the build makes or uses is pushed to.
    pub cache_to: Option<Arc<RegistryCache>>,
}

/// Where the kernel of a VM base comes from when its tree has none: Debian's kernel
/// package, unpacked (not installed) by the same bootstrap that makes `debian:` bases,
/// and stored as a layer of its own, shared by every such base.
const KERNEL_BASE: &str = "debian:bookworm";
const KERNEL_PACKAGE: &str = "linux-image-amd64";

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            fast_sync: true,
            secrets: BTreeMap::new(),
            flatten_depth: DEFAULT_FLATTEN_DEPTH,
            cancelled: Arc::new(AtomicBool::new(false)),
            hostname: "kiln".into(),
            source_date_epoch: None,
            sandbox: SandboxKind::Chroot,
            cache_from: None,
            cache_to: None,
        }
    }
}

/// Builds specs against one store.
pub struct Builder<'a> {
    pub store: &'a dyn Store,
    pub sandbox: &'a dyn Sandbox,
    pub fetcher: &'a dyn Fetcher,
    pub options: BuildOptions,
    /// The QEMU sandbox, for stages that ask for it (`(sandbox qemu)`, `--sandbox qemu`)
    /// or start from a VM disk; `None` refuses such stages.
    pub vm_sandbox: Option<&'a dyn Sandbox>,
}

/// What a step does once its temporary layer is ready.
/// apt's index directory (see [`Builder::seed_apt_lists`]).
const APT_LISTS: &str = "/var/lib/apt/lists";

type StepBody<'b> = Box<dyn FnOnce(&RootFs, &mut StepOutput) -> Result<(), BuildError> + 'b>;

impl Builder<'_> {
    /// Builds `spec` with `context` as the build context; progress and step output go to
    /// `out`. Returns the id of the final layer.
    pub fn build(
        &self,
        spec: &Spec,
        context: &Path,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        Ok(self.build_with_stages(spec, context, out)?.0)
    }

    /// [`Builder::build`], also returning the layer of each top-level `(build NAME …)`
    /// stage (what `(image (partition (build NAME)))` refers to).
    pub fn build_with_stages(
        &self,
        spec: &Spec,
        context: &Path,
        out: &mut dyn Write,
    ) -> Result<(LayerId, BTreeMap<String, LayerId>), BuildError> {
        self.check_secrets(spec)?;
        let mut stages = BTreeMap::new();
        let id = self.build_spec(spec, context, &mut stages, out)?;
        writeln!(out, "Got: \"{id}\"").map_err(BuildError::output)?;
        Ok((id, stages))
    }

    /// Every secret a `run` asks for must have been given.
    fn check_secrets(&self, spec: &Spec) -> Result<(), BuildError> {
        for child in &spec.child_builds {
            self.check_secrets(&child.value.spec)?;
        }
        for op in &spec.ops {
            if let Op::Run(run) = &op.value {
                if let Some(m) = run
                    .secrets
                    .iter()
                    .find(|m| !self.options.secrets.contains_key(&m.id))
                {
                    return Err(BuildError::MissingSecret {
                        id: m.id.clone(),
                        pos: op.pos,
                    });
                }
            }
        }
        Ok(())
    }

    /// Builds `spec`; its own stages' layers are recorded in `stages`.
    fn build_spec(
        &self,
        spec: &Spec,
        context: &Path,
        stages: &mut BTreeMap<String, LayerId>,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        for child in &spec.child_builds {
            writeln!(out, "(build {} …)", child.value.name).map_err(BuildError::output)?;
            let id = self.build_spec(&child.value.spec, context, &mut BTreeMap::new(), out)?;
            stages.insert(child.value.name.clone(), id);
        }
        let (mut parent, config, resolved) = self.base(spec, context, out)?;
        let base_is_disk = self.is_disk(&parent)?;
        let sb = self.stage_sandbox(spec, base_is_disk)?;
        let base_root = if base_is_disk {
            PathBuf::new()
        } else {
            // The bottom of the chain: the base's full tree (a `layer:` base may be a step).
            self.store
                .chain(&parent)?
                .into_iter()
                .last()
                .unwrap_or_default()
        };
        let mut ctx = context::initial(&config, &base_root);
        if sb.payload() == Payload::Disk && !base_is_disk {
            parent = self.vm_base(sb, &parent, context, out)?;
        }
        for op in &spec.ops {
            self.check_cancelled()?;
            match &op.value {
                Op::Comment(_) => {}
                Op::Workdir(dir) => ctx.workdir = context::join_workdir(&ctx.workdir, dir),
                Op::Shell(args) => ctx.shell = args.clone(),
                Op::Env(name, value) => context::set_env(&mut ctx.env, name, value),
                Op::User(user) => ctx.user = user.clone(),
                Op::Run(run) => {
                    parent = self.run_step(sb, op, run, &ctx, &parent, &resolved, out)?
                }
                Op::Copy(copy) => {
                    parent = self.copy_step(sb, op, copy, &ctx, &parent, context, stages, out)?
                }
            }
        }
        Ok(parent)
    }

    /// The sandbox that runs a stage's steps: its `(sandbox …)`, else the build's default;
    /// a stage on a VM disk runs in the QEMU sandbox whatever the default.
    fn stage_sandbox(&self, spec: &Spec, base_is_disk: bool) -> Result<&dyn Sandbox, BuildError> {
        let kind = match &spec.sandbox {
            Some(asked) if asked.value == SandboxKind::Chroot && base_is_disk => {
                return Err(BuildError::ChrootOnDisk {
                    pos: asked.pos,
                    base: spec.from.value.clone(),
                })
            }
            Some(asked) => asked.value,
            None if base_is_disk => SandboxKind::Qemu,
            None => self.options.sandbox,
        };
        match kind {
            SandboxKind::Chroot => Ok(self.sandbox),
            SandboxKind::Qemu => self.vm_sandbox.ok_or(BuildError::NoVmSandbox),
        }
    }

    fn is_disk(&self, id: &LayerId) -> Result<bool, BuildError> {
        Ok(self.store.get(id)?.is_some_and(|info| info.meta.disk))
    }

    /// The VM base the QEMU sandbox starts a stage from: `tree`'s files on a disk, booted
    /// by `tree`'s own kernel or, when it has none, Debian's (see [`KERNEL_BASE`]).
    fn vm_base(
        &self,
        sb: &dyn Sandbox,
        tree: &LayerId,
        context: &Path,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        let own_kernel = {
            let scratch = Scratch::new(self.store, "kernel-probe")?;
            let view = self.view(tree, &scratch)?;
            view::has_kernel(view.path())
        };
        let kernel = if own_kernel {
            None
        } else {
            let bootstrap = Bootstrap {
                variant: Some("extract".into()),
                include: vec![KERNEL_PACKAGE.into()],
                ..Bootstrap::default()
            };
            let source = parse_base(KERNEL_BASE, Some(&bootstrap), context)?;
            writeln!(
                out,
                "(sandbox qemu): {} has no kernel; booting {KERNEL_PACKAGE} of {KERNEL_BASE}",
                tree.short()
            )
            .map_err(BuildError::output)?;
            Some(self.fetch_base(&source, out)?.0)
        };
        let id = hash::vm_base_id(tree, kernel.as_ref(), &sb.base_key());
        let header = format!("(sandbox qemu): VM base of {}", tree.short());
        let kernel_ref = kernel.clone();
        let body: StepBody = Box::new(move |root, output| {
            let RootFs::Disk { disk, .. } = root else {
                unreachable!("disk steps get disk roots")
            };
            let dest = disk.parent().unwrap_or(Path::new("."));
            let scratch = Scratch::new(self.store, "vm-base")?;
            let files = self.view(tree, &scratch)?;
            let kernel_scratch = Scratch::new(self.store, "vm-kernel")?;
            let kernel_files = match &kernel_ref {
                Some(k) => Some(self.view(k, &kernel_scratch)?),
                None => None,
            };
            let kernel_tree = kernel_files.as_ref().unwrap_or(&files).path();
            sb.make_base(files.path(), kernel_tree, dest, output)?;
            Ok(())
        });
        self.step(
            sb,
            NewLayer::VmBase,
            &id,
            tree,
            &header,
            Vec::new(),
            body,
            out,
        )
    }

    /// The `(from …)` layer: reused when stored, fetched otherwise.
    fn base(
        &self,
        spec: &Spec,
        context: &Path,
        out: &mut dyn Write,
    ) -> Result<(LayerId, BaseConfig, ResolvedBase), BuildError> {
        let bootstrap = spec.bootstrap.as_ref().map(|b| &b.value);
        let source = parse_base(&spec.from.value, bootstrap, context)?;
        if let BaseSource::Layer(name) = &source {
            return self.stored_base(spec, name, out);
        }
        writeln!(out, "(from {})", spec.from.value).map_err(BuildError::output)?;
        self.fetch_base(&source, out)
    }

    /// A base layer: reused when stored, fetched otherwise.
    fn fetch_base(
        &self,
        source: &BaseSource,
        out: &mut dyn Write,
    ) -> Result<(LayerId, BaseConfig, ResolvedBase), BuildError> {
        let base = self.fetcher.resolve(source)?;
        if let Some(resolution) = base.resolution() {
            writeln!(out, "---> {resolution}").map_err(BuildError::output)?;
        }
        if let Some(config) = self.reuse(&base.id, out)? {
            self.push_cached(&base.id, out)?;
            return Ok((base.id.clone(), config.unwrap_or_default(), base));
        }
        let _lock = self.store.lock_step(&base.id)?;
        if let Some(config) = self.reuse(&base.id, out)? {
            self.push_cached(&base.id, out)?;
            return Ok((base.id.clone(), config.unwrap_or_default(), base));
        }
        if self.pull_cached(&base.id, None, out)? {
            self.push_cached(&base.id, out)?;
            let config = self.store.get(&base.id)?.and_then(|i| i.meta.config);
            return Ok((base.id.clone(), config.unwrap_or_default(), base));
        }
        let tmp = self.store.begin(&base.id, None, true)?;
        let fetched = (|| {
            let mut log = fs::File::create(&tmp.log).map_err(|e| BuildError::io(&tmp.log, e))?;
            let mut output = StepOutput::new(out, &mut log, Vec::new());
            let config = self.fetcher.fetch(
                &base,
                &tmp.rootfs,
                self.options.source_date_epoch,
                &mut output,
            )?;
            output.finish().map_err(BuildError::output)?;
            Ok(config)
        })();
        match fetched.and_then(|c| self.check_cancelled().map(|()| c)) {
            Ok(config) => {
                self.store
                    .commit_base(tmp, &base.description, config.clone(), base.pin.clone())?;
                writeln!(out, "---> saved as \"{}\"", base.id).map_err(BuildError::output)?;
                self.push_cached(&base.id, out)?;
                Ok((base.id.clone(), config, base))
            }
            Err(e) => {
                self.store.abort(tmp)?;
                Err(e)
            }
        }
    }

    /// A `(from layer:NAME|ID)` base: the stored layer itself, never fetched; the spec's
    /// steps chain from its id and start from its chain's base config.
    fn stored_base(
        &self,
        spec: &Spec,
        name: &str,
        out: &mut dyn Write,
    ) -> Result<(LayerId, BaseConfig, ResolvedBase), BuildError> {
        let id = match LayerId::parse(name) {
            Ok(id) => id,
            Err(_) => self.store.lookup_name(name)?.ok_or_else(|| {
                match name.strip_prefix(kiln_store::VM_BASE_PREFIX) {
                    Some(base) => unknown_layer(spec, format!("no VM base is named `{base}` in this store (see `kiln base ls`; `kiln base import {base} FILE …` or `kiln base build {base} --from …` makes one)")),
                    None => unknown_layer(spec, format!("no layer is named `{name}` in this store (see `kiln names`; `kiln shell REF --save {name}` makes one)")),
                }
            })?,
        };
        let info = self.store.get(&id)?.ok_or_else(|| {
            unknown_layer(
                spec,
                format!("layer {id} is not in this store (see `kiln ls` and `kiln names`)"),
            )
        })?;
        writeln!(out, "(from {})", spec.from.value).map_err(BuildError::output)?;
        self.store.touch(&id)?;
        writeln!(out, "---> using \"{id}\" from the store").map_err(BuildError::output)?;
        let base = ResolvedBase {
            source: BaseSource::Layer(name.to_string()),
            id: id.clone(),
            description: info.meta.description.clone(),
            pin: None,
        };
        Ok((id, self.chain_config(info)?, base))
    }

    /// The config of the first layer down `info`'s chain that has one (its base's).
    fn chain_config(&self, mut info: kiln_store::LayerInfo) -> Result<BaseConfig, BuildError> {
        loop {
            match (info.meta.config, info.meta.parent) {
                (Some(config), _) => return Ok(config),
                (None, None) => return Ok(BaseConfig::default()),
                (None, Some(parent)) => {
                    info = self
                        .store
                        .get(&parent)?
                        .ok_or_else(|| kiln_store::StoreError::NotFound(parent.to_string()))?
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn run_step(
        &self,
        sb: &dyn Sandbox,
        op: &Located<Op>,
        run: &Run,
        ctx: &StepContext,
        parent: &LayerId,
        base: &ResolvedBase,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        let secret_values: Vec<(String, Vec<u8>)> = run
            .secrets
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    self.options.secrets.get(&m.id).cloned().unwrap_or_default(),
                )
            })
            .collect();
        let id = hash::run_id(parent, ctx, run, &secret_values);
        let header = step_header(ctx, op);
        let masks: Vec<Vec<u8>> = secret_values.iter().map(|(_, v)| v.clone()).collect();
        let on_disk = sb.payload() == Payload::Disk;
        let body: StepBody = Box::new(move |root, output| {
            check_mount_targets(op, run)?;
            let (uid, gid) = self.numeric_user(&ctx.user, parent)?;
            let mut leases = Vec::new();
            let mut mounts = Vec::new();
            for cache in &run.cache {
                if on_disk {
                    // A VM cache is a disk image in the lease, not a tree: keep the two
                    // apart so a namespace step never sees a VM's cache disk.
                    let lease = self.store.cache_acquire(&vm_cache_name(&cache.id))?;
                    mounts.push(BindMount {
                        source: lease.dir.clone(),
                        target: cache.target.clone(),
                        readonly: false,
                    });
                    leases.push(lease);
                    continue;
                }
                let lease = self.store.cache_acquire(&cache.id)?;
                self.seed_apt_lists(base, &cache.id, &cache.target, &lease.dir, output);
                mounts.push(BindMount {
                    source: lease.dir.clone(),
                    target: cache.target.clone(),
                    readonly: false,
                });
                leases.push(lease);
            }
            let mut argv = ctx.shell.clone();
            argv.push(run.shell.clone());
            let spec = RunSpec {
                root: root.clone(),
                argv,
                env: self.step_env(ctx),
                cwd: ctx.workdir.clone(),
                uid,
                gid,
                host_network: run.network.iter().any(|n| n == "host"),
                mounts,
                secrets: run
                    .secrets
                    .iter()
                    .zip(&secret_values)
                    .map(|(m, (_, v))| Secret {
                        target: m.target.clone(),
                        value: v.clone(),
                    })
                    .collect(),
                hostname: self.options.hostname.clone(),
                fast_sync: self.options.fast_sync,
                interactive: false,
                trace: None,
            };
            let outcome = sb.run(&spec, output);
            let ok = matches!(outcome, Ok(o) if o.success())
                && !self.options.cancelled.load(Ordering::SeqCst);
            for lease in leases {
                self.store.cache_release(lease, ok)?;
            }
            let outcome = outcome?;
            if outcome.success() {
                Ok(())
            } else {
                Err(BuildError::StepFailed {
                    step: header_op(op),
                    pos: op.pos,
                    outcome,
                    tail: String::new(),
                })
            }
        });
        self.step(sb, NewLayer::Step, &id, parent, &header, masks, body, out)
    }

    /// A new (empty) cache mounted at apt's index directory starts from the index files
    /// the base's bootstrap fetched: the step's `apt-get update` then only revalidates
    /// them. Best effort: without them apt downloads the indexes as usual.
    fn seed_apt_lists(
        &self,
        base: &ResolvedBase,
        id: &str,
        target: &str,
        dir: &Path,
        output: &mut StepOutput,
    ) {
        let empty = fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if target.trim_end_matches('/') != APT_LISTS || !empty {
            return;
        }
        let _ = match self.fetcher.seed_apt_lists(base, dir) {
            Ok(0) => Ok(()),
            Ok(n) => writeln!(
                output,
                "cache {id}: starts from the base's {n} apt index files"
            ),
            Err(e) => writeln!(output, "cache {id}: not seeded from the base ({e})"),
        };
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_step(
        &self,
        sb: &dyn Sandbox,
        op: &Located<Op>,
        copy: &Copy,
        ctx: &StepContext,
        parent: &LayerId,
        context: &Path,
        stages: &BTreeMap<String, LayerId>,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        let placement = copy::Placement::of(copy, &ctx.workdir).ok_or_else(|| {
            BuildError::CopySourcesAsOnePath {
                pos: op.pos,
                count: copy.src.len(),
                dst: copy.dst.clone(),
            }
        })?;
        // A stage's files are read through a read-only mount that must outlive the copy
        // (declared before the mount guard so it is dropped after it).
        let (_stage_view, _scratch, _pin);
        let items = match &copy.from {
            CopyFrom::Context => copy::plan(context, copy, &placement, "the build context")?,
            CopyFrom::Build(name) => {
                let stage = stages
                    .get(name)
                    .ok_or_else(|| BuildError::UnknownStage(name.clone()))?;
                _pin = self.store.pin(stage)?;
                _scratch = Scratch::new(self.store, "copy-src")?;
                let src = self.view(stage, &_scratch)?;
                let what = format!("build stage `{name}`");
                let items = copy::plan(src.path(), copy, &placement, &what)?;
                _stage_view = src;
                items
            }
        };
        let manifest: Vec<_> = items.iter().map(|i| i.entry.clone()).collect();
        let id = hash::copy_id(parent, &ctx.user, &placement.hashed_dst(), &manifest);
        let header = step_header(ctx, op);
        let body: StepBody = Box::new(move |root, output| {
            let (uid, gid) = self.numeric_user(&ctx.user, parent)?;
            if let RootFs::Disk { .. } = root {
                let entries: Vec<CopyEntry> = items.iter().map(copy_entry).collect();
                return Ok(sb.copy_in(root, &entries, uid, gid, output)?);
            }
            let scratch = Scratch::new(self.store, "copy-dst")?;
            let target = mount::mount_root(root, &scratch.path.join("root"))?;
            copy::apply(target.path(), &items, uid, gid)
        });
        self.step(
            sb,
            NewLayer::Step,
            &id,
            parent,
            &header,
            Vec::new(),
            body,
            out,
        )
    }

    /// Reuses a stored step, or builds it in a temporary layer of the kind `sb` builds
    /// (or a new VM base) and commits it.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        sb: &dyn Sandbox,
        kind: NewLayer,
        id: &LayerId,
        parent: &LayerId,
        header: &str,
        masks: Vec<Vec<u8>>,
        body: StepBody,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        writeln!(out, "{header}").map_err(BuildError::output)?;
        let id = self.make_step(sb, kind, id, parent, header, masks, body, out)?;
        self.push_cached(&id, out)?;
        Ok(id)
    }

    /// [`Builder::step`] without the push to `--cache-to`: reuses the stored step, or
    /// builds and commits it under the step's lock.
    #[allow(clippy::too_many_arguments)]
    fn make_step(
        &self,
        sb: &dyn Sandbox,
        kind: NewLayer,
        id: &LayerId,
        parent: &LayerId,
        header: &str,
        masks: Vec<Vec<u8>>,
        body: StepBody,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        if self.reuse(id, out)?.is_some() {
            return Ok(id.clone());
        }
        let _lock = self.store.lock_step(id)?;
        if self.reuse(id, out)?.is_some() {
            return Ok(id.clone());
        }
        if self.pull_cached(id, Some(parent), out)? {
            return Ok(id.clone());
        }
        let _pin = self.store.pin(parent)?;
        let flat = match kind {
            NewLayer::Step if sb.payload() == Payload::Tree => self.must_flatten(parent)?,
            NewLayer::Step => self.store.chain(parent)?.len() >= self.options.flatten_depth,
            NewLayer::VmBase => true,
        };
        let tmp = self.store.begin(id, Some(parent), flat)?;
        let result = (|| {
            let root = self.step_root(sb, kind, parent, &tmp, flat)?;
            let mut log = fs::File::create(&tmp.log).map_err(|e| BuildError::io(&tmp.log, e))?;
            let mut output = StepOutput::new(out, &mut log, masks);
            let result = body(&root, &mut output);
            output.finish().map_err(BuildError::output)?;
            with_tail(result, &output)
        })();
        self.finish_step(tmp, id, header, result, out)
    }

    /// The root a step in `tmp` works on: an overlay on its parent's chain or a flat copy
    /// of it (trees); a qcow2 overlay on its parent's disk or a flat copy of it (disks);
    /// nothing yet for a new VM base, whose body writes its disk and `boot/`.
    fn step_root(
        &self,
        sb: &dyn Sandbox,
        kind: NewLayer,
        parent: &LayerId,
        tmp: &kiln_store::TmpLayer,
        flat: bool,
    ) -> Result<RootFs, BuildError> {
        let disk = tmp.dir.join(DISK_FILE);
        if kind == NewLayer::VmBase {
            let boot = tmp.dir.join("boot");
            return Ok(RootFs::Disk { disk, boot });
        }
        match sb.payload() {
            Payload::Tree if flat => {
                self.flatten_into(parent, &tmp.rootfs)?;
                Ok(RootFs::Dir(tmp.rootfs.clone()))
            }
            Payload::Tree => Ok(RootFs::Overlay {
                lower: self.store.chain(parent)?,
                upper: tmp.rootfs.clone(),
                work: tmp.work.clone(),
            }),
            Payload::Disk => {
                // Relative, so the link holds from result-tmp/<id>/ and result/<id>/ alike
                // (and when the store moves).
                let backing = Path::new("../../result")
                    .join(parent.as_str())
                    .join(DISK_FILE);
                sb.make_disk(&backing, &disk, flat)?;
                let boot = self.boot_dir(parent)?;
                Ok(RootFs::Disk { disk, boot })
            }
        }
    }

    /// The `boot/` directory of the VM base `layer` descends from.
    fn boot_dir(&self, layer: &LayerId) -> Result<PathBuf, BuildError> {
        let mut current = layer.clone();
        loop {
            let dir = self.store.layer_dir(&current).join("boot");
            if dir.is_dir() {
                return Ok(dir);
            }
            let info = self
                .store
                .get(&current)?
                .ok_or_else(|| kiln_store::StoreError::NotFound(current.to_string()))?;
            match info.meta.parent {
                Some(parent) => current = parent,
                None => return Err(BuildError::NoBootFiles(layer.clone())),
            }
        }
    }

    /// A read-only view of `layer`'s files (an overlay mount, or the VM sandbox's view of
    /// a disk layer) under `scratch`.
    fn view(&self, layer: &LayerId, scratch: &Scratch) -> Result<TreeView, BuildError> {
        view::open_layer(self.store, self.vm_sandbox, layer, &scratch.path)
    }

    /// Commits a built step, or removes it when it failed or the build was cancelled.
    fn finish_step(
        &self,
        tmp: kiln_store::TmpLayer,
        id: &LayerId,
        header: &str,
        result: Result<(), BuildError>,
        out: &mut dyn Write,
    ) -> Result<LayerId, BuildError> {
        match result.and_then(|()| self.check_cancelled()) {
            Ok(()) => {
                self.store.commit(tmp, header, None)?;
                writeln!(out, "---> saved as \"{id}\"").map_err(BuildError::output)?;
                Ok(id.clone())
            }
            Err(e) => {
                self.store.abort(tmp)?;
                Err(e)
            }
        }
    }

    /// Whether a step on `parent` must start a flat layer: the chain is deeper than
    /// `flatten_depth`, or its overlay mount options would not fit in one page.
    fn must_flatten(&self, parent: &LayerId) -> Result<bool, BuildError> {
        let chain = self.store.chain(parent)?;
        let lower_bytes: usize = chain.iter().map(|p| p.as_os_str().len() + 1).sum();
        // upperdir and workdir live in result-tmp/<64 hex id>/{rootfs,work}.
        let upper_work_bytes = 2 * (self.store.root().as_os_str().len() + 90) + 64;
        Ok(chain.len() >= self.options.flatten_depth
            || lower_bytes + upper_work_bytes > MOUNT_OPTIONS_BUDGET)
    }

    /// If `id` is stored: marks it used, replays its log and returns its base config.
    fn reuse(
        &self,
        id: &LayerId,
        out: &mut dyn Write,
    ) -> Result<Option<Option<BaseConfig>>, BuildError> {
        let Some(info) = self.store.get(id)? else {
            return Ok(None);
        };
        self.store.touch(id)?;
        let log = self.store.log_path(id);
        if let Ok(mut f) = fs::File::open(&log) {
            std::io::copy(&mut f, out).map_err(BuildError::output)?;
        }
        writeln!(out, "---> using \"{id}\" from cache").map_err(BuildError::output)?;
        Ok(Some(info.meta.config))
    }

    /// Asks `--cache-from` for layer `id` (under its step lock, not in the store) and, on a
    /// hit whose meta.json names `parent`, pulls, verifies and commits it, replaying its
    /// log. Anything wrong with the cache is a warning: the caller then builds the layer.
    fn pull_cached(
        &self,
        id: &LayerId,
        parent: Option<&LayerId>,
        out: &mut dyn Write,
    ) -> Result<bool, BuildError> {
        let Some(cache) = &self.options.cache_from else {
            return Ok(false);
        };
        if cache.is_disabled() {
            return Ok(false);
        }
        let scratch = Scratch::new(self.store, "cache-pull")?;
        let warn = |out: &mut dyn Write, e: &layer_cache::CacheError| {
            if !e.is_refusal() {
                cache.disable();
            }
            let then = if e.is_refusal() {
                "building it instead"
            } else {
                "building without it from here on"
            };
            writeln!(out, "---> cache: {e}; {then}").map_err(BuildError::output)
        };
        let layer = match cache.lookup(id, &scratch.path) {
            Ok(Some(layer)) => layer,
            Ok(None) => return Ok(false),
            Err(e) => {
                warn(out, &e)?;
                return Ok(false);
            }
        };
        if layer.meta.parent.as_ref() != parent {
            writeln!(
                out,
                "---> cache: {}: layer {id} was built on {:?}, not on this build's {:?}; building it instead",
                cache.describe(),
                layer.meta.parent.as_ref().map(|p| p.short()),
                parent.map(|p| p.short())
            )
            .map_err(BuildError::output)?;
            return Ok(false);
        }
        let _pin = parent.map(|p| self.store.pin(p)).transpose()?;
        let tmp = self.store.begin(id, parent, layer.meta.flat)?;
        match cache
            .fetch(&layer, &tmp, &scratch.path)
            .map_err(Err)
            .and_then(|()| self.check_cancelled().map_err(Ok))
        {
            Ok(()) => {
                self.store.commit_pulled(tmp, &layer.meta)?;
                let log = self.store.log_path(id);
                if let Ok(mut f) = fs::File::open(&log) {
                    std::io::copy(&mut f, out).map_err(BuildError::output)?;
                }
                writeln!(out, "---> pulled \"{id}\" from {}", cache.describe())
                    .map_err(BuildError::output)?;
                Ok(true)
            }
            Err(Ok(cancelled)) => {
                self.store.abort(tmp)?;
                Err(cancelled)
            }
            Err(Err(e)) => {
                self.store.abort(tmp)?;
                warn(out, &e)?;
                Ok(false)
            }
        }
    }

    /// Pushes the committed layer `id` to `--cache-to` unless the cache has it.
    fn push_cached(&self, id: &LayerId, out: &mut dyn Write) -> Result<(), BuildError> {
        let Some(cache) = &self.options.cache_to else {
            return Ok(());
        };
        let scratch = Scratch::new(self.store, "cache-push")?;
        match cache.push(self.store, id, &scratch.path) {
            Ok(Pushed::Uploaded { bytes }) => writeln!(
                out,
                "---> pushed \"{id}\" to {} ({bytes} bytes)",
                cache.describe()
            )
            .map_err(BuildError::output),
            Ok(Pushed::Present) => Ok(()),
            Err(e) => Err(BuildError::CachePush(e.to_string())),
        }
    }

    /// Copies the merged view of `parent`'s chain into `dest`, which becomes a flat layer.
    fn flatten_into(&self, parent: &LayerId, dest: &Path) -> Result<(), BuildError> {
        let scratch = Scratch::new(self.store, "flatten")?;
        let src =
            mount::mount_lower_readonly(&self.store.chain(parent)?, &scratch.path.join("root"))?;
        tools::cp_archive(src.path(), dest)
    }

    /// uid/gid for a `user`: numbers as given, names looked up in the layer's /etc/passwd.
    fn numeric_user(&self, user: &User, layer: &LayerId) -> Result<(u32, u32), BuildError> {
        match user {
            User::Unix { uid, gid } => Ok((*uid, *gid)),
            User::Name(name) => {
                let scratch = Scratch::new(self.store, "passwd")?;
                let root = self.view(layer, &scratch)?;
                let passwd_path = copy::resolve_in_root(root.path(), "/etc/passwd", true, None)
                    .map_err(|e| BuildError::io("/etc/passwd", e))?;
                let passwd = fs::read_to_string(&passwd_path).unwrap_or_default();
                context::lookup_passwd(&passwd, name)
                    .ok_or_else(|| BuildError::UnknownUser(name.clone()))
            }
        }
    }

    /// The environment a `run` sees: the context's, plus `SOURCE_DATE_EPOCH` when set.
    fn step_env(&self, ctx: &StepContext) -> Vec<(String, String)> {
        let mut env = ctx.env.clone();
        if let Some(epoch) = self.options.source_date_epoch {
            if !env.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH") {
                env.push(("SOURCE_DATE_EPOCH".into(), epoch.to_string()));
            }
        }
        env
    }

    fn check_cancelled(&self) -> Result<(), BuildError> {
        if self.options.cancelled.load(Ordering::SeqCst) {
            Err(BuildError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a temporary layer becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NewLayer {
    /// A `run` or `copy` step, in the payload of the sandbox that runs it.
    Step,
    /// The VM base of a stage in a disk sandbox.
    VmBase,
}

/// A failed step's error with the last lines of its output.
fn with_tail(result: Result<(), BuildError>, output: &StepOutput) -> Result<(), BuildError> {
    match result {
        Err(BuildError::StepFailed {
            step, pos, outcome, ..
        }) => Err(BuildError::StepFailed {
            step,
            pos,
            outcome,
            tail: output.tail(),
        }),
        other => other,
    }
}

/// The store's name for the VM-disk form of cache `id`.
fn vm_cache_name(id: &str) -> String {
    format!("{id}.vm")
}

/// A planned copy item as the sandbox's copy-in takes it.
fn copy_entry(item: &copy::CopyItem) -> CopyEntry {
    let kind = match &item.entry.kind {
        ManifestKind::Dir { mode } => CopyKind::Dir { mode: *mode },
        ManifestKind::File { mode, .. } => CopyKind::File {
            host: item.host.clone(),
            mode: *mode,
            mtime: item.mtime,
        },
        ManifestKind::Symlink { target } => CopyKind::Symlink {
            target: target.clone(),
        },
    };
    CopyEntry {
        path: item.entry.path.clone(),
        kind,
    }
}

fn unknown_layer(spec: &Spec, problem: String) -> BuildError {
    BuildError::UnknownLayer {
        pos: spec.from.pos,
        from: spec.from.value.clone(),
        problem,
    }
}

/// The namespace sandbox mounts caches and secrets at absolute paths of the image only.
/// OBuilder's spec also admits Windows paths (`C:\cache`) and relative ones, for its other
/// sandboxes, so they parse and are refused here, when the step runs.
fn check_mount_targets(op: &Located<Op>, run: &Run) -> Result<(), BuildError> {
    let caches = run.cache.iter().map(|m| ("cache", m));
    let secrets = run.secrets.iter().map(|m| ("secret", m));
    match caches
        .chain(secrets)
        .find(|(_, m)| !m.target.starts_with('/'))
    {
        Some((kind, m)) => Err(BuildError::MountTargetNotAbsolute {
            pos: op.pos,
            kind,
            id: m.id.clone(),
            target: m.target.clone(),
        }),
        None => Ok(()),
    }
}

/// The line printed before a step, OBuilder style: `WORKDIR: (op …)`.
fn step_header(ctx: &StepContext, op: &Located<Op>) -> String {
    format!("{}: {}", ctx.workdir, header_op(op))
}

fn header_op(op: &Located<Op>) -> String {
    kiln_spec::print_op(&op.value)
}

/// A scratch directory in the store, removed on drop (after the mounts in it are gone).
struct Scratch {
    path: PathBuf,
}

impl Scratch {
    fn new(store: &dyn Store, prefix: &str) -> Result<Scratch, BuildError> {
        Ok(Scratch {
            path: store.scratch_dir(prefix)?,
        })
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

mod tools {
    //! `cp` from coreutils, used to flatten a layer chain with every attribute kept.
    use crate::BuildError;
    use std::path::Path;
    use std::process::Command;

    /// `cp -a SRC/. DEST/`: owners, modes, times, links, xattrs, hardlinks.
    pub fn cp_archive(src: &Path, dest: &Path) -> Result<(), BuildError> {
        let status = Command::new("cp")
            .arg("-a")
            .arg(src.join("."))
            .arg(dest)
            .status()
            .map_err(|e| BuildError::Tool(format!("cp (Debian package coreutils): {e}")))?;
        if status.success() {
            Ok(())
        } else {
            Err(BuildError::Tool(format!(
                "cp -a {} {} failed: {status}",
                src.display(),
                dest.display()
            )))
        }
    }
}
