//! An exhaustive check of the engine: every interleaving of three processes running
//! real programs' cycles on one file, with time passing and a kill at any point.
//!
//! - P0 reads, re-reads from the same thread (conf, git), then saves (rename, locked).
//! - P1 runs two cycles at once on one worker thread (`Promise.all`): read, save; read,
//!   save.
//! - P2 is a shell pipeline: its child reads and exits, another child renames the temp.
//!
//!
//! A second world has a known reader (it reads beside cycles) reading twice, a writer in
//! place (read, then open for writing) and a saver by rename, and asserts besides that
//! nobody reads the file while another process writes it in place.
//!
//! The checker explores depth-first, cloning the engine at each branch. It asserts, for
//! every interleaving: no acknowledged save was built on a read older than the file (a
//! cycle's base is its first read); no request that holds a kernel lock is parked and no
//! process waits for its own sequential re-open; and every parked request is answered
//! (granted, fenced, or timed out at the maximum wait) once time runs on.

use std::collections::HashMap;
use std::time::Duration;

use super::model_clock::{Answers, Clocked, record_answers};
use super::*;

const P0: Holder = holder(10, 1);
const P1: Holder = holder(11, 1);
const SHELL: Holder = holder(12, 1);
const SED: Holder = holder(13, 2);
const MV: Holder = holder(14, 3);

const READER: Holder = holder(15, 1);
const IN_PLACE: Holder = holder(16, 1);

const KEY: &str = "store.json";

/// The libuv pool thread P1's cycles share (any id but a pid: not a main thread).
const WORKER_THREAD: u32 = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    /// Open for reading (`reopen`: the process has it open on this thread already).
    Read { reopen: bool },
    /// Close every handle of this actor, then rename a temp onto the file.
    Save,
    /// The process exits (its parent lives on).
    Exit,
    /// Close every handle of this actor without a write (a reader's close).
    Close,
    /// Open the file for writing in place (`writeFile` with O_TRUNC; not under a lock).
    WriteInPlace,
    /// Close the handles, the one written in place last: its commit.
    CommitInPlace,
}

#[derive(Clone, Debug)]
struct Actor {
    process: Holder,
    /// Whose child this actor's process is (for the shell's children).
    family: [Option<Holder>; 2],
    /// The other actor of the same process running at the same time (P1's threads).
    sibling_thread: Option<usize>,
    program: Vec<(Holder, Op)>,
    next: usize,
    /// Granted uses of this actor, ended at its save.
    uses: Vec<LeaseId>,
    /// The generation its cycle's first read saw.
    base: Option<u64>,
    waiting: Option<WaitId>,
    dead: bool,
    /// Its handle open for writing in place (granted, not yet closed).
    writing_in_place: Option<LeaseId>,
}

#[derive(Clone)]
struct World {
    engine: Engine<&'static str>,
    actors: Vec<Actor>,
    now: Duration,
    ticks_left: u32,
    kill_left: bool,
    /// Answers for parked requests: wait -> (actor, granted lease or refused).
    answered: Answers,
    /// What happened so far, printed when a promise breaks.
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

fn actors() -> Vec<Actor> {
    let actor = |process, family, sibling_thread, program: Vec<(Holder, Op)>| Actor {
        process,
        family,
        sibling_thread,
        program,
        next: 0,
        uses: Vec::new(),
        base: None,
        waiting: None,
        dead: false,
        writing_in_place: None,
    };
    vec![
        actor(
            P0,
            [None, None],
            None,
            vec![
                (P0, Op::Read { reopen: false }),
                (P0, Op::Read { reopen: true }),
                (P0, Op::Save),
            ],
        ),
        actor(
            P1,
            [None, None],
            Some(2),
            vec![(P1, Op::Read { reopen: false }), (P1, Op::Save)],
        ),
        actor(
            P1,
            [None, None],
            Some(1),
            vec![(P1, Op::Read { reopen: false }), (P1, Op::Save)],
        ),
        actor(
            SED,
            [Some(SHELL), None],
            None,
            vec![
                (SED, Op::Read { reopen: false }),
                (SED, Op::Exit),
                (MV, Op::Save),
            ],
        ),
    ]
}

/// A known reader reading twice, a writer in place (read, then open for writing) and a
/// saver by rename, for the reads beside a cycle.
fn readers_and_writers() -> Vec<Actor> {
    let mut actors = actors();
    let base = actors.remove(0);
    let actor = |process, program: Vec<(Holder, Op)>| Actor {
        process,
        program,
        ..base.clone()
    };
    vec![
        actor(P0, vec![(P0, Op::Read { reopen: false }), (P0, Op::Save)]),
        actor(
            READER,
            vec![
                (READER, Op::Read { reopen: false }),
                (READER, Op::Close),
                (READER, Op::Read { reopen: false }),
                (READER, Op::Close),
            ],
        ),
        actor(
            IN_PLACE,
            vec![
                (IN_PLACE, Op::Read { reopen: false }),
                (IN_PLACE, Op::WriteInPlace),
                (IN_PLACE, Op::CommitInPlace),
            ],
        ),
    ]
}

impl World {
    fn new() -> World {
        World::with(actors())
    }

