//! The wire protocol between `lockfs serve` and its clients: one JSON object per line.
//!
//! docs/PROTOCOL.md is the reference; this module is its single definition in code.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A client must say it in `hello` first.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest request line the daemon reads; longer lines are refused and the connection closed.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What a client may ask for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Hello {
        id: u64,
        version: u32,
    },
    /// Starts a cycle (`read`, `write`) or an append on `path`; answered when granted.
    Acquire {
        id: u64,
        path: String,
        intent: WireIntent,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Asks whether `lease` still holds; never extends the maximum hold.
    Renew {
        id: u64,
        lease: u64,
    },
    /// Saves `path`: the daemon renames `temp` onto it (or, without `temp`, records that
    /// the client wrote the file in place or appended), ending the cycle.
    Commit {
        id: u64,
        path: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        temp: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Ends one use of `lease` without a write; a read cycle then lingers briefly.
    Release {
        id: u64,
        lease: u64,
    },
}

impl Request {
    pub fn id(&self) -> u64 {
        match self {
            Request::Hello { id, .. }
            | Request::Acquire { id, .. }
            | Request::Renew { id, .. }
            | Request::Commit { id, .. }
            | Request::Release { id, .. } => *id,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireIntent {
    Read,
    Write,
    Append,
}

/// Why a request failed; the string form is part of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a request this version knows.
    BadRequest,
    /// `hello` named a version this daemon does not speak, or was missing.
    UnsupportedVersion,
    /// The path is absolute, has `..`, or resolves outside the root.
    PathEscape,
    NotFound,
    UnknownLease,
    /// The file moved on since this cycle's view of it; the temp file was removed.
    Fenced,
    /// The wait limit passed before the lease was granted.
    Timeout,
    /// The rename or another file operation failed; `message` has the OS error.
    Io,
}

/// What the daemon sends: a reply to the request with the same `id`, or an event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerMessage {
    Reply(Reply),
    Event(Event),
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The request's id; 0 when the line could not be parsed far enough to find one.
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Hello: the version spoken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Hello: the canonical root the daemon serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Acquire: the lease to name in commit, release and renew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<u64>,
    /// Acquire, commit: the file's generation (commits seen since the daemon started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Renew: whether the lease still holds, and how long it may be held at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_hold_ms: Option<u64>,
}

impl Reply {
    pub fn ok(id: u64) -> Reply {
        Reply {
            id,
            ok: true,
            ..Reply::default()
        }
    }

    pub fn error(id: u64, code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply {
            id,
            ok: false,
            error: Some(code),
            message: Some(message.into()),
            ..Reply::default()
        }
    }
}

/// Pushed by the daemon without a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `revoked`: the lease ended at the maximum hold (or by hand); a later commit in this
    /// cycle is refused if the file moved on.
    pub event: String,
    pub lease: u64,
    pub path: String,
    pub reason: String,
}

/// Parses one request line; the error reply names what was wrong.
pub fn parse_request(line: &str) -> Result<Request, Reply> {
    serde_json::from_str(line).map_err(|err| {
        let id = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|value| value.get("id")?.as_u64())
            .unwrap_or(0);
        Reply::error(id, ErrorCode::BadRequest, err.to_string())
    })
}

/// One message as a line, newline included.
pub fn to_line<T: Serialize>(message: &T) -> String {
    let mut line = serde_json::to_string(message).expect("protocol messages serialize");
    line.push('\n');
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_documented() {
        let line =
            r#"{"op":"acquire","id":7,"path":"a/store.json","intent":"write","wait_ms":500}"#;
        let request = parse_request(line).unwrap();
        assert_eq!(
            request,
            Request::Acquire {
                id: 7,
                path: "a/store.json".into(),
                intent: WireIntent::Write,
                wait_ms: Some(500)
            }
        );
        assert_eq!(parse_request(to_line(&request).trim()).unwrap(), request);
    }

    #[test]
    fn malformed_lines_get_an_error_with_the_id_when_it_can_be_found() {
        let reply = parse_request(r#"{"op":"explode","id":9}"#).unwrap_err();
        assert_eq!((reply.id, reply.error), (9, Some(ErrorCode::BadRequest)));
        let reply = parse_request("not json").unwrap_err();
        assert_eq!(reply.id, 0);
        let reply =
            parse_request(r#"{"op":"acquire","id":3,"path":"x","intent":"eat"}"#).unwrap_err();
        assert_eq!(reply.id, 3);
    }

    #[test]
    fn replies_and_events_are_told_apart() {
        let reply: ServerMessage = serde_json::from_str(r#"{"id":1,"ok":true,"lease":4}"#).unwrap();
        assert!(matches!(
            reply,
            ServerMessage::Reply(Reply { lease: Some(4), .. })
        ));
        let event: ServerMessage =
            serde_json::from_str(r#"{"event":"revoked","lease":4,"path":"s","reason":"max_hold"}"#)
                .unwrap();
        assert!(matches!(event, ServerMessage::Event(_)));
    }
}
