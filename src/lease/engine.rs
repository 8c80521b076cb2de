use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use serde::Serialize;

use super::Holder;
use super::beside::Beside;
use super::kept::holds_cycle;
use super::policy::{GapHistory, Policy};
use super::view::{Counters, EndReason};

pub(super) use crate::fastmap::{HashMap, HashSet};

/// What a request wants to do with a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Intent {
    /// Open for reading: starts a cycle, or joins the holder's own.
    Read,
    /// Open for writing, truncate, rename onto or away, unlink: joins the holder's cycle.
    Write,
    /// Open with O_APPEND: shared with other appenders, exclusive of cycles.
    Append,
}

/// One request for a lease, as the front end describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ask {
    pub intent: Intent,
    /// The requester's parent and grandparent: a write from a child of the holder (the
    /// `mv` of a shell whose `sed` read the file) belongs to the holder's cycle.
    pub family: [Option<Holder>; 2],
    /// Another thread of the requester has the file open in its current cycle and this
    /// thread has not: a second cycle of one process (`Promise.all`), which queues.
    pub concurrent: bool,
    /// The request holds a kernel directory or inode lock while it waits for an answer
    /// (CREATE, RENAME, UNLINK, LINK, truncate): it is answered now and never queued.
    pub locked: bool,
    /// A rename or link onto the name: a save that may rest on having found the name
    /// missing (a first save). Other writes are not judged on an absence seen.
    pub replaces: bool,
    /// A create of the name (CREATE: the kernel just looked it up and found it missing).
    pub creates: bool,
    /// The requesting thread (0 when the front end cannot tell): only the process's main
    /// thread (thread == pid) re-reads in its cycle; see `continues_cycle`.
    pub thread: u32,
    /// Overrides the policy's waiter limit.
    pub max_wait: Option<Duration>,
}

impl Ask {
    pub fn new(intent: Intent) -> Ask {
        Ask {
            intent,
            family: [None, None],
            concurrent: false,
            locked: false,
            replaces: false,
            creates: false,
            thread: 0,
            max_wait: None,
        }
    }
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

/// The answer to [`Engine::request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Granted(Grant),
    /// Parked: the answer comes later as an [`Action`] naming this wait.
    Queued(WaitId),
    /// A write built on a view of the file older than the file.
    Fenced,
    /// A write that holds a kernel lock while another process's cycle holds the file:
    /// it cannot wait, and its view is current, so it goes ahead now. Report its outcome
    /// with [`Engine::commit_out_of_turn`]; the holder's cycle can no longer commit.
    OutOfTurn,
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

/// How a use of a lease ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing written.
    Read,
    /// The file was written or replaced: the cycle commits and the lease ends.
    Committed,
    /// The name was unlinked or renamed away: a commit, but the cycle goes on so that its
    /// holder can create the name again before anyone sees it missing.
    Removed,
    /// The file was created and left empty (dbm.dumb's `open(dat, 'w')` when it makes a new
    /// database): a commit, since the name exists now, but the cycle goes on, as after a
    /// removal, so that its creator fills it before anyone else reads it empty.
    Touched,
    /// The file was written, and its holder's next load began after the save's last close
    /// but before that close reached us (the kernel sends the release on its own time;
    /// keyv-file's `await set()` returns at close and the next update reads at once): a
    /// commit, and that load's cycle starts from it, so the save that follows is in turn.
    Reloaded,
}

#[derive(Clone, Debug)]
pub(super) enum Mode {
    Exclusive {
        holder: Holder,
        uses: u32,
        writing: bool,
        /// When the last use ended; the linger runs from here.
        idle_since: Option<Duration>,
        /// When the last read use ended, for the read-to-commit gap.
        read_done_at: Option<Duration>,
    },
    Shared {
        holders: BTreeMap<Holder, u32>,
    },
}

#[derive(Clone, Debug)]
pub(super) struct Lease {
    pub(super) id: LeaseId,
    pub(super) mode: Mode,
    pub(super) granted_at: Duration,
    /// Where this lease stands in the engine's deadline index, if anywhere.
    pub(super) scheduled: Option<Duration>,
    /// The generation at the first read of this cycle: a commit is refused once anybody
    /// else committed after it. None while the cycle has not read (a blind write).
    pub(super) view: Option<u64>,
    /// Temp files written during this cycle: their leases end with this one (and commit
    /// if they wrote), so nobody truncates a temp file before its rename.
    pub(super) ties: Vec<(LeaseId, bool)>,
    /// This lease is a temp file's, tied to another cycle: it has no linger of its own.
    pub(super) tied: bool,
    /// The holder is the parent of the process that began the cycle and exited: the first
    /// of its children to touch the file takes the cycle over.
    pub(super) passed: bool,
    /// The holder saved this file in place while it held a cycle on another file, and the
    /// cycle goes on (see [`Engine::keeps_after_commit`]).
    pub(super) kept: bool,
    /// The holder began its next load while others wait, or a save of this cycle was
    /// refused: the lease ends at the next tick.
    pub(super) yielded: bool,
    /// A save of this cycle was refused: its view ends with it, so the holder's next read
    /// is fresh (a re-read after a refusal launders nothing).
    pub(super) refused: bool,
    /// Part of a store's save under way: its holder removed one of the store's files and
    /// has not created it again, so the cycle does not linger out (see `kept.rs`).
    pub(super) pending: bool,
    /// The cycle began as a claim: its holder's load found the file missing (see
    /// `claims.rs`).
    pub(super) claimed: bool,
    /// The holder created the file empty in this cycle ([`Outcome::Touched`]).
    pub(super) touched: bool,
    /// The holder renamed the file away or unlinked it in this cycle, which goes on
    /// ([`Outcome::Removed`] after a read).
    pub(super) removed: bool,
}

