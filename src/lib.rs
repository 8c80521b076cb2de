//! lockfs: serialize load-modify-save cycles on the files of a state directory.
//!
//! Two front ends share one pure lease engine ([`lease`]): a FUSE overlay mounted over the
//! directory itself ([`overlay`]) and a local daemon reached through a client library
//! ([`proxy`]) where FUSE is not available.

pub mod config;
pub mod control;
pub mod demo;
pub mod doctor;
pub mod driver;
pub mod lease;
pub mod mountinfo;
pub mod options;
pub mod overlay;
pub mod platform;
pub mod proxy;
pub mod runtime_dir;
pub mod sys;

pub use proxy::{AsyncClient, Client};
