//! Step ids, computed as DESIGN.md's store contract says.
//!
//! Every input is written into the hash with a tag and a length prefix, so no
//! two different inputs can produce the same byte stream.

use crate::ast::{Run, User};
use sha2::{Digest, Sha256};
use std::fmt;

/// A layer (step result) id: 64 lowercase hex digits of a sha256.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct LayerId(String);

impl LayerId {
    /// Accepts exactly 64 lowercase hex digits.
    pub fn parse(s: &str) -> Result<LayerId, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(LayerId(s.to_string()))
        } else {
            Err(format!("`{s}` is not a layer id (64 lowercase hex digits)"))
        }
    }

    /// The id of a digest.
    pub fn from_digest(digest: &[u8]) -> LayerId {
        LayerId(hex::encode(digest))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for humans.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for LayerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for LayerId {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        LayerId::parse(&s)
    }
}

impl From<LayerId> for String {
    fn from(id: LayerId) -> String {
        id.0
    }
}

/// The state a `run` executes in, accumulated from `workdir`, `user`, `env` and `shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepContext {
    pub workdir: String,
    pub user: User,
    /// In order of first definition; `env` replaces values in place.
    pub env: Vec<(String, String)>,
    pub shell: Vec<String>,
}

/// One entry of a copy's source manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Where the entry lands: an absolute, `/`-separated path in the image.
    pub path: String,
    pub kind: ManifestKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    File { sha256: [u8; 32], mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// Tagged, length-prefixed writer over sha256.
struct Hasher(Sha256);

impl Hasher {
    fn new(kind: &str) -> Self {
        let mut h = Hasher(Sha256::new());
        h.bytes(b"kiln-step-v1");
        h.str(kind);
        h
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }
    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }
    fn field(&mut self, tag: &str, value: &str) {
        self.str(tag);
        self.str(value);
    }
    fn list(&mut self, tag: &str, items: &[String]) {
        self.str(tag);
        self.0.update((items.len() as u64).to_le_bytes());
        for i in items {
            self.str(i);
        }
    }
    fn user(&mut self, user: &User) {
        match user {
            User::Unix { uid, gid } => self.field("user", &format!("{uid}:{gid}")),
            User::Name(n) => self.field("user-name", n),
        }
    }
    fn finish(self) -> LayerId {
        LayerId::from_digest(&self.0.finalize())
    }
}

/// The id of a base layer: `kind` names the source (`debian`, `tar`, `oci`), `inputs`
/// are its defining key/value pairs in a fixed order.
pub fn base_id(kind: &str, inputs: &[(&str, &str)]) -> LayerId {
    let mut h = Hasher::new("base");
    h.str(kind);
    for (k, v) in inputs {
        h.field(k, v);
    }
    h.finish()
}

/// The id of a `run` step. Cache mounts do not enter it; secret ids and values do.
pub fn run_id(
    parent: &LayerId,
    ctx: &StepContext,
    run: &Run,
    secret_values: &[(String, Vec<u8>)],
) -> LayerId {
    let mut h = Hasher::new("run");
    h.field("parent", parent.as_str());
    h.field("workdir", &ctx.workdir);
    h.user(&ctx.user);
    h.str("env");
    h.0.update((ctx.env.len() as u64).to_le_bytes());
    for (k, v) in &ctx.env {
        h.str(k);
        h.str(v);
    }
    h.list("shell", &ctx.shell);
    h.field("command", &run.shell);
    h.list("network", &run.network);
    h.str("secrets");
    h.0.update((run.secrets.len() as u64).to_le_bytes());
    for m in &run.secrets {
        h.str(&m.id);
        h.str(&m.target);
        let value = secret_values
            .iter()
            .find(|(id, _)| *id == m.id)
            .map(|(_, v)| v.as_slice());
        h.bytes(value.unwrap_or_default());
    }
    h.finish()
}

/// The version of the rule that decides where `copy` puts its sources. It enters every
/// copy id, so a layer built under an older rule is never reused: bump it whenever the
/// placement changes. Ids of copies made before it existed (Dockerfile placement: a
/// directory's contents went to `dst`) had no version; 2 is OBuilder's placement.
pub const COPY_RULE_VERSION: u32 = 2;

/// The id of a `copy` step: the placement rule's version, parent, user, destination and
/// the sources' manifest.
pub fn copy_id(parent: &LayerId, user: &User, dst: &str, manifest: &[ManifestEntry]) -> LayerId {
    copy_id_with_rule(COPY_RULE_VERSION, parent, user, dst, manifest)
}

fn copy_id_with_rule(
    rule: u32,
    parent: &LayerId,
    user: &User,
    dst: &str,
    manifest: &[ManifestEntry],
) -> LayerId {
    let mut h = Hasher::new("copy");
    h.field("rule", &rule.to_string());
    h.field("parent", parent.as_str());
    h.user(user);
    h.field("dst", dst);
    h.0.update((manifest.len() as u64).to_le_bytes());
    for e in manifest {
        h.str(&e.path);
        match &e.kind {
            ManifestKind::File { sha256, mode } => {
                h.str("f");
                h.bytes(sha256);
                h.str(&format!("{mode:o}"));
            }
            ManifestKind::Dir { mode } => {
                h.str("d");
                h.str(&format!("{mode:o}"));
            }
            ManifestKind::Symlink { target } => {
                h.str("l");
                h.str(target);
            }
        }
    }
    h.finish()
}

/// The id of a layer that flattens `parent`'s chain into one directory: same content, new id.
pub fn flatten_id(parent: &LayerId) -> LayerId {
    let mut h = Hasher::new("flatten");
    h.field("parent", parent.as_str());
    h.finish()
}

