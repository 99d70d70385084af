//! `debian:SUITE` bases, bootstrapped with mmdebstrap (debootstrap when it is missing).
//!
//! Downloaded `.deb`s go to the store's deb cache (`debs/`, `lists/<key>/`, `tmp/`) so a second
//! bootstrap of any suite downloads no package already fetched once: a setup hook links
//! the cached packages into the new root's `/var/cache/apt/archives` before apt looks for
//! them (apt reuses a file there when its size matches the index; files only enter the
//! cache after apt downloaded and verified them), and a customize hook hands the new ones
//! back (a cached file that differs is replaced) before
//! mmdebstrap's cleanup empties the apt cache. apt's lists are cached per (suite, mirror,
//! arch) the same way, so `apt-get update` only revalidates them.
//!
//! A `(skeleton …)` is staged beside the deb cache's staging area and put in place by a
//! second setup hook, before apt installs anything ([`crate::skeleton`]).

use crate::debcache::{DebCache, Stage};
use crate::tarball::DEFAULT_PATH;
use crate::tools::{debootstrap, dpkg, mmdebstrap, ToolError};
use crate::BaseSource;
use crate::{fsutil, FetchError};
use kiln_spec::{hash, LayerId};
use kiln_store::BaseConfig;
use std::ffi::OsStr;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Overrides the default mirror.
pub const MIRROR_ENV: &str = "KILN_DEBIAN_MIRROR";
/// The mirror used when neither `(mirror …)` nor `$KILN_DEBIAN_MIRROR` says otherwise.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Which program bootstraps a Debian base.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrapper {
    /// mmdebstrap, or debootstrap when mmdebstrap is not installed.
    Auto,
    Mmdebstrap,
    Debootstrap,
}

/// A Debian base's bootstrap inputs.
#[derive(Debug, Clone, Copy)]
pub struct DebianBase<'a> {
    pub suite: &'a str,
    pub variant: &'a str,
    pub include: &'a [String],
    /// Directories copied into the root before any package installs ([`crate::skeleton`]).
    pub skeleton: &'a [PathBuf],
    /// `None`: `$KILN_DEBIAN_MIRROR` or [`DEFAULT_MIRROR`].
    pub mirror: Option<&'a str>,
    /// `None`: the host's architecture.
    pub arch: Option<&'a str>,
    /// The id the caller resolved this base to, checked against what is bootstrapped.
    pub expected_id: Option<&'a LayerId>,
}

/// Where and how one bootstrap runs (what does not enter the base id).
struct Target<'a> {
    arch: &'a str,
    mirror: &'a str,
    rootfs: &'a Path,
    source_date_epoch: Option<i64>,
}

impl Target<'_> {
    /// `SOURCE_DATE_EPOCH` for the bootstrap tool, which hands it to dpkg and to the
    /// packages' scripts (mkinitramfs writes its archive's times from it).
    fn epoch_env(&self) -> Option<(&'static str, std::ffi::OsString)> {
        self.source_date_epoch
            .map(|epoch| ("SOURCE_DATE_EPOCH", epoch.to_string().into()))
    }
}

/// Links cached packages and lists into the new root before `apt-get update`.
const SETUP_HOOK: &str = r#"set -e
mkdir -p "$1/var/cache/apt/archives" "$1/var/lib/apt/lists"
for f in "$KILN_STAGE"/lists-in/*; do
  if [ -f "$f" ]; then cp -p "$f" "$1/var/lib/apt/lists/"; fi
done
if [ "$KILN_DEB_LINK" = 1 ]; then copy="cp -l"; else copy="cp -p"; fi
find "$KILN_DEB_CACHE" -maxdepth 1 -type f -name '*.deb' -exec $copy -t "$1/var/cache/apt/archives/" {} +
"#;

/// Puts the staged skeleton in place: owners (root), modes and symlinks kept, existing
/// directories (and symlinks to them, such as a merged /lib) left as they are.
const SKELETON_HOOK: &str = r#"set -e
tar -C "$KILN_SKELETON" -cf - . | tar -C "$1" -xpf - --keep-directory-symlink --no-overwrite-dir
"#;

/// Hands packages the cache lacks, and the fresh lists, to the staging area.
const CUSTOMIZE_HOOK: &str = r#"set -e
for f in "$1"/var/cache/apt/archives/*.deb; do
  if [ ! -f "$f" ]; then continue; fi
  c="$KILN_DEB_CACHE/${f##*/}"
  if [ "$f" -ef "$c" ]; then continue; fi
  if [ -f "$c" ] && cmp -s "$f" "$c"; then continue; fi
  ln "$f" "$KILN_STAGE/debs-out/" 2>/dev/null || cp -p "$f" "$KILN_STAGE/debs-out/"
