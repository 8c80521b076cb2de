//! A small blocking client for etcd's v3 API through its JSON gateway (etcd 3.4).
//!
//! The gateway speaks HTTP/1.1 with JSON bodies: keys and values are base64, int64 fields
//! are JSON strings, and fields at their default value (0, false, empty, the first enum
//! value) are left out. Streaming calls (keep-alive, watch) answer with a chunked body of
//! newline-separated `{"result": ...}` objects.
//!
//! Plain HTTP only: the client speaks to members on loopback or a trusted network.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use parking_lot::Mutex;
use serde_json::{Value, json};

/// Idle connections kept for reuse, over all endpoints.
const MAX_IDLE: usize = 16;
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 16 * 1024;
/// A reply larger than this is refused rather than buffered.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// A status line, header or chunk-size line longer than this is malformed.
const MAX_LINE: usize = 64 * 1024;

/// What went wrong talking to etcd.
#[derive(Debug)]
pub enum EtcdError {
    /// Every endpoint failed (connection refused, reset or timed out); the last error.
    Unreachable(String),
    /// etcd answered with an error, or with a reply this client cannot read.
    Protocol(String),
}

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EtcdError::Unreachable(e) => write!(f, "etcd unreachable: {e}"),
            EtcdError::Protocol(e) => write!(f, "etcd error: {e}"),
        }
    }
}

impl std::error::Error for EtcdError {}

/// One key-value pair as etcd stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One change seen by [`Etcd::watch_prefix`]. A `Delete` carries the key and the
/// revision of the delete (`mod_revision`); its other fields are empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    Put(Kv),
    Delete(Kv),
}

struct Endpoint {
    /// `host:port`, for connecting and for the Host header.
    authority: String,
}

/// A blocking etcd v3 client over the JSON gateway, with failover between endpoints.
pub struct Etcd {
    endpoints: Vec<Endpoint>,
    urls: Vec<String>,
    /// The endpoint that last answered; requests start there.
    current: AtomicUsize,
    request_timeout: Duration,
    idle: Mutex<Vec<Conn>>,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.urls)
            .field("current", &self.current_endpoint())
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

/// How one attempt on one endpoint failed.
enum Fail {
    /// The endpoint could not be reached or the connection broke: try the next one.
    /// `stale` is set when a reused connection failed before any byte of the reply,
    /// which is what a connection the server closed while idle looks like.
    Io { msg: String, stale: bool },
    /// etcd answered: the answer stands.
    Etcd(String),
}

type Attempt<T> = Result<T, Fail>;

fn protocol<T>(msg: impl Into<String>) -> Attempt<T> {
    Err(Fail::Etcd(msg.into()))
}

impl Etcd {
    /// A client for the members at `endpoints` ("http://127.0.0.1:2379", or "127.0.0.1:2379"
    /// without the scheme), each request given `request_timeout` per endpoint tried. No
    /// connection is made yet. Fails on an empty list, an https:// URL (TLS is not
    /// supported) or a malformed one.
    pub fn new(endpoints: &[String], request_timeout: Duration) -> Result<Etcd, EtcdError> {
        if endpoints.is_empty() {
            return Err(EtcdError::Protocol("no etcd endpoint given".into()));
        }
        if request_timeout.is_zero() {
            return Err(EtcdError::Protocol("etcd request timeout is zero".into()));
        }
        let mut parsed = Vec::with_capacity(endpoints.len());
        let mut urls = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let authority = parse_endpoint(e).map_err(EtcdError::Protocol)?;
            urls.push(format!("http://{authority}"));
            parsed.push(Endpoint { authority });
        }
        Ok(Etcd {
            endpoints: parsed,
            urls,
            current: AtomicUsize::new(0),
            request_timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The endpoints, normalized to "http://host:port", in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.urls
    }

    /// The endpoint requests are sent to first: the one that last answered.
    pub fn current_endpoint(&self) -> &str {
        &self.urls[self.current.load(Ordering::Relaxed) % self.urls.len()]
    }

    /// Grants a lease of `ttl` seconds (etcd raises a TTL below its minimum, about 2 s
    /// with default timing); its id.
    pub fn lease_grant(&self, ttl: i64) -> Result<i64, EtcdError> {
        let reply = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        let id = int_field(&reply, "ID")?;
        if id == 0 {
            return Err(EtcdError::Protocol(
                "lease grant returned no lease id".into(),
            ));
        }
        Ok(id)
    }

    /// One keep-alive of lease `id`; the TTL left in seconds, 0 when the lease has
    /// expired or is unknown.
    pub fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        // A streaming call: the gateway ends the stream once the request body is read,
        // after one `{"result": ...}` per request object sent.
        let reply = self.call("/v3/lease/keepalive", &json!({ "ID": id.to_string() }))?;
        int_field(&reply, "TTL")
    }

