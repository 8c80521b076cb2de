//! Shared test support: mounts that are always unmounted, and helpers to run real writers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub mod cycle;
pub mod proxy_daemon;
pub mod writers;

pub const LOCKFS: &str = env!("CARGO_BIN_EXE_lockfs");

/// A lockfs mount over a directory inside a temp dir; unmounted on drop, even on panic.
pub struct MountGuard {
    pub dir: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Mounts lockfs over `dir` (which must live in a temp dir) with extra `args`.
    pub fn mount(dir: &Path, args: &[&str]) -> MountGuard {
        Self::mount_with(dir, args, |_| {})
    }

    /// As [`MountGuard::mount`], with the `lockfs mount` command (whose environment and
    /// limits the daemon inherits) adjusted by `configure` first.
    pub fn mount_with(
        dir: &Path,
        args: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> MountGuard {
        assert!(
            dir.starts_with(std::env::temp_dir()),
            "tests mount only inside the temp dir, not {}",
            dir.display()
        );
        let mut command = Command::new(LOCKFS);
        command.arg("mount").arg(dir).args(args);
        configure(&mut command);
        // LOCKFS_TEST_LOG=DIR keeps a trace log of every test daemon, for debugging.
        if let Some(logs) = std::env::var_os("LOCKFS_TEST_LOG") {
            let name = dir.parent().and_then(|p| p.file_name()).unwrap_or_default();
            let log = Path::new(&logs).join(name).with_extension("log");
            command.arg("-vvv").arg("--log-file").arg(log);
        }
        let output = command.output().expect("run lockfs mount");
        assert!(
            output.status.success(),
            "lockfs mount failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        MountGuard {
            dir: dir.to_path_buf(),
            mounted: true,
        }
    }

    /// Unmounts now and returns what `lockfs unmount` printed.
    pub fn unmount(&mut self) -> Output {
        let output = lockfs(&["unmount", self.dir.to_str().unwrap()]);
        if output.status.success() {
            self.mounted = false;
        }
        output
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let _ = lockfs(&["unmount", self.dir.to_str().unwrap()]);
        if is_mounted(&self.dir) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

pub fn lockfs(args: &[&str]) -> Output {
    Command::new(LOCKFS)
        .args(args)
        .output()
        .expect("run lockfs")
}

/// Whether `dir` is a mount point now, from /proc/self/mountinfo.
pub fn is_mounted(dir: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mount_point| Path::new(&unescape_mount_path(mount_point)) == dir)
}

fn unescape_mount_path(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let code: String = chars.by_ref().take(3).collect();
            match u8::from_str_radix(&code, 8) {
                Ok(byte) => out.push(byte as char),
                Err(_) => {
                    out.push('\\');
                    out.push_str(&code);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A fresh temp dir with a `state` directory inside it to mount over.
pub fn state_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::Builder::new()
        .prefix("lockfs-test")
        .tempdir()
        .unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    (tmp, state)
}

/// Polls `condition` until it holds or `limit` passes (a hang guard, not a timing assertion).
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// A script from tests/scripts.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name)
}

/// Runs `python3 tests/scripts/NAME ARGS...` and returns its output.
pub fn python(name: &str, args: &[&str]) -> Output {
    Command::new("python3")
        .arg(script(name))
        .args(args)
        .output()
        .expect("run python3")
}

/// The pid a daemon wrote to `pid_file` (`lockfs mount --pid-file`).
pub fn read_pid(pid_file: &Path) -> u32 {
    std::fs::read_to_string(pid_file)
        .expect("read the pid file")
        .trim()
        .parse()
        .expect("a pid")
}

/// Whether `err` is what a mount whose daemon died answers: ENOTCONN, or ECONNABORTED for
/// an access that races the kernel's abort of the connection.
pub fn is_dead_mount_error(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}

/// Whether process `pid` still exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits for every writer; the stderr of each that failed.
pub fn failed_writers(children: Vec<std::process::Child>) -> Vec<String> {
    children
        .into_iter()
        .map(|child| child.wait_with_output().unwrap())
        .filter(|output| !output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stderr).into_owned())
        .collect()
}
