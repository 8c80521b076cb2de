//! The daemon: connections in, lease driver calls out, renames done here.
//!
//! Every connection is one client process, named by the kernel (SO_PEERCRED) and its start
//! time. The driver's holder is that process; a connection's leases end when it closes, at
//! once when the process died, after the engine's linger when it merely hung up.
//!
//! The connection table sits behind one mutex, held only for map updates: never while the
//! driver is called, since the driver answers parked requests through continuations that
//! take it. A request the driver parks is answered by its continuation, on whichever thread
//! the answer comes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::endpoint;
use super::paths::{self, Root};
use super::protocol::{
    ErrorCode, Event, MAX_LINE_BYTES, PROTOCOL_VERSION, Reply, Request, WireIntent, parse_request,
    to_line,
};
use crate::control::events;
use crate::driver::{Answer, Asker, Driver, Frontend, Refusal};
use crate::fastmap::HashMap;
use crate::lease::{Ask, EndReason, Grant, Intent, LeaseId, Outcome, Policy, WaitId};
use crate::platform::{self, ProcessId};

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
    /// The files of read acquires asked of the driver and not answered yet: another read
    /// of the same process is a second cycle even before this one is granted. They go
    /// with the connection when it closes.
    reads_in_flight: Vec<String>,
}

#[derive(Clone)]
struct CommitRequest {
    conn: ConnId,
    holder: ProcessId,
    id: u64,
    key: String,
    temp: Option<String>,
    lease: Option<u64>,
}

#[derive(Default)]
struct Connections {
    by_id: HashMap<ConnId, Connection>,
    count_of: HashMap<ProcessId, usize>,
    next_id: u64,
}

impl Connections {
    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// A read acquire of `conn` on `key` was answered.
    fn read_answered(&mut self, conn: ConnId, key: &str) {
        if let Some(connection) = self.by_id.get_mut(&conn)
            && let Some(at) = connection.reads_in_flight.iter().position(|k| k == key)
        {
            connection.reads_in_flight.swap_remove(at);
        }
    }
}

/// What every task of the daemon shares.
struct Shared {
    driver: Arc<Driver<String>>,
    root: Root,
    connections: Mutex<Connections>,
    /// Held from judging whether a read is a second cycle of its process until the driver
    /// has it, so that two reads of one process are judged in the order they are asked.
    /// Never taken by a continuation.
    judging: Mutex<()>,
}

/// A daemon serving one root; cheap to clone into tasks.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    pub fn new(root: &std::path::Path, policy: Policy) -> std::io::Result<Server> {
        let shared = Arc::new(Shared {
            driver: Driver::start(policy)?,
            root: Root::open(root)?,
            connections: Mutex::new(Connections::default()),
            judging: Mutex::new(()),
        });
        let frontend: Arc<dyn Frontend<String>> = shared.clone();
        shared.driver.attach(Arc::downgrade(&frontend));
        Ok(Server { shared })
    }

    pub fn root(&self) -> PathBuf {
        self.shared.root.path().to_path_buf()
    }

    /// Accepts connections on `listener`, forever (the driver runs the timers).
    pub async fn run(self, listener: tokio::net::UnixListener) -> std::io::Result<()> {
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
        let conn = self.shared.register(holder, outbox.clone());
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
                Ok(request) => self.shared.handle(conn, holder, request),
            };
            if let Some(reply) = reply {
                let _ = outbox.send(to_line(&reply));
            }
        };
        self.shared.unregister(conn);
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
}

impl Frontend<String> for Shared {
    fn describe(&self, key: &String) -> String {
        key.clone()
    }

    /// Tells the holder's connections that their uses of `key` are gone.
    fn revoked(&self, key: &String, holder: ProcessId, reason: EndReason) {
        let reason = match reason {
            EndReason::MaxHold => "max_hold",
            EndReason::Manual => "manual",
        };
        let mut connections = self.connections.lock();
        for connection in connections.by_id.values_mut() {
            if connection.holder != holder {
                continue;
            }
            for (lease, taken) in connection.uses.iter_mut() {
                if taken.key == *key && !taken.revoked {
                    taken.revoked = true;
                    let event = Event {
                        event: "revoked".into(),
                        lease: *lease,
                        path: key.clone(),
                        reason: reason.into(),
                    };
                    let _ = connection.outbox.send(to_line(&event));
                }
            }
        }
    }
}

