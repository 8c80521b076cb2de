//! A `lockfs serve` daemon for tests, and Node commands whose file access goes through it.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{LOCKFS, wait_until};

/// A `lockfs serve` on a socket inside the test's temp dir; killed by pid on drop.
pub struct Daemon {
    child: Child,
    pub socket: PathBuf,
    pub root: PathBuf,
}

impl Daemon {
    pub fn start(root: &Path, extra: &[&str]) -> Daemon {
        let socket = root.parent().unwrap().join("lockfs.sock");
        let child = Command::new(LOCKFS)
            .args(["serve", "--root"])
            .arg(root)
            .arg("--socket")
            .arg(&socket)
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("start lockfs serve");
        let up = wait_until(Duration::from_secs(20), || {
            UnixStream::connect(&socket).is_ok()
        });
        assert!(up, "lockfs serve did not come up");
        Daemon {
            child,
            socket,
            root: root.to_path_buf(),
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn node_available() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `lockfs run ... -- node`: a Node process whose file access goes through `daemon`.
pub fn node_through_the_shim(daemon: &Daemon) -> Command {
    let mut command = Command::new(LOCKFS);
    command
        .arg("run")
        .arg("--root")
        .arg(&daemon.root)
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["--", "node"]);
    command
}
