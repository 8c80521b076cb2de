//! `lockfs doctor`: checks this machine for what lockfs needs.

use std::process::ExitCode;

use clap::Args;

#[derive(Args, Debug)]
pub struct DoctorArgs {}

pub fn doctor_command(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("doctor is not implemented yet")
}
