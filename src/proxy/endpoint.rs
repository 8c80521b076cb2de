//! Where a daemon listens for a root, and who is on the other end of a connection.
//!
//! Linux and other Unixes: a Unix socket, mode 0600, in a per-user runtime directory; the
//! peer is named from SO_PEERCRED (never from what it claims). Windows: a named pipe whose
//! client pid comes from GetNamedPipeClientProcessId (see the `windows` module; it cannot
//! be compiled on the machines this was written on).

use std::io;
use std::path::{Path, PathBuf};

use crate::runtime_dir::{runtime_dir, socket_name};

/// The endpoint a daemon serving `root` listens on, and clients look for by default.
///
/// The name is derived from the canonical root (so `./state` and `/abs/state` agree):
/// `$XDG_RUNTIME_DIR/lockfs/<dirname>-<hash>.sock`, or `/run/lockfs/...` for root without
/// XDG_RUNTIME_DIR, or `<tmp>/lockfs-<uid>/...` for other users without it.
pub fn default_endpoint(root: &Path) -> io::Result<PathBuf> {
    let canonical = root.canonicalize()?;
    Ok(runtime_dir().join(socket_name(&canonical)))
}

#[cfg(unix)]
pub use self::unix::*;

#[cfg(unix)]
mod unix {
    use std::io;
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::Path;

    use tokio::net::{UnixListener, UnixStream};

    /// Who connected: the kernel's word from SO_PEERCRED.
    pub use crate::platform::PeerCredentials;

    /// Binds `endpoint` with mode 0600, creating its directory 0700. A stale socket left by
    /// a dead daemon is replaced; a live one is an error.
    pub fn bind(endpoint: &Path) -> io::Result<UnixListener> {
        if let Some(dir) = endpoint.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        if endpoint.exists() {
            if std::os::unix::net::UnixStream::connect(endpoint).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("a daemon already listens on {}", endpoint.display()),
                ));
            }
            std::fs::remove_file(endpoint)?;
        }
        // Bind under a tight umask so the socket is never briefly open to others.
        // SAFETY: umask only swaps the process mask.
        let old_mask = unsafe { libc::umask(0o177) };
        let listener = UnixListener::bind(endpoint);
        // SAFETY: as above.
        unsafe { libc::umask(old_mask) };
        let listener = listener?;
        std::fs::set_permissions(endpoint, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    }

    pub fn peer_credentials(stream: &UnixStream) -> io::Result<PeerCredentials> {
        let peer = crate::platform::peer_credentials(stream)?;
        if peer.pid == 0 {
            return Err(io::Error::other(
                "peer pid unknown (another pid namespace?)",
            ));
        }
        Ok(peer)
    }

    pub fn current_uid() -> u32 {
        // SAFETY: getuid cannot fail.
        unsafe { libc::getuid() }
    }
}

/// Windows: a named pipe per user and root, with a DACL for the current user only, and the
/// client's pid from GetNamedPipeClientProcessId. Not compiled here (no Windows target on
/// the build machines); kept to the few calls the daemon needs.
#[cfg(windows)]
pub mod windows {
    use std::io;
    use std::os::windows::io::AsRawHandle;

    use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

    unsafe extern "system" {
        fn GetNamedPipeClientProcessId(pipe: *mut std::ffi::c_void, pid: *mut u32) -> i32;
    }

    /// Creates the next pipe instance; `first` rejects a second daemon on the same name.
    /// The default DACL of a pipe grants the creator's user (and SYSTEM, administrators);
    /// `reject_remote_clients` keeps it local.
    pub fn create_instance(name: &str, first: bool) -> io::Result<NamedPipeServer> {
        ServerOptions::new()
            .first_pipe_instance(first)
            .reject_remote_clients(true)
            .create(name)
    }

    pub fn client_pid(pipe: &NamedPipeServer) -> io::Result<u32> {
        let mut pid = 0u32;
        // SAFETY: the handle is a valid pipe handle owned by `pipe`.
        let ok = unsafe { GetNamedPipeClientProcessId(pipe.as_raw_handle().cast(), &mut pid) };
        if ok == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_endpoint_follows_the_canonical_root() {
        let dir = tempfile::tempdir().unwrap();
        let direct = default_endpoint(dir.path()).unwrap();
        let dotted = default_endpoint(&dir.path().join(".")).unwrap();
        assert_eq!(direct, dotted);
    }
}
