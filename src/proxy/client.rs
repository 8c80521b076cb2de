//! The Rust client of `lockfs serve`: whole load-modify-save cycles under a lease.
//!
//! One [`Client`] is one connection, and answers one request at a time; give each thread
//! (or task, with [`AsyncClient`]) that updates files concurrently its own client. Leases
//! belong to the connection: dropping the client, or the process dying, frees them.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

use super::endpoint::default_endpoint;
use super::protocol::{
    ErrorCode, PROTOCOL_VERSION, Reply, Request, ServerMessage, WireIntent, to_line,
};

/// What went wrong: the connection, or the daemon's refusal (with its protocol code).
#[derive(Debug)]
pub enum Error {
    Io(io::Error),
    Refused { code: ErrorCode, message: String },
}

impl Error {
    /// True when a commit was refused because the file moved on during the cycle: the
    /// update was not applied and may be retried from a fresh read.
    pub fn is_fenced(&self) -> bool {
        matches!(
            self,
            Error::Refused {
                code: ErrorCode::Fenced,
                ..
            }
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io(err) => write!(f, "lockfs daemon: {err}"),
            Error::Refused { code, message } => {
                write!(f, "lockfs daemon refused ({code:?}): {message}")
            }
        }
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(err: io::Error) -> Self {
        Error::Io(err)
    }
}

impl From<Error> for io::Error {
    fn from(err: Error) -> Self {
        match err {
            Error::Io(err) => err,
            Error::Refused { code, .. } => {
                let kind = match code {
                    ErrorCode::Timeout => io::ErrorKind::TimedOut,
                    ErrorCode::NotFound => io::ErrorKind::NotFound,
                    ErrorCode::PathEscape => io::ErrorKind::PermissionDenied,
                    _ => io::ErrorKind::Other,
                };
                io::Error::new(kind, err.to_string())
            }
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

fn check(reply: Reply) -> Result<Reply> {
    if reply.ok {
        return Ok(reply);
    }
    Err(Error::Refused {
        code: reply.error.unwrap_or(ErrorCode::Io),
        message: reply.message.unwrap_or_default(),
    })
}

/// A path relative to the root, as the wire wants it. Absolute paths under `root` are
/// accepted and made relative; the daemon refuses anything else that escapes.
fn wire_path(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .filter(|part| !matches!(part, Component::CurDir))
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to a fresh temp file next to `target` and returns its wire path.
fn write_temp(root: &Path, target: &str, bytes: &[u8]) -> io::Result<String> {
    let (dir, name) = target.rsplit_once('/').unwrap_or(("", target));
    let temp_name = format!(
        ".{name}.lockfs-{}-{}.tmp",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let temp = if dir.is_empty() {
        temp_name
    } else {
        format!("{dir}/{temp_name}")
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(root.join(&temp))?;
    file.write_all(bytes)?;
    file.sync_data()?;
    Ok(temp)
}

fn read_current(root: &Path, target: &str) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(root.join(target)) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

struct Connection {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Connection {
    fn call(&mut self, make: impl FnOnce(u64) -> Request) -> Result<Reply> {
        self.next_id += 1;
        let id = self.next_id;
        self.writer.write_all(to_line(&make(id)).as_bytes())?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "daemon hung up").into());
            }
            match serde_json::from_str::<ServerMessage>(&line) {
                Ok(ServerMessage::Reply(reply)) if reply.id == id => return check(reply),
                // Events (revocations) surface at the commit, which the daemon then fences.
                Ok(_) => continue,
                Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err).into()),
            }
        }
    }
}

/// A blocking connection to the daemon serving a root.
///
/// ```no_run
/// let client = lockfs::Client::connect("/home/me/.openclaw")?;
/// client.update("openclaw.json", |old| {
///     let mut text = String::from_utf8(old.unwrap_or_default()).unwrap_or_default();
///     text.push_str("\n");
///     Ok(text.into_bytes())
/// })?;
/// # Ok::<(), lockfs::proxy::Error>(())
/// ```
pub struct Client {
    connection: Mutex<Connection>,
    root: PathBuf,
}

impl Client {
    /// Connects to the daemon at the default endpoint for `root`.
    pub fn connect(root: impl AsRef<Path>) -> Result<Client> {
        Client::connect_to(default_endpoint(root.as_ref())?)
    }

