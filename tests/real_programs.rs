//! Real programs as the oracle (DESIGN.md S14-S16, issue 10), on real lockfs mounts.
//!
//! The race rows run unmodified npm libraries (conf, configstore, write-json-file,
//! keyv-file), Python shelve on dbm.dumb and shell cycles whose reader is cat, sed, awk or
//! jq (and `jq | sponge`) through `scripts/race.sh` rows S14-* and S15-*. Each first races
//! on a plain directory, where it must lose acknowledged updates (which proves both that
//! the writers race and that a silent loss is detected), then under lockfs, where every
//! acknowledged update must be present, every expected update acknowledged, and no
//! process may fail or see a torn file.
//!
//! Then git (init, add, commit, config, gc, fsck on 1,000 files) and `rsync -a` of 1,000
//! files inside a mount, checked against the native result, and one Python process that
//! opens a file twice. Every external command runs under a hang limit that fails the test
//! instead of hanging it; no test asserts a tight wall-clock time (`scripts/bench-real`
//! prints the lockfs/native ratios).

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::writers::{RaceRow, race_with_timeout};
use common::{MountGuard, state_dir};

/// race.sh kills a row's processes after this many seconds (they then count as errors),
/// so a row that stalls behind maximum-hold revocations fails instead of hanging.
const ROW_TIMEOUT_SECS: u64 = 120;

/// A shell cycle longer than this is a stall (the issue wants none over 1 s; a maximum
/// hold is 10 s). Generous on purpose: two shared cores, eight shells.
const SHELL_CYCLE_STALL_MS: u64 = 5_000;

/// Hang limit for one git or rsync command.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// A git or rsync step through lockfs that takes longer than STALL_FACTOR x its native
/// time plus STALL_SLACK has stalled (the signature of a process waiting for its own
/// lease until the 10 s maximum hold). Not a performance target: `scripts/bench-real`
/// measures the issue's 3x.
const STALL_FACTOR: u32 = 10;
const STALL_SLACK: Duration = Duration::from_secs(5);

/// Hang limit for one open or read in the Python double-open test.
const OP_LIMIT_SECS: f64 = 5.0;

/// Native runs tried before concluding a row's writers do not race.
const NATIVE_ATTEMPTS: usize = 3;

/// Runs under lockfs of each S14 row. They take seconds when lockfs is right, and some
/// failures show only in some runs (configstore on a file not there yet: 2 of 6 runs
/// refused an update with ESTALE, one also lost an acknowledged update).
const S14_RUNS: usize = 5;

/// Runs under lockfs of each S15 row (8 shells x 20 cycles, under a second each when
/// lockfs is right). The per-writer-temp rows fail only under load: sed lost 70
/// acknowledged lines in one run of three while the test suite ran.
const S15_RUNS: usize = 3;

fn row_of(dir: &Path, only: &str) -> RaceRow {
    let report = race_with_timeout(dir, only, ROW_TIMEOUT_SECS);
    let rows: Vec<RaceRow> = report
        .results
        .into_iter()
        .filter(|r| r.scenario == only)
        .collect();
    assert_eq!(
        rows.len(),
        1,
        "race.sh --only {only} ran {} rows",
        rows.len()
    );
    rows.into_iter().next().unwrap()
}

/// On a plain directory the row must lose acknowledged updates (retried a few times).
fn native_loses_acknowledged(dir: &Path, only: &str) {
    let mut last = None;
    for _ in 0..NATIVE_ATTEMPTS {
        let row = row_of(dir, only);
        eprintln!("native {}", row.summary());
        assert!(
            row.acknowledged.is_some() && row.ack_lost.is_some(),
            "{only}: race.sh reported no acknowledged counts:\n{}",
            row.summary()
        );
        if row.ack_lost.unwrap() > 0 {
            return;
        }
        last = Some(row);
    }
    panic!(
        "{only} lost no acknowledged update on a plain directory in {NATIVE_ATTEMPTS} runs, so its writers do not race:\n{}",
        last.unwrap().summary()
    );
}

