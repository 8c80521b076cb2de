//! Runs the real writer programs in `scripts/` (through `scripts/race.sh --json`, or one
//! at a time) and counts the updates that survived.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Deserialize;

/// The repository root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `scripts/writers/<name>`.
pub fn writer(name: &str) -> PathBuf {
    repo_root().join("scripts").join("writers").join(name)
}

/// One scenario's result, as `scripts/race.sh --json` prints it.
#[derive(Clone, Debug, Deserialize)]
pub struct RaceRow {
    pub scenario: String,
    pub description: String,
    pub writers: u64,
    pub expected: u64,
    pub present: u64,
    pub lost: u64,
    pub torn: u64,
    pub errors: u64,
    pub seconds: f64,
    pub notes: Vec<String>,
    /// Real-program rows (S14, S15) only: updates whose library call or last shell step
    /// returned success.
    #[serde(default)]
    pub acknowledged: Option<u64>,
    /// Real-program rows only: acknowledged updates missing from the store (silent loss).
    #[serde(default)]
    pub ack_lost: Option<u64>,
    /// Real-program rows only: updates that failed with an error.
    #[serde(default)]
    pub refused: Option<u64>,
    /// Real-program rows only: the longest single cycle of any writer, in ms.
    #[serde(default)]
    pub max_cycle_ms: Option<u64>,
}

impl RaceRow {
    /// Nothing lost, nothing torn, no process failed.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.torn == 0 && self.errors == 0 && self.present == self.expected
    }

    pub fn summary(&self) -> String {
        let mut text = format!(
            "{}: {} writers, expected {}, present {}, lost {}, torn {}, errors {}, {:.1}s",
            self.scenario,
            self.writers,
            self.expected,
            self.present,
            self.lost,
            self.torn,
            self.errors,
            self.seconds
        );
        if let (Some(acked), Some(ack_lost)) = (self.acknowledged, self.ack_lost) {
            text.push_str(&format!(
                ", acknowledged {acked}, acknowledged but lost {ack_lost}"
            ));
        }
        if let Some(refused) = self.refused {
            text.push_str(&format!(", refused {refused}"));
        }
        if let Some(ms) = self.max_cycle_ms {
            text.push_str(&format!(", longest cycle {ms} ms"));
        }
        for note in &self.notes {
            text.push_str("\n    ");
            text.push_str(note);
        }
        text
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct RaceReport {
    pub dir: String,
    pub quick: bool,
    pub lost: u64,
    pub results: Vec<RaceRow>,
}

impl RaceReport {
    pub fn summary(&self) -> String {
        self.results
            .iter()
            .map(RaceRow::summary)
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs `scripts/race.sh DIR --quick --json --only ONLY` and parses its report. Panics
/// (with race.sh's stderr) if the script itself broke.
pub fn race(dir: &Path, only: &str) -> RaceReport {
    race_with_timeout(dir, only, 240)
}

/// As `race`, with race.sh killing a scenario's processes after `timeout_secs` (they
/// then count as errors).
pub fn race_with_timeout(dir: &Path, only: &str, timeout_secs: u64) -> RaceReport {
    let timeout = timeout_secs.to_string();
    let output = Command::new("bash")
        .arg(repo_root().join("scripts").join("race.sh"))
        .arg(dir)
        .args(["--quick", "--json", "--timeout", &timeout, "--only", only])
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/race.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "race.sh {only} on {} broke ({}):\n{stderr}\n{stdout}",
        dir.display(),
        output.status
    );
    let report: RaceReport = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("race.sh printed no JSON report ({e}):\n{stdout}\n{stderr}"));
    assert!(
        !report.results.is_empty(),
        "race.sh ran no scenario for {only}"
    );
    report
}

/// Races `only` on a plain directory until every selected scenario loses an update,
/// `attempts` times at most; returns the last report. Lost updates on a plain directory
/// are the problem lockfs solves, so a test that expects them proves its writers race.
pub fn race_expecting_native_loss(dir: &Path, only: &str, attempts: usize) -> RaceReport {
    let mut last = None;
    for _ in 0..attempts {
        let report = race(dir, only);
        eprintln!("native {only}:\n{}", report.summary());
        if report.results.iter().all(|row| row.lost > 0) {
            return report;
        }
        last = Some(report);
    }
    let report = last.unwrap();
    panic!(
        "the writers of {only} lost nothing on a plain directory in {attempts} attempts, so they do not race:\n{}",
        report.summary()
    );
}

/// Asserts that every scenario in the report kept every update and saw no error.
pub fn assert_clean(report: &RaceReport, context: &str) {
    let bad: Vec<&RaceRow> = report.results.iter().filter(|r| !r.is_clean()).collect();
    assert!(
        bad.is_empty(),
        "{context}: updates lost or processes failed:\n{}",
        bad.iter()
            .map(|r| r.summary())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The `node_modules` directory holding write-file-atomic and proper-lockfile
/// (installed once into the cache by `scripts/npm-deps.sh`), for `NODE_PATH`.
pub fn node_path() -> String {
    let output = Command::new("bash")
        .arg(repo_root().join("scripts").join("npm-deps.sh"))
        .output()
        .expect("run scripts/npm-deps.sh");
    assert!(
        output.status.success(),
        "npm-deps.sh failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// Starts one writer program: `program` (node, python3, bash) running
/// `scripts/writers/<script>` with `args`; stdout and stderr are piped.
pub fn spawn_writer(program: &str, script: &str, args: &[&str]) -> Child {
    Command::new(program)
        .arg(writer(script))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program} {script}: {e}"))
}

/// What `scripts/writers/count.js` found in a store.
#[derive(Clone, Debug, Deserialize)]
pub struct Count {
    pub expected: u64,
    pub present: u64,
    pub lost: u64,
    pub torn: u64,
    pub duplicates: u64,
    pub missing_sample: Vec<String>,
}

/// Counts survivors in `store` (`format` json, jsonl or lines) against `writers`, each
/// `(id, n)` meaning keys `id-0 .. id-(n-1)`.
pub fn count(store: &Path, format: &str, writers: &[(&str, usize)]) -> Count {
    let spec = writers
        .iter()
        .map(|(id, n)| format!("{id}:{n}"))
        .collect::<Vec<_>>()
        .join(",");
    let output = Command::new("node")
        .arg(writer("count.js"))
        .arg(store)
        .arg(format)
        .arg(&spec)
        .output()
        .expect("run count.js");
    assert!(
        output.status.success(),
        "count.js failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("count.js prints JSON")
}
