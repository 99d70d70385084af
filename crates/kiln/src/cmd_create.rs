//! `kiln create`: one command from a base to a catalogued image, as StratusLab's
//! stratus-create-image did. It writes a spec (base + packages + setup script + checks)
//! into `OUT.create/` with the files it copies, builds it with the ordinary builder
//! (`kiln build -o OUT [--test]`), and, given a key, adds the image to the catalogue signed.
//!
//! A catalogue image as the base is read from its disk (root partition mounted read-only)
//! into a rootfs tarball kept in `STORE/catalog-bases/ID.tar`, and the spec starts
//! `(from file:…)` from it: its steps then chain and cache like any other.

use crate::cli::{Cli, Command, CreateArgs};
use crate::cmd_catalog::{add_image, open_catalog, print_added, print_entry, AddRequest};
use anyhow::{bail, Context};
use chrono::Utc;
use clap::Parser;
use kiln_catalog::metadata::{parse_duration, Author, Describe};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The systemd-networkd unit a fresh Debian base gets so that its VM has a network.
const DHCP_NETWORK: &str = "[Match]\nName=en* eth*\n\n[Network]\nDHCP=yes\n";
/// What a base bootstrapped from a Debian suite needs to boot under `kiln test`/`kiln run`.
const BOOT_PACKAGES: &[&str] = &["linux-image-amd64", "systemd-sysv", "udev"];

/// An HTTP check `--check-http PORT:PATH[=TEXT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpCheck {
    pub port: u16,
    pub path: String,
    pub body: Option<String>,
}

/// Parses `PORT:PATH[=TEXT]`.
pub fn parse_check(text: &str) -> anyhow::Result<HttpCheck> {
    let (port, rest) = text.split_once(':').with_context(|| {
        format!(
            "--check-http {text:?}: write PORT:PATH or PORT:PATH=TEXT, e.g. 80:/index.html=Welcome"
        )
    })?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .with_context(|| format!("--check-http {text:?}: {port:?} is not a port"))?;
    let (path, body) = match rest.split_once('=') {
        Some((p, b)) => (p, Some(b.to_string())),
        None => (rest, None),
    };
    if !path.starts_with('/') {
        bail!("--check-http {text:?}: the path must start with /");
    }
    Ok(HttpCheck {
        port,
        path: path.to_string(),
        body,
    })
}

/// What the generated spec holds.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The `from` source.
    pub base: String,
    /// Whether the base needs a kernel, init and network to boot (a fresh bootstrap).
    pub needs_boot: bool,
    pub packages: Vec<String>,
    /// Whether a setup script (copied as `setup.sh`) runs.
    pub script: bool,
    pub author: String,
    pub email: String,
    pub comment: String,
    pub checks: Vec<HttpCheck>,
}

/// Debian's package name rule (policy 5.6.1), plus an optional `=version` or `/suite`.
fn is_package_name(p: &str) -> bool {
    let name = p.split(['=', '/']).next().unwrap_or("");
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
        && p[name.len()..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "=/+-.~:".contains(c))
}

/// The spec text for `plan`, in kiln's canonical layout.
pub fn spec_text(plan: &Plan) -> anyhow::Result<String> {
    for p in &plan.packages {
        if !is_package_name(p) {
            bail!("-a {p:?}: not a Debian package name");
        }
    }
    let mut ops = vec![format!("(from {})", plan.base)];
    let who = format!("made by kiln create for {} <{}>", plan.author, plan.email);
    ops.push(format!("(comment {})", kiln_spec::quote(&who)));
    if !plan.comment.is_empty() {
        ops.push(format!("(comment {})", kiln_spec::quote(&plan.comment)));
    }
    let mut packages: Vec<&str> = Vec::new();
    if plan.needs_boot {
        packages.extend(BOOT_PACKAGES);
        ops.push("(copy (src 80-dhcp.network) (dst /etc/systemd/network/))".into());
    }
    packages.extend(plan.packages.iter().map(String::as_str));
    if !packages.is_empty() {
        ops.push(format!(
            "(run (cache (apt-archives (target /var/cache/apt/archives)) (apt-lists (target /var/lib/apt/lists))) \
             (network host) (shell {}))",
            kiln_spec::quote(&format!(
                "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends {}",
                packages.join(" ")
            ))
        ));
    }
    if plan.needs_boot {
        ops.push("(run (shell \"systemctl enable systemd-networkd\"))".into());
    }
    if plan.script {
        ops.push("(copy (src setup.sh) (dst /root/kiln-create-setup.sh))".into());
        ops.push(
            "(run (network host) (shell \"sh -e /root/kiln-create-setup.sh && rm -f /root/kiln-create-setup.sh\"))"
                .into(),
        );
    }
    if !plan.checks.is_empty() {
        let checks: Vec<String> = plan
            .checks
            .iter()
            .map(|c| {
                let body = c
                    .body
                    .as_ref()
                    .map(|b| format!(" (body {})", kiln_spec::quote(b)))
                    .unwrap_or_default();
                format!(
                    "(http (name http-{}) (port {}) (path {}) (status 200){body} (timeout 180))",
                    c.port,
                    c.port,
                    kiln_spec::quote(&c.path)
                )
            })
            .collect();
        ops.push(format!("(test {})", checks.join(" ")));
    }
    let text = format!("({})\n", ops.join("\n "));
    let spec = kiln_spec::parse_file(&text, "generated spec")
        .context("kiln create wrote a spec it cannot read (a bug)")?;
    Ok(kiln_spec::print(&spec))
}

