//! The control socket server: one thread accepting, one short-lived thread per connection.

use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{MAX_REQUEST_BYTES, Request, Response};
use super::report::StatusReport;

/// What the daemon answers on its control socket.
pub trait ControlHandler: Send + Sync {
    fn status(&self) -> StatusReport;
    /// Revokes the lease on `path` (relative to the mount). `Ok` carries what was done
    /// ("revoked lease on X held by pid N (cmd)" or "no lease on X"), `Err` why not.
    fn break_lease(&self, path: &Path) -> Result<String, String>;
}

pub struct Server;

/// Stops the server and removes its socket when dropped.
pub struct ServerHandle {
    path: PathBuf,
    socket_inode: (u64, u64),
    listener: Arc<UnixListener>,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

impl Server {
    /// Listens on `path` (its directory is created 0700, the socket is 0600) and answers
    /// peers of the same uid, or root, on a thread of its own.
    pub fn start(path: &Path, handler: Arc<dyn ControlHandler>) -> io::Result<ServerHandle> {
        let dir = path.parent().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "socket path has no directory")
        })?;
        prepare_private_dir(dir)?;
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)?;
        // The directory is 0700, so nobody else can reach the socket before this chmod.
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        let meta = fs::symlink_metadata(path)?;
        let listener = Arc::new(listener);
        let stopping = Arc::new(AtomicBool::new(false));
        let accept_thread = {
            let listener = Arc::clone(&listener);
            let stopping = Arc::clone(&stopping);
            std::thread::Builder::new()
                .name("lockfs-control".into())
                .spawn(move || accept_loop(&listener, &stopping, handler))?
        };
        Ok(ServerHandle {
            path: path.to_path_buf(),
            socket_inode: (meta.dev(), meta.ino()),
            listener,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }
}

impl ServerHandle {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Linux wakes a thread blocked in accept() when its socket is shut down.
        // SAFETY: the fd belongs to `listener`, which outlives this call.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        // Only remove the socket if it is still ours, not one a newer daemon bound.
        if let Ok(meta) = fs::symlink_metadata(&self.path)
            && (meta.dev(), meta.ino()) == self.socket_inode
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn prepare_private_dir(dir: &Path) -> io::Result<()> {
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::metadata(dir)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {}, not to this user (uid {euid}); remove it or set XDG_RUNTIME_DIR",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// A socket file left by a daemon that died is removed; a live one is an error.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    if daemon_answers(path) {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another lockfs daemon answers on {}", path.display()),
        ));
    }
    fs::remove_file(path)
}

/// Whether a daemon really answers on `path`. A bare connect is not enough: a listening
/// socket inherited for a moment by a forked child (between fork and exec) accepts
/// connections that nobody will ever answer.
fn daemon_answers(path: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(path) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"{\"op\":\"status\"}\n").is_err() {
        return false;
    }
    let mut first = [0u8; 1];
    matches!(stream.read(&mut first), Ok(1))
}

fn accept_loop(listener: &UnixListener, stopping: &AtomicBool, handler: Arc<dyn ControlHandler>) {
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(error = %err, "control socket accept failed");
                // Avoid a busy loop on a persistent error such as EMFILE.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        let spawned = std::thread::Builder::new()
            .name("lockfs-control-conn".into())
            .spawn(move || {
                if let Err(err) = serve_connection(stream, handler.as_ref()) {
                    tracing::debug!(error = %err, "control connection ended with an error");
                }
            });
        if let Err(err) = spawned {
            tracing::warn!(error = %err, "cannot start a control connection thread");
        }
    }
}

fn serve_connection(stream: UnixStream, handler: &dyn ControlHandler) -> io::Result<()> {
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let peer_uid = peer_uid(&stream)?;
    // SAFETY: geteuid cannot fail and touches no memory.
    let own_uid = unsafe { libc::geteuid() };
    let response = if peer_uid != own_uid && peer_uid != 0 {
        tracing::warn!(peer_uid, "refused a control connection from another user");
        Response::error(format!(
            "permission denied: uid {peer_uid} may not control a mount of uid {own_uid}"
        ))
    } else {
        let mut line = String::new();
        BufReader::new((&stream).take(MAX_REQUEST_BYTES)).read_line(&mut line)?;
        answer(&line, handler)
    };
    let mut text = serde_json::to_string(&response).map_err(io::Error::other)?;
    text.push('\n');
    (&stream).write_all(text.as_bytes())
}

fn answer(line: &str, handler: &dyn ControlHandler) -> Response {
    match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => Response::status(handler.status()),
        Ok(Request::Break { path }) => match handler.break_lease(Path::new(&path)) {
            Ok(message) => Response::message(message),
            Err(error) => Response::error(error),
        },
        Err(err) => Response::error(format!("bad request: {err}")),
    }
}

/// The uid of the process at the other end, from SO_PEERCRED.
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    crate::platform::peer_credentials(stream).map(|peer| peer.uid)
}
