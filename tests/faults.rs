//! Faults on real mounts (issue 7): killed and hung holders, killed waiters, recycled pids,
//! a killed daemon, a full disk, and a soak with random kills.
//!
//! Time limits here are hang guards (well under the --max-hold of the mount), not
//! performance assertions. The lease counters (revocations, fenced commits) are not yet
//! readable from outside the daemon (`lockfs status --json` is being built), so these tests
//! assert on what processes observe: errnos, timings, file contents.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::cycle::{Cycle, now, proc_state, python3};
use common::{MountGuard, process_alive, read_pid, state_dir, wait_until};

const OLD: &str = r#"{"v": "old"}"#;
const NEW: &str = r#"{"v": "new"}"#;
/// How long a test waits for something that should happen at once.
const PROMPT: Duration = Duration::from_secs(5);
/// How long a test waits for a step that should never take long.
const STEP: Duration = Duration::from_secs(20);

fn temp_step(text: &str) -> String {
    format!("temp:{text}")
}

/// A mount over a fresh state dir holding store.json = OLD.
fn mounted(args: &[&str]) -> (tempfile::TempDir, PathBuf, MountGuard) {
    let (tmp, state) = state_dir();
    std::fs::write(state.join("store.json"), OLD).unwrap();
    let mount = MountGuard::mount(&state, args);
    (tmp, state, mount)
}

/// Asserts that `cycle` is still blocked (printed no `prefix` line) for `time`.
fn assert_waits(cycle: &mut Cycle, prefix: &str, time: Duration) {
    assert!(
        cycle.wait_line(prefix, time).is_none(),
        "expected pid {} to wait behind the holder, it printed {:?}",
        cycle.pid(),
        cycle.seen
    );
}

/// The content a cycle.py "read" step printed.
fn content_read(cycle: &mut Cycle) -> String {
    let line = cycle.expect_line("content ", STEP);
    let quoted = line.trim_start_matches("content ");
    quoted.trim_matches('\'').to_string()
}

fn holder_killed(stage: &[&str], kill_after_resume: Option<Duration>) -> (String, f64) {
    let (_tmp, state, _mount) = mounted(&["--max-hold", "30s"]);
    let store = state.join("store.json");
    let new = temp_step(NEW);
    let mut steps: Vec<&str> = vec!["open", "read"];
    steps.extend_from_slice(stage);
    steps.push("pause");
    if kill_after_resume.is_some() {
        steps.push("rename");
    }
    let mut holder = Cycle::start(&store, &steps);
    holder.expect_line("pause ok", STEP);
    let mut waiter = Cycle::start(&store, &["read"]);
    assert_waits(&mut waiter, "read ok", Duration::from_millis(500));
    let killed_at = match kill_after_resume {
        Some(delay) => {
            holder.resume();
            let deadline = Instant::now() + delay;
            while Instant::now() < deadline {
                std::hint::spin_loop();
            }
            let t = now();
            holder.kill();
            t
        }
        None => {
            let t = now();
            holder.kill();
            t
        }
    };
    assert!(holder.wait(PROMPT).is_some(), "the holder died");
    let line = waiter.expect_line("read ok", PROMPT);
    let waited = Cycle::time_of(&line) - killed_at;
    let content = content_read(&mut waiter);
    assert!(
        content == OLD || content == NEW,
        "the file is neither the old nor the new version: {content:?}"
    );
    assert!(waiter.wait(PROMPT).unwrap().success());
    let on_disk = std::fs::read_to_string(&store).unwrap();
    assert!(on_disk == OLD || on_disk == NEW, "torn: {on_disk:?}");
    drop(new);
    eprintln!("waiter proceeded {waited:.3}s after the kill; it read {content}");
    (content, waited)
}

#[test]
fn s8_holder_killed_after_its_read_lets_the_waiter_proceed() {
    let (content, waited) = holder_killed(&[], None);
    assert_eq!(content, OLD);
    assert!(waited < PROMPT.as_secs_f64(), "waited {waited}s");
}

