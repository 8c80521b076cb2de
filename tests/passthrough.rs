//! The overlay is transparent: the same operations give the same results natively and
//! through a lockfs mount, in both data paths.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::Command;

use common::{MountGuard, python, state_dir};

/// Runs tests/scripts/ops.py natively and through a mount (with `args`) and compares.
fn ops_match_native(args: &[&str]) {
    let (_tmp_native, native) = state_dir();
    let (_tmp, state) = state_dir();
    for dir in [&native, &state] {
        std::fs::write(dir.join("pre.txt"), "pre\n").unwrap();
    }
    let expected = python("ops.py", &[native.to_str().unwrap()]);
    assert!(
        expected.status.success(),
        "{}",
        String::from_utf8_lossy(&expected.stderr)
    );
    let _mount = MountGuard::mount(&state, args);
    let actual = python("ops.py", &[state.to_str().unwrap()]);
    assert!(
        actual.status.success(),
        "{}",
        String::from_utf8_lossy(&actual.stderr)
    );
    let expected = String::from_utf8_lossy(&expected.stdout);
    let actual = String::from_utf8_lossy(&actual.stdout);
    let differences: Vec<String> = expected
        .lines()
        .zip(actual.lines())
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("native: {e}\nmount:  {a}"))
        .collect();
    assert!(
        differences.is_empty() && expected.lines().count() == actual.lines().count(),
        "results differ:\n{}",
        differences.join("\n")
    );
    assert!(expected.lines().count() > 90, "the script ran every step");
}

#[test]
fn every_operation_matches_native_with_passthrough() {
    ops_match_native(&[]);
}

#[test]
fn every_operation_matches_native_with_daemon_io() {
    ops_match_native(&["--no-passthrough"]);
}

#[test]
fn preexisting_files_are_visible_writable_and_intact_after_unmount() {
    let (_tmp, state) = state_dir();
    std::fs::create_dir(state.join("sub")).unwrap();
    std::fs::write(state.join("sub/old.json"), "{\"v\":1}").unwrap();
    let native_ino = std::fs::metadata(state.join("sub/old.json")).unwrap().ino();
    let mut mount = MountGuard::mount(&state, &[]);
    assert_eq!(
        std::fs::read_to_string(state.join("sub/old.json")).unwrap(),
        "{\"v\":1}"
    );
    let meta = std::fs::metadata(state.join("sub/old.json")).unwrap();
    assert_eq!(meta.ino(), native_ino, "st_ino is the inode number below");
    std::fs::write(state.join("sub/old.json"), "{\"v\":2,\"longer\":true}").unwrap();
    std::fs::write(state.join("new.txt"), "new").unwrap();
    std::fs::hard_link(state.join("new.txt"), state.join("new-link.txt")).unwrap();
    let a = std::fs::metadata(state.join("new.txt")).unwrap();
    let b = std::fs::metadata(state.join("new-link.txt")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hard links share one inode"
    );
    let out = mount.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&state));
    assert_eq!(
        std::fs::read_to_string(state.join("sub/old.json")).unwrap(),
        "{\"v\":2,\"longer\":true}"
    );
    assert_eq!(
        std::fs::read_to_string(state.join("new.txt")).unwrap(),
        "new"
    );
    assert_eq!(
        std::fs::metadata(state.join("new.txt")).unwrap().ino(),
        a.ino()
    );
}

/// Attribute caching must not make a size stale: write in one process, stat in another,
/// and rename a file of another size over it.
fn sizes_stay_exact(args: &[&str]) {
    let (_tmp, state) = state_dir();
    let _mount = MountGuard::mount(&state, args);
    let store = state.join("store.json");
    std::fs::write(&store, "short").unwrap();
    assert_eq!(std::fs::metadata(&store).unwrap().len(), 5);
    for round in 0..20usize {
        let content = "y".repeat(1 + (round * 37) % 300);
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {content} > {}", store.display()))
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(
            std::fs::metadata(&store).unwrap().len(),
            content.len() as u64
        );
        let replacement = "z".repeat(1 + (round * 53) % 400);
        let tmp = state.join("store.json.tmp");
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf %s {replacement} > {tmp} && mv {tmp} {store}",
                tmp = tmp.display(),
                store = store.display()
            ))
            .status()
            .unwrap();
        assert!(status.success());
        let size = std::fs::metadata(&store).unwrap().len();
        assert_eq!(size, replacement.len() as u64, "stat after rename-over");
        assert_eq!(std::fs::read_to_string(&store).unwrap(), replacement);
    }
}

#[test]
fn sizes_are_exact_after_writes_and_rename_over() {
    sizes_stay_exact(&[]);
}

#[test]
fn sizes_are_exact_after_writes_and_rename_over_with_daemon_io() {
    sizes_stay_exact(&["--no-passthrough"]);
}

#[test]
fn mount_is_recognisable_and_logs_its_data_path() {
    let (tmp, state) = state_dir();
    let log = tmp.path().join("daemon.log");
    let _mount = MountGuard::mount(&state, &["--log-file", log.to_str().unwrap()]);
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = info
        .lines()
        .find(|l| l.contains(state.to_str().unwrap()))
        .expect("mount listed");
    assert!(line.contains(" - fuse.lockfs lockfs "), "{line}");
    std::fs::write(state.join("f"), "x").unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("data path: kernel passthrough"), "{text}");
}

#[test]
fn files_made_by_another_user_belong_to_that_user() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to act as another user");
        return;
    }
    let (tmp, state) = state_dir();
    for dir in [tmp.path(), state.as_path()] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let _mount = MountGuard::mount(&state, &["--allow-other"]);
    let script = "touch f && mkdir d && ln -s f s && mkfifo p && echo ok";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
            script,
        ])
        .current_dir(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in ["f", "d", "s", "p"] {
        let meta = std::fs::symlink_metadata(state.join(name)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "{name}");
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "sh",
            "-c",
        ])
        .arg("rm -f f && echo removed")
        .current_dir(&state)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("removed"));
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let denied = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "touch",
            "g",
        ])
        .current_dir(&state)
        .output()
        .unwrap();
    assert!(
        !denied.status.success(),
        "permissions are checked as on the disk below"
    );
}
