//! Scripted cycles (tests/scripts/cycle.py) run as child processes whose progress the test
//! reads line by line, with hang guards.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::script;

/// The system python3 (usable by other users, unlike a pyenv shim under /root), or the
/// one on PATH.
pub fn python3() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A running `cycle.py STORE STEPS...`.
pub struct Cycle {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// Every line read so far.
    pub seen: Vec<String>,
}

/// Seconds since the epoch, comparable with the TIME that cycle.py prints.
pub fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

impl Cycle {
    pub fn start(store: &Path, steps: &[&str]) -> Cycle {
        Cycle::start_with(Command::new(python3()), store, steps)
    }

    /// Starts cycle.py through `command` (e.g. a wrapper), which gets the script and args.
    pub fn start_with(mut command: Command, store: &Path, steps: &[&str]) -> Cycle {
        let mut child = command
            .arg(script("cycle.py"))
            .arg(store)
            .args(steps)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start cycle.py");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Cycle {
            stdin: child.stdin.take(),
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (at most `limit`) for a line starting with `prefix`; returns it or None.
    pub fn wait_line(&mut self, prefix: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        if let Some(line) = self.seen.iter().find(|l| l.starts_with(prefix)) {
            return Some(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return Some(line);
                    }
                }
                Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => {
                    return None;
                }
            }
        }
    }

    /// Like `wait_line` but panics with what the process printed if the line never comes.
    pub fn expect_line(&mut self, prefix: &str, limit: Duration) -> String {
        match self.wait_line(prefix, limit) {
            Some(line) => line,
            None => panic!(
                "cycle.py {} never printed {prefix:?} within {limit:?}; it printed {:?}",
                self.pid(),
                self.seen
            ),
        }
    }

    /// The TIME field of a "STEP RESULT TIME" line.
    pub fn time_of(line: &str) -> f64 {
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    /// Lets a `pause` step go on.
    pub fn resume(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    pub fn kill(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGKILL) };
    }

    /// Waits for the process to end, at most `limit` (a hang guard).
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    self.seen.push(line);
                }
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Cycle {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill();
            let _ = self.child.wait();
        }
    }
}

/// The state letter of /proc/PID/stat (R, S, D, Z, ...), or None if it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// VmRSS of a process in kB.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