done
for f in "$1"/var/lib/apt/lists/*; do
  if [ -f "$f" ]; then cp -p "$f" "$KILN_STAGE/lists-out/"; fi
done
"#;

impl<'a> DebianBase<'a> {
    /// The bootstrap a `debian:` source describes; `None` for other sources.
    pub fn from_source(source: &'a BaseSource) -> Option<DebianBase<'a>> {
        match source {
            BaseSource::Debian {
                suite,
                variant,
                include,
                skeleton,
                mirror,
                arch,
            } => Some(DebianBase {
                suite,
                variant,
                include,
                skeleton,
                mirror: mirror.as_deref(),
                arch: arch.as_deref(),
                expected_id: None,
            }),
            _ => None,
        }
    }

    /// The base's name in messages: `debian:SUITE`.
    pub fn name(&self) -> String {
        format!("debian:{}", self.suite)
    }

    fn mirror_url(&self) -> String {
        match self.mirror {
            Some(m) => m.to_string(),
            None => std::env::var(MIRROR_ENV)
                .ok()
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| DEFAULT_MIRROR.to_string()),
        }
    }

    fn architecture(&self) -> Result<String, FetchError> {
        if let Some(arch) = self.arch {
            return Ok(arch.to_string());
        }
        dpkg::host_architecture().map_err(|e| match e {
            dpkg::ArchError::Missing => FetchError::MissingTool {
                base: self.name(),
                program: dpkg::PROGRAM,
                package: dpkg::PACKAGE,
            },
            dpkg::ArchError::Failed(message) => FetchError::base(&self.name(), message),
        })
    }

    /// The base id: hash of suite, variant, sorted includes, mirror and architecture. No
    /// network access.
    pub fn id(&self) -> Result<(LayerId, String), FetchError> {
        self.id_with(self.skeleton_digest()?.as_deref())
    }

    /// The id and description for the skeleton digest `skeleton`.
    fn id_with(&self, skeleton: Option<&str>) -> Result<(LayerId, String), FetchError> {
        let arch = self.architecture()?;
        let mut include = self.include.to_vec();
        include.sort();
        include.dedup();
        let include = include.join(",");
        let mirror = match self.mirror_url() {
            m if m == DEFAULT_MIRROR => "default".to_string(),
            m => m,
        };
        let mut inputs = vec![
            ("suite", self.suite),
            ("variant", self.variant),
            ("include", &include),
            // A mirror from the spec or KILN_DEBIAN_MIRROR may serve other content
            // (a snapshot, a derivative), so it names the base; the default one is "default".
            ("mirror", &mirror),
            ("arch", &arch),
        ];
        // Only when there is one, so bases without a skeleton keep their ids.
        if let Some(digest) = skeleton {
            inputs.push(("skeleton", digest));
        }
        let id = hash::base_id("debian", &inputs);
        let mut extra = if include.is_empty() {
            String::new()
        } else {
            format!(" +{include}")
        };
        if let Some(digest) = skeleton {
            extra.push_str(&format!(", skeleton {}", &digest[..12]));
        }
        Ok((
            id,
            format!("debian:{} ({}{extra}, {arch})", self.suite, self.variant),
        ))
    }

    /// The digest of the skeleton directories, `None` without any.
    fn skeleton_digest(&self) -> Result<Option<String>, FetchError> {
        if self.skeleton.is_empty() {
            return Ok(None);
        }
        crate::skeleton::digest(self.skeleton)
            .map(Some)
            .map_err(|e| self.skeleton_error(e))
    }

    fn skeleton_error(&self, e: crate::skeleton::SkeletonError) -> FetchError {
        FetchError::base(
            &self.name(),
            format!("(skeleton …): {}: {}", e.path.display(), e.problem),
        )
    }

    /// Copies the skeleton into `into` and checks it is still the one the base id names.
    /// What is staged must give the id the build resolved (`expected_id`), else the id
    /// the skeleton has now: an edit after the id was computed is an error, not a base
    /// stored under an id that names other contents.
    fn stage_skeleton(&self, into: &Path) -> Result<(), FetchError> {
        let staged =
            crate::skeleton::stage(self.skeleton, into).map_err(|e| self.skeleton_error(e))?;
        let (staged_id, _) = self.id_with(Some(&staged))?;
        let expected = match self.expected_id {
            Some(id) => id.clone(),
            None => self.id()?.0,
        };
        if staged_id != expected {
            return Err(FetchError::base(
                &self.name(),
                "(skeleton …) changed after the build computed the base's id from it; build again"
                    .to_string(),
            ));
        }
        Ok(())
    }

    /// Bootstraps into the empty directory `rootfs` with mmdebstrap, or debootstrap when
    /// mmdebstrap is not installed.
    pub fn fetch(
        &self,
        deb_cache: &Path,
        rootfs: &Path,
        source_date_epoch: Option<i64>,
        progress: &mut dyn Write,
    ) -> Result<BaseConfig, FetchError> {
        self.fetch_with(
            Bootstrapper::Auto,
            deb_cache,
            rootfs,
            source_date_epoch,
            progress,
        )
    }

    /// Like [`DebianBase::fetch`] with the bootstrap program chosen by the caller.
    /// Copies the apt index files this base's bootstrap fetched (kept in the deb cache,
    /// with their times) into `into`; how many were copied.
    pub fn seed_lists(&self, deb_cache: &Path, into: &Path) -> Result<usize, FetchError> {
        let arch = self.architecture()?;
        let key = DebCache::lists_key(self.suite, &self.mirror_url(), &arch);
        let cache = DebCache::open(deb_cache)
            .map_err(|e| FetchError::io(&self.name(), "opening the deb cache", deb_cache, e))?;
        cache
            .load_lists(&key, into)
            .map_err(|e| FetchError::io(&self.name(), "copying cached apt lists to", into, e))
    }

    pub fn fetch_with(
        &self,
        tool: Bootstrapper,
        deb_cache: &Path,
        rootfs: &Path,
        source_date_epoch: Option<i64>,
        progress: &mut dyn Write,
    ) -> Result<BaseConfig, FetchError> {
        let arch = self.architecture()?;
        let mirror = self.mirror_url();
        let cache = DebCache::open(deb_cache)
            .map_err(|e| FetchError::io(&self.name(), "preparing the deb cache", deb_cache, e))?;
        let mmdebstrap = if tool == Bootstrapper::Debootstrap {
            None
        } else {
            mmdebstrap::find()
        };
        let debootstrap = if tool == Bootstrapper::Mmdebstrap {
            None
        } else {
            debootstrap::find()
        };
        let target = Target {
            arch: &arch,
            mirror: &mirror,
            rootfs,
            source_date_epoch,
        };
        if let Some(program) = mmdebstrap {
            self.with_mmdebstrap(&program, &cache, &target, progress)?;
        } else if !self.skeleton.is_empty() {
            // debootstrap has no hook between unpacking and installing.
            return Err(FetchError::MissingTool {
                base: format!("{} with (skeleton …)", self.name()),
                program: mmdebstrap::PROGRAM,
                package: mmdebstrap::PACKAGE,
            });
        } else if let Some(program) = debootstrap {
            self.with_debootstrap(&program, &cache, &target, progress)?;
        } else if tool == Bootstrapper::Debootstrap {
            return Err(FetchError::MissingTool {
                base: self.name(),
                program: debootstrap::PROGRAM,
                package: debootstrap::PACKAGE,
            });
        } else {
            return Err(FetchError::MissingTool {
                base: self.name(),
                program: mmdebstrap::PROGRAM,
                package: mmdebstrap::PACKAGE,
            });
        }
        clean_apt(rootfs).map_err(|e| {
            FetchError::io(
                &self.name(),
                "emptying the apt cache and lists of",
                rootfs,
                e,
            )
        })?;
        Ok(BaseConfig {
            env: vec![("PATH".into(), DEFAULT_PATH.into())],
            workdir: None,
            user: None,
        })
    }

    fn with_mmdebstrap(
        &self,
        program: &Path,
        cache: &DebCache,
        target: &Target,
        progress: &mut dyn Write,
    ) -> Result<(), FetchError> {
        let Target {
            arch,
            mirror,
            rootfs,
            ..
        } = *target;
        let name = self.name();
        let cache_err = |e| FetchError::io(&name, "using the deb cache", cache.debs_dir(), e);
        let stage = cache.stage().map_err(cache_err)?;
        let key = DebCache::lists_key(self.suite, mirror, arch);
        let lists = cache
            .load_lists(&key, &stage.lists_in())
            .map_err(cache_err)?;
        let link = cache.can_link_into(rootfs);
        let mut setup_hooks = vec![SETUP_HOOK];
        let mut skeleton_env = None;
        if !self.skeleton.is_empty() {
            let staged = stage.dir.join("skeleton");
            self.stage_skeleton(&staged)?;
            setup_hooks.push(SKELETON_HOOK);
            skeleton_env = Some(("KILN_SKELETON", staged.into_os_string()));
        }
        let _ = writeln!(
            progress,
            "deb cache: {} packages, {lists} cached index files",
            cache.deb_count()
        );
        let run = mmdebstrap::Bootstrap {
            suite: self.suite,
            variant: self.variant,
            include: self.include,
            arch,
            mirror,
            target: rootfs,
            setup_hooks: &setup_hooks,
            customize_hooks: &[CUSTOMIZE_HOOK],
            env: vec![
                ("KILN_DEB_CACHE", cache.debs_dir().into_os_string()),
                ("KILN_STAGE", stage.dir.clone().into_os_string()),
                (
                    "KILN_DEB_LINK",
                    OsStr::new(if link { "1" } else { "0" }).to_os_string(),
                ),
            ]
            .into_iter()
            .chain(skeleton_env)
            .chain(target.epoch_env())
            .collect(),
        };
        mmdebstrap::run(program, &run, progress)
            .map_err(|e| self.tool_error(mmdebstrap::PROGRAM, mmdebstrap::PACKAGE, mirror, e))?;
        self.save_to_cache(cache, &stage, &key, progress)
    }

    fn save_to_cache(
        &self,
        cache: &DebCache,
        stage: &Stage,
        key: &str,
        progress: &mut dyn Write,
    ) -> Result<(), FetchError> {
        let name = self.name();
        let cache_err = |e| FetchError::io(&name, "saving to the deb cache", cache.debs_dir(), e);
        let saved = cache.save_debs(&stage.debs_out()).map_err(cache_err)?;
        cache
            .save_lists(key, &stage.lists_out())
            .map_err(cache_err)?;
        let _ = writeln!(progress, "deb cache: {saved} new packages saved");
        Ok(())
    }

    fn with_debootstrap(
        &self,
        program: &Path,
        cache: &DebCache,
        target: &Target,
        progress: &mut dyn Write,
    ) -> Result<(), FetchError> {
        let Target {
            arch,
            mirror,
            rootfs,
            ..
        } = *target;
        let Some(variant) = debootstrap::variant_for(self.variant) else {
            return Err(FetchError::MissingTool {
                base: self.name(),
                program: mmdebstrap::PROGRAM,
                package: mmdebstrap::PACKAGE,
            });
        };
        let _ = writeln!(
            progress,
            "mmdebstrap is not installed; falling back to debootstrap"
        );
        let run = debootstrap::Bootstrap {
            suite: self.suite,
            variant,
            include: self.include,
            arch,
            mirror,
            target: rootfs,
            cache_dir: &cache.debs_dir(),
            env: target.epoch_env().into_iter().collect(),
        };
        debootstrap::run(program, &run, progress)
            .map_err(|e| self.tool_error(debootstrap::PROGRAM, debootstrap::PACKAGE, mirror, e))
    }

    fn tool_error(
        &self,
        program: &'static str,
        package: &'static str,
        mirror: &str,
        e: ToolError,
    ) -> FetchError {
        match e {
            ToolError::Spawn(e) if e.kind() == std::io::ErrorKind::NotFound => FetchError::MissingTool { base: self.name(), program, package },
            ToolError::Spawn(e) => FetchError::base(&self.name(), format!("{program} could not be started: {e} (kiln must run as root)")),
            ToolError::Failed { status, tail } => FetchError::Tool {
                base: self.name(),
                program,
                message: format!(
                    "{program} failed ({status}) bootstrapping suite `{}` ({}) from mirror {mirror}; check that the mirror \
                     is reachable and serves this suite, or set the mirror with (bootstrap (mirror URL)) or ${MIRROR_ENV}",
                    self.suite, self.variant
                ),
                tail,
            },
        }
    }
}

/// Empties the root's apt cache (`.deb`s) and package lists, as mmdebstrap's own cleanup
/// does, so images do not depend on which bootstrap program made them.
fn clean_apt(rootfs: &Path) -> std::io::Result<()> {
    if let Some(archives) = open_under(rootfs, &["var", "cache", "apt", "archives"])? {
        for name in fsutil::list_names(&archives)? {
            if name.to_string_lossy().ends_with(".deb") {
                fsutil::remove_at(&archives, &name)?;
            }
        }
        if let Some(partial) = open_under(rootfs, &["var", "cache", "apt", "archives", "partial"])?
        {
            fsutil::remove_children(&partial)?;
        }
    }
    if let Some(lists) = open_under(rootfs, &["var", "lib", "apt", "lists"])? {
        for name in fsutil::list_names(&lists)? {
            if name != "lock" && name != "partial" {
                fsutil::remove_at(&lists, &name)?;
            }
        }
    }
    Ok(())
}

/// Opens `rootfs/a/b/…` without following symlinks; `None` when a component is missing.
fn open_under(rootfs: &Path, components: &[&str]) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    let mut dir = fsutil::open_dir(rootfs)?;
    for comp in components {
        dir = match fsutil::open_dir_at(&dir, OsStr::new(comp)) {
            Ok(next) => next,
            Err(nix::errno::Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
    }
    Ok(Some(dir))
}
