//! The per-mount control channel: `lockfs status` and `lockfs break`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The mounted directory; every lockfs mount of this user when omitted.
    pub dir: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every second.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub struct BreakArgs {
    /// The leased file, as DIR/PATH inside a lockfs mount.
    pub path: PathBuf,
}

pub fn status_command(_args: StatusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("status is not implemented yet")
}

pub fn break_command(_args: BreakArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("break is not implemented yet")
}