    /// Revokes lease `id`, deleting the keys attached to it. An expired or unknown lease
    /// is an `EtcdError::Protocol` ("requested lease not found").
    pub fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        // 3.4 serves both /v3/lease/revoke and the older /v3/kv/lease/revoke.
        self.call("/v3/lease/revoke", &json!({ "ID": id.to_string() }))?;
        Ok(())
    }

    /// Puts key=value, attached to `lease` (0 = none); the store revision after the put.
    pub fn put(&self, key: &[u8], value: &[u8], lease: i64) -> Result<i64, EtcdError> {
        let mut req = json!({ "key": b64(key), "value": b64(value) });
        if lease != 0 {
            req["lease"] = Value::String(lease.to_string());
        }
        let reply = self.call("/v3/kv/put", &req)?;
        header_revision(&reply)
    }

    /// Deletes one key (nothing when it does not exist); the store revision after.
    pub fn delete(&self, key: &[u8]) -> Result<i64, EtcdError> {
        let reply = self.call("/v3/kv/deleterange", &json!({ "key": b64(key) }))?;
        header_revision(&reply)
    }

    /// One key, and the store revision of the read.
    pub fn get(&self, key: &[u8]) -> Result<(Option<Kv>, i64), EtcdError> {
        let reply = self.call("/v3/kv/range", &json!({ "key": b64(key) }))?;
        let mut kvs = kvs_field(&reply)?;
        let revision = header_revision(&reply)?;
        Ok((kvs.pop(), revision))
    }

    /// Every key under `prefix` (every key when it is empty), sorted by create_revision
    /// ascending, and the store revision of the read.
    pub fn range_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        let (key, end) = prefix_range(prefix);
        let req = json!({
            "key": b64(&key),
            "range_end": b64(&end),
            "sort_order": "ASCEND",
            "sort_target": "CREATE",
        });
        let reply = self.call("/v3/kv/range", &req)?;
        let kvs = kvs_field(&reply)?;
        Ok((kvs, header_revision(&reply)?))
    }

    /// Transaction: if `guard`'s create_revision equals `guard_create_revision` (the key
    /// still exists as created then; 0 would mean "does not exist"), puts key=value with
    /// no lease. `Some(revision after)` when done, `None` when the compare failed.
    pub fn put_if_created(
        &self,
        guard: &[u8],
        guard_create_revision: i64,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<i64>, EtcdError> {
        // "result" is left at its default, EQUAL; `succeeded` is absent when false.
        let req = json!({
            "compare": [{
                "key": b64(guard),
                "target": "CREATE",
                "create_revision": guard_create_revision.to_string(),
            }],
            "success": [{ "request_put": { "key": b64(key), "value": b64(value) } }],
            "failure": [],
        });
        let reply = self.call("/v3/kv/txn", &req)?;
        let revision = header_revision(&reply)?;
        if bool_field(&reply, "succeeded")? {
            Ok(Some(revision))
        } else {
            Ok(None)
        }
    }

    /// Watches the keys under `prefix` from revision `start_revision` (events at and after
    /// it; 0 for changes from now on), calling `on_event` for each event in order until it returns false (then
    /// returns Ok), `deadline` passes (Ok as well: the caller checks the time), or the
    /// stream breaks or etcd cancels the watch, e.g. because `start_revision` was
    /// compacted (Err). Endpoints are failed over only until the watch is created.
    pub fn watch_prefix(
        &self,
        prefix: &[u8],
        start_revision: i64,
        deadline: Instant,
        mut on_event: impl FnMut(WatchEvent) -> bool,
    ) -> Result<(), EtcdError> {
        if Instant::now() >= deadline {
            return Ok(());
        }
        let (key, end) = prefix_range(prefix);
        let mut create = json!({ "key": b64(&key), "range_end": b64(&end) });
        if start_revision > 0 {
            create["start_revision"] = Value::String(start_revision.to_string());
        }
        let body = serde_json::to_vec(&json!({ "create_request": create }))
            .map_err(|e| EtcdError::Protocol(format!("cannot encode watch request: {e}")))?;

        let Some((mut conn, mut stream)) =
            self.failover(|ep| self.open_watch(ep, &body, deadline))?
        else {
            return Ok(()); // the deadline passed while connecting
        };
        loop {
            while let Some(message) = stream.next_message() {
                let result = stream_result(&message).map_err(fail_to_error)?;
                if bool_field(result, "canceled")? {
                    let reason = result.get("cancel_reason").and_then(Value::as_str);
                    let compacted = int_field(result, "compact_revision")?;
                    return Err(EtcdError::Protocol(format!(
                        "watch canceled{}{}",
                        reason.map(|r| format!(": {r}")).unwrap_or_default(),
                        if compacted != 0 {
                            format!(" (revision compacted up to {compacted})")
                        } else {
                            String::new()
                        },
                    )));
                }
                let events = match result.get("events") {
                    None | Some(Value::Null) => continue,
                    Some(Value::Array(events)) => events,
                    Some(_) => return Err(EtcdError::Protocol("watch events not a list".into())),
                };
                for event in events {
                    let kv =
                        parse_kv(event.get("kv").unwrap_or(&Value::Null)).map_err(fail_to_error)?;
                    let event = match event.get("type").and_then(Value::as_str) {
                        None | Some("PUT") => WatchEvent::Put(kv),
                        Some("DELETE") => WatchEvent::Delete(kv),
                        Some(other) => {
                            return Err(EtcdError::Protocol(format!(
                                "unknown watch event type {other:?}"
                            )));
                        }
                    };
                    if !on_event(event) {
                        return Ok(());
                    }
                }
            }
            match stream.read_more(&mut conn, deadline) {
                Ok(true) => {}
                Ok(false) => return Ok(()), // deadline
                Err(e) => {
                    return Err(match e {
                        Fail::Io { msg, .. } => {
                            EtcdError::Unreachable(format!("watch stream broke: {msg}"))
                        }
                        Fail::Etcd(msg) => EtcdError::Protocol(msg),
                    });
                }
            }
        }
    }

    /// Connects to endpoint `ep`, sends the watch request and reads up to the "created"
    /// message. `None` when `deadline` passed first.
    fn open_watch(
        &self,
        ep: usize,
        body: &[u8],
        deadline: Instant,
    ) -> Attempt<Option<(Conn, WatchStream)>> {
        let setup_until = deadline.min(Instant::now() + self.request_timeout);
        let mut conn = match Conn::connect(ep, &self.endpoints[ep].authority, setup_until) {
            Ok(conn) => conn,
            Err(_) if Instant::now() >= deadline => return Ok(None),
            Err(e) => return Err(e),
        };
        let timed_out = |e: &Fail| matches!(e, Fail::Io { .. }) && Instant::now() >= deadline;
        let head = match conn
            .send(
                &self.endpoints[ep].authority,
                "/v3/watch",
                body,
                setup_until,
            )
            .and_then(|()| conn.read_head(setup_until))
        {
            Ok(head) => head,
            Err(e) if timed_out(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if head.status != 200 || !head.chunked {
            let body = conn.read_body(&head, setup_until)?;
            return Err(error_reply(head.status, &body));
        }
        let mut stream = WatchStream::default();
        loop {
            if let Some(message) = stream.next_message() {
                let result = stream_result(&message)?;
                if bool_field_fail(result, "created")? {
                    return Ok(Some((conn, stream)));
                }
                return protocol(format!("watch not created: {message}"));
            }
            match stream.read_more(&mut conn, setup_until) {
                Ok(true) => {}
                Ok(false) if Instant::now() >= deadline => return Ok(None),
                Ok(false) => {
                    return Err(Fail::Io {
                        msg: "timed out waiting for the watch to be created".into(),
                        stale: false,
                    });
                }
                Err(e) if timed_out(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// One unary (or single-message streaming) call, failing over between endpoints; the
    /// reply object (the `result` of a streaming reply).
    fn call(&self, path: &str, request: &Value) -> Result<Value, EtcdError> {
        let body = serde_json::to_vec(request)
            .map_err(|e| EtcdError::Protocol(format!("cannot encode request: {e}")))?;
        self.failover(|ep| self.call_on(ep, path, &body))
    }

    /// Runs `attempt` on each endpoint in turn, starting with the one that last worked,
    /// until one answers.
    fn failover<T>(&self, mut attempt: impl FnMut(usize) -> Attempt<T>) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut last = String::new();
        for i in 0..n {
            let ep = (start + i) % n;
            match attempt(ep) {
                Ok(v) => {
                    if ep != start {
                        self.current.store(ep, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Err(Fail::Etcd(msg)) => {
                    // It answered, so it is reachable: start there next time.
                    if ep != start {
                        self.current.store(ep, Ordering::Relaxed);
                    }
                    return Err(EtcdError::Protocol(msg));
                }
                Err(Fail::Io { msg, .. }) => last = format!("{}: {msg}", self.urls[ep]),
            }
        }
        Err(EtcdError::Unreachable(last))
    }

    fn call_on(&self, ep: usize, path: &str, body: &[u8]) -> Attempt<Value> {
        let until = Instant::now() + self.request_timeout;
        if let Some(conn) = self.take_idle(ep) {
            match self.exchange(conn, path, body, until) {
                Err(Fail::Io { stale: true, .. }) => {} // retried on a fresh connection
                other => return other,
            }
        }
        let conn = Conn::connect(ep, &self.endpoints[ep].authority, until)?;
        self.exchange(conn, path, body, until)
    }

    /// Sends one request on `conn` and reads the reply; the connection goes back to the
    /// idle list when it can carry another request.
    fn exchange(&self, mut conn: Conn, path: &str, body: &[u8], until: Instant) -> Attempt<Value> {
        let authority = &self.endpoints[conn.endpoint].authority;
        let reused = conn.used;
        conn.used = true;
        let result = conn
            .send(authority, path, body, until)
            .and_then(|()| conn.read_head(until));
        let head = match result {
            Ok(head) => head,
            Err(Fail::Io { msg, .. }) => {
                let stale = reused && conn.received == 0;
                return Err(Fail::Io { msg, stale });
            }
            Err(e) => return Err(e),
        };
        let reply = conn.read_body(&head, until)?;
        if head.keep_alive && conn.pending() == 0 {
            let mut idle = self.idle.lock();
            if idle.len() < MAX_IDLE {
                conn.received = 0;
                idle.push(conn);
            }
        }
        if head.status != 200 {
            return Err(error_reply(head.status, &reply));
        }
        let text = std::str::from_utf8(&reply)
            .map_err(|_| Fail::Etcd("reply is not UTF-8".into()))?
            .trim();
        // A streaming reply holds one JSON object per line; a unary reply is one object.
        let first = if head.chunked {
            text.lines().find(|l| !l.trim().is_empty()).unwrap_or("")
        } else {
            text
        };
        let value: Value = serde_json::from_str(first)
            .map_err(|e| Fail::Etcd(format!("malformed reply to {path}: {e}: {first:.200}")))?;
        if value.get("result").is_some() || value.get("error").is_some() {
            return stream_result(&value).cloned();
        }
        check_error_field(&value)?;
        Ok(value)
    }

    fn take_idle(&self, ep: usize) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let i = idle.iter().rposition(|c| c.endpoint == ep)?;
        Some(idle.swap_remove(i))
    }
}

/// Parses "http://host:port", "host:port" (with an optional trailing "/") into "host:port".
fn parse_endpoint(endpoint: &str) -> Result<String, String> {
    let e = endpoint.trim();
    let lower = e.to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        return Err(format!("etcd endpoint {e:?}: TLS (https) is not supported"));
    } else if lower.starts_with("http://") {
        &e["http://".len()..]
    } else if e.contains("://") {
        return Err(format!("etcd endpoint {e:?}: only http:// is supported"));
    } else {
        e
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    let bad = || format!("etcd endpoint {e:?} is not http://host:port");
    if authority.is_empty() || authority.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    let (host, port) = authority.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|h| !h.is_empty())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    if !host_ok || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(authority.to_string())
}

/// The [key, range_end) of every key starting with `prefix`: the prefix with its last
/// byte below 0xff incremented (and what follows it dropped).
fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return (prefix.to_vec(), end);
        }
    }
    // Empty (or all-0xff) prefix: etcd reads key "\0" with range_end "\0" as "every key
    // from key on", and refuses an empty key.
    let key = if prefix.is_empty() {
        vec![0]
    } else {
        prefix.to_vec()
    };
    (key, vec![0])
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn fail_to_error(f: Fail) -> EtcdError {
    match f {
        Fail::Io { msg, .. } => EtcdError::Unreachable(msg),
        Fail::Etcd(msg) => EtcdError::Protocol(msg),
    }
}

/// The error carried by a non-200 reply: `{"error": "...", "message": "...", "code": N}`.
fn error_reply(status: u16, body: &[u8]) -> Fail {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_str::<Value>(text.trim())
        .ok()
        .and_then(|v| error_message(&v))
        .unwrap_or_else(|| text.trim().chars().take(200).collect());
    Fail::Etcd(format!("HTTP {status}: {message}"))
}

/// The message of an "error" member, a string in unary replies and an object in
/// streaming ones; `None` when absent or empty.
fn error_message(v: &Value) -> Option<String> {
    let text = match v.get("error")? {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| Value::Object(o.clone()).to_string()),
        Value::Null => return None,
        other => other.to_string(),
    };
    (!text.is_empty()).then_some(text)
}

fn check_error_field(v: &Value) -> Attempt<()> {
    match error_message(v) {
        Some(message) => protocol(message),
        None => Ok(()),
    }
}

/// The `result` of one message of a streaming reply.
fn stream_result(v: &Value) -> Attempt<&Value> {
    check_error_field(v)?;
    match v.get("result") {
        Some(r @ Value::Object(_)) => {
            check_error_field(r)?;
            Ok(r)
        }
        _ => protocol(format!(
            "streaming reply without a result: {:.200}",
            v.to_string()
        )),
    }
}

/// An int64 member: a JSON string (or a number), 0 when absent.
fn int_field_fail(v: &Value, name: &str) -> Attempt<i64> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(0),
        Some(Value::String(s)) => s
            .parse()
            .or_else(|_| protocol(format!("field {name} is not an integer: {s:?}"))),
        Some(Value::Number(n)) => n.as_i64().map_or_else(
            || protocol(format!("field {name} is not an int64: {n}")),
            Ok,
        ),
        Some(other) => protocol(format!("field {name} is not an integer: {other}")),
    }
}

fn int_field(v: &Value, name: &str) -> Result<i64, EtcdError> {
    int_field_fail(v, name).map_err(fail_to_error)
}

/// A bool member, false when absent.
fn bool_field_fail(v: &Value, name: &str) -> Attempt<bool> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => protocol(format!("field {name} is not a bool: {other}")),
    }
}

