//! The control channel with a fake handler: round trips, the JSON schema, and refusals.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lockfs::testing::control::{ControlHandler, DaemonInfo, Server, StatusReport, client};
use lockfs::testing::{
    Ask, Asker, Counters, Driver, HolderView, Intent, LeaseState, LeaseView, Policy, ProcessId,
    WaiterView,
};

struct FakeDaemon {
    broken: Mutex<Vec<PathBuf>>,
}

impl FakeDaemon {
    fn new() -> Arc<FakeDaemon> {
        Arc::new(FakeDaemon {
            broken: Mutex::new(Vec::new()),
        })
    }
}

impl ControlHandler for FakeDaemon {
    fn status(&self) -> StatusReport {
        let me = lockfs::testing::process(std::process::id()).unwrap();
        let views = vec![LeaseView {
            key: "agents/a/sessions/sessions.json".to_string(),
            holders: vec![HolderView {
                process: me,
                handles: 1,
            }],
            state: LeaseState::Writing,
            held: Duration::from_millis(1200),
            generation: 4,
            waiters: vec![WaiterView {
                process: ProcessId {
                    pid: 1,
                    start_time: 1,
                },
                waited: Duration::from_millis(300),
                intent: Intent::Read,
            }],
        }];
        let counters = Counters {
            cycles_committed: 5,
            waits: 1,
            ..Counters::default()
        };
        StatusReport::from_engine(
            views,
            &counters,
            |key: &String| key.clone(),
            DaemonInfo {
                mount: Path::new("/fake/mount"),
                started: Instant::now(),
                passthrough: false,
                policy: &Policy::default(),
            },
        )
    }

    fn break_lease(&self, path: &Path) -> Result<String, String> {
        self.broken.lock().unwrap().push(path.to_path_buf());
        if path == Path::new("held.json") {
            Ok("revoked lease on held.json held by pid 7 (node app.js)".into())
        } else {
            Ok(format!("no lease on {}", path.display()))
        }
    }
}

fn socket_in(dir: &Path) -> PathBuf {
    dir.join("run").join("control.sock")
}

#[test]
fn status_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let _server = Server::start(&socket, FakeDaemon::new()).unwrap();
    let report = client::status(&socket).unwrap();
    assert_eq!(report.version, 1);
    assert_eq!(report.mount, "/fake/mount");
    assert_eq!(report.pid, std::process::id());
    assert_eq!(report.leases.len(), 1);
    let holder = report.leases[0].holder.as_ref().unwrap();
    assert_eq!(holder.pid, std::process::id());
    assert!(!holder.cmd.is_empty() && holder.cmd != "?", "{holder:?}");
}

#[test]
fn socket_and_dir_are_private_and_removed_on_drop() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let server = Server::start(&socket, FakeDaemon::new()).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&socket), 0o600);
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    drop(server);
    assert!(!socket.exists());
}

#[test]
fn stale_socket_is_replaced_and_live_one_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let first = Server::start(&socket, FakeDaemon::new()).unwrap();
    let err = Server::start(&socket, FakeDaemon::new())
        .err()
        .expect("a second server on a live socket must fail");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    drop(first);
    // A socket file nobody listens on, as a killed daemon leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let _second = Server::start(&socket, FakeDaemon::new()).unwrap();
    client::status(&socket).unwrap();
}

