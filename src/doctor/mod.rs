//! `lockfs doctor`: checks this machine for what lockfs needs, one line per check.

mod mounts;

use std::ffi::CStr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde::Serialize;

pub use mounts::{bypassing, dead_mounts, open_paths_under};

use crate::mountinfo::LockfsMount;

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
    /// What to do about it; absent when all is well.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn ok(name: &str, detail: impl Into<String>) -> Check {
        Check {
            name: name.to_string(),
            level: Level::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    fn problem(
        level: Level,
        name: &str,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            name: name.to_string(),
            level,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Exit 0 when every check is ok, 1 when one failed, 2 when there are only warnings.
pub fn doctor_command(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = run_checks();
    let worst = checks
        .iter()
        .map(|check| check.level)
        .max_by_key(|level| *level as u8);
    if args.json {
        let all_ok = worst.is_none_or(|level| level == Level::Ok);
        let value = serde_json::json!({ "ok": all_ok, "checks": checks });
        crate::control::write_stdout(&(serde_json::to_string_pretty(&value)? + "\n"))?;
    } else {
        let lines: String = checks.iter().map(|check| render(check) + "\n").collect();
        crate::control::write_stdout(&lines)?;
    }
    Ok(match worst {
        Some(Level::Fail) => ExitCode::FAILURE,
        Some(Level::Warn) => ExitCode::from(2),
        _ => ExitCode::SUCCESS,
    })
}

pub fn render(check: &Check) -> String {
    let level = match check.level {
        Level::Ok => "ok  ",
        Level::Warn => "warn",
        Level::Fail => "FAIL",
    };
    match &check.fix {
        Some(fix) => format!("{level} {}: {}. Fix: {fix}", check.name, check.detail),
        None => format!("{level} {}: {}", check.name, check.detail),
    }
}

pub fn run_checks() -> Vec<Check> {
    let euid = unsafe { libc::geteuid() };
    let fusermount = find_in_path("fusermount3");
    let mut checks = vec![
        check_dev_fuse(Path::new("/dev/fuse")),
        check_privileges(euid, fusermount.as_deref()),
        check_fusermount(euid, fusermount.as_deref()),
        check_passthrough(&kernel_release()),
        check_fuse_module(Path::new("/sys/module/fuse")),
    ];
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dead = dead_mounts(&mountinfo, |path| {
        mounts::stat_with_timeout(path, Duration::from_secs(2))
    });
    checks.extend(check_dead_mounts(&mountinfo, &dead));
    checks.extend(check_bypass(&mountinfo, &dead));
    checks
}

fn check_dev_fuse(path: &Path) -> Check {
    const NAME: &str = "/dev/fuse";
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(err) => {
            return Check::problem(
                Level::Fail,
                NAME,
                format!("missing ({err})"),
                "load the module with `modprobe fuse`; in a container start it with \
                 `--device /dev/fuse --cap-add SYS_ADMIN`, or use `lockfs serve` instead",
            );
        }
    };
    if !meta.file_type().is_char_device() {
        return Check::problem(
            Level::Fail,
            NAME,
            "exists but is not a character device",
            "remove it and `modprobe fuse` (it should be char device 10,229)",
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(_) => Check::ok(NAME, "character device, opens read-write"),
        Err(err) => Check::problem(
            Level::Fail,
            NAME,
            format!("cannot be opened ({err})"),
            "run as root, or give this user access (mode 0666 is the default), or in a \
             container pass the device through",
        ),
    }
}

fn check_privileges(euid: u32, fusermount: Option<&Path>) -> Check {
    const NAME: &str = "mount permission";
    if euid == 0 {
        return Check::ok(NAME, "running as root: lockfs mounts directly");
    }
    let setuid = fusermount
        .and_then(|path| std::fs::metadata(path).ok())
        .is_some_and(|meta| meta.permissions().mode() & 0o4000 != 0);
    if setuid {
        Check::ok(
            NAME,
            format!("uid {euid} mounts through setuid fusermount3"),
        )
    } else {
        Check::problem(
            Level::Fail,
            NAME,
            format!("uid {euid} is not root and there is no setuid fusermount3"),
            "install fuse3 (`apt install fuse3`), which ships fusermount3 setuid root, or run as root",
        )
    }
}

fn check_fusermount(euid: u32, fusermount: Option<&Path>) -> Check {
    const NAME: &str = "fusermount3";
    match fusermount {
        Some(path) => Check::ok(NAME, format!("found at {}", path.display())),
        None if euid == 0 => Check::problem(
            Level::Warn,
            NAME,
            "not found: a mount whose daemon dies stays dead until unmounted by hand",
            "`apt install fuse3` to get auto-unmount",
        ),
        None => Check::problem(
            Level::Fail,
            NAME,
            "not found: a user other than root cannot mount without it",
            "`apt install fuse3`",
        ),
    }
}

fn check_passthrough(release: &str) -> Check {
    const NAME: &str = "FUSE passthrough";
    match parse_kernel_version(release) {
        Some(version) if version >= (6, 9) => Check::ok(
            NAME,
            format!("kernel {release} supports it: reads and writes skip the daemon"),
        ),
        Some(_) => Check::problem(
            Level::Warn,
            NAME,
            format!(
                "kernel {release} is older than 6.9: every read and write goes through the daemon"
            ),
            "lockfs still works; upgrade the kernel to 6.9 or later for full speed",
        ),
        None => Check::problem(
            Level::Warn,
            NAME,
            format!("cannot read the kernel version from `{release}`"),
            "lockfs tries passthrough and falls back to plain FUSE if the kernel refuses",
        ),
    }
}

fn check_fuse_module(path: &Path) -> Check {
    const NAME: &str = "fuse module";
    if path.exists() {
        Check::ok(NAME, format!("loaded ({} exists)", path.display()))
    } else {
        Check::problem(
            Level::Warn,
            NAME,
            format!("{} is missing", path.display()),
            "`modprobe fuse` (as root on the host)",
        )
    }
}

fn check_dead_mounts(mountinfo: &str, dead: &[PathBuf]) -> Vec<Check> {
    const NAME: &str = "lockfs mounts";
    if dead.is_empty() {
        let count = crate::mountinfo::parse_mountinfo(mountinfo).len();
        return vec![Check::ok(NAME, format!("none dead ({count} mounted)"))];
    }
    dead.iter()
        .map(|dir| {
            Check::problem(
                Level::Fail,
                NAME,
                format!(
                    "{} is dead: its daemon is gone and every access fails (ENOTCONN, ECONNABORTED)",
                    dir.display()
                ),
                format!(
                    "`lockfs unmount {}` (the files underneath are untouched)",
                    dir.display()
                ),
            )
        })
        .collect()
}

fn check_bypass(mountinfo: &str, dead: &[PathBuf]) -> Vec<Check> {
    const NAME: &str = "bypassing processes";
    let live: Vec<LockfsMount> = crate::mountinfo::parse_mountinfo(mountinfo)
        .into_iter()
        .filter(|mount| !dead.contains(&mount.mount_point))
        .collect();
    let open = mounts::open_paths_under(&live);
    let mut checks = Vec::new();
    for mount in &live {
        for path in bypassing(mount, &open) {
            checks.push(Check::problem(
                Level::Warn,
                NAME,
                format!(
                    "pid {} ({}) has {} {} from before the mount: it bypasses the leases",
                    path.pid,
                    crate::platform::command_line(path.pid),
                    path.what,
                    path.target.display()
                ),
                format!("restart pid {} so it works through the mount", path.pid),
            ));
        }
    }
    if checks.is_empty() {
        checks.push(Check::ok(
            NAME,
            "no process uses a lockfs directory from underneath its mount",
        ));
    }
    checks
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    unsafe {
        let mut name: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut name) != 0 {
            return String::new();
        }
        CStr::from_ptr(name.release.as_ptr())
            .to_string_lossy()
            .into_owned()
    }
}

/// `6.18.44-fc-v782` gives (6, 18).
fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v782"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_version("garbage"), None);
        assert_eq!(check_passthrough("6.9.0").level, Level::Ok);
        assert_eq!(check_passthrough("6.8.12").level, Level::Warn);
    }

    #[test]
    fn missing_device_fails_with_advice() {
        let check = check_dev_fuse(Path::new("/nonexistent/fuse"));
        assert_eq!(check.level, Level::Fail);
        assert!(check.fix.unwrap().contains("modprobe fuse"));
        let check = check_dev_fuse(Path::new("/dev/null"));
        assert_eq!(check.level, Level::Ok, "{check:?}");
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(check_dev_fuse(dir.path()).level, Level::Fail);
    }

    #[test]
    fn non_root_without_fusermount_fails() {
        assert_eq!(check_fusermount(1000, None).level, Level::Fail);
        assert_eq!(check_fusermount(0, None).level, Level::Warn);
        assert_eq!(check_privileges(0, None).level, Level::Ok);
        assert_eq!(check_privileges(1000, None).level, Level::Fail);
    }

    #[test]
    fn dead_mount_line_names_the_unmount_command() {
        let info = "90 22 0:60 / /no/such/lockfs/dir rw - fuse.lockfs lockfs rw,user_id=0\n";
        let dead = dead_mounts(info, |_| {
            Err(std::io::Error::from_raw_os_error(libc::ENOTCONN))
        });
        assert_eq!(dead, vec![PathBuf::from("/no/such/lockfs/dir")]);
        let checks = check_dead_mounts(info, &dead);
        assert_eq!(checks[0].level, Level::Fail);
        assert!(
            checks[0]
                .fix
                .as_deref()
                .unwrap()
                .contains("`lockfs unmount /no/such/lockfs/dir`")
        );
        assert_eq!(check_dead_mounts(info, &[])[0].level, Level::Ok);
    }
}
