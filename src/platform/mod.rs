//! Platform facts behind small interfaces: who a thread belongs to, when a process
//! started, whether a waiting thread is being killed, and when a process exits.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub use linux::*;

use serde::{Deserialize, Serialize};

/// A process, named so that a recycled pid is a different process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessId {
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat on Linux).
    pub start_time: u64,
}
