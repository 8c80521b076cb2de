//! Finding lockfs mounts in `/proc/self/mountinfo`: the one parser of it, for `mount`,
//! `unmount`, `status`, `break` and `doctor` alike.

use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The filesystem type a lockfs mount shows: the overlay mounts with subtype `lockfs`.
pub const FSTYPE: &str = "fuse.lockfs";

/// One lockfs mount as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockfsMount {
    pub mount_point: PathBuf,
    /// The device number files on the mount report as `st_dev`.
    pub device: libc::dev_t,
    /// The `user_id=` super option: who mounted it.
    pub user_id: Option<u32>,
}

/// Whether `err`, from an access to a FUSE mount, says its daemon is gone: ENOTCONN once
/// the kernel has aborted the connection, or ECONNABORTED for a request that raced the
/// abort (the kernel answers either right after the daemon dies).
pub fn is_dead_mount_error(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENOTCONN) | Some(libc::ECONNABORTED)
    )
}

/// The lockfs mounts in mountinfo `text` (the format of `/proc/self/mountinfo`).
pub fn parse_mountinfo(text: &str) -> Vec<LockfsMount> {
    text.lines().filter_map(parse_line).collect()
}

/// Whether `dir` (absolute, normal) is the mount point of a lockfs mount.
pub fn is_lockfs_mount(dir: &Path) -> bool {
    lockfs_mounts().is_ok_and(|mounts| mounts.iter().any(|mount| mount.mount_point == dir))
}

/// The lockfs mounts of this machine, as seen from this mount namespace.
pub fn lockfs_mounts() -> std::io::Result<Vec<LockfsMount>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

/// The mounts of the calling user (all of them for root).
pub fn own_lockfs_mounts() -> std::io::Result<Vec<LockfsMount>> {
    // SAFETY: getuid cannot fail and touches no memory.
    let uid = unsafe { libc::getuid() };
    Ok(lockfs_mounts()?
        .into_iter()
        .filter(|mount| uid == 0 || mount.user_id.is_none_or(|owner| owner == uid))
        .collect())
}

/// The innermost mount among `mounts` whose mount point contains `path` (absolute, normal).
pub fn mount_containing<'a>(mounts: &'a [LockfsMount], path: &Path) -> Option<&'a LockfsMount> {
    mounts
        .iter()
        .filter(|mount| path.starts_with(&mount.mount_point))
        .max_by_key(|mount| mount.mount_point.components().count())
}

fn parse_line(line: &str) -> Option<LockfsMount> {
    // id parent major:minor root mount_point options [optional...] - fstype source superopts
    let (before, after) = line.split_once(" - ")?;
    let mut fields = before.split(' ');
    let device = fields.nth(2)?;
    let mount_point = fields.nth(1)?;
    let mut after = after.split(' ');
    let fstype = after.next()?;
    let source = after.next().unwrap_or("");
    let super_options = after.next().unwrap_or("");
    let is_lockfs = fstype == FSTYPE || (fstype.starts_with("fuse") && source == "lockfs");
    if !is_lockfs {
        return None;
    }
    let (major, minor) = device.split_once(':')?;
    let user_id = super_options
        .split(',')
        .find_map(|option| option.strip_prefix("user_id="))
        .and_then(|uid| uid.parse().ok());
    Some(LockfsMount {
        mount_point: unescape_octal(mount_point),
        device: libc::makedev(major.parse().ok()?, minor.parse().ok()?),
        user_id,
    })
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`; other bytes, UTF-8 or
/// not, stand as they are.
fn unescape_octal(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)));
        match escaped {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
pub(crate) const SAMPLE_MOUNTINFO: &str = "\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
81 22 0:52 / /home/ann/.openclaw rw,nosuid,nodev,relatime shared:40 - fuse.lockfs lockfs rw,user_id=1000,group_id=1000
82 22 0:53 / /tmp/with\\040space rw,relatime - fuse.lockfs lockfs rw,user_id=0,group_id=0
83 81 0:54 / /home/ann/.openclaw/inner rw,relatime - fuse lockfs rw,user_id=1000,group_id=1000
84 22 0:55 / /mnt/other rw,relatime - fuse.sshfs host:/ rw,user_id=1000,group_id=1000
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lockfs_mounts_only() {
        let mounts = parse_mountinfo(SAMPLE_MOUNTINFO);
        let points: Vec<_> = mounts.iter().map(|m| m.mount_point.clone()).collect();
        assert_eq!(
            points,
            vec![
                PathBuf::from("/home/ann/.openclaw"),
                PathBuf::from("/tmp/with space"),
                PathBuf::from("/home/ann/.openclaw/inner"),
            ]
        );
        assert_eq!(mounts[0].user_id, Some(1000));
        assert_eq!(mounts[0].device, libc::makedev(0, 52));
    }

    #[test]
    fn enotconn_and_econnaborted_mean_a_dead_mount() {
        use std::io::{Error, ErrorKind};
        assert!(is_dead_mount_error(&Error::from_raw_os_error(
            libc::ENOTCONN
        )));
        assert!(is_dead_mount_error(&Error::from_raw_os_error(
            libc::ECONNABORTED
        )));
        for errno in [libc::ENOENT, libc::EACCES, libc::EIO, libc::ECONNREFUSED] {
            assert!(!is_dead_mount_error(&Error::from_raw_os_error(errno)));
        }
        assert!(!is_dead_mount_error(&Error::new(
            ErrorKind::TimedOut,
            "no answer from the mount"
        )));
    }

    #[test]
    fn innermost_mount_wins() {
        let mounts = parse_mountinfo(SAMPLE_MOUNTINFO);
        let inner = mount_containing(&mounts, Path::new("/home/ann/.openclaw/inner/a.json"));
        assert_eq!(
            inner.unwrap().mount_point,
            Path::new("/home/ann/.openclaw/inner")
        );
        let outer = mount_containing(&mounts, Path::new("/home/ann/.openclaw/innerx"));
        assert_eq!(outer.unwrap().mount_point, Path::new("/home/ann/.openclaw"));
        assert!(mount_containing(&mounts, Path::new("/home/ann")).is_none());
    }
}
