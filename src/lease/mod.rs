//! The pure lease engine: per-file FIFO queues of leases held by processes.
//!
//! No I/O and no clock of its own: every call takes `now` (time since an arbitrary epoch)
//! and returns what the front end must do. The FUSE overlay and the proxy daemon both feed
//! it events and act on its [`Action`]s.
//!
//! A *cycle* is one process's load-modify-save on one file. It starts when the process
//! opens the file (a read, a write, or a rename onto it) and ends at its commit (the close
//! of a handle that wrote, or a rename onto the file), at a linger after its last handle
//! closed without a write, at the holder's exit, or at the maximum hold (a revocation).

mod beside;
mod claims;
mod engine;
mod family;
mod kept;
mod policy;
mod query;
mod seen;
mod view;

pub use claims::Absence;
pub use engine::{Action, Admission, Ask, Engine, Grant, Intent, LeaseId, Outcome, WaitId};
pub use policy::Policy;
pub use view::{Counters, EndReason, HolderView, LeaseState, LeaseView, WaiterView};

/// A holder is a process, named by pid and start time.
pub type Holder = crate::platform::ProcessId;

/// A process for the tests: pid and start time.
#[cfg(test)]
const fn holder(pid: u32, start_time: u64) -> Holder {
    Holder { pid, start_time }
}

#[cfg(test)]
mod model;
#[cfg(test)]
mod model_clock;
#[cfg(test)]
mod model_stores;
#[cfg(test)]
mod tests;
