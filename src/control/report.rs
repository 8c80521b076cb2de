//! The status report: what `lockfs status` shows and `--json` prints (schema in
//! docs/STATUS.md; bump [`REPORT_VERSION`] on any incompatible change).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::lease::{Counters, LeaseState, LeaseView, Policy};
use crate::platform::{ProcessId, command_line};

pub const REPORT_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: u32,
    /// The mount directory, absolute.
    pub mount: String,
    /// The daemon's pid.
    pub pid: u32,
    pub uptime_ms: u64,
    /// Whether the data path uses kernel FUSE passthrough.
    pub passthrough: bool,
    pub policy: PolicyReport,
    /// Leases and queues, longest held first.
    pub leases: Vec<LeaseReport>,
    /// The engine's counters by field name (see `lease::Counters`).
    pub counters: BTreeMap<String, u64>,
    /// Leases across hosts (`lockfs mount --etcd`); absent without a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterReport>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterReport {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Why etcd cannot be used now (managed files wait, then fail), if it cannot.
    pub problem: Option<String>,
    /// Files whose cluster lease this host holds.
    pub files_held: usize,
    /// Files this host waits for while another host holds them.
    pub files_queued: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyReport {
    pub linger_ms: u64,
    pub max_hold_ms: u64,
    pub max_wait_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseReport {
    /// Relative to the mount directory.
    pub path: String,
    /// reading, writing, lingering or appending.
    pub state: String,
    pub held_ms: u64,
    pub generation: u64,
    /// The first holder; null while only a queue is left (between a lease and a grant).
    pub holder: Option<ProcessReport>,
    /// Every holder: one for a cycle, several for shared appends.
    pub holders: Vec<ProcessReport>,
    /// In the order they will be served.
    pub waiters: Vec<WaiterReport>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Clock ticks since boot; with the pid it names the process even after pid reuse.
    pub start_time: u64,
    pub cmd: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaiterReport {
    pub pid: u32,
    pub start_time: u64,
    pub cmd: String,
    pub waited_ms: u64,
    /// read, write or append.
    pub intent: String,
}

/// What the daemon knows about itself, for [`StatusReport::from_engine`].
#[derive(Clone, Copy, Debug)]
pub struct DaemonInfo<'a> {
    pub mount: &'a Path,
    pub started: Instant,
    pub passthrough: bool,
    pub policy: &'a Policy,
}

impl StatusReport {
    /// Builds the report from an engine snapshot, looking up each process's command line.
    pub fn from_engine<K>(
        views: Vec<LeaseView<K>>,
        counters: &Counters,
        path_of: impl Fn(&K) -> String,
        daemon: DaemonInfo<'_>,
    ) -> StatusReport {
        Self::from_engine_with(views, counters, path_of, daemon, command_line)
    }

    /// As [`StatusReport::from_engine`], with the command line lookup given (for tests).
    pub fn from_engine_with<K>(
        views: Vec<LeaseView<K>>,
        counters: &Counters,
        path_of: impl Fn(&K) -> String,
        daemon: DaemonInfo<'_>,
        command_of: impl Fn(u32) -> String,
    ) -> StatusReport {
        let mut commands: HashMap<u32, String> = HashMap::new();
        let mut describe = |process: ProcessId| ProcessReport {
            pid: process.pid,
            start_time: process.start_time,
            cmd: commands
                .entry(process.pid)
                .or_insert_with(|| command_of(process.pid))
                .clone(),
        };
        let leases = views
            .into_iter()
            .map(|view| {
                let holders: Vec<ProcessReport> = view
                    .holders
                    .iter()
                    .map(|holder| describe(holder.process))
                    .collect();
                let waiters = view
                    .waiters
                    .iter()
                    .map(|waiter| {
                        let process = describe(waiter.process);
                        WaiterReport {
                            pid: process.pid,
                            start_time: process.start_time,
                            cmd: process.cmd,
                            waited_ms: millis(waiter.waited),
                            intent: json_name(&waiter.intent),
                        }
                    })
                    .collect();
                LeaseReport {
                    path: path_of(&view.key),
                    state: state_name(view.state).to_string(),
                    held_ms: millis(view.held),
                    generation: view.generation,
                    holder: holders.first().cloned(),
                    holders,
                    waiters,
                }
            })
            .collect();
        StatusReport {
            version: REPORT_VERSION,
            mount: daemon.mount.display().to_string(),
            pid: std::process::id(),
            uptime_ms: millis(daemon.started.elapsed()),
            passthrough: daemon.passthrough,
            policy: PolicyReport {
                linger_ms: millis(daemon.policy.linger),
                max_hold_ms: millis(daemon.policy.max_hold),
                max_wait_ms: millis(daemon.policy.max_wait),
            },
            leases,
            counters: counters_by_name(counters),
            cluster: None,
        }
    }
}

pub fn state_name(state: LeaseState) -> &'static str {
    match state {
        LeaseState::Reading => "reading",
        LeaseState::Writing => "writing",
        LeaseState::Lingering => "lingering",
        LeaseState::Appending => "appending",
    }
}

/// The counters as a map, so a counter the engine gains appears without a schema change.
fn counters_by_name(counters: &Counters) -> BTreeMap<String, u64> {
    match serde_json::to_value(counters) {
        Ok(serde_json::Value::Object(fields)) => fields
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_u64()?)))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn json_name(value: &impl Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => "?".to_string(),
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{HolderView, Intent, WaiterView};

    fn process(pid: u32) -> ProcessId {
        ProcessId {
            pid,
            start_time: u64::from(pid) * 10,
        }
    }

    #[test]
    fn engine_views_become_the_documented_report() {
        let views = vec![LeaseView {
            key: 7u64,
            holders: vec![HolderView {
                process: process(100),
                handles: 1,
            }],
            state: LeaseState::Writing,
            held: Duration::from_millis(1500),
            generation: 3,
            waiters: vec![WaiterView {
                process: process(200),
                waited: Duration::from_millis(250),
                intent: Intent::Read,
            }],
        }];
        let counters = Counters {
            revocations: 2,
            ..Counters::default()
        };
        let policy = Policy::default();
        let report = StatusReport::from_engine_with(
            views,
            &counters,
            |key| format!("file-{key}.json"),
            DaemonInfo {
                mount: Path::new("/m"),
                started: Instant::now(),
                passthrough: true,
                policy: &policy,
            },
            |pid| format!("cmd{pid}"),
        );
        let lease = &report.leases[0];
        assert_eq!(lease.path, "file-7.json");
        assert_eq!(lease.state, "writing");
        assert_eq!(lease.held_ms, 1500);
        assert_eq!(lease.holder.as_ref().unwrap().cmd, "cmd100");
        assert_eq!(lease.waiters[0].intent, "read");
        assert_eq!(lease.waiters[0].cmd, "cmd200");
        assert_eq!(report.counters["revocations"], 2);
        assert_eq!(report.counters["cycles_committed"], 0);
        assert_eq!(report.policy.max_hold_ms, 10_000);
    }
}