fn bool_field(v: &Value, name: &str) -> Result<bool, EtcdError> {
    bool_field_fail(v, name).map_err(fail_to_error)
}

fn bytes_field(v: &Value, name: &str) -> Attempt<Vec<u8>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => B64
            .decode(s)
            .or_else(|e| protocol(format!("field {name} is not base64: {e}"))),
        Some(other) => protocol(format!("field {name} is not a string: {other}")),
    }
}

fn header_revision(reply: &Value) -> Result<i64, EtcdError> {
    match reply.get("header") {
        Some(header @ Value::Object(_)) => int_field(header, "revision"),
        _ => Err(EtcdError::Protocol(format!(
            "reply without a header: {:.200}",
            reply.to_string()
        ))),
    }
}

fn parse_kv(v: &Value) -> Attempt<Kv> {
    if !v.is_object() {
        return protocol(format!("key-value is not an object: {v}"));
    }
    Ok(Kv {
        key: bytes_field(v, "key")?,
        value: bytes_field(v, "value")?,
        create_revision: int_field_fail(v, "create_revision")?,
        mod_revision: int_field_fail(v, "mod_revision")?,
        lease: int_field_fail(v, "lease")?,
    })
}

fn kvs_field(reply: &Value) -> Result<Vec<Kv>, EtcdError> {
    match reply.get("kvs") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(kvs)) => kvs
            .iter()
            .map(|kv| parse_kv(kv).map_err(fail_to_error))
            .collect(),
        Some(_) => Err(EtcdError::Protocol("kvs is not a list".into())),
    }
}

