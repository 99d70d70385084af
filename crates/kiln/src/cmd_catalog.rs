//! `kiln key generate` and `kiln image add|ls|search|show|deprecate|rm|verify|push|pull|lint`:
//! the image catalogue (`kiln_catalog`) on the command line.

use crate::cli::{
    CatalogArg, ImageAddArgs, ImageCommand, ImageDeprecateArgs, ImageLintArgs, ImageLsArgs,
    ImagePullArgs, ImagePushArgs, ImageRefArgs, ImageRmArgs, ImageSearchArgs, ImageVerifyArgs,
    KeyCommand, RemoteArgs, TrustArgs,
};
use crate::cmd_catalog_oci;
use anyhow::{bail, Context};
use chrono::Utc;
use kiln_catalog::catalog::{Catalog, Entry, ImageSource};
use kiln_catalog::lint::{lint_root, Finding};
use kiln_catalog::metadata::{
    parse_duration, rfc3339, Author, Deprecation, Describe, Filter, Metadata,
};
use kiln_catalog::sign::{self, load_secret, password_from_env};
use kiln_catalog::trust::Trust;
use kiln_catalog::verify::{verify_image_file, verify_metadata};
use kiln_catalog::{client, remote};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub fn key(cmd: KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Generate(args) => {
            let made = sign::generate(&args.output, &password_from_env(), &args.comment)?;
            let public = sign::public_key_path(&args.output);
            if args.json.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "key_id": made.key_id,
                        "secret_key": args.output,
                        "public_key": public,
                    })
                );
            } else {
                println!("key id {}", made.key_id);
                println!("secret key: {} (keep it private)", args.output.display());
                println!(
                    "public key: {} (give it to those who verify your images)",
                    public.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub fn image(store_dir: &Path, cmd: ImageCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ImageCommand::Add(args) => add(store_dir, args),
        ImageCommand::Ls(args) => ls(store_dir, args),
        ImageCommand::Search(args) => search(store_dir, args),
        ImageCommand::Show(args) => show(store_dir, args),
        ImageCommand::Deprecate(args) => deprecate(store_dir, args),
        ImageCommand::Rm(args) => rm(store_dir, args),
        ImageCommand::Verify(args) => verify(store_dir, args),
        ImageCommand::Push(args) => push(store_dir, args),
        ImageCommand::Pull(args) => pull(store_dir, args),
        ImageCommand::Lint(args) => lint(store_dir, args),
    }
}

/// The local catalogue's directory.
pub fn catalog_dir(store_dir: &Path, arg: &CatalogArg) -> PathBuf {
    arg.catalog
        .clone()
        .unwrap_or_else(|| store_dir.join("catalog"))
}

pub fn open_catalog(store_dir: &Path, arg: &CatalogArg) -> anyhow::Result<Catalog> {
    let dir = catalog_dir(store_dir, arg);
    Catalog::open(&dir).with_context(|| format!("opening the catalogue {}", dir.display()))
}

fn load_trust(catalog: &Catalog, args: &TrustArgs) -> anyhow::Result<Trust> {
    let dir = args
        .trust
        .clone()
        .unwrap_or_else(|| catalog.dir.join("trust"));
    Ok(Trust::load(&dir)?)
}

fn token(args: &RemoteArgs) -> anyhow::Result<String> {
    args.token
        .clone()
        .filter(|t| !t.trim().is_empty())
        .context("the marketplace needs its bearer token: --token TOKEN or $KILN_MARKETPLACE_TOKEN")
}

/// What `kiln image add` (and `kiln create`) is told about an image.
pub struct AddRequest<'a> {
    pub image: &'a Path,
    pub describe: Describe,
    pub key: &'a Path,
    pub strict: bool,
    pub lint: bool,
}

