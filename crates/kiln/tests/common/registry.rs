//! A real registry for the tests: Debian's docker-registry on a free loopback port, with
//! its own config and storage directory, killed on drop.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A docker-registry process on 127.0.0.1, killed on drop.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The storage directory (`DIR/data`).
    pub data: PathBuf,
}

impl Registry {
    pub fn start(dir: &Path) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "apt-get install docker-registry (scripts/setup.sh does)"
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        fs::create_dir_all(dir).unwrap();
        let config = dir.join("registry.yml");
        fs::write(
            &config,
            format!("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n", dir.join("data").display()),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            child,
            addr,
            data: dir.join("data"),
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// The file holding blob `digest` (`sha256:…`) in the registry's storage, to tamper with.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        self.data
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

/// `skopeo inspect --raw` of `image` (HOST:PORT/REPO:TAG on a plain-HTTP registry): its manifest.
pub fn skopeo_raw(image: &str) -> serde_json::Value {
    skopeo_inspect(image, &["--raw"])
}

/// `skopeo inspect ARGS` of `image` (HOST:PORT/REPO:TAG on a plain-HTTP registry), parsed.
pub fn skopeo_inspect(image: &str, args: &[&str]) -> serde_json::Value {
    let out = Command::new("skopeo")
        .arg("inspect")
        .args(args)
        .arg("--tls-verify=false")
        .arg(format!("docker://{image}"))
        .output()
        .expect("skopeo (apt-get install skopeo)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}
