use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

use super::Holder;
use super::policy::{GapHistory, Policy};
use super::view::{Counters, EndReason};

/// What a request wants to do with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    /// Open for reading: starts a cycle. A holder that reads again queues behind itself.
    Read,
    /// Open for writing, truncate, rename onto, unlink: joins the holder's cycle.
    Write,
    /// Open with O_APPEND: shared with other appenders, exclusive of cycles.
    Append,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct LeaseId(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WaitId(pub u64);

/// A granted lease; pass `lease` back to [`Engine::finish`] when the use ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub lease: LeaseId,
    /// The file's generation when granted: what this use sees.
    pub generation: u64,
}

/// The answer to [`Engine::acquire`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Granted(Grant),
    /// Parked: the answer comes later as an [`Action`] naming this wait.
    Queued(WaitId),
    /// A write by a holder whose last view of the file is older than the file.
    Fenced,
}

/// What the front end must do after an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<K> {
    Granted {
        wait: WaitId,
        grant: Grant,
    },
    Fenced {
        wait: WaitId,
    },
    TimedOut {
        wait: WaitId,
    },
    /// The waiter's process exited; answer its request so the kernel can let it go.
    Abandoned {
        wait: WaitId,
    },
    Revoked {
        key: K,
        holder: Holder,
        reason: EndReason,
    },
}

enum Join {
    Start,
    Joined(LeaseId),
    Queue,
}

#[derive(Debug)]
pub(super) enum Mode {
    Exclusive {
        holder: Holder,
        uses: u32,
        writing: bool,
        /// When the last use ended; the linger runs from here.
        idle_since: Option<Duration>,
        /// When the last read use ended, for the read-to-commit gap.
        read_done_at: Option<Duration>,
        /// Set when the holder died leaving a temp file: the token of that file.
        bound: Option<u64>,
        /// The last use ended without touching the file (its open was retried): a read
        /// by the holder continues this cycle instead of queueing behind it.
        reopen: bool,
    },
    Shared {
        holders: BTreeMap<Holder, u32>,
    },
}

#[derive(Debug)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) mode: Mode,
    pub(super) granted_at: Duration,
    /// Temp files written during this cycle: their leases end with this one (and commit
    /// if they wrote), so nobody truncates a temp file before its rename.
    pub(super) ties: Vec<(LeaseId, bool)>,
    /// This lease is a temp file's, tied to another cycle: it has no linger of its own.
    pub(super) tied: bool,
}

#[derive(Debug)]
pub(super) struct Waiter {
    pub(super) id: WaitId,
    pub(super) holder: Holder,
    pub(super) intent: Intent,
    pub(super) since: Duration,
    pub(super) deadline: Duration,
}

#[derive(Debug, Default)]
pub(super) struct Entry {
    pub(super) generation: u64,
    pub(super) lease: Option<Lease>,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) gaps: GapHistory,
    /// How many processes have a `seen` record for this file.
    pub(super) seen_by: u32,
}

impl Entry {
    /// Nothing would be lost by forgetting this file: generation 0 and no history are
    /// equivalent to it, since no process has seen it and nobody holds or waits.
    pub(super) fn is_idle(&self) -> bool {
        self.lease.is_none() && self.queue.is_empty() && self.seen_by == 0 && self.gaps.is_empty()
    }
}

pub(super) fn entry_seen_by<K: Eq + Hash>(entries: &mut HashMap<K, Entry>, key: &K, delta: i32) {
    if let Some(entry) = entries.get_mut(key) {
        entry.seen_by = entry.seen_by.saturating_add_signed(delta);
    }
}

/// Read-only cycles in a row after which a process counts as a reader of a file.
const READER_STREAK: u32 = 2;

/// Per-file FIFO leases. `K` names a file (a path, or a parent inode and a name).
pub struct Engine<K> {
    pub(super) policy: Policy,
    pub(super) entries: HashMap<K, Entry>,
    pub(super) active: HashMap<LeaseId, K>,
    pub(super) waiting: HashMap<WaitId, K>,
    /// The newest generation each process has seen of a file it read (by reading it or by
    /// its own commit). A write from a process whose view is older is refused.
    pub(super) seen: HashMap<(K, Holder), u64>,
    pub(super) counters: Counters,
    pub(super) next_id: u64,
    /// Generations are drawn from one sequence for all files, so a file forgotten and
    /// met again never shows a generation older than one handed out before.
    pub(super) commits: u64,
    /// How many read-only cycles in a row each process has had on each file: a process
    /// that keeps reading without saving is a reader, and its lease ends at close.
    pub(super) read_streaks: HashMap<(K, Holder), u32>,
    /// Leases tied to one that just ended, still to be ended in turn.
    pub(super) untied: Vec<(LeaseId, bool)>,
}

