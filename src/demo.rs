//! `lockfs demo`: racing writers on a temp dir, without and with the mount.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct DemoArgs {}

pub fn demo_command(_args: DemoArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("demo is not implemented yet")
}