/// Adds a kiln-built image to the catalogue, signed: the shared path of `add` and `create`.
pub fn add_image(catalog: &Catalog, req: AddRequest<'_>) -> anyhow::Result<Entry> {
    let manifest_path = kiln_image::manifest::manifest_path(req.image);
    if !manifest_path.is_file() {
        bail!(
            "{}: no {} beside it: the catalogue takes images kiln built (`kiln build -o`), whose \
             manifest records their checksums, partitions and OS",
            req.image.display(),
            manifest_path.display()
        );
    }
    let manifest = kiln_image::manifest::read_manifest(&manifest_path)?;
    let key = load_secret(req.key, &password_from_env())?;
    let mut describe = req.describe;
    describe.endorser_key_id = key.key_id.clone();
    let metadata = Metadata::from_manifest(&manifest, &describe)?;
    // The manifest may be older than the file: the file's bytes are what is endorsed.
    verify_image_file(&metadata, req.image).with_context(|| {
        format!(
            "{} no longer matches {} (rebuild or re-export the image)",
            req.image.display(),
            manifest_path.display()
        )
    })?;
    if req.lint && !req.strict && !nix::unistd::geteuid().is_root() {
        eprintln!(
            "kiln: warning: hygiene check of {} skipped: it mounts the image, which needs root \
             (run `kiln image lint` as root)",
            req.image.display()
        );
    } else if req.lint {
        let findings = lint_image_file(req.image)?;
        report_findings(&findings, &req.image.display().to_string());
        if req.strict && !findings.is_empty() {
            bail!(
                "{}: the hygiene check found {} problem(s) (listed above); fix the image or add it without --strict",
                req.image.display(),
                findings.len()
            );
        }
    }
    let bytes = metadata.canonical_json();
    let signature = sign::sign(&key, &bytes, &trusted_comment(&metadata))?;
    Ok(catalog.put(&metadata, &bytes, &signature, ImageSource::Copy(req.image))?)
}

/// The trusted comment bound into each metadata signature (minisign -V prints it).
fn trusted_comment(m: &Metadata) -> String {
    format!(
        "kiln image {} {} endorsed by {} until {}",
        m.short_id, m.id, m.endorser.email, m.valid_until
    )
}

fn add(store_dir: &Path, args: ImageAddArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let describe = Describe {
        title: args.title,
        description: args.description,
        version: args.image_version,
        author: Author {
            name: args.author.unwrap_or_else(|| args.endorser.clone()),
            email: args.email.unwrap_or_else(|| args.endorser.clone()),
        },
        comment: args.comment,
        endorser_email: args.endorser,
        endorser_key_id: String::new(),
        created: Utc::now(),
        valid_for: parse_duration(&args.valid_for)?,
        locations: args.locations,
    };
    let entry = add_image(
        &catalog,
        AddRequest {
            image: &args.image,
            describe,
            key: &args.key,
            strict: args.strict,
            lint: !args.no_lint,
        },
    )?;
    print_added(&entry, args.json.json);
    Ok(ExitCode::SUCCESS)
}

pub fn print_added(entry: &Entry, json: bool) {
    if json {
        println!("{}", listing(entry));
    } else {
        let m = &entry.metadata;
        println!("added {} ({})", m.short_id, m.title);
        println!("id {}", m.id);
        println!(
            "signed by {} (key {}), valid until {}",
            m.endorser.email, m.endorser.key_id, m.valid_until
        );
    }
}

fn listing(entry: &Entry) -> serde_json::Value {
    let mut v = serde_json::to_value(&entry.metadata).unwrap_or_default();
    v["validity"] = entry.metadata.validity(Utc::now()).as_str().into();
    v["image_path"] = serde_json::to_value(&entry.image).unwrap_or_default();
    v["metadata_path"] = entry
        .dir
        .join(kiln_catalog::catalog::METADATA_FILE)
        .display()
        .to_string()
        .into();
    v["signature_path"] = entry
        .dir
        .join(kiln_catalog::catalog::SIGNATURE_FILE)
        .display()
        .to_string()
        .into();
    v
}

