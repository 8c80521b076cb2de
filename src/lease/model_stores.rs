//! An exhaustive check of the engine on a store of two files: every interleaving of two
//! processes running `dbm.dumb` sessions (Python `shelve`; two sessions against one), with
//! time passing and a kill at any point.
//!
//! A session reads `state.dat` and `state.dir` (the index; a lookup that finds it missing
//! loads an empty one), writes its value into `.dat` in place, appends its key to `.dir`,
//! then renames `.dir` away and creates it again from the index it loaded plus its key.
//! A lookup that finds `.dir` missing while the other process claims or holds it gets a
//! placeholder: the session waits at it (a load as a read OPEN, a create as the GETATTR
//! of its permission check) and then retries the op in the lease it was granted.
//! The model keeps the index's content. It asserts, for every interleaving: when nobody
//! was killed, the index at the end holds the key of every session that completed (an
//! acknowledged update); no write of a session waits for its own process; and every
//! parked request is answered once time runs on.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use super::model_clock::{Answers, Clocked, record_answers};
use super::*;

const A: Holder = holder(20, 1);
const B: Holder = holder(21, 1);

const DAT: &str = "state.dat";
const DIR: &str = "state.dir";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Open, read, close (the session's load).
    Read(&'static str),
    /// `.dat` opened for writing in place, written at its end, closed.
    WriteValue,
    /// `.dir` opened with O_APPEND, one line appended, closed.
    AppendKey,
    /// `.dir` renamed to `.bak` (under the directory lock).
    RenameIndexAway,
    /// A new `.dir` created and written from the loaded index (under the directory lock).
    CreateIndex,
}

const SESSION: [Op; 6] = [
    Op::Read(DAT),
    Op::Read(DIR),
    Op::WriteValue,
    Op::AppendKey,
    Op::RenameIndexAway,
    Op::CreateIndex,
];

/// A session's key: its process and which of its sessions.
type Key = (u32, usize);

#[derive(Clone, Debug)]
struct Session {
    process: Holder,
    program: Vec<Op>,
    next: usize,
    waiting: Option<WaitId>,
    dead: bool,
    /// The index this session loaded (empty when it found none).
    loaded: BTreeSet<Key>,
    /// The op's lookup got a placeholder, and the wait at it was granted: the lease the
    /// kernel's retry of the op continues, and whether it was granted to a GETATTR (the
    /// permission check before an open for writing).
    kept: Option<(LeaseId, bool)>,
    /// The parked request is a placeholder's, not the op's own.
    at_placeholder: bool,
}

impl Session {
    fn key(&self) -> Key {
        (self.process.pid, self.next / SESSION.len())
    }
}

#[derive(Clone)]
struct World {
    engine: Engine<&'static str>,
    sessions: Vec<Session>,
    /// The content of `state.dir`; None while it is renamed away.
    index: Option<BTreeSet<Key>>,
    /// Keys of the sessions that completed: acknowledged updates.
    acknowledged: BTreeSet<Key>,
    killed: bool,
    now: Duration,
    ticks_left: u32,
    kill_left: bool,
    answered: Answers,
    log: Vec<String>,
}

fn policy() -> Policy {
    Policy {
        linger: Duration::from_millis(50),
        max_linger: Duration::from_millis(200),
        linger_gap_factor: 4,
        max_hold: Duration::from_millis(2000),
        max_wait: Duration::from_millis(5000),
    }
}

/// What the kernel sends the daemon for `op`, given whether `.dir` exists now: the key
/// and the request, or None when nothing reaches the engine (a lookup that finds the
/// index missing; a rename of a missing index, which fails and which dbm ignores).
fn request_for(op: Op, process: Holder, index_exists: bool) -> Option<(&'static str, Ask)> {
    let plain = |intent| Ask {
        thread: process.pid,
        ..Ask::new(intent)
    };
    let locked = |intent| Ask {
        locked: true,
        ..plain(intent)
    };
    let create = |intent| Ask {
        creates: true,
        ..locked(intent)
    };
    Some(match op {
        Op::Read(DIR) if !index_exists => return None,
        Op::Read(key) => (key, plain(Intent::Read)),
        Op::WriteValue => (
            DAT,
            Ask {
                replaces: true,
                ..plain(Intent::Write)
            },
        ),
        Op::AppendKey if index_exists => (DIR, plain(Intent::Append)),
        Op::AppendKey => (DIR, create(Intent::Append)),
        Op::RenameIndexAway if index_exists => (DIR, locked(Intent::Write)),
        Op::RenameIndexAway => return None,
        // open(O_WRONLY|O_CREAT|O_TRUNC) of an index that exists is an OPEN, which may wait.
        Op::CreateIndex if index_exists => (
            DIR,
            Ask {
                replaces: true,
                ..plain(Intent::Write)
            },
        ),
        Op::CreateIndex => (DIR, create(Intent::Write)),
    })
}

fn outcome_of(op: Op) -> Outcome {
    match op {
        Op::Read(_) => Outcome::Read,
        Op::RenameIndexAway => Outcome::Removed,
        Op::WriteValue | Op::AppendKey | Op::CreateIndex => Outcome::Committed,
    }
}

impl World {
    /// `a_sessions` of process A and `b_sessions` of B, from a database whose index
    /// exists (`index_exists`) or not yet.
    fn new(a_sessions: usize, b_sessions: usize, index_exists: bool) -> World {
        let session = |process, sessions: usize| Session {
            process,
            program: SESSION.repeat(sessions),
            next: 0,
            waiting: None,
            dead: false,
            loaded: BTreeSet::new(),
            kept: None,
            at_placeholder: false,
        };
        World {
            engine: Engine::new(policy()),
            sessions: vec![session(A, a_sessions), session(B, b_sessions)],
            index: index_exists.then(BTreeSet::new),
            acknowledged: BTreeSet::new(),
            killed: false,
            now: Duration::ZERO,
            ticks_left: 2,
            kill_left: true,
            answered: HashMap::new(),
            log: Vec::new(),
        }
    }

    /// The op at `index`'s turn happens to the files.
    fn perform(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        let key = session.key();
        match session.program[session.next] {
            Op::Read(DIR) => session.loaded = self.index.clone().unwrap_or_default(),
            Op::Read(_) | Op::WriteValue => {}
            Op::AppendKey => {
                self.index.get_or_insert_with(BTreeSet::new).insert(key);
            }
            Op::RenameIndexAway => self.index = None,
            Op::CreateIndex => {
                let mut written = session.loaded.clone();
                written.insert(key);
                self.index = Some(written);
            }
        }
        session.next += 1;
        if session.next.is_multiple_of(SESSION.len()) {
            self.acknowledged.insert(key);
        }
    }

    /// The op at `index`'s turn went ahead with `lease`: it runs and ends.
    fn complete(&mut self, index: usize, lease: LeaseId) {
        let session = &self.sessions[index];
        let (process, op) = (session.process, session.program[session.next]);
        self.perform(index);
        let actions = self.engine.finish(self.now, lease, process, outcome_of(op));
        self.apply(actions);
    }

    /// A refused op: the session raises, and the process goes on with its next one. But
    /// dbm.dumb ignores a failed rename of the index away and creates it anyway.
    fn refuse(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        if session.program[session.next] == Op::RenameIndexAway {
            session.next += 1;
            return;
        }
        session.next = (session.next / SESSION.len() + 1) * SESSION.len();
        session.loaded.clear();
    }

    fn can_step(&self, index: usize) -> bool {
        let session = &self.sessions[index];
        !session.dead && session.waiting.is_none() && session.next < session.program.len()
    }

    fn step(&mut self, index: usize) {
        self.attempt(index, true);
        let session = &mut self.sessions[index];
        let process = session.process;
        if session.next >= session.program.len() && session.waiting.is_none() && !session.dead {
            session.dead = true;
            let actions = self.engine.holder_exited(self.now, process, None);
            self.apply(actions);
        }
    }

    /// The kernel's request for the op at `index`'s turn. A request that holds the
    /// directory lock and is refused with ESTALE is sent again once after a fresh lookup
    /// (`may_retry`): a refused create of an index that somebody else has created since
    /// comes back as an OPEN with O_TRUNC of that file.
    fn attempt(&mut self, index: usize, may_retry: bool) {
        let session = &self.sessions[index];
        let (process, op) = (session.process, session.program[session.next]);
        self.log.push(format!(
            "t={:?} pid {} {op:?}{} (index {:?}, kept {:?})",
            self.now,
            process.pid,
            if may_retry { "" } else { " retried" },
            self.index,
            self.sessions[index].kept,
        ));
        let creates = matches!(op, Op::AppendKey | Op::CreateIndex) && self.index.is_none();
        let looks_up_missing = self.index.is_none() && (creates || op == Op::Read(DIR));
        if looks_up_missing && !may_retry {
            // The kernel's lookup before its retry of a refused request (see
            // `Gate::lookup_missing`): no new absence, no placeholder.
            self.engine.saw_missing_again(&DIR, process);
        } else if looks_up_missing {
            if let Some((lease, _)) = self.sessions[index].kept.take() {
                // The retry found the index still missing: the kept use ends here, and the
                // op goes on in the process's own cycle.
                let actions = self.engine.finish(self.now, lease, process, Outcome::Read);
                self.apply(actions);
                let absence =
                    self.engine
                        .lookup_missing(self.now, &DIR, process, [None, None], true);
                assert_eq!(
                    absence,
                    Absence::Missing,
                    "a retry in its own cycle got a placeholder:\n{}",
                    self.log.join("\n")
                );
            } else if self
                .engine
                .lookup_missing(self.now, &DIR, process, [None, None], true)
                == Absence::Claimed
            {
                return self.wait_at_placeholder(index, op);
            }
        }
        if let Some((lease, by_stat)) = self.sessions[index].kept.take() {
            let saves = !matches!(op, Op::Read(_));
            if by_stat
                && saves
                && self
                    .engine
                    .fence_stale_save(self.now, &DIR, process, [None, None])
            {
                let actions = self.engine.finish(self.now, lease, process, Outcome::Read);
                self.apply(actions);
                return self.refuse(index);
            }
            return self.complete(index, lease);
        }
        match request_for(op, process, self.index.is_some()) {
            None => {
                self.perform(index);
            }
            Some((key, ask)) => match self.engine.request(self.now, &key, process, ask) {
                Admission::Granted(grant) => self.complete(index, grant.lease),
                Admission::OutOfTurn => {
                    self.perform(index);
                    self.engine
                        .commit_out_of_turn(self.now, &key, process, outcome_of(op));
                }
                Admission::Fenced if ask.locked && may_retry => self.attempt(index, false),
                Admission::Fenced => self.refuse(index),
                Admission::Queued(wait) => {
                    assert!(!ask.locked, "a locked request was parked");
                    let own = self.engine.holders_of(&key).first() == Some(&process);
                    assert!(
                        matches!(op, Op::Read(_)) || !own,
                        "a save of a session waited for its own process:\n{}",
                        self.log.join("\n")
                    );
                    self.sessions[index].waiting = Some(wait);
                }
            },
        }
    }

    /// The op's lookup got a placeholder: a load's OPEN of it waits as a read; an open
    /// for writing is modelled by the GETATTR of its permission check, granted as a read
    /// and judged when the retry saves.
    fn wait_at_placeholder(&mut self, index: usize, op: Op) {
        let process = self.sessions[index].process;
        let by_stat = !matches!(op, Op::Read(_));
        let ask = Ask {
            thread: process.pid,
            ..Ask::new(Intent::Read)
        };
        self.log.push(format!(
            "t={:?} pid {} waits at a placeholder",
            self.now, process.pid
        ));
        match self.engine.request(self.now, &DIR, process, ask) {
            Admission::Granted(grant) => {
                self.sessions[index].kept = Some((grant.lease, by_stat));
                self.attempt(index, true);
            }
            Admission::Queued(wait) => {
                self.sessions[index].waiting = Some(wait);
                self.sessions[index].at_placeholder = true;
            }
            Admission::Fenced | Admission::OutOfTurn => self.refuse(index),
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.log.push(format!("tick to {:?}", self.now));
        let actions = self.engine.tick(self.now);
        self.apply(actions);
    }

    fn kill(&mut self, index: usize) {
        let session = &mut self.sessions[index];
        self.log.push(format!("kill pid {}", session.process.pid));
        session.dead = true;
        session.waiting = None;
        let process = session.process;
        self.killed = true;
        let actions = self.engine.holder_exited(self.now, process, None);
        self.apply(actions);
    }

    /// With no more moves, time runs on: every parked request must be answered, and
    /// (when nobody was killed mid-save) every acknowledged key is in the index.
    fn settle(mut self) {
        assert!(
            self.run_out_the_clock(),
            "parked requests never answered:\n{}",
            self.log.join("\n")
        );
        if self.killed || self.sessions.iter().any(|s| s.next < s.program.len()) {
            return;
        }
        let index = self.index.clone().unwrap_or_default();
        let lost: Vec<&Key> = self.acknowledged.difference(&index).collect();
        assert!(
            lost.is_empty(),
            "acknowledged keys {lost:?} are not in the index {:?}:\n{}",
            self.index,
            self.log.join("\n")
        );
    }
}

impl Clocked for World {
    fn engine_and_clock(&mut self) -> (&mut Engine<&'static str>, &mut Duration) {
        (&mut self.engine, &mut self.now)
    }

    fn apply(&mut self, actions: Vec<Action<&'static str>>) {
        record_answers(&mut self.answered, actions);
        for index in 0..self.sessions.len() {
            let Some(wait) = self.sessions[index].waiting else {
                continue;
            };
            match self.answered.get(&wait).copied() {
                Some(Some(grant)) if self.sessions[index].at_placeholder => {
                    let session = &mut self.sessions[index];
                    session.waiting = None;
                    session.at_placeholder = false;
                    let by_stat = !matches!(session.program[session.next], Op::Read(_));
                    session.kept = Some((grant.lease, by_stat));
                    self.attempt(index, true);
                }
                Some(Some(grant)) => {
                    self.sessions[index].waiting = None;
                    self.complete(index, grant.lease);
                }
                Some(None) => {
                    self.sessions[index].waiting = None;
                    self.sessions[index].at_placeholder = false;
                    self.refuse(index);
                }
                None => {}
            }
        }
    }

    fn anyone_waits(&self) -> bool {
        self.sessions.iter().any(|s| s.waiting.is_some())
    }
}

fn explore(world: World, leaves: &mut u64) {
    world.engine.check_deadline_index();
    let mut moved = false;
    for index in 0..world.sessions.len() {
        if world.can_step(index) {
            moved = true;
            let mut next = world.clone();
            next.step(index);
            explore(next, leaves);
        }
    }
    if world.ticks_left > 0 && world.sessions.iter().any(|s| !s.dead) {
        // Linger-sized steps only: a longer pause ends the same cycles (kept ones linger
        // like any), and the state space stays small enough for CI.
        let mut next = world.clone();
        next.ticks_left -= 1;
        next.tick(policy().linger);
        explore(next, leaves);
    }
    if world.kill_left && !world.sessions[0].dead {
        let mut next = world.clone();
        next.kill_left = false;
        next.kill(0);
        explore(next, leaves);
    }
    if !moved {
        *leaves += 1;
        world.settle();
    }
}

/// Two sessions of one process against one of the other, both ways round (two against
/// two is 6 million interleavings, over a minute).
#[test]
fn every_interleaving_of_two_dbm_processes_keeps_every_key() {
    for index_exists in [true, false] {
        for (a, b) in [(2, 1), (1, 2)] {
            let mut leaves = 0;
            explore(World::new(a, b, index_exists), &mut leaves);
            assert!(leaves > 100_000, "explored only {leaves} interleavings");
            eprintln!(
                "{a} sessions against {b}, index exists: {index_exists}: \
                 explored {leaves} interleavings"
            );
        }
    }
}
