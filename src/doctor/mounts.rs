//! Mount checks: dead lockfs mounts, and processes that bypass a live one.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::mountinfo::{LockfsMount, is_dead_mount_error, parse_mountinfo};

/// The lockfs mounts in `mountinfo` whose mount point answers `stat` with ENOTCONN or
/// ECONNABORTED ([`is_dead_mount_error`]): the daemon is gone and the kernel keeps the
/// mount until it is detached.
pub fn dead_mounts(mountinfo: &str, stat: impl Fn(&Path) -> io::Result<()>) -> Vec<PathBuf> {
    parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|mount| matches!(stat(&mount.mount_point), Err(err) if is_dead_mount_error(&err)))
        .map(|mount| mount.mount_point)
        .collect()
}

/// `stat(path)` that gives up after `limit`: a stuck daemon must not hang the doctor.
pub fn stat_with_timeout(path: &Path, limit: Duration) -> io::Result<()> {
    let (send, receive) = mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = send.send(std::fs::metadata(&owned).map(|_| ()));
    });
    receive.recv_timeout(limit).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the mount",
        ))
    })
}

/// A process's cwd or open file, as seen through /proc.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenPath {
    pub pid: u32,
    /// `cwd` or `fd N`.
    pub what: String,
    pub target: PathBuf,
    /// `st_dev` of what it refers to.
    pub device: libc::dev_t,
}

/// The references that lie under `mount`'s directory but sit on another device: the
/// process got them before the mount existed, so it works on the files underneath and
/// bypasses the leases.
pub fn bypassing<'a>(mount: &LockfsMount, paths: &'a [OpenPath]) -> Vec<&'a OpenPath> {
    paths
        .iter()
        .filter(|open| open.target.starts_with(&mount.mount_point) && open.device != mount.device)
        .collect()
}

/// Every cwd and open file of the processes in this mount namespace that lies under one
/// of `mounts`, except lockfs's own (the daemon holds the directory underneath on purpose).
pub fn open_paths_under(mounts: &[LockfsMount]) -> Vec<OpenPath> {
    let own_namespace = std::fs::read_link("/proc/self/ns/mnt").ok();
    let own_pid = std::process::id();
    let under_a_mount = |target: &Path| {
        mounts
            .iter()
            .any(|mount| target.starts_with(&mount.mount_point))
    };
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let proc_dir = entry.path();
        if pid == own_pid
            || is_lockfs(&proc_dir)
            || std::fs::read_link(proc_dir.join("ns/mnt")).ok() != own_namespace
        {
            continue;
        }
        let mut record = |what: String, link: PathBuf| {
            let Ok(target) = std::fs::read_link(&link) else {
                return;
            };
            if !under_a_mount(&target) {
                return;
            }
            if let Ok(meta) = std::fs::metadata(&link) {
                found.push(OpenPath {
                    pid,
                    what,
                    target,
                    device: meta.dev(),
                });
            }
        };
        record("cwd".to_string(), proc_dir.join("cwd"));
        if let Ok(fds) = std::fs::read_dir(proc_dir.join("fd")) {
            for fd in fds.flatten() {
                record(
                    format!("fd {}", fd.file_name().to_string_lossy()),
                    fd.path(),
                );
            }
        }
    }
    found
}

fn is_lockfs(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("comm")).is_ok_and(|comm| comm.trim() == "lockfs")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mountinfo::SAMPLE_MOUNTINFO;

    #[test]
    fn enotconn_or_econnaborted_marks_a_mount_dead() {
        let dead = dead_mounts(SAMPLE_MOUNTINFO, |path| {
            if path == Path::new("/tmp/with space") {
                Err(io::Error::from_raw_os_error(libc::ENOTCONN))
            } else if path == Path::new("/home/ann/.openclaw") {
                Err(io::Error::from_raw_os_error(libc::ECONNABORTED))
            } else if path == Path::new("/home/ann/.openclaw/inner") {
                Err(io::Error::from_raw_os_error(libc::EACCES))
            } else {
                Ok(())
            }
        });
        assert_eq!(
            dead,
            vec![
                PathBuf::from("/home/ann/.openclaw"),
                PathBuf::from("/tmp/with space")
            ]
        );
    }

    #[test]
    fn only_paths_on_the_underlying_device_bypass() {
        let mounts = parse_mountinfo(SAMPLE_MOUNTINFO);
        let mount = &mounts[0];
        let open = |pid, target: &str, device| OpenPath {
            pid,
            what: "cwd".into(),
            target: target.into(),
            device,
        };
        let paths = vec![
            open(
                1,
                "/home/ann/.openclaw/openclaw.json",
                libc::makedev(259, 2),
            ),
            open(2, "/home/ann/.openclaw/openclaw.json", mount.device),
            open(3, "/home/ann/other.json", libc::makedev(259, 2)),
            open(4, "/home/ann/.openclaw", libc::makedev(259, 2)),
        ];
        let pids: Vec<u32> = bypassing(mount, &paths).iter().map(|o| o.pid).collect();
        assert_eq!(pids, vec![1, 4]);
    }

    #[test]
    fn a_live_temp_dir_is_not_dead() {
        let dir = tempfile::tempdir().unwrap();
        assert!(stat_with_timeout(dir.path(), Duration::from_secs(2)).is_ok());
    }
}