/// Version of how a tree layer becomes a VM base (disk layout, boot files); bumped when
/// that changes so no base made the old way is reused.
pub const VM_BASE_VERSION: u32 = 2;

/// The id of the VM base the QEMU sandbox makes from tree layer `parent`, booting the
/// kernel of layer `kernel` (`None`: `parent`'s own). This is where the sandbox enters
/// step ids: every QEMU step descends from such a base, so a QEMU-built layer never
/// shares an id with a namespace-built one, while the steps' own ids are computed
/// exactly as for the namespace sandbox.
pub fn vm_base_id(parent: &LayerId, kernel: Option<&LayerId>, sandbox_key: &str) -> LayerId {
    let mut h = Hasher::new("vm-base");
    h.field("version", &VM_BASE_VERSION.to_string());
    h.field("parent", parent.as_str());
    h.field("kernel", kernel.map_or("own", |k| k.as_str()));
    h.field("sandbox", sandbox_key);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_base_ids_depend_on_parent_kernel_and_version() {
        let a = LayerId::from_digest(&[1; 32]);
        let b = LayerId::from_digest(&[2; 32]);
        let own = vm_base_id(&a, None, "");
        assert_ne!(own, a);
        assert_ne!(own, vm_base_id(&b, None, ""));
        assert_ne!(own, vm_base_id(&a, Some(&b), ""));
        assert_ne!(own, flatten_id(&a));
        assert_ne!(own, vm_base_id(&a, None, "agent v2"));
        // Pinned: changing how a base is hashed must bump VM_BASE_VERSION.
        assert_eq!(
            own.as_str(),
            "e254fe06c352d61a8d2046d5ca496dd6ad04724c076eff84c14b3cddd05a50b0"
        );
    }

    fn ctx() -> StepContext {
        StepContext {
            workdir: "/".into(),
            user: User::Unix { uid: 0, gid: 0 },
            env: vec![("PATH".into(), "/bin".into())],
            shell: vec!["/bin/sh".into(), "-c".into()],
        }
    }

    fn run(cmd: &str) -> Run {
        Run {
            shell: cmd.into(),
            ..Default::default()
        }
    }

    #[test]
    fn run_id_depends_on_every_input_but_caches() {
        let p = base_id("debian", &[("suite", "bookworm")]);
        let base = run_id(&p, &ctx(), &run("true"), &[]);
        assert_eq!(base, run_id(&p, &ctx(), &run("true"), &[]));
        assert_ne!(base, run_id(&p, &ctx(), &run("false"), &[]));
        let mut c = ctx();
        c.workdir = "/src".into();
        assert_ne!(base, run_id(&p, &c, &run("true"), &[]));
        let mut c = ctx();
        c.env.push(("A".into(), "1".into()));
        assert_ne!(base, run_id(&p, &c, &run("true"), &[]));
        let mut net = run("true");
        net.network = vec!["host".into()];
        assert_ne!(base, run_id(&p, &ctx(), &net, &[]));
        let mut cached = run("true");
        cached.cache.push(crate::Mount {
            id: "apt".into(),
            target: "/var/cache/apt".into(),
            ..Default::default()
        });
        assert_eq!(base, run_id(&p, &ctx(), &cached, &[]));
    }

    #[test]
    fn secret_values_enter_the_hash() {
        let p = base_id("debian", &[("suite", "bookworm")]);
        let mut r = run("cat /run/s");
        r.secrets.push(crate::Mount {
            id: "tok".into(),
            target: "/run/s".into(),
            ..Default::default()
        });
        let a = run_id(&p, &ctx(), &r, &[("tok".into(), b"one".to_vec())]);
        let b = run_id(&p, &ctx(), &r, &[("tok".into(), b"two".to_vec())]);
        assert_ne!(a, b);
    }

    /// A file copied into `/t/`: the one case where the old and the new placement give the
    /// same manifest, so only the rule's version tells their layers apart.
    fn file_into_t() -> (LayerId, User, Vec<ManifestEntry>) {
        let parent = base_id("debian", &[("suite", "bookworm")]);
        let manifest = vec![ManifestEntry {
            path: "/t/f".into(),
            kind: ManifestKind::File {
                sha256: [7; 32],
                mode: 0o644,
            },
        }];
        (parent, User::Unix { uid: 0, gid: 0 }, manifest)
    }

    #[test]
    fn the_copy_rule_version_enters_the_id() {
        let (parent, user, manifest) = file_into_t();
        // copy_id of these inputs on commit 48b8903, before the version field: stores
        // filled by that code hold layers under this id, built with Dockerfile placement.
        const BEFORE_THE_VERSION: &str =
            "5e3fccaf8ea92d158fb6be80e7b6f466f87d2d217822079eef803201c49e917c";
        let id = copy_id(&parent, &user, "/t/", &manifest);
        assert_ne!(id.as_str(), BEFORE_THE_VERSION);
        assert_ne!(
            id,
            copy_id_with_rule(COPY_RULE_VERSION + 1, &parent, &user, "/t/", &manifest),
            "a version bump must change every copy id"
        );
        // Pinned so that any change to copy hashing is noticed (and comes with a bump).
        assert_eq!(id.as_str(), PINNED_V2);
    }

    const PINNED_V2: &str = "9341f24089db2a2a8b2712f0d1d6e106dce41103703c85862a6bf5b45d112de9";

    #[test]
    fn layer_id_parse_rejects_garbage() {
        assert!(LayerId::parse("abc").is_err());
        assert!(LayerId::parse(&"A".repeat(64)).is_err());
        assert!(LayerId::parse(&"a".repeat(64)).is_ok());
    }
}