#[test]
fn s8_holder_killed_after_its_temp_write_lets_the_waiter_proceed() {
    let new = temp_step(NEW);
    let (content, waited) = holder_killed(&[new.as_str()], None);
    assert_eq!(content, OLD, "the temp was never renamed");
    assert!(waited < PROMPT.as_secs_f64(), "waited {waited}s");
}

#[test]
fn s8_holder_killed_around_its_rename_leaves_old_or_new() {
    let new = temp_step(NEW);
    let mut seen = Vec::new();
    for delay_us in [0u64, 50, 200, 500, 1000, 2000, 5000] {
        let (content, waited) =
            holder_killed(&[new.as_str()], Some(Duration::from_micros(delay_us)));
        assert!(waited < PROMPT.as_secs_f64(), "waited {waited}s");
        seen.push((delay_us, content == NEW));
    }
    eprintln!("(kill delay in us, rename landed): {seen:?}");
}

#[test]
fn s9_hung_holder_is_revoked_and_its_late_commit_is_fenced() {
    let (_tmp, state, _mount) = mounted(&["--max-hold", "2s"]);
    let store = state.join("store.json");
    let late = temp_step(r#"{"v": "late"}"#);
    let mut hung = Cycle::start(&store, &["open", "read", "pause", &late, "rename"]);
    hung.expect_line("pause ok", STEP);
    let queued_at = now();
    let b = temp_step(r#"{"v": "b"}"#);
    let mut other = Cycle::start(&store, &["read", &b, "rename"]);
    let line = other.expect_line("read ok", STEP);
    let waited = Cycle::time_of(&line) - queued_at;
    eprintln!("the other process got in {waited:.3}s after queueing (max-hold 2s)");
    assert!(
        waited > 1.0,
        "it should have waited for the hold limit: {waited}"
    );
    assert!(waited < 15.0, "hang guard: {waited}");
    assert!(other.wait(STEP).unwrap().success(), "{:?}", other.seen);
    assert_eq!(std::fs::read_to_string(&store).unwrap(), r#"{"v": "b"}"#);
    hung.resume();
    let status = hung.wait(STEP).expect("the late committer ends");
    let refused = hung
        .seen
        .iter()
        .find(|l| l.contains("ESTALE"))
        .cloned()
        .unwrap_or_else(|| panic!("the late commit was not refused: {:?}", hung.seen));
    eprintln!("late commit: {refused}");
    assert_eq!(status.code(), Some(3));
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        r#"{"v": "b"}"#,
        "the newer content is intact"
    );
}

#[test]
fn a_save_in_place_built_on_finding_the_file_missing_is_refused_once_it_exists() {
    let (_tmp, state) = state_dir();
    let _mount = MountGuard::mount(&state, &[]);
    let store = state.join("store.json");
    // keyv-file's first cycle: load (the file is not there), then writeFile in place.
    let mut late = Cycle::start(&store, &["try:read", "pause", "inplace:{\"late\":1}"]);
    late.expect_line("read ENOENT", STEP);
    late.expect_line("pause ok", STEP);
    let mut first = Cycle::start(&store, &["blind:{\"first\":1}"]);
    first.expect_line("blind ok", STEP);
    late.resume();
    let line = late.expect_line("inplace", STEP);
    assert!(
        line.starts_with("inplace ESTALE"),
        "a save built on an absence wrote over the file created since: {line}"
    );
    assert_eq!(std::fs::read_to_string(&store).unwrap(), "{\"first\":1}");
}

#[test]
fn s12_waiter_killed_while_queued_dies_promptly_and_the_queue_moves_on() {
    let (_tmp, state, _mount) = mounted(&["--max-hold", "30s"]);
    let store = state.join("store.json");
    let mut holder = Cycle::start(&store, &["open", "read", "pause", "close"]);
    holder.expect_line("pause ok", STEP);
    let mut first = Cycle::start(&store, &["read"]);
    assert_waits(&mut first, "read ok", Duration::from_millis(400));
    let mut second = Cycle::start(&store, &["read"]);
    assert_waits(&mut second, "read ok", Duration::from_millis(400));
    let pid = first.pid();
    let killed = Instant::now();
    first.kill();
    let mut states = Vec::new();
    let status = first.wait(PROMPT);
    states.push(proc_state(pid));
    assert!(
        status.is_some(),
        "the killed waiter is still there after {PROMPT:?}, state {:?}",
        proc_state(pid)
    );
    eprintln!("killed waiter reaped {:?} after the kill", killed.elapsed());
    assert!(!process_alive(pid));
    holder.resume();
    assert!(holder.wait(STEP).unwrap().success());
    let released = now();
    let line = second.expect_line("read ok", PROMPT);
    eprintln!(
        "the next waiter got in {:.3}s after the holder closed",
        Cycle::time_of(&line) - released
    );
    assert_eq!(content_read(&mut second), OLD);
}

/// Starts cycle.py with `steps` as process id `pid` (which must be free) by setting
/// /proc/sys/kernel/ns_last_pid, retrying while other processes take the number first.
fn start_as_pid(pid: u32, store: &Path, steps: &[&str]) -> Option<Cycle> {
    for _ in 0..200 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", format!("{}", pid - 1)).ok()?;
        let mut cycle = Cycle::start(
            store,
            &["pid", "pause"]
                .iter()
                .chain(steps)
                .copied()
                .collect::<Vec<_>>(),
        );
        if cycle.pid() == pid {
            cycle.expect_line("pause ok", STEP);
            return Some(cycle);
        }
        cycle.kill();
        let _ = cycle.wait(PROMPT);
    }
    None
}

#[test]
fn a_recycled_pid_is_a_different_holder() {
    if std::fs::write(
        "/proc/sys/kernel/ns_last_pid",
        std::fs::read_to_string("/proc/sys/kernel/ns_last_pid").unwrap_or_default(),
    )
    .is_err()
    {
        println!("skipped: /proc/sys/kernel/ns_last_pid is not writable (needs root)");
        return;
    }
    let (_tmp, state, _mount) = mounted(&["--max-hold", "30s"]);
    let store = state.join("store.json");

    // 1. Fencing: A reads and exits; B commits; C, started with A's pid, writes without
    //    reading. A process with no view must not inherit A's stale one: C's commit must
    //    fare exactly as the same commit by a process with a fresh pid.
    let mut a = Cycle::start(&store, &["read"]);
    assert!(a.wait(STEP).unwrap().success());
    let recycled = a.pid();
    let mut b = Cycle::start(&store, &["read", "temp:{\"v\": \"b\"}", "rename"]);
    assert!(b.wait(STEP).unwrap().success(), "{:?}", b.seen);
    let mut control = Cycle::start(&store, &["blind:{\"v\": \"control\"}"]);
    let control_status = control.wait(STEP).unwrap();
    let Some(mut c) = start_as_pid(recycled, &store, &["blind:{\"v\": \"c\"}"]) else {
        println!("skipped: could not get pid {recycled} again");
        return;
    };
    c.resume();
    let c_status = c.wait(STEP).unwrap();
    eprintln!(
        "pid {recycled} reused: control {:?} {:?}; recycled {:?} {:?}",
        control_status, control.seen, c_status, c.seen
    );
    assert_eq!(
        c_status.code(),
        control_status.code(),
        "the recycled pid was treated unlike a fresh process: {:?} vs {:?}",
        c.seen,
        control.seen
    );
    assert!(
        c_status.success(),
        "a blind commit by a fresh process: {:?}",
        c.seen
    );
    assert_eq!(std::fs::read_to_string(&store).unwrap(), r#"{"v": "c"}"#);

    // 2. Queueing: holder H holds the lease, W queues, H is SIGKILLed; N, started with H's
    //    pid, must not ride H's lease: it gets in only after W (FIFO), which holds the file
    //    for a second.
    let mut h = Cycle::start(&store, &["open", "read", "pause"]);
    h.expect_line("pause ok", STEP);
    let mut w = Cycle::start(&store, &["open", "read", "sleep:1", "close"]);
    assert_waits(&mut w, "open ok", Duration::from_millis(400));
    let recycled = h.pid();
    h.kill();
    assert!(h.wait(PROMPT).is_some());
    let Some(mut n) = start_as_pid(recycled, &store, &["open", "read", "close"]) else {
        println!("skipped: could not get pid {recycled} again");
        return;
    };
    n.resume();
    let w_open = Cycle::time_of(&w.expect_line("open ok", PROMPT));
    let w_close = Cycle::time_of(&w.expect_line("close ok", STEP));
    let n_open = Cycle::time_of(&n.expect_line("open ok", STEP));
    eprintln!(
        "pid {recycled} reused: waiter open {w_open:.3} close {w_close:.3}; newcomer open {n_open:.3}"
    );
    assert!(
        n_open >= w_close - 0.05,
        "the newcomer with the dead holder's pid got the file while the waiter held it"
    );
    assert!(w.wait(STEP).unwrap().success());
    assert!(n.wait(STEP).unwrap().success());
}

/// A directory removed and made again can come back with the old one's inode number (and
/// so its nodeid): a process's view of a file in the old directory must not refuse its
/// save in the new one (race.sh's setup write was refused with ESTALE that way).
#[test]
fn a_recreated_directory_starts_with_no_lease_history() {
    use std::os::unix::fs::MetadataExt;
    let (_tmp, state, _mount) = mounted(&["--max-hold", "30s"]);
    let dir = state.join("d");
    let store = dir.join("store.json");
    // Children write and remove the file: the test process itself keeps no view of it.
    let sh = |script: &str| {
        let status = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&state)
            .status()
            .unwrap();
        assert!(status.success(), "sh -c {script:?}: {status}");
    };
    sh("mkdir d && printf '{}' > d/store.json");
    let ino = std::fs::metadata(&dir).unwrap().ino();
    // P reads, then waits; Q saves over P's view; the directory is emptied and removed.
    let mut p = Cycle::start(&store, &["read", "pause", "blind:{\"v\": \"p\"}"]);
    p.expect_line("pause ok", STEP);
    let mut q = Cycle::start(&store, &["read", "temp:{\"v\": \"q\"}", "rename"]);
    assert!(q.wait(STEP).unwrap().success(), "{:?}", q.seen);
    sh("rm d/store.json && rmdir d");
    // ext4 hands a freed inode number out again soon; try until the new directory has it.
    let mut same = false;
    for _ in 0..200 {
        std::fs::create_dir(&dir).unwrap();
        if std::fs::metadata(&dir).unwrap().ino() == ino {
            same = true;
            break;
        }
        std::fs::remove_dir(&dir).unwrap();
    }
    if !same {
        println!("skipped: the directory never came back with inode {ino}");
        p.kill();
        return;
    }
    p.resume();
    assert!(
        p.wait(STEP).unwrap().success(),
        "a save in the new directory was judged on the old one's history: {:?}",
        p.seen
    );
    assert_eq!(std::fs::read_to_string(&store).unwrap(), r#"{"v": "p"}"#);
}

/// One writer program of the soak and the daemon-kill test.
#[derive(Clone, Copy, Debug)]
enum Kind {
    NodeCycle,
    PyCycle,
    ShCycle,
    NodeAppend,
}

impl Kind {
    fn store(self) -> &'static str {
        match self {
            Kind::NodeCycle | Kind::PyCycle => "cycle.json",
            Kind::ShCycle => "lines.txt",
            Kind::NodeAppend => "log.jsonl",
        }
    }

    /// Starts the writer in its own process group (so a kill takes sed and mv too).
    fn spawn(self, dir: &Path, id: &str, cycles: u32, log: &Path, stderr: &Path) -> Child {
        use std::os::unix::process::CommandExt;
        let (program, script) = match self {
            Kind::NodeCycle => ("node", "node_cycle.js"),
            Kind::PyCycle => (python3(), "py_cycle.py"),
            Kind::ShCycle => ("bash", "sh_cycle.sh"),
            Kind::NodeAppend => ("node", "node_append.js"),
        };
        Command::new(program)
            .arg(common::writers::writer(script))
            .arg(dir)
            .arg(self.store())
            .arg(id)
            .arg(cycles.to_string())
            .env("LOCKFS_COMMIT_LOG", log)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(stderr).unwrap())
            .spawn()
            .expect("start a writer")
    }
}

