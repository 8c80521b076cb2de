//! The wire format: one JSON request line, one JSON response line, then the server closes.

use serde::{Deserialize, Serialize};

use super::report::StatusReport;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    /// Revoke the lease on `path`, relative to the mount directory.
    Break {
        path: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Response {
    Status { ok: bool, status: Box<StatusReport> },
    Message { ok: bool, message: String },
    Error { ok: bool, error: String },
}

impl Response {
    pub fn status(report: StatusReport) -> Response {
        Response::Status {
            ok: true,
            status: Box::new(report),
        }
    }

    pub fn message(message: String) -> Response {
        Response::Message { ok: true, message }
    }

    pub fn error(error: String) -> Response {
        Response::Error { ok: false, error }
    }
}

/// Longest request line the server reads; anything longer is refused.
pub const MAX_REQUEST_BYTES: u64 = 64 * 1024;