#[test]
fn status_json_has_the_documented_fields() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let _server = Server::start(&socket, FakeDaemon::new()).unwrap();
    let output = lockfs(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for field in [
        "version",
        "mount",
        "pid",
        "uptime_ms",
        "passthrough",
        "policy",
    ] {
        assert!(!json[field].is_null(), "missing {field}: {json}");
    }
    for field in ["linger_ms", "max_hold_ms", "max_wait_ms"] {
        assert!(
            json["policy"][field].is_u64(),
            "missing policy.{field}: {json}"
        );
    }
    let lease = &json["leases"][0];
    assert_eq!(lease["path"], "agents/a/sessions/sessions.json");
    assert_eq!(lease["state"], "writing");
    assert_eq!(lease["held_ms"], 1200);
    assert_eq!(lease["generation"], 4);
    assert_eq!(lease["holder"]["pid"], std::process::id());
    assert!(lease["holder"]["start_time"].is_u64());
    assert!(lease["holder"]["cmd"].is_string());
    assert!(lease["holders"].is_array());
    let waiter = &lease["waiters"][0];
    assert_eq!(waiter["pid"], 1);
    assert_eq!(waiter["start_time"], 1);
    assert_eq!(waiter["waited_ms"], 300);
    assert_eq!(waiter["intent"], "read");
    assert!(waiter["cmd"].is_string());
    let counters = &json["counters"];
    assert_eq!(counters["cycles_committed"], 5);
    for field in [
        "cycles_read_only",
        "appends",
        "waits",
        "wait_total_ms",
        "wait_longest_ms",
        "wait_timeouts",
        "revocations",
        "fenced_commits",
        "holder_exits_mid_cycle",
        "handoffs",
    ] {
        assert!(counters[field].is_u64(), "missing counters.{field}: {json}");
    }
}

#[test]
fn status_table_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let _server = Server::start(&socket, FakeDaemon::new()).unwrap();
    let output = lockfs(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("/a/sessions/sessions.json"), "{table}");
    assert!(table.contains("writing"), "{table}");
    assert!(
        table.contains(&format!("{} ", std::process::id())),
        "{table}"
    );
    assert!(table.contains("1. waits 300ms (read): 1 "), "{table}");
    assert!(
        table.lines().all(|line| line.chars().count() <= 80),
        "{table}"
    );
}

#[test]
fn break_sends_the_relative_path_and_prints_the_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let daemon = FakeDaemon::new();
    let _server = Server::start(&socket, daemon.clone()).unwrap();
    let output = lockfs(&["break", "--socket", socket.to_str().unwrap(), "held.json"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        String::from_utf8(output.stdout).unwrap().trim(),
        "revoked lease on held.json held by pid 7 (node app.js)"
    );
    assert_eq!(
        *daemon.broken.lock().unwrap(),
        vec![PathBuf::from("held.json")]
    );
}

