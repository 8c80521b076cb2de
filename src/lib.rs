//! lockfs: serialize load-modify-save cycles on the files of a state directory.
//!
//! Two front ends share one lease driver (`driver`) around a pure lease engine (`lease`): a
//! FUSE overlay mounted over the directory itself and a local daemon reached through a
//! client library ([`proxy`]) where FUSE is not available.
//!
//! The library API is [`Client`], [`AsyncClient`] and the wire protocol
//! ([`proxy::protocol`]); [`cli`] is the `lockfs` command.

pub mod cli;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod control;
pub(crate) mod demo;
pub(crate) mod doctor;
pub(crate) mod driver;
pub(crate) mod fastmap;
pub(crate) mod lease;
pub(crate) mod mountinfo;
pub(crate) mod options;
pub(crate) mod overlay;
pub(crate) mod platform;
pub mod proxy;
pub(crate) mod runtime_dir;
pub(crate) mod sys;

pub use proxy::{AsyncClient, Client};

/// What the integration tests under `tests/` drive directly (the control socket with a fake
/// daemon, the driver behind it, the doctor's bypass check). Not an API.
#[doc(hidden)]
pub mod testing {
    pub mod control {
        pub use crate::control::{
            ControlHandler, DaemonInfo, Server, StatusReport, client, socket_path_for,
        };
    }
    pub use crate::doctor::{bypassing, open_paths_under};
    pub use crate::driver::{Asker, Driver};
    pub use crate::lease::{
        Ask, Counters, HolderView, Intent, LeaseState, LeaseView, Policy, WaiterView,
    };
    pub use crate::mountinfo::LockfsMount;
    pub use crate::platform::{ProcessId, process, start_time};
}
