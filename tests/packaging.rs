//! The systemd unit verifies, completions and man pages generate, and (with
//! LOCKFS_PACKAGING=1, since it builds a release binary) the Debian package builds.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn have(program: &str) -> bool {
    Command::new(program).arg("--version").output().is_ok()
}

/// The unit, with ExecStart pointing at the binary under test (systemd checks it exists).
fn unit_copy(dir: &Path, name: &str) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("packaging/systemd/lockfs@.service")).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text.replace("/usr/bin/lockfs", common::LOCKFS)).unwrap();
    path
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze") {
        eprintln!("skipped: systemd-analyze not installed (Debian package `systemd`)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let runtime = tmp.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    let template = unit_copy(tmp.path(), "lockfs@.service");
    let instance = unit_copy(tmp.path(), "lockfs@home-ann-.openclaw.service");
    for unit in [&template, &instance] {
        for scope in [None, Some("--user")] {
            let output = Command::new("systemd-analyze")
                .args(scope)
                .args(["verify", "--man=no"])
                .arg(unit)
                .env("XDG_RUNTIME_DIR", &runtime)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                output.status.success(),
                "{} {scope:?}: {stderr}",
                unit.display()
            );
            // Unknown keys and bad values are only warnings: treat any as a failure.
            assert!(
                stderr.trim().is_empty(),
                "{} {scope:?}: {stderr}",
                unit.display()
            );
        }
    }
}

#[test]
fn completions_and_man_pages_generate() {
    for shell in ["bash", "zsh", "fish"] {
        let output = common::lockfs(&["completions", shell]);
        assert!(output.status.success());
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains("status") && script.contains("doctor"),
            "{shell}"
        );
    }
    let tmp = tempfile::tempdir().unwrap();
    let output = common::lockfs(&["man", tmp.path().to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for page in [
        "lockfs.1",
        "lockfs-status.1",
        "lockfs-break.1",
        "lockfs-doctor.1",
    ] {
        let text = std::fs::read_to_string(tmp.path().join(page)).unwrap();
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
}

#[test]
fn debian_package_builds() {
    if std::env::var_os("LOCKFS_PACKAGING").is_none_or(|value| value != "1") {
        eprintln!("skipped: set LOCKFS_PACKAGING=1 to build the .deb (release build)");
        return;
    }
    let status = Command::new(repo().join("scripts/package.sh"))
        .current_dir(repo())
        .status()
        .unwrap();
    assert!(status.success());
    let debs: Vec<PathBuf> = std::fs::read_dir(repo().join("target/debian"))
        .unwrap()
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "deb"))
        .collect();
    assert!(!debs.is_empty());
    let listing = Command::new("dpkg-deb")
        .arg("-c")
        .arg(&debs[0])
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    for file in [
        "./usr/bin/lockfs",
        "./usr/lib/systemd/user/lockfs@.service",
        "./usr/share/man/man1/lockfs.1.gz",
        "./usr/share/bash-completion/completions/lockfs",
    ] {
        assert!(
            listing.contains(file),
            "{file} missing from the package:\n{listing}"
        );
    }
    let info = Command::new("dpkg-deb")
        .args(["-f"])
        .arg(&debs[0])
        .arg("Depends")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&info.stdout).contains("fuse3"));
}
