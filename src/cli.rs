//! The command line: parses the arguments and runs the command.

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// lockfs keeps programs that share a state directory from losing each other's updates.
///
/// It mounts a FUSE filesystem over the directory itself. Every process that reads a file
/// and then saves it (in place, or through a temp file and a rename) holds a lease on that
/// file for the whole cycle; other processes wait their turn in arrival order.
#[derive(Parser)]
#[command(name = "lockfs", version, propagate_version = true)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace). RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format: text for people, json for log shippers.
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: crate::options::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Mount lockfs over DIR (on the same path); returns once the mount is ready.
    Mount(crate::overlay::MountArgs),
    /// Unmount a lockfs mount, also one whose daemon died.
    #[command(alias = "umount")]
    Unmount(crate::overlay::UnmountArgs),
    /// Show which files are leased, by whom, who waits, and the counters.
    Status(crate::control::StatusArgs),
    /// Revoke the lease on a file by hand; the holder's late commit is then refused.
    Break(crate::control::BreakArgs),
    /// Check this machine for what lockfs needs and explain what is wrong.
    Doctor(crate::doctor::DoctorArgs),
    /// Run the lease engine as a local daemon for programs that cannot use a mount.
    Serve(crate::proxy::ServeArgs),
    /// Run a command whose Node file access goes through a `lockfs serve` daemon.
    Run(crate::proxy::RunArgs),
    /// Show what lockfs does: racing writers on a temp dir, without and with the mount.
    Demo(crate::demo::DemoArgs),
    /// Print a shell completion script (for packaging).
    #[command(hide = true)]
    Completions { shell: clap_complete::Shell },
    /// Print the lockfs(1) man page, or write a page per command into DIR (for packaging).
    #[command(hide = true)]
    Man { dir: Option<std::path::PathBuf> },
}

/// Runs the `lockfs` command line; the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::options::init_tracing(cli.verbose, cli.log_format);
    let result = match cli.command {
        Command::Mount(args) => crate::overlay::mount_command(args),
        Command::Unmount(args) => crate::overlay::unmount_command(args),
        Command::Status(args) => crate::control::status_command(args),
        Command::Break(args) => crate::control::break_command(args),
        Command::Doctor(args) => crate::doctor::doctor_command(args),
        Command::Serve(args) => crate::proxy::serve_command(args),
        Command::Run(args) => crate::proxy::run_command(args),
        Command::Demo(args) => crate::demo::demo_command(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lockfs", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => write_man(dir),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("lockfs: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn write_man(dir: Option<std::path::PathBuf>) -> anyhow::Result<ExitCode> {
    match dir {
        Some(dir) => clap_mangen::generate_to(Cli::command(), dir)?,
        None => clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?,
    }
    Ok(ExitCode::SUCCESS)
}