impl Lease {
    /// A lease of `mode` granted at `now`, its cycle's view `view`.
    pub(super) fn new(id: LeaseId, mode: Mode, now: Duration, view: Option<u64>) -> Lease {
        Lease {
            id,
            mode,
            granted_at: now,
            scheduled: None,
            view,
            ties: Vec::new(),
            tied: false,
            passed: false,
            kept: false,
            yielded: false,
            refused: false,
            pending: false,
            claimed: false,
            touched: false,
            removed: false,
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct Waiter {
    pub(super) id: WaitId,
    pub(super) holder: Holder,
    pub(super) ask: Ask,
    pub(super) since: Duration,
    pub(super) deadline: Duration,
}

#[derive(Clone, Debug, Default)]
pub(super) struct Entry {
    pub(super) generation: u64,
    pub(super) lease: Option<Lease>,
    pub(super) queue: VecDeque<Waiter>,
    pub(super) gaps: GapHistory,
    /// How many processes have a `seen` record for this file.
    pub(super) seen_by: u32,
    /// The parent of the last process let in to save this file.
    pub(super) saver_parent: Option<Holder>,
    /// Reads beside the cycle open now: a write in place waits until none is.
    pub(super) beside: u32,
    /// A claimed cycle on this name lingered out without a save: its claimants may only
    /// probe the name, so claims linger no longer than other cycles.
    pub(super) probed: bool,
}

impl Entry {
    /// Nothing would be lost by forgetting this file: generation 0 and no history are
    /// equivalent to it, since no process has seen it and nobody holds or waits.
    pub(super) fn is_idle(&self) -> bool {
        self.lease.is_none()
            && self.queue.is_empty()
            && self.seen_by == 0
            && self.gaps.is_empty()
            && self.beside == 0
    }
}

/// What a process last saw of a file outside a lease: for its late saves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seen {
    /// The generation its last cycle was built on (or wrote).
    pub(super) generation: u64,
    /// When that cycle ended.
    pub(super) at: Duration,
    /// The cycle ended with this process's own commit.
    pub(super) committed: bool,
    /// When that cycle's last read ended, for the read-to-save gap of a late save.
    pub(super) read_done_at: Option<Duration>,
    /// What was seen is that no file was there (a lookup found nothing).
    pub(super) absent: bool,
    /// Passed on from a child that exited: it judges the saves of the process's other
    /// children (the shell's `mv`), not the process's own writes.
    pub(super) inherited: bool,
    /// An absence that a later lookup found again: it was loaded before the lookup that
    /// precedes the save (dbm's index), not found by that lookup alone.
    pub(super) renewed: bool,
}

impl Seen {
    /// A view of `generation` taken at `now`, by a read that ended then.
    pub(super) fn read(generation: u64, now: Duration) -> Seen {
        Seen {
            generation,
            at: now,
            committed: false,
            read_done_at: Some(now),
            absent: false,
            inherited: false,
            renewed: false,
        }
    }

    /// The process's own commit, which made `generation` at `now`.
    pub(super) fn own_commit(generation: u64, now: Duration) -> Seen {
        Seen {
            committed: true,
            read_done_at: None,
            ..Seen::read(generation, now)
        }
    }
}

pub(super) fn entry_seen_by<K: Eq + Hash>(entries: &mut HashMap<K, Entry>, key: &K, delta: i32) {
    if let Some(entry) = entries.get_mut(key) {
        entry.seen_by = entry.seen_by.saturating_add_signed(delta);
    }
}

/// Read-only cycles in a row after which a process counts as a reader of a file.
const READER_STREAK: u32 = 2;

/// Records of what processes saw are pruned by age once there are this many.
pub(super) const SEEN_PRUNE_AT: usize = 4096;

/// How often a holder's activity restarts its lingers (see [`Engine::activity`]).
pub(super) const ACTIVITY_GRAIN: Duration = Duration::from_millis(10);

/// When a map remembered per file and process is pruned next: at [`SEEN_PRUNE_AT`] records,
/// then at twice what a pruning kept. A pruning that keeps most records (they are all
/// recent: git add of thousands of files) must not run again at the next insert, or
/// every request pays for the whole map (git add of 3,000 files took 9 s of daemon CPU).
#[derive(Clone, Copy, Debug)]
pub(super) struct PruneAt(usize);

impl Default for PruneAt {
    fn default() -> PruneAt {
        PruneAt(SEEN_PRUNE_AT)
    }
}

impl PruneAt {
    pub(super) fn due(self, len: usize) -> bool {
        len >= self.0
    }

    /// A pruning left `len` records.
    pub(super) fn pruned(&mut self, len: usize) {
        self.0 = SEEN_PRUNE_AT.max(len.saturating_mul(2));
    }
}

/// How old a pruned `seen` record must be.
pub(super) const SEEN_HORIZON: Duration = Duration::from_secs(600);

/// Per-file FIFO leases. `K` names a file (a path, or a parent inode and a name).
#[derive(Clone)]
pub struct Engine<K> {
    pub(super) policy: Policy,
    pub(super) entries: HashMap<K, Entry>,
    pub(super) active: HashMap<LeaseId, K>,
    pub(super) waiting: HashMap<WaitId, K>,
    /// What each process saw of a file in its last cycle on it (or of its absence).
    pub(super) seen: HashMap<(K, Holder), Seen>,
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
    /// The processes that have tried to save each file: never counted as its readers,
    /// however many read-only cycles they run. A program that reads twice per save
    /// (write-json-file) ends a read-only cycle at each first read; counted as a reader,
    /// its re-read took a fresh view and laundered the save built on the first read.
    pub(super) savers: HashSet<(K, Holder)>,
    /// Each live lease by the deadline it was last scheduled for, so the timer never
    /// scans every lease (git add of 2,000 files spent 12 s of daemon CPU doing that).
    /// A deadline that moves later is found at the old one and filed again; every change
    /// that brings one earlier (a lease granted, a use ended) files it at once.
    pub(super) deadlines: BTreeSet<(Duration, LeaseId)>,
    /// When each holder's activity last restarted its lingers.
    pub(super) last_activity: HashMap<Holder, Duration>,
    /// When `seen`, `savers` and `read_streaks` are pruned next.
    pub(super) prune_seen_at: PruneAt,
    pub(super) prune_savers_at: PruneAt,
    pub(super) prune_streaks_at: PruneAt,
    /// Reads beside a cycle now open, by the id their grant carries (see `beside`).
    pub(super) beside: HashMap<LeaseId, Beside<K>>,
    /// When each process last kept a cycle after a save (see `kept.rs`): a removal by it
    /// within the maximum hold after that is part of a store's save.
    pub(super) kept_at: HashMap<Holder, Duration>,
    /// The first process to find each name missing, lately (see `claims.rs`).
    pub(super) claims: HashMap<K, super::claims::Claim>,
    pub(super) prune_claims_at: PruneAt,
}

impl<K: Clone + Eq + Hash> Engine<K> {
    pub fn new(policy: Policy) -> Self {
        Engine {
            policy,
            entries: HashMap::default(),
            active: HashMap::default(),
            waiting: HashMap::default(),
            seen: HashMap::default(),
            counters: Counters::default(),
            next_id: 1,
            commits: 0,
            read_streaks: HashMap::default(),
            untied: Vec::new(),
            savers: HashSet::default(),
            deadlines: BTreeSet::new(),
            last_activity: HashMap::default(),
            prune_seen_at: PruneAt::default(),
            prune_savers_at: PruneAt::default(),
            prune_streaks_at: PruneAt::default(),
            beside: HashMap::default(),
            kept_at: HashMap::default(),
            claims: HashMap::default(),
            prune_claims_at: PruneAt::default(),
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The counters, with the gauges of what the engine remembers.
    pub fn counters(&self) -> Counters {
        Counters {
            files_remembered: self.entries.len() as u64,
            views_remembered: self.seen.len() as u64,
            ..self.counters.clone()
        }
    }

    /// The file's generation: how many commits it has seen since the engine started.
    pub fn generation(&self, key: &K) -> u64 {
        self.entries
            .get(key)
            .map_or(self.commits, |entry| entry.generation)
    }

    /// Asks for a lease on `key` with the plainest request of `intent`.
    #[cfg(test)]
    pub fn acquire(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        intent: Intent,
        max_wait: Option<Duration>,
    ) -> Admission {
        let ask = Ask {
            max_wait,
            ..Ask::new(intent)
        };
        self.request(now, key, holder, ask)
    }

    /// Asks for a lease on `key` for `holder`.
    ///
    /// The holder's own requests (and writes from its children) join its cycle at once:
    /// a process never waits for itself, except a read from a second thread while another
    /// thread's handle is open (two cycles of one process). Requests that hold a kernel
    /// lock are answered now: granted, joined, fenced, or let through out of turn.
    pub fn request(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask) -> Admission {
        if ask.intent == Intent::Write {
            if self.prune_savers_at.due(self.savers.len()) {
                // Files forgotten since (temp names, mostly) need no memory of savers.
                let entries = &self.entries;
                self.savers.retain(|(file, _)| entries.contains_key(file));
                self.prune_savers_at.pruned(self.savers.len());
            }
            self.savers.insert((key.clone(), holder));
        }
        let admission = self.admit(now, key, holder, ask);
        if ask.intent == Intent::Write
            && matches!(admission, Admission::Granted(_) | Admission::OutOfTurn)
        {
            self.settle_family_view(key, &ask);
        }
        admission
    }

    /// A child's save is under way: the view its parent inherited from an exited sibling
    /// (the shell's `sed`) has served its one save (the shell's `mv`), and must not judge
    /// the saves of the parent's later, unrelated children.
    fn settle_family_view(&mut self, key: &K, ask: &Ask) {
        if let Some(entry) = self.entries.get_mut(key) {
            entry.saver_parent = ask.family[0];
        }
        let Some(parent) = ask.family[0] else {
            return;
        };
        let slot = (key.clone(), parent);
        if self.seen.get(&slot).is_some_and(|seen| seen.inherited) {
            self.seen.remove(&slot);
            entry_seen_by(&mut self.entries, key, -1);
        }
    }

    fn admit(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask) -> Admission {
        self.prune_seen(now);
        let commits = self.commits;
        let entry = self.entries.entry(key.clone()).or_insert_with(|| Entry {
            generation: commits,
            ..Entry::default()
        });
        // A thread blocked in a request cannot ask again: a read while the same process
        // already waits for this file is another thread's, a second cycle. And a read
        // into the process's own idle cycle while others wait, later than the longest
        // linger after that cycle began, is a reader's next cycle (a process polling the
        // file must not keep a writer out until the maximum hold).
        let overstays = entry.lease.as_ref().is_some_and(|lease| {
            !entry.queue.is_empty()
                && now.saturating_sub(lease.granted_at) > self.policy.max_linger
                && matches!(lease.mode, Mode::Exclusive { holder: h, uses: 0, .. } if h == holder)
        });
        // A read into the holder's own cycle that has saved this file (kept for its other
        // files) is the holder's next load: with others waiting, they come first.
        let next_load = ask.intent == Intent::Read
            && entry.lease.as_ref().is_some_and(|lease| {
                lease.kept && matches!(lease.mode, Mode::Exclusive { holder: h, .. } if h == holder)
            });
        let others_wait = !entry.queue.is_empty();
        let ask = Ask {
            concurrent: ask.concurrent
                || (next_load && others_wait)
                || (ask.intent == Intent::Read
                    && (overstays
                        || entry.queue.iter().any(|waiter| {
                            waiter.holder == holder && waiter.ask.intent == Intent::Read
                        }))),
            ..ask
        };
        if next_load {
            if others_wait {
                self.yield_kept(holder);
            } else if continues_cycle(holder, &ask) {
                self.restart_cycle(now, key);
            }
        }
        let entry = &self.entries[key];
        if let Some(lease) = entry.lease.as_ref()
            && joins(lease, holder, &ask)
        {
            let own = matches!(lease.mode, Mode::Exclusive { holder: h, .. } if h == holder);
            // A child joining its parent's cycle with a save of its own older view.
            let stale = ask.intent == Intent::Write
                && !own
                && self
                    .view_of(now, key, holder, ask.replaces)
                    .is_some_and(|view| view < self.generation(key));
            if stale {
                self.counters.fenced_commits += 1;
                self.close_view(key, holder);
                return Admission::Fenced;
            }
            if self.waits_for_readers(key, &ask) {
                // The holder's own write in place, first in line once the reads close.
                return self.enqueue_first(now, key, holder, ask);
            }
            return self.join(key, holder, ask.intent);
        }
        if ask.intent == Intent::Read && self.parent_lingers(key, &ask) {
            // A child's read ends its parent's lingering read-only cycle at once, as the
            // linger running out would (git commit's hooks, rsync's receiver): the parent's
            // later save is still judged on what it read.
            self.end_read_only(now, key);
        }
        if ask.intent == Intent::Read && self.may_read_beside(key, holder) {
            return Admission::Granted(self.read_beside(now, key, holder));
        }
        let waits_for_readers = self.waits_for_readers(key, &ask);
        let entry = self.entries.get_mut(key).expect("entry exists");
        let free = entry.lease.is_none() && entry.queue.is_empty() && !waits_for_readers;
        let appends_alongside = ask.intent == Intent::Append
            && entry.queue.is_empty()
            && matches!(
                entry.lease.as_ref().map(|lease| &lease.mode),
                Some(Mode::Shared { .. })
            );
        if self.creates_on_a_stale_absence(key, holder, &ask) {
            self.forget_absence_of_refused_create(now, key, holder, &ask);
            self.counters.fenced_commits += 1;
            return Admission::Fenced;
        }
        if ask.intent == Intent::Write && self.out_of_date(now, key, holder, &ask) {
            self.counters.fenced_commits += 1;
            self.teach_late_save(now, key, holder);
            self.close_view(key, holder);
            return Admission::Fenced;
        }
        if free {
            let loaded = ask.intent != Intent::Read && self.consume_absence(now, key, holder, &ask);
            if ask.intent == Intent::Write {
                self.teach_late_save(now, key, holder);
            }
            // A create of a missing file the holder loaded (dbm.dumb appends the first entry
            // to its new index) is its cycle's save, not an append beside others: it holds
            // the file, with its absence as the view, until the holder's cycle ends.
            let intent = if loaded { Intent::Write } else { ask.intent };
            return Admission::Granted(self.start_lease(now, key, holder, intent));
        }
        if appends_alongside {
            return self.join(key, holder, ask.intent);
        }
        if !ask.locked {
            let holds_cycle = self.entries[key]
                .lease
                .as_ref()
                .is_some_and(|lease| holds_cycle(lease, holder));
            if ask.intent == Intent::Read && !ask.concurrent && holds_cycle {
                // The holder's own read from another thread, after its handles closed, is
                // a second cycle (Promise.all) or the same cycle read again from a worker
                // thread (write-json-file reads the file it is about to save); which one
                // cannot be told until it saves. It waits for the cycle it holds, but not
                // behind other processes too: at the back, their commits came in between
                // and its save was refused. (A read while its handle is open elsewhere,
                // a process's next load, or a poll past the longest linger queue at the
                // back as before.)
                return self.enqueue_after_own(now, key, holder, ask);
            }
            return self.enqueue(now, key, holder, ask);
        }
        // A request that holds a kernel lock cannot wait: the holder may need that lock
        // to finish its own cycle. It goes ahead only when that cannot lose anything.
        match ask.intent {
            Intent::Write if !self.holder_is_writing(key) => {
                self.consume_absence(now, key, holder, &ask);
                self.teach_late_save(now, key, holder);
                Admission::OutOfTurn
            }
            Intent::Append if !self.holder_is_writing(key) => {
                self.consume_absence(now, key, holder, &ask);
                Admission::OutOfTurn
            }
            _ => {
                self.forget_absence_of_refused_create(now, key, holder, &ask);
                self.counters.fenced_commits += 1;
                Admission::Fenced
            }
        }
    }

    /// Joins the current lease on `key` (checked to admit `holder`).
    fn join(&mut self, key: &K, holder: Holder, intent: Intent) -> Admission {
        let entry = self.entries.get_mut(key).expect("entry exists");
        let generation = entry.generation;
        let lease = entry.lease.as_mut().expect("checked by the caller");
        if lease.passed
            && let Mode::Exclusive { holder: h, .. } = &mut lease.mode
            && *h != holder
        {
            // A child of the shell takes over the cycle its sibling began: a write
            // finishes that cycle on its view; a read begins a cycle of its own.
            *h = holder;
            lease.passed = false;
            if intent == Intent::Read {
                lease.view = Some(generation);
            }
        }
        if intent != Intent::Read && lease.view.is_some_and(|view| view < generation) {
            // Somebody committed out of turn during this cycle: its save, in place or by
            // appending, would land in (or on top of) that other process's file. The cycle
            // is over; left open, the holder's next loads joined it and every save of
            // theirs was refused in turn.
            lease.refused = true;
            lease.yielded = true;
            self.schedule(key);
            self.counters.fenced_commits += 1;
            return Admission::Fenced;
        }
        match &mut lease.mode {
            Mode::Exclusive {
                uses,
                writing,
                idle_since,
                ..
            } => {
                *uses += 1;
                *idle_since = None;
                if intent != Intent::Read {
                    *writing = true;
                }
            }
            Mode::Shared { holders } => *holders.entry(holder).or_default() += 1,
        }
        if intent == Intent::Read && lease.view.is_none() {
            lease.view = Some(generation);
        }
        Admission::Granted(Grant {
            lease: lease.id,
            generation,
        })
    }

    /// Whether `key`'s lease is a lingering, read-only cycle of the asker's parent or
    /// grandparent, with nobody else waiting.
    fn parent_lingers(&self, key: &K, ask: &Ask) -> bool {
        let entry = &self.entries[key];
        entry.queue.is_empty()
            && matches!(
                entry.lease.as_ref(),
                Some(Lease {
                    mode: Mode::Exclusive {
                        holder,
                        uses: 0,
                        writing: false,
                        ..
                    },
                    tied: false,
                    passed: false,
                    ..
                }) if ask.family.contains(&Some(*holder))
            )
    }

    fn holder_is_writing(&self, key: &K) -> bool {
        matches!(
            self.entries[key].lease.as_ref().map(|lease| &lease.mode),
            Some(Mode::Exclusive { writing: true, .. }) | Some(Mode::Shared { .. })
        )
    }

    /// The outcome of a request answered [`Admission::OutOfTurn`] (`Outcome::Read` when it
    /// failed and changed nothing).
    pub fn commit_out_of_turn(&mut self, now: Duration, key: &K, holder: Holder, outcome: Outcome) {
        if outcome == Outcome::Read {
            return;
        }
        self.counters.cycles_committed += 1;
        self.counters.out_of_turn += 1;
        let seen_before = self
            .seen
            .get(&(key.clone(), holder))
            .is_some_and(|seen| !seen.absent && !seen.inherited);
        let generation = self.bump(key);
        self.note_seen(key, holder, Seen::own_commit(generation, now));
        if outcome == Outcome::Removed && seen_before {
            self.take_over_after_removal(now, key, holder, generation);
        }
    }

    pub(super) fn holds(&self, key: &K, holder: Holder) -> bool {
        self.entries
            .get(key)
            .and_then(|entry| entry.lease.as_ref())
            .is_some_and(|lease| match &lease.mode {
                Mode::Exclusive { holder: h, .. } => *h == holder,
                Mode::Shared { holders } => holders.contains_key(&holder),
            })
    }

    fn enqueue(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask) -> Admission {
        self.park(now, key, holder, ask, false)
    }

    /// Queues `holder`'s request ahead of other processes' waiters, behind its own.
    fn enqueue_after_own(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask) -> Admission {
        let position = self.entries[key]
            .queue
            .iter()
            .take_while(|waiter| waiter.holder == holder)
            .count();
        let admission = self.park(now, key, holder, ask, false);
        let queue = &mut self.entries.get_mut(key).expect("entry exists").queue;
        let waiter = queue.pop_back().expect("just parked");
        queue.insert(position, waiter);
        admission
    }

    /// Queues the holder's own request ahead of everyone (it waits for reads beside).
    fn enqueue_first(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask) -> Admission {
        self.park(now, key, holder, ask, true)
    }

    fn park(&mut self, now: Duration, key: &K, holder: Holder, ask: Ask, first: bool) -> Admission {
        let id = WaitId(self.fresh_id());
        let deadline = now.saturating_add(ask.max_wait.unwrap_or(self.policy.max_wait));
        let entry = self.entries.get_mut(key).expect("entry exists");
        let waiter = Waiter {
            id,
            holder,
            ask,
            since: now,
            deadline,
        };
        if first {
            entry.queue.push_front(waiter);
        } else {
            entry.queue.push_back(waiter);
        }
        self.waiting.insert(id, key.clone());
        self.counters.waits += 1;
        Admission::Queued(id)
    }

    fn start_lease(&mut self, now: Duration, key: &K, holder: Holder, intent: Intent) -> Grant {
        let id = LeaseId(self.fresh_id());
        let generation = self.entries[key].generation;
        // A read starts the cycle's view; a write by a process that saw the file lately
        // (its late save) carries that view; a blind write has none.
        let view = match intent {
            Intent::Read => Some(self.view_for_new_read(now, key, holder, generation)),
            Intent::Write => self.view_of(now, key, holder, false),
            Intent::Append => None,
        };
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
            },
        };
        let entry = self.entries.get_mut(key).expect("entry exists");
        entry.lease = Some(Lease::new(id, mode, now, view));
        self.active.insert(id, key.clone());
        self.schedule(key);
        Grant {
            lease: id,
            generation,
        }
    }

    /// Another host saved `key`: every view of it taken here is older than the file now.
    pub fn external_commit(&mut self, key: &K) {
        self.bump(key);
    }

    /// The holder of the cycle on `key` that goes on after it renamed the file away or
    /// unlinked it (dbm.dumb between renaming `.dir` to `.bak` and its next commit).
    pub fn removed_by(&self, key: &K) -> Option<Holder> {
        let lease = self.entries.get(key)?.lease.as_ref()?;
        match lease.mode {
            Mode::Exclusive { holder, .. } if lease.removed => Some(holder),
            _ => None,
        }
    }

    /// Nobody holds `key`, waits for it or reads it beside a cycle.
    pub fn is_free(&self, key: &K) -> bool {
        self.entries.get(key).is_none_or(|entry| {
            entry.lease.is_none() && entry.queue.is_empty() && entry.beside == 0
        })
    }

    /// A new generation for `key`.
    fn bump(&mut self, key: &K) -> u64 {
        self.commits += 1;
        let commits = self.commits;
        let entry = self.entries.entry(key.clone()).or_default();
        entry.generation = commits;
        commits
    }

    /// Ends one use of a lease (a handle closed, a rename or unlink done).
    pub fn finish(
        &mut self,
        now: Duration,
        lease: LeaseId,
        holder: Holder,
        outcome: Outcome,
    ) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        if self.end_read_beside(now, lease, &mut actions) {
            return actions;
        }
        let Some(key) = self.active.get(&lease).cloned() else {
            return actions;
        };
        let tied = self.entries[&key]
            .lease
            .as_ref()
            .expect("active lease is current")
            .tied;
        if tied {
            // A temp file's lease ends with the cycle it is tied to, whatever its handles do.
            return Vec::new();
        }
        let wrote = outcome != Outcome::Read;
        let keeps = outcome == Outcome::Committed && self.keeps_after_commit(&key, holder);
        let reloaded = outcome == Outcome::Reloaded;
        let before = self.generation(&key);
        let generation = if wrote { Some(self.bump(&key)) } else { None };
        let entry = self
            .entries
            .get_mut(&key)
            .expect("active lease has an entry");
        let current = entry.lease.as_mut().expect("active lease is current");
        let ended = match &mut current.mode {
            Mode::Exclusive {
                uses,
                idle_since,
                read_done_at,
                writing,
                ..
            } => {
                *uses = uses.saturating_sub(1);
                if wrote && outcome != Outcome::Touched {
                    if let Some(read_done) = *read_done_at {
                        entry.gaps.record(now.saturating_sub(read_done));
                    }
                    self.counters.cycles_committed += 1;
                }
                match outcome {
                    Outcome::Committed if keeps => {
                        // The cycle goes on for the holder's other files; its view is its
                        // own commit.
                        current.view = generation;
                        current.kept = true;
                        self.kept_at.insert(holder, now);
                        *writing = true;
                        if *uses == 0 {
                            *idle_since = Some(now);
                        }
                        false
                    }
                    Outcome::Committed => true,
                    Outcome::Reloaded => {
                        // A fresh cycle of the holder from its own commit, as if the load
                        // had come after it.
                        current.view = generation;
                        current.granted_at = now;
                        current.kept = false;
                        current.touched = false;
                        current.claimed = false;
                        current.removed = false;
                        *writing = false;
                        *idle_since = (*uses == 0).then_some(now);
                        *read_done_at = *idle_since;
                        false
                    }
                    // A blind removal (a temp file renamed into place) ends its cycle.
                    Outcome::Removed if current.view.is_none() => true,
                    Outcome::Removed | Outcome::Touched => {
                        // The cycle goes on from the removal or the empty create: its view
                        // is its own commit.
                        current.view = generation;
                        current.touched |= outcome == Outcome::Touched;
                        current.removed |= outcome == Outcome::Removed;
                        *writing = true;
                        if *uses == 0 {
                            *idle_since = Some(now);
                        }
                        false
                    }
                    // A blind write that wrote nothing (an open for a retry that never
                    // came, a create given up) has no cycle to linger for.
                    Outcome::Read if *uses == 0 && *writing && current.view.is_none() => true,
                    Outcome::Read => {
                        if *uses == 0 {
                            *idle_since = Some(now);
                            if !*writing {
                                *read_done_at = Some(now);
                            }
                        }
                        false
                    }
                }
            }
            Mode::Shared { holders } => {
                if wrote {
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
        let exclusive = matches!(current.mode, Mode::Exclusive { .. });
        // A process that read the file knows its own save; a blind writer keeps no view.
        let had_view = current.view.is_some() || self.seen.contains_key(&(key.clone(), holder));
        if wrote && !exclusive {
            self.carry_view_over_append(&key, holder, before);
        }
        if (ended || reloaded) && wrote && exclusive {
            self.read_streaks.remove(&(key.clone(), holder));
        }
        if ended && wrote && exclusive && had_view {
            let generation = generation.expect("wrote");
            self.note_seen(&key, holder, Seen::own_commit(generation, now));
        }
        match outcome {
            Outcome::Removed if !ended => self.hold_store_save(now, holder),
            Outcome::Committed | Outcome::Reloaded => self.end_store_save(holder),
            Outcome::Read | Outcome::Removed | Outcome::Touched => {}
        }
        if ended {
            self.end_lease(&key);
            self.grant_waiters(now, &key, &mut actions);
        } else if self.ends_at_close(&key, holder) {
            self.end_read_only(now, &key);
            self.grant_waiters(now, &key, &mut actions);
        } else {
            // A use ended: the linger may now end the lease before its maximum hold.
            self.schedule(&key);
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
                    ..
                },
                tied: false,
                ..
            }) if *h == holder
        ) && self.linger_for(key, entry, holder).is_zero()
    }

    /// The holder did something that belongs to its cycles (wrote a temp file): its
    /// lingering reads start their linger again, up to the longest linger after the read.
    /// A name the holder removed (`Outcome::Removed`) is not kept by activity: its re-create
    /// comes at once or not at all, and git, which unlinks a temp object per file it adds,
    /// kept thousands of them alive for as long as it wrote anything.
    ///
    /// Done at most once per [`ACTIVITY_GRAIN`] per holder: a linger may then end up to that
    /// much early, and a program writing thousands of files (git add) does not scan every
    /// lease at every write.
    pub fn activity(&mut self, now: Duration, holder: Holder) {
        if self
            .last_activity
            .get(&holder)
            .is_some_and(|last| now.saturating_sub(*last) < ACTIVITY_GRAIN)
        {
            return;
        }
        self.last_activity.insert(holder, now);
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
                        writing: false,
                        idle_since: Some(idle),
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

    /// Whether `wait` is still in a queue (not yet granted or otherwise answered).
    pub fn is_waiting(&self, wait: WaitId) -> bool {
        self.waiting.contains_key(&wait)
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
            self.revoke_lease(now, key, EndReason::Manual, &mut actions);
            self.grant_waiters(now, key, &mut actions);
        }
        actions
    }

    /// Ends what is due at `now`: lingers, maximum holds, waiter limits.
    pub fn tick(&mut self, now: Duration) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        let mut due: Vec<(K, bool)> = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            let Some(key) = self.active.get(&id).cloned() else {
                continue;
            };
            let entry = &self.entries[&key];
            let Some(lease) = entry.lease.as_ref().filter(|lease| lease.id == id) else {
                continue;
            };
            let (deadline, revoke) = self.lease_deadline(&key, entry, lease);
            if deadline <= now {
                due.push((key, revoke));
            } else {
                // Its deadline moved later since it was filed: file it again.
                self.schedule(&key);
            }
        }
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
                self.revoke_lease(now, &key, EndReason::MaxHold, &mut actions);
            } else {
                self.end_quiet(now, &key);
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
        self.expire_reads_beside(now, &mut actions);
        actions
    }

    /// When [`Engine::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        let leases = self.deadlines.first().map(|(at, _)| *at);
        let waiters = self.waiting.iter().filter_map(|(wait, key)| {
            self.entries[key]
                .queue
                .iter()
                .find(|waiter| waiter.id == *wait)
                .map(|waiter| waiter.deadline)
        });
        leases
            .into_iter()
            .chain(waiters)
            .chain(self.next_read_beside_deadline())
            .min()
    }

    pub(super) fn lease_deadline(&self, key: &K, entry: &Entry, lease: &Lease) -> (Duration, bool) {
        if lease.yielded {
            return (Duration::ZERO, false);
        }
        let hold = lease.granted_at.saturating_add(self.policy.max_hold);
        if lease.pending {
            return (hold, true);
        }
        if lease.tied {
            return (hold, true);
        }
        let quiet = match lease.mode {
            Mode::Exclusive {
                idle_since: Some(idle),
                holder,
                ..
            } => Some(idle.saturating_add(self.linger_for(key, entry, holder))),
            _ => None,
        };
        match quiet {
            Some(quiet) if quiet < hold => (quiet, false),
            _ => (hold, true),
        }
    }

    /// Whether `holder` has shown itself a reader of `key`: read-only cycles in a row, and
    /// never a save.
    pub(super) fn is_reader(&self, key: &K, holder: Holder) -> bool {
        let slot = (key.clone(), holder);
        self.read_streaks.get(&slot).copied().unwrap_or(0) >= READER_STREAK
            && !self.savers.contains(&slot)
    }

    /// The linger of `holder`'s cycle on `key`: none for a process that keeps reading
    /// without saving, else what the file's read-to-save gaps call for.
    pub(super) fn linger_for(&self, key: &K, entry: &Entry, holder: Holder) -> Duration {
        let removed = matches!(
            entry.lease.as_ref().map(|lease| &lease.mode),
            Some(Mode::Exclusive { writing: true, .. })
        );
        let claimed = entry.lease.as_ref().is_some_and(|lease| lease.claimed);
        if self.is_reader(key, holder) && !removed {
            Duration::ZERO
        } else if claimed {
            self.claim_linger(entry)
        } else {
            entry.gaps.linger(&self.policy)
        }
    }

    pub(super) fn revoke_lease(
        &mut self,
        now: Duration,
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
        self.remember_view(now, key);
        self.end_lease(key);
    }

    /// The deadline index never files a lease later than its deadline (for tests).
    #[cfg(test)]
    pub(super) fn check_deadline_index(&self) {
        for (id, key) in &self.active {
            let entry = &self.entries[key];
            let lease = entry.lease.as_ref().expect("active lease is current");
            let (deadline, _) = self.lease_deadline(key, entry, lease);
            let filed = lease.scheduled.expect("every live lease is filed");
            assert!(
                self.deadlines.contains(&(filed, *id)) && filed <= deadline,
                "lease {id:?} filed at {filed:?}, due at {deadline:?}"
            );
        }
    }

    /// Files the current lease on `key` under its deadline now.
    pub(super) fn schedule(&mut self, key: &K) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        let Some(lease) = entry.lease.as_ref() else {
            return;
        };
        let (deadline, _) = self.lease_deadline(key, entry, lease);
        let (id, before) = (lease.id, lease.scheduled);
        if before == Some(deadline) {
            return;
        }
        if let Some(at) = before {
            self.deadlines.remove(&(at, id));
        }
        self.deadlines.insert((deadline, id));
        if let Some(lease) = self.entries.get_mut(key).and_then(|e| e.lease.as_mut()) {
            lease.scheduled = Some(deadline);
        }
    }

    /// Ends the lease on `key`.
    pub(super) fn end_lease(&mut self, key: &K) {
        let entry = self.entries.get_mut(key).expect("entry exists");
        if let Some(lease) = entry.lease.take() {
            self.active.remove(&lease.id);
            if let Some(at) = lease.scheduled {
                self.deadlines.remove(&(at, lease.id));
            }
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
                self.bump(&key);
                self.counters.cycles_committed += 1;
            }
            self.end_lease(&key);
            self.grant_waiters(now, &key, actions);
        }
    }

    /// Ends a cycle that wrote nothing and counts it toward its holder's reader streak.
    pub(super) fn end_read_only(&mut self, now: Duration, key: &K) {
        let holder = match self.entries[key].lease.as_ref().map(|lease| &lease.mode) {
            Some(Mode::Exclusive {
                holder,
                writing: false,
                ..
            }) => Some(*holder),
            _ => None,
        };
        if let Some(holder) = holder {
            if self.prune_streaks_at.due(self.read_streaks.len()) {
                // Files forgotten since (nothing seen of them within the horizon) start
                // their streaks afresh: the map stays bounded by what is remembered.
                let entries = &self.entries;
                self.read_streaks
                    .retain(|(file, _), _| entries.contains_key(file));
                self.prune_streaks_at.pruned(self.read_streaks.len());
            }
            *self.read_streaks.entry((key.clone(), holder)).or_default() += 1;
            self.counters.cycles_read_only += 1;
        }
        self.remember_view(now, key);
        self.end_lease(key);
    }

    /// Forgets all that is known of the files `gone` matches (their directory was removed,
    /// and a new one may come back under the same id), but those leased or waited on.
    pub fn forget_files(&mut self, gone: impl Fn(&K) -> bool) {
        let entries = &mut self.entries;
        self.seen.retain(|(key, _), _| {
            let keep = !gone(key);
            if !keep {
                entry_seen_by(entries, key, -1);
            }
            keep
        });
        self.read_streaks.retain(|(key, _), _| !gone(key));
        self.savers.retain(|(key, _)| !gone(key));
        self.claims.retain(|key, _| !gone(key));
        self.entries
            .retain(|key, entry| !gone(key) || entry.lease.is_some() || !entry.queue.is_empty());
    }

    /// Forgets every file that nothing refers to any more.
    pub(super) fn forget_idle_entries(&mut self) {
        self.entries.retain(|_, entry| !entry.is_idle());
    }

    pub(super) fn forget_if_idle(&mut self, key: &K) {
        if self.entries.get(key).is_some_and(Entry::is_idle) {
            self.entries.remove(key);
        }
    }

    /// Grants the head of the queue while the lease allows (appenders beside an appender,
    /// and waiters that belong to the holder's own cycle), refusing stale writers.
    pub(super) fn grant_waiters(&mut self, now: Duration, key: &K, actions: &mut Vec<Action<K>>) {
        self.grant_joiners(key, actions);
        while let Some(entry) = self.entries.get_mut(key) {
            let Some(head) = entry.queue.front() else {
                break;
            };
            if entry.waits_for_readers(&head.ask) {
                break;
            }
            let joining = entry
                .lease
                .as_ref()
                .is_some_and(|lease| joins(lease, head.holder, &head.ask));
            let fits = match entry.lease.as_ref().map(|lease| &lease.mode) {
                None => true,
                Some(Mode::Shared { .. }) => head.ask.intent == Intent::Append,
                Some(Mode::Exclusive { .. }) => joining,
            };
            if !fits {
                break;
            }
            let waiter = entry.queue.pop_front().expect("head exists");
            self.waiting.remove(&waiter.id);
            let lease_now = entry.lease.is_some();
            if !lease_now
                && waiter.ask.intent == Intent::Write
                && self.out_of_date(now, key, waiter.holder, &waiter.ask)
            {
                self.counters.fenced_commits += 1;
                self.close_view(key, waiter.holder);
                actions.push(Action::Fenced { wait: waiter.id });
                continue;
            }
            let waited = now.saturating_sub(waiter.since).as_millis() as u64;
            self.counters.wait_total_ms += waited;
            self.counters.wait_longest_ms = self.counters.wait_longest_ms.max(waited);
            if waiter.ask.intent == Intent::Write {
                self.settle_family_view(key, &waiter.ask);
            }
            let answer = if lease_now {
                self.join(key, waiter.holder, waiter.ask.intent)
            } else {
                Admission::Granted(self.start_lease(now, key, waiter.holder, waiter.ask.intent))
            };
            match answer {
                Admission::Granted(grant) => actions.push(Action::Granted {
                    wait: waiter.id,
                    grant,
                }),
                _ => actions.push(Action::Fenced { wait: waiter.id }),
            }
        }
        self.forget_if_idle(key);
        self.end_untied(now, actions);
    }

    /// Waiters that belong to the current cycle (a child's write after its parent took
    /// the cycle over) join it wherever they stand in the queue.
    fn grant_joiners(&mut self, key: &K, actions: &mut Vec<Action<K>>) {
        loop {
            let Some(entry) = self.entries.get_mut(key) else {
                return;
            };
            let Some(lease) = entry.lease.as_ref() else {
                return;
            };
            let Some(at) = entry.queue.iter().position(|waiter| {
                joins(lease, waiter.holder, &waiter.ask) && !entry.waits_for_readers(&waiter.ask)
            }) else {
                return;
            };
            let waiter = entry.queue.remove(at).expect("found above");
            self.waiting.remove(&waiter.id);
            let action = match self.join(key, waiter.holder, waiter.ask.intent) {
                Admission::Granted(grant) => Action::Granted {
                    wait: waiter.id,
                    grant,
                },
                _ => Action::Fenced { wait: waiter.id },
            };
            actions.push(action);
        }
    }

    pub(super) fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Whether a read by the holder of `lease` continues its cycle instead of starting another:
