//! The `.deb` and apt-lists cache shared by Debian bootstraps (the store's deb cache).
//!
//! Layout under the cache directory:
//! - `debs/NAME_VERSION_ARCH.deb`: every package ever downloaded, verified by apt when it
//!   was fetched; added by atomic rename only;
//! - `lists/<key>/`: apt's index files for one (suite, mirror, arch), so `apt-get update`
//!   only revalidates them; replaced as a whole under an exclusive lock;
//! - `tmp/<pid>-<n>/`: one bootstrap's staging area, removed when it ends (or by the next
//!   bootstrap once its process is gone).

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// An opened cache directory.
#[derive(Debug, Clone)]
pub(crate) struct DebCache {
    root: PathBuf,
}

/// A bootstrap's staging directory, deleted on drop.
#[derive(Debug)]
pub(crate) struct Stage {
    pub dir: PathBuf,
}

impl Stage {
    /// Lists copied from the cache, for the setup hook to put in place.
    pub fn lists_in(&self) -> PathBuf {
        self.dir.join("lists-in")
    }
    /// Packages the customize hook found that the cache lacks.
    pub fn debs_out(&self) -> PathBuf {
        self.dir.join("debs-out")
    }
    /// Lists after `apt-get update`, saved by the customize hook.
    pub fn lists_out(&self) -> PathBuf {
        self.dir.join("lists-out")
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl DebCache {
    /// Creates the layout if needed and removes staging areas of dead processes.
    pub fn open(root: &Path) -> io::Result<Self> {
        let root = std::path::absolute(root)?;
        for sub in ["debs", "lists", "tmp"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let cache = DebCache { root };
        cache.sweep_stale_stages()?;
        Ok(cache)
    }

    /// `debs/`: where `.deb`s live.
    pub fn debs_dir(&self) -> PathBuf {
        self.root.join("debs")
    }

    /// A fresh staging area on the cache's filesystem.
    pub fn stage(&self) -> io::Result<Stage> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .root
            .join("tmp")
            .join(format!("{}-{n}", std::process::id()));
        let stage = Stage { dir };
        if stage.dir.exists() {
            fs::remove_dir_all(&stage.dir)?;
        }
        for sub in [stage.lists_in(), stage.debs_out(), stage.lists_out()] {
            fs::create_dir_all(sub)?;
        }
        Ok(stage)
    }

    /// Whether a hard link from the cache into `dir` works (same filesystem), so cached
    /// packages can be linked rather than copied into a new root.
    pub fn can_link_into(&self, dir: &Path) -> bool {
        let probe = self
            .root
            .join("tmp")
            .join(format!(".link-probe-{}", std::process::id()));
        let target = dir.join(format!(".kiln-link-probe-{}", std::process::id()));
        let linked = File::create(&probe).is_ok() && fs::hard_link(&probe, &target).is_ok();
        let _ = fs::remove_file(&target);
        let _ = fs::remove_file(&probe);
        linked
    }

    /// The lists key of one apt source.
    pub fn lists_key(suite: &str, mirror: &str, arch: &str) -> String {
        let digest = Sha256::digest(format!("{suite}\n{mirror}\n{arch}").as_bytes());
        hex::encode(&digest[..8])
    }

    /// Copies the cached lists for `key` (if any) into `into`, keeping mtimes so apt can
    /// revalidate them with conditional requests.
    pub fn load_lists(&self, key: &str, into: &Path) -> io::Result<usize> {
        let _lock = self.lock_lists(key, FlockArg::LockShared)?;
        let dir = self.root.join("lists").join(key);
        if !dir.is_dir() {
            return Ok(0);
        }
        let mut copied = 0;
        for entry in fs::read_dir(&dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                let to = into.join(entry.file_name());
                fs::copy(entry.path(), &to)?;
                File::options()
                    .write(true)
                    .open(&to)?
                    .set_modified(entry.metadata()?.modified()?)?;
                copied += 1;
            }
        }
        Ok(copied)
    }

    /// Replaces the cached lists for `key` with the regular files of `from` (apt's lock
    /// file excluded).
    pub fn save_lists(&self, key: &str, from: &Path) -> io::Result<()> {
        let _ = fs::remove_file(from.join("lock"));
        let _lock = self.lock_lists(key, FlockArg::LockExclusive)?;
        let dir = self.root.join("lists").join(key);
        let old = from.with_extension("old");
        if dir.exists() {
            fs::rename(&dir, &old)?;
        }
        fs::rename(from, &dir)?;
        if old.exists() {
            fs::remove_dir_all(&old)?;
        }
        Ok(())
    }

    /// Moves every `.deb` of `from` into the cache (atomic renames). Returns how many.
    pub fn save_debs(&self, from: &Path) -> io::Result<usize> {
        let mut saved = 0;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            let name = entry.file_name();
            if entry.file_type()?.is_file() && name.to_string_lossy().ends_with(".deb") {
                fs::rename(entry.path(), self.debs_dir().join(&name))?;
                saved += 1;
            }
        }
        Ok(saved)
    }

    /// How many packages the cache holds.
    pub fn deb_count(&self) -> usize {
        fs::read_dir(self.debs_dir())
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".deb"))
                    .count()
            })
            .unwrap_or(0)
    }

    fn lock_lists(&self, key: &str, arg: FlockArg) -> io::Result<Flock<File>> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lists").join(format!("{key}.lock")))?;
        Flock::lock(file, arg).map_err(|(_, errno)| io::Error::from(errno))
    }

    /// Removes staging areas whose owning process no longer exists.
    fn sweep_stale_stages(&self) -> io::Result<()> {
        for entry in fs::read_dir(self.root.join("tmp"))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .trim_start_matches(".link-probe-")
                .split('-')
                .next()
                .and_then(|p| p.parse::<i32>().ok());
            if let Some(pid) = pid {
                if pid != std::process::id() as i32 && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let path = entry.path();
                    let _ = if path.is_dir() {
                        fs::remove_dir_all(&path)
                    } else {
                        fs::remove_file(&path)
                    };
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_round_trip_and_debs_move_in() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DebCache::open(dir.path()).unwrap();
        let key = DebCache::lists_key("bookworm", "http://m/debian", "amd64");
        assert_ne!(
            key,
            DebCache::lists_key("trixie", "http://m/debian", "amd64")
        );
        let stage = cache.stage().unwrap();
        fs::write(stage.lists_out().join("m_dists_bookworm_InRelease"), b"r").unwrap();
        fs::write(stage.lists_out().join("lock"), b"").unwrap();
        fs::write(stage.debs_out().join("a_1_amd64.deb"), b"deb").unwrap();
        cache.save_lists(&key, &stage.lists_out()).unwrap();
        assert_eq!(cache.save_debs(&stage.debs_out()).unwrap(), 1);
        assert_eq!(cache.deb_count(), 1);
        let again = cache.stage().unwrap();
        assert_eq!(cache.load_lists(&key, &again.lists_in()).unwrap(), 1);
        assert!(!again.lists_in().join("lock").exists());
        let stage_dir = again.dir.clone();
        drop(again);
        assert!(!stage_dir.exists());
    }
}
