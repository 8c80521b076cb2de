//! The FUSE front end: a passthrough overlay mounted over the directory itself.
//!
//! `mount` opens the directory (O_PATH) before mounting over it and serves everything
//! through *at() calls on held fds. `daemon` is the mount and unmount commands and the
//! daemon's life; `fuse` the fuser glue; `passthrough` the operations on held fds;
//! `leased` and `gate` the requests that take leases (docs/ARCHITECTURE.md).

pub mod attr;
pub mod caller;
pub mod control;
pub mod creds;
mod daemon;
mod fds;
pub mod fuse;
pub mod gate;
pub mod handles;
pub mod inodes;
pub mod leased;
mod mounting;
pub mod names;
pub mod passthrough;
mod placeholders;
pub mod reply;

pub use self::caller::Caller;
pub use self::daemon::{MountArgs, UnmountArgs, mount_command, unmount_command};
