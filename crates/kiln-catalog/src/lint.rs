//! The hygiene check (`kiln image lint`): what a public image must not carry, found in
//! a root filesystem tree — private keys, SSH host keys, shell histories, a machine-id,
//! DHCP leases, and a password hash (or an empty password) for root.
//!
//! The tree is read, never changed. Symbolic links are not followed (a link into the
//! host would otherwise be read from the host).

use serde::Serialize;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// What kind of problem a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    PrivateKey,
    SshHostKey,
    ShellHistory,
    MachineId,
    DhcpLease,
    RootPassword,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::PrivateKey => "private-key",
            Kind::SshHostKey => "ssh-host-key",
            Kind::ShellHistory => "shell-history",
            Kind::MachineId => "machine-id",
            Kind::DhcpLease => "dhcp-lease",
            Kind::RootPassword => "root-password",
        }
    }
}

/// One problem: its kind, the path inside the image, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    /// Absolute path inside the image (`/etc/ssh/ssh_host_ed25519_key`).
    pub path: String,
    pub detail: String,
}

/// Directories whose files are read for private key blocks. The rest of the tree (/usr:
/// packaged files, test keys of libraries) is what the distribution ships, not what a
/// build leaves behind.
const KEY_DIRS: &[&str] = &[
    "etc",
    "root",
    "home",
    "srv",
    "opt",
    "var",
    "tmp",
    "usr/local",
];
/// Below these the files belong to package managers and are skipped.
const SKIP_DIRS: &[&str] = &[
    "var/lib/dpkg",
    "var/cache/apt",
    "var/lib/apt",
    "var/cache/debconf",
];
/// How much of a file is read looking for a key block.
const HEAD_BYTES: usize = 16 * 1024;
/// Larger files are not read (a key is small; an image's data files are not).
const MAX_KEY_FILE: u64 = 1 << 20;

const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".history",
    ".python_history",
    ".mysql_history",
    ".psql_history",
    ".sqlite_history",
    ".lesshst",
    ".viminfo",
    ".node_repl_history",
];

const LEASE_DIRS: &[&str] = &[
    "var/lib/dhcp",
    "var/lib/dhclient",
    "var/lib/dhcpcd",
    "var/lib/dhcpcd5",
    "var/lib/NetworkManager",
    "var/lib/systemd/network",
    "var/lib/udhcpc",
    "var/lib/misc",
];

/// Checks the tree at `root`; findings in path order.
pub fn lint_root(root: &Path) -> std::io::Result<Vec<Finding>> {
    let mut findings = Vec::new();
    host_keys(root, &mut findings)?;
    private_keys(root, &mut findings)?;
    histories(root, &mut findings)?;
    machine_ids(root, &mut findings)?;
    leases(root, &mut findings)?;
    root_password(root, &mut findings)?;
    // A host key is also a private key; say the more specific thing once.
    let specific: Vec<String> = findings
        .iter()
        .filter(|f| f.kind != Kind::PrivateKey)
        .map(|f| f.path.clone())
        .collect();
    findings.retain(|f| f.kind != Kind::PrivateKey || !specific.contains(&f.path));
    findings.sort_by(|a, b| (&a.path, a.kind.as_str()).cmp(&(&b.path, b.kind.as_str())));
    Ok(findings)
}

fn inside(root: &Path, path: &Path) -> String {
    format!(
        "/{}",
        path.strip_prefix(root).unwrap_or(path).to_string_lossy()
    )
}

/// A regular file (not a link) with at least one byte.
fn non_empty_file(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.len() > 0)
}

fn host_keys(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    let dir = root.join("etc/ssh");
    let Ok(listing) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for entry in listing {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("ssh_host_") && name.ends_with("_key") && non_empty_file(&path) {
            out.push(Finding {
                kind: Kind::SshHostKey,
                path: inside(root, &path),
                detail: "SSH host key: every machine booted from the image would share it \
                         (remove the keys and let the first boot run `ssh-keygen -A`)"
                    .into(),
            });
        }
    }
    Ok(())
}