use std::process::{Child, Stdio};

fn seed_stores(dir: &Path) {
    std::fs::write(dir.join("cycle.json"), "{}").unwrap();
    std::fs::write(dir.join("lines.txt"), "start\n").unwrap();
    std::fs::write(dir.join("log.jsonl"), "").unwrap();
}

/// What the stores hold: keys of cycle.json, lines of lines.txt, ids of log.jsonl; and
/// what is broken (unparsable JSON, torn lines).
fn store_keys(dir: &Path) -> (std::collections::HashSet<String>, Vec<String>) {
    let mut keys = std::collections::HashSet::new();
    let mut broken = Vec::new();
    let text = std::fs::read_to_string(dir.join("cycle.json")).unwrap();
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(map)) => keys.extend(map.keys().cloned()),
        other => broken.push(format!("cycle.json does not parse: {other:?}: {text:?}")),
    }
    let text = std::fs::read_to_string(dir.join("lines.txt")).unwrap();
    if !text.starts_with("start\n") || !text.ends_with('\n') {
        broken.push(format!("lines.txt is torn: {text:?}"));
    }
    keys.extend(text.lines().map(str::to_string));
    let text = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => keys.insert(v["id"].as_str().unwrap_or_default().to_string()),
            Err(_) => {
                broken.push(format!("log.jsonl has a torn line: {line:?}"));
                false
            }
        };
    }
    (keys, broken)
}