impl<K: Clone + Eq + Hash> Engine<K> {
    pub fn new(policy: Policy) -> Self {
        Engine {
            policy,
            entries: HashMap::new(),
            active: HashMap::new(),
            waiting: HashMap::new(),
            seen: HashMap::new(),
            counters: Counters::default(),
            next_id: 1,
            commits: 0,
            read_streaks: HashMap::new(),
            untied: Vec::new(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The file's generation: how many commits it has seen since the engine started.
    pub fn generation(&self, key: &K) -> u64 {
        self.entries
            .get(key)
            .map_or(self.commits, |entry| entry.generation)
    }

    /// Asks for a lease on `key`. `max_wait` overrides the policy's waiter limit.
    pub fn acquire(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        intent: Intent,
        max_wait: Option<Duration>,
    ) -> Admission {
        let generation = self.generation(key);
        if intent == Intent::Write && self.is_stale(key, holder, generation) {
            self.counters.fenced_commits += 1;
            return Admission::Fenced;
        }
        let commits = self.commits;
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            generation: commits,
            ..Entry::default()
        });
        let queue_empty = entry.queue.is_empty();
        let joined = match entry.lease.as_mut() {
            None if queue_empty => Join::Start,
            None => Join::Queue,
            Some(lease) => match (&mut lease.mode, intent) {
                (
                    Mode::Exclusive {
                        holder: current,
                        uses,
                        writing,
                        idle_since,
                        bound: None,
                        ..
                    },
                    Intent::Write | Intent::Append,
                ) if *current == holder => {
                    *uses += 1;
                    *writing = true;
                    *idle_since = None;
                    Join::Joined(lease.id)
                }
                (
                    Mode::Exclusive {
                        holder: current,
                        uses,
                        idle_since,
                        bound: None,
                        reopen: reopen @ true,
                        ..
                    },
                    Intent::Read,
                ) if *current == holder => {
                    *uses += 1;
                    *reopen = false;
                    *idle_since = None;
                    Join::Joined(lease.id)
                }
                (Mode::Shared { holders }, Intent::Append) if queue_empty => {
                    *holders.entry(holder).or_default() += 1;
                    Join::Joined(lease.id)
                }
                _ => Join::Queue,
            },
        };
        if intent == Intent::Read
            && matches!(joined, Join::Joined(_))
            && self
                .seen
                .insert((key.clone(), holder), generation)
                .is_none()
        {
            entry_seen_by(&mut self.entries, key, 1);
        }
        let grant = match joined {
            Join::Joined(lease) => Grant { lease, generation },
            Join::Start => self.start_lease(now, key, holder, intent),
            Join::Queue => return self.enqueue(now, key, holder, intent, max_wait),
        };
        Admission::Granted(grant)
    }

    fn enqueue(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        intent: Intent,
        max_wait: Option<Duration>,
    ) -> Admission {
        let id = WaitId(self.fresh_id());
        let deadline = now + max_wait.unwrap_or(self.policy.max_wait);
        let entry = self.entries.get_mut(key).expect("entry exists");
        entry.queue.push_back(Waiter {
            id,
            holder,
            intent,
            since: now,
            deadline,
        });
        self.waiting.insert(id, key.clone());
        self.counters.waits += 1;
        Admission::Queued(id)
    }

    fn start_lease(&mut self, now: Duration, key: &K, holder: Holder, intent: Intent) -> Grant {
        let id = LeaseId(self.fresh_id());
        let entry = self.entries.get_mut(key).expect("entry exists");
        let mode = match intent {
            Intent::Append => Mode::Shared {
                holders: BTreeMap::from([(holder, 1)]),
            },
            Intent::Read | Intent::Write => Mode::Exclusive {
                holder,
                uses: 1,
                writing: intent == Intent::Write,
                idle_since: None,
                read_done_at: None,
                bound: None,
                reopen: false,
            },
        };
        entry.lease = Some(Lease {
            id,
            mode,
            granted_at: now,
            ties: Vec::new(),
            tied: false,
        });
        let generation = entry.generation;
        self.active.insert(id, key.clone());
        // A write was checked not stale before it got here; an append sees nothing.
        let refreshes = match intent {
            Intent::Read => true,
            Intent::Write => self.seen.contains_key(&(key.clone(), holder)),
            Intent::Append => false,
        };
        if refreshes
            && self
                .seen
                .insert((key.clone(), holder), generation)
                .is_none()
        {
            entry_seen_by(&mut self.entries, key, 1);
        }
        Grant {
            lease: id,
            generation,
        }
    }

    /// Ends one use of a lease (a handle closed, a rename or unlink done). `wrote` commits:
    /// an exclusive lease then ends and passes to the next in line.
    pub fn finish(
        &mut self,
        now: Duration,
        lease: LeaseId,
        holder: Holder,
        wrote: bool,
    ) -> Vec<Action<K>> {
        let Some(key) = self.active.get(&lease).cloned() else {
            return Vec::new();
        };
        let entry = self
            .entries
            .get_mut(&key)
            .expect("active lease has an entry");
        let current = entry.lease.as_mut().expect("active lease is current");
        if current.tied {
            // A temp file's lease ends with the cycle it is tied to, whatever its handles do.
            return Vec::new();
        }
        let ended = match &mut current.mode {
            Mode::Exclusive {
                uses,
                idle_since,
                read_done_at,
                writing,
                ..
            } => {
                *uses = uses.saturating_sub(1);
                if wrote {
                    if let Some(read_done) = *read_done_at {
                        entry.gaps.record(now.saturating_sub(read_done));
                    }
                    self.commits += 1;
                    entry.generation = self.commits;
                    self.counters.cycles_committed += 1;
                    true
                } else {
                    if *uses == 0 {
                        *idle_since = Some(now);
                        if !*writing {
                            *read_done_at = Some(now);
                        }
                    }
                    false
                }
            }
            Mode::Shared { holders } => {
                if wrote {
                    self.commits += 1;
                    entry.generation = self.commits;
                    self.counters.appends += 1;
                }
                if let Some(uses) = holders.get_mut(&holder) {
                    *uses -= 1;
                    if *uses == 0 {
                        holders.remove(&holder);
                    }
                }
                holders.is_empty()
            }
        };
        let generation = entry.generation;
        // An append does not refresh what its process has seen: others may append alongside.
        let exclusive = matches!(current.mode, Mode::Exclusive { .. });
        if exclusive && let Some(view) = self.seen.get_mut(&(key.clone(), holder)) {
            *view = generation;
        }
        let mut actions = Vec::new();
        if ended && wrote {
            self.read_streaks.remove(&(key.clone(), holder));
        }
        if ended {
            self.end_lease(&key);
            self.grant_waiters(now, &key, &mut actions);
        } else if self.ends_at_close(&key, holder) {
            self.end_read_only(&key);
            self.grant_waiters(now, &key, &mut actions);
        }
        actions
    }

    /// A known reader's cycle ends when its last handle closes.
    pub(super) fn ends_at_close(&self, key: &K, holder: Holder) -> bool {
        let entry = &self.entries[key];
        matches!(
            entry.lease.as_ref(),
            Some(Lease {
                mode: Mode::Exclusive {
                    holder: h,
                    uses: 0,
                    writing: false,
                    bound: None,
                    ..
                },
                tied: false,
                ..
            }) if *h == holder
        ) && self.linger_for(key, entry, holder).is_zero()
    }

    /// The holder did something that belongs to its cycles (wrote a temp file): its
    /// lingering leases start their linger again.
    pub fn activity(&mut self, now: Duration, holder: Holder) {
        let cap = self.policy.max_linger;
        for key in self.active.values() {
            let entry = self
                .entries
                .get_mut(key)
                .expect("active lease has an entry");
            if let Some(Lease {
                mode:
                    Mode::Exclusive {
                        holder: h,
                        uses: 0,
                        idle_since: Some(idle),
                        bound: None,
                        read_done_at,
                        ..
                    },
                ..
            }) = entry.lease.as_mut()
                && *h == holder
                && read_done_at.is_none_or(|read| now.saturating_sub(read) < cap)
            {
                *idle = now;
            }
        }
    }

    /// A waiter's thread died or gave up: forget its place in line.
    pub fn cancel(&mut self, now: Duration, wait: WaitId) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        if let Some(key) = self.waiting.remove(&wait) {
            let entry = self
                .entries
                .get_mut(&key)
                .expect("waiting key has an entry");
            entry.queue.retain(|waiter| waiter.id != wait);
            self.grant_waiters(now, &key, &mut actions);
        }
        actions
    }

