//! `lockfs run`: start a command whose Node processes take leases through the daemon.
//!
//! The shim is a CommonJS preload (`NODE_OPTIONS=--require <shim>`), so every Node process
//! the command starts (children and worker threads inherit NODE_OPTIONS) patches `fs`
//! before user code runs. The shim text is built into the binary and written to a cache
//! directory, so an installed binary needs no file beside it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Context;

use super::RunArgs;
use super::endpoint::default_endpoint;

/// The Node preload shim, as shipped in packaging/node/lockfs-shim.js.
pub const SHIM_SOURCE: &str = include_str!("../../packaging/node/lockfs-shim.js");

pub fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let root = match args
        .root
        .or_else(|| std::env::var_os("LOCKFS_ROOT").map(PathBuf::from))
    {
        Some(root) => root,
        None => anyhow::bail!("name the state directory with --root DIR or LOCKFS_ROOT"),
    };
    let root = root
        .canonicalize()
        .with_context(|| format!("root {}", root.display()))?;
    let endpoint = match args.socket {
        Some(socket) => socket,
        None => default_endpoint(&root)?,
    };
    if std::os::unix::net::UnixStream::connect(&endpoint).is_err() {
        eprintln!(
            "lockfs: no daemon answers on {} (start `lockfs serve --root {}`); running without leases",
            endpoint.display(),
            root.display()
        );
    }
    let shim = shim_path()?;
    let (program, rest) = args
        .command
        .split_first()
        .context("name a command to run after --")?;
    let status = Command::new(program)
        .args(rest)
        .env("NODE_OPTIONS", node_options(&shim))
        .env("LOCKFS_ENDPOINT", &endpoint)
        .env("LOCKFS_ROOT", &root)
        .env("FS_SAFE_NATIVE_MODE", "off")
        .status()
        .with_context(|| format!("start {}", program.to_string_lossy()))?;
    Ok(exit_code(status))
}

/// NODE_OPTIONS with the shim preloaded, after whatever the caller had set.
fn node_options(shim: &Path) -> OsString {
    let mut options = std::env::var_os("NODE_OPTIONS").unwrap_or_default();
    if !options.is_empty() {
        options.push(" ");
    }
    let quoted = shim
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    options.push(format!("--require \"{quoted}\""));
    options
}

/// Where the shim is: LOCKFS_SHIM, beside the installed binary, in the source tree this
/// binary was built from, or else the built-in copy written to a cache directory.
pub fn shim_path() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("LOCKFS_SHIM") {
        return Ok(PathBuf::from(path));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        candidates.push(dir.join("lockfs-shim.js"));
        candidates.push(dir.join("../share/lockfs/lockfs-shim.js"));
    }
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/node/lockfs-shim.js"));
    if let Some(found) = candidates
        .into_iter()
        .find(|path| std::fs::read_to_string(path).is_ok_and(|text| text == SHIM_SOURCE))
    {
        return Ok(found);
    }
    write_cached_shim()
}

fn write_cached_shim() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("lockfs");
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join(format!("lockfs-shim-{}.js", env!("CARGO_PKG_VERSION")));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(SHIM_SOURCE) {
        let temp = dir.join(format!(".lockfs-shim.{}.tmp", std::process::id()));
        std::fs::write(&temp, SHIM_SOURCE)?;
        std::fs::rename(&temp, &path)?;
    }
    Ok(path)
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(signal)) => ExitCode::from(128 + signal as u8),
        _ => ExitCode::FAILURE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_options_quote_the_shim_path() {
        let options = node_options(Path::new("/a b/shim.js"));
        assert!(
            options
                .to_string_lossy()
                .ends_with("--require \"/a b/shim.js\"")
        );
    }

    #[test]
    fn the_shim_is_found_or_written() {
        let path = shim_path().unwrap();
        assert_eq!(std::fs::read_to_string(path).unwrap(), SHIM_SOURCE);
    }
}
