//! The one lease driver behind both front ends.
//!
//! The engine ([`crate::lease`]) decides; the driver runs it: it owns the clock, the table
//! of parked requests, the timer thread, the exit watch and the process facts, and it
//! delivers each answer to the continuation its front end parked. The FUSE overlay and the
//! proxy daemon are adapters: they turn requests into [`Driver`] calls and answers into
//! replies. Nothing outside this module names the engine.
//!
//! # Locks
//! - `engine` is taken before `parked` (a request is parked under the engine lock, so that
//!   its grant, which may come from another thread, finds it); never the other way round.
//! - `orphans` is a leaf, like the process caches.
//! - The cluster step's state ([`cluster`]) may be held while the engine is taken (its
//!   sweep asks which files are free), never the other way round, and never across an
//!   etcd request.
//! - The process caches in [`processes`] are leaves: held for one map access, with no
//!   other lock taken inside and no /proc read under them.
//! - No lock of the driver is held while /proc is read, while a front end's hook runs, or
//!   while a continuation runs. A continuation may call the driver again.
//!
//! # Answers run in a loop, not in each other
//! Ending a lease grants the next waiter, whose continuation may end a lease in turn. The
//! continuations run one after the other on the thread that produced the first answer
//! (see [`deliver`]), so the stack does not grow with the length of a queue.

mod cluster;
mod processes;
mod timer;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use self::processes::Processes;
use self::timer::{Ticking, Timer};
use crate::control::events;
use crate::fastmap::HashMap;
use crate::lease::{
    Absence, Action, Admission, Ask, Counters, EndReason, Engine, Grant, LeaseId, LeaseState,
    LeaseView, Outcome, Policy, WaitId,
};
use crate::platform::{self, ExitWatch, ProcessId};

/// How often parked waiters are checked for a pending SIGKILL: the kernel does not let a
/// killed process go until its request is answered, and fuser drops FUSE_INTERRUPT.
const DYING_WAITER_POLL: Duration = Duration::from_millis(50);

/// A file as a front end names it to the driver.
pub trait Key: Clone + Eq + Hash + Debug + Send + Sync + 'static {
    /// Whether `other` is another file in this file's directory: where a cycle's temp
    /// file is written.
    fn beside(&self, other: &Self) -> bool;
}

/// Why a request got no lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The request would save over a view of the file older than the file.
    Fenced,
    /// It waited past the waiter limit.
    TimedOut,
    /// Its process or thread is gone (or going): nobody waits for the answer.
    Abandoned,
}

/// A lease as its continuation gets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Granted {
    pub grant: Grant,
    /// A write let through while another process's cycle held the file (it held a kernel
    /// lock and could not wait): no lease of its own; end it with
    /// [`Driver::commit_out_of_turn`].
    pub out_of_turn: bool,
}

pub type Answer = Result<Granted, Refusal>;

/// What runs when a request is answered, now or later, on whichever thread answered it.
pub type Continuation = Box<dyn FnOnce(Answer) + Send>;

/// Who asks: the process, and the thread whose request the kernel holds (the overlay's;
/// polled so that a killed thread's request is answered).
#[derive(Clone, Copy, Debug)]
pub struct Asker {
    pub process: ProcessId,
    pub thread: Option<u32>,
}

/// What the driver asks of its front end.
pub trait Frontend<K>: Send + Sync {
    /// The file's name for people (logs, status).
    fn describe(&self, key: &K) -> String;
    /// `process` exited: the files it wrote beside the files it held (temp files of its
    /// cycles), each still under the name it wrote. An exit can be reported twice at once
    /// (the pidfd watch, and a request that found the holder dead), and whichever report
    /// takes the engine first ties the temp files: so every report must get them, and the
    /// front end keeps them until [`Frontend::forget`].
    fn exited(&self, _process: ProcessId) -> Vec<K> {
        Vec::new()
    }
    /// The exit of `process` has been dealt with: the front end forgets the process.
    fn forget(&self, _process: ProcessId) {}
    /// The lease of `holder` on `key` was revoked (it is logged already).
    fn revoked(&self, _key: &K, _holder: ProcessId, _reason: EndReason) {}
    /// Whether the file is there (a file gone needs no cluster-wide generation).
    fn exists(&self, _key: &K) -> bool {
        true
    }
    /// Housekeeping on the timer thread; true while the front end wants another pass soon.
    fn tick(&self) -> bool {
        false
    }
}

