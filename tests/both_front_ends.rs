//! One table of scenarios, run through both front ends: a FUSE mount over the directory,
//! and the proxy daemon (`lockfs serve`) with Node writers under `lockfs run`. Both sit on
//! the same lease driver, so every row must keep every update in both.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::proxy_daemon::{Daemon, node_available, node_through_the_shim};
use common::writers::node_path;
use common::{MountGuard, failed_writers, state_dir};

const FIXTURE_WRITER: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/proxy/writer.js"
);

#[derive(Clone, Copy, Debug)]
enum FrontEnd {
    Mount,
    Proxy,
}

/// Who writes in a row.
#[derive(Clone, Copy)]
enum Writers {
    /// `tests/fixtures/proxy/writer.js MODE STORE TAG COUNT`: counts the keys it adds.
    Fixture(&'static str),
    /// An unmodified npm library (`scripts/writers/real_*.js`): logs each acknowledged
    /// update, every one of which must be in the store.
    Library(&'static str),
}

struct Row {
    name: &'static str,
    writers: Writers,
    processes: u32,
    cycles: u32,
}

const TABLE: &[Row] = &[
    Row {
        name: "S1 Node processes, temp file and rename",
        writers: Writers::Fixture("cycle"),
        processes: 4,
        cycles: 25,
    },
    Row {
        name: "S1 synchronous cycles",
        writers: Writers::Fixture("sync_cycle"),
        processes: 3,
        cycles: 20,
    },
    Row {
        name: "S2 Promise.all in one process (K = 4)",
        writers: Writers::Fixture("promise_all"),
        processes: 2,
        cycles: 4,
    },
    Row {
        name: "S6 in-place saves",
        writers: Writers::Fixture("inplace"),
        processes: 3,
        cycles: 20,
    },
    Row {
        name: "S14 npm conf",
        writers: Writers::Library("real_conf.js"),
        processes: 4,
        cycles: 25,
    },
    Row {
        name: "S14 npm configstore, file present",
        writers: Writers::Library("real_configstore.js"),
        processes: 4,
        cycles: 25,
    },
];

/// `node ARGS...`, through the proxy daemon when there is one.
fn node(daemon: Option<&Daemon>) -> Command {
    match daemon {
        Some(daemon) => node_through_the_shim(daemon),
        None => Command::new("node"),
    }
}

fn writer_command(row: &Row, daemon: Option<&Daemon>, state: &Path, n: u32) -> Command {
    let mut command = node(daemon);
    let tag = format!("w{n}");
    match row.writers {
        Writers::Fixture(mode) => {
            command
                .arg(FIXTURE_WRITER)
                .arg(mode)
                .arg(state.join("store.json"))
                .arg(&tag)
                .arg(row.cycles.to_string());
        }
        Writers::Library(script) => {
            let script = format!("{}/scripts/writers/{script}", env!("CARGO_MANIFEST_DIR"));
            command
                .arg(script)
                .arg(state)
                .args(["store.json", &tag, &row.cycles.to_string()]);
        }
    }
    command
}

/// Runs `row` through `front_end`; what went wrong, if anything.
fn run(row: &Row, front_end: FrontEnd, node_path: &str) -> Result<(), String> {
    let (tmp, state) = state_dir();
    std::fs::write(state.join("store.json"), "{}").unwrap();
    let commits = tmp.path().join("commits.log");
    let (_mount, daemon) = match front_end {
        FrontEnd::Mount => (Some(MountGuard::mount(&state, &[])), None),
        FrontEnd::Proxy => (None, Some(Daemon::start(&state, &[]))),
    };
    let children: Vec<_> = (0..row.processes)
        .map(|n| {
            writer_command(row, daemon.as_ref(), &state, n)
                .env("NODE_PATH", node_path)
                .env("LOCKFS_COMMIT_LOG", &commits)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn a writer")
        })
        .collect();
    let failures = failed_writers(children);
    if !failures.is_empty() {
        return Err(format!("writers failed: {failures:#?}"));
    }
    let text = std::fs::read_to_string(state.join("store.json")).unwrap();
    let store: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| format!("store unreadable: {err}: {text}"))?;
    let expected = (row.processes * row.cycles) as usize;
    match row.writers {
        Writers::Fixture(_) => {
            let kept = store.as_object().map_or(0, |keys| keys.len());
            if kept != expected {
                return Err(format!("{kept} of {expected} updates kept"));
            }
        }
        Writers::Library(_) => {
            let acknowledged: Vec<String> = std::fs::read_to_string(&commits)
                .unwrap_or_default()
                .lines()
                .map(str::to_string)
                .collect();
            let lost: Vec<&String> = acknowledged
                .iter()
                .filter(|key| store.get(key.as_str()).is_none())
                .collect();
            if !lost.is_empty() {
                return Err(format!("acknowledged but lost: {lost:?}"));
            }
            if acknowledged.len() != expected {
                return Err(format!(
                    "{} of {expected} updates acknowledged",
                    acknowledged.len()
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn every_scenario_keeps_every_update_through_both_front_ends() {
    if !node_available() {
        eprintln!("skipped: node is not installed");
        return;
    }
    let node_path = node_path();
    let mut failed = Vec::new();
    for row in TABLE {
        for front_end in [FrontEnd::Mount, FrontEnd::Proxy] {
            if let Err(why) = run(row, front_end, &node_path) {
                failed.push(format!("{} through {front_end:?}: {why}", row.name));
            }
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
