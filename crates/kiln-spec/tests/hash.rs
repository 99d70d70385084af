//! Step id properties beyond the unit tests in `src/hash.rs`.

use kiln_spec::hash::{base_id, copy_id, flatten_id, run_id};
use kiln_spec::{LayerId, ManifestEntry, ManifestKind, Run, StepContext, User};

fn root() -> User {
    User::Unix { uid: 0, gid: 0 }
}

fn file(path: &str, byte: u8, mode: u32) -> ManifestEntry {
    ManifestEntry {
        path: path.into(),
        kind: ManifestKind::File {
            sha256: [byte; 32],
            mode,
        },
    }
}

#[test]
fn ids_are_64_lowercase_hex_and_short_is_a_prefix() {
    let id = base_id("debian", &[("suite", "bookworm")]);
    assert_eq!(LayerId::parse(id.as_str()), Ok(id.clone()));
    assert_eq!(id.short().len(), 12);
    assert!(id.as_str().starts_with(id.short()));
}

#[test]
fn base_id_depends_on_kind_and_every_input() {
    let a = base_id("debian", &[("suite", "bookworm"), ("arch", "amd64")]);
    assert_ne!(
        a,
        base_id("tar", &[("suite", "bookworm"), ("arch", "amd64")])
    );
    assert_ne!(
        a,
        base_id("debian", &[("suite", "trixie"), ("arch", "amd64")])
    );
    assert_ne!(a, base_id("debian", &[("suite", "bookworm")]));
    // Length prefixes keep "ab"+"c" apart from "a"+"bc".
    assert_ne!(base_id("x", &[("ab", "c")]), base_id("x", &[("a", "bc")]));
}

#[test]
fn copy_id_depends_on_parent_user_dst_and_manifest() {
    let p = base_id("debian", &[("suite", "bookworm")]);
    let manifest = vec![
        file("a", 1, 0o644),
        ManifestEntry {
            path: "d".into(),
            kind: ManifestKind::Dir { mode: 0o755 },
        },
    ];
    let id = copy_id(&p, &root(), "/app", &manifest);
    assert_eq!(id, copy_id(&p, &root(), "/app", &manifest));
    assert_ne!(id, copy_id(&flatten_id(&p), &root(), "/app", &manifest));
    assert_ne!(
        id,
        copy_id(&p, &User::Name("app".into()), "/app", &manifest)
    );
    assert_ne!(id, copy_id(&p, &root(), "/srv", &manifest));
    let mut changed = manifest.clone();
    changed[0] = file("a", 2, 0o644);
    assert_ne!(id, copy_id(&p, &root(), "/app", &changed), "content");
    changed[0] = file("a", 1, 0o755);
    assert_ne!(id, copy_id(&p, &root(), "/app", &changed), "mode");
    changed[0] = ManifestEntry {
        path: "a".into(),
        kind: ManifestKind::Symlink { target: "b".into() },
    };
    assert_ne!(id, copy_id(&p, &root(), "/app", &changed), "kind");
    assert_ne!(
        id,
        copy_id(&p, &root(), "/app", &manifest[..1]),
        "entry count"
    );
}

#[test]
fn run_and_copy_ids_never_collide_and_flatten_is_new() {
    let p = base_id("debian", &[("suite", "bookworm")]);
    let ctx = StepContext {
        workdir: "/".into(),
        user: root(),
        env: vec![],
        shell: vec!["/bin/sh".into(), "-c".into()],
    };
    let run = run_id(
        &p,
        &ctx,
        &Run {
            shell: "true".into(),
            ..Run::default()
        },
        &[],
    );
    assert_ne!(run, copy_id(&p, &root(), "/", &[]));
    assert_ne!(flatten_id(&p), p);
    assert_eq!(flatten_id(&p), flatten_id(&p));
}

#[test]
fn env_order_and_user_enter_the_run_id() {
    let p = base_id("debian", &[("suite", "bookworm")]);
    let env = vec![
        ("A".to_string(), "1".to_string()),
        ("B".to_string(), "2".to_string()),
    ];
    let ctx = StepContext {
        workdir: "/".into(),
        user: root(),
        env: env.clone(),
        shell: vec!["/bin/sh".into(), "-c".into()],
    };
    let run = Run {
        shell: "env".into(),
        ..Run::default()
    };
    let id = run_id(&p, &ctx, &run, &[]);
    let reversed = StepContext {
        env: env.into_iter().rev().collect(),
        ..ctx.clone()
    };
    assert_ne!(id, run_id(&p, &reversed, &run, &[]));
    let other_user = StepContext {
        user: User::Unix {
            uid: 1000,
            gid: 1000,
        },
        ..ctx.clone()
    };
    assert_ne!(id, run_id(&p, &other_user, &run, &[]));
    let other_shell = StepContext {
        shell: vec!["/bin/bash".into(), "-c".into()],
        ..ctx
    };
    assert_ne!(id, run_id(&p, &other_shell, &run, &[]));
}
