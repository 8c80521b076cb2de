//! Bad input through a real mount: awkward names (non-UTF-8 bytes, 255-byte names,
//! ~4,000-byte paths), symlink loops, fifos, unix sockets, device nodes and files that
//! change type between calls give the same results as natively; mount-time mistakes give a
//! clear error, mount nothing and change nothing on disk.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::cycle::python3;
use common::{LOCKFS, MountGuard, is_mounted, script, state_dir};

fn bad_names(dir: &Path) -> Vec<String> {
    let out = Command::new(python3())
        .arg(script("bad_names.py"))
        .arg(dir)
        .output()
        .expect("run bad_names.py");
    assert!(
        out.status.success(),
        "bad_names.py in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn names_match_native(args: &[&str]) {
    let (_tmp_native, native) = state_dir();
    let (_tmp, state) = state_dir();
    let expected = bad_names(&native);
    let actual = {
        let _mount = MountGuard::mount(&state, args);
        bad_names(&state)
    };
    let differences: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("native: {e}\nmount:  {a}"))
        .collect();
    assert!(
        differences.is_empty() && expected.len() == actual.len(),
        "results differ ({} native lines, {} through the mount):\n{}",
        expected.len(),
        actual.len(),
        differences.join("\n")
    );
    let steps = actual.last().unwrap();
    eprintln!("{steps} matched native");
    assert!(steps.starts_with("steps ") && steps[6..].parse::<u32>().unwrap() > 100);
}

#[test]
fn awkward_names_and_special_files_match_native_with_passthrough() {
    names_match_native(&[]);
}

#[test]
fn awkward_names_and_special_files_match_native_with_daemon_io() {
    names_match_native(&["--no-passthrough"]);
}

/// Everything about a directory tree that a failed mount must not change.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let meta = std::fs::symlink_metadata(dir).unwrap();
    out.push(format!(
        ". {:o} {} {}",
        meta.mode(),
        meta.mtime(),
        meta.mtime_nsec()
    ));
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push(format!(
            "{} {:o} {} {}",
            path.display(),
            meta.mode(),
            meta.len(),
            meta.mtime_nsec()
        ));
    }
    out
}

/// Runs `command`, which must fail within `limit` with a clear first line containing
/// `needle`, mount nothing on `dir` and leave `dir` as it was.
fn assert_refused(mut command: Command, dir: &Path, needle: &str, limit: Duration) {
    let before = snapshot(dir);
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lockfs");
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            cleanup_daemon(dir);
            panic!("{command:?} did not answer within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out: Output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mounted = is_mounted(dir);
    if mounted {
        cleanup_daemon(dir);
    }
    assert!(!out.status.success(), "should fail: {command:?}");
    assert!(!mounted, "nothing mounted: {command:?}");
    let first = stderr.lines().next().unwrap_or_default();
    assert!(
        first.contains(needle),
        "first line {first:?} should mention {needle:?} (all: {stderr:?})"
    );
    assert_eq!(
        snapshot(dir),
        before,
        "nothing changed on disk: {command:?}"
    );
    eprintln!("{command:?}\n  -> {first}");
}

/// Ends a lockfs daemon this test started for `dir` (found by its unique argument) and
/// detaches its mount.
fn cleanup_daemon(dir: &Path) {
    let needle = dir.to_str().unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().map(String::as_str) == Some(LOCKFS) && args.iter().any(|a| a == needle) {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("umount").arg("-l").arg(dir).status();
}

fn mount_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(LOCKFS);
    c.arg("mount").arg(dir).args(args);
    c
}

#[test]
fn bad_options_are_refused_before_anything_is_mounted() {
    let (_tmp, state) = state_dir();
    std::fs::write(state.join("keep.json"), "{}").unwrap();
    let limit = Duration::from_secs(10);
    for (args, needle) in [
        (&["--max-hold", "abc"][..], "--max-hold"),
        (&["--max-wait", "10 parsecs"][..], "--max-wait"),
        (&["--linger", "-1"][..], "-1"),
        (
            &["--max-hold", "99999999999999999999s"][..],
            "longest allowed",
        ),
        (&["--bogus"][..], "--bogus"),
    ] {
        assert_refused(mount_cmd(&state, args), &state, needle, limit);
    }
}

#[test]
fn cluster_and_source_mistakes_are_refused_before_anything_is_mounted() {
    let (_tmp, state) = state_dir();
    std::fs::write(state.join("keep.json"), "{}").unwrap();
    std::fs::create_dir(state.join("inner")).unwrap();
    let inner = state.join("inner");
    let missing = state.parent().unwrap().join("no-such-backing");
    let limit = Duration::from_secs(10);
    for (args, needle) in [
        (&["--etcd", "https://127.0.0.1:2379"][..], "TLS"),
        (&["--etcd", "http://127.0.0.1:2379,"][..], "empty URL"),
        (
            &["--etcd", "http://127.0.0.1:2379", "--etcd-ttl", "200ms"][..],
            "at least 1s",
        ),
        (&["--etcd-prefix", "/x"][..], "required arguments"),
        (&["--source", missing.to_str().unwrap()][..], "--source"),
        (
            &["--source", inner.to_str().unwrap()][..],
            "inside one another",
        ),
    ] {
        assert_refused(mount_cmd(&state, args), &state, needle, limit);
    }
}

#[test]
fn no_dev_fuse_gives_one_clear_line_and_mounts_nothing() {
    // A private mount namespace with an empty /dev: the real /dev/fuse is untouched.
    let (_tmp, state) = state_dir();
    let probe = Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status();
    if !probe.map(|s| s.success()).unwrap_or(false) {
        println!("skipped: cannot make a private mount namespace (needs root and unshare)");
        return;
    }
    let mut command = Command::new("unshare");
    command
        .args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs none /dev && exec {LOCKFS} mount '{}'",
            state.display()
        ));
    assert_refused(command, &state, "/dev/fuse", Duration::from_secs(10));
}