/// one from its main thread (sync code: git, rsync, Python, conf's readFileSync; a front
/// end that cannot tell threads says 0). A read from a worker thread is a cycle of its
/// own: `Promise.all` cycles run on Node's libuv pool, which may share one thread between
/// them, and a pool thread preempted between taking a cycle's open and issuing it lets
/// another cycle open, read and close first. Letting a worker-thread re-read join when no
/// handle was open (write-json-file reads twice from the pool) lost an S2 update in 3 of
/// 20 runs under CPU load, against 0 of 20 with this rule.
fn continues_cycle(holder: Holder, ask: &Ask) -> bool {
    let main_thread = ask.thread == 0 || ask.thread == holder.pid;
    !ask.concurrent && main_thread
}

/// Whether a request by `holder` joins `lease` instead of queueing behind it: the holder's
/// own requests (but a read from a second thread while another thread has the file open),
/// and writes from its children. A temp file's tied lease is joined only by writes (the
/// rename that moves it into place).
fn joins(lease: &Lease, holder: Holder, ask: &Ask) -> bool {
    let writes = ask.intent == Intent::Write;
    match &lease.mode {
        Mode::Exclusive { holder: h, .. } => {
            let own = *h == holder;
            let family = ask.family.contains(&Some(*h));
            if lease.tied {
                // The rename that moves it into place, or its writer reading it back (git
                // writes COMMIT_EDITMSG, then reads it).
                (writes && family) || (own && (writes || !ask.concurrent))
            } else {
                (own && (writes || continues_cycle(holder, ask)))
                    || (family && (writes || (lease.passed && ask.intent == Intent::Read)))
            }
        }
        // Appenders join one another only while nobody queues (see `request`).
        Mode::Shared { .. } => false,
    }
}