/// Sends SIGKILL to a writer's whole process group and reaps it.
fn kill_group(child: &mut Child) {
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
}

#[test]
fn daemon_killed_under_load_leaves_intact_files_and_remounts_at_once() {
    let (tmp, state) = state_dir();
    seed_stores(&state);
    let pid_file = tmp.path().join("daemon.pid");
    let log = tmp.path().join("commits.log");
    let mut mount = MountGuard::mount(&state, &["--pid-file", pid_file.to_str().unwrap()]);
    let daemon = read_pid(&pid_file);
    let kinds = [
        Kind::NodeCycle,
        Kind::NodeCycle,
        Kind::PyCycle,
        Kind::ShCycle,
        Kind::NodeAppend,
    ];
    let mut writers: Vec<Child> = kinds
        .iter()
        .enumerate()
        .map(|(n, kind)| {
            let err = tmp.path().join(format!("w{n}.err"));
            kind.spawn(&state, &format!("w{n}"), 100_000, &log, &err)
        })
        .collect();
    assert!(
        wait_until(STEP, || std::fs::read_to_string(&log)
            .map(|t| t.lines().count() > 100)
            .unwrap_or(false)),
        "the writers made no progress"
    );
    unsafe { libc::kill(daemon as i32, libc::SIGKILL) };
    assert!(wait_until(PROMPT, || !process_alive(daemon)));
    // The writers now fail with ENOTCONN (or ECONNABORTED); give them a moment, then stop the rest.
    let ended = wait_until(PROMPT, || {
        writers.iter_mut().all(|w| w.try_wait().unwrap().is_some())
    });
    for w in &mut writers {
        kill_group(w);
    }
    let out = mount.unmount();
    assert!(
        out.status.success(),
        "unmount of the dead mount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!common::is_mounted(&state));
    let committed = std::fs::read_to_string(&log).unwrap();
    let (keys, broken) = store_keys(&state);
    assert!(broken.is_empty(), "{broken:?}");
    let lost: Vec<&str> = committed.lines().filter(|k| !keys.contains(*k)).collect();
    assert!(lost.is_empty(), "committed updates lost: {lost:?}");
    eprintln!(
        "daemon killed after {} commits; writers ended by themselves: {ended}; all stores parse",
        committed.lines().count()
    );
    let start = Instant::now();
    let _again = MountGuard::mount(&state, &[]);
    eprintln!("remounted in {:?}", start.elapsed());
    let (again, broken) = store_keys(&state);
    assert!(broken.is_empty(), "{broken:?}");
    assert_eq!(again, keys, "the new mount shows the same files");
    std::fs::write(state.join("after.txt"), "works").unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("after.txt")).unwrap(),
        "works"
    );
}