impl Shared {
    fn register(&self, holder: ProcessId, outbox: mpsc::UnboundedSender<String>) -> ConnId {
        let mut connections = self.connections.lock();
        let conn = connections.fresh_id();
        connections.by_id.insert(
            conn,
            Connection {
                holder,
                outbox,
                uses: HashMap::default(),
                waits: Vec::new(),
                reads_in_flight: Vec::new(),
            },
        );
        *connections.count_of.entry(holder).or_default() += 1;
        drop(connections);
        // Watched from the start: a process that hung up and then dies frees its
        // lingering leases at once.
        self.driver.watch(holder);
        conn
    }

    fn unregister(&self, conn: ConnId) {
        let mut connections = self.connections.lock();
        let Some(connection) = connections.by_id.remove(&conn) else {
            return;
        };
        let holder = connection.holder;
        let last = {
            let count = connections.count_of.entry(holder).or_default();
            *count = count.saturating_sub(1);
            *count == 0
        };
        if last {
            connections.count_of.remove(&holder);
        }
        drop(connections);
        for wait in connection.waits {
            self.driver.cancel(wait);
        }
        if last && !platform::is_alive(holder) {
            self.driver.process_exited(holder);
            return;
        }
        for taken in connection.uses.into_values() {
            if !taken.released {
                self.driver
                    .finish(taken.engine_lease, holder, Outcome::Read);
            }
        }
    }

    fn handle(
        self: &Arc<Self>,
        conn: ConnId,
        holder: ProcessId,
        request: Request,
    ) -> Option<Reply> {
        match request {
            Request::Hello { .. } => unreachable!("hello is answered before"),
            Request::Acquire {
                id,
                path,
                intent,
                wait_ms,
            } => self.acquire(conn, holder, id, &path, intent, wait_ms),
            Request::Renew { id, lease } => Some(self.renew(conn, id, lease)),
            Request::Release { id, lease } => Some(self.release(conn, holder, id, lease)),
            Request::Commit {
                id,
                path,
                lease,
                temp,
                wait_ms,
            } => self.commit(conn, holder, id, &path, lease, temp.as_deref(), wait_ms),
        }
    }

    /// Asks the driver; the continuation answers the client, now or once the wait ends.
    fn ask_driver(
        self: &Arc<Self>,
        conn: ConnId,
        key: String,
        holder: ProcessId,
        ask: Ask,
        answer: impl FnOnce(&Arc<Shared>, Answer) -> Option<Reply> + Send + 'static,
    ) {
        let shared = Arc::clone(self);
        let asker = Asker {
            process: holder,
            thread: None,
        };
        let run = Box::new(move |outcome: Answer| {
            if let Some(reply) = answer(&shared, outcome) {
                shared.send(conn, &to_line(&reply));
            }
        });
        if let Some(wait) = self.driver.request(key, asker, ask, run)
            && let Some(connection) = self.connections.lock().by_id.get_mut(&conn)
        {
            connection.waits.push(wait);
        }
    }

    fn acquire(
        self: &Arc<Self>,
        conn: ConnId,
        holder: ProcessId,
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
        let _judging = self.judging.lock();
        let concurrent = {
            let mut connections = self.connections.lock();
            if let Some(connection) = connections.by_id.get_mut(&conn) {
                connection
                    .uses
                    .retain(|_, taken| !(taken.released && taken.key == key));
            }
            let concurrent = !append
                && connections
                    .by_id
                    .values()
                    .filter(|other| other.holder == holder)
                    .any(|other| {
                        other.reads_in_flight.contains(&key)
                            || other
                                .uses
                                .values()
                                .any(|taken| taken.key == key && !taken.released && !taken.append)
                    });
            if !append && let Some(connection) = connections.by_id.get_mut(&conn) {
                connection.reads_in_flight.push(key.clone());
            }
            concurrent
        };
        let ask = Ask {
            concurrent,
            max_wait: wait_ms.map(Duration::from_millis),
            ..Ask::new(engine_intent)
        };
        self.ask_driver(conn, key.clone(), holder, ask, move |shared, answer| {
            if !matches!(answer, Ok(granted) if !granted.out_of_turn) && !append {
                shared.connections.lock().read_answered(conn, &key);
            }
            match answer {
                // An acquire holds no kernel lock: it is never let through out of turn.
                Ok(granted) if !granted.out_of_turn => {
                    shared.grant_use(conn, holder, id, key, append, granted.grant)
                }
                Ok(_) | Err(Refusal::Fenced) => Some(Reply::error(id, ErrorCode::Fenced, "fenced")),
                Err(Refusal::TimedOut) => Some(Reply::error(
                    id,
                    ErrorCode::Timeout,
                    "waited past the limit",
                )),
                Err(Refusal::Abandoned) => None,
            }
        });
        None
    }

