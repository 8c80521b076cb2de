//! Proxy library mode: the lease engine as a local daemon, its wire protocol and client.
//!
//! `lockfs serve --root DIR` listens on [`default_endpoint`]`(DIR)`; programs reach it
//! through [`Client`] (Rust) or the Node preload shim that `lockfs run` injects. The wire
//! protocol is described in docs/PROTOCOL.md and defined in [`protocol`].

pub mod client;
pub mod endpoint;
mod paths;
pub mod protocol;
pub mod server;
pub mod shim;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

pub use client::{AsyncClient, Client, Error, Guard};
pub use endpoint::default_endpoint;
pub use shim::run_command;

use crate::options::LeaseOptions;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The state directory whose files the daemon serves.
    #[arg(long)]
    pub root: PathBuf,
    /// Listen here instead of the default endpoint derived from the root.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(flatten)]
    pub lease: LeaseOptions,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The state directory (defaults to the one named by LOCKFS_ROOT).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The daemon's endpoint, when it is not the default one for the root.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The command to run, after `--`.
    #[arg(trailing_var_arg = true, required = true)]
    pub command: Vec<OsString>,
}

pub fn serve_command(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let root = args
        .root
        .canonicalize()
        .with_context(|| format!("root {}", args.root.display()))?;
    let endpoint = match args.socket {
        Some(socket) => socket,
        None => default_endpoint(&root)?,
    };
    // The same policy a mount gets: defaults, then the config file, then the flags.
    let resolved = crate::config::resolve(&args.lease)?;
    if !resolved.excludes.is_empty() {
        tracing::warn!("excludes are ignored by serve: clients choose what they lease");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = server::Server::new(&root, resolved.policy)?;
        let listener = endpoint::bind(&endpoint)
            .with_context(|| format!("listen on {}", endpoint.display()))?;
        eprintln!(
            "lockfs: serving {} on {}",
            root.display(),
            endpoint.display()
        );
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let result = tokio::select! {
            result = server.run(listener) => result.map_err(anyhow::Error::from),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = terminate.recv() => Ok(()),
        };
        let _ = std::fs::remove_file(&endpoint);
        result
    })?;
    Ok(ExitCode::SUCCESS)
}