    /// `READER` has ended two read-only cycles already: it reads beside cycles.
    fn with_a_known_reader() -> World {
        let mut world = World::with(readers_and_writers());
        for _ in 0..2 {
            let read = world
                .engine
                .request(world.now, &KEY, READER, Ask::new(Intent::Read));
            let Admission::Granted(grant) = read else {
                panic!("the reader's first reads are granted")
            };
            world
                .engine
                .finish(world.now, grant.lease, READER, Outcome::Read);
            world.now += policy().max_linger;
            world.engine.tick(world.now);
        }
        world
    }

    fn with(actors: Vec<Actor>) -> World {
        World {
            engine: Engine::new(policy()),
            actors,
            now: Duration::ZERO,
            ticks_left: 2,
            kill_left: true,
            answered: HashMap::new(),
            log: Vec::new(),
        }
    }

    fn can_step(&self, index: usize) -> bool {
        let actor = &self.actors[index];
        !actor.dead && actor.waiting.is_none() && actor.next < actor.program.len()
    }

    fn step(&mut self, index: usize) {
        let now = self.now;
        let (process, op) = self.actors[index].program[self.actors[index].next];
        self.log.push(format!(
            "t={:?} actor {index} pid {} {op:?}",
            now, process.pid
        ));
        match op {
            Op::Read { reopen } => {
                // P1's two cycles run on one shared pool thread (libuv may hand both
                // opens to the same worker): the front end sees no other thread's handle,
                // and only the uses still open tell the cycles apart.
                let thread = match self.actors[index].sibling_thread {
                    Some(_) => WORKER_THREAD,
                    None => process.pid,
                };
                let ask = Ask {
                    family: self.actors[index].family,
                    thread,
                    ..Ask::new(Intent::Read)
                };
                match self.engine.request(now, &KEY, process, ask) {
                    Admission::Granted(grant) => {
                        let actor = &mut self.actors[index];
                        actor.uses.push(grant.lease);
                        actor.base.get_or_insert(grant.generation);
                        actor.next += 1;
                    }
                    Admission::Queued(wait) => {
                        let holder = self.engine.holders_of(&KEY).first().copied();
                        assert!(
                            !reopen || holder != Some(process),
                            "a process waited for its own re-open"
                        );
                        self.actors[index].waiting = Some(wait);
                    }
                    Admission::Fenced | Admission::OutOfTurn => {
                        panic!("a read was refused")
                    }
                }
            }
            Op::Save => {
                let uses = std::mem::take(&mut self.actors[index].uses);
                let owner = self.actors[index].program[0].0;
                for lease in uses {
                    let actions = self.engine.finish(now, lease, owner, Outcome::Read);
                    self.apply(actions);
                }
                let ask = Ask {
                    family: [Some(SHELL), None].map(|h| h.filter(|_| process == MV)),
                    locked: true,
                    replaces: true,
                    ..Ask::new(Intent::Write)
                };
                let before = self.engine.generation(&KEY);
                let acknowledged = match self.engine.request(now, &KEY, process, ask) {
                    Admission::Granted(grant) => {
                        let actions =
                            self.engine
                                .finish(now, grant.lease, process, Outcome::Committed);
                        self.apply(actions);
                        true
                    }
                    Admission::OutOfTurn => {
                        self.engine
                            .commit_out_of_turn(now, &KEY, process, Outcome::Committed);
                        true
                    }
                    Admission::Fenced => false,
                    Admission::Queued(_) => panic!("a locked request was parked"),
                };
                let actor = &mut self.actors[index];
                if acknowledged && let Some(base) = actor.base {
                    assert_eq!(
                        base,
                        before,
                        "an acknowledged save was built on a stale first read:\n{}",
                        self.log.join("\n")
                    );
                }
                actor.base = None;
                actor.next += 1;
            }
            Op::Close => {
                let uses = std::mem::take(&mut self.actors[index].uses);
                for lease in uses {
                    let actions = self.engine.finish(now, lease, process, Outcome::Read);
                    self.apply(actions);
                }
                self.actors[index].base = None;
                self.actors[index].next += 1;
            }
            Op::WriteInPlace => {
                let ask = Ask {
                    thread: process.pid,
                    ..Ask::new(Intent::Write)
                };
                match self.engine.request(now, &KEY, process, ask) {
                    Admission::Granted(grant) => {
                        let actor = &mut self.actors[index];
                        actor.uses.push(grant.lease);
                        actor.writing_in_place = Some(grant.lease);
                        actor.next += 1;
                    }
                    Admission::Queued(wait) => self.actors[index].waiting = Some(wait),
                    Admission::Fenced => {
                        let actor = &mut self.actors[index];
                        actor.next = actor.program.len();
                    }
                    Admission::OutOfTurn => panic!("an unlocked write went out of turn"),
                }
            }
            Op::CommitInPlace => {
                let actor = &mut self.actors[index];
                let written = actor.writing_in_place.take().expect("opened for writing");
                let uses = std::mem::take(&mut actor.uses);
                let base = actor.base.take();
                let before = self.engine.generation(&KEY);
                for lease in uses.into_iter().filter(|lease| *lease != written) {
                    let actions = self.engine.finish(now, lease, process, Outcome::Read);
                    self.apply(actions);
                }
                let actions = self
                    .engine
                    .finish(now, written, process, Outcome::Committed);
                self.apply(actions);
                if let Some(base) = base {
                    assert_eq!(
                        base,
                        before,
                        "a write in place was built on a stale first read:\n{}",
                        self.log.join("\n")
                    );
                }
                self.actors[index].next += 1;
            }
            Op::Exit => {
                self.actors[index].uses.clear();
                self.actors[index].next += 1;
                let actions = self.engine.holder_exited(now, process, Some(SHELL));
                self.apply(actions);
            }
        }
        self.finish_process_if_done(index);
        self.check_no_read_beside_a_write_in_place();
    }