fn private_keys(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    let skip: Vec<PathBuf> = SKIP_DIRS.iter().map(|d| root.join(d)).collect();
    for dir in KEY_DIRS {
        let dir = root.join(dir);
        if !fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let walk = walkdir::WalkDir::new(&dir)
            .follow_links(false)
            .into_iter()
            .filter_entry(|e| !skip.iter().any(|s| e.path() == s));
        for entry in walk.filter_map(Result::ok) {
            if !entry.file_type().is_file() {
                continue;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if meta.len() == 0 || meta.len() > MAX_KEY_FILE {
                continue;
            }
            if let Some(what) = key_block(entry.path()) {
                out.push(Finding {
                    kind: Kind::PrivateKey,
                    path: inside(root, entry.path()),
                    detail: format!(
                        "holds a {what}: a secret shipped to everyone who pulls the image"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// The kind of private key block that starts a line in the head of `path`, if any.
fn key_block(path: &Path) -> Option<String> {
    let mut head = vec![0u8; HEAD_BYTES];
    let n = fs::File::open(path)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .ok()?;
    let text = String::from_utf8_lossy(&head[..n]);
    text.lines().find_map(|line| {
        let label = line
            .trim()
            .strip_prefix("-----BEGIN ")?
            .strip_suffix("-----")?;
        (label.ends_with("PRIVATE KEY") || label == "PGP PRIVATE KEY BLOCK")
            .then(|| label.to_lowercase())
    })
}

fn read_up_to(f: &mut fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Home directories: /root and every directory under /home.
fn homes(root: &Path) -> Vec<PathBuf> {
    let mut homes = vec![root.join("root")];
    if let Ok(listing) = fs::read_dir(root.join("home")) {
        homes.extend(listing.filter_map(Result::ok).map(|e| e.path()));
    }
    homes
}

fn histories(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    for home in homes(root) {
        for name in HISTORY_FILES {
            let path = home.join(name);
            if non_empty_file(&path) {
                out.push(Finding {
                    kind: Kind::ShellHistory,
                    path: inside(root, &path),
                    detail: "command history of whoever prepared the image".into(),
                });
            }
        }
    }
    Ok(())
}

fn machine_ids(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    for rel in ["etc/machine-id", "var/lib/dbus/machine-id"] {
        let path = root.join(rel);
        if !non_empty_file(&path) {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap_or_default();
        // "uninitialized" is systemd's first-boot marker: not an identity.
        if text.trim().is_empty() || text.trim() == "uninitialized" {
            continue;
        }
        out.push(Finding {
            kind: Kind::MachineId,
            path: inside(root, &path),
            detail: "a machine-id: every machine booted from the image would share it \
                     (leave the file empty)"
                .into(),
        });
    }
    Ok(())
}

fn leases(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    for dir in LEASE_DIRS {
        let dir = root.join(dir);
        let Ok(listing) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in listing.filter_map(Result::ok) {
            let path = entry.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let lease = name.contains("lease") || name.starts_with("dhclient");
            if lease && non_empty_file(&path) {
                out.push(Finding {
                    kind: Kind::DhcpLease,
                    path: inside(root, &path),
                    detail: "a DHCP lease of the network the image was prepared on".into(),
                });
            }
        }
    }
    Ok(())
}

fn root_password(root: &Path, out: &mut Vec<Finding>) -> std::io::Result<()> {
    let path = root.join("etc/shadow");
    let Ok(text) = fs::read_to_string(&path) else {
        return Ok(());
    };
    for line in text.lines() {
        let mut fields = line.split(':');
        if fields.next() != Some("root") {
            continue;
        }
        let hash = fields.next().unwrap_or("");
        let detail = if hash.is_empty() {
            "root has an empty password: anyone can log in as root".to_string()
        } else if hash.starts_with('!') || hash == "*" || hash == "x" {
            continue;
        } else {
            let scheme = hash
                .strip_prefix('$')
                .and_then(|h| h.split('$').next())
                .unwrap_or("des");
            format!(
                "root has a password hash (scheme {scheme}): it can be cracked offline by \
                 anyone who pulls the image (lock it: `passwd -l root`, or `usermod -p '*' root`)"
            )
        };
        out.push(Finding {
            kind: Kind::RootPassword,
            path: "/etc/shadow".into(),
            detail,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, text: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn clean_tree_passes() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "etc/machine-id", "");
        write(
            r,
            "etc/shadow",
            "root:*:19000:0:99999:7:::\nbuild:!:19000::::::\n",
        );
        write(r, "etc/ssh/ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA");
        write(r, "root/.bash_history", "");
        write(
            r,
            "usr/share/doc/x/test.pem",
            "-----BEGIN RSA PRIVATE KEY-----\n",
        );
        write(r, "etc/ssl/certs/ca.pem", "-----BEGIN CERTIFICATE-----\n");
        assert_eq!(lint_root(r).unwrap(), vec![]);
    }

    #[test]
    fn every_planted_item_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        write(r, "etc/shadow", "root:$6$salt$hash:19000:0:99999:7:::\n");
        write(
            r,
            "etc/ssh/ssh_host_ed25519_key",
            "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
        );
        write(r, "home/alice/.bash_history", "ls\n");
        write(
            r,
            "root/.ssh/id_rsa",
            "-----BEGIN RSA PRIVATE KEY-----\nx\n",
        );
        write(r, "var/lib/dhcp/dhclient.eth0.leases", "lease {}\n");
        let kinds: Vec<(Kind, String)> = lint_root(r)
            .unwrap()
            .into_iter()
            .map(|f| (f.kind, f.path))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::MachineId, "/etc/machine-id".into()),
                (Kind::RootPassword, "/etc/shadow".into()),
                (Kind::SshHostKey, "/etc/ssh/ssh_host_ed25519_key".into()),
                (Kind::ShellHistory, "/home/alice/.bash_history".into()),
                (Kind::PrivateKey, "/root/.ssh/id_rsa".into()),
                (Kind::DhcpLease, "/var/lib/dhcp/dhclient.eth0.leases".into()),
            ]
        );
    }

    #[test]
    fn empty_root_password_is_found_and_links_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write(r, "etc/shadow", "root::19000:0:99999:7:::\n");
        fs::create_dir_all(r.join("root")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", r.join("root/.bash_history")).unwrap();
        let found = lint_root(r).unwrap();
        assert_eq!(found.len(), 1);
        assert!(found[0].detail.contains("empty password"));
    }
}