    /// Revokes the lease on `key` by hand.
    pub fn revoke(&mut self, now: Duration, key: &K) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        if self.entries.get(key).is_some_and(|e| e.lease.is_some()) {
            self.revoke_lease(key, EndReason::Manual, &mut actions);
            self.grant_waiters(now, key, &mut actions);
        }
        actions
    }

    /// Ends what is due at `now`: lingers, handoffs, maximum holds, waiter limits.
    pub fn tick(&mut self, now: Duration) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        let due: Vec<(K, bool)> = self
            .active
            .values()
            .filter_map(|key| {
                let entry = &self.entries[key];
                let lease = entry.lease.as_ref()?;
                let (deadline, revoke) = self.lease_deadline(key, entry, lease);
                (deadline <= now).then(|| (key.clone(), revoke))
            })
            .collect();
        for (key, revoke) in due {
            // Ending one lease may have ended the leases tied to it already.
            if self
                .entries
                .get(&key)
                .is_none_or(|entry| entry.lease.is_none())
            {
                continue;
            }
            if revoke {
                self.revoke_lease(&key, EndReason::MaxHold, &mut actions);
            } else {
                self.end_read_only(&key);
            }
            self.grant_waiters(now, &key, &mut actions);
        }
        let expired: Vec<(WaitId, K)> = self
            .waiting
            .iter()
            .filter(|(wait, key)| {
                self.entries[*key]
                    .queue
                    .iter()
                    .any(|waiter| waiter.id == **wait && waiter.deadline <= now)
            })
            .map(|(wait, key)| (*wait, key.clone()))
            .collect();
        for (wait, key) in expired {
            // An earlier answer in this loop may have granted this waiter already.
            if self.waiting.remove(&wait).is_none() {
                continue;
            }
            self.entries
                .get_mut(&key)
                .expect("waiting key has an entry")
                .queue
                .retain(|waiter| waiter.id != wait);
            self.counters.wait_timeouts += 1;
            actions.push(Action::TimedOut { wait });
            self.grant_waiters(now, &key, &mut actions);
        }
        actions
    }

    /// When [`Engine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        let leases = self.active.values().filter_map(|key| {
            let entry = &self.entries[key];
            Some(self.lease_deadline(key, entry, entry.lease.as_ref()?).0)
        });
        let waiters = self.waiting.iter().filter_map(|(wait, key)| {
            self.entries[key]
                .queue
                .iter()
                .find(|waiter| waiter.id == *wait)
                .map(|waiter| waiter.deadline)
        });
        leases.chain(waiters).min()
    }

    pub(super) fn lease_deadline(&self, key: &K, entry: &Entry, lease: &Lease) -> (Duration, bool) {
        let hold = lease.granted_at + self.policy.max_hold;
        if lease.tied {
            return (hold, true);
        }
        let quiet = match lease.mode {
            Mode::Exclusive {
                idle_since: Some(idle),
                bound: Some(_),
                ..
            } => Some(idle + self.policy.handoff),
            Mode::Exclusive {
                idle_since: Some(idle),
                holder,
                ..
            } => Some(idle + self.linger_for(key, entry, holder)),
            _ => None,
        };
        match quiet {
            Some(quiet) if quiet < hold => (quiet, false),
            _ => (hold, true),
        }
    }

    /// The linger of `holder`'s cycle on `key`: none for a process that keeps reading
    /// without saving, else what the file's read-to-save gaps call for.
    pub(super) fn linger_for(&self, key: &K, entry: &Entry, holder: Holder) -> Duration {
        let streak = self
            .read_streaks
            .get(&(key.clone(), holder))
            .copied()
            .unwrap_or(0);
        if streak >= READER_STREAK {
            Duration::ZERO
        } else {
            entry.gaps.linger(&self.policy)
        }
    }

    pub(super) fn is_stale(&self, key: &K, holder: Holder, generation: u64) -> bool {
        self.seen
            .get(&(key.clone(), holder))
            .is_some_and(|seen| *seen < generation)
    }

    pub(super) fn revoke_lease(
        &mut self,
        key: &K,
        reason: EndReason,
        actions: &mut Vec<Action<K>>,
    ) {
        let entry = &self.entries[key];
        let holders: Vec<Holder> = match entry.lease.as_ref().map(|lease| &lease.mode) {
            Some(Mode::Exclusive { holder, .. }) => vec![*holder],
            Some(Mode::Shared { holders }) => holders.keys().copied().collect(),
            None => Vec::new(),
        };
        for holder in holders {
            self.counters.revocations += 1;
            actions.push(Action::Revoked {
                key: key.clone(),
                holder,
                reason,
            });
        }
        self.end_lease(key);
    }

    /// Ends the lease on `key`; forgets a file that nothing refers to any more, so that
    /// the table does not grow with every temp file ever written.
    pub(super) fn end_lease(&mut self, key: &K) {
        let entry = self.entries.get_mut(key).expect("entry exists");
        if let Some(lease) = entry.lease.take() {
            self.active.remove(&lease.id);
            self.untied.extend(lease.ties);
        }
    }

    /// Ends the leases tied to leases that ended, committing those that wrote.
    pub(super) fn end_untied(&mut self, now: Duration, actions: &mut Vec<Action<K>>) {
        while let Some((lease, wrote)) = self.untied.pop() {
            let Some(key) = self.active.get(&lease).cloned() else {
                continue;
            };
            if wrote {
                self.commits += 1;
                let entry = self
                    .entries
                    .get_mut(&key)
                    .expect("active lease has an entry");
                entry.generation = self.commits;
                self.counters.cycles_committed += 1;
            }
            self.end_lease(&key);
            self.grant_waiters(now, &key, actions);
        }
    }

    /// Ends a cycle that wrote nothing and counts it toward its holder's reader streak.
    pub(super) fn end_read_only(&mut self, key: &K) {
        let holder = match self.entries[key].lease.as_ref().map(|lease| &lease.mode) {
            Some(Mode::Exclusive {
                holder,
                bound: None,
                ..
            }) => Some(*holder),
            _ => None,
        };
        if let Some(holder) = holder {
            *self.read_streaks.entry((key.clone(), holder)).or_default() += 1;
        }
        self.counters.cycles_read_only += 1;
        self.end_lease(key);
    }

    pub(super) fn forget_if_idle(&mut self, key: &K) {
        if self.entries.get(key).is_some_and(Entry::is_idle) {
            self.entries.remove(key);
        }
    }

    /// Grants the head of the queue (and the appenders right behind an appender) while the
    /// lease allows, refusing stale writers on the way.
    pub(super) fn grant_waiters(&mut self, now: Duration, key: &K, actions: &mut Vec<Action<K>>) {
        while let Some(entry) = self.entries.get_mut(key) {
            let Some(head) = entry.queue.front() else {
                break;
            };
            let fits = match entry.lease.as_ref().map(|lease| &lease.mode) {
                None => true,
                Some(Mode::Shared { .. }) => head.intent == Intent::Append,
                Some(Mode::Exclusive { .. }) => false,
            };
            if !fits {
                break;
            }
            let waiter = entry.queue.pop_front().expect("head exists");
            let generation = entry.generation;
            self.waiting.remove(&waiter.id);
            if waiter.intent == Intent::Write && self.is_stale(key, waiter.holder, generation) {
                self.counters.fenced_commits += 1;
                actions.push(Action::Fenced { wait: waiter.id });
                continue;
            }
            let waited = now.saturating_sub(waiter.since).as_millis() as u64;
            self.counters.wait_total_ms += waited;
            self.counters.wait_longest_ms = self.counters.wait_longest_ms.max(waited);
            let grant = match self.entries[key].lease.as_ref().map(|lease| lease.id) {
                Some(lease) => {
                    let entry = self.entries.get_mut(key).expect("entry exists");
                    if let Some(Lease {
                        mode: Mode::Shared { holders },
                        ..
                    }) = entry.lease.as_mut()
                    {
                        *holders.entry(waiter.holder).or_default() += 1;
                    }
                    Grant { lease, generation }
                }
                None => self.start_lease(now, key, waiter.holder, waiter.intent),
            };
            actions.push(Action::Granted {
                wait: waiter.id,
                grant,
            });
        }
        self.forget_if_idle(key);
        self.end_untied(now, actions);
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}
