//! What the driver knows about the processes that hold or wait for leases: which process a
//! thread belongs to, each process's parent and command line (read once, while it lives),
//! and the watch that reports its exit.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;

use crate::fastmap::HashMap;
use crate::platform::{self, ExitWatch, ProcessId};

/// How long a thread id is trusted to name the same process without asking /proc again.
/// A tid is reused only after the kernel has cycled through the whole pid space.
const THREAD_CACHE_TTL: Duration = Duration::from_secs(1);

/// Past this many cached threads, entries older than the TTL are dropped.
const THREAD_CACHE_PRUNE_AT: usize = 4096;

/// The process facts the driver reads from /proc, each read outside every other lock.
#[derive(Default)]
pub struct Processes {
    exits: OnceLock<Arc<ExitWatch>>,
    threads: Mutex<HashMap<u32, (ProcessId, Duration)>>,
    /// Each watched process's parent and grandparent.
    families: Mutex<HashMap<ProcessId, [Option<ProcessId>; 2]>>,
    commands: Mutex<HashMap<ProcessId, String>>,
    /// Set once a living process could not be watched (no pidfd_open: old kernel, seccomp,
    /// valgrind; or no fd left): exits must then be found by polling.
    watch_failed: AtomicBool,
}

impl Processes {
    /// Starts watching exits with `exits` (set once, right after start).
    pub fn set_exit_watch(&self, exits: Arc<ExitWatch>) {
        let _ = self.exits.set(exits);
    }

    /// The process of thread `tid`, from a short-lived cache of /proc answers.
    pub fn of_thread(&self, tid: u32, now: Duration) -> io::Result<ProcessId> {
        if let Some((process, at)) = self.threads.lock().get(&tid)
            && now.saturating_sub(*at) < THREAD_CACHE_TTL
        {
            return Ok(*process);
        }
        let process = platform::process_of_thread(tid)?;
        let mut threads = self.threads.lock();
        if threads.len() > THREAD_CACHE_PRUNE_AT {
            threads.retain(|_, (_, at)| now.saturating_sub(*at) < THREAD_CACHE_TTL);
        }
        threads.insert(tid, (process, now));
        Ok(process)
    }

    /// The process a thread is known to belong to, without reading /proc (see
    /// [`super::Driver::cached_process_of_thread`]).
    pub fn cached_of_thread(&self, tid: u32) -> Option<ProcessId> {
        self.threads.lock().get(&tid).map(|(process, _)| *process)
    }

    /// Whether `process` is still alive: its pidfd when it is watched (one poll), else
    /// /proc.
    pub fn is_alive(&self, process: ProcessId) -> bool {
        match self.exits.get().and_then(|exits| exits.has_exited(process)) {
            Some(exited) => !exited,
            None => platform::is_alive(process),
        }
    }

    /// Watches `process` for its exit; false when it is already gone (report it then).
    pub fn watch(&self, process: ProcessId) -> bool {
        if self.commands.lock().contains_key(&process) {
            return true;
        }
        // Read outside the lock: /proc of a process in execve can block for a while.
        let command = platform::command_line(process.pid);
        if self.commands.lock().insert(process, command).is_some() {
            return true;
        }
        let Some(exits) = self.exits.get() else {
            return true;
        };
        match exits.watch(process) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => false,
            // Failing to watch a process is not its exit: reporting it would end the
            // leases of a process that goes on to commit, unfenced.
            Err(e) if platform::is_alive(process) => {
                if !self.watch_failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cannot watch process exits ({e}); the leases of processes that \
                         exit are ended when a waiter's poll finds them gone"
                    );
                }
                true
            }
            Err(_) => false,
        }
    }

    /// Whether exits must be found by polling: no exit watch, or one that failed.
    pub fn polls_exits(&self) -> bool {
        self.exits.get().is_none() || self.watch_failed.load(Ordering::Relaxed)
    }

    /// The parent and grandparent of `process` (read once per process).
    pub fn family_of(&self, process: ProcessId) -> [Option<ProcessId>; 2] {
        if let Some(family) = self.families.lock().get(&process) {
            return *family;
        }
        let parent = platform::parent_of(process);
        let family = [parent, parent.and_then(platform::parent_of)];
        self.families.lock().insert(process, family);
        family
    }

    /// The parent of a process that exited, if it was read while the process lived and
    /// still lives. Read, not taken: two reports of one exit must find the same parent.
    pub fn living_parent_of(&self, process: ProcessId) -> Option<ProcessId> {
        let family = self.families.lock().get(&process).copied();
        family
            .and_then(|family| family[0])
            .filter(|parent| platform::is_alive(*parent))
    }

    /// The command line of a process that held or waited for a lease (read while alive).
    pub fn command_of(&self, process: ProcessId) -> String {
        self.commands
            .lock()
            .get(&process)
            .cloned()
            .unwrap_or_else(|| platform::command_line(process.pid))
    }

    /// Forgets an exited process.
    pub fn forget(&self, process: ProcessId) {
        self.commands.lock().remove(&process);
        self.families.lock().remove(&process);
        self.threads
            .lock()
            .retain(|_, (cached, _)| *cached != process);
    }
}
