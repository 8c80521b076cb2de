//! The per-mount control channel: `lockfs status` and `lockfs break`.
//!
//! The daemon serves [`ControlHandler`] on a Unix socket at [`socket_path_for`] its mount
//! directory with [`Server::start`]; the commands here find mounts in mountinfo and ask.

pub mod client;
pub mod events;
pub mod protocol;
pub mod report;
mod server;
mod socket_path;
mod table;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

pub use report::{ClusterReport, DaemonInfo, StatusReport};
pub use server::{ControlHandler, Server, ServerHandle};
pub use socket_path::{
    canonical_mount_dir, lexically_absolute, socket_candidates_for, socket_path_for,
};

use crate::mountinfo::{self, LockfsMount};
use client::ClientError;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The mounted directory; every lockfs mount of this user when omitted.
    pub dir: Option<PathBuf>,
    /// Print JSON instead of a table (an object for DIR, an array for all mounts).
    #[arg(long)]
    pub json: bool,
    /// Refresh in place every second, until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
    /// Ask the daemon on this control socket directly (for tests and debugging).
    #[arg(long, hide = true, conflicts_with = "dir")]
    pub socket: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BreakArgs {
    /// The leased file, as DIR/PATH inside a lockfs mount.
    pub path: PathBuf,
    /// Send the break to this control socket, with PATH taken as relative to its mount.
    #[arg(long, hide = true)]
    pub socket: Option<PathBuf>,
}

/// Which daemon to ask, and how to name it in messages.
struct Target {
    mount: PathBuf,
    sockets: Vec<PathBuf>,
}