    /// Records a granted acquire; a connection gone meanwhile gives the lease back.
    fn grant_use(
        &self,
        conn: ConnId,
        holder: ProcessId,
        id: u64,
        key: String,
        append: bool,
        grant: Grant,
    ) -> Option<Reply> {
        let mut connections = self.connections.lock();
        if !append {
            connections.read_answered(conn, &key);
        }
        let lease = connections.fresh_id();
        let Some(connection) = connections.by_id.get_mut(&conn) else {
            drop(connections);
            self.driver.finish(grant.lease, holder, Outcome::Read);
            return None;
        };
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
        Some(Reply {
            lease: Some(lease),
            generation: Some(grant.generation),
            ..Reply::ok(id)
        })
    }

    fn renew(&self, conn: ConnId, id: u64, lease: u64) -> Reply {
        let max_hold_ms = self.driver.policy().max_hold.as_millis() as u64;
        let taken = self
            .connections
            .lock()
            .by_id
            .get(&conn)
            .and_then(|connection| connection.uses.get(&lease))
            .map(|taken| (taken.key.clone(), taken.revoked));
        match taken {
            None => Reply::error(id, ErrorCode::UnknownLease, format!("no lease {lease}")),
            Some((key, revoked)) => Reply {
                held: Some(!revoked),
                max_hold_ms: Some(max_hold_ms),
                generation: Some(self.driver.generation(&key)),
                ..Reply::ok(id)
            },
        }
    }

    fn release(&self, conn: ConnId, holder: ProcessId, id: u64, lease: u64) -> Reply {
        let mut connections = self.connections.lock();
        let Some(connection) = connections.by_id.get_mut(&conn) else {
            return Reply::ok(id);
        };
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
        drop(connections);
        self.driver.finish(engine_lease, holder, Outcome::Read);
        Reply::ok(id)
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        self: &Arc<Self>,
        conn: ConnId,
        holder: ProcessId,
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
        if let Some(lease) = lease {
            match self.commit_append(conn, holder, id, &key, lease, temp.is_some()) {
                AppendCommit::NotAnAppend => {}
                AppendCommit::Answered(reply) => return Some(reply),
            }
        }
        let request = CommitRequest {
            conn,
            holder,
            id,
            key,
            temp,
            lease,
        };
        if let Some(reply) = self.fence_moved_cycle(&request) {
            return Some(reply);
        }
        let ask = Ask {
            max_wait: wait_ms.map(Duration::from_millis),
            ..Ask::new(Intent::Write)
        };
        let key = request.key.clone();
        self.ask_driver(conn, key, holder, ask, move |shared, answer| match answer {
            Ok(granted) if !granted.out_of_turn => {
                let grant = granted.grant;
                match shared.fence_moved_cycle(&request) {
                    Some(reply) => {
                        shared.driver.finish(grant.lease, holder, Outcome::Read);
                        Some(reply)
                    }
                    None => Some(shared.apply_commit(request, grant)),
                }
            }
            Ok(_) | Err(Refusal::Fenced) => Some(shared.refuse_fenced(request, None)),
            Err(Refusal::TimedOut) => Some(Reply::error(
                request.id,
                ErrorCode::Timeout,
                "waited past the limit",
            )),
            Err(Refusal::Abandoned) => None,
        });
        None
    }