/// The parts of a response head this client acts on.
struct Head {
    status: u16,
    content_length: Option<usize>,
    chunked: bool,
    keep_alive: bool,
}

/// One HTTP/1.1 connection with its read buffer.
struct Conn {
    endpoint: usize,
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    pos: usize,
    /// Bytes received for the current request, to tell a stale connection.
    received: usize,
    /// Whether a request was sent on it before.
    used: bool,
}

fn io_fail(what: &str, e: io::Error) -> Fail {
    let msg = match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => format!("{what}: timed out"),
        _ => format!("{what}: {e}"),
    };
    Fail::Io { msg, stale: false }
}

fn remaining(until: Instant) -> Option<Duration> {
    let left = until.saturating_duration_since(Instant::now());
    (!left.is_zero()).then_some(left)
}

impl Conn {
    fn connect(endpoint: usize, authority: &str, until: Instant) -> Attempt<Conn> {
        let addrs: Vec<SocketAddr> = authority
            .to_socket_addrs()
            .map_err(|e| io_fail(&format!("resolving {authority}"), e))?
            .collect();
        let mut last = Fail::Io {
            msg: format!("{authority} resolves to no address"),
            stale: false,
        };
        for addr in addrs {
            let Some(left) = remaining(until) else {
                return Err(io_fail("connect", io::ErrorKind::TimedOut.into()));
            };
            match TcpStream::connect_timeout(&addr, left) {
                Ok(stream) => {
                    // Requests are small and written at once; don't hold them back.
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn {
                        endpoint,
                        stream,
                        buf: Vec::new(),
                        pos: 0,
                        received: 0,
                        used: false,
                    });
                }
                Err(e) => last = io_fail(&format!("connect to {addr}"), e),
            }
        }
        Err(last)
    }

    fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn send(&mut self, authority: &str, path: &str, body: &[u8], until: Instant) -> Attempt<()> {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
             Accept: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        let left =
            remaining(until).ok_or_else(|| io_fail("send", io::ErrorKind::TimedOut.into()))?;
        self.stream
            .set_write_timeout(Some(left))
            .map_err(|e| io_fail("send", e))?;
        self.stream
            .write_all(&request)
            .map_err(|e| io_fail("send", e))
    }

    /// Reads more bytes into the buffer, waiting until `until` at most.
    fn fill(&mut self, until: Instant) -> Attempt<()> {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > READ_CHUNK {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let left =
            remaining(until).ok_or_else(|| io_fail("read", io::ErrorKind::TimedOut.into()))?;
        self.stream
            .set_read_timeout(Some(left))
            .map_err(|e| io_fail("read", e))?;
        let old = self.buf.len();
        self.buf.resize(old + READ_CHUNK, 0);
        let n = loop {
            match self.stream.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(io_fail("read", e));
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            return Err(Fail::Io {
                msg: "connection closed by etcd".into(),
                stale: false,
            });
        }
        self.received += n;
        Ok(())
    }

    /// One CRLF-terminated line, without the CRLF.
    fn read_line(&mut self, until: Instant) -> Attempt<Vec<u8>> {
        let mut searched = 0;
        loop {
            let unread = &self.buf[self.pos..];
            if let Some(i) = unread[searched..].windows(2).position(|w| w == b"\r\n") {
                let line = unread[..searched + i].to_vec();
                self.pos += searched + i + 2;
                return Ok(line);
            }
            if unread.len() > MAX_LINE {
                return protocol("line too long in HTTP reply");
            }
            searched = unread.len().saturating_sub(1);
            self.fill(until)?;
        }
    }

    fn read_exact(&mut self, n: usize, until: Instant) -> Attempt<Vec<u8>> {
        while self.pending() < n {
            self.fill(until)?;
        }
        let data = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(data)
    }

    fn read_head(&mut self, until: Instant) -> Attempt<Head> {
        let status_line = self.read_line(until)?;
        let status_line = String::from_utf8_lossy(&status_line);
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        let status = parts.next().and_then(|s| s.parse::<u16>().ok());
        let Some(status) = status.filter(|_| version.starts_with("HTTP/1.")) else {
            return protocol(format!("not an HTTP reply: {status_line:.200}"));
        };
        let mut head = Head {
            status,
            content_length: None,
            chunked: false,
            keep_alive: version == "HTTP/1.1",
        };
        let mut count = 0;
        loop {
            let line = self.read_line(until)?;
            if line.is_empty() {
                break;
            }
            count += 1;
            if count > 200 {
                return protocol("too many headers in HTTP reply");
            }
            let line = String::from_utf8_lossy(&line);
            let Some((name, value)) = line.split_once(':') else {
                return protocol(format!("malformed HTTP header: {line:.200}"));
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "content-length" => match value.parse::<usize>() {
                    Ok(n) if n <= MAX_BODY => head.content_length = Some(n),
                    _ => return protocol(format!("bad Content-Length: {value:.50}")),
                },
                "transfer-encoding" => {
                    head.chunked = value.to_ascii_lowercase().contains("chunked");
                }
                "connection" => {
                    let value = value.to_ascii_lowercase();
                    if value.contains("close") {
                        head.keep_alive = false;
                    } else if value.contains("keep-alive") {
                        head.keep_alive = true;
                    }
                }
                _ => {}
            }
        }
        Ok(head)
    }

    /// The next chunk of a chunked body; `None` after the last one (trailers consumed).
    fn read_chunk(&mut self, until: Instant) -> Attempt<Option<Vec<u8>>> {
        let line = self.read_line(until)?;
        let line = String::from_utf8_lossy(&line);
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return protocol(format!("bad chunk size: {line:.50}"));
        };
        if size > MAX_BODY {
            return protocol("chunk too large");
        }
        if size == 0 {
            // Trailers (the gateway sends Grpc-Trailer-* ones on errors), then a blank line.
            while !self.read_line(until)?.is_empty() {}
            return Ok(None);
        }
        let data = self.read_exact(size, until)?;
        if !self.read_line(until)?.is_empty() {
            return protocol("chunk not followed by CRLF");
        }
        Ok(Some(data))
    }

    fn read_body(&mut self, head: &Head, until: Instant) -> Attempt<Vec<u8>> {
        if head.chunked {
            let mut body = Vec::new();
            while let Some(chunk) = self.read_chunk(until)? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return protocol("reply too large");
                }
            }
            Ok(body)
        } else if let Some(n) = head.content_length {
            self.read_exact(n, until)
        } else {
            protocol("reply with neither Content-Length nor chunked encoding")
        }
    }
}

