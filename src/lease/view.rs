use std::time::Duration;

use serde::Serialize;

use super::Holder;

/// What a lease is doing now, for `lockfs status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseState {
    /// A cycle with a handle open that has not asked to write.
    Reading,
    /// A cycle that opened the file for writing or is renaming onto it.
    Writing,
    /// No handle open, no write yet: the lease ends at the linger unless the holder saves.
    Lingering,
    /// Appenders sharing the file.
    Appending,
}

/// Why a lease ended without a commit, for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    MaxHold,
    Manual,
}

#[derive(Clone, Debug, Serialize)]
pub struct HolderView {
    pub process: Holder,
    pub handles: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct WaiterView {
    pub process: Holder,
    pub waited: Duration,
    pub intent: super::Intent,
}

#[derive(Clone, Debug, Serialize)]
pub struct LeaseView<K> {
    pub key: K,
    pub holders: Vec<HolderView>,
    pub state: LeaseState,
    pub held: Duration,
    pub generation: u64,
    pub waiters: Vec<WaiterView>,
}

/// Counters since the engine started.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Counters {
    /// Cycles that ended with a commit (a write, a rename onto the file, an unlink).
    pub cycles_committed: u64,
    /// Cycles that ended at the linger without writing.
    pub cycles_read_only: u64,
    /// Append handles that wrote.
    pub appends: u64,
    /// Requests that had to queue.
    pub waits: u64,
    pub wait_total_ms: u64,
    pub wait_longest_ms: u64,
    /// Waiters answered with a timeout at their limit.
    pub wait_timeouts: u64,
    pub revocations: u64,
    pub fenced_commits: u64,
    /// Holders that exited while holding a lease without committing.
    pub holder_exits_mid_cycle: u64,
    /// Dead holders' cycles passed on to their parent process (the shell of a pipeline).
    pub handoffs: u64,
    /// Writes that held a kernel lock and went ahead while another process's cycle held
    /// the file (that cycle can then no longer commit).
    pub out_of_turn: u64,
    /// Reads by known readers that went beside another process's cycle (not waiting).
    pub reads_beside: u64,
    /// Names found missing by two processes at once: the second waited for the first
    /// one's cycle (see `claims.rs`).
    pub claims: u64,
    /// Not a count of events: files the engine remembers now (leased, waited for, or with
    /// history that still judges a save or sets a linger). Set by [`Engine::counters`].
    pub files_remembered: u64,
    /// Not a count of events: what processes last saw of files, kept to judge late saves.
    pub views_remembered: u64,
}
