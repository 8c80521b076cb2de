//! Leases across hosts, coordinated through etcd.
//!
//! The local engine still decides among the processes of one host. A host takes a file's
//! *cluster lease* before the engine may grant the file locally, and keeps it while its own
//! processes use the file. In etcd a file is a queue (the etcd lock recipe):
//!
//! ```text
//! <prefix>/q/<path>\0<session>.<n>  one key per host that holds or wants the file, attached
//!                                   to that host's session lease (a new <n> each time in
//!                                   line); the lowest create revision holds, each other
//!                                   host watches the key just ahead of its own
//! <prefix>/g/<path>                 written at the first save of each hold: its mod
//!                                   revision is the file's cluster-wide generation
//! <prefix>/s/<session>              lives as long as the host's session
//! ```
//!
//! # Invariants
//! - A host lets a write through only after a transaction that succeeds only while its
//!   queue key still stands first ([`Cluster::confirm`]); so a host whose session expired
//!   (stalled past the TTL, cut off from etcd) cannot save over another host's commit.
//! - A host that takes a file's cluster lease reads the file's generation key; when another
//!   host saved since this host last knew it, the caller tells the local engine, whose
//!   fencing then refuses every local save built on an older read ([`Acquired::external`]).
//! - Nothing is granted while etcd cannot be reached: requests wait, then fail at their
//!   limit (fail closed).

pub mod etcd;
mod session;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::etcd::{Etcd, EtcdError, WatchEvent};
use crate::fastmap::HashMap;

/// How long one etcd request may take before the next endpoint is tried.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between attempts while etcd cannot be reached.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    /// Key prefix shared by the hosts of one directory.
    pub prefix: String,
    /// The session lease's TTL: how long a dead or cut-off host keeps its files.
    pub ttl: Duration,
}

/// What happened to this host's cluster leases, for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Another host waits for a file this host holds or waits for (the cluster records
    /// which: [`Cluster::is_contended`]).
    Contended,
    /// The session expired: these files' cluster leases are gone.
    Lost(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterError {
    /// etcd could not be reached (the last error).
    Unreachable(String),
    /// The deadline passed while another host held the file.
    TimedOut,
    /// This host no longer holds the file's cluster lease.
    Lost,
}

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClusterError::Unreachable(why) => write!(f, "etcd cannot be reached: {why}"),
            ClusterError::TimedOut => write!(f, "another host held the file until the deadline"),
            ClusterError::Lost => write!(f, "this host's cluster lease on the file was lost"),
        }
    }
}

/// A cluster lease taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Acquired {
    /// Another host saved the file since this host last knew its generation.
    pub external: bool,
}

/// What `lockfs status` shows of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterHealth {
    pub endpoints: Vec<String>,
    /// Why etcd is not usable now, if it is not.
    pub problem: Option<String>,
    pub files_held: usize,
    pub files_queued: usize,
}

#[derive(Clone, Copy, Debug, Default)]
struct FileState {
    /// The create revision of this host's queue key, while it has one.
    queued: Option<i64>,
    /// Which of this host's queue keys for the file that is: each wait in line puts a
    /// key of its own, so that deleting the last one can never delete the next.
    place: u64,
    held: bool,
    /// The file's generation key's mod revision when this host last knew it.
    known_generation: Option<i64>,
    /// Another host waits for the file (seen in its queue).
    contended: bool,
    /// This hold has moved the file's generation already: later saves of the same hold
    /// only check that it still stands.
    saved: bool,
}

pub struct Cluster {
    etcd: Etcd,
    prefix: String,
    ttl: Duration,
    host: String,
    /// The session lease, once granted (every queue key hangs on it).
    session: Mutex<Option<i64>>,
    files: Mutex<HashMap<String, FileState>>,
    problem: Mutex<Option<String>>,
    /// Queue keys this host failed to delete (etcd was away): retried by the session thread.
    leftovers: Mutex<Vec<Vec<u8>>>,
    events: OnceLock<Box<dyn Fn(ClusterEvent) + Send + Sync>>,
    stopped: AtomicBool,
    /// Numbers this host's queue keys (see `FileState::place`).
    places: AtomicU64,
}