    /// Nobody reads the file while another process writes it in place.
    fn check_no_read_beside_a_write_in_place(&self) {
        for writer in self.actors.iter().filter(|a| a.writing_in_place.is_some()) {
            let reading = self
                .actors
                .iter()
                .any(|a| a.process != writer.process && !a.dead && !a.uses.is_empty());
            assert!(
                !reading,
                "a read overlapped a write in place:\n{}",
                self.log.join("\n")
            );
        }
    }

    /// A process whose actors are all done exits.
    fn finish_process_if_done(&mut self, index: usize) {
        let process = self.actors[index].process;
        let done = self
            .actors
            .iter()
            .filter(|a| a.process == process)
            .all(|a| a.next >= a.program.len() && a.waiting.is_none());
        if done && !self.actors[index].dead {
            for actor in self.actors.iter_mut().filter(|a| a.process == process) {
                actor.dead = true;
            }
            let last = *self.actors[index].program.last().map(|(h, _)| h).unwrap();
            let actions = self.engine.holder_exited(self.now, last, None);
            self.apply(actions);
        }
    }

    fn tick(&mut self, by: Duration) {
        self.now += by;
        self.log.push(format!("tick to {:?}", self.now));
        let actions = self.engine.tick(self.now);
        self.apply(actions);
    }