#[test]
fn an_unprivileged_user_gets_one_clear_line_and_nothing_mounted() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to switch to nobody");
        return;
    }
    let (tmp, state) = state_dir();
    for dir in [tmp.path(), &state] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let mut command = Command::new("setpriv");
    command
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            LOCKFS,
            "mount",
        ])
        .arg(&state);
    assert_refused(command, &state, "run as root", Duration::from_secs(10));
}

#[test]
fn a_pid_file_in_a_missing_directory_is_refused() {
    let (tmp, state) = state_dir();
    let pid_file = tmp.path().join("no/such/dir/lockfs.pid");
    assert_refused(
        mount_cmd(&state, &["--pid-file", pid_file.to_str().unwrap()]),
        &state,
        "pid",
        Duration::from_secs(10),
    );
}

#[test]
fn a_log_file_in_a_missing_directory_is_refused() {
    let (tmp, state) = state_dir();
    let log_file = tmp.path().join("no/such/dir/lockfs.log");
    assert_refused(
        mount_cmd(&state, &["--log-file", log_file.to_str().unwrap()]),
        &state,
        "log",
        Duration::from_secs(10),
    );
}

#[test]
fn a_pid_file_inside_the_mounted_dir_does_not_hang() {
    let (_tmp, state) = state_dir();
    let pid_file = state.join("lockfs.pid");
    let mut child = mount_cmd(&state, &["--pid-file", pid_file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mounted = is_mounted(&state);
    if status.is_none() || mounted {
        cleanup_daemon(&state);
    }
    let status = status.expect("lockfs mount answered within 10 s");
    // Either refused (nothing mounted) or mounted with a readable pid file.
    if status.success() {
        assert!(mounted);
        let _ = common::lockfs(&["unmount", state.to_str().unwrap()]);
    } else {
        assert!(!mounted);
    }
}

#[test]
fn an_fd_cache_beyond_the_open_file_limit_is_refused_with_the_limit() {
    let (_tmp, state) = state_dir();
    assert_refused(
        mount_cmd(&state, &["--fd-cache", "1000000"]),
        &state,
        "--fd-cache 1000000 is more than half",
        Duration::from_secs(10),
    );
    assert_refused(
        mount_cmd(&state, &["--fd-cache", "0"]),
        &state,
        "--fd-cache",
        Duration::from_secs(10),
    );
}
