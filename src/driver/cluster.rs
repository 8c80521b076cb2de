//! The driver's side of the cluster ([`crate::cluster`]): a request on a file whose cluster
//! lease this host does not hold waits here, before the engine sees it; a write is
//! confirmed in etcd before its continuation runs; files this host no longer uses are
//! given back.
//!
//! Only requests a save can rest on take part: opens (reads and in-place writes) and
//! renames or links onto a name. Creates, unlinks and renames away go straight to the
//! engine, so a temp file costs etcd nothing.
//!
//! # Why a locked request may wait here
//! The engine never parks a request that holds a kernel directory lock, because a local
//! holder may need that lock to finish. Here no local process holds the file: this host
//! grants nothing locally without the cluster lease, and gives the lease back only once
//! the engine has nobody on the file. The other host's holders do not need this kernel's
//! locks. A locked request still waits at most [`LOCKED_WAIT`], so a directory lock is
//! never held for long behind another host.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::{Answer, Asker, Continuation, Driver, Granted, Key, Refusal, deliver};
use crate::cluster::{Cluster, ClusterError, ClusterEvent, ClusterHealth};
use crate::fastmap::HashMap;
use crate::lease::{Ask, Intent, Outcome, WaitId};
use crate::platform::{self, ProcessId};

/// Wait ids of requests parked here carry this bit; the engine's never do.
const CLUSTER_WAIT: u64 = 1 << 63;
/// How long a request that holds a kernel lock waits for another host.
const LOCKED_WAIT: Duration = Duration::from_secs(2);
/// How long this host keeps admitting new local cycles once another host waits.
const FAIRNESS: Duration = Duration::from_millis(100);
/// How long a file nobody else wants stays held after its last local use.
const STICKY: Duration = Duration::from_secs(1);

pub(super) struct ClusterLink<K> {
    pub(super) cluster: Arc<Cluster>,
    state: Mutex<LinkState<K>>,
}

struct LinkState<K> {
    pending: HashMap<K, Pending>,
    ids: HashMap<WaitId, K>,
    held: HashMap<K, HeldFile>,
    next_id: u64,
}

struct Pending {
    acquiring: bool,
    requests: VecDeque<Waiting>,
}

impl Pending {
    /// Marks an acquisition as started for these requests, unless one runs already; the
    /// deadline it has (the earliest of theirs).
    fn claim(&mut self) -> Option<Duration> {
        let deadline = self.requests.iter().map(|waiting| waiting.deadline).min()?;
        (!self.acquiring).then(|| {
            self.acquiring = true;
            deadline
        })
    }
}

struct Waiting {
    id: WaitId,
    asker: Asker,
    ask: Ask,
    run: Continuation,
    deadline: Duration,
}

struct HeldFile {
    name: String,
    /// Requests let through to the engine that it has not seen yet: the file is not free
    /// to give back while any is on its way.
    entering: u32,
    contended_since: Option<Duration>,
    idle_since: Option<Duration>,
}

impl HeldFile {
    fn yielding(&self, now: Duration) -> bool {
        self.contended_since
            .is_some_and(|since| now.saturating_sub(since) >= FAIRNESS)
    }
}

impl<K: Key> ClusterLink<K> {
    pub(super) fn new(cluster: Arc<Cluster>) -> ClusterLink<K> {
        ClusterLink {
            cluster,
            state: Mutex::new(LinkState {
                pending: HashMap::default(),
                ids: HashMap::default(),
                held: HashMap::default(),
                next_id: 0,
            }),
        }
    }
}

/// Where a request goes after the cluster step.
pub(super) enum Step {
    /// On to the engine, with this continuation; `counted` when the request must be
    /// reported with [`Driver::entered_engine`] once the engine has it.
    Engine { run: Continuation, counted: bool },
    /// Parked until this host holds the file.
    Parked(WaitId),
}