struct Parked<K> {
    asker: Asker,
    key: K,
    run: Continuation,
}

pub struct Driver<K: Key> {
    engine: Mutex<Engine<K>>,
    parked: Mutex<HashMap<WaitId, Parked<K>>>,
    /// Requests withdrawn after the engine had answered them: the answer's delivery ends
    /// the lease it carries.
    orphans: Mutex<HashMap<WaitId, ProcessId>>,
    processes: Processes,
    timer: Timer,
    frontend: OnceLock<Weak<dyn Frontend<K>>>,
    epoch: Instant,
    /// Leases across hosts, when this daemon takes part in a cluster.
    cluster: Option<self::cluster::ClusterLink<K>>,
    /// This driver, for the threads and continuations it starts.
    me: OnceLock<Weak<Driver<K>>>,
}

impl<K: Key> Driver<K> {
    /// Starts the driver with its exit-watch and timer threads; both stop once the driver
    /// is dropped. Attach the front end before the first request.
    pub fn start(policy: Policy) -> io::Result<Arc<Driver<K>>> {
        Driver::start_in_cluster(policy, None)
    }

    /// As [`Driver::start`]; with a cluster, a file is granted locally only while this
    /// host holds its cluster lease.
    pub fn start_in_cluster(
        policy: Policy,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> io::Result<Arc<Driver<K>>> {
        let driver = Arc::new(Driver {
            engine: Mutex::new(Engine::new(policy)),
            parked: Mutex::new(HashMap::default()),
            orphans: Mutex::new(HashMap::default()),
            processes: Processes::default(),
            timer: Timer::default(),
            frontend: OnceLock::new(),
            epoch: Instant::now(),
            cluster: cluster.clone().map(self::cluster::ClusterLink::new),
            me: OnceLock::new(),
        });
        let _ = driver.me.set(Arc::downgrade(&driver));
        if let Some(cluster) = cluster {
            let weak = Arc::downgrade(&driver);
            cluster.on_event(move |event| {
                if let Some(driver) = weak.upgrade() {
                    driver.cluster_event(event);
                }
            });
        }
        let weak = Arc::downgrade(&driver);
        let exits = ExitWatch::start(move |process| {
            if let Some(driver) = weak.upgrade() {
                driver.process_exited(process);
            }
        })?;
        driver.processes.set_exit_watch(exits);
        Timer::start(Arc::downgrade(&driver))?;
        Ok(driver)
    }

    /// Connects the front end whose hooks the driver calls (once).
    pub fn attach(&self, frontend: Weak<dyn Frontend<K>>) {
        let _ = self.frontend.set(frontend);
    }

    fn frontend(&self) -> Option<Arc<dyn Frontend<K>>> {
        self.frontend.get()?.upgrade()
    }

    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    pub fn policy(&self) -> Policy {
        self.engine.lock().policy().clone()
    }

    /// The file's name for people.
    pub fn describe(&self, key: &K) -> String {
        match self.frontend() {
            Some(frontend) => frontend.describe(key),
            None => format!("{key:?}"),
        }
    }

    /// The command line of a process that held or waited for a lease (read while alive).
    pub fn command_of(&self, process: ProcessId) -> String {
        self.processes.command_of(process)
    }

    /// The process of thread `tid` (cached for a short while).
    pub fn process_of_thread(&self, tid: u32) -> io::Result<ProcessId> {
        self.processes.of_thread(tid, self.now())
    }

    /// The process of thread `tid` if it is cached; never reads /proc. For requests that
    /// must not: a FLUSH from execve's close-on-exec comes while the exec'ing process holds
    /// its exec_update_lock, and reading its /proc/PID/stat would wait for that lock while
    /// the exec waits for the reply.
    pub fn cached_process_of_thread(&self, tid: u32) -> Option<ProcessId> {
        self.processes.cached_of_thread(tid)
    }

    /// Leases, queues and counters as they stand.
    pub fn status(&self) -> (Vec<LeaseView<K>>, Counters) {
        let engine = self.engine.lock();
        (engine.snapshot(self.now()), engine.counters())
    }

    /// The file's generation: how many commits it has seen.
    pub fn generation(&self, key: &K) -> u64 {
        self.engine.lock().generation(key)
    }

    /// Whether a process other than thread `tid`'s parent or grandparent renamed `key`
    /// away (or unlinked it) in a cycle that goes on: an open by `tid` may wait for that
    /// cycle without waiting for its own family.
    pub fn renamed_away_by_another(&self, key: &K, tid: u32) -> bool {
        let Some(holder) = self.engine.lock().removed_by(key) else {
            return false;
        };
        let Ok(opener) = self.process_of_thread(tid) else {
            return false;
        };
        !self.processes.family_of(opener).contains(&Some(holder))
    }

    /// Revokes the lease on `key` (an operator's `lockfs break`); the holders it was taken
    /// from, each logged.
    pub fn revoke(&self, key: &K) -> Vec<ProcessId> {
        let actions = self.engine.lock().revoke(self.now(), key);
        let holders = actions
            .iter()
            .filter_map(|action| match action {
                Action::Revoked { holder, .. } => Some(*holder),
                _ => None,
            })
            .collect();
        self.execute(actions);
        holders
    }

    /// Asks for a lease. `run` gets the answer: now, on this thread, or later, on the
    /// thread that produces it. The wait id when the request was parked.
    pub fn request(&self, key: K, asker: Asker, ask: Ask, run: Continuation) -> Option<WaitId> {
        let process = asker.process;
        self.watch(process);
        match self.through_cluster(&key, asker, ask, run) {
            self::cluster::Step::Engine { run, counted } => {
                self.request_engine(key, asker, ask, run, counted)
            }
            self::cluster::Step::Parked(wait) => Some(wait),
        }
    }

    /// The engine's part of [`Driver::request`]; `counted` when the cluster step counted
    /// the request as entering (see [`Driver::entered_engine`]).
    fn request_engine(
        &self,
        key: K,
        asker: Asker,
        ask: Ask,
        run: Continuation,
        counted: bool,
    ) -> Option<WaitId> {
        let process = asker.process;
        // A holder that exited before its exit was reported (the exit watch runs on its
        // own thread) is found here, so its cycle has passed on (to its parent, say)
        // before this request is judged: a shell's `mv` must not be judged while the
        // `awk` that read the file still seems to hold it.
        self.reap_dead_holders(&key, process);
        let ask = Ask {
            family: self.processes.family_of(process),
            ..ask
        };
        let mut engine = self.engine.lock();
        let admission = engine.request(self.now(), &key, process, ask);
        let answer = match admission {
            Admission::Granted(grant) => Ok(Granted {
                grant,
                out_of_turn: false,
            }),
            Admission::OutOfTurn => Ok(Granted {
                grant: Grant {
                    lease: LeaseId(0),
                    generation: engine.generation(&key),
                },
                out_of_turn: true,
            }),
            Admission::Fenced => Err(Refusal::Fenced),
            Admission::Queued(wait) => {
                let parked = Parked {
                    asker,
                    key: key.clone(),
                    run,
                };
                self.parked.lock().insert(wait, parked);
                drop(engine);
                if counted {
                    self.entered_engine(&key);
                }
                tracing::trace!(path = %self.describe(&key), pid = process.pid, tid = asker.thread, ?ask, ?admission, "admit");
                self.wake_timer();
                return Some(wait);
            }
        };
        drop(engine);
        if counted {
            self.entered_engine(&key);
        }
        tracing::trace!(path = %self.describe(&key), pid = process.pid, tid = asker.thread, ?ask, ?admission, "admit");
        match answer {
            Err(_) => {
                self.log_fenced(&key, process);
                // A refused save may have ended its cycle (see `Engine::join`).
                self.wake_timer();
            }
            Ok(granted) if !granted.out_of_turn => self.wake_timer(),
            Ok(_) => {}
        }
        deliver(vec![(run, answer)]);
        None
    }

    /// Withdraws a parked request whose asker went away; its continuation is dropped.
    pub fn cancel(&self, wait: WaitId) {
        if Self::is_cluster_wait(wait) {
            self.withdraw_from_cluster(wait);
            return;
        }
        self.withdraw(wait);
    }

    /// Takes a parked request out of its queue. None when its answer is being delivered
    /// already. When the engine answered it between (a grant on another thread, whose
    /// delivery will find no continuation), that delivery ends the orphaned lease.
    fn withdraw(&self, wait: WaitId) -> Option<Parked<K>> {
        let parked = self.parked.lock().remove(&wait)?;
        let mut engine = self.engine.lock();
        if engine.is_waiting(wait) {
            let actions = engine.cancel(self.now(), wait);
            drop(engine);
            self.execute(actions);
        } else {
            drop(engine);
            self.orphans.lock().insert(wait, parked.asker.process);
        }
        Some(parked)
    }

    /// Ends one use of a granted lease with `outcome`.
    pub fn finish(&self, lease: LeaseId, holder: ProcessId, outcome: Outcome) {
        let actions = self
            .engine
            .lock()
            .finish(self.now(), lease, holder, outcome);
        self.wake_timer();
        if self.cluster.is_some() {
            // A file another host waits for may be free now: the sweep gives it back.
            self.timer.due_at(self.now());
        }
        self.execute(actions);
    }

    /// Ends a write let through out of turn with its `outcome` (`Outcome::Read` when it
    /// changed nothing).
    pub fn commit_out_of_turn(&self, key: &K, holder: ProcessId, outcome: Outcome) {
        self.engine
            .lock()
            .commit_out_of_turn(self.now(), key, holder, outcome);
        if outcome != Outcome::Read {
            events::out_of_turn(&self.describe(key), holder, Some(&self.command_of(holder)));
        }
    }

    /// A lookup by `holder` found nothing at `key`: either that absence is what its cycle
    /// reads, or another process's cycle holds the name and `holder` must wait for it
    /// (see `lease/claims.rs`).
    pub fn lookup_missing(&self, key: &K, holder: ProcessId, may_claim: bool) -> Absence {
        self.watch(holder);
        let family = self.processes.family_of(holder);
        let absence = self
            .engine
            .lock()
            .lookup_missing(self.now(), key, holder, family, may_claim);
        if absence == Absence::Claimed {
            tracing::trace!(path = %self.describe(key), pid = holder.pid, "lookup of a claimed missing name");
            self.wake_timer();
        }
        absence
    }

    /// Whether a save by `holder` through a lease granted for a read rests on an older view
    /// than the file (see `Engine::fence_stale_save`); if so it is refused.
    pub fn fence_stale_save(&self, key: &K, holder: ProcessId) -> bool {
        let family = self.processes.family_of(holder);
        let fenced = self
            .engine
            .lock()
            .fence_stale_save(self.now(), key, holder, family);
        if fenced {
            self.log_fenced(key, holder);
            self.wake_timer();
        }
        fenced
    }

    /// `holder` found nothing at `key` again, in the kernel's retry of a refused request:
    /// an absence it loaded before stays the one its saves rest on.
    pub fn saw_missing_again(&self, key: &K, holder: ProcessId) {
        self.engine.lock().saw_missing_again(key, holder);
    }

    /// Forgets the lease history of the files `gone` picks (their directory was removed).
    pub fn forget_files(&self, gone: impl Fn(&K) -> bool) {
        self.engine.lock().forget_files(gone);
    }

    /// `holder` wrote something: its cycles are not idle.
    pub fn activity(&self, holder: ProcessId) {
        self.engine.lock().activity(self.now(), holder);
    }

    /// A write handle on `temp` closed while `holder` reads another file beside it: `temp`
    /// is that cycle's temp file and stays leased until the cycle ends, so nobody truncates
    /// it before its rename. False when there is no such cycle (end the use yourself).
    pub fn tie_to_cycle(&self, temp: &K, holder: ProcessId, wrote: bool) -> bool {
        if self.tie_to_own_cycle(temp, holder, wrote) {
            return true;
        }
        // The reader of the cycle may be the holder's child, exited without its exit
        // reported yet: the shell of `{ cat f; echo k; } > f.tmp` closes the temp as soon
        // as `cat` is gone. Its cycle passes to the shell first, or the temp's lease ended
        // here and another script truncated the temp before this one's `mv`.
        let readers = self
            .engine
            .lock()
            .other_readers(holder, |key| key.beside(temp));
        let dead: Vec<ProcessId> = readers
            .into_iter()
            .filter(|reader| !self.processes.is_alive(*reader))
            .collect();
        if dead.is_empty() {
            return false;
        }
        for reader in dead {
            self.process_exited(reader);
        }
        self.tie_to_own_cycle(temp, holder, wrote)
    }

    fn tie_to_own_cycle(&self, temp: &K, holder: ProcessId, wrote: bool) -> bool {
        let mut engine = self.engine.lock();
        let cycle = engine.reading_cycle_of(holder, |key| key.beside(temp));
        cycle.is_some_and(|cycle| engine.tie(temp, holder, wrote, &cycle, true))
    }

    /// Watches `process` for its exit (once); reports its exit now if it is gone.
    pub fn watch(&self, process: ProcessId) {
        if !self.processes.watch(process) {
            self.process_exited(process);
        }
    }

    /// A holder whose exit is not reported yet (or, without pidfd, never will be) must not
    /// keep anyone waiting.
    fn reap_dead_holders(&self, key: &K, asking: ProcessId) {
        let others = self.engine.lock().holders_of(key);
        for other in others {
            if other != asking && !self.processes.is_alive(other) {
                self.process_exited(other);
            }
        }
    }

    /// A process that held or waited for leases exited. A cycle it was reading passes to
    /// its parent, with the temp files it wrote beside that file tied to it.
    pub fn process_exited(&self, process: ProcessId) {
        let written = self
            .frontend()
            .map(|frontend| frontend.exited(process))
            .unwrap_or_default();
        let parent = self.processes.living_parent_of(process);
        if let Some(parent) = parent {
            self.watch(parent);
        }
        let now = self.now();
        let mut engine = self.engine.lock();
        let held = engine.leases_of(process);
        // Mid-cycle: a handle still open, a save under way, or a temp file written next to
        // the file (a closed, lingering read is just a reader that exited).
        let mid_cycle: Vec<K> = engine
            .snapshot(now)
            .into_iter()
            .filter(|view| held.contains(&view.key))
            .filter(|view| {
                view.state == LeaseState::Writing
                    || view
                        .holders
                        .iter()
                        .any(|h| h.process == process && h.handles > 0)
                    || written.iter().any(|temp| view.key.beside(temp))
            })
            .map(|view| view.key)
            .collect();
        for cycle in &held {
            for temp in written.iter().filter(|temp| cycle.beside(temp)) {
                engine.tie(temp, process, true, cycle, false);
            }
        }
        tracing::trace!(pid = process.pid, ?held, ?parent, "holder exited");
        let actions = engine.holder_exited(now, process, parent);
        let passed: Vec<bool> = mid_cycle
            .iter()
            .map(|key| parent.is_some_and(|parent| engine.holders_of(key).first() == Some(&parent)))
            .collect();
        drop(engine);
        let command = self.command_of(process);
        for key in held.iter().filter(|key| !mid_cycle.contains(key)) {
            tracing::debug!(path = %self.describe(key), pid = process.pid, "reader exited");
        }
        for (key, passed) in mid_cycle.iter().zip(passed) {
            if passed {
                // The normal end of a shell pipeline's reader: not worth a warning.
                tracing::debug!(path = %self.describe(key), pid = process.pid, "cycle passed to the parent process");
                continue;
            }
            let reason = "its lease passes to the next in line; the file keeps its last commit";
            events::holder_died_mid_cycle(&self.describe(key), process, Some(&command), reason);
        }
        self.processes.forget(process);
        if let Some(frontend) = self.frontend() {
            frontend.forget(process);
        }
        self.wake_timer();
        self.execute(actions);
    }

    /// Acts on the engine's answers: logs revocations, delivers parked requests' answers.
    fn execute(&self, actions: Vec<Action<K>>) {
        let mut answers = Vec::new();
        let mut pending: VecDeque<Action<K>> = actions.into();
        while let Some(action) = pending.pop_front() {
            let (wait, answer) = match action {
                Action::Granted { wait, grant } => (
                    wait,
                    Ok(Granted {
                        grant,
                        out_of_turn: false,
                    }),
                ),
                Action::Fenced { wait } => (wait, Err(Refusal::Fenced)),
                Action::TimedOut { wait } => (wait, Err(Refusal::TimedOut)),
                Action::Abandoned { wait } => (wait, Err(Refusal::Abandoned)),
                Action::Revoked {
                    key,
                    holder,
                    reason,
                } => {
                    events::revocation(
                        &self.describe(&key),
                        holder,
                        Some(&self.command_of(holder)),
                        events::revocation_reason(reason),
                    );
                    if let Some(frontend) = self.frontend() {
                        frontend.revoked(&key, holder, reason);
                    }
                    continue;
                }
            };
            let Some(parked) = self.parked.lock().remove(&wait) else {
                // Withdrawn while this answer was on its way: nobody will use the lease.
                let orphan = self.orphans.lock().remove(&wait);
                if let (Some(holder), Ok(granted)) = (orphan, answer) {
                    tracing::debug!(?wait, pid = holder.pid, "a withdrawn waiter's grant ends");
                    let more = self.engine.lock().finish(
                        self.now(),
                        granted.grant.lease,
                        holder,
                        Outcome::Read,
                    );
                    pending.extend(more);
                }
                continue;
            };
            tracing::trace!(path = %self.describe(&parked.key), pid = parked.asker.process.pid, tid = parked.asker.thread, ?wait, ?answer, "answer");
            if answer == Err(Refusal::Fenced) {
                self.log_fenced(&parked.key, parked.asker.process);
            }
            answers.push((parked.run, answer));
        }
        deliver(answers);
    }

    fn log_fenced(&self, key: &K, holder: ProcessId) {
        events::fenced_commit(
            &self.describe(key),
            holder,
            Some(&self.command_of(holder)),
            "the file changed since this process last saw it; its save is refused",
        );
    }

    /// Wakes the timer only when something is due before it planned to wake.
    fn wake_timer(&self) {
        if let Some(due) = self.next_pass() {
            self.timer.due_at(due);
        }
    }

    /// When the timer must run next: the engine's next deadline, or the next poll of
    /// parked threads.
    fn next_pass(&self) -> Option<Duration> {
        let deadline = self.engine.lock().next_deadline();
        let poll = (!self.parked.lock().is_empty()).then(|| self.now() + DYING_WAITER_POLL);
        match (deadline, poll) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<K: Key> Ticking for Driver<K> {
    fn timer(&self) -> &Timer {
        &self.timer
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Due deadlines, the front end's housekeeping, and parked threads being killed.
    fn tick(&self) -> Option<Duration> {
        let frontend_busy = self.frontend().is_some_and(|frontend| frontend.tick());
        let actions = self.engine.lock().tick(Driver::now(self));
        self.execute(actions);
        let threads: Vec<(WaitId, u32)> = self
            .parked
            .lock()
            .iter()
            .filter_map(|(wait, parked)| parked.asker.thread.map(|tid| (*wait, tid)))
            .collect();
        for (wait, tid) in threads {
            if !platform::thread_is_dying(tid) {
                continue;
            }
            if let Some(parked) = self.withdraw(wait) {
                deliver(vec![(parked.run, Err(Refusal::Abandoned))]);
            }
        }
        let mut polling_for_waiters = false;
        if self.processes.polls_exits() {
            let waiting: Vec<(K, ProcessId)> = self
                .parked
                .lock()
                .values()
                .map(|parked| (parked.key.clone(), parked.asker.process))
                .collect();
            polling_for_waiters = !waiting.is_empty();
            for (key, asker) in waiting {
                self.reap_dead_holders(&key, asker);
            }
        }
        let poll =
            (frontend_busy || polling_for_waiters).then(|| Driver::now(self) + DYING_WAITER_POLL);
        let cluster = self.cluster_sweep();
        [self.next_pass(), poll, cluster]
            .into_iter()
            .flatten()
            .min()
    }
}

type Delivery = (Continuation, Answer);

thread_local! {
    /// The answers waiting to run on this thread while an outer [`deliver`] runs others.
    static PENDING: RefCell<Option<VecDeque<Delivery>>> = const { RefCell::new(None) };
}

/// Runs continuations with their answers. Called from inside a continuation, it queues
/// them for the outermost call on this thread, which runs them in order once the current
/// one returns: the stack stays flat however long a chain of hand-offs is.
fn deliver(answers: Vec<Delivery>) {
    if answers.is_empty() {
        return;
    }
    let outermost = PENDING.with(|pending| {
        let mut pending = pending.borrow_mut();
        match pending.as_mut() {
            Some(queue) => {
                queue.extend(answers);
                None
            }
            None => {
                *pending = Some(VecDeque::new());
                Some(answers)
            }
        }
    });
    let Some(first) = outermost else {
        return;
    };
    // Clears the queue even if a continuation panics: later calls must run, not queue.
    struct Outermost;
    impl Drop for Outermost {
        fn drop(&mut self) {
            PENDING.with(|pending| pending.borrow_mut().take());
        }
    }
    let _outermost = Outermost;
    PENDING.with(|pending| {
        if let Some(queue) = pending.borrow_mut().as_mut() {
            queue.extend(first);
        }
    });
    while let Some((run, answer)) =
        PENDING.with(|pending| pending.borrow_mut().as_mut().and_then(VecDeque::pop_front))
    {
        run(answer);
    }
}

impl Key for (u64, std::ffi::OsString) {
    fn beside(&self, other: &Self) -> bool {
        self.0 == other.0 && self.1 != other.1
    }
}

impl Key for String {
    fn beside(&self, other: &Self) -> bool {
        let dir = |path: &str| path.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        self != other && dir(self) == dir(other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A chain of continuations, each delivering the next: run in order, on a flat stack.
    #[test]
    fn answers_delivered_from_a_continuation_run_after_it() {
        static ORDER: Mutex<Vec<usize>> = Mutex::new(Vec::new());
        static DEPTH: AtomicUsize = AtomicUsize::new(0);
        fn chain(n: usize) -> Continuation {
            Box::new(move |_| {
                let depth = DEPTH.fetch_add(1, Ordering::SeqCst);
                assert_eq!(depth, 0, "a continuation ran inside another");
                ORDER.lock().push(n);
                if n < 10_000 {
                    deliver(vec![(chain(n + 1), Err(Refusal::Abandoned))]);
                }
                DEPTH.fetch_sub(1, Ordering::SeqCst);
            })
        }
        deliver(vec![(chain(0), Err(Refusal::Abandoned))]);
        let order = ORDER.lock();
        assert_eq!(order.len(), 10_001);
        assert!(order.windows(2).all(|pair| pair[1] == pair[0] + 1));
    }

    /// A waiter withdrawn (its connection closed, its thread killed) just as another thread
    /// got its grant from the engine: the grant finds no continuation, and must not leave
    /// the lease held with a use nobody will end.
    #[test]
    fn a_grant_racing_a_withdrawal_does_not_leave_the_lease_in_use() {
        let driver: Arc<Driver<String>> = Driver::start(Policy::default()).unwrap();
        let me = platform::process(std::process::id()).unwrap();
        // Not a child of this process (a child's write would join its parent's cycle).
        let other = platform::process(1).unwrap();
        let key = "store.json".to_string();
        let asker = |process| Asker {
            process,
            thread: None,
        };
        let (granted, answers) = std::sync::mpsc::channel();
        let first = granted.clone();
        let ask = Ask::new(crate::lease::Intent::Write);
        driver.request(
            key.clone(),
            asker(me),
            ask,
            Box::new(move |answer| first.send(answer).unwrap()),
        );
        let lease = answers.recv().unwrap().unwrap().grant.lease;
        let wait = driver
            .request(
                key.clone(),
                asker(other),
                ask,
                Box::new(move |answer| granted.send(answer).unwrap()),
            )
            .expect("queued behind the first");
        // The engine grants the waiter; before the answer is delivered, the waiter goes.
        let actions = driver
            .engine
            .lock()
            .finish(driver.now(), lease, me, Outcome::Committed);
        driver.cancel(wait);
        driver.execute(actions);
        let (views, _) = driver.status();
        let uses: u32 = views
            .iter()
            .flat_map(|view| view.holders.iter())
            .map(|holder| holder.handles)
            .sum();
        assert_eq!(uses, 0, "the orphaned grant still has a use: {views:?}");
        assert!(
            answers.try_recv().is_err(),
            "the withdrawn waiter got an answer"
        );
    }

    #[test]
    fn string_keys_are_beside_files_of_their_directory() {
        let key = |s: &str| s.to_string();
        assert!(key("a/b.json").beside(&key("a/b.json.tmp")));
        assert!(key("b.json").beside(&key("b.tmp")));
        assert!(!key("a/b.json").beside(&key("a/b.json")));
        assert!(!key("a/b.json").beside(&key("c/b.tmp")));
        assert!(!key("a/b.json").beside(&key("a/c/b.tmp")));
    }
}
