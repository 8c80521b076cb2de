//! Leases across hosts through etcd: two mounts of one backing directory (`--source`)
//! stand in for two hosts of shared storage. Real etcd members, real mounts, real writers.

mod common;
#[path = "common/etcd.rs"]
mod etcd;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::cycle::Cycle;
use common::writers::{count, spawn_writer};
use common::{MountGuard, lockfs};
use etcd::{EtcdCluster, EtcdMember};

const WRITERS_PER_HOST: usize = 4;
const CYCLES: usize = 40;
/// A first linger longer than the default for the races: 8 Node writers, etcd and two
/// daemons share two cores here, and a writer's first cycles (lazy compilation, a cold
/// start in CI) can take longer than 100 ms from read to save. A save that late is
/// refused once another host has taken the file (the same rule as on one host).
const LINGER: &str = "500ms";

/// One test of this file at a time: two of them at once put over a dozen writers, four
/// etcd members and four daemons on two cores.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A backing directory with an empty store, and two mount points beside it.
struct Hosts {
    _temp: tempfile::TempDir,
    backing: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl Hosts {
    fn new() -> Hosts {
        let temp = tempfile::tempdir().unwrap();
        let backing = temp.path().join("state");
        let a = temp.path().join("host-a");
        let b = temp.path().join("host-b");
        for dir in [&backing, &a, &b] {
            std::fs::create_dir(dir).unwrap();
        }
        std::fs::write(backing.join("store.json"), "{}").unwrap();
        Hosts {
            _temp: temp,
            backing,
            a,
            b,
        }
    }

    /// Mounts `dir` as a view of the backing directory with `args` (etcd's, say).
    fn mount(&self, dir: &Path, args: &[&str]) -> MountGuard {
        let mut all = vec!["--source", self.backing.to_str().unwrap()];
        all.extend_from_slice(args);
        MountGuard::mount(dir, &all)
    }
}

/// Runs `per_host` Node writers through each mount at once, `cycles` cycles each; the
/// updates kept and the writers that failed.
fn race_two_hosts(hosts: &Hosts, per_host: usize, cycles: usize) -> (u64, Vec<String>) {
    let mut children: Vec<(String, Child)> = Vec::new();
    let mut spec = Vec::new();
    for i in 0..per_host {
        for (host, dir) in [("a", &hosts.a), ("b", &hosts.b)] {
            let id = format!("{host}{i}");
            let child = spawn_writer(
                "node",
                "node_cycle.js",
                &[
                    dir.to_str().unwrap(),
                    "store.json",
                    &id,
                    &cycles.to_string(),
                ],
            );
            spec.push(id.clone());
            children.push((id, child));
        }
    }
    let mut failed = Vec::new();
    for (id, child) in children {
        let output = child.wait_with_output().unwrap();
        if !output.status.success() {
            failed.push(format!(
                "{id}: {}",
                String::from_utf8_lossy(&output.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
    }
    let writers: Vec<(&str, usize)> = spec.iter().map(|id| (id.as_str(), cycles)).collect();
    let counted = count(&hosts.backing.join("store.json"), "json", &writers);
    (counted.present, failed)
}

#[test]
fn two_hosts_with_etcd_keep_every_update_and_without_it_lose_some() {
    let _serial = one_at_a_time();
    let member = EtcdMember::start();
    let expected = (2 * WRITERS_PER_HOST * CYCLES) as u64;

    let hosts = Hosts::new();
    let etcd_args = ["--etcd", member.url(), "--linger", LINGER];
    let _a = hosts.mount(&hosts.a, &etcd_args);
    let _b = hosts.mount(&hosts.b, &etcd_args);
    let (kept, failed) = race_two_hosts(&hosts, WRITERS_PER_HOST, CYCLES);
    assert!(failed.is_empty(), "writers failed through etcd: {failed:?}");
    assert_eq!(kept, expected, "two hosts with --etcd lost updates");
    drop((_a, _b));

    let hosts = Hosts::new();
    let _a = hosts.mount(&hosts.a, &[]);
    let _b = hosts.mount(&hosts.b, &[]);
    let (kept, _) = race_two_hosts(&hosts, WRITERS_PER_HOST, CYCLES);
    eprintln!("without --etcd: {kept} of {expected} kept");
    assert!(
        kept < expected,
        "two hosts without --etcd kept all {expected} updates: the writers do not race, so the \
         first half proves nothing"
    );
}

#[test]
fn etcd_unreachable_fails_closed_and_status_says_why() {
    let _serial = one_at_a_time();
    let hosts = Hosts::new();
    // Nothing listens on port 9 of loopback (discard is not run here).
    let _a = hosts.mount(
        &hosts.a,
        &["--etcd", "http://127.0.0.1:9", "--max-wait", "2s"],
    );
    let started = Instant::now();
    let result = std::fs::read(hosts.a.join("store.json"));
    let waited = started.elapsed();
    let error = result.expect_err("a read went ahead without the cluster lease");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::ETIMEDOUT),
        "expected ETIMEDOUT, got {error}"
    );
    assert!(
        waited >= Duration::from_millis(1500),
        "failed after {waited:?}, before the 2 s waiter limit: it did not wait for etcd"
    );
    // Listing the directory needs no lease.
    let names: Vec<_> = std::fs::read_dir(&hosts.a).unwrap().collect();
    assert_eq!(names.len(), 1);
    let status = lockfs(&["status", hosts.a.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let problem = &report["cluster"]["problem"];
    assert!(
        problem.as_str().is_some_and(|why| !why.is_empty()),
        "status does not say why etcd is not usable: {report}"
    );
    let text = lockfs(&["status", hosts.a.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("NOT usable"), "status table: {text}");
}

/// The pid of the daemon serving `dir`, from `lockfs status`.
fn daemon_pid(dir: &Path) -> u32 {
    let status = lockfs(&["status", dir.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    report["pid"].as_u64().unwrap() as u32
}

fn signal(pid: u32, signal: i32) {
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0);
}

#[test]
fn a_stalled_host_loses_its_files_after_the_ttl_and_its_late_save_is_fenced() {
    let _serial = one_at_a_time();
    let member = EtcdMember::start();
    let hosts = Hosts::new();
    let args = ["--etcd", member.url(), "--etcd-ttl", "2s"];
    let _a = hosts.mount(&hosts.a, &args);
    let _b = hosts.mount(&hosts.b, &args);

    // Host A's process reads the store and keeps it open: A holds the cluster lease.
    let mut slow = Cycle::start(
        &hosts.a.join("store.json"),
        &["open", "read", "pause", "temp:{\"a\":1}", "rename"],
    );
    slow.expect_line("pause ok", Duration::from_secs(30));
    let daemon_a = daemon_pid(&hosts.a);
    signal(daemon_a, libc::SIGSTOP);
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
        }
    }
    let resume = Resume(daemon_a);

    // Host B gets the file once A's session expires, and saves.
    let mut b = Cycle::start(
        &hosts.b.join("store.json"),
        &["read", "temp:{\"b\":1}", "rename"],
    );
    b.expect_line("rename ok", Duration::from_secs(60));

    // A wakes up and saves what it read before B's save: refused.
    drop(resume);
    slow.resume();
    let line = slow.expect_line("rename", Duration::from_secs(60));
    assert!(
        line.starts_with("rename ESTALE"),
        "the stalled host's late save was not fenced: {line}"
    );
    let kept = std::fs::read_to_string(hosts.backing.join("store.json")).unwrap();
    assert_eq!(kept, "{\"b\":1}");
}

#[test]
fn a_dead_host_leaves_its_files_to_the_others_after_the_ttl() {
    let _serial = one_at_a_time();
    let member = EtcdMember::start();
    let hosts = Hosts::new();
    let args = ["--etcd", member.url(), "--etcd-ttl", "2s"];
    let mut a = hosts.mount(&hosts.a, &args);
    let _b = hosts.mount(&hosts.b, &args);
    let mut holder = Cycle::start(&hosts.a.join("store.json"), &["open", "read", "pause"]);
    holder.expect_line("pause ok", Duration::from_secs(30));
    signal(daemon_pid(&hosts.a), libc::SIGKILL);

    let mut b = Cycle::start(
        &hosts.b.join("store.json"),
        &["read", "temp:{\"b\":1}", "rename"],
    );
    b.expect_line("rename ok", Duration::from_secs(60));
    holder.kill();
    let _ = a.unmount();
}

#[test]
fn a_three_member_etcd_cluster_survives_the_loss_of_one_member() {
    let _serial = one_at_a_time();
    let mut cluster = EtcdCluster::start3();
    let urls = cluster.urls().join(",");
    let hosts = Hosts::new();
    let args = ["--etcd", urls.as_str(), "--linger", LINGER];
    let _a = hosts.mount(&hosts.a, &args);
    let _b = hosts.mount(&hosts.b, &args);
    let cycles = 3 * CYCLES;
    let expected = (2 * 2 * cycles) as u64;
    let started = Instant::now();
    // The leader: its loss stalls every request until a new one is elected.
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let leader = cluster.leader(Duration::from_secs(5)).unwrap_or(0);
        cluster.kill(leader);
        (cluster, started.elapsed())
    });
    let (kept, failed) = race_two_hosts(&hosts, 2, cycles);
    let writers_took = started.elapsed();
    let (_cluster, killed_at) = killer.join().unwrap();
    assert!(
        killed_at < writers_took,
        "the member died after the writers were done ({killed_at:?} >= {writers_took:?}): \
         nothing was tested"
    );
    assert!(
        failed.is_empty(),
        "writers failed after an etcd member died: {failed:?}"
    );
    assert_eq!(kept, expected);
}
