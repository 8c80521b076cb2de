//! `lockfs status`, `lockfs break` and `lockfs doctor` against real mounts.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::cycle::Cycle;
use common::{LOCKFS, MountGuard, is_dead_mount_error, lockfs, state_dir, wait_until};

fn status_json(dir: &Path) -> serde_json::Value {
    let output = lockfs(&["status", "--json", dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "lockfs status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
}

#[test]
fn status_shows_the_holder_and_the_waiter_in_order_and_break_fences_the_holder() {
    let (_tmp, state) = state_dir();
    let store = state.join("store.json");
    std::fs::write(&store, "old").unwrap();
    let _mount = MountGuard::mount(&state, &["--max-hold", "60s"]);

    let mut holder = Cycle::start(&store, &["open", "read", "pause", "temp:late", "rename"]);
    holder.expect_line("pause ok", Duration::from_secs(20));
    let mut waiter = Cycle::start(&store, &["read", "temp:newer", "rename"]);
    assert!(
        wait_until(Duration::from_secs(20), || {
            let report = status_json(&state);
            report["leases"][0]["waiters"][0]["pid"].as_u64() == Some(waiter.pid() as u64)
        }),
        "the waiter never showed in status: {}",
        status_json(&state)
    );
    let report = status_json(&state);
    let lease = &report["leases"][0];
    assert_eq!(lease["path"], "store.json");
    assert_eq!(lease["holder"]["pid"].as_u64(), Some(holder.pid() as u64));
    assert!(lease["holder"]["start_time"].as_u64().is_some());
    assert!(
        lease["holder"]["cmd"]
            .as_str()
            .unwrap()
            .contains("cycle.py")
    );
    assert!(lease["held_ms"].as_u64().is_some());
    assert_eq!(lease["state"], "reading");
    assert!(report["counters"]["waits"].as_u64().unwrap() >= 1);

    let table = lockfs(&["status", state.to_str().unwrap()]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("store.json"), "{table}");
    assert!(table.contains(&holder.pid().to_string()), "{table}");

    let broken = lockfs(&["break", store.to_str().unwrap()]);
    let said = String::from_utf8_lossy(&broken.stdout);
    assert!(broken.status.success(), "{said}");
    assert!(said.contains(&holder.pid().to_string()), "{said}");

    // The waiter goes first and commits; the broken holder's late rename is fenced.
    waiter.expect_line("rename ok", Duration::from_secs(20));
    holder.resume();
    let fenced = holder.expect_line("rename", Duration::from_secs(20));
    assert!(fenced.starts_with("rename ESTALE"), "{fenced}");
    assert_eq!(std::fs::read_to_string(&store).unwrap(), "newer");
    let report = status_json(&state);
    assert!(report["counters"]["revocations"].as_u64().unwrap() >= 1);
    assert!(report["counters"]["fenced_commits"].as_u64().unwrap() >= 1);
}

#[test]
fn doctor_reports_a_dead_mount_and_the_command_that_clears_it() {
    let (tmp, state) = state_dir();
    let pid_file = tmp.path().join("daemon.pid");
    let mut mount = MountGuard::mount(&state, &["--pid-file", pid_file.to_str().unwrap()]);
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(wait_until(Duration::from_secs(10), || {
        std::fs::metadata(&state)
            .err()
            .is_some_and(|e| is_dead_mount_error(&e))
    }));
    let doctor = Command::new(LOCKFS).arg("doctor").output().unwrap();
    let said = String::from_utf8_lossy(&doctor.stdout);
    assert!(!doctor.status.success(), "doctor must not pass: {said}");
    let dir = state.to_str().unwrap();
    assert!(
        said.lines()
            .any(|line| line.contains(dir) && line.contains("lockfs unmount")),
        "doctor did not name the dead mount and its fix: {said}"
    );
    assert!(mount.unmount().status.success());
}

/// A Node writer with a fresh temp name per cycle: once it is done, the engine remembers
/// the store and next to nothing else (`counters.files_remembered`). It kept one record per
/// temp name ever renamed into place (about 1.5 KB each), without bound.
#[test]
fn fresh_temp_names_are_not_remembered_after_their_cycles() {
    if !common::proxy_daemon::node_available() {
        println!("skipped: node is not installed");
        return;
    }
    let (_tmp, state) = state_dir();
    std::fs::write(state.join("store.json"), "{}").unwrap();
    let _mount = MountGuard::mount(&state, &[]);
    let writer = common::writers::repo_root().join("scripts/bench-tools/cycle.js");
    let output = Command::new("node")
        .arg(&writer)
        .args([state.to_str().unwrap(), "store.json", "w", "300"])
        .output()
        .expect("run node");
    assert!(
        output.status.success(),
        "cycle.js failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_json(&state);
    let committed = status["counters"]["cycles_committed"].as_u64().unwrap_or(0);
    assert!(
        committed >= 300,
        "300 cycles, {committed} commits: {status}"
    );
    let mut remembered = serde_json::Value::Null;
    let forgotten = wait_until(Duration::from_secs(10), || {
        remembered = status_json(&state)["counters"]["files_remembered"].clone();
        remembered.as_u64().is_some_and(|files| files <= 3)
    });
    assert!(
        forgotten,
        "files remembered after 300 temp names: {remembered}"
    );
}

/// Files whose programs coordinate by themselves take no lease: a process holding one
/// open shows in `lockfs status` only for the managed store beside them.
#[test]
fn git_objects_sqlite_and_lock_files_take_no_lease() {
    let (_tmp, state) = state_dir();
    let left_alone = [
        ".git/objects/ab/cdef0123456789",
        ".git/objects/pack/pack-1.idx",
        "bare.git/objects/cd/0123",
        "app.sqlite",
        "store.json.lock",
    ];
    for path in left_alone.iter().chain(&[".git/config", "store.json"]) {
        let file = state.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "x").unwrap();
    }
    let _mount = MountGuard::mount(&state, &["--max-hold", "60s"]);
    let mut holders: Vec<Cycle> = left_alone
        .iter()
        .chain(&[".git/config", "store.json"])
        .map(|path| {
            let mut holder = Cycle::start(&state.join(path), &["open", "read", "pause"]);
            holder.expect_line("pause ok", Duration::from_secs(20));
            holder
        })
        .collect();
    let report = status_json(&state);
    let mut leased: Vec<&str> = report["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|lease| lease["path"].as_str().unwrap())
        .collect();
    leased.sort();
    assert_eq!(leased, vec![".git/config", "store.json"], "{report}");
    for holder in &mut holders {
        holder.resume();
    }
}