/// The decoded body of a watch reply, split into its newline-terminated JSON messages.
#[derive(Default)]
struct WatchStream {
    pending: Vec<u8>,
    ended: bool,
}

impl WatchStream {
    /// The next complete message received, if any.
    fn next_message(&mut self) -> Option<Value> {
        loop {
            let i = self.pending.iter().position(|&b| b == b'\n')?;
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            return Some(serde_json::from_str(line).unwrap_or_else(|e| {
                // Passed on as an error message so the caller stops on it.
                json!({ "error": format!("malformed watch message: {e}: {line:.200}") })
            }));
        }
    }

    /// Reads one more chunk of the stream. `Ok(false)` when `until` passed first.
    fn read_more(&mut self, conn: &mut Conn, until: Instant) -> Attempt<bool> {
        if self.ended {
            return Err(Fail::Io {
                msg: "etcd ended the watch stream".into(),
                stale: false,
            });
        }
        if Instant::now() >= until {
            return Ok(false);
        }
        match conn.read_chunk(until) {
            Ok(Some(chunk)) => {
                self.pending.extend_from_slice(&chunk);
                if self.pending.len() > MAX_BODY {
                    return protocol("watch message too large");
                }
                Ok(true)
            }
            Ok(None) => {
                self.ended = true;
                // A last message without its newline still counts.
                if !self.pending.is_empty() {
                    self.pending.push(b'\n');
                    return Ok(true);
                }
                Err(Fail::Io {
                    msg: "etcd ended the watch stream".into(),
                    stale: false,
                })
            }
            Err(Fail::Io { .. }) if Instant::now() >= until => Ok(false),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_parsed() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert_eq!(parse_endpoint("127.0.0.1:2379").unwrap(), "127.0.0.1:2379");
        assert_eq!(
            parse_endpoint("HTTP://localhost:2379/").unwrap(),
            "localhost:2379"
        );
        assert_eq!(parse_endpoint("http://[::1]:2379").unwrap(), "[::1]:2379");
        let tls = parse_endpoint("https://127.0.0.1:2379").unwrap_err();
        assert!(tls.contains("TLS"), "{tls}");
        for bad in [
            "",
            "http://",
            "127.0.0.1",
            "http://127.0.0.1:",
            "http://127.0.0.1:x",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:2379/v3",
            "unix://x:1",
            "::1:2379",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad:?} accepted");
        }
        let none: Vec<String> = Vec::new();
        assert!(Etcd::new(&none, Duration::from_secs(1)).is_err());
    }

