//! `kiln create` end to end: StratusLab's classic "base + apache2 + a script that writes
//! the page" image, from debian:bookworm (the shared bootstrapped store), built, booted
//! under QEMU and its page fetched by the generated `(test (http …))`, then added to the
//! catalogue signed; and a catalogue image as the next `--from`.

mod common;

use common::*;
use std::fs;
use std::process::Command;

#[test]
fn create_reproduces_the_apache_image_tests_its_page_and_catalogues_it() {
    let store = shared_store();
    let dir = test_dir("create-apache");
    let cat = dir.join("cat");
    let env = [("KILN_CATALOG", cat.to_str().unwrap())];
    fs::write(
        dir.join("setup.sh"),
        "#!/bin/sh\nset -e\nmkdir -p /var/www/html\n\
         printf 'Cloudy Weather Expected\\nserved by %s\\n' \"$(. /etc/os-release; echo $PRETTY_NAME)\" > /var/www/html/cloud.txt\n",
    )
    .unwrap();
    kiln(&store, &dir, &["key", "generate", "-o", "me.key"]).ok();
    let trust = dir.join("trust");
    fs::create_dir_all(&trust).unwrap();
    fs::copy(dir.join("me.pub"), trust.join("me@lab.org.pub")).unwrap();

    let run = kiln_env(
        &store,
        &dir,
        &[
            "create",
            "--from",
            "debian:bookworm",
            "-a",
            "apache2",
            "-s",
            "setup.sh",
            "--author",
            "Ann Lee",
            "--email",
            "me@lab.org",
            "--comment",
            "the classic web server image",
            "-o",
            "web.qcow2",
            "--check-http",
            "80:/cloud.txt=Cloudy Weather Expected",
            "--key",
            "me.key",
            "--title",
            "Apache web",
            "--print-spec",
        ],
        &env,
    )
    .ok();
    // The generated spec was printed, and written beside the image.
    let spec = fs::read_to_string(dir.join("web.qcow2.create/build.spec")).unwrap();
    assert!(run.stdout.contains(&spec), "{}", run.stdout);
    assert!(
        spec.contains("(from debian:bookworm)") && spec.contains("apache2"),
        "{spec}"
    );
    assert!(
        spec.contains("made by kiln create for Ann Lee <me@lab.org>"),
        "{spec}"
    );
    // Built, booted, and the page fetched by the image's own test.
    assert!(run.stdout.contains("PASS http-80"), "{}", run.stdout);
    assert!(run.stdout.contains("1 passed, 0 failed"), "{}", run.stdout);
    // Added and signed: the catalogue verifies it.
    let added = run
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("added "))
        .unwrap_or_else(|| panic!("no `added` line in\n{}", run.stdout))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let show = kiln_env(&store, &dir, &["image", "show", &added, "--json"], &env).ok();
    let meta: serde_json::Value = serde_json::from_str(&show.stdout).unwrap();
    assert_eq!(meta["title"], "Apache web");
    assert_eq!(meta["author"]["name"], "Ann Lee");
    assert_eq!(meta["comment"], "the classic web server image");
    assert_eq!(meta["partitions"][0]["os"], "debian");
    assert_eq!(meta["partitions"][0]["os_version"], "12");
    kiln_env(
        &store,
        &dir,
        &[
            "image",
            "verify",
            &added,
            "--trust",
            trust.to_str().unwrap(),
        ],
        &env,
    )
    .ok();
    // A kiln-built Debian image passes the hygiene check.
    let lint = kiln(&store, &dir, &["image", "lint", "web.qcow2", "--strict"]).ok();
    assert!(lint.stdout.starts_with("clean"), "{}", lint.stdout);

    // The catalogue image as the next base: read into a rootfs tarball, `(from file:…)`.
    let next = kiln_env(
        &store,
        &dir,
        &[
            "create",
            "--from",
            &added,
            "-a",
            "curl",
            "--author",
            "Ann Lee",
            "--email",
            "me@lab.org",
            "-o",
            "next.qcow2",
            "--spec-only",
        ],
        &env,
    )
    .ok();
    let tar = store
        .join("catalog-bases")
        .join(format!("{}.tar", meta["id"].as_str().unwrap()));
    assert!(
        next.stdout
            .contains(&format!("(from file:{})", tar.display())),
        "{}",
        next.stdout
    );
    assert!(
        !next.stdout.contains("linux-image-amd64"),
        "a bootable base got a second kernel\n{}",
        next.stdout
    );
    let listing = Command::new("tar").arg("-tf").arg(&tar).output().unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing
            .lines()
            .any(|l| l.trim_start_matches("./") == "var/www/html/cloud.txt"),
        "cloud.txt not in the base"
    );
    // Hundreds of megabytes: the image, its catalogue copy, the base tarball.
    fs::remove_file(&tar).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}
