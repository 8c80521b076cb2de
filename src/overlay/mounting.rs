//! Mounting and unmounting: mount(2) of /dev/fuse (or fusermount3), and umount2.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
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