    /// A commit naming an append use: it ends that use (appends commit no temp).
    fn commit_append(
        &self,
        conn: ConnId,
        holder: ProcessId,
        id: u64,
        key: &str,
        lease: u64,
        has_temp: bool,
    ) -> AppendCommit {
        let mut connections = self.connections.lock();
        let Some(connection) = connections.by_id.get_mut(&conn) else {
            return AppendCommit::Answered(Reply::ok(id));
        };
        let Some(taken) = connection.uses.get(&lease) else {
            return AppendCommit::Answered(Reply::error(
                id,
                ErrorCode::UnknownLease,
                format!("no lease {lease}"),
            ));
        };
        if taken.key != key {
            return AppendCommit::Answered(Reply::error(
                id,
                ErrorCode::BadRequest,
                format!("lease {lease} is on {}, not {key}", taken.key),
            ));
        }
        if !taken.append {
            return AppendCommit::NotAnAppend;
        }
        if has_temp {
            return AppendCommit::Answered(Reply::error(
                id,
                ErrorCode::BadRequest,
                "an append commits no temp",
            ));
        }
        let engine_lease = taken.engine_lease;
        let released = taken.released;
        connection.uses.remove(&lease);
        drop(connections);
        if released {
            return AppendCommit::Answered(Reply::ok(id));
        }
        self.driver.finish(engine_lease, holder, Outcome::Committed);
        AppendCommit::Answered(Reply {
            generation: Some(self.driver.generation(&key.to_string())),
            ..Reply::ok(id)
        })
    }

    /// Fencing per cycle: the engine fences per process; a cycle named by its lease is also
    /// refused when anyone (even another cycle of the same process) committed since its grant.
    fn fence_moved_cycle(&self, request: &CommitRequest) -> Option<Reply> {
        let lease = request.lease?;
        let (granted_at, engine_lease, released, revoked) = {
            let connections = self.connections.lock();
            let taken = connections.by_id.get(&request.conn)?.uses.get(&lease)?;
            (
                taken.generation,
                taken.engine_lease,
                taken.released,
                taken.revoked,
            )
        };
        let current = self.driver.generation(&request.key);
        if granted_at == current {
            return None;
        }
        let why = format!(
            "the file moved from generation {granted_at} to {current} during this cycle{}",
            if revoked {
                " (its lease was revoked)"
            } else {
                ""
            }
        );
        if !released {
            self.driver
                .finish(engine_lease, request.holder, Outcome::Read);
        }
        Some(self.refuse_fenced(request.clone(), Some(&why)))
    }

    /// Refuses a commit; `why` when this daemon decided it (the driver logs its own).
    fn refuse_fenced(&self, request: CommitRequest, why: Option<&str>) -> Reply {
        if let Some(why) = why {
            events::fenced_commit(&request.key, request.holder, None, why);
        }
        if let Some(temp) = &request.temp
            && let Err(err) = self.root.remove(temp)
        {
            tracing::debug!(temp = %temp, "could not remove a fenced temp file: {err}");
        }
        if let Some(lease) = request.lease
            && let Some(connection) = self.connections.lock().by_id.get_mut(&request.conn)
        {
            connection.uses.remove(&lease);
        }
        let why = why.unwrap_or("the file changed since this process read it");
        Reply::error(request.id, ErrorCode::Fenced, format!("fenced: {why}"))
    }

    /// The commit holds the write now: rename, then end the cycle.
    fn apply_commit(&self, request: CommitRequest, grant: Grant) -> Reply {
        let holder = request.holder;
        if let Some(temp) = &request.temp
            && let Err(err) = self.root.rename(temp, &request.key)
        {
            self.driver.finish(grant.lease, holder, Outcome::Read);
            return Reply::error(
                request.id,
                paths::error_code(&err),
                format!("rename: {err}"),
            );
        }
        if let Some(lease) = request.lease
            && let Some(connection) = self.connections.lock().by_id.get_mut(&request.conn)
        {
            connection.uses.remove(&lease);
        }
        self.driver.finish(grant.lease, holder, Outcome::Committed);
        Reply {
            generation: Some(self.driver.generation(&request.key)),
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

    fn send(&self, conn: ConnId, line: &str) {
        let mut connections = self.connections.lock();
        if let Some(connection) = connections.by_id.get_mut(&conn) {
            let _ = connection.outbox.send(line.to_string());
        }
    }
}

enum AppendCommit {
    NotAnAppend,
    Answered(Reply),
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
