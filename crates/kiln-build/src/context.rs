//! The state that `workdir`, `user`, `env` and `shell` ops accumulate between steps.

use kiln_spec::{StepContext, User};
use std::path::Path;

/// The shell OBuilder uses on Linux when the spec sets none.
pub const DEFAULT_SHELL: [&str; 3] = ["/usr/bin/env", "bash", "-c"];
/// The fallback for bases without bash (busybox, alpine).
pub const FALLBACK_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// `PATH` for bases whose config has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The context a spec starts from, given its base's config and root directory.
pub fn initial(config: &kiln_store::BaseConfig, base_rootfs: &Path) -> StepContext {
    let mut env = config.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), DEFAULT_PATH.into()));
    }
    let workdir = config
        .workdir
        .clone()
        .filter(|w| w.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let shell: Vec<String> = if has_bash(base_rootfs) {
        DEFAULT_SHELL.iter().map(|s| s.to_string()).collect()
    } else {
        FALLBACK_SHELL.iter().map(|s| s.to_string()).collect()
    };
    StepContext {
        workdir,
        user: User::Unix { uid: 0, gid: 0 },
        env,
        shell,
    }
}

/// Whether the base tree has bash where `/usr/bin/env bash` would find it.
fn has_bash(rootfs: &Path) -> bool {
    ["usr/bin/bash", "bin/bash", "usr/local/bin/bash"]
        .iter()
        .any(|p| {
            // Debian's /bin is a relative symlink to usr/bin, so following it stays inside rootfs.
            rootfs.join(p).symlink_metadata().is_ok()
        })
}

/// Joins `path` onto `workdir` as OBuilder does: absolute replaces, relative appends;
/// the result is normalised (`.` and `..` resolved lexically, never above `/`).
pub fn join_workdir(workdir: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{workdir}/{path}")
    };
    let mut parts: Vec<&str> = Vec::new();
    for part in joined.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `(env NAME VALUE)`: replaces an existing variable in place or appends it.
pub fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    }
}

/// Looks `name` up in passwd-format text; returns (uid, gid).
pub fn lookup_passwd(passwd: &str, name: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            Some((f[2].parse().ok()?, f[3].parse().ok()?))
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_joins_like_obuilder() {
        assert_eq!(join_workdir("/", "src"), "/src");
        assert_eq!(join_workdir("/src", "lib"), "/src/lib");
        assert_eq!(join_workdir("/src", "/opt"), "/opt");
        assert_eq!(join_workdir("/src/a", "../b/./c/"), "/src/b/c");
        assert_eq!(join_workdir("/", "../.."), "/");
    }

    #[test]
    fn env_replaces_in_place() {
        let mut env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
        set_env(&mut env, "A", "3");
        set_env(&mut env, "C", "4");
        assert_eq!(
            env,
            vec![
                ("A".into(), "3".into()),
                ("B".into(), "2".into()),
                ("C".into(), "4".into())
            ]
        );
    }

    #[test]
    fn passwd_lookup() {
        let p = "root:x:0:0:root:/root:/bin/bash\nmemcache:x:104:110::/nonexistent:/bin/false\n";
        assert_eq!(lookup_passwd(p, "memcache"), Some((104, 110)));
        assert_eq!(lookup_passwd(p, "nobody"), None);
    }

    #[test]
    fn shell_defaults_depend_on_bash() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = kiln_store::BaseConfig::default();
        assert_eq!(initial(&cfg, dir.path()).shell, vec!["/bin/sh", "-c"]);
        std::fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        std::fs::write(dir.path().join("usr/bin/bash"), b"").unwrap();
        let ctx = initial(&cfg, dir.path());
        assert_eq!(ctx.shell, vec!["/usr/bin/env", "bash", "-c"]);
        assert_eq!(ctx.env[0].0, "PATH");
        assert_eq!(ctx.workdir, "/");
    }
}