impl Cluster {
    /// Checks the endpoints and starts the session threads. etcd need not be up yet.
    pub fn start(config: ClusterConfig) -> Result<Arc<Cluster>, String> {
        let etcd = Etcd::new(&config.endpoints, REQUEST_TIMEOUT).map_err(|e| e.to_string())?;
        let host = format!(
            "{}:{}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_string())
                .unwrap_or_else(|_| "host".into()),
            std::process::id()
        );
        let cluster = Arc::new(Cluster {
            etcd,
            prefix: config.prefix.trim_end_matches('/').to_string(),
            ttl: config.ttl.max(Duration::from_secs(1)),
            host,
            session: Mutex::new(None),
            files: Mutex::new(HashMap::default()),
            problem: Mutex::new(None),
            leftovers: Mutex::new(Vec::new()),
            events: OnceLock::new(),
            stopped: AtomicBool::new(false),
            places: AtomicU64::new(0),
        });
        if let Err(e) = cluster.session() {
            tracing::warn!("etcd: {e}; managed files wait until it answers");
        }
        session::spawn_threads(&cluster).map_err(|e| format!("start the etcd threads: {e}"))?;
        Ok(cluster)
    }

    /// Where the cluster's events go (once).
    pub fn on_event(&self, sink: impl Fn(ClusterEvent) + Send + Sync + 'static) {
        let _ = self.events.set(Box::new(sink));
    }

    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        if let Some(id) = self.session.lock().take() {
            let _ = self.etcd.lease_revoke(id);
        }
    }

    pub fn health(&self) -> ClusterHealth {
        let files = self.files.lock();
        ClusterHealth {
            endpoints: self.etcd.endpoints().to_vec(),
            problem: self.problem.lock().clone(),
            files_held: files.values().filter(|file| file.held).count(),
            files_queued: files
                .values()
                .filter(|file| !file.held && file.queued.is_some())
                .count(),
        }
    }

    pub fn holds(&self, path: &str) -> bool {
        self.files.lock().get(path).is_some_and(|file| file.held)
    }

    /// Takes the cluster lease on `path`, waiting behind other hosts until `deadline`.
    pub fn acquire(&self, path: &str, deadline: Instant) -> Result<Acquired, ClusterError> {
        let mut last_error = None;
        loop {
            if Instant::now() >= deadline {
                self.leave_queue(path);
                return Err(match last_error {
                    Some(EtcdError::Unreachable(why)) => ClusterError::Unreachable(why),
                    Some(EtcdError::Protocol(why)) => ClusterError::Unreachable(why),
                    None => ClusterError::TimedOut,
                });
            }
            match self.try_step(path, deadline) {
                Ok(Some(acquired)) => {
                    self.healthy();
                    return Ok(acquired);
                }
                Ok(None) => {
                    self.healthy();
                    last_error = None;
                }
                Err(e) => {
                    self.unhealthy(&e);
                    last_error = Some(e);
                    let pause = RETRY_PAUSE.min(deadline.saturating_duration_since(Instant::now()));
                    std::thread::sleep(pause);
                }
            }
        }
    }

    /// One round: queue up if needed, then hold, or wait for the host just ahead (None).
    fn try_step(&self, path: &str, deadline: Instant) -> Result<Option<Acquired>, EtcdError> {
        if self.holds(path) {
            return Ok(Some(Acquired { external: false }));
        }
        let session = self.session()?;
        let queued = self
            .files
            .lock()
            .get(path)
            .and_then(|file| file.queued.map(|_| file.place));
        let mine = match queued {
            Some(place) => self.queue_key(path, session, place),
            None => {
                let place = self.places.fetch_add(1, Ordering::Relaxed);
                let mine = self.queue_key(path, session, place);
                let revision = self.etcd.put(&mine, self.host.as_bytes(), session)?;
                let mut files = self.files.lock();
                let file = files.entry(path.to_string()).or_default();
                file.queued = Some(revision);
                file.place = place;
                mine
            }
        };
        let (line, read_at) = self.etcd.range_prefix(&self.queue_prefix(path))?;
        let Some(place) = line.iter().position(|kv| kv.key == mine) else {
            // Our key is gone: the session expired under us. Queue again.
            self.files
                .lock()
                .entry(path.to_string())
                .or_default()
                .queued = None;
            return Ok(None);
        };
        // The key's own create revision (a put over a key that outlived a failed delete
        // keeps the old one), which every confirmation compares against.
        self.files
            .lock()
            .entry(path.to_string())
            .or_default()
            .queued = Some(line[place].create_revision);
        if place == 0 {
            return self.take(path, line.len() > 1).map(Some);
        }
        let ahead = line[place - 1].key.clone();
        let until = deadline.min(Instant::now() + self.ttl);
        self.etcd.watch_prefix(
            &self.queue_prefix(path),
            read_at + 1,
            until,
            |event| !matches!(event, WatchEvent::Delete(kv) if kv.key == ahead),
        )?;
        Ok(None)
    }

    /// This host's key stands first: the lease is ours. Reads the file's generation.
    fn take(&self, path: &str, contended: bool) -> Result<Acquired, EtcdError> {
        let (generation, _) = self.etcd.get(&self.generation_key(path))?;
        let now = generation.map(|kv| kv.mod_revision);
        let mut files = self.files.lock();
        let file = files.entry(path.to_string()).or_default();
        let external = now != file.known_generation;
        file.known_generation = now;
        file.held = true;
        file.saved = false;
        file.contended |= contended;
        Ok(Acquired { external })
    }

    /// Whether another host waits for `path`, which this host holds.
    pub fn is_contended(&self, path: &str) -> bool {
        self.files
            .lock()
            .get(path)
            .is_some_and(|file| file.held && file.contended)
    }

    /// Before a write goes through: succeeds only while this host's queue key stands
    /// (the transaction compares its create revision). The first save of a hold also
    /// moves the file's generation key, which is all a host taking the file next needs
    /// to know: someone saved since it last held the file.
    pub fn confirm(&self, path: &str) -> Result<(), ClusterError> {
        let (queued, place, saved) = {
            let files = self.files.lock();
            match files.get(path) {
                Some(FileState {
                    held: true,
                    queued: Some(revision),
                    place,
                    saved,
                    ..
                }) => (*revision, *place, *saved),
                _ => return Err(ClusterError::Lost),
            }
        };
        let session = (*self.session.lock()).ok_or(ClusterError::Lost)?;
        let mine = self.queue_key(path, session, place);
        // etcd may be electing a leader: the session outlives that by design, so the save
        // tries again for up to one TTL before it is refused.
        let give_up = Instant::now() + self.ttl;
        let result = loop {
            let result = if saved {
                self.etcd.get(&mine).map(|(kv, _)| {
                    kv.is_some_and(|kv| kv.create_revision == queued)
                        .then_some(0)
                })
            } else {
                self.etcd.put_if_created(
                    &mine,
                    queued,
                    &self.generation_key(path),
                    self.host.as_bytes(),
                )
            };
            match result {
                // Unreachable, or "leader changed" while a member is replaced: retried.
                Err(_) if Instant::now() < give_up => std::thread::sleep(RETRY_PAUSE),
                other => break other,
            }
        };
        match result {
            Ok(Some(revision)) => {
                self.healthy();
                if let Some(file) = self.files.lock().get_mut(path)
                    && !saved
                {
                    file.known_generation = Some(revision);
                    file.saved = true;
                }
                Ok(())
            }
            Ok(None) => {
                self.healthy();
                self.forget_hold(path);
                Err(ClusterError::Lost)
            }
            Err(e) => {
                self.unhealthy(&e);
                Err(ClusterError::Unreachable(e.to_string()))
            }
        }
    }

    /// Gives the cluster lease on `path` back (the next host in line gets it). A file that
    /// is `gone` loses its generation key first, while this host still holds it: a temp
    /// file renamed into place leaves nothing behind in etcd, and a host that knew the
    /// file's generation sees the key's absence as a change.
    pub fn release(&self, path: &str, gone: bool) {
        if gone
            && self.holds(path)
            && let Err(e) = self.etcd.delete(&self.generation_key(path))
        {
            self.unhealthy(&e);
        }
        self.leave_queue(path);
        if gone {
            self.files.lock().remove(path);
        }
    }

    fn leave_queue(&self, path: &str) {
        let was = {
            let mut files = self.files.lock();
            let Some(file) = files.get_mut(path) else {
                return;
            };
            let was = file.queued.take().map(|_| file.place);
            file.held = false;
            file.contended = false;
            was
        };
        let Some(place) = was else {
            return;
        };
        let Some(session) = *self.session.lock() else {
            return;
        };
        let mine = self.queue_key(path, session, place);
        if let Err(e) = self.etcd.delete(&mine) {
            self.unhealthy(&e);
            self.leftovers.lock().push(mine);
        }
    }

    fn forget_hold(&self, path: &str) {
        if let Some(file) = self.files.lock().get_mut(path) {
            file.held = false;
            file.queued = None;
        }
    }

    /// The session lease, granted now if there is none.
    fn session(&self) -> Result<i64, EtcdError> {
        let mut session = self.session.lock();
        if let Some(id) = *session {
            return Ok(id);
        }
        let id = self.etcd.lease_grant(self.ttl.as_secs().max(1) as i64)?;
        // A key that lives exactly as long as the session: what tells an expired session
        // from a keep-alive answered without a TTL while etcd changes leaders.
        self.etcd
            .put(&self.session_key(id), self.host.as_bytes(), id)?;
        tracing::info!(session = format!("{id:x}"), host = %self.host, "etcd session started");
        *session = Some(id);
        Ok(id)
    }

    fn session_key(&self, id: i64) -> Vec<u8> {
        format!("{}/s/{id:016x}", self.prefix).into_bytes()
    }

    /// Whether session `id` still exists: its key does. None when etcd cannot tell now.
    fn session_alive(&self, id: i64) -> Option<bool> {
        let (kv, _) = self.etcd.get(&self.session_key(id)).ok()?;
        Some(kv.is_some_and(|kv| kv.lease == id))
    }

    /// The session expired: every cluster lease of this host is gone.
    fn session_lost(&self, id: i64) {
        {
            let mut session = self.session.lock();
            if *session != Some(id) {
                return;
            }
            *session = None;
        }
        let lost: Vec<String> = {
            let mut files = self.files.lock();
            let lost = files
                .iter()
                .filter(|(_, file)| file.held)
                .map(|(path, _)| path.clone())
                .collect();
            for file in files.values_mut() {
                file.held = false;
                file.queued = None;
                file.contended = false;
            }
            lost
        };
        tracing::warn!(
            files = lost.len(),
            "etcd session expired; this host's cluster leases are gone"
        );
        self.emit(ClusterEvent::Lost(lost));
    }

    fn emit(&self, event: ClusterEvent) {
        if let Some(sink) = self.events.get() {
            sink(event);
        }
    }

    fn healthy(&self) {
        let mut problem = self.problem.lock();
        if problem.take().is_some() {
            tracing::info!("etcd answers again");
        }
    }

    fn unhealthy(&self, e: &EtcdError) {
        let mut problem = self.problem.lock();
        if problem.is_none() {
            tracing::warn!(
                "etcd: {e}; managed files wait (and fail at their limit) until it answers"
            );
        }
        *problem = Some(e.to_string());
    }

    fn queue_root(&self) -> Vec<u8> {
        format!("{}/q/", self.prefix).into_bytes()
    }

    fn queue_prefix(&self, path: &str) -> Vec<u8> {
        let mut key = self.queue_root();
        key.extend_from_slice(path.as_bytes());
        key.push(0);
        key
    }

    fn queue_key(&self, path: &str, session: i64, place: u64) -> Vec<u8> {
        let mut key = self.queue_prefix(path);
        key.extend_from_slice(format!("{session:016x}.{place:x}").as_bytes());
        key
    }

    fn generation_key(&self, path: &str) -> Vec<u8> {
        format!("{}/g/{path}", self.prefix).into_bytes()
    }

    /// The file and session a queue key names.
    fn parse_queue_key(&self, key: &[u8]) -> Option<(String, i64)> {
        let rest = key.strip_prefix(self.queue_root().as_slice())?;
        let split = rest.iter().rposition(|&b| b == 0)?;
        let path = String::from_utf8(rest[..split].to_vec()).ok()?;
        let tail = std::str::from_utf8(&rest[split + 1..]).ok()?;
        let session = tail.split('.').next()?;
        let session = i64::from_str_radix(session, 16).ok()?;
        Some((path, session))
    }
}