/// A small tmpfs mounted inside a temp dir; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "lockfs-test"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_gives_enospc_keeps_the_last_version_and_releases_the_lease() {
    let tmp = tempfile::Builder::new()
        .prefix("lockfs-test")
        .tempdir()
        .unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&tmp.path().join("small"), "2m") else {
        println!("skipped: cannot mount a tmpfs (needs root)");
        return;
    };
    let state = tmp.path().join("small").join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::write(state.join("store.json"), OLD).unwrap();
    let _mount = MountGuard::mount(&state, &["--max-hold", "30s"]);
    let store = state.join("store.json");
    // A cycle whose temp does not fit; the writer stays alive afterwards (as a server
    // that catches the error would), so only the lease's own rules (not its exit) can let
    // the next writer in.
    let mut full = Cycle::start(
        &store,
        &["read", "try:big:4000000", "try:unlinktemp", "pause"],
    );
    full.expect_line("pause ok", STEP);
    assert!(
        full.seen.iter().any(|l| l.starts_with("big ENOSPC")),
        "{:?}",
        full.seen
    );
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        OLD,
        "last good version"
    );
    let started = now();
    let mut next = Cycle::start(&store, &["read", "temp:{\"v\": \"next\"}", "rename"]);
    let status = next.wait(STEP).expect("the next writer ends");
    assert!(status.success(), "{:?}", next.seen);
    let took = Cycle::time_of(next.seen.last().unwrap()) - started;
    eprintln!("after ENOSPC the next writer committed in {took:.3}s (max-hold 30s)");
    assert!(took < PROMPT.as_secs_f64());
    assert_eq!(std::fs::read_to_string(&store).unwrap(), r#"{"v": "next"}"#);
    assert!(
        full.child.try_wait().unwrap().is_none(),
        "the full writer is alive"
    );
}

