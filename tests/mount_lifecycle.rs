//! Mounting, unmounting, dead daemons, signals and bad input.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lockfs::testing::control::{ControlHandler, DaemonInfo, Server, StatusReport};
use lockfs::testing::{Counters, Policy};

use common::{
    LOCKFS, MountGuard, is_dead_mount_error, is_mounted, lockfs, process_alive, read_pid,
    state_dir, wait_until,
};

/// How many mounts sit on `dir` (other tests mount elsewhere at the same time).
fn mounts_on(dir: &str) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|line| line.split(' ').nth(4) == Some(dir))
        .count()
}

#[test]
fn a_killed_daemon_leaves_a_mount_that_unmount_clears_and_remount_works() {
    let (tmp, state) = state_dir();
    std::fs::write(state.join("kept.txt"), "kept").unwrap();
    let pid_file = tmp.path().join("daemon.pid");
    let mut mount = MountGuard::mount(&state, &["--pid-file", pid_file.to_str().unwrap()]);
    std::fs::write(state.join("written.txt"), "through the mount").unwrap();
    let pid = read_pid(&pid_file);
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
    // ENOTCONN, or ECONNABORTED when the stat races the kernel's abort of the connection.
    let err = std::fs::metadata(state.join("kept.txt")).unwrap_err();
    assert!(is_dead_mount_error(&err), "not a dead mount's error: {err}");
    let out = mount.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&state));
    assert_eq!(
        std::fs::read_to_string(state.join("kept.txt")).unwrap(),
        "kept"
    );
    let _again = MountGuard::mount(&state, &[]);
    assert_eq!(
        std::fs::read_to_string(state.join("written.txt")).unwrap(),
        "through the mount"
    );
}

/// The control side of a daemon on its way out: it still answers status.
struct LeavingDaemon;

impl ControlHandler for LeavingDaemon {
    fn status(&self) -> StatusReport {
        StatusReport::from_engine(
            Vec::new(),
            &Counters::default(),
            |key: &String| key.clone(),
            DaemonInfo {
                mount: Path::new("/leaving"),
                started: Instant::now(),
                passthrough: true,
                policy: &Policy::default(),
            },
        )
    }

    fn break_lease(&self, _path: &Path) -> Result<String, String> {
        Err("leaving".into())
    }
}

/// A mount right after an unmount of the same directory: the old daemon may still be on its
/// way out, its control socket live. The new daemon waits for it instead of failing
/// (conformance.sh's second mount once failed that way, with no reason given).
#[test]
fn a_mount_waits_for_the_previous_daemon_of_the_directory_to_leave() {
    let (_tmp, state) = state_dir();
    let socket = lockfs::testing::control::socket_path_for(&state);
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _ = std::fs::remove_file(&socket);
    let old_daemon = Server::start(&socket, Arc::new(LeavingDaemon)).unwrap();
    let leaving = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        drop(old_daemon);
    });
    let mut mount = MountGuard::mount(&state, &[]);
    leaving.join().unwrap();
    std::fs::write(state.join("after.txt"), "mounted").unwrap();
    let out = mount.unmount();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        std::os::unix::net::UnixStream::connect(&socket).is_err(),
        "unmount returned while the daemon's control socket still answered"
    );
}

#[test]
fn sigterm_and_sigint_unmount_cleanly() {
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let (tmp, state) = state_dir();
        let pid_file = tmp.path().join("daemon.pid");
        let _mount = MountGuard::mount(&state, &["--pid-file", pid_file.to_str().unwrap()]);
        std::fs::write(state.join("f"), "data").unwrap();
        let pid = read_pid(&pid_file);
        unsafe { libc::kill(pid as i32, signal) };
        assert!(wait_until(Duration::from_secs(10), || !is_mounted(&state)));
        assert!(wait_until(Duration::from_secs(10), || !process_alive(pid)));
        assert!(!pid_file.exists(), "the daemon removes its pid file");
        assert_eq!(std::fs::read_to_string(state.join("f")).unwrap(), "data");
    }
}

#[test]
fn foreground_mount_stays_attached_until_signalled() {
    let (_tmp, state) = state_dir();
    let mut child = Command::new(LOCKFS)
        .args(["mount", "--foreground", state.to_str().unwrap()])
        .spawn()
        .unwrap();
    let mounted = wait_until(Duration::from_secs(10), || is_mounted(&state));
    if mounted {
        std::fs::write(state.join("f"), "fg").unwrap();
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    if is_mounted(&state) {
        let _ = Command::new("umount").arg("-l").arg(&state).status();
    }
    assert!(mounted, "foreground mount came up");
    assert!(status.success(), "exit status {status}");
    assert_eq!(std::fs::read_to_string(state.join("f")).unwrap(), "fg");
}

fn assert_refused(args: &[&str], needle: &str) {
    let target = args.last().unwrap();
    let before = mounts_on(target);
    let out = lockfs(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {args:?}");
    assert!(
        stderr.contains(needle),
        "message {stderr:?} should mention {needle:?}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    assert_eq!(mounts_on(target), before, "nothing mounted");
}

#[test]
fn bad_input_gives_one_helpful_line_and_mounts_nothing() {
    let (tmp, state) = state_dir();
    let missing = tmp.path().join("missing");
    assert_refused(&["mount", missing.to_str().unwrap()], "mkdir -p");
    let file = tmp.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert_refused(&["mount", file.to_str().unwrap()], "not a directory");
    let _mount = MountGuard::mount(&state, &[]);
    assert_refused(&["mount", state.to_str().unwrap()], "lockfs unmount");
    assert_refused(
        &["unmount", tmp.path().to_str().unwrap()],
        "not a lockfs mount",
    );
}

#[test]
fn unmount_of_a_busy_mount_says_so_and_lazy_detaches() {
    let (_tmp, state) = state_dir();
    let mut mount = MountGuard::mount(&state, &[]);
    let open = std::fs::File::create(state.join("held")).unwrap();
    let out = mount.unmount();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--lazy"));
    let out = lockfs(&["unmount", "--lazy", state.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mounted(&state));
    drop(open);
}