    #[test]
    fn prefix_ranges() {
        assert_eq!(prefix_range(b"a/"), (b"a/".to_vec(), b"a0".to_vec()));
        assert_eq!(prefix_range(b"a\xff"), (b"a\xff".to_vec(), b"b".to_vec()));
        assert_eq!(prefix_range(b""), (vec![0], vec![0]));
        assert_eq!(prefix_range(b"\xff\xff"), (b"\xff\xff".to_vec(), vec![0]));
    }

    #[test]
    fn int64_fields_are_strings_or_absent() {
        let v = json!({ "a": "12", "b": 7, "c": "x" });
        assert_eq!(int_field(&v, "a").unwrap(), 12);
        assert_eq!(int_field(&v, "b").unwrap(), 7);
        assert_eq!(int_field(&v, "missing").unwrap(), 0);
        assert!(int_field(&v, "c").is_err());
    }

    #[test]
    fn watch_messages_split_across_chunks() {
        let mut s = WatchStream::default();
        s.pending
            .extend_from_slice(b"{\"result\":{\"a\":1}}\n{\"res");
        assert_eq!(s.next_message(), Some(json!({"result": {"a": 1}})));
        assert_eq!(s.next_message(), None);
        s.pending.extend_from_slice(b"ult\":{}}\n\n{\"x\":2}\n");
        assert_eq!(s.next_message(), Some(json!({"result": {}})));
        assert_eq!(s.next_message(), Some(json!({"x": 2})));
        assert_eq!(s.next_message(), None);
    }
}