impl<K: Key> Driver<K> {
    /// The cluster step of a request.
    pub(super) fn through_cluster(
        &self,
        key: &K,
        asker: Asker,
        ask: Ask,
        run: Continuation,
    ) -> Step {
        let Some(link) = self.cluster.as_ref() else {
            return Step::Engine {
                run,
                counted: false,
            };
        };
        if ask.locked && !ask.replaces {
            // A create, unlink, rename-away or truncate by path: no save of another host's
            // file rests on it (a save is a rename or link onto a name, or a write through
            // an open), and a temp file needs no etcd round trip.
            return Step::Engine {
                run,
                counted: false,
            };
        }
        let now = self.now();
        let mut state = link.state.lock();
        let name = match state.held.get_mut(key) {
            Some(held) if !held.yielding(now) || self.joins_holder(key, asker.process) => {
                held.entering += 1;
                Some(held.name.clone())
            }
            _ => None,
        };
        if let Some(name) = name {
            drop(state);
            let run = self.confirmed_if_write(key, name, asker.process, &ask, run);
            return Step::Engine { run, counted: true };
        }
        state.next_id += 1;
        let id = WaitId(CLUSTER_WAIT | state.next_id);
        let limit = ask.max_wait.unwrap_or(self.policy().max_wait);
        let limit = if ask.locked {
            limit.min(LOCKED_WAIT)
        } else {
            limit
        };
        let deadline = now + limit;
        let held_here = state.held.contains_key(key);
        let pending = state.pending.entry(key.clone()).or_insert(Pending {
            acquiring: false,
            requests: VecDeque::new(),
        });
        pending.requests.push_back(Waiting {
            id,
            asker,
            ask,
            run,
            deadline,
        });
        let start = !pending.acquiring && !held_here;
        if start {
            pending.acquiring = true;
        }
        state.ids.insert(id, key.clone());
        drop(state);
        tracing::trace!(path = %self.describe(key), pid = asker.process.pid, "waits for the cluster lease");
        if start {
            self.start_acquiring(key.clone(), deadline);
        }
        self.wake_timer();
        Step::Parked(id)
    }

    /// The engine has the request that [`Driver::through_cluster`] let through.
    pub(super) fn entered_engine(&self, key: &K) {
        if let Some(link) = self.cluster.as_ref()
            && let Some(held) = link.state.lock().held.get_mut(key)
        {
            held.entering = held.entering.saturating_sub(1);
        }
    }

    /// A request of a process that holds the file (or of its child) joins its cycle here
    /// too: a process never waits for itself, even while its host yields.
    fn joins_holder(&self, key: &K, process: ProcessId) -> bool {
        let holders = self.engine.lock().holders_of(key);
        let family = self.processes.family_of(process);
        holders
            .iter()
            .any(|holder| *holder == process || family.contains(&Some(*holder)))
    }