/// Reads the root filesystem of a catalogue image into `STORE/catalog-bases/ID.tar`
/// (once; later creates reuse it) and returns the tarball's path.
fn catalogue_base(store_dir: &Path, args: &CreateArgs) -> anyhow::Result<PathBuf> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entry = catalog.resolve(&args.from)?;
    let image = entry.image.as_deref().with_context(|| {
        format!(
            "the catalogue holds only the metadata of {}; pull the image first",
            entry.metadata.short_id
        )
    })?;
    let dir = store_dir.join("catalog-bases");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tar = dir.join(format!("{}.tar", entry.metadata.id));
    if tar.is_file() {
        return Ok(tar);
    }
    kiln_catalog::verify::verify_image_file(&entry.metadata, image)?;
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let scratch = tempfile::Builder::new()
        .prefix(".base-")
        .tempdir_in(&dir)
        .with_context(|| format!("a scratch directory in {}", dir.display()))?;
    let view = kiln_vm::disk_view::open_format(image, &entry.metadata.format, scratch.path())?;
    let staged = scratch.path().join("root.tar");
    let file =
        fs::File::create(&staged).with_context(|| format!("creating {}", staged.display()))?;
    kiln_image::tar_export::write_tar(&view.path, std::io::BufWriter::new(file))?;
    drop(view);
    fs::rename(&staged, &tar).with_context(|| format!("storing {}", tar.display()))?;
    Ok(tar)
}