/// Races row `only` natively, then `runs` times under lockfs (one mount), and asserts
/// that every lockfs run kept every update with no error.
fn real_row(only: &str, runs: usize) {
    let (_tmp, state) = state_dir();
    native_loses_acknowledged(&state, only);
    let _mount = MountGuard::mount(&state, &[]);
    for run in 1..=runs {
        let row = row_of(&state, only);
        eprintln!("lockfs run {run} of {runs}: {}", row.summary());
        assert_kept_everything(&state, only, &row, &format!("run {run} of {runs}"));
    }
}

fn assert_kept_everything(state: &Path, only: &str, row: &RaceRow, run: &str) {
    let acknowledged = row.acknowledged.expect("acknowledged count");
    let problems: Vec<String> = [
        (row.present != row.expected).then(|| "not every update is present".to_string()),
        (acknowledged != row.expected).then(|| "not every update was acknowledged".to_string()),
        (row.present != acknowledged).then(|| "present differs from acknowledged".to_string()),
        (row.ack_lost != Some(0)).then(|| "acknowledged updates were lost silently".to_string()),
        (row.errors != 0).then(|| "writer processes failed".to_string()),
        (row.refused.unwrap_or(0) != 0).then(|| "updates were refused with an error".to_string()),
        (row.torn != 0).then(|| "a store or read was torn".to_string()),
        (only.starts_with("S15") && row.max_cycle_ms.unwrap_or(0) > SHELL_CYCLE_STALL_MS).then(
            || format!("a shell cycle took over {SHELL_CYCLE_STALL_MS} ms (the target is 1 s)"),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(
        problems.is_empty(),
        "{only} under lockfs ({run}): {}:\n{}",
        problems.join("; "),
        row.summary()
    );
    let left: Vec<_> = std::fs::read_dir(state)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "race.sh left files behind: {left:?}");
}

#[test]
fn s14_conf() {
    real_row("S14-conf", S14_RUNS);
}

#[test]
fn s14_configstore_file_present() {
    real_row("S14-configstore", S14_RUNS);
}

/// Four processes find the store missing: the second and later loaders wait at a
/// placeholder for the first one's save (before placeholders, about one run in five had
/// a creating rename refused).
#[test]
fn s14_configstore_file_absent() {
    real_row("S14-configstore-absent", S14_RUNS);
}

/// write-json-file reads the file a second time from a libuv pool thread before saving:
/// that read waits for its own process's cycle, ahead of other processes (before, it
/// queued behind them and 61 to 74 of 100 saves were refused with ESTALE).
#[test]
fn s14_write_json_file() {
    real_row("S14-write-json-file", S14_RUNS);
}

/// keyv-file saves 100 ms + its start-up after loading a store nobody has saved yet: the
/// claim of a file with no learned gap lasts the longest linger, so no first save loses
/// its turn (with the default linger, 0 to 3 of 100 were refused in about half the runs).
#[test]
fn s14_keyv_file() {
    real_row("S14-keyv-file", S14_RUNS);
}

/// A new database: the first process's `.dat` (created empty, then filled) and its
/// `.dir` (found missing, then created by an append) are one cycle, so nobody reads the
/// store half made (before, 0 to 4 updates were refused in about one run in five).
#[test]
fn s14_shelve_dbm_dumb() {
    real_row("S14-shelve", S14_RUNS);
}

/// Runs of the shelve row in `s14_shelve_loses_no_acknowledged_update`. Before the rule it
/// guards (a save in place keeps the cycle while its holder holds another file), 4 runs
/// lost 0, 18, 10 and 24 acknowledged updates.
const S14_SHELVE_LOSS_RUNS: usize = 6;

/// dbm.dumb saves one database in three files: every acknowledged update must be in it,
/// and it must always open. (An update refused with ESTALE is allowed here, see above.)
///
/// 1 of 290 runs once lost an update: a load of `state.dir` walked the name just before
/// another process renamed it to `state.bak`, and the read was counted on `.bak`. A read
/// open of an inode just renamed away is now sent back to the name it walked, also when
/// the walk went through a cached entry (see `tests/concurrency.rs`): 0 lost in 700 runs
/// (200 beside two busy loops), and in 640 before that last case was covered.
#[test]
fn s14_shelve_loses_no_acknowledged_update() {
    let (_tmp, state) = state_dir();
    let _mount = MountGuard::mount(&state, &[]);
    for run in 1..=S14_SHELVE_LOSS_RUNS {
        let row = row_of(&state, "S14-shelve");
        eprintln!("lockfs run {run}: {}", row.summary());
        let unopened: Vec<&String> = row
            .notes
            .iter()
            .filter(|note| note.contains("open-db"))
            .collect();
        assert!(
            row.ack_lost == Some(0) && row.torn == 0 && unopened.is_empty(),
            "run {run}: acknowledged updates were lost or the database did not open:\n{}",
            row.summary()
        );
    }
}

#[test]
fn s15_cat_per_writer_temp() {
    real_row("S15-cat-pidtmp", S15_RUNS);
}

/// One temp name shared by eight shells. An open whose walk found the temp just before
/// another script renamed it over the store waits its turn at the temp's name before its
/// ESTALE, so the kernel's one retry is not sent back a second time (before, 0 to 1 of
/// 160 updates refused per run, one run in two beside a busy loop for sed).
#[test]
fn s15_cat_shared_temp() {
    real_row("S15-cat-shared", S15_RUNS);
}

/// Runs of the shared-temp cat row in `s15_cat_shared_temp_loses_no_acknowledged_update`.
/// Before the just-renamed-inode rule, 3 of 13 runs lost acknowledged updates; with it, a
/// CI run under load still lost 15 in 1 of 6 runs, until a temp closed before its
/// reader's exit was reported stayed tied to the cycle (`Driver::tie_to_cycle`).
const S15_SHARED_LOSS_RUNS: usize = 6;

/// A temp name shared by eight shells: an update whose `mv` succeeded must be in the
/// store, and no cycle may stall into a revocation (six runs, a stricter look at the
/// acknowledged updates than the row test above): a shell's `> store.tmp` whose path walk raced another
/// script's rename of that temp over the store opened, truncated and wrote the store.
#[test]
fn s15_cat_shared_temp_loses_no_acknowledged_update() {
    let (_tmp, state) = state_dir();
    let _mount = MountGuard::mount(&state, &[]);
    for run in 1..=S15_SHARED_LOSS_RUNS {
        let row = row_of(&state, "S15-cat-shared");
        eprintln!("lockfs run {run}: {}", row.summary());
        let acknowledged = row.acknowledged.expect("acknowledged count");
        assert!(
            row.ack_lost == Some(0) && row.present == acknowledged && row.torn == 0,
            "run {run}: acknowledged updates were lost:\n{}",
            row.summary()
        );
        assert!(
            row.max_cycle_ms.unwrap_or(0) <= SHELL_CYCLE_STALL_MS,
            "run {run}: a shell cycle stalled:\n{}",
            row.summary()
        );
    }
}

#[test]
fn s15_sed_per_writer_temp() {
    real_row("S15-sed-pidtmp", S15_RUNS);
}

#[test]
fn s15_sed_shared_temp() {
    real_row("S15-sed-shared", S15_RUNS);
}

#[test]
fn s15_awk_per_writer_temp() {
    real_row("S15-awk-pidtmp", S15_RUNS);
}

#[test]
fn s15_awk_shared_temp() {
    real_row("S15-awk-shared", S15_RUNS);
}

#[test]
fn s15_jq_per_writer_temp() {
    real_row("S15-jq-pidtmp", S15_RUNS);
}

#[test]
fn s15_jq_shared_temp() {
    real_row("S15-jq-shared", S15_RUNS);
}

#[test]
fn s15_jq_piped_into_sponge() {
    real_row("S15-sponge", S15_RUNS);
}

// ---------------------------------------------------------------------------------------
// git and rsync on 1,000 files, Python opening one file twice.

/// Runs `program args` in `cwd` under coreutils `timeout` (which signals the whole
/// process group, so git's children go too); returns its output and how long it took.
fn run_limited(
    cwd: &Path,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new("timeout")
        .args(["-k", "5", &COMMAND_LIMIT.as_secs().to_string(), program])
        .args(args)
        .current_dir(cwd)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    (output, started.elapsed())
}

fn describe(program: &str, args: &[&str], output: &Output, took: Duration) -> String {
    let hung = matches!(output.status.code(), Some(124) | Some(137));
    format!(
        "{program} {} {} after {:.1}s{}\nstdout: {}\nstderr: {}",
        args.join(" "),
        output.status,
        took.as_secs_f64(),
        if hung {
            format!(" (killed at the {}s hang limit)", COMMAND_LIMIT.as_secs())
        } else {
            String::new()
        },
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// 1,000 small files in 10 directories, some executable, under `root`.
fn populate(root: &Path) {
    for d in 0..10 {
        let dir = root.join(format!("dir{d}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..100 {
            let path = dir.join(format!("file{f}.txt"));
            std::fs::write(
                &path,
                format!("directory {d} file {f}\n{}\n", "x".repeat(f * 7)),
            )
            .unwrap();
            if f % 10 == 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
    }
}

/// Environment that makes git deterministic and independent of the user's config.
const GIT_ENV: &[(&str, &str)] = &[
    ("GIT_CONFIG_GLOBAL", "/dev/null"),
    ("GIT_CONFIG_NOSYSTEM", "1"),
    ("GIT_AUTHOR_NAME", "lockfs test"),
    ("GIT_AUTHOR_EMAIL", "test@lockfs.invalid"),
    ("GIT_COMMITTER_NAME", "lockfs test"),
    ("GIT_COMMITTER_EMAIL", "test@lockfs.invalid"),
    ("GIT_AUTHOR_DATE", "2026-01-01T00:00:00Z"),
    ("GIT_COMMITTER_DATE", "2026-01-01T00:00:00Z"),
];

const GIT_STEPS: &[&[&str]] = &[
    &["init", "-q", "-b", "main"],
    &["add", "."],
    &["commit", "-q", "-m", "1,000 files"],
    &["config", "lockfs.test", "yes"],
    &["gc", "-q"],
    &["fsck", "--full", "--strict"],
];

/// What a finished repository looks like, for comparing native with lockfs.
#[derive(Debug, PartialEq, Eq)]
struct RepoState {
    head: String,
    tree: String,
    log: String,
    config: String,
    status: String,
    objects: BTreeMap<String, String>,
    fsck: String,
}

/// Runs GIT_STEPS in `repo` (already populated), asserting each succeeds, then reads the
/// repository's state. Returns the state and each step's time.
fn git_sequence(repo: &Path, context: &str) -> (RepoState, Vec<Duration>) {
    let mut times = Vec::new();
    for args in GIT_STEPS {
        let (output, took) = run_limited(repo, "git", args, GIT_ENV);
        assert!(
            output.status.success(),
            "{context}: {}",
            describe("git", args, &output, took)
        );
        times.push(took);
    }
    let read = |args: &[&str]| -> String {
        let (output, took) = run_limited(repo, "git", args, GIT_ENV);
        assert!(
            output.status.success(),
            "{context}: {}",
            describe("git", args, &output, took)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    let fsck = {
        let args = ["fsck", "--full", "--strict", "--no-progress"];
        let (output, took) = run_limited(repo, "git", &args, GIT_ENV);
        assert!(
            output.status.success(),
            "{context}: {}",
            describe("git", &args, &output, took)
        );
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        )
    };
    // count-objects -v: loose count and in-pack count must match (sizes may differ with
    // pack ordering, so they are left out).
    let objects = read(&["count-objects", "-v"])
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(k, _)| matches!(*k, "count" | "in-pack" | "packs" | "garbage"))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let state = RepoState {
        head: read(&["rev-parse", "HEAD"]),
        tree: read(&["rev-parse", "HEAD^{tree}"]),
        log: read(&["log", "--format=%H %s"]),
        config: read(&["config", "lockfs.test"]),
        status: read(&["status", "--porcelain"]),
        objects,
        fsck,
    };
    (state, times)
}

fn stall_limit(native: Duration) -> Duration {
    native * STALL_FACTOR + STALL_SLACK
}

fn print_times(label: &str, native: &[Duration], lockfs: &[Duration]) {
    eprintln!("{label}: step, native s, lockfs s");
    for (i, args) in GIT_STEPS.iter().enumerate() {
        eprintln!(
            "  git {:<24} {:>7.2} {:>7.2}",
            args[0],
            native[i].as_secs_f64(),
            lockfs.get(i).map_or(f64::NAN, Duration::as_secs_f64)
        );
    }
}

/// S14: git init, add, commit, config, gc and fsck on a 1,000-file repository inside the
/// mount all succeed, and the repository is the same as the one made natively (same
/// commit id: the dates are fixed; fsck clean; the commit in the log; the config value);
/// no step stalls (see STALL_FACTOR).
#[test]
fn s14_git_on_a_thousand_files() {
    let (tmp, state) = state_dir();
    let native_repo = tmp.path().join("native-repo");
    populate(&native_repo);
    let (native, native_times) = git_sequence(&native_repo, "native");
    assert_eq!(native.fsck, "", "native git fsck printed something");
    assert_eq!(
        native.objects.get("in-pack").map(String::as_str),
        Some("1012")
    );

    let repo = state.join("repo");
    populate(&repo);
    let _mount = MountGuard::mount(&state, &[]);
    let (through, times) = git_sequence(&repo, "lockfs");
    print_times("git on 1,000 files", &native_times, &times);
    assert_eq!(
        through, native,
        "the repository made through lockfs differs from the native one"
    );
    assert!(
        through.log.ends_with("1,000 files"),
        "git log: {}",
        through.log
    );
    let stalled: Vec<String> = GIT_STEPS
        .iter()
        .zip(native_times.iter().zip(&times))
        .filter(|(_, (n, l))| **l > stall_limit(**n))
        .map(|(args, (n, l))| {
            format!(
                "git {}: {:.2}s through lockfs, {:.2}s native",
                args[0],
                l.as_secs_f64(),
                n.as_secs_f64()
            )
        })
        .collect();
    assert!(
        stalled.is_empty(),
        "git steps stalled through lockfs (over {STALL_FACTOR}x native + {}s): {}",
        STALL_SLACK.as_secs(),
        stalled.join("; ")
    );
}

/// Every regular file and directory under `root`: relative path -> (mode, size, mtime,
/// content).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, (u32, u64, i64, Vec<u8>)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().to_path_buf();
            if meta.is_dir() {
                out.insert(rel, (meta.mode(), 0, meta.mtime(), Vec::new()));
                walk(root, &path, out);
            } else {
                let content = std::fs::read(&path).unwrap();
                out.insert(rel, (meta.mode(), meta.len(), meta.mtime(), content));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn assert_same_tree(src: &Path, dst: &Path, context: &str) {
    let a = tree(src);
    let b = tree(dst);
    let differ: Vec<_> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .take(5)
        .collect();
    assert!(
        differ.is_empty(),
        "{context}: {} source entries, {} copied, first that differ: {differ:?}",
        a.len(),
        b.len()
    );
}

fn rsync(src: &Path, dst: &Path, context: &str) -> Duration {
    let args = [format!("{}/", src.display()), format!("{}/", dst.display())];
    let args: Vec<&str> = std::iter::once("-a")
        .chain(args.iter().map(String::as_str))
        .collect();
    let (output, took) = run_limited(src.parent().unwrap(), "rsync", &args, &[]);
    assert!(
        output.status.success(),
        "{context}: {}",
        describe("rsync", &args, &output, took)
    );
    took
}

/// S14: `rsync -a` of 1,000 files into the mount makes an identical tree (paths, modes,
/// sizes, mtimes, contents), and so does a second run after 20 files changed (rsync then
/// reads each old file as its basis, writes a temp, reopens it, renames it over); neither
/// run stalls (see STALL_FACTOR).
#[test]
fn s14_rsync_a_thousand_files_into_the_mount() {
    let (tmp, state) = state_dir();
    let src = tmp.path().join("src");
    populate(&src);
    let native_dst = tmp.path().join("native-dst");
    let native_took = rsync(&src, &native_dst, "native");
    assert_same_tree(&src, &native_dst, "native rsync -a");

    let dst = state.join("dst");
    let _mount = MountGuard::mount(&state, &[]);
    let took = rsync(&src, &dst, "lockfs, first copy");
    eprintln!(
        "rsync -a of 1,000 files: native {:.2}s, lockfs {:.2}s",
        native_took.as_secs_f64(),
        took.as_secs_f64()
    );
    assert_same_tree(&src, &dst, "rsync -a into lockfs");

    for d in 0..2 {
        for f in 0..10 {
            let path = src.join(format!("dir{d}/file{f}.txt"));
            let mut text = std::fs::read_to_string(&path).unwrap();
            text.push_str("changed\n");
            std::fs::write(&path, text).unwrap();
        }
    }
    let native_again = rsync(&src, &native_dst, "native, update of 20 files");
    let again = rsync(&src, &dst, "lockfs, update of 20 files");
    eprintln!(
        "rsync -a update of 20 files: native {:.2}s, lockfs {:.2}s",
        native_again.as_secs_f64(),
        again.as_secs_f64()
    );
    assert_same_tree(&src, &dst, "second rsync -a into lockfs");
    for (what, native, through) in [
        ("copy of 1,000 files", native_took, took),
        ("update of 20 files", native_again, again),
    ] {
        assert!(
            through <= stall_limit(native),
            "rsync -a {what} stalled through lockfs: {:.2}s, native {:.2}s (limit {STALL_FACTOR}x native + {}s)",
            through.as_secs_f64(),
            native.as_secs_f64(),
            STALL_SLACK.as_secs()
        );
    }
}

/// S16: one Python process opens a file twice at once (`a = open(p); b = open(p)`), reads
/// both, then re-reads the file before saving it (temp + os.replace). Nothing waits for
/// itself: each step finishes well inside a generous hang limit, and the save lands.
#[test]
fn s16_python_opens_one_file_twice() {
    let (_tmp, state) = state_dir();
    let store = state.join("store.json");
    std::fs::write(&store, "{\"a\": 1}\n").unwrap();
    let _mount = MountGuard::mount(&state, &[]);
    let program = r#"
import json, os, sys, time
p = sys.argv[1]
steps = []
def step(name, fn):
    t = time.monotonic()
    value = fn()
    steps.append([name, round(time.monotonic() - t, 4)])
    print(json.dumps(steps[-1]), flush=True)
    return value
a = step("first open", lambda: open(p))
b = step("second open while the first is open", lambda: open(p))
ta = step("read through the first", a.read)
tb = step("read through the second", b.read)
a.close(); b.close()
data = step("re-read before saving", lambda: json.load(open(p)))
data["b"] = 2
tmp = p + ".tmp"
def save():
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, p)
step("save (temp + os.replace)", save)
print(json.dumps({"same": ta == tb, "first": ta}))
"#;
    let limit = Duration::from_secs_f64(OP_LIMIT_SECS * 8.0);
    let started = Instant::now();
    let mut child = Command::new(common::cycle::python3())
        .args(["-c", program])
        .arg(&store)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    let finished = common::wait_until(limit, || child.try_wait().unwrap().is_some());
    if !finished {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        finished,
        "python hung for {:.1}s; steps done: {stdout}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        output.status.success(),
        "python failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("{stdout}");
    for line in stdout.lines().filter(|l| l.starts_with('[')) {
        let (name, secs): (String, f64) = serde_json::from_str(line).unwrap();
        assert!(
            secs < OP_LIMIT_SECS,
            "{name} took {secs} s (a process must never wait for itself; the issue saw 10 s)"
        );
    }
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        last["same"], true,
        "the two handles read different data: {last}"
    );
    assert_eq!(last["first"], "{\"a\": 1}\n");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&store).unwrap()).unwrap();
    assert_eq!(saved, serde_json::json!({"a": 1, "b": 2}));
}