/// A small xorshift generator (no dependency; the seed is printed for replay).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// LOCKFS_SOAK_SECS (default 20) of mixed writers with random SIGKILLs: no committed
/// update lost, nothing torn, no writer stuck, the daemon's RSS flat.
#[test]
fn soak_mixed_writers_with_random_kills() {
    let secs: u64 = std::env::var("LOCKFS_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("LOCKFS_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| now().to_bits() | 1);
    eprintln!("soak: {secs}s, LOCKFS_SOAK_SEED={seed}");
    let mut rng = Rng(seed);
    let (tmp, state) = state_dir();
    seed_stores(&state);
    let pid_file = tmp.path().join("daemon.pid");
    let log = tmp.path().join("commits.log");
    let errs = tmp.path().join("errs");
    std::fs::create_dir(&errs).unwrap();
    let _mount = MountGuard::mount(
        &state,
        &[
            "--pid-file",
            pid_file.to_str().unwrap(),
            "--max-hold",
            "10s",
            "--max-wait",
            "30s",
        ],
    );
    let daemon = read_pid(&pid_file);
    let slots = [
        Kind::NodeCycle,
        Kind::NodeCycle,
        Kind::PyCycle,
        Kind::ShCycle,
        Kind::NodeAppend,
        Kind::NodeAppend,
    ];
    let mut serial = 0u32;
    let mut spawn = |kind: Kind, rng: &mut Rng| {
        serial += 1;
        let id = format!("k{serial}");
        let err = errs.join(format!("{id}.err"));
        let cycles = 5 + rng.below(40) as u32;
        (id.clone(), kind.spawn(&state, &id, cycles, &log, &err))
    };
    let mut running: Vec<(String, Child)> = slots.iter().map(|k| spawn(*k, &mut rng)).collect();
    let mut kills = 0u32;
    let mut finished = 0u32;
    let mut failures: Vec<String> = Vec::new();
    let mut rss_start = None;
    let mut last_count = 0usize;
    let mut last_progress = Instant::now();
    let mut stalls = 0u32;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(Duration::from_millis(100 + rng.below(400)));
        if rss_start.is_none() && start.elapsed() > Duration::from_secs(2) {
            rss_start = common::cycle::rss_kb(daemon);
        }
        // Kill one writer at random (its whole process group), about every other tick.
        if rng.below(2) == 0 {
            let n = rng.below(running.len() as u64) as usize;
            kill_group(&mut running[n].1);
            kills += 1;
            let kind = slots[n];
            running[n] = spawn(kind, &mut rng);
        }
        for (n, (id, child)) in running.iter_mut().enumerate() {
            if let Some(status) = child.try_wait().unwrap() {
                if status.success() {
                    finished += 1;
                } else {
                    let err =
                        std::fs::read_to_string(errs.join(format!("{id}.err"))).unwrap_or_default();
                    failures.push(format!("{id} {:?} {status}: {}", slots[n], err.trim()));
                }
                let (new_id, new_child) = spawn(slots[n], &mut rng);
                *id = new_id;
                *child = new_child;
            }
        }
        let count = std::fs::read_to_string(&log)
            .map(|t| t.lines().count())
            .unwrap_or(0);
        if count > last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > Duration::from_secs(10) {
            stalls += 1;
            last_progress = Instant::now();
        }
    }
    // No stuck waiter: every writer still running finishes its few cycles on its own.
    let mut stuck = Vec::new();
    for (id, child) in &mut running {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        match status {
            Some(s) if s.success() => finished += 1,
            Some(s) => failures.push(format!(
                "{id} {s}: {}",
                std::fs::read_to_string(errs.join(format!("{id}.err")))
                    .unwrap_or_default()
                    .trim()
            )),
            None => {
                stuck.push(format!(
                    "{id} (pid {}, state {:?})",
                    child.id(),
                    proc_state(child.id())
                ));
                kill_group(child);
            }
        }
    }
    let rss_end = common::cycle::rss_kb(daemon);
    let committed = std::fs::read_to_string(&log).unwrap_or_default();
    let (keys, broken) = store_keys(&state);
    let lost: Vec<&str> = committed.lines().filter(|k| !keys.contains(*k)).collect();
    let refused = failures.iter().filter(|f| is_estale(f)).count();
    eprintln!(
        "soak {secs}s seed {seed}: {} committed updates, {} lost, {kills} writers SIGKILLed, \
         {finished} writers finished, {} failed ({refused} refused with ESTALE), {} stuck, \
         {stalls} stalls of 10s, daemon VmRSS {rss_start:?} -> {rss_end:?} kB",
        committed.lines().count(),
        lost.len(),
        failures.len(),
        stuck.len()
    );
    for f in &failures {
        eprintln!("  failure: {}", f.lines().next().unwrap_or_default());
    }
    assert!(broken.is_empty(), "torn stores: {broken:?}");
    assert!(lost.is_empty(), "committed updates lost: {lost:?}");
    assert!(stuck.is_empty(), "stuck writers: {stuck:?}");
    assert_eq!(stalls, 0, "no commit for 10s at a time");
    assert!(committed.lines().count() > 50, "the soak did some work");
    let unexpected: Vec<&String> = failures.iter().filter(|f| !(is_estale(f))).collect();
    assert!(unexpected.is_empty(), "writers failed: {unexpected:?}");
    if let (Some(a), Some(b)) = (rss_start, rss_end) {
        assert!(
            b < a * 2 + 32 * 1024,
            "daemon RSS grew from {a} kB to {b} kB"
        );
    }
}

/// A writer failure that is a refused (fenced) commit: ESTALE, which Node's libuv has no
/// name for ("Unknown system error -116").
fn is_estale(failure: &str) -> bool {
    failure.contains("ESTALE")
        || failure.contains("errno 116")
        || failure.contains("Stale file handle")
        || failure.contains("-116")
}
