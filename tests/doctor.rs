//! `lockfs doctor` as a user runs it, and its bypass detection against a real mount.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command};

use lockfs::testing::{LockfsMount, bypassing, open_paths_under};

#[test]
fn json_lists_every_check_and_the_exit_status_agrees() {
    let output = common::lockfs(&["doctor", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let checks = json["checks"].as_array().unwrap();
    let names: Vec<&str> = checks.iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in [
        "/dev/fuse",
        "mount permission",
        "fusermount3",
        "FUSE passthrough",
        "fuse module",
        "lockfs mounts",
        "bypassing processes",
    ] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    for check in checks {
        let level = check["level"].as_str().unwrap();
        assert!(["ok", "warn", "fail"].contains(&level));
        assert_eq!(level != "ok", check["fix"].is_string(), "{check}");
    }
    let all_ok = checks.iter().all(|c| c["level"] == "ok");
    assert_eq!(json["ok"], all_ok);
    assert_eq!(output.status.success(), all_ok);
}

#[test]
fn text_output_is_one_line_per_check() {
    let output = common::lockfs(&["doctor"]);
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.lines().count() >= 7, "{text}");
    for line in text.lines() {
        assert!(
            line.starts_with("ok   ") || line.starts_with("warn ") || line.starts_with("FAIL "),
            "{line}"
        );
    }
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that entered a directory before something was mounted over it keeps working
/// on the directory underneath: the st_dev of its cwd differs from the mount's.
#[test]
fn a_process_from_before_the_mount_is_found() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    std::fs::create_dir(&dir).unwrap();
    let early = Kill(
        Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .spawn()
            .unwrap(),
    );
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "lockfs-doctor-test"])
        .arg(&dir)
        .status()
        .unwrap();
    if !mounted.success() {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let _unmount = Unmount(&dir);
    let late = Kill(
        Command::new("sleep")
            .arg("30")
            .current_dir(&dir)
            .spawn()
            .unwrap(),
    );
    let mount = LockfsMount {
        mount_point: dir.clone(),
        device: std::fs::metadata(&dir).unwrap().dev(),
        user_id: Some(0),
    };
    let mounts = [mount];
    let open = open_paths_under(&mounts);
    let pids: Vec<u32> = bypassing(&mounts[0], &open).iter().map(|o| o.pid).collect();
    assert!(pids.contains(&early.0.id()), "{open:?}");
    assert!(!pids.contains(&late.0.id()), "{open:?}");
}
