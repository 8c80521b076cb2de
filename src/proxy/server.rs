//! The daemon: connections in, lease engine decisions out, renames done here.
//!
//! Every connection is one client process, named by the kernel (SO_PEERCRED) and its start
//! time. The engine's holder is that process; a connection's leases end when it closes, at
//! once when the process died (pidfd), after the engine's linger when it merely hung up.
//! All state sits behind one mutex: each event is short (a map update and at most one
//! rename), so there is nothing to gain from finer locks.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc};

use super::endpoint;
use super::paths::{self, Root};
use super::protocol::{
    ErrorCode, Event, MAX_LINE_BYTES, PROTOCOL_VERSION, Reply, Request, WireIntent, parse_request,
    to_line,
};
use crate::lease::{
    Action, Admission, Ask, Engine, Grant, Intent, LeaseId, Outcome, Policy, WaitId,
};
use crate::platform::{self, ExitWatch, ProcessId};

type ConnId = u64;

/// One granted acquire: what the client names as `lease`.
struct Use {
    key: String,
    engine_lease: LeaseId,
    /// The file's generation when granted; a commit is fenced if the file moved on since.
    generation: u64,
    append: bool,
    released: bool,
    revoked: bool,
}

struct Connection {
    holder: ProcessId,
    outbox: mpsc::UnboundedSender<String>,
    uses: HashMap<u64, Use>,
    waits: Vec<WaitId>,
}

/// A request the engine parked, answered when its wait ends.
enum Parked {
    Acquire {
        conn: ConnId,
        id: u64,
        key: String,
        append: bool,
    },
    Commit(CommitRequest),
}

struct CommitRequest {
    conn: ConnId,
    id: u64,
    key: String,
    temp: Option<String>,
    lease: Option<u64>,
}

struct State {
    engine: Engine<String>,
    epoch: Instant,
    root: Root,
    connections: HashMap<ConnId, Connection>,
    parked: HashMap<WaitId, Parked>,
    connections_of: HashMap<ProcessId, usize>,
    next_id: u64,
}

/// A daemon serving one root; cheap to clone into tasks.
#[derive(Clone)]
pub struct Server {
    state: Arc<Mutex<State>>,
    wake_timer: Arc<Notify>,
    exits: Arc<ExitWatch>,
}

impl Server {
    pub fn new(root: &std::path::Path, policy: Policy) -> std::io::Result<Server> {
        let state = Arc::new(Mutex::new(State {
            engine: Engine::new(policy),
            epoch: Instant::now(),
            root: Root::open(root)?,
            connections: HashMap::new(),
            parked: HashMap::new(),
            connections_of: HashMap::new(),
            next_id: 1,
        }));
        let wake_timer = Arc::new(Notify::new());
        let exits = {
            let state = Arc::clone(&state);
            let wake_timer = Arc::clone(&wake_timer);
            ExitWatch::start(move |process| {
                let mut state = state.lock();
                let now = state.now();
                tracing::debug!(pid = process.pid, "client process exited");
                let actions = state.engine.holder_exited(now, process, None);
                state.dispatch(actions);
                wake_timer.notify_one();
            })?
        };
        Ok(Server {
            state,
            wake_timer,
            exits,
        })
    }

    pub fn root(&self) -> PathBuf {
        self.state.lock().root.path().to_path_buf()
    }

    /// Accepts connections on `listener` and runs the engine's timers, forever.
    pub async fn run(self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
        tokio::spawn(self.clone().run_timers());
        loop {
            let (stream, _) = listener.accept().await?;
            let server = self.clone();
            tokio::spawn(async move {
                if let Err(err) = server.serve_connection(stream).await {
                    tracing::debug!("connection ended: {err}");
                }
            });
        }
    }