pub fn status_command(args: StatusArgs) -> anyhow::Result<ExitCode> {
    loop {
        // Re-read the mounts each round: `--watch` follows mounts coming and going.
        let (targets, single) = status_targets(&args)?;
        let results: Vec<(PathBuf, anyhow::Result<StatusReport>)> = targets
            .iter()
            .map(|target| (target.mount.clone(), fetch_status(target)))
            .collect();
        let failed = results.iter().any(|(_, result)| result.is_err());
        if single && !args.watch {
            let (_, result) = results.into_iter().next().expect("one target");
            let report = result?;
            print_reports(&[report], args.json, true)?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut out = String::new();
        if args.watch {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&render_results(&results, args.json, single)?);
        write_stdout(&out)?;
        if !args.watch {
            return Ok(if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            });
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn status_targets(args: &StatusArgs) -> anyhow::Result<(Vec<Target>, bool)> {
    if let Some(socket) = &args.socket {
        let target = Target {
            mount: socket.clone(),
            sockets: vec![socket.clone()],
        };
        return Ok((vec![target], true));
    }
    if let Some(dir) = &args.dir {
        return Ok((vec![target_for_dir(dir)?], true));
    }
    let mounts = mountinfo::own_lockfs_mounts().context("cannot read /proc/self/mountinfo")?;
    let targets = mounts
        .iter()
        .map(|mount| Target {
            mount: mount.mount_point.clone(),
            sockets: socket_candidates_for(&mount.mount_point),
        })
        .collect();
    Ok((targets, false))
}

fn target_for_dir(dir: &Path) -> anyhow::Result<Target> {
    let mount_dir = canonical_mount_dir(dir);
    let mounts = mountinfo::lockfs_mounts().context("cannot read /proc/self/mountinfo")?;
    if !mounts.iter().any(|mount| mount.mount_point == mount_dir) {
        bail!(
            "{} is not a lockfs mount (no {} entry for it in /proc/self/mountinfo); \
             mount it with `lockfs mount {}`",
            mount_dir.display(),
            mountinfo::FSTYPE,
            mount_dir.display()
        );
    }
    Ok(Target {
        sockets: socket_candidates_for(&mount_dir),
        mount: mount_dir,
    })
}

fn fetch_status(target: &Target) -> anyhow::Result<StatusReport> {
    ask_daemon(target, client::status)
}

/// Asks the mount's daemon through the first of its candidate sockets that has one; when
/// none answers, the error names the first socket and says what to do.
fn ask_daemon<T>(
    target: &Target,
    ask: impl Fn(&std::path::Path) -> Result<T, ClientError>,
) -> anyhow::Result<T> {
    let mut last_error = None;
    for socket in &target.sockets {
        match ask(socket) {
            Ok(answer) => return Ok(answer),
            Err(ClientError::NoDaemon(err)) => last_error = Some(ClientError::NoDaemon(err)),
            Err(other) => return Err(daemon_error(&target.mount, socket, other)),
        }
    }
    let socket = target.sockets.first().cloned().unwrap_or_default();
    Err(daemon_error(
        &target.mount,
        &socket,
        last_error.unwrap_or(ClientError::NoDaemon(std::io::ErrorKind::NotFound.into())),
    ))
}

fn daemon_error(mount: &Path, socket: &Path, error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Refused(message) => anyhow::anyhow!("{}: {message}", mount.display()),
        ClientError::NoDaemon(_) => anyhow::anyhow!(
            "the lockfs daemon of {} does not answer on {}: {error}. If it died, the mount is \
             dead; clear it with `lockfs unmount {}`",
            mount.display(),
            socket.display(),
            mount.display()
        ),
        ClientError::Io(_) => anyhow::anyhow!(
            "the lockfs daemon of {} does not answer on {}: {error}. If it stays stuck, \
             `lockfs unmount {}` detaches the mount",
            mount.display(),
            socket.display(),
            mount.display()
        ),
    }
}

fn print_reports(reports: &[StatusReport], json: bool, single: bool) -> anyhow::Result<()> {
    let text = if json {
        let value = if single {
            serde_json::to_string_pretty(&reports[0])?
        } else {
            serde_json::to_string_pretty(reports)?
        };
        value + "\n"
    } else {
        reports
            .iter()
            .map(table::render)
            .collect::<Vec<_>>()
            .join("\n")
    };
    write_stdout(&text)?;
    Ok(())
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

fn render_results(
    results: &[(PathBuf, anyhow::Result<StatusReport>)],
    json: bool,
    single: bool,
) -> anyhow::Result<String> {
    if json {
        let values: Vec<serde_json::Value> = results
            .iter()
            .map(|(mount, result)| match result {
                Ok(report) => serde_json::to_value(report),
                Err(err) => Ok(serde_json::json!({
                    "mount": mount.display().to_string(),
                    "error": format!("{err:#}"),
                })),
            })
            .collect::<Result<_, _>>()?;
        let text = if single {
            serde_json::to_string_pretty(&values[0])?
        } else {
            serde_json::to_string_pretty(&values)?
        };
        return Ok(text + "\n");
    }
    if results.is_empty() {
        return Ok("no lockfs mounts of this user\n".to_string());
    }
    Ok(results
        .iter()
        .map(|(mount, result)| match result {
            Ok(report) => table::render(report),
            Err(err) => format!("{}\n  error: {err:#}\n", mount.display()),
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

pub fn break_command(args: BreakArgs) -> anyhow::Result<ExitCode> {
    let (target, relative) = match &args.socket {
        Some(socket) => (
            Target {
                mount: socket.clone(),
                sockets: vec![socket.clone()],
            },
            args.path.to_string_lossy().into_owned(),
        ),
        None => break_target(&args.path)?,
    };
    let message = ask_daemon(&target, |socket| client::break_lease(socket, &relative))?;
    write_stdout(&format!("{message}\n"))?;
    Ok(ExitCode::SUCCESS)
}

/// The mount containing `path` and the path relative to it.
fn break_target(path: &Path) -> anyhow::Result<(Target, String)> {
    let mounts = mountinfo::lockfs_mounts().context("cannot read /proc/self/mountinfo")?;
    let absolute = lexically_absolute(path);
    let found = mount_and_relative(&mounts, &absolute).or_else(|| {
        // A symlink on the way (e.g. a home directory elsewhere): the kernel lists real paths.
        let parent = absolute.parent()?;
        let real = std::fs::canonicalize(parent)
            .ok()?
            .join(absolute.file_name()?);
        mount_and_relative(&mounts, &real)
    });
    let Some((mount, relative)) = found else {
        bail!(
            "{} is not inside a lockfs mount (see `lockfs status` for the mounts)",
            absolute.display()
        );
    };
    if relative.is_empty() {
        bail!(
            "{} is the mount itself; name a file inside it, e.g. {}/FILE",
            mount.mount_point.display(),
            mount.mount_point.display()
        );
    }
    let target = Target {
        sockets: socket_candidates_for(&mount.mount_point),
        mount: mount.mount_point.clone(),
    };
    Ok((target, relative))
}

fn mount_and_relative<'a>(
    mounts: &'a [LockfsMount],
    path: &Path,
) -> Option<(&'a LockfsMount, String)> {
    let mount = mountinfo::mount_containing(mounts, path)?;
    let relative = path.strip_prefix(&mount.mount_point).ok()?;
    Some((mount, relative.to_string_lossy().into_owned()))
}