#[test]
fn status_of_a_plain_dir_says_it_is_not_a_mount() {
    let tmp = tempfile::tempdir().unwrap();
    let output = lockfs(&["status", tmp.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("is not a lockfs mount"), "{err}");
    assert!(err.contains("lockfs mount"), "{err}");
}

#[test]
fn break_outside_any_mount_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let output = lockfs(&["break", tmp.path().join("x.json").to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("is not inside a lockfs mount"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_dead_socket_gets_the_unmount_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let output = lockfs(&["status", "--socket", socket.to_str().unwrap()]);
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(
        err.contains("does not answer") && err.contains("lockfs unmount"),
        "{err}"
    );
}

/// Runs the lockfs binary as `nobody`, from a copy that user can execute.
fn lockfs_as_nobody(tmp: &Path, args: &[&str]) -> Option<Output> {
    if unsafe { libc::geteuid() } != 0 || which("setpriv").is_none() {
        eprintln!("skipped: needs root and setpriv");
        return None;
    }
    let bin_dir = tmp.join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("lockfs");
    std::fs::copy(common::LOCKFS, &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    Some(
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&bin)
            .args(args)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap(),
    )
}

#[test]
fn another_user_is_stopped_by_the_socket_mode() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let _server = Server::start(&socket, FakeDaemon::new()).unwrap();
    let Some(output) = lockfs_as_nobody(
        tmp.path(),
        &["status", "--socket", socket.to_str().unwrap()],
    ) else {
        return;
    };
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.to_lowercase().contains("permission denied"), "{err}");
}

#[test]
fn another_user_is_refused_by_the_uid_check() {
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let daemon = FakeDaemon::new();
    let _server = Server::start(&socket, daemon.clone()).unwrap();
    // Open everything up so only SO_PEERCRED stands between nobody and the daemon.
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let Some(output) = lockfs_as_nobody(
        tmp.path(),
        &["break", "--socket", socket.to_str().unwrap(), "held.json"],
    ) else {
        return;
    };
    assert!(!output.status.success());
    let err = stderr(&output);
    assert!(err.contains("permission denied: uid 65534"), "{err}");
    assert!(
        daemon.broken.lock().unwrap().is_empty(),
        "the break must not run"
    );
}

fn lockfs(args: &[&str]) -> Output {
    Command::new(common::LOCKFS).args(args).output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

/// The wiring the front ends do: the real lease driver behind the control socket.
struct DriverDaemon {
    driver: Arc<Driver<String>>,
    epoch: Instant,
    policy: Policy,
}

impl ControlHandler for DriverDaemon {
    fn status(&self) -> StatusReport {
        let (views, counters) = self.driver.status();
        StatusReport::from_engine(
            views,
            &counters,
            |key: &String| key.clone(),
            DaemonInfo {
                mount: Path::new("/engine/mount"),
                started: self.epoch,
                passthrough: true,
                policy: &self.policy,
            },
        )
    }

    fn break_lease(&self, path: &Path) -> Result<String, String> {
        let key = path.to_string_lossy().into_owned();
        let holders = self.driver.revoke(&key);
        if holders.is_empty() {
            return Ok(format!("no lease on {key}"));
        }
        let named: Vec<String> = holders
            .iter()
            .map(|holder| format!("pid {}", holder.pid))
            .collect();
        Ok(format!(
            "revoked lease on {key} held by {}",
            named.join(", ")
        ))
    }
}

#[test]
fn the_real_driver_behind_the_socket() {
    let policy = Policy::default();
    let daemon = Arc::new(DriverDaemon {
        driver: Driver::start(policy.clone()).unwrap(),
        epoch: Instant::now(),
        policy,
    });
    let me = lockfs::testing::process(std::process::id()).unwrap();
    let other = ProcessId {
        pid: 1,
        start_time: lockfs::testing::start_time(1).unwrap(),
    };
    let (granted, answers) = std::sync::mpsc::channel();
    for (process, intent) in [(me, Intent::Write), (other, Intent::Read)] {
        let granted = granted.clone();
        daemon.driver.request(
            "openclaw.json".to_string(),
            Asker {
                process,
                thread: None,
            },
            Ask::new(intent),
            Box::new(move |answer| granted.send((process, answer.is_ok())).unwrap()),
        );
    }
    assert_eq!(answers.recv().unwrap(), (me, true));
    let tmp = tempfile::tempdir().unwrap();
    let socket = socket_in(tmp.path());
    let _server = Server::start(&socket, daemon.clone()).unwrap();
    let report = client::status(&socket).unwrap();
    let lease = &report.leases[0];
    assert_eq!(lease.path, "openclaw.json");
    assert_eq!(lease.holder.as_ref().unwrap().pid, me.pid);
    assert_eq!(lease.waiters[0].pid, 1);
    let message = client::break_lease(&socket, "openclaw.json").unwrap();
    assert!(
        message.starts_with(&format!(
            "revoked lease on openclaw.json held by pid {}",
            me.pid
        )),
        "{message}"
    );
    let report = client::status(&socket).unwrap();
    assert_eq!(report.counters["revocations"], 1);
    assert_eq!(
        answers.recv_timeout(Duration::from_secs(20)).unwrap(),
        (other, true),
        "the waiter got it"
    );
    assert_eq!(report.leases[0].holder.as_ref().unwrap().pid, 1);
    assert_eq!(
        client::break_lease(&socket, "absent.json").unwrap(),
        "no lease on absent.json"
    );
}
