//! Talking to a daemon's control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use super::protocol::{Request, Response};
use super::report::StatusReport;

const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no answer from the daemon, or was refused by it.
#[derive(Debug)]
pub enum ClientError {
    /// Nobody listens (no socket file, or connection refused): the daemon is gone.
    NoDaemon(io::Error),
    /// The daemon did not answer properly in time.
    Io(io::Error),
    /// The daemon answered with an error.
    Refused(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NoDaemon(err) => write!(f, "no daemon listens ({err})"),
            ClientError::Io(err) => write!(f, "the daemon did not answer ({err})"),
            ClientError::Refused(error) => write!(f, "{error}"),
        }
    }
}

impl std::error::Error for ClientError {}

pub fn request(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|err| match err.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => ClientError::NoDaemon(err),
        _ => ClientError::Io(err),
    })?;
    let io_err = ClientError::Io;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_string(request).map_err(|err| io_err(io::Error::other(err)))?;
    line.push('\n');
    // The server may refuse before reading; its answer then still waits to be read.
    let _ = (&stream).write_all(line.as_bytes());
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .map_err(io_err)?;
    if answer.is_empty() {
        return Err(io_err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without an answer",
        )));
    }
    let response: Response = serde_json::from_str(&answer)
        .map_err(|err| io_err(io::Error::new(io::ErrorKind::InvalidData, err)))?;
    match response {
        Response::Error { error, .. } => Err(ClientError::Refused(error)),
        other => Ok(other),
    }
}

pub fn status(socket: &Path) -> Result<StatusReport, ClientError> {
    match request(socket, &Request::Status)? {
        Response::Status { status, .. } => Ok(*status),
        other => Err(unexpected(other)),
    }
}

/// Asks the daemon to revoke the lease on `path` (relative to its mount); returns its
/// account of what it did.
pub fn break_lease(socket: &Path, path: &str) -> Result<String, ClientError> {
    let request = Request::Break {
        path: path.to_string(),
    };
    match super::client::request(socket, &request)? {
        Response::Message { message, .. } => Ok(message),
        other => Err(unexpected(other)),
    }
}

fn unexpected(response: Response) -> ClientError {
    ClientError::Io(io::Error::new(
        io::ErrorKind::InvalidData,
        format!("unexpected answer: {response:?}"),
    ))
}