    /// Runs the acquisition of `key`'s cluster lease on a thread of its own.
    fn start_acquiring(&self, key: K, deadline: Duration) {
        let (Some(link), Some(me)) = (self.cluster.as_ref(), self.me.get()) else {
            return;
        };
        let cluster = Arc::clone(&link.cluster);
        let name = self.describe(&key);
        let deadline = self.epoch + deadline;
        let me = me.clone();
        let spawned = std::thread::Builder::new()
            .name("etcd-acquire".into())
            .spawn(move || {
                let result = cluster.acquire(&name, deadline);
                if let Some(driver) = me.upgrade() {
                    driver.acquired(key, name, result);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a thread to take a cluster lease: {e}");
        }
    }

    /// The acquisition of `key` ended: replay its requests, or answer those past their
    /// limit and try again for the rest.
    fn acquired(
        &self,
        key: K,
        name: String,
        result: Result<crate::cluster::Acquired, ClusterError>,
    ) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        // Before the file counts as held: a request let through in between would be
        // granted the generation from before the other host's save.
        if let Ok(acquired) = &result
            && acquired.external
        {
            tracing::debug!(path = %name, "another host saved this file: older local views are fenced");
            self.engine.lock().external_commit(&key);
        }
        let now = self.now();
        let mut state = link.state.lock();
        let Some(mut pending) = state.pending.remove(&key) else {
            // Everyone withdrew; keep the lease as if used (it is given back when idle).
            if result.is_ok() {
                state.held.insert(key, held_now(name, now));
            }
            return;
        };
        for waiting in &pending.requests {
            state.ids.remove(&waiting.id);
        }
        match result {
            Ok(_) => {
                // Counted as entering until the engine has each of them: the sweep must
                // not give the file back before they get there.
                let mut held = held_now(name.clone(), now);
                held.entering = pending.requests.len() as u32;
                state.held.insert(key.clone(), held);
                drop(state);
                for waiting in pending.requests {
                    let (asker, ask) = (waiting.asker, waiting.ask);
                    let run = self.confirmed_if_write(
                        &key,
                        name.clone(),
                        asker.process,
                        &ask,
                        waiting.run,
                    );
                    self.request_engine(key.clone(), asker, ask, run, true);
                }
            }
            Err(e) => {
                let (late, rest): (Vec<Waiting>, Vec<Waiting>) = pending
                    .requests
                    .drain(..)
                    .partition(|waiting| waiting.deadline <= now);
                let next = rest.iter().map(|waiting| waiting.deadline).min();
                if next.is_some() {
                    for waiting in &rest {
                        state.ids.insert(waiting.id, key.clone());
                    }
                    pending.requests = rest.into();
                    state.pending.insert(key.clone(), pending);
                }
                drop(state);
                if !late.is_empty() {
                    tracing::warn!(path = %name, waiters = late.len(), "no cluster lease: {e}; the waiting requests fail (ETIMEDOUT)");
                }
                deliver(
                    late.into_iter()
                        .map(|waiting| (waiting.run, Err(Refusal::TimedOut)))
                        .collect(),
                );
                if let Some(next) = next {
                    self.start_acquiring(key, next);
                }
            }
        }
    }

    /// The continuation of a request on a file this host holds: a write's runs only once
    /// etcd confirms the hold (see [`Driver::confirm_first`]); a read's as it is.
    fn confirmed_if_write(
        &self,
        key: &K,
        name: String,
        process: ProcessId,
        ask: &Ask,
        run: Continuation,
    ) -> Continuation {
        if ask.intent == Intent::Read {
            run
        } else {
            self.confirm_first(key.clone(), name, process, run)
        }
    }

    /// Wraps the continuation of a write so that it runs only once etcd confirms that this
    /// host still holds the file; otherwise the lease ends unused and the write is refused.
    fn confirm_first(
        &self,
        key: K,
        name: String,
        process: ProcessId,
        run: Continuation,
    ) -> Continuation {
        let (Some(link), Some(me)) = (self.cluster.as_ref(), self.me.get()) else {
            return run;
        };
        let cluster = Arc::clone(&link.cluster);
        let me = me.clone();
        Box::new(move |answer: Answer| {
            let Ok(granted) = answer else {
                return run(answer);
            };
            match cluster.confirm(&name) {
                Ok(()) => run(Ok(granted)),
                Err(e) => {
                    tracing::warn!(path = %name, pid = process.pid, "save refused: {e}");
                    if let Some(driver) = me.upgrade() {
                        driver.undo_grant(&key, process, granted);
                        driver.cluster_lost(&[name]);
                    }
                    run(Err(Refusal::Fenced))
                }
            }
        })
    }

    fn undo_grant(&self, key: &K, process: ProcessId, granted: Granted) {
        if granted.out_of_turn {
            self.commit_out_of_turn(key, process, Outcome::Read);
        } else {
            self.finish(granted.grant.lease, process, Outcome::Read);
        }
    }

    /// What the cluster reports: another host waits, or this host's leases are gone.
    pub(super) fn cluster_event(&self, event: ClusterEvent) {
        match event {
            // The sweep reads which files are contended from the cluster itself.
            ClusterEvent::Contended => self.timer.due_at(self.now()),
            ClusterEvent::Lost(names) => self.cluster_lost(&names),
        }
    }

    /// The cluster leases of `names` are gone: whatever this host's processes read of them
    /// may be outdated by another host's save.
    fn cluster_lost(&self, names: &[String]) {
        let Some(link) = self.cluster.as_ref() else {
            return;
        };
        let mut state = link.state.lock();
        let keys: Vec<K> = state
            .held
            .iter()
            .filter(|(_, held)| names.contains(&held.name))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &keys {
            state.held.remove(key);
        }
        let restart: Vec<(K, Duration)> = keys
            .iter()
            .filter_map(|key| Some((key.clone(), state.pending.get_mut(key)?.claim()?)))
            .collect();
        drop(state);
        // Whatever is left of this host's place in line goes too (a no-op once the session
        // expired): another host must not wait for a hold this host gave up.
        for name in names {
            link.cluster.release(name, false);
        }
        let mut engine = self.engine.lock();
        for key in &keys {
            engine.external_commit(key);
        }
        drop(engine);
        for (key, deadline) in restart {
            self.start_acquiring(key, deadline);
        }
    }

    /// Gives back the files this host holds and nobody here uses, once another host waits
    /// for them or they have been idle a while; starts the acquisition of files whose
    /// requests waited for that. When the next pass is due.
    pub(super) fn cluster_sweep(&self) -> Option<Duration> {
        let link = self.cluster.as_ref()?;
        let now = self.now();
        let mut state = link.state.lock();
        let keys: Vec<K> = state.held.keys().cloned().collect();
        let engine = self.engine.lock();
        let free: Vec<bool> = keys.iter().map(|key| engine.is_free(key)).collect();
        drop(engine);
        let mut release = Vec::new();
        let mut next: Option<Duration> = None;
        for (key, free) in keys.into_iter().zip(free) {
            let wanted_here = state.pending.contains_key(&key);
            let held = state.held.get_mut(&key).expect("listed");
            if held.contended_since.is_none() && link.cluster.is_contended(&held.name) {
                held.contended_since = Some(now);
            }
            if !free || held.entering > 0 {
                held.idle_since = None;
                if held.contended_since.is_some() {
                    let due = held.contended_since.unwrap_or(now) + FAIRNESS;
                    next = Some(next.map_or(due, |n: Duration| n.min(due)));
                }
                continue;
            }
            let idle_since = *held.idle_since.get_or_insert(now);
            if held.contended_since.is_some() || wanted_here || now >= idle_since + STICKY {
                let held = state.held.remove(&key).expect("listed");
                release.push((key, held.name));
            } else {
                let due = idle_since + STICKY;
                next = Some(next.map_or(due, |n: Duration| n.min(due)));
            }
        }
        let restart: Vec<(K, Duration)> = release
            .iter()
            .filter_map(|(key, _)| Some((key.clone(), state.pending.get_mut(key)?.claim()?)))
            .collect();
        let dying: Vec<WaitId> = state
            .pending
            .values()
            .flat_map(|pending| pending.requests.iter())
            .filter(|waiting| waiting.asker.thread.is_some_and(platform::thread_is_dying))
            .map(|waiting| waiting.id)
            .collect();
        if !state.pending.is_empty() {
            let poll = now + super::DYING_WAITER_POLL;
            next = Some(next.map_or(poll, |n: Duration| n.min(poll)));
        }
        drop(state);
        let frontend = self.frontend();
        for (key, name) in &release {
            let gone = frontend
                .as_ref()
                .is_some_and(|frontend| !frontend.exists(key));
            tracing::trace!(path = %name, gone, "cluster lease given back");
            link.cluster.release(name, gone);
        }
        for (key, deadline) in restart {
            self.start_acquiring(key, deadline);
        }
        for id in dying {
            if let Some(run) = self.withdraw_from_cluster(id) {
                deliver(vec![(run, Err(Refusal::Abandoned))]);
            }
        }
        next
    }

    /// Takes a request out of the cluster step's queue; its continuation, if it was there.
    pub(super) fn withdraw_from_cluster(&self, wait: WaitId) -> Option<Continuation> {
        if wait.0 & CLUSTER_WAIT == 0 {
            return None;
        }
        let link = self.cluster.as_ref()?;
        let mut state = link.state.lock();
        let key = state.ids.remove(&wait)?;
        let pending = state.pending.get_mut(&key)?;
        let place = pending
            .requests
            .iter()
            .position(|waiting| waiting.id == wait)?;
        let waiting = pending.requests.remove(place)?;
        Some(waiting.run)
    }

    pub(super) fn is_cluster_wait(wait: WaitId) -> bool {
        wait.0 & CLUSTER_WAIT != 0
    }

    pub fn cluster_health(&self) -> Option<ClusterHealth> {
        Some(self.cluster.as_ref()?.cluster.health())
    }
}

fn held_now(name: String, now: Duration) -> HeldFile {
    HeldFile {
        name,
        entering: 0,
        contended_since: None,
        idle_since: Some(now),
    }
}
