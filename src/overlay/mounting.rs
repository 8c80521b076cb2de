//! Finding and removing lockfs mounts, from /proc/self/mountinfo.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// `dir` as an absolute path, resolving symlinks in its parent only: the directory itself
/// may be a dead mount that cannot be stat'ed.
pub fn absolute_mount_path(dir: &Path) -> anyhow::Result<PathBuf> {
    let dir = std::path::absolute(dir).with_context(|| format!("resolve {}", dir.display()))?;
    match (dir.parent(), dir.file_name()) {
        (Some(parent), Some(name)) => Ok(std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(dir.clone())),
        _ => Ok(dir),
    }
}

/// Whether `dir` is the mount point of a lockfs mount (fstype fuse.lockfs).
pub fn is_lockfs_mount(dir: &Path) -> bool {
    let info = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    info.split(|&b| b == b'\n').any(|line| {
        let line = String::from_utf8_lossy(line);
        let mut halves = line.splitn(2, " - ");
        let (Some(left), Some(right)) = (halves.next(), halves.next()) else {
            return false;
        };
        let mount_point = left.split(' ').nth(4).map(unescape);
        let mut fields = right.split(' ');
        let (fstype, source) = (fields.next(), fields.next());
        // fuse.lockfs from our own mount(2) or fusermount3; plain fuse named lockfs from
        // fuser's direct mount.
        let ours =
            fstype == Some("fuse.lockfs") || (fstype == Some("fuse") && source == Some("lockfs"));
        ours && mount_point.as_deref() == Some(dir)
    })
}

fn unescape(text: &str) -> PathBuf {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 4 <= bytes.len()
            && let Ok(code) = u8::from_str_radix(&text[i + 1..i + 4], 8)
        {
            out.push(code);
            i += 4;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    PathBuf::from(OsString::from_vec(out))
}

/// umount2(dir), detached (MNT_DETACH) when `lazy`; falls back to fusermount3 for users.
pub fn unmount(dir: &Path, lazy: bool) -> io::Result<()> {
    let cdir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    if unsafe { libc::umount2(cdir.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EPERM) {
        return Err(err);
    }
    let mut helper = std::process::Command::new("fusermount3");
    helper.arg(if lazy { "-uz" } else { "-u" }).arg(dir);
    match helper.status() {
        Ok(status) if status.success() => Ok(()),
        _ => Err(err),
    }
}

/// Mounts a FUSE filesystem of type fuse.lockfs over `dir` (root only) and returns the
/// /dev/fuse fd that serves it.
pub fn mount_fuse(dir: &Path, allow_other: bool) -> io::Result<OwnedFd> {
    let dev = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(dir)?.mode() & libc::S_IFMT;
    let mut options = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        root_mode,
        unsafe { libc::geteuid() },
        unsafe { libc::getegid() },
    );
    if allow_other {
        options.push_str(",allow_other");
    }
    let cdir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let coptions = CString::new(options).expect("no NUL");
    let ret = unsafe {
        libc::mount(
            c"lockfs".as_ptr(),
            cdir.as_ptr(),
            c"fuse.lockfs".as_ptr(),
            inherited_flags(dir),
            coptions.as_ptr().cast(),
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dev))
}

/// nosuid/nodev as on the file system below, so that the mount changes nothing there.
fn inherited_flags(dir: &Path) -> libc::c_ulong {
    let Ok(cdir) = CString::new(dir.as_os_str().as_bytes()) else {
        return libc::MS_NOSUID | libc::MS_NODEV;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(cdir.as_ptr(), &mut st) } != 0 {
        return libc::MS_NOSUID | libc::MS_NODEV;
    }
    let mut flags = 0;
    if st.f_flag & libc::ST_NOSUID != 0 {
        flags |= libc::MS_NOSUID;
    }
    if st.f_flag & libc::ST_NODEV != 0 {
        flags |= libc::MS_NODEV;
    }
    flags
}
