//! Running kiln-build's [`Builder`] with the real store, fetcher and sandbox over a spec
//! and the other specs its `(image …)` partitions name; shared by `kiln build` and the
//! reproducibility check.

use anyhow::Context;
use kiln_build::{BuildError, BuildOptions, Builder};
use kiln_fetch::RealFetcher;
use kiln_sandbox::chroot::NamespaceSandbox;
use kiln_store::{FsStore, LayerId, Store};
use kiln_vm::sandbox::QemuSandbox;
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

/// Builds the spec and whatever its `(image …)` partitions need: its stages (already
/// built with it) and other spec files (built here, each with its own directory as context).
pub fn build_all(
    store: &FsStore,
    options: BuildOptions,
    vm: &crate::cli::VmArgs,
    spec: &kiln_spec::Spec,
    spec_file: &Path,
    context: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<(LayerId, BTreeMap<String, LayerId>)> {
    let fetcher = RealFetcher {
        deb_cache: store.deb_cache(),
        registries: kiln_fetch::RegistrySettings::from_env(),
    };
    // The flag also stops a running step when only kiln got the signal (kill -INT PID, systemd's SIGTERM).
    let sandbox = NamespaceSandbox::new().with_cancel_flag(options.cancelled.clone());
    let qemu = QemuSandbox {
        cpus: vm.qemu_cpus,
        memory_mb: vm.qemu_memory,
        cancel: Some(options.cancelled.clone()),
        ..QemuSandbox::default()
    };
    let builder = Builder {
        store,
        sandbox: &sandbox,
        fetcher: &fetcher,
        options,
        vm_sandbox: Some(&qemu),
    };
    let (id, stages) = builder.build_with_stages(spec, context, out)?;
    let mut partitions = BTreeMap::new();
    if let Some(image) = &spec.image {
        let spec_dir = spec_file.parent().unwrap_or(Path::new("."));
        for part in &image.value.partitions {
            let layer = match &part.value.source {
                kiln_spec::PartitionSource::Build(stage) => {
                    stages.get(stage).cloned().with_context(|| {
                        format!("partition `{}`: no stage `{stage}`", part.value.name)
                    })?
                }
                kiln_spec::PartitionSource::Spec(file) => {
                    let path = spec_dir.join(file);
                    let text = fs::read_to_string(&path).with_context(|| {
                        format!(
                            "partition `{}`: reading spec {}",
                            part.value.name,
                            path.display()
                        )
                    })?;
                    let other = kiln_spec::parse_file(&text, &path.display().to_string())?;
                    let dir = path.parent().unwrap_or(Path::new("."));
                    builder
                        .build(&other, dir, out)
                        .map_err(|e| in_spec_file(e, &path))?
                }
            };
            partitions.insert(part.value.name.clone(), layer);
        }
    }
    Ok((id, partitions))
}

/// A build error of the spec in `file`: one whose message starts with LINE:COL gets the
/// file in front (the caller would otherwise name the top-level spec).
pub fn in_spec_file(e: BuildError, file: &Path) -> anyhow::Error {
    if e.leading_pos().is_some() {
        anyhow::anyhow!("{}:{e}", file.display())
    } else {
        e.into()
    }
}

/// Lower-case hex SHA-256 of `bytes` (the spec hash in manifests).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