fn print_table(entries: &[&Entry], json: bool) {
    if json {
        let rows: Vec<_> = entries.iter().map(|e| listing(e)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return;
    }
    println!(
        "{:<16}  {:<24}  {:<8}  {:<14}  {:<20}  {:<10}  VALID UNTIL",
        "SHORT ID", "TITLE", "VERSION", "OS", "ENDORSER", "STATE"
    );
    let now = Utc::now();
    for e in entries {
        let m = &e.metadata;
        let os: Vec<String> = m
            .partitions
            .iter()
            .map(|p| {
                format!(
                    "{}{}/{}",
                    p.os,
                    if p.os_version.is_empty() {
                        String::new()
                    } else {
                        format!("-{}", p.os_version)
                    },
                    p.arch
                )
            })
            .collect();
        println!(
            "{:<16}  {:<24}  {:<8}  {:<14}  {:<20}  {:<10}  {}",
            m.short_id,
            truncate(&m.title, 24),
            truncate(&m.version, 8),
            truncate(&os.join(","), 14),
            truncate(&m.endorser.email, 20),
            m.validity(now).as_str(),
            m.valid_until
        );
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

fn list_entries(catalog: &Catalog) -> anyhow::Result<Vec<Entry>> {
    let (entries, broken) = catalog.list()?;
    for b in broken {
        eprintln!("kiln: warning: unreadable catalogue entry {b}");
    }
    Ok(entries)
}

fn ls(store_dir: &Path, args: ImageLsArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entries = list_entries(&catalog)?;
    print_table(&entries.iter().collect::<Vec<_>>(), args.json.json);
    Ok(ExitCode::SUCCESS)
}

fn search(store_dir: &Path, args: ImageSearchArgs) -> anyhow::Result<ExitCode> {
    let filter = Filter {
        q: Some(args.query.clone()),
        os: args.os.clone(),
        arch: args.arch.clone(),
        endorser: args.endorser.clone(),
        include_expired: args.include_expired,
    };
    if let Some(target) = &args.remote {
        let found = client::search(target, &filter)?;
        if args.json.json {
            println!("{}", serde_json::to_string_pretty(&found)?);
        } else {
            for v in &found {
                println!(
                    "{:<16}  {:<24}  {:<10}  {}",
                    v["short_id"].as_str().unwrap_or(""),
                    truncate(v["title"].as_str().unwrap_or(""), 24),
                    v["validity"].as_str().unwrap_or(""),
                    v["pull"].as_str().unwrap_or("")
                );
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entries = list_entries(&catalog)?;
    let now = Utc::now();
    let found: Vec<&Entry> = entries
        .iter()
        .filter(|e| filter.matches(&e.metadata, now))
        .collect();
    print_table(&found, args.json.json);
    Ok(ExitCode::SUCCESS)
}

fn show(store_dir: &Path, args: ImageRefArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entry = catalog.resolve(&args.id)?;
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&listing(&entry))?);
        return Ok(ExitCode::SUCCESS);
    }
    print_entry(&entry);
    Ok(ExitCode::SUCCESS)
}

/// An entry's metadata for people (`kiln image show`, `kiln create`).
pub fn print_entry(entry: &Entry) {
    let m = &entry.metadata;
    println!("{} {}", m.title, m.version);
    println!("id:           {}", m.id);
    println!("short id:     {}", m.short_id);
    if !m.description.is_empty() {
        println!("description:  {}", m.description);
    }
    println!("author:       {} <{}>", m.author.name, m.author.email);
    println!(
        "endorser:     {} (key {})",
        m.endorser.email, m.endorser.key_id
    );
    println!("created:      {}", m.created);
    println!(
        "valid until:  {} ({})",
        m.valid_until,
        m.validity(Utc::now()).as_str()
    );
    if let Some(d) = &m.deprecated {
        println!("deprecated:   {} ({})", d.reason, d.at);
    }
    println!(
        "file:         {} ({}, {} bytes, virtual {} bytes)",
        m.file, m.format, m.bytes, m.virtual_size
    );
    println!("sha256:       {}", m.checksums.sha256);
    println!("sha512:       {}", m.checksums.sha512);
    for p in &m.partitions {
        let default = if m.default_partition.as_deref() == Some(p.name.as_str()) {
            " (default)"
        } else {
            ""
        };
        println!(
            "partition {}:  {} {} {} {}{default}",
            p.index, p.name, p.os, p.os_version, p.arch
        );
    }
    if !m.node_types.is_empty() {
        println!("node types:   {}", m.node_types.join(", "));
    }
    for l in &m.locations {
        println!("location:     {l}");
    }
    if !m.comment.is_empty() {
        println!("comment:      {}", m.comment);
    }
    match &entry.image {
        Some(p) => println!("image:        {}", p.display()),
        None => println!("image:        not held (metadata only)"),
    }
}

fn deprecate(store_dir: &Path, args: ImageDeprecateArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entry = catalog.resolve(&args.id)?;
    let key = load_secret(&args.key, &password_from_env())?;
    if key.key_id != entry.metadata.endorser.key_id {
        bail!(
            "{} is key {}; image {} is endorsed by {} with key {}: only that key can deprecate it",
            args.key.display(),
            key.key_id,
            entry.metadata.short_id,
            entry.metadata.endorser.email,
            entry.metadata.endorser.key_id
        );
    }
    let mut metadata = entry.metadata.clone();
    metadata.deprecated = Some(Deprecation {
        reason: args.reason.clone(),
        at: rfc3339(Utc::now()),
    });
    let bytes = metadata.canonical_json();
    let signature = sign::sign(&key, &bytes, &trusted_comment(&metadata))?;
    let entry = catalog.put(&metadata, &bytes, &signature, ImageSource::None)?;
    if let Some(remote) = &args.remote {
        client::update_metadata(&entry, remote, &token(&args.remote_args)?)?;
    }
    if args.json.json {
        println!("{}", listing(&entry));
    } else {
        println!(
            "deprecated {} ({}): {}",
            metadata.short_id, metadata.title, args.reason
        );
        if let Some(remote) = &args.remote {
            println!("marketplace {remote} updated");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(store_dir: &Path, args: ImageRmArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    if let (Some(remote), Some(key)) = (&args.remote, &args.key) {
        let id = if kiln_catalog::metadata::is_hex(&args.id, 64) {
            args.id.clone()
        } else {
            catalog.resolve(&args.id)?.metadata.id
        };
        let key = load_secret(key, &password_from_env())?;
        client::delete(&id, remote, &token(&args.remote_args)?, &key)?;
        println!("removed {id} from {remote}");
        return Ok(ExitCode::SUCCESS);
    }
    let entry = catalog.resolve(&args.id)?;
    catalog.remove(&entry.metadata.id)?;
    println!(
        "removed {} ({})",
        entry.metadata.short_id, entry.metadata.title
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(store_dir: &Path, args: ImageVerifyArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entry = catalog.resolve(&args.id)?;
    let trust = load_trust(&catalog, &args.trust)?;
    let verified = verify_metadata(
        &entry.metadata,
        &entry.metadata_bytes,
        &entry.signature,
        &trust,
        Utc::now(),
        args.trust.allow_expired,
    )?;
    let image = entry.image.as_deref().with_context(|| {
        format!(
            "the catalogue holds only the metadata of {}: pull the image to verify its bytes",
            entry.metadata.short_id
        )
    })?;
    verify_image_file(&entry.metadata, image)?;
    for w in &verified.warnings {
        eprintln!("kiln: warning: {w}");
    }
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&verified)?);
    } else {
        println!(
            "ok: {} ({}) sha256 and sha512 match; signed by {} (key {}, trusted by {}); {}",
            entry.metadata.short_id,
            entry.metadata.title,
            verified.endorser,
            verified.key_id,
            verified.trusted_by,
            verified.validity.as_str()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn byte_bar(message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

fn push(store_dir: &Path, args: ImagePushArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let entry = catalog.resolve(&args.id)?;
    if let remote::Remote::Oci(location) = remote::parse_target(&args.target)? {
        return push_oci(&catalog, &entry, &location, args.json.json);
    }
    let token = token(&args.remote_args)?;
    let bar = byte_bar("pushing");
    let url = client::push(&entry, &args.target, &token, &|done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    if args.json.json {
        println!(
            "{}",
            serde_json::json!({ "id": entry.metadata.id, "url": url })
        );
    } else {
        println!(
            "pushed {} ({}) to {}",
            entry.metadata.short_id, entry.metadata.title, args.target
        );
        println!("pull it with: kiln image pull {url}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln image push ID oci://…`: the entry as one OCI artifact ([`cmd_catalog_oci`]).
fn push_oci(
    catalog: &Catalog,
    entry: &Entry,
    location: &str,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let bar = byte_bar("pushing");
    let pushed = cmd_catalog_oci::push(catalog, entry, location, &bar);
    bar.finish_and_clear();
    let (pushed, pinned) = pushed?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": entry.metadata.id,
                "url": location,
                "reference": pushed.reference,
                "digest": pushed.digest,
                "pull": pinned,
                "disk_transfer": pushed.disk_transfer,
            })
        );
    } else {
        println!(
            "pushed {} ({}) to {location} ({}, disk {})",
            entry.metadata.short_id, entry.metadata.title, pushed.digest, pushed.disk_transfer
        );
        println!("pull it with: kiln image pull {pinned}");
    }
    Ok(ExitCode::SUCCESS)
}

fn pull(store_dir: &Path, args: ImagePullArgs) -> anyhow::Result<ExitCode> {
    let catalog = open_catalog(store_dir, &args.catalog)?;
    let trust = load_trust(&catalog, &args.trust)?;
    if let remote::Remote::Oci(location) = remote::parse_source(&args.source)? {
        let bar = byte_bar("pulling");
        let pulled =
            cmd_catalog_oci::pull(&catalog, &location, &trust, args.trust.allow_expired, &bar);
        bar.finish_and_clear();
        let (pulled, digest) = pulled?;
        return print_pulled(&pulled, Some(&digest), args.json.json);
    }
    let bar = byte_bar("pulling");
    let pulled = client::pull(
        &catalog,
        &args.source,
        &trust,
        args.trust.allow_expired,
        &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    );
    bar.finish_and_clear();
    print_pulled(&pulled?, None, args.json.json)
}

/// Reports a pull (from a marketplace, or from a registry with its manifest `digest`).
fn print_pulled(
    pulled: &client::Pulled,
    digest: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    for w in &pulled.verified.warnings {
        eprintln!("kiln: warning: {w}");
    }
    let m = &pulled.entry.metadata;
    if json {
        let mut v = listing(&pulled.entry);
        v["resumed_from"] = pulled.resumed_from.into();
        v["already_present"] = pulled.already_present.into();
        if let Some(digest) = digest {
            v["manifest_digest"] = digest.into();
        }
        println!("{v}");
    } else {
        if pulled.already_present {
            println!("already in the catalogue, verified");
        } else if pulled.resumed_from > 0 {
            println!("resumed the transfer at byte {}", pulled.resumed_from);
        }
        println!(
            "pulled {} ({}) {}: checksum and signature by {} (key {}) verified",
            m.short_id, m.title, m.version, pulled.verified.endorser, pulled.verified.key_id
        );
        if let Some(image) = &pulled.entry.image {
            println!("image: {}", image.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn report_findings(findings: &[Finding], what: &str) {
    for f in findings {
        eprintln!(
            "kiln: lint: {what}: {} {}: {}",
            f.kind.as_str(),
            f.path,
            f.detail
        );
    }
}

fn lint(store_dir: &Path, args: ImageLintArgs) -> anyhow::Result<ExitCode> {
    let path = Path::new(&args.image);
    let findings = if path.is_dir() {
        lint_root(path).with_context(|| format!("reading {}", path.display()))?
    } else if path.is_file() {
        lint_image_file(path)?
    } else {
        let catalog = open_catalog(store_dir, &args.catalog)?;
        let entry = catalog.resolve(&args.image).with_context(|| {
            format!(
                "{} is neither a file, a directory nor a catalogue image",
                args.image
            )
        })?;
        let image = entry
            .image
            .context("the catalogue holds only this image's metadata; pull it first")?;
        lint_image_file(&image)?
    };
    if args.json.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else if findings.is_empty() {
        println!("clean: no private keys, host keys, shell history, machine-id, DHCP leases or root password found");
    } else {
        for f in &findings {
            println!("{:<14} {}: {}", f.kind.as_str(), f.path, f.detail);
        }
    }
    if args.strict && !findings.is_empty() {
        eprintln!("kiln: lint: {} problem(s) found (--strict)", findings.len());
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Lints every ext filesystem of a disk image, mounted read-only (a raw copy first for
/// other formats). Paths are prefixed with the partition when there are several.
pub fn lint_image_file(image: &Path) -> anyhow::Result<Vec<Finding>> {
    use kiln_image::tools::qemu_img;
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "checking {} needs root (its filesystems are mounted read-only through loop devices); \
             run as root or lint the unpacked tree (kiln image lint DIR)",
            image.display()
        );
    }
    kiln_sandbox::mount::enter_private_mount_namespace()?;
    let info = qemu_img::info(image)?;
    let scratch = tempfile::Builder::new()
        .prefix("kiln-lint-")
        .tempdir_in(std::env::temp_dir())
        .context("making a scratch directory")?;
    let raw = if info.format == "raw" {
        image.to_path_buf()
    } else {
        let raw = scratch.path().join("disk.raw");
        qemu_img::convert_to_raw(image, &info.format, &raw)?;
        raw
    };
    let filesystems = kiln_vm::partitions::ext_filesystems(&raw)
        .with_context(|| format!("reading the partition table of {}", image.display()))?;
    if filesystems.is_empty() {
        bail!(
            "{}: no ext2/3/4 filesystem found; kiln lints ext filesystems only",
            image.display()
        );
    }
    let several = filesystems.len() > 1;
    let mut findings = Vec::new();
    for (i, fs) in filesystems.iter().enumerate() {
        let root = scratch.path().join(format!("p{i}"));
        let mount = kiln_sandbox::mount::mount_ext4_partition_readonly(&raw, fs.offset, &root)?;
        let mut found = lint_root(&root).with_context(|| format!("reading {}", image.display()))?;
        drop(mount);
        if several {
            for f in &mut found {
                f.path = format!("[partition at {}]{}", fs.offset, f.path);
            }
        }
        findings.extend(found);
    }
    Ok(findings)
}