    fn kill(&mut self, process: Holder) {
        self.log.push(format!("kill pid {}", process.pid));
        for actor in self.actors.iter_mut().filter(|a| a.process == process) {
            actor.dead = true;
            actor.waiting = None;
            actor.uses.clear();
            actor.writing_in_place = None;
        }
        let actions = self.engine.holder_exited(self.now, process, None);
        self.apply(actions);
    }

    /// With no more moves, time runs on: every parked request must be answered.
    fn settle(mut self) {
        if !self.run_out_the_clock() {
            let stuck: Vec<_> = self.actors.iter().filter(|a| a.waiting.is_some()).collect();
            panic!("parked requests never answered: {stuck:?}");
        }
    }
}

impl Clocked for World {
    fn engine_and_clock(&mut self) -> (&mut Engine<&'static str>, &mut Duration) {
        (&mut self.engine, &mut self.now)
    }

    fn apply(&mut self, actions: Vec<Action<&'static str>>) {
        record_answers(&mut self.answered, actions);
        // Hand answers to the actors that wait for them.
        for actor in &mut self.actors {
            let Some(wait) = actor.waiting else {
                continue;
            };
            match self.answered.get(&wait) {
                Some(Some(grant)) => {
                    if actor.program[actor.next].1 == Op::WriteInPlace {
                        actor.writing_in_place = Some(grant.lease);
                    }
                    actor.uses.push(grant.lease);
                    actor.base.get_or_insert(grant.generation);
                    actor.waiting = None;
                    actor.next += 1;
                }
                Some(None) => {
                    // Refused: this cycle ends unacknowledged.
                    actor.waiting = None;
                    actor.next = actor.program.len();
                }
                None => {}
            }
        }
    }

    fn anyone_waits(&self) -> bool {
        self.actors.iter().any(|a| a.waiting.is_some())
    }
}

fn explore(world: World, leaves: &mut u64) {
    world.engine.check_deadline_index();
    let mut moved = false;
    for index in 0..world.actors.len() {
        if world.can_step(index) {
            moved = true;
            let mut next = world.clone();
            next.step(index);
            explore(next, leaves);
        }
    }
    if world.ticks_left > 0 && world.actors.iter().any(|a| !a.dead) {
        // Linger-sized steps: revocation at the maximum hold is checked in tests.rs (a
        // revoked cycle's rename from a process with a second cycle queued can join that
        // second cycle: a known gap, see the README).
        for by in [policy().linger, policy().max_linger] {
            let mut next = world.clone();
            next.ticks_left -= 1;
            next.tick(by);
            explore(next, leaves);
        }
    }
    if world.kill_left && !world.actors[0].dead {
        let mut next = world.clone();
        next.kill_left = false;
        next.kill(P0);
        explore(next, leaves);
    }
    if !moved {
        *leaves += 1;
        world.settle();
    }
}

/// Explores every interleaving from `world`; fails below `at_least` of them (the world
/// did not branch as it should).
fn explore_all(world: World, at_least: u64) {
    let mut leaves = 0;
    explore(world, &mut leaves);
    assert!(leaves > at_least, "explored only {leaves} interleavings");
    eprintln!("explored {leaves} interleavings");
}

#[test]
fn every_interleaving_of_three_processes_keeps_the_promises() {
    explore_all(World::new(), 10_000);
}

#[test]
fn every_interleaving_of_a_known_reader_and_two_writers_keeps_reads_whole() {
    explore_all(World::with_a_known_reader(), 1_000);
}
