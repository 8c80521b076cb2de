//! The FUSE front end: a passthrough overlay mounted over the directory itself.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::options::LeaseOptions;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The directory to protect; lockfs mounts over this same path.
    pub dir: PathBuf,
    /// Stay attached to the terminal (for systemd and debugging) instead of backgrounding.
    #[arg(long)]
    pub foreground: bool,
    /// Let other users use the mount (permissions are still checked as on the disk below).
    #[arg(long)]
    pub allow_other: bool,
    #[command(flatten)]
    pub lease: LeaseOptions,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    /// The mounted directory.
    pub dir: PathBuf,
}

pub fn mount_command(_args: MountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("mount is not implemented yet")
}

pub fn unmount_command(_args: UnmountArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("unmount is not implemented yet")
}