    /// Connects to the daemon listening on `endpoint`.
    pub fn connect_to(endpoint: impl AsRef<Path>) -> Result<Client> {
        let writer = UnixStream::connect(endpoint.as_ref())?;
        let reader = BufReader::new(writer.try_clone()?);
        let mut connection = Connection {
            reader,
            writer,
            next_id: 0,
        };
        let hello = connection.call(|id| Request::Hello {
            id,
            version: PROTOCOL_VERSION,
        })?;
        let root = PathBuf::from(hello.root.unwrap_or_default());
        Ok(Client {
            connection: Mutex::new(connection),
            root,
        })
    }

    /// The root the daemon serves (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// One whole cycle on `path`: waits for the lease, reads the file (None when it does not
    /// exist), writes what `change` returns through a temp file, and lets the daemon rename
    /// it over the file. An error from `change` releases the lease and writes nothing.
    ///
    /// ```no_run
    /// let client = lockfs::Client::connect("/srv/state")?;
    /// client.update("counter", |old| {
    ///     let n: u64 = old.and_then(|b| String::from_utf8(b).ok()?.trim().parse().ok()).unwrap_or(0);
    ///     Ok((n + 1).to_string().into_bytes())
    /// })?;
    /// # Ok::<(), lockfs::proxy::Error>(())
    /// ```
    pub fn update(
        &self,
        path: impl AsRef<Path>,
        change: impl FnOnce(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
    ) -> Result<()> {
        let guard = self.lock(path)?;
        let old = guard.read()?;
        let new = change(old)?;
        guard.commit(&new)
    }

    /// Takes the lease on `path` for a cycle of your own; it is released when the guard
    /// drops without a commit.
    ///
    /// ```no_run
    /// let client = lockfs::Client::connect("/srv/state")?;
    /// let guard = client.lock("store.json")?;
    /// let mut data = guard.read()?.unwrap_or_default();
    /// data.extend_from_slice(b" more");
    /// guard.commit(&data)?;
    /// # Ok::<(), lockfs::proxy::Error>(())
    /// ```
    pub fn lock(&self, path: impl AsRef<Path>) -> Result<Guard<'_>> {
        let path = wire_path(&self.root, path.as_ref());
        let reply = self.connection.lock().call(|id| Request::Acquire {
            id,
            path: path.clone(),
            intent: WireIntent::Write,
            wait_ms: None,
        })?;
        Ok(Guard {
            client: self,
            path,
            lease: reply.lease.unwrap_or_default(),
            generation: reply.generation.unwrap_or_default(),
            open: true,
        })
    }

    fn release(&self, lease: u64) -> Result<()> {
        self.connection
            .lock()
            .call(|id| Request::Release { id, lease })
            .map(drop)
    }
}

/// A held lease on one file; see [`Client::lock`].
pub struct Guard<'a> {
    client: &'a Client,
    path: String,
    lease: u64,
    generation: u64,
    open: bool,
}

impl Guard<'_> {
    /// The file as it is now (None when it does not exist).
    pub fn read(&self) -> io::Result<Option<Vec<u8>>> {
        read_current(&self.client.root, &self.path)
    }

    /// The file's generation when the lease was granted.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Replaces the file with `bytes` and ends the cycle. A fenced commit (the lease was
    /// revoked and the file moved on) is refused: see [`Error::is_fenced`].
    pub fn commit(mut self, bytes: &[u8]) -> Result<()> {
        self.open = false;
        let temp = write_temp(&self.client.root, &self.path, bytes)?;
        let result = self.client.connection.lock().call(|id| Request::Commit {
            id,
            path: self.path.clone(),
            lease: Some(self.lease),
            temp: Some(temp.clone()),
            wait_ms: None,
        });
        if result.is_err() {
            let _ = std::fs::remove_file(self.client.root.join(&temp));
        }
        result.map(drop)
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if self.open {
            let _ = self.client.release(self.lease);
        }
    }
}

struct AsyncConnection {
    reader: tokio::io::BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
    next_id: u64,
}

impl AsyncConnection {
    async fn call(&mut self, make: impl FnOnce(u64) -> Request) -> Result<Reply> {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        self.next_id += 1;
        let id = self.next_id;
        self.writer.write_all(to_line(&make(id)).as_bytes()).await?;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).await? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "daemon hung up").into());
            }
            match serde_json::from_str::<ServerMessage>(&line) {
                Ok(ServerMessage::Reply(reply)) if reply.id == id => return check(reply),
                Ok(_) => continue,
                Err(err) => return Err(io::Error::new(io::ErrorKind::InvalidData, err).into()),
            }
        }
    }
}

