//! Per-thread file-system credentials, so that files a root daemon creates belong to the
//! caller as they would on the disk below.

use super::Caller;

/// Switches this thread's fsuid/fsgid to the caller's until dropped.
///
/// setfsuid/setfsgid act on the calling thread only (raw syscalls; glibc's wrappers would
/// be the same here, but the point is that no process-wide setuid happens). Without root
/// the daemon cannot switch and files are created as the daemon's user, as on any FUSE fs.
pub struct FsCredsGuard {
    switched: bool,
}

impl FsCredsGuard {
    pub fn become_caller(caller: Caller) -> FsCredsGuard {
        if unsafe { libc::geteuid() } != 0 || (caller.uid == 0 && caller.gid == 0) {
            return FsCredsGuard { switched: false };
        }
        unsafe {
            // gid first: once fsuid is not 0, changing fsgid is no longer allowed.
            libc::syscall(libc::SYS_setfsgid, caller.gid as libc::c_long);
            libc::syscall(libc::SYS_setfsuid, caller.uid as libc::c_long);
        }
        FsCredsGuard { switched: true }
    }
}

impl Drop for FsCredsGuard {
    fn drop(&mut self) {
        if self.switched {
            unsafe {
                libc::syscall(libc::SYS_setfsuid, 0 as libc::c_long);
                libc::syscall(libc::SYS_setfsgid, 0 as libc::c_long);
            }
        }
    }
}