pub fn create(store_dir: &Path, args: CreateArgs) -> anyhow::Result<ExitCode> {
    let checks = args
        .check_http
        .iter()
        .map(|c| parse_check(c))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let source_like = args.from.contains(':') || args.from.contains('@');
    let (base, needs_boot) = if source_like {
        (args.from.clone(), args.from.starts_with("debian:"))
    } else {
        let tar = catalogue_base(store_dir, &args)?;
        (format!("file:{}", tar.display()), false)
    };
    let plan = Plan {
        base,
        needs_boot,
        packages: args
            .packages
            .iter()
            .filter(|p| !p.is_empty())
            .cloned()
            .collect(),
        script: args.script.is_some(),
        author: args.author.clone(),
        email: args.email.clone(),
        comment: args.comment.clone(),
        checks,
    };
    let spec = spec_text(&plan)?;
    let context = {
        let mut name = args.output.as_os_str().to_os_string();
        name.push(".create");
        PathBuf::from(name)
    };
    fs::create_dir_all(&context).with_context(|| format!("creating {}", context.display()))?;
    let spec_path = context.join("build.spec");
    fs::write(&spec_path, &spec).with_context(|| format!("writing {}", spec_path.display()))?;
    if plan.needs_boot {
        fs::write(context.join("80-dhcp.network"), DHCP_NETWORK)?;
    }
    if let Some(script) = &args.script {
        fs::copy(script, context.join("setup.sh"))
            .with_context(|| format!("reading the setup script {}", script.display()))?;
    }
    if args.print_spec || args.spec_only {
        print!("{spec}");
    }
    if args.spec_only {
        eprintln!("kiln create: spec written to {}", spec_path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut build = vec![
        "kiln".to_string(),
        "build".into(),
        "-f".into(),
        spec_path.display().to_string(),
        context.display().to_string(),
        "-o".into(),
        args.output.display().to_string(),
    ];
    if !plan.checks.is_empty() {
        build.push("--test".into());
    }
    let Command::Build(build_args) = Cli::try_parse_from(&build)?.command else {
        unreachable!("parsed a build command line");
    };
    let code = crate::cmd_build::build(store_dir, build_args)?;
    if code != ExitCode::SUCCESS {
        eprintln!("kiln create: the image did not build or pass its checks; nothing was added to the catalogue");
        return Ok(code);
    }
    let Some(key) = &args.key else {
        println!(
            "created {} (no --key: not added to the catalogue)",
            args.output.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let title = args.title.clone().unwrap_or_else(|| {
        args.output
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into())
    });
    let entry = add_image(
        &catalog,
        AddRequest {
            image: &args.output,
            describe: Describe {
                title,
                description: args.comment.clone(),
                version: args.image_version.clone(),
                author: Author {
                    name: args.author.clone(),
                    email: args.email.clone(),
                },
                comment: args.comment.clone(),
                endorser_email: args.endorser.clone().unwrap_or_else(|| args.email.clone()),
                endorser_key_id: String::new(),
                created: Utc::now(),
                valid_for: parse_duration(&args.valid_for)?,
                locations: vec![],
            },
            key,
            strict: args.strict,
            lint: true,
        },
    )?;
    print_added(&entry, args.json.json);
    if !args.json.json {
        println!();
        print_entry(&entry);
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_parse() {
        assert_eq!(
            parse_check("80:/index.html=Cloudy Weather").unwrap(),
            HttpCheck {
                port: 80,
                path: "/index.html".into(),
                body: Some("Cloudy Weather".into())
            }
        );
        assert_eq!(parse_check("8080:/").unwrap().body, None);
        for bad in ["80", "x:/", "0:/", "80:index.html"] {
            assert!(parse_check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_for_a_debian_base_boots_installs_runs_and_tests() {
        let plan = Plan {
            base: "debian:bookworm".into(),
            needs_boot: true,
            packages: vec!["apache2".into(), "curl".into()],
            script: true,
            author: "Ann \"A\" Lee".into(),
            email: "ann@lab.org".into(),
            comment: "classic web".into(),
            checks: vec![HttpCheck {
                port: 80,
                path: "/".into(),
                body: Some("Cloudy".into()),
            }],
        };
        let text = spec_text(&plan).unwrap();
        let spec = kiln_spec::parse(&text).unwrap();
        assert!(text.contains("(from debian:bookworm)"), "{text}");
        assert!(
            text.contains("linux-image-amd64 systemd-sysv udev apache2 curl"),
            "{text}"
        );
        assert!(text.contains("Ann \\\"A\\\" Lee"), "{text}");
        assert_eq!(kiln_spec::print(&spec), text);
        assert!(text.contains("(src setup.sh)"), "{text}");
        assert!(text.contains("(body Cloudy)"), "{text}");
        assert!(spec.test.is_some());
    }

    /// Free text (a comment with a tab and a control character, a body with a quote and a
    /// backslash) reaches the spec escaped as the spec printer escapes it, and back intact.
    #[test]
    fn free_text_is_escaped_for_the_spec() {
        let plan = Plan {
            base: "debian:bookworm".into(),
            author: "Ann".into(),
            email: "ann@lab.org".into(),
            comment: "tabbed\there\u{1}".into(),
            checks: vec![HttpCheck {
                port: 80,
                path: "/".into(),
                body: Some("say \"hi\" \\ bye".into()),
            }],
            ..Plan::default()
        };
        let text = spec_text(&plan).unwrap();
        let spec = kiln_spec::parse(&text).unwrap();
        assert!(text.contains("tabbed\\there"), "{text}");
        let printed = kiln_spec::print(&spec);
        assert!(
            printed.contains(r#"(body "say \"hi\" \\ bye")"#),
            "{printed}"
        );
    }

    #[test]
    fn package_names_are_checked() {
        let plan = Plan {
            base: "debian:bookworm".into(),
            packages: vec!["apache2; rm -rf /".into()],
            ..Plan::default()
        };
        assert!(spec_text(&plan).is_err());
        assert!(
            is_package_name("libc6=2.36-9") && is_package_name("g++") && !is_package_name("-x")
        );
    }
}