    async fn run_timers(self) {
        loop {
            let deadline = self.state.lock().engine.next_deadline();
            let epoch = self.state.lock().epoch;
            match deadline {
                Some(deadline) => {
                    let at = tokio::time::Instant::from_std(epoch + deadline);
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake_timer.notified() => continue,
                    }
                }
                None => {
                    self.wake_timer.notified().await;
                    continue;
                }
            }
            let mut state = self.state.lock();
            let now = state.now();
            let actions = state.engine.tick(now);
            state.dispatch(actions);
        }
    }

    async fn serve_connection(&self, stream: UnixStream) -> std::io::Result<()> {
        let peer = endpoint::peer_credentials(&stream)?;
        let (read_half, mut write_half) = stream.into_split();
        if peer.uid != endpoint::current_uid() {
            tracing::warn!(
                pid = peer.pid,
                uid = peer.uid,
                "refused a client of another user"
            );
            let reply = Reply::error(0, ErrorCode::BadRequest, "this daemon serves another user");
            let _ = write_half.write_all(to_line(&reply).as_bytes()).await;
            return Ok(());
        }
        let holder = platform::process(peer.pid)?;
        let (outbox, mut outgoing) = mpsc::unbounded_channel::<String>();
        let conn = self.register(holder, outbox.clone());
        let writer = tokio::spawn(async move {
            while let Some(line) = outgoing.recv().await {
                if write_half.write_all(line.as_bytes()).await.is_err() {
                    break;
                }
            }
        });
        let mut reader = BufReader::new(read_half);
        let mut greeted = false;
        let result = loop {
            let line = match read_line_limited(&mut reader).await {
                Ok(Some(line)) => line,
                Ok(None) => break Ok(()),
                Err(err) => {
                    let reply = Reply::error(0, ErrorCode::BadRequest, err.to_string());
                    let _ = outbox.send(to_line(&reply));
                    break Err(err);
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let reply = match parse_request(&line) {
                Err(reply) => Some(reply),
                Ok(Request::Hello { id, version }) => Some(self.hello(id, version, &mut greeted)),
                Ok(request) if !greeted => Some(Reply::error(
                    request.id(),
                    ErrorCode::UnsupportedVersion,
                    "send hello with a version first",
                )),
                Ok(request) => self.handle(conn, request),
            };
            if let Some(reply) = reply {
                let _ = outbox.send(to_line(&reply));
            }
            self.wake_timer.notify_one();
        };
        self.unregister(conn);
        drop(outbox);
        let _ = writer.await;
        result
    }

    fn hello(&self, id: u64, version: u32, greeted: &mut bool) -> Reply {
        if version != PROTOCOL_VERSION {
            return Reply::error(
                id,
                ErrorCode::UnsupportedVersion,
                format!("this daemon speaks version {PROTOCOL_VERSION}, not {version}"),
            );
        }
        *greeted = true;
        Reply {
            version: Some(PROTOCOL_VERSION),
            root: Some(self.root().to_string_lossy().into_owned()),
            ..Reply::ok(id)
        }
    }

    fn register(&self, holder: ProcessId, outbox: mpsc::UnboundedSender<String>) -> ConnId {
        let mut state = self.state.lock();
        let conn = state.fresh_id();
        state.connections.insert(
            conn,
            Connection {
                holder,
                outbox,
                uses: HashMap::new(),
                waits: Vec::new(),
            },
        );
        *state.connections_of.entry(holder).or_default() += 1;
        drop(state);
        if let Err(err) = self.exits.watch(holder) {
            tracing::debug!(pid = holder.pid, "cannot watch client exit: {err}");
        }
        conn
    }

    fn unregister(&self, conn: ConnId) {
        let mut state = self.state.lock();
        let now = state.now();
        let Some(connection) = state.connections.remove(&conn) else {
            return;
        };
        let holder = connection.holder;
        let mut actions = Vec::new();
        for wait in connection.waits {
            state.parked.remove(&wait);
            actions.extend(state.engine.cancel(now, wait));
        }
        let last = {
            let count = state.connections_of.entry(holder).or_default();
            *count = count.saturating_sub(1);
            *count == 0
        };
        if last && !platform::is_alive(holder) {
            actions.extend(state.engine.holder_exited(now, holder, None));
        } else {
            for (_, taken) in connection.uses {
                if !taken.released {
                    actions.extend(state.engine.finish(
                        now,
                        taken.engine_lease,
                        holder,
                        Outcome::Read,
                    ));
                }
            }
        }
        if last {
            state.connections_of.remove(&holder);
        }
        state.dispatch(actions);
        drop(state);
        // The exit watch stays: a process that hung up and then dies still frees its
        // lingering leases at once.
        self.wake_timer.notify_one();
    }

    fn handle(&self, conn: ConnId, request: Request) -> Option<Reply> {
        let mut state = self.state.lock();
        match request {
            Request::Hello { .. } => unreachable!("hello is answered before"),
            Request::Acquire {
                id,
                path,
                intent,
                wait_ms,
            } => state.acquire(conn, id, &path, intent, wait_ms),
            Request::Renew { id, lease } => Some(state.renew(conn, id, lease)),
            Request::Release { id, lease } => Some(state.release(conn, id, lease)),
            Request::Commit {
                id,
                path,
                lease,
                temp,
                wait_ms,
            } => state.commit(conn, id, &path, lease, temp.as_deref(), wait_ms),
        }
    }
}

impl State {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn holder(&self, conn: ConnId) -> ProcessId {
        self.connections[&conn].holder
    }

    fn acquire(
        &mut self,
        conn: ConnId,
        id: u64,
        path: &str,
        intent: WireIntent,
        wait_ms: Option<u64>,
    ) -> Option<Reply> {
        let key = match self.checked_key(path) {
            Ok(key) => key,
            Err(reply) => return Some(reply.with_id(id)),
        };
        let append = intent == WireIntent::Append;
        // Read and write both start (or rejoin) a cycle. The process's sequential re-read
        // joins its own cycle; a read while it still holds an unreleased use of the file
        // is a second cycle (two tasks of one process) and queues behind the first, as
        // the overlay does for a second thread. A commit later joins the cycle as a write.
        let engine_intent = if append { Intent::Append } else { Intent::Read };
        let holder = self.holder(conn);
        let now = self.now();
        let connection = self.connections.get_mut(&conn).expect("live connection");
        connection
            .uses
            .retain(|_, taken| !(taken.released && taken.key == key));
        let concurrent = !append
            && self
                .connections
                .values()
                .filter(|other| other.holder == holder)
                .flat_map(|other| other.uses.values())
                .any(|taken| taken.key == key && !taken.released && !taken.append);
        let ask = Ask {
            concurrent,
            max_wait: wait_ms.map(Duration::from_millis),
            ..Ask::new(engine_intent)
        };
        match self.engine.request(now, &key, holder, ask) {
            Admission::Granted(grant) => Some(self.grant_use(conn, id, key, append, grant)),
            Admission::Queued(wait) => {
                self.park(
                    conn,
                    wait,
                    Parked::Acquire {
                        conn,
                        id,
                        key,
                        append,
                    },
                );
                None
            }
            Admission::Fenced | Admission::OutOfTurn => {
                Some(Reply::error(id, ErrorCode::Fenced, "fenced"))
            }
        }
    }

    fn grant_use(
        &mut self,
        conn: ConnId,
        id: u64,
        key: String,
        append: bool,
        grant: Grant,
    ) -> Reply {
        let lease = self.fresh_id();
        let connection = self.connections.get_mut(&conn).expect("live connection");
        connection.uses.insert(
            lease,
            Use {
                key,
                engine_lease: grant.lease,
                generation: grant.generation,
                append,
                released: false,
                revoked: false,
            },
        );
        Reply {
            lease: Some(lease),
            generation: Some(grant.generation),
            ..Reply::ok(id)
        }
    }

    fn park(&mut self, conn: ConnId, wait: WaitId, parked: Parked) {
        self.parked.insert(wait, parked);
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.waits.push(wait);
        }
    }

    fn renew(&mut self, conn: ConnId, id: u64, lease: u64) -> Reply {
        let max_hold_ms = self.engine.policy().max_hold.as_millis() as u64;
        match self.connections[&conn].uses.get(&lease) {
            None => Reply::error(id, ErrorCode::UnknownLease, format!("no lease {lease}")),
            Some(taken) => Reply {
                held: Some(!taken.revoked),
                max_hold_ms: Some(max_hold_ms),
                generation: Some(self.engine.generation(&taken.key)),
                ..Reply::ok(id)
            },
        }
    }

    fn release(&mut self, conn: ConnId, id: u64, lease: u64) -> Reply {
        let now = self.now();
        let holder = self.holder(conn);
        let connection = self.connections.get_mut(&conn).expect("live connection");
        let Some(taken) = connection.uses.get_mut(&lease) else {
            return Reply::error(id, ErrorCode::UnknownLease, format!("no lease {lease}"));
        };
        if taken.released {
            return Reply::ok(id);
        }
        taken.released = true;
        let engine_lease = taken.engine_lease;
        // A released read use stays known so a later commit can name it (and be fenced).
        if taken.append {
            connection.uses.remove(&lease);
        }
        let actions = self.engine.finish(now, engine_lease, holder, Outcome::Read);
        self.dispatch(actions);
        Reply::ok(id)
    }

    fn commit(
        &mut self,
        conn: ConnId,
        id: u64,
        path: &str,
        lease: Option<u64>,
        temp: Option<&str>,
        wait_ms: Option<u64>,
    ) -> Option<Reply> {
        let key = match self.checked_key(path) {
            Ok(key) => key,
            Err(reply) => return Some(reply.with_id(id)),
        };
        let temp = match temp.map(|temp| self.checked_key(temp)).transpose() {
            Ok(temp) => temp,
            Err(reply) => return Some(reply.with_id(id)),
        };
        if temp.as_deref() == Some(key.as_str()) {
            return Some(Reply::error(
                id,
                ErrorCode::BadRequest,
                "temp names the target",
            ));
        }
        let holder = self.holder(conn);
        let now = self.now();
        if let Some(lease) = lease {
            let Some(taken) = self.connections[&conn].uses.get(&lease) else {
                return Some(Reply::error(
                    id,
                    ErrorCode::UnknownLease,
                    format!("no lease {lease}"),
                ));
            };
            if taken.key != key {
                return Some(Reply::error(
                    id,
                    ErrorCode::BadRequest,
                    format!("lease {lease} is on {}, not {key}", taken.key),
                ));
            }
            if taken.append {
                if temp.is_some() {
                    return Some(Reply::error(
                        id,
                        ErrorCode::BadRequest,
                        "an append commits no temp",
                    ));
                }
                let engine_lease = taken.engine_lease;
                let released = taken.released;
                self.connections
                    .get_mut(&conn)
                    .expect("live")
                    .uses
                    .remove(&lease);
                if released {
                    return Some(Reply::ok(id));
                }
                let actions = self
                    .engine
                    .finish(now, engine_lease, holder, Outcome::Committed);
                self.dispatch(actions);
                return Some(Reply {
                    generation: Some(self.engine.generation(&key)),
                    ..Reply::ok(id)
                });
            }
        }
        let request = CommitRequest {
            conn,
            id,
            key,
            temp,
            lease,
        };
        if let Some(reply) = self.fence_moved_cycle(&request) {
            return Some(reply);
        }
        let wait = wait_ms.map(Duration::from_millis);
        match self
            .engine
            .acquire(now, &request.key, holder, Intent::Write, wait)
        {
            Admission::Granted(grant) => Some(self.apply_commit(request, grant)),
            Admission::Queued(wait) => {
                self.park(conn, wait, Parked::Commit(request));
                None
            }
            Admission::Fenced | Admission::OutOfTurn => {
                Some(self.refuse_fenced(request, "the file changed since this process read it"))
            }
        }
    }

    /// Fencing per cycle: the engine fences per process; a cycle named by its lease is also
    /// refused when anyone (even another cycle of the same process) committed since its grant.
    fn fence_moved_cycle(&mut self, request: &CommitRequest) -> Option<Reply> {
        let lease = request.lease?;
        let taken = self.connections.get(&request.conn)?.uses.get(&lease)?;
        let current = self.engine.generation(&request.key);
        if taken.generation == current {
            return None;
        }
        let why = format!(
            "the file moved from generation {} to {current} during this cycle{}",
            taken.generation,
            if taken.revoked {
                " (its lease was revoked)"
            } else {
                ""
            }
        );
        let engine_lease = taken.engine_lease;
        let released = taken.released;
        let holder = self.holder(request.conn);
        if !released {
            let now = self.now();
            let actions = self.engine.finish(now, engine_lease, holder, Outcome::Read);
            self.dispatch(actions);
        }
        Some(self.refuse_fenced(
            CommitRequest {
                conn: request.conn,
                id: request.id,
                key: request.key.clone(),
                temp: request.temp.clone(),
                lease: request.lease,
            },
            &why,
        ))
    }

    fn refuse_fenced(&mut self, request: CommitRequest, why: &str) -> Reply {
        let holder = self.connections.get(&request.conn).map(|c| c.holder);
        tracing::warn!(
            path = %request.key,
            pid = holder.map(|h| h.pid),
            command = holder.map(|h| platform::command_line(h.pid)),
            "fenced commit refused: {why}"
        );
        if let Some(temp) = &request.temp
            && let Err(err) = self.root.remove(temp)
        {
            tracing::debug!(temp = %temp, "could not remove a fenced temp file: {err}");
        }
        if let (Some(lease), Some(connection)) =
            (request.lease, self.connections.get_mut(&request.conn))
        {
            connection.uses.remove(&lease);
        }
        Reply::error(request.id, ErrorCode::Fenced, format!("fenced: {why}"))
    }

    /// The commit holds the write now: rename, then end the cycle.
    fn apply_commit(&mut self, request: CommitRequest, grant: Grant) -> Reply {
        let now = self.now();
        let Some(holder) = self.connections.get(&request.conn).map(|c| c.holder) else {
            return Reply::ok(request.id);
        };
        if let Some(temp) = &request.temp
            && let Err(err) = self.root.rename(temp, &request.key)
        {
            let actions = self.engine.finish(now, grant.lease, holder, Outcome::Read);
            self.dispatch(actions);
            return Reply::error(
                request.id,
                paths::error_code(&err),
                format!("rename: {err}"),
            );
        }
        let actions = self
            .engine
            .finish(now, grant.lease, holder, Outcome::Committed);
        if let (Some(lease), Some(connection)) =
            (request.lease, self.connections.get_mut(&request.conn))
        {
            connection.uses.remove(&lease);
        }
        let generation = self.engine.generation(&request.key);
        self.dispatch(actions);
        Reply {
            generation: Some(generation),
            ..Reply::ok(request.id)
        }
    }

    fn checked_key(&self, path: &str) -> Result<String, Reply> {
        let key = paths::normalize(path).map_err(|(code, why)| Reply::error(0, code, why))?;
        self.root
            .parent_of(&key)
            .map_err(|err| Reply::error(0, paths::error_code(&err), format!("{key}: {err}")))?;
        Ok(key)
    }

    /// Acts on the engine's decisions; granting a parked commit may decide more.
    fn dispatch(&mut self, actions: Vec<Action<String>>) {
        let mut pending: std::collections::VecDeque<Action<String>> = actions.into();
        while let Some(action) = pending.pop_front() {
            match action {
                Action::Granted { wait, grant } => {
                    let Some(parked) = self.unpark(wait) else {
                        continue;
                    };
                    let (conn, reply) = match parked {
                        Parked::Acquire {
                            conn,
                            id,
                            key,
                            append,
                        } => (conn, self.grant_use(conn, id, key, append, grant)),
                        Parked::Commit(request) => {
                            let conn = request.conn;
                            let reply = match self.fence_moved_cycle(&request) {
                                Some(reply) => {
                                    let now = self.now();
                                    let holder = self.holder(conn);
                                    pending.extend(self.engine.finish(
                                        now,
                                        grant.lease,
                                        holder,
                                        Outcome::Read,
                                    ));
                                    reply
                                }
                                None => self.apply_commit(request, grant),
                            };
                            (conn, reply)
                        }
                    };
                    self.send(conn, &to_line(&reply));
                }
                Action::Fenced { wait } => {
                    if let Some(Parked::Commit(request)) = self.unpark(wait) {
                        let conn = request.conn;
                        let reply = self
                            .refuse_fenced(request, "the file changed since this process read it");
                        self.send(conn, &to_line(&reply));
                    }
                }
                Action::TimedOut { wait } => {
                    if let Some(parked) = self.unpark(wait) {
                        let (conn, id) = match parked {
                            Parked::Acquire { conn, id, .. } => (conn, id),
                            Parked::Commit(request) => (request.conn, request.id),
                        };
                        let reply = Reply::error(id, ErrorCode::Timeout, "waited past the limit");
                        self.send(conn, &to_line(&reply));
                    }
                }
                Action::Abandoned { wait } => {
                    self.unpark(wait);
                }
                Action::Revoked {
                    key,
                    holder,
                    reason,
                } => self.mark_revoked(&key, holder, reason),
            }
        }
    }

    fn unpark(&mut self, wait: WaitId) -> Option<Parked> {
        let parked = self.parked.remove(&wait)?;
        let conn = match &parked {
            Parked::Acquire { conn, .. } => *conn,
            Parked::Commit(request) => request.conn,
        };
        if let Some(connection) = self.connections.get_mut(&conn) {
            connection.waits.retain(|w| *w != wait);
        }
        Some(parked)
    }

    fn mark_revoked(&mut self, key: &str, holder: ProcessId, reason: crate::lease::EndReason) {
        let reason = match reason {
            crate::lease::EndReason::MaxHold => "max_hold",
            crate::lease::EndReason::Manual => "manual",
        };
        tracing::warn!(path = %key, pid = holder.pid, reason, "lease revoked");
        for connection in self.connections.values_mut() {
            if connection.holder != holder {
                continue;
            }
            for (lease, taken) in connection.uses.iter_mut() {
                if taken.key == key && !taken.revoked {
                    taken.revoked = true;
                    let event = Event {
                        event: "revoked".into(),
                        lease: *lease,
                        path: key.to_string(),
                        reason: reason.into(),
                    };
                    let _ = connection.outbox.send(to_line(&event));
                }
            }
        }
    }

    fn send(&self, conn: ConnId, line: &str) {
        if let Some(connection) = self.connections.get(&conn) {
            let _ = connection.outbox.send(line.to_string());
        }
    }
}

impl Reply {
    fn with_id(mut self, id: u64) -> Reply {
        self.id = id;
        self
    }
}

/// Reads one line of at most MAX_LINE_BYTES; None at end of stream.
async fn read_line_limited<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok((!line.is_empty()).then(|| String::from_utf8_lossy(&line).into_owned()));
        }
        let (taken, done) = match available.iter().position(|b| *b == b'\n') {
            Some(at) => (at + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > MAX_LINE_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("request line longer than {MAX_LINE_BYTES} bytes"),
            ));
        }
        if done {
            return Ok(Some(String::from_utf8_lossy(&line).into_owned()));
        }
    }
}