/// The tokio form of [`Client`].
///
/// ```no_run
/// # async fn demo() -> Result<(), lockfs::proxy::Error> {
/// let client = lockfs::AsyncClient::connect("/srv/state").await?;
/// client.update("log.txt", |old| {
///     let mut data = old.unwrap_or_default();
///     data.extend_from_slice(b"one more line\n");
///     Ok(data)
/// }).await?;
/// let guard = client.lock("store.json").await?;
/// let data = guard.read().await?.unwrap_or_default();
/// guard.commit(&data).await?;
/// # Ok(()) }
/// ```
pub struct AsyncClient {
    connection: std::sync::Arc<tokio::sync::Mutex<AsyncConnection>>,
    root: PathBuf,
}

impl AsyncClient {
    pub async fn connect(root: impl AsRef<Path>) -> Result<AsyncClient> {
        AsyncClient::connect_to(default_endpoint(root.as_ref())?).await
    }

    pub async fn connect_to(endpoint: impl AsRef<Path>) -> Result<AsyncClient> {
        let stream = tokio::net::UnixStream::connect(endpoint.as_ref()).await?;
        let (read_half, writer) = stream.into_split();
        let mut connection = AsyncConnection {
            reader: tokio::io::BufReader::new(read_half),
            writer,
            next_id: 0,
        };
        let hello = connection
            .call(|id| Request::Hello {
                id,
                version: PROTOCOL_VERSION,
            })
            .await?;
        Ok(AsyncClient {
            connection: std::sync::Arc::new(tokio::sync::Mutex::new(connection)),
            root: PathBuf::from(hello.root.unwrap_or_default()),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// See [`Client::update`].
    pub async fn update(
        &self,
        path: impl AsRef<Path>,
        change: impl FnOnce(Option<Vec<u8>>) -> io::Result<Vec<u8>>,
    ) -> Result<()> {
        let guard = self.lock(path).await?;
        let old = guard.read().await?;
        let new = change(old)?;
        guard.commit(&new).await
    }

    /// See [`Client::lock`]. Dropping the guard releases the lease from a spawned task.
    pub async fn lock(&self, path: impl AsRef<Path>) -> Result<AsyncGuard> {
        let path = wire_path(&self.root, path.as_ref());
        let reply = self
            .connection
            .lock()
            .await
            .call(|id| Request::Acquire {
                id,
                path: path.clone(),
                intent: WireIntent::Write,
                wait_ms: None,
            })
            .await?;
        Ok(AsyncGuard {
            connection: std::sync::Arc::clone(&self.connection),
            root: self.root.clone(),
            path,
            lease: reply.lease.unwrap_or_default(),
            open: true,
        })
    }
}

/// A held lease from [`AsyncClient::lock`].
pub struct AsyncGuard {
    connection: std::sync::Arc<tokio::sync::Mutex<AsyncConnection>>,
    root: PathBuf,
    path: String,
    lease: u64,
    open: bool,
}

impl AsyncGuard {
    pub async fn read(&self) -> io::Result<Option<Vec<u8>>> {
        match tokio::fs::read(self.root.join(&self.path)).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    pub async fn commit(mut self, bytes: &[u8]) -> Result<()> {
        self.open = false;
        let root = self.root.clone();
        let target = self.path.clone();
        let bytes = bytes.to_vec();
        let temp = tokio::task::spawn_blocking(move || write_temp(&root, &target, &bytes))
            .await
            .map_err(io::Error::other)??;
        let result = self
            .connection
            .lock()
            .await
            .call(|id| Request::Commit {
                id,
                path: self.path.clone(),
                lease: Some(self.lease),
                temp: Some(temp.clone()),
                wait_ms: None,
            })
            .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(self.root.join(&temp)).await;
        }
        result.map(drop)
    }

    pub async fn release(mut self) -> Result<()> {
        self.open = false;
        let lease = self.lease;
        self.connection
            .lock()
            .await
            .call(|id| Request::Release { id, lease })
            .await
            .map(drop)
    }
}

impl Drop for AsyncGuard {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let connection = std::sync::Arc::clone(&self.connection);
        let lease = self.lease;
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = connection
                    .lock()
                    .await
                    .call(|id| Request::Release { id, lease })
                    .await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_paths_are_relative_to_the_root() {
        let root = Path::new("/srv/state");
        assert_eq!(
            wire_path(root, Path::new("/srv/state/a/b.json")),
            "a/b.json"
        );
        assert_eq!(wire_path(root, Path::new("./a/b.json")), "a/b.json");
        assert_eq!(wire_path(root, Path::new("/etc/passwd")), "//etc/passwd");
    }
}
