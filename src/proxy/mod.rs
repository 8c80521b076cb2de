//! Proxy library mode: the lease engine as a local daemon, its wire protocol and client.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The state directory whose files the daemon serves.
    #[arg(long)]
    pub root: PathBuf,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The state directory (defaults to the one named by LOCKFS_ROOT).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<OsString>,
}

pub fn serve_command(_args: ServeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("serve is not implemented yet")
}

pub fn run_command(_args: RunArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("run is not implemented yet")
}
