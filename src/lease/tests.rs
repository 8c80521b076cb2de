use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::engine::SEEN_PRUNE_AT;
use super::*;

const A: Holder = holder(100, 1);
const B: Holder = holder(200, 1);
const C: Holder = holder(300, 1);

fn ms(value: u64) -> Duration {
    Duration::from_millis(value)
}

fn policy() -> Policy {
    Policy {
        linger: ms(50),
        max_linger: ms(1000),
        linger_gap_factor: 4,
        max_hold: ms(10_000),
        max_wait: ms(60_000),
    }
}

fn engine() -> Engine<&'static str> {
    Engine::new(policy())
}

fn granted(admission: Admission) -> Grant {
    match admission {
        Admission::Granted(grant) => grant,
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn queued(admission: Admission) -> WaitId {
    match admission {
        Admission::Queued(wait) => wait,
        other => panic!("expected to queue, got {other:?}"),
    }
}

fn grants(actions: &[Action<&'static str>]) -> Vec<WaitId> {
    actions
        .iter()
        .filter_map(|action| match action {
            Action::Granted { wait, .. } => Some(*wait),
            _ => None,
        })
        .collect()
}

#[test]
fn waiters_are_served_in_arrival_order_at_each_commit() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"s", B, Intent::Read, None));
    let c = queued(e.acquire(ms(2), &"s", C, Intent::Read, None));
    assert!(e.finish(ms(3), a.lease, A, Outcome::Read).is_empty());
    let save = granted(e.acquire(ms(4), &"s", A, Intent::Write, None));
    assert_eq!(save.lease, a.lease, "the holder's save joins its cycle");
    let actions = e.finish(ms(5), save.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![b]);
    assert_eq!(e.generation(&"s"), 1);
    let Action::Granted { grant: for_b, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(for_b.generation, 1, "the next holder sees the commit");
    let actions = e.finish(ms(6), for_b.lease, B, Outcome::Committed);
    assert_eq!(grants(&actions), vec![c]);
    assert_eq!(e.counters().cycles_committed, 2);
    assert_eq!(e.counters().waits, 2);
}

#[test]
fn a_read_only_cycle_ends_after_the_linger() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"s", B, Intent::Read, None));
    e.finish(ms(10), a.lease, A, Outcome::Read);
    assert_eq!(e.next_deadline(), Some(ms(60)));
    assert!(e.tick(ms(59)).is_empty());
    assert_eq!(grants(&e.tick(ms(60))), vec![b]);
    assert_eq!(e.counters().cycles_read_only, 1);
}

#[test]
fn the_linger_adapts_to_the_gaps_a_file_shows_within_bounds() {
    let mut e = engine();
    for round in 0..3u64 {
        let t = ms(1000 * round);
        let a = granted(e.acquire(t, &"s", A, Intent::Read, None));
        e.finish(t + ms(1), a.lease, A, Outcome::Read);
        let save = granted(e.acquire(t + ms(41), &"s", A, Intent::Write, None));
        e.finish(t + ms(42), save.lease, A, Outcome::Committed);
    }
    let a = granted(e.acquire(ms(5000), &"s", A, Intent::Read, None));
    e.finish(ms(5000), a.lease, A, Outcome::Read);
    // The largest gap was 41 ms; four times that is 164 ms.
    assert_eq!(e.next_deadline(), Some(ms(5164)));
    let mut slow = engine();
    let a = granted(slow.acquire(ms(0), &"s", A, Intent::Read, None));
    slow.finish(ms(0), a.lease, A, Outcome::Read);
    let save = granted(slow.acquire(ms(900), &"s", A, Intent::Write, None));
    slow.finish(ms(900), save.lease, A, Outcome::Committed);
    let a = granted(slow.acquire(ms(2000), &"s", A, Intent::Read, None));
    slow.finish(ms(2000), a.lease, A, Outcome::Read);
    assert_eq!(slow.next_deadline(), Some(ms(3000)), "capped at max_linger");
}

#[test]
fn activity_of_the_holder_restarts_its_linger() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    queued(e.acquire(ms(0), &"s", B, Intent::Read, None));
    e.finish(ms(0), a.lease, A, Outcome::Read);
    e.activity(ms(40), A);
    assert!(e.tick(ms(60)).is_empty());
    assert_eq!(e.next_deadline(), Some(ms(90)));
}

#[test]
fn activity_restarts_lingers_at_most_once_per_grain() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    queued(e.acquire(ms(0), &"s", B, Intent::Read, None));
    e.finish(ms(0), a.lease, A, Outcome::Read);
    e.activity(ms(40), A);
    e.activity(ms(45), A);
    assert!(e.tick(ms(60)).is_empty());
    assert_eq!(
        e.next_deadline(),
        Some(ms(90)),
        "within the grain: the first counts"
    );
    e.activity(ms(55), A);
    assert!(e.tick(ms(95)).is_empty());
    assert_eq!(e.next_deadline(), Some(ms(105)));
}

#[test]
fn activity_does_not_keep_a_removed_name() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    queued(e.acquire(ms(0), &"s", B, Intent::Read, None));
    // A renamed the file away: its cycle goes on, for a re-create, for one linger.
    e.finish(ms(0), a.lease, A, Outcome::Removed);
    e.activity(ms(40), A);
    assert_eq!(
        grants(&e.tick(ms(50))).len(),
        1,
        "B's turn comes at the linger"
    );
}

#[test]
fn a_hung_holder_is_revoked_and_its_late_commit_fenced() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"s", B, Intent::Read, None));
    let actions = e.tick(ms(10_000));
    assert!(actions.contains(&Action::Revoked {
        key: "s",
        holder: A,
        reason: EndReason::MaxHold
    }));
    assert_eq!(grants(&actions), vec![b]);
    let Some(Action::Granted { grant: for_b, .. }) = actions.last().cloned() else {
        unreachable!()
    };
    e.finish(ms(10_001), for_b.lease, B, Outcome::Committed);
    // The revoked handle's close is stale and changes nothing.
    assert!(
        e.finish(ms(10_002), a.lease, A, Outcome::Committed)
            .is_empty()
    );
    assert_eq!(e.generation(&"s"), 1);
    assert_eq!(
        e.acquire(ms(10_003), &"s", A, Intent::Write, None),
        Admission::Fenced
    );
    assert_eq!(e.counters().fenced_commits, 1);
    assert_eq!(e.counters().revocations, 1);
    // Reading again brings the holder up to date.
    let a2 = granted(e.acquire(ms(10_004), &"s", A, Intent::Read, None));
    let save = granted(e.acquire(ms(10_005), &"s", A, Intent::Write, None));
    assert_eq!(save.lease, a2.lease);
}

#[test]
fn a_revoked_holder_may_commit_when_nothing_newer_landed() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    e.tick(ms(10_000));
    let save = granted(e.acquire(ms(10_001), &"s", A, Intent::Write, None));
    e.finish(ms(10_002), save.lease, A, Outcome::Committed);
    assert_eq!(e.generation(&"s"), 1);
}

#[test]
fn a_queued_stale_writer_is_fenced_when_its_turn_comes() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    e.finish(ms(0), a.lease, A, Outcome::Read);
    e.tick(ms(100));
    let b = granted(e.acquire(ms(101), &"s", B, Intent::Read, None));
    let late = queued(e.acquire(ms(102), &"s", A, Intent::Write, None));
    let actions = e.finish(ms(103), b.lease, B, Outcome::Committed);
    assert_eq!(actions, vec![Action::Fenced { wait: late }]);
}

#[test]
fn a_blind_writer_is_never_fenced() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Write, None));
    e.finish(ms(1), a.lease, A, Outcome::Committed);
    let b = granted(e.acquire(ms(2), &"s", B, Intent::Write, None));
    e.finish(ms(3), b.lease, B, Outcome::Committed);
    granted(e.acquire(ms(4), &"s", A, Intent::Write, None));
}

#[test]
fn a_writer_that_read_before_is_fenced_after_a_newer_commit() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let save = granted(e.acquire(ms(1), &"s", A, Intent::Write, None));
    e.finish(ms(2), save.lease, A, Outcome::Committed);
    e.finish(ms(2), a.lease, A, Outcome::Read);
    let b = granted(e.acquire(ms(3), &"s", B, Intent::Write, None));
    e.finish(ms(4), b.lease, B, Outcome::Committed);
    assert_eq!(
        e.acquire(ms(5), &"s", A, Intent::Write, None),
        Admission::Fenced
    );
}

#[test]
fn holder_exit_passes_the_lease_on_at_once() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"s", B, Intent::Read, None));
    let actions = e.holder_exited(ms(2), A, None);
    assert_eq!(grants(&actions), vec![b]);
    assert_eq!(e.counters().holder_exits_mid_cycle, 1);
}

#[test]
fn appenders_share_and_exclude_cycles_without_starving_them() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"log", A, Intent::Append, None));
    let b = granted(e.acquire(ms(0), &"log", B, Intent::Append, None));
    assert_eq!(a.lease, b.lease);
    let compactor = queued(e.acquire(ms(1), &"log", C, Intent::Read, None));
    let late_append = queued(e.acquire(ms(2), &"log", A, Intent::Append, None));
    assert!(e.finish(ms(3), a.lease, A, Outcome::Committed).is_empty());
    let actions = e.finish(ms(4), b.lease, B, Outcome::Committed);
    assert_eq!(grants(&actions), vec![compactor]);
    assert_eq!(e.generation(&"log"), 2);
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    let save = granted(e.acquire(ms(5), &"log", C, Intent::Write, None));
    assert_eq!(save.lease, grant.lease);
    let actions = e.finish(ms(6), save.lease, C, Outcome::Committed);
    assert_eq!(grants(&actions), vec![late_append]);
}

#[test]
fn consecutive_waiting_appenders_are_granted_together() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"log", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"log", B, Intent::Append, None));
    let c = queued(e.acquire(ms(1), &"log", C, Intent::Append, None));
    let save = granted(e.acquire(ms(2), &"log", A, Intent::Write, None));
    e.finish(ms(2), a.lease, A, Outcome::Read);
    assert_eq!(
        grants(&e.finish(ms(3), save.lease, A, Outcome::Committed)),
        vec![b, c]
    );
}

#[test]
fn a_waiter_times_out_at_its_limit() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(0), &"s", B, Intent::Read, Some(ms(300))));
    assert_eq!(e.next_deadline(), Some(ms(300)));
    assert_eq!(e.tick(ms(300)), vec![Action::TimedOut { wait: b }]);
    assert_eq!(e.counters().wait_timeouts, 1);
}

#[test]
fn a_cancelled_waiter_leaves_the_queue_and_it_moves_on() {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(0), &"s", B, Intent::Read, None));
    let c = queued(e.acquire(ms(0), &"s", C, Intent::Read, None));
    assert!(e.cancel(ms(1), b).is_empty());
    assert_eq!(grants(&e.holder_exited(ms(2), A, None)), vec![c]);
    let _ = a;
}

#[test]
fn a_waiter_whose_process_exits_is_answered() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(0), &"s", B, Intent::Read, None));
    let c = queued(e.acquire(ms(0), &"s", C, Intent::Read, None));
    assert_eq!(
        e.holder_exited(ms(1), B, None),
        vec![Action::Abandoned { wait: b }]
    );
    assert_eq!(grants(&e.holder_exited(ms(2), A, None)), vec![c]);
}

#[test]
fn generations_never_go_back_when_a_file_is_forgotten() {
    let mut e = engine();
    let w = granted(e.acquire(ms(0), &"t", A, Intent::Write, None));
    e.finish(ms(1), w.lease, A, Outcome::Committed);
    let first = e.generation(&"t");
    assert!(first > 0);
    let w = granted(e.acquire(ms(2), &"t", A, Intent::Write, None));
    assert!(w.generation >= first);
}

#[test]
fn a_lease_broken_by_hand_is_revoked() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let actions = e.revoke(ms(5), &"s");
    assert_eq!(
        actions,
        vec![Action::Revoked {
            key: "s",
            holder: A,
            reason: EndReason::Manual
        }]
    );
    assert!(e.snapshot(ms(6)).is_empty());
}

#[test]
fn the_snapshot_shows_holders_states_and_waiters_in_order() {
    let mut e = engine();
    granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    queued(e.acquire(ms(10), &"s", B, Intent::Read, None));
    queued(e.acquire(ms(20), &"s", C, Intent::Write, None));
    let views = e.snapshot(ms(30));
    assert_eq!(views.len(), 1);
    let view = &views[0];
    assert_eq!(view.state, LeaseState::Reading);
    assert_eq!(view.holders[0].process, A);
    assert_eq!(view.held, ms(30));
    let order: Vec<_> = view.waiters.iter().map(|w| w.process).collect();
    assert_eq!(order, vec![B, C]);
    assert_eq!(view.waiters[0].waited, ms(20));
}

#[test]
fn a_temp_written_during_a_cycle_stays_leased_until_the_cycle_commits() {
    let mut e = engine();
    let tmp = granted(e.acquire(ms(0), &"tmp", A, Intent::Write, None));
    let read = granted(e.acquire(ms(1), &"s", A, Intent::Read, None));
    e.finish(ms(2), read.lease, A, Outcome::Read);
    assert!(e.tie(&"tmp", A, true, &"s", true));
    let other = queued(e.acquire(ms(3), &"tmp", B, Intent::Write, None));
    // The temp handle's late close changes nothing; the cycle's commit frees the temp.
    assert!(e.finish(ms(4), tmp.lease, A, Outcome::Committed).is_empty());
    let save = granted(e.acquire(ms(5), &"s", A, Intent::Write, None));
    assert_eq!(
        grants(&e.finish(ms(6), save.lease, A, Outcome::Committed)),
        vec![other]
    );
}

#[test]
fn files_nobody_refers_to_are_forgotten() {
    let mut e = engine();
    for n in 0..100u64 {
        let name: &'static str = Box::leak(format!("tmp{n}").into_boxed_str());
        let w = granted(e.acquire(ms(n), &name, A, Intent::Write, None));
        e.finish(ms(n), w.lease, A, Outcome::Committed);
    }
    let r = granted(e.acquire(ms(200), &"store", A, Intent::Read, None));
    e.finish(ms(201), r.lease, A, Outcome::Read);
    e.tick(ms(1000));
    assert_eq!(e.entries.len(), 1, "only the file A has read is remembered");
    assert_eq!(e.leases_of(A), Vec::<&str>::new());
    e.holder_exited(ms(1001), A, None);
    assert!(e.entries.is_empty());
}

/// One step of a random schedule.
#[derive(Clone, Debug)]
enum Step {
    Acquire {
        holder: usize,
        key: usize,
        intent: u8,
    },
    Finish {
        holder: usize,
        pick: usize,
        how: u8,
    },
    Advance {
        millis: u64,
    },
    Exit {
        holder: usize,
    },
    Cancel {
        pick: usize,
    },
    Revoke {
        key: usize,
    },
    Tie {
        holder: usize,
        pick: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, 0..3u8)
            .prop_map(|(holder, key, intent)| Step::Acquire { holder, key, intent }),
        4 => (0..3usize, 0..4usize, 0..3u8)
            .prop_map(|(holder, pick, how)| Step::Finish { holder, pick, how }),
        2 => (1..400u64).prop_map(|millis| Step::Advance { millis }),
        1 => (0..3usize).prop_map(|holder| Step::Exit { holder }),
        1 => (0..4usize).prop_map(|pick| Step::Cancel { pick }),
        1 => (0..2usize).prop_map(|key| Step::Revoke { key }),
        2 => (0..3usize, 0..4usize).prop_map(|(holder, pick)| Step::Tie { holder, pick }),
    ]
}

/// The model of the processes: what each has been granted and what it has seen.
#[derive(Default)]
struct World {
    holders: Vec<Holder>,
    uses: Vec<Vec<(usize, Grant)>>,
    views: HashMap<(usize, usize), u64>,
    pending: HashMap<WaitId, (usize, usize, Intent)>,
    answered: HashSet<WaitId>,
    /// Files a holder tied as temps to its cycle on the other file: their commit comes
    /// when that cycle ends, and is the holder's own, so reads joining them record no view.
    tied: HashSet<(usize, usize)>,
}

const KEYS: [&str; 2] = ["a", "b"];

impl World {
    fn apply(&mut self, e: &mut Engine<&'static str>, actions: Vec<Action<&'static str>>) {
        for action in actions {
            let wait = match action {
                Action::Granted { wait, grant } => {
                    let (holder, key, intent) = self.pending[&wait];
                    self.uses[holder].push((key, grant));
                    if intent == Intent::Read && !self.tied.contains(&(holder, key)) {
                        self.views.insert((holder, key), grant.generation);
                    }
                    wait
                }
                Action::Fenced { wait }
                | Action::TimedOut { wait }
                | Action::Abandoned { wait } => wait,
                Action::Revoked { .. } => continue,
            };
            assert!(self.answered.insert(wait), "wait {wait:?} answered twice");
            self.pending.remove(&wait);
        }
        check_exclusive(e);
    }
}

fn check_exclusive(e: &Engine<&'static str>) {
    for view in e.snapshot(Duration::ZERO) {
        if view.state != LeaseState::Appending {
            assert!(view.holders.len() <= 1, "two holders of a cycle: {view:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_schedule_loses_a_commit_or_strands_a_waiter(steps in prop::collection::vec(step(), 1..80)) {
        let mut e: Engine<&'static str> = Engine::new(policy());
        let mut world = World {
            holders: vec![A, B, C],
            uses: vec![Vec::new(); 3],
            ..World::default()
        };
        let mut now = Duration::ZERO;
        for step in steps {
            match step {
                Step::Acquire { holder, key, intent } => {
                    let intent = [Intent::Read, Intent::Write, Intent::Append][intent as usize];
                    match e.acquire(now, &KEYS[key], world.holders[holder], intent, None) {
                        Admission::Granted(grant) => {
                            world.uses[holder].push((key, grant));
                            if intent == Intent::Read && !world.tied.contains(&(holder, key)) {
                                world.views.insert((holder, key), grant.generation);
                            }
                        }
                        Admission::Queued(wait) => {
                            world.pending.insert(wait, (holder, key, intent));
                        }
                        Admission::Fenced | Admission::OutOfTurn => {}
                    }
                }
                Step::Finish { holder, pick, how } => {
                    if world.uses[holder].is_empty() {
                        continue;
                    }
                    let index = pick % world.uses[holder].len();
                    let (key, grant) = world.uses[holder].remove(index);
                    let shared = e
                        .snapshot(now)
                        .iter()
                        .any(|v| v.key == KEYS[key] && v.state == LeaseState::Appending);
                    let before = e.generation(&KEYS[key]);
                    let process = world.holders[holder];
                    let actions = match how {
                        0 => e.finish(now, grant.lease, process, Outcome::Read),
                        1 => e.finish(now, grant.lease, process, Outcome::Committed),
                        _ => e.finish(now, grant.lease, process, Outcome::Read),
                    };
                    let after = e.generation(&KEYS[key]);
                    if after != before && !shared {
                        // Blind writers (never read the file) are not fenced, by design.
                        if let Some(seen) = world.views.get_mut(&(holder, key)) {
                            prop_assert_eq!(*seen, before, "a commit over a newer version");
                            *seen = after;
                        }
                    } else if after != before {
                        // An append onto the version the appender knew leaves its view
                        // current: the file is that version plus its own line.
                        if let Some(seen) = world.views.get_mut(&(holder, key))
                            && *seen == before
                        {
                            *seen = after;
                        }
                    }
                    world.apply(&mut e, actions);
                }
                Step::Advance { millis } => {
                    now += Duration::from_millis(millis);
                    let actions = e.tick(now);
                    world.apply(&mut e, actions);
                }
                Step::Exit { holder } => {
                    let actions = e.holder_exited(now, world.holders[holder], None);
                    world.uses[holder].clear();
                    world.views.retain(|(h, _), _| *h != holder);
                    world.tied.retain(|(h, _)| *h != holder);
                    world.apply(&mut e, actions);
                    // The process comes back as a new one under the same pid.
                    world.holders[holder].start_time += 1;
                }
                Step::Cancel { pick } => {
                    let mut waits: Vec<WaitId> = world.pending.keys().copied().collect();
                    waits.sort();
                    if let Some(wait) = waits.get(pick % waits.len().max(1)).copied() {
                        world.pending.remove(&wait);
                        world.answered.insert(wait);
                        let actions = e.cancel(now, wait);
                        world.apply(&mut e, actions);
                    }
                }
                Step::Tie { holder, pick } => {
                    // The holder's use of one file becomes a temp tied to its read cycle on
                    // the other; its commit comes when that cycle ends.
                    if world.uses[holder].is_empty() {
                        continue;
                    }
                    let index = pick % world.uses[holder].len();
                    let (key, _) = world.uses[holder][index];
                    let process = world.holders[holder];
                    if e.tie(&KEYS[key], process, true, &KEYS[1 - key], true) {
                        world.uses[holder].remove(index);
                        world.views.remove(&(holder, key));
                        world.tied.insert((holder, key));
                    }
                }
                Step::Revoke { key } => {
                    let actions = e.revoke(now, &KEYS[key]);
                    world.apply(&mut e, actions);
                }
            }
        }
        // Every process ends; every waiter must then have been answered.
        for holder in 0..3 {
            let actions = e.holder_exited(now, world.holders[holder], None);
            world.apply(&mut e, actions);
        }
        now += Duration::from_secs(120);
        let actions = e.tick(now);
        world.apply(&mut e, actions);
        prop_assert!(world.pending.is_empty(), "stranded waiters: {:?}", world.pending);
        prop_assert!(e.snapshot(now).is_empty());
        prop_assert_eq!(e.next_deadline(), None);
    }
}

const SHELL: Holder = holder(50, 1);

fn ask(intent: Intent) -> Ask {
    Ask::new(intent)
}

fn child_of(parent: Holder, intent: Intent) -> Ask {
    Ask {
        family: [Some(parent), None],
        ..Ask::new(intent)
    }
}

fn locked(intent: Intent) -> Ask {
    Ask {
        locked: true,
        ..Ask::new(intent)
    }
}

#[test]
fn a_process_never_waits_for_itself() {
    let mut e = engine();
    let first = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    let b = queued(e.request(ms(0), &"s", B, ask(Intent::Read)));
    // A second open while the first is open (Python a = open(p); b = open(p)).
    let second = granted(e.request(ms(1), &"s", A, ask(Intent::Read)));
    assert_eq!(second.lease, first.lease);
    e.finish(ms(2), first.lease, A, Outcome::Read);
    e.finish(ms(2), second.lease, A, Outcome::Read);
    // A sequential re-read (conf reads twice before saving) joins too.
    let again = granted(e.request(ms(3), &"s", A, ask(Intent::Read)));
    assert_eq!(again.lease, first.lease);
    e.finish(ms(4), again.lease, A, Outcome::Read);
    let save = granted(e.request(ms(5), &"s", A, locked(Intent::Write)));
    assert_eq!(
        grants(&e.finish(ms(6), save.lease, A, Outcome::Committed)),
        vec![b]
    );
}

#[test]
fn a_read_from_a_second_thread_while_the_first_is_open_is_a_second_cycle() {
    let mut e = engine();
    let first = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    let concurrent = Ask {
        concurrent: true,
        ..ask(Intent::Read)
    };
    let second = queued(e.request(ms(0), &"s", A, concurrent));
    e.finish(ms(1), first.lease, A, Outcome::Read);
    let save = granted(e.request(ms(2), &"s", A, locked(Intent::Write)));
    let actions = e.finish(ms(3), save.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![second]);
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(
        grant.generation, 1,
        "the second cycle reads the first one's save"
    );
}

/// A read of `holder`'s from one of its worker threads (libuv's pool), not its main one.
fn from_worker(holder: Holder, intent: Intent) -> Ask {
    Ask {
        thread: holder.pid + 1,
        ..ask(intent)
    }
}

#[test]
fn a_worker_thread_reread_waits_for_its_own_cycle_but_not_behind_others() {
    let mut e = engine();
    // write-json-file: the caller's readFile on pool threads, then the library's own
    // readFile of the same file from another pool thread, then the save.
    let first = granted(e.request(ms(0), &"s", A, from_worker(A, Intent::Read)));
    e.finish(ms(1), first.lease, A, Outcome::Read);
    let b = queued(e.request(ms(2), &"s", B, ask(Intent::Read)));
    let reread = queued(e.request(ms(3), &"s", A, from_worker(A, Intent::Read)));
    // A's cycle lingers out; A's re-read goes before B, who came earlier.
    let actions = e.tick(ms(1 + 50));
    assert_eq!(grants(&actions), vec![reread]);
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    e.finish(ms(60), grant.lease, A, Outcome::Read);
    let save = granted(e.request(ms(61), &"s", A, locked(Intent::Write)));
    assert_eq!(
        grants(&e.finish(ms(62), save.lease, A, Outcome::Committed)),
        vec![b],
        "nobody committed between A's read and its save: kept, then B"
    );
    assert_eq!(e.counters().fenced_commits, 0);
    e.check_deadline_index();
}

#[test]
fn two_cycles_of_one_process_stay_two_when_the_second_goes_first() {
    let mut e = engine();
    // Promise.all: cycle 1 reads and closes, cycle 2's read comes from another pool
    // thread while B waits; cycle 1 saves; cycle 2 must read cycle 1's save.
    let first = granted(e.request(ms(0), &"s", A, from_worker(A, Intent::Read)));
    e.finish(ms(1), first.lease, A, Outcome::Read);
    let b = queued(e.request(ms(2), &"s", B, ask(Intent::Read)));
    let second = queued(e.request(ms(3), &"s", A, from_worker(A, Intent::Read)));
    let save = granted(e.request(ms(4), &"s", A, locked(Intent::Write)));
    let actions = e.finish(ms(5), save.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![second]);
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(
        grant.generation,
        e.generation(&"s"),
        "cycle 2 reads cycle 1's save"
    );
    e.finish(ms(6), grant.lease, A, Outcome::Read);
    let save = granted(e.request(ms(7), &"s", A, locked(Intent::Write)));
    assert_eq!(
        grants(&e.finish(ms(8), save.lease, A, Outcome::Committed)),
        vec![b]
    );
    assert_eq!(e.counters().fenced_commits, 0);
}

#[test]
fn a_locked_request_never_queues() {
    let mut e = engine();
    granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    // A blind rename from another process while A only reads: it goes ahead, and A's
    // cycle can no longer commit.
    assert_eq!(
        e.request(ms(1), &"s", B, locked(Intent::Write)),
        Admission::OutOfTurn
    );
    e.commit_out_of_turn(ms(1), &"s", B, Outcome::Committed);
    assert_eq!(
        e.request(ms(2), &"s", A, locked(Intent::Write)),
        Admission::Fenced
    );
    // Nor append to it: dbm.dumb's append to the index it read landed in the new index
    // another process was writing out of turn, and tore it.
    assert_eq!(
        e.request(ms(3), &"s", A, ask(Intent::Append)),
        Admission::Fenced
    );
}

#[test]
fn a_locked_request_is_refused_while_the_holder_writes() {
    let mut e = engine();
    granted(e.request(ms(0), &"s", A, ask(Intent::Write)));
    assert_eq!(
        e.request(ms(1), &"s", B, locked(Intent::Write)),
        Admission::Fenced
    );
}

#[test]
fn a_re_read_never_launders_an_older_view() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    let b = queued(e.request(ms(1), &"s", B, ask(Intent::Read)));
    e.finish(ms(2), a.lease, A, Outcome::Read);
    // A's linger ends; B reads and saves.
    let actions = e.tick(ms(2) + policy().linger);
    assert_eq!(grants(&actions), vec![b]);
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    let save = granted(e.request(ms(60), &"s", B, locked(Intent::Write)));
    assert_eq!(save.lease, grant.lease);
    e.finish(ms(61), save.lease, B, Outcome::Committed);
    // A re-reads (a new lease) and saves what it built on its first read: refused.
    let reread = granted(e.request(ms(70), &"s", A, ask(Intent::Read)));
    e.finish(ms(71), reread.lease, A, Outcome::Read);
    assert_eq!(
        e.request(ms(72), &"s", A, locked(Intent::Write)),
        Admission::Fenced
    );
}

#[test]
fn a_slow_save_with_nobody_in_between_is_kept_and_a_late_one_teaches_the_linger() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    assert!(e.tick(ms(1) + policy().linger).is_empty());
    // Past the linger, nobody committed: the save is kept.
    let save = granted(e.request(ms(120), &"s", A, locked(Intent::Write)));
    e.finish(ms(121), save.lease, A, Outcome::Committed);
    assert_eq!(e.generation(&"s"), 1);
    let entry = &e.entries[&"s"];
    assert!(
        entry.gaps.linger(&policy()) >= ms(119),
        "the late save taught the linger"
    );
}

#[test]
fn a_removal_keeps_the_cycle_until_the_name_is_created_again() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s.dir", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    let b = queued(e.request(ms(2), &"s.dir", B, ask(Intent::Read)));
    let away = granted(e.request(ms(3), &"s.dir", A, locked(Intent::Write)));
    assert_eq!(e.removed_by(&"s.dir"), None);
    assert!(e.finish(ms(4), away.lease, A, Outcome::Removed).is_empty());
    // A load that walked `.dir` just before the rename and opens what is now `.bak` is
    // sent back to the name while this cycle goes on (see the gate's read_walked_elsewhere).
    assert_eq!(e.removed_by(&"s.dir"), Some(A));
    let create = granted(e.request(ms(5), &"s.dir", A, locked(Intent::Write)));
    assert_eq!(create.lease, a.lease, "the re-create is part of the cycle");
    assert_eq!(
        grants(&e.finish(ms(6), create.lease, A, Outcome::Committed)),
        vec![b]
    );
    assert_eq!(e.removed_by(&"s.dir"), None);

    // A blind removal (a temp renamed into place) ends its cycle: nothing to go back to.
    let mut e = engine();
    let temp = granted(e.request(ms(0), &"s.tmp", A, locked(Intent::Write)));
    e.finish(ms(1), temp.lease, A, Outcome::Removed);
    assert_eq!(e.removed_by(&"s.tmp"), None);
}

#[test]
fn a_dead_readers_cycle_passes_to_its_parent_and_a_child_finishes_it() {
    let mut e = engine();
    // sed (A) reads, the shell (SHELL) is its parent; another shell's reader (B) waits.
    let a = granted(e.request(ms(0), &"s", A, child_of(SHELL, Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    let b = queued(e.request(ms(2), &"s", B, ask(Intent::Read)));
    assert!(e.holder_exited(ms(3), A, Some(SHELL)).is_empty());
    assert_eq!(e.counters().handoffs, 1);
    // mv (C), the shell's next child, renames the temp onto the file.
    let mv = granted(e.request(
        ms(4),
        &"s",
        C,
        Ask {
            locked: true,
            ..child_of(SHELL, Intent::Write)
        },
    ));
    assert_ne!(mv.lease, a.lease, "a passed cycle is renamed");
    assert!(e.finish(ms(5), a.lease, A, Outcome::Read).is_empty());
    assert_eq!(
        grants(&e.finish(ms(5), mv.lease, C, Outcome::Committed)),
        vec![b]
    );
}

#[test]
fn a_queued_child_write_joins_when_its_sibling_reader_exits() {
    // jq f | sponge f: sponge's O_TRUNC open queues behind jq, then joins when jq exits.
    let mut e = engine();
    let jq = granted(e.request(ms(0), &"s", A, child_of(SHELL, Intent::Read)));
    let other = queued(e.request(ms(1), &"s", B, ask(Intent::Read)));
    let sponge = queued(e.request(ms(2), &"s", C, child_of(SHELL, Intent::Write)));
    e.finish(ms(3), jq.lease, A, Outcome::Read);
    let actions = e.holder_exited(ms(4), A, Some(SHELL));
    assert_eq!(
        grants(&actions),
        vec![sponge],
        "the pipeline's writer goes first"
    );
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(
        grants(&e.finish(ms(5), grant.lease, C, Outcome::Committed)),
        vec![other]
    );
}

#[test]
fn a_killed_holders_siblings_take_the_cycle_one_at_a_time() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, child_of(SHELL, Intent::Read)));
    let b = queued(e.request(ms(1), &"s", B, child_of(SHELL, Intent::Read)));
    let c = queued(e.request(ms(2), &"s", C, child_of(SHELL, Intent::Read)));
    let _ = a;
    let actions = e.holder_exited(ms(3), A, Some(SHELL));
    assert_eq!(
        grants(&actions),
        vec![b],
        "only the first sibling takes the cycle over"
    );
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(
        grants(&e.finish(ms(4), grant.lease, B, Outcome::Committed)),
        vec![c]
    );
}

#[test]
fn an_absence_seen_fences_a_first_save_after_another_one() {
    let mut e = engine();
    e.saw_missing(ms(0), &"s", A);
    e.saw_missing(ms(0), &"s", B);
    let replace = Ask {
        replaces: true,
        ..locked(Intent::Write)
    };
    let first = granted(e.request(ms(1), &"s", A, replace));
    e.finish(ms(2), first.lease, A, Outcome::Committed);
    assert_eq!(e.request(ms(3), &"s", B, replace), Admission::Fenced);
    // Nor does a create, a rename away or an unlink of the name: B has read nothing since.
    assert_eq!(
        e.request(ms(4), &"s", B, locked(Intent::Write)),
        Admission::Fenced
    );
    // A create after a fresh lookup of its own, once the linger has passed, does not rest
    // on the old absence.
    e.saw_missing(ms(2000), &"s", B);
    assert_eq!(
        e.generation(&"s"),
        e.seen[&("s", B)].generation,
        "the absence is seen afresh"
    );
}

#[test]
fn a_sibling_that_took_over_a_killed_readers_cycle_keeps_it_from_later_siblings() {
    // faults::a_recycled_pid_is_a_different_holder: the test process T reads, its child H
    // holds the file, child W waits, H is killed, child N asks: N waits for W.
    const T: Holder = SHELL;
    const H: Holder = A;
    const W: Holder = B;
    const N: Holder = C;
    let mut e = engine();
    let t = granted(e.request(ms(0), &"s", T, ask(Intent::Read)));
    assert!(e.finish(ms(1), t.lease, T, Outcome::Read).is_empty());
    // A child's read ends its parent's lingering cycle at once.
    let h = granted(e.request(ms(2), &"s", H, child_of(T, Intent::Read)));
    let w_wait = queued(e.request(ms(300), &"s", W, child_of(T, Intent::Read)));
    assert!(e.finish(ms(700), h.lease, H, Outcome::Read).is_empty());
    let actions = e.holder_exited(ms(700), H, Some(T));
    assert_eq!(grants(&actions), vec![w_wait], "W takes the cycle over");
    let n_wait = queued(e.request(ms(710), &"s", N, child_of(T, Intent::Read)));
    for at in (720..1700).step_by(10) {
        let actions = e.tick(ms(at));
        assert!(
            !grants(&actions).contains(&n_wait),
            "N got the file at {at} ms while W held it"
        );
    }
}

#[test]
fn a_siblings_save_settles_the_view_an_exited_reader_left_its_parent() {
    // faults::a_recycled_pid_is_a_different_holder, part 1: T's child A reads and exits,
    // child B reads and saves, then child C saves blind: C is judged as any fresh
    // process, whichever way A's exit and B's save are ordered.
    const T: Holder = SHELL;
    for exit_first in [true, false] {
        let mut e = engine();
        let a = granted(e.request(ms(0), &"s", A, child_of(T, Intent::Read)));
        e.finish(ms(1), a.lease, A, Outcome::Read);
        if exit_first {
            e.holder_exited(ms(2), A, Some(T));
        } else {
            e.tick(ms(500));
        }
        let b = granted(e.request(ms(600), &"s", B, child_of(T, Intent::Read)));
        granted(e.request(ms(601), &"s", B, child_of(T, Intent::Write)));
        e.finish(ms(602), b.lease, B, Outcome::Committed);
        if !exit_first {
            e.holder_exited(ms(603), A, Some(T));
        }
        e.tick(ms(2000));
        let blind = e.request(ms(2001), &"s", C, child_of(T, Intent::Write));
        assert!(
            matches!(blind, Admission::Granted(_)),
            "exit_first {exit_first}: {blind:?}"
        );
    }
}

#[test]
fn a_dead_holders_late_close_does_not_end_its_successors_use() {
    // faults::a_recycled_pid_is_a_different_holder, part 2, with the exit reported before
    // the killed holder's handle is released.
    const T: Holder = SHELL;
    let mut e = engine();
    let h = granted(e.request(ms(0), &"s", A, child_of(T, Intent::Read)));
    let w_wait = queued(e.request(ms(10), &"s", B, child_of(T, Intent::Read)));
    let actions = e.holder_exited(ms(500), A, Some(T));
    assert_eq!(grants(&actions), vec![w_wait], "W takes the cycle over");
    assert!(e.finish(ms(501), h.lease, A, Outcome::Read).is_empty());
    let n_wait = queued(e.request(ms(510), &"s", C, child_of(T, Intent::Read)));
    for at in (520..1500).step_by(10) {
        assert!(
            !grants(&e.tick(ms(at))).contains(&n_wait),
            "N got the file at {at} ms while W held it"
        );
    }
}

#[test]
fn a_refused_save_stays_refused_when_the_kernel_retries_it() {
    // The VFS retries rename, unlink, link and open once on ESTALE (LOOKUP_REVAL).
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    e.tick(ms(500));
    let b = granted(e.request(ms(600), &"s", B, ask(Intent::Read)));
    e.finish(ms(601), b.lease, B, Outcome::Committed);
    let rename = Ask {
        locked: true,
        replaces: true,
        ..ask(Intent::Write)
    };
    for attempt in 0..2 {
        assert_eq!(
            e.request(ms(700 + attempt), &"s", A, rename),
            Admission::Fenced,
            "attempt {attempt}"
        );
    }
}

#[test]
fn a_childs_read_ends_its_parents_lingering_cycle_unless_others_wait() {
    let mut e = engine();
    let parent = granted(e.request(ms(0), &"s", SHELL, ask(Intent::Read)));
    e.finish(ms(1), parent.lease, SHELL, Outcome::Read);
    // git commit's hook reads HEAD while git commit's own read of it lingers.
    granted(e.request(ms(2), &"s", A, child_of(SHELL, Intent::Read)));
    let mut e = engine();
    let parent = granted(e.request(ms(0), &"s", SHELL, ask(Intent::Read)));
    e.finish(ms(1), parent.lease, SHELL, Outcome::Read);
    queued(e.request(ms(2), &"s", B, ask(Intent::Read)));
    queued(e.request(ms(3), &"s", A, child_of(SHELL, Intent::Read)));
}

#[test]
fn a_process_reads_back_the_temp_it_wrote_during_a_cycle_without_waiting() {
    let mut e = engine();
    granted(e.request(ms(0), &"head", A, ask(Intent::Read)));
    let msg = granted(e.request(ms(1), &"msg", A, ask(Intent::Write)));
    assert!(e.tie(&"msg", A, true, &"head", true));
    granted(e.request(ms(2), &"msg", A, ask(Intent::Read)));
    queued(e.request(ms(3), &"msg", B, ask(Intent::Read)));
    let _ = msg;
}

#[test]
fn a_process_polling_a_file_lets_a_waiting_writer_in() {
    // S6: a reader that re-reads in a loop joined its own idle cycle for ever.
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    let b = queued(e.request(ms(2), &"s", B, ask(Intent::Write)));
    // A re-read soon after its cycle began still joins it (write-json-file reads twice).
    let again = granted(e.request(ms(10), &"s", A, ask(Intent::Read)));
    e.finish(ms(11), again.lease, A, Outcome::Read);
    // Past the longest linger, the next read is a new cycle, behind the writer.
    queued(e.request(ms(1200), &"s", A, ask(Intent::Read)));
    assert!(grants(&e.tick(ms(1300))).contains(&b));
}

#[test]
fn a_process_that_saves_a_file_is_never_taken_for_its_reader() {
    // write-json-file: read, re-read, save. Its first reads end as read-only cycles; were
    // it counted a reader, the re-read would take a fresh view and launder the save.
    let rename = Ask {
        locked: true,
        replaces: true,
        ..ask(Intent::Write)
    };
    let mut e = engine();
    let first = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    granted(e.request(ms(1), &"s", A, rename));
    e.finish(ms(2), first.lease, A, Outcome::Committed);
    for at in [100, 300] {
        let read = granted(e.request(ms(at), &"s", A, ask(Intent::Read)));
        e.finish(ms(at + 1), read.lease, A, Outcome::Read);
        e.tick(ms(at + 150));
    }
    let b = granted(e.request(ms(500), &"s", B, ask(Intent::Read)));
    e.finish(ms(501), b.lease, B, Outcome::Committed);
    granted(e.request(ms(502), &"s", A, ask(Intent::Read)));
    assert_eq!(e.request(ms(503), &"s", A, rename), Admission::Fenced);
}

/// A long-lived process reading many files, over hours: what the engine remembers per file
/// and process stays bounded once the files are old news.
#[test]
fn memory_of_many_read_files_is_pruned_by_time() {
    let mut engine: Engine<String> = Engine::new(policy());
    let mut now = ms(1);
    for round in 0..3 {
        for i in 0..3000 {
            let key = format!("r{round}/f{i}.json");
            let grant = granted(engine.acquire(now, &key, A, Intent::Read, None));
            engine.finish(now, grant.lease, A, Outcome::Read);
            now += ms(1);
            engine.tick(now + ms(1000));
        }
        // Hours pass between rounds.
        now += Duration::from_secs(3600);
    }
    assert!(
        engine.read_streaks.len() <= SEEN_PRUNE_AT + 3000,
        "read streaks: {}",
        engine.read_streaks.len()
    );
    assert!(
        engine.seen.len() <= SEEN_PRUNE_AT + 3000,
        "seen: {}",
        engine.seen.len()
    );
}

/// A writer with a fresh temp name per cycle, driven as the overlay drives a Node cycle
/// (read the store; the kernel's LOOKUP finds the temp name missing, then CREATE; the
/// temp's handle closes, tied to the read; the rename commits both): the engine keeps no
/// record of the temp names once their cycles are over (it kept about 1.5 KB per cycle).
#[test]
fn fresh_temp_names_leave_no_record_behind() {
    let mut engine: Engine<String> = Engine::new(policy());
    let store = "store.json".to_string();
    let mut now = ms(1);
    for cycle in 0..2000 {
        let temp = format!("store.json.tmp-{cycle}");
        let read = granted(engine.request(now, &store, A, ask(Intent::Read)));
        engine.finish(now, read.lease, A, Outcome::Read);
        engine.saw_missing(now, &temp, A);
        now += ms(1);
        granted(engine.request(now, &temp, A, locked(Intent::Write)));
        assert!(
            engine.tie(&temp, A, true, &store, true),
            "the temp joins the cycle"
        );
        let replace = Ask {
            replaces: true,
            ..locked(Intent::Write)
        };
        let source = engine.request(now, &temp, A, locked(Intent::Write));
        let Admission::Granted(source) = source else {
            panic!("the rename's source joins: {source:?}")
        };
        let target = granted(engine.request(now, &store, A, replace));
        engine.finish(now, source.lease, A, Outcome::Removed);
        engine.finish(now, target.lease, A, Outcome::Committed);
        now += ms(1);
        engine.tick(now);
    }
    assert_eq!(engine.counters().fenced_commits, 0);
    let temps = engine
        .entries
        .keys()
        .filter(|key| key.contains("tmp"))
        .count();
    let views = engine
        .seen
        .keys()
        .filter(|(key, _)| key.contains("tmp"))
        .count();
    assert_eq!((temps, views), (0, 0), "records of temp names left behind");
}

/// `reader` ends two read-only cycles on `key`, so it counts as a reader of it; the clock
/// after them.
fn make_reader(e: &mut Engine<&'static str>, key: &'static str, reader: Holder, at: u64) -> u64 {
    let mut now = at;
    for _ in 0..2 {
        let read = granted(e.request(ms(now), &key, reader, ask(Intent::Read)));
        e.finish(ms(now + 1), read.lease, reader, Outcome::Read);
        now += 100;
        e.tick(ms(now));
    }
    assert!(e.is_reader(&key, reader));
    now
}

#[test]
fn a_known_reader_reads_beside_a_cycle_and_its_late_save_is_fenced() {
    let mut e = engine();
    let t = make_reader(&mut e, "s", B, 0);
    let cycle = granted(e.request(ms(t), &"s", A, ask(Intent::Read)));
    // B reads while A's cycle is open: no wait, the version A read.
    let beside = granted(e.request(ms(t + 1), &"s", B, ask(Intent::Read)));
    assert_eq!(beside.generation, cycle.generation);
    assert_ne!(beside.lease, cycle.lease);
    e.finish(ms(t + 2), cycle.lease, A, Outcome::Read);
    // A saves by rename while B still reads: B keeps its inode, A is not held up.
    let rename = Ask {
        replaces: true,
        ..locked(Intent::Write)
    };
    let save = granted(e.request(ms(t + 3), &"s", A, rename));
    assert_eq!(save.lease, cycle.lease, "A's save joins its own cycle");
    e.finish(ms(t + 3), save.lease, A, Outcome::Committed);
    e.finish(ms(t + 4), beside.lease, B, Outcome::Read);
    assert_eq!(e.counters().reads_beside, 1);
    // A save by B built on what it read beside is judged on it.
    assert_eq!(
        e.request(ms(t + 5), &"s", B, ask(Intent::Write)),
        Admission::Fenced
    );
    assert_eq!(e.entries["s"].beside, 0);
}

#[test]
fn a_write_in_place_waits_for_reads_beside_and_stops_new_ones() {
    let mut e = engine();
    let t = make_reader(&mut e, "s", B, 0);
    let t = make_reader(&mut e, "s", C, t);
    let cycle = granted(e.request(ms(t), &"s", A, ask(Intent::Read)));
    let b = granted(e.request(ms(t + 1), &"s", B, ask(Intent::Read)));
    e.finish(ms(t + 2), cycle.lease, A, Outcome::Read);
    // A opens the file to write it in place: it waits for B's read, ahead of everyone.
    let write = queued(e.request(ms(t + 3), &"s", A, ask(Intent::Write)));
    // C no longer reads beside while a write in place waits: it queues behind it.
    let c = queued(e.request(ms(t + 4), &"s", C, ask(Intent::Read)));
    let actions = e.finish(ms(t + 5), b.lease, B, Outcome::Read);
    assert_eq!(
        grants(&actions),
        vec![write],
        "the write goes once B closed"
    );
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    assert_eq!(grant.lease, cycle.lease, "in A's own cycle");
    assert!(e.is_waiting(c));
    let actions = e.finish(ms(t + 6), grant.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![c], "C reads the new version");
}

#[test]
fn a_read_beside_stops_counting_at_the_maximum_hold_and_at_its_readers_exit() {
    let mut e = engine();
    let t = make_reader(&mut e, "s", B, 0);
    let t = make_reader(&mut e, "s", C, t);
    let stuck = granted(e.request(ms(t), &"s", B, ask(Intent::Read)));
    let write = queued(e.request(ms(t + 1), &"s", A, ask(Intent::Write)));
    assert_eq!(e.next_deadline(), Some(ms(t + 10_000)));
    let actions = e.tick(ms(t + 10_000));
    assert_eq!(
        grants(&actions),
        vec![write],
        "B's read held A out for max-hold"
    );
    let Action::Granted { grant, .. } = actions[0] else {
        unreachable!()
    };
    e.finish(ms(t + 10_001), grant.lease, A, Outcome::Committed);
    // B's late close changes nothing.
    assert!(
        e.finish(ms(t + 10_002), stuck.lease, B, Outcome::Read)
            .is_empty()
    );
    let t = t + 10_100;
    granted(e.request(ms(t), &"s", C, ask(Intent::Read)));
    let write = queued(e.request(ms(t + 1), &"s", A, ask(Intent::Write)));
    let actions = e.holder_exited(ms(t + 2), C, None);
    assert_eq!(grants(&actions), vec![write], "C's exit ended its read");
    assert_eq!(e.entries["s"].beside, 0);
}

/// dbm.dumb's open, `db[k] = v` and close, as the engine sees them: read `.dat` and `.dir`,
/// write `.dat` in place, append to `.dir`, rename `.dir` away and write it anew. Returns
/// the holder's leases on `.dat` and `.dir`.
fn dbm_session(e: &mut Engine<&'static str>, who: Holder, at: u64) -> (LeaseId, LeaseId) {
    let dat = granted(e.request(ms(at), &"s.dat", who, ask(Intent::Read)));
    e.finish(ms(at), dat.lease, who, Outcome::Read);
    let dir = granted(e.request(ms(at + 1), &"s.dir", who, ask(Intent::Read)));
    e.finish(ms(at + 1), dir.lease, who, Outcome::Read);
    let value = granted(e.request(ms(at + 2), &"s.dat", who, ask(Intent::Write)));
    assert_eq!(value.lease, dat.lease);
    assert!(
        e.finish(ms(at + 2), value.lease, who, Outcome::Committed)
            .is_empty()
    );
    let index = granted(e.request(ms(at + 3), &"s.dir", who, ask(Intent::Append)));
    assert_eq!(index.lease, dir.lease);
    assert!(
        e.finish(ms(at + 3), index.lease, who, Outcome::Committed)
            .is_empty()
    );
    for step in [4, 6] {
        let away = granted(e.request(ms(at + step), &"s.dir", who, locked(Intent::Write)));
        assert_eq!(
            away.lease, dir.lease,
            "the index's cycle goes on past its saves"
        );
        assert!(
            e.finish(ms(at + step), away.lease, who, Outcome::Removed)
                .is_empty()
        );
        let anew = granted(e.request(ms(at + step + 1), &"s.dir", who, locked(Intent::Write)));
        assert_eq!(anew.lease, dir.lease);
        assert!(
            e.finish(ms(at + step + 1), anew.lease, who, Outcome::Committed)
                .is_empty()
        );
    }
    (dat.lease, dir.lease)
}

#[test]
fn a_save_in_place_keeps_the_cycle_while_its_holder_holds_another_file() {
    let mut e = engine();
    let (_, dir) = dbm_session(&mut e, A, 0);
    // B's open of the database waits for the whole of A's session, not one save of it.
    let b = queued(e.request(ms(10), &"s.dat", B, ask(Intent::Read)));
    assert!(e.tick(ms(20)).is_empty());
    // A's next session begins: with B waiting, A's kept cycles end and B goes first.
    let again = queued(e.request(ms(30), &"s.dat", A, ask(Intent::Read)));
    let actions = e.tick(ms(30));
    assert_eq!(grants(&actions), vec![b]);
    let Some(Action::Granted { grant, .. }) = actions.first() else {
        unreachable!()
    };
    assert_eq!(grant.generation, e.generation(&"s.dat"), "B sees A's value");
    assert!(e.is_free(&"s.dir"), "A's index cycle ended with its data's");
    assert!(!e.is_waiting(b) && e.is_waiting(again));
    assert_eq!(e.counters().cycles_committed, 6);
    assert_eq!(e.counters().cycles_read_only, 0);
    // A's kept cycle ended as its own commit: its next load is judged afresh, not on
    // the view it saved.
    let b_dir = granted(e.request(ms(31), &"s.dir", B, ask(Intent::Read)));
    assert_ne!(b_dir.lease, dir);
    e.finish(ms(32), b_dir.lease, B, Outcome::Read);
    let b_save = granted(e.request(ms(33), &"s.dir", B, ask(Intent::Append)));
    e.finish(ms(34), b_save.lease, B, Outcome::Committed);
    e.finish(ms(35), grant.lease, B, Outcome::Read);
    let actions = e.tick(ms(200));
    assert_eq!(grants(&actions), vec![again]);
    let a_dir = granted(e.request(ms(201), &"s.dir", A, ask(Intent::Read)));
    e.finish(ms(202), a_dir.lease, A, Outcome::Read);
    let a_save = granted(e.request(ms(203), &"s.dir", A, ask(Intent::Append)));
    assert!(
        e.finish(ms(204), a_save.lease, A, Outcome::Committed)
            .is_empty()
    );
    assert_eq!(e.counters().fenced_commits, 0);
    e.check_deadline_index();
}

#[test]
fn a_kept_cycle_begins_afresh_at_its_holders_next_read_when_nobody_waits() {
    let mut e = engine();
    let (dat, _) = dbm_session(&mut e, A, 0);
    let next = granted(e.request(ms(10), &"s.dat", A, ask(Intent::Read)));
    assert_eq!(next.lease, dat, "nobody waits: the holder goes on at once");
    e.finish(ms(11), next.lease, A, Outcome::Read);
    // The restarted cycle is a read cycle again: it lingers out as one, and B then
    // gets the file.
    let b = queued(e.request(ms(12), &"s.dat", B, ask(Intent::Read)));
    assert_eq!(grants(&e.tick(ms(11 + 50))), vec![b]);
    e.check_deadline_index();
}

#[test]
fn a_kept_cycle_lingers_out_and_ends_at_its_holders_exit() {
    let mut e = engine();
    dbm_session(&mut e, A, 0);
    let states: Vec<LeaseState> = e.snapshot(ms(8)).iter().map(|view| view.state).collect();
    assert_eq!(
        states,
        vec![LeaseState::Lingering; 2],
        "lockfs status shows them lingering"
    );
    let b = queued(e.request(ms(10), &"s.dir", B, ask(Intent::Read)));
    assert!(
        e.tick(ms(7 + 49)).is_empty(),
        "the index lingers after its last save"
    );
    assert_eq!(grants(&e.tick(ms(7 + 50))), vec![b]);
    let mut e = engine();
    dbm_session(&mut e, A, 0);
    let b = queued(e.request(ms(10), &"s.dat", B, ask(Intent::Read)));
    assert_eq!(grants(&e.holder_exited(ms(11), A, None)), vec![b]);
    assert!(e.is_free(&"s.dir"));
    assert_eq!(e.counters().holder_exits_mid_cycle, 0);
}

#[test]
fn a_save_in_place_of_one_file_alone_still_ends_its_cycle() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    // A temp file tied to the cycle is no other file of the holder's.
    let tmp = granted(e.request(ms(2), &"s.tmp", A, locked(Intent::Write)));
    assert!(e.tie(&"s.tmp", A, true, &"s", true));
    let b = queued(e.request(ms(3), &"s", B, ask(Intent::Read)));
    let save = granted(e.request(ms(4), &"s", A, ask(Intent::Write)));
    assert_eq!(
        grants(&e.finish(ms(5), save.lease, A, Outcome::Committed)),
        vec![b]
    );
    assert!(e.is_free(&"s.tmp"), "{tmp:?} ended with the cycle");
}

#[test]
fn a_create_on_an_absence_another_process_created_over_is_refused() {
    let mut e = engine();
    // Both find the index missing; A creates it (appending its key) and renames it away.
    e.saw_missing(ms(0), &"s.dir", A);
    e.saw_missing(ms(1), &"s.dir", B);
    let create = Ask {
        locked: true,
        ..ask(Intent::Append)
    };
    let a = granted(e.request(ms(2), &"s.dir", A, create));
    e.finish(ms(3), a.lease, A, Outcome::Committed);
    let away = granted(e.request(ms(4), &"s.dir", A, locked(Intent::Write)));
    e.finish(ms(5), away.lease, A, Outcome::Removed);
    // B's create finds the name missing again, but its index is the empty one it loaded:
    // refused, and so are the kernel's retry after a fresh lookup and dbm's second try.
    for attempt in 0..3 {
        e.saw_missing(ms(6 + attempt), &"s.dir", B);
        assert_eq!(
            e.request(ms(6 + attempt), &"s.dir", B, create),
            Admission::Fenced
        );
    }
    // Once A's new index exists, B renaming it away is refused as well.
    let anew = granted(e.request(ms(10), &"s.dir", A, locked(Intent::Write)));
    e.finish(ms(11), anew.lease, A, Outcome::Committed);
    assert_eq!(
        e.request(ms(12), &"s.dir", B, locked(Intent::Write)),
        Admission::Fenced
    );
    // A create right after its own lookup goes ahead.
    let mut e = engine();
    e.saw_missing(ms(0), &"s.tmp", A);
    granted(e.request(ms(0), &"s.tmp", A, locked(Intent::Write)));
}

#[test]
fn a_cycle_whose_save_was_refused_ends_and_the_next_load_is_fresh() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    assert_eq!(
        e.request(ms(2), &"s", B, locked(Intent::Write)),
        Admission::OutOfTurn
    );
    e.commit_out_of_turn(ms(2), &"s", B, Outcome::Committed);
    assert_eq!(
        e.request(ms(3), &"s", A, ask(Intent::Append)),
        Admission::Fenced
    );
    e.tick(ms(3));
    assert!(e.is_free(&"s"), "the refused cycle ended at once");
    // Its view outlives it for saves made without a new read (dbm saving again when the
    // refused database is collected)...
    assert_eq!(
        e.request(ms(4), &"s", A, locked(Intent::Write)),
        Admission::Fenced
    );
    // ...but the holder's next load reads afresh, and its save goes through.
    let again = granted(e.request(ms(5), &"s", A, ask(Intent::Read)));
    assert_ne!(again.lease, a.lease);
    e.finish(ms(6), again.lease, A, Outcome::Read);
    let save = granted(e.request(ms(7), &"s", A, ask(Intent::Append)));
    assert!(
        e.finish(ms(8), save.lease, A, Outcome::Committed)
            .is_empty()
    );
    assert_eq!(e.counters().fenced_commits, 2);
    e.check_deadline_index();
}

#[test]
fn a_create_refused_because_another_process_holds_the_name_leaves_no_absence_behind() {
    // Shells sharing one temp name: A's `> f.tmp` finds it missing while B's lease on
    // the name is reserved for B's retry, so A's create is refused. That lookup was the
    // create's own, not a load: A's next `> f.tmp`, an open of B's temp once B is done,
    // must not be judged on it.
    let mut e = engine();
    let earlier = granted(e.request(ms(0), &"f.tmp", C, locked(Intent::Write)));
    e.finish(ms(0), earlier.lease, C, Outcome::Committed);
    let b = granted(e.request(ms(0), &"f.tmp", B, locked(Intent::Write)));
    e.saw_missing(ms(1), &"f.tmp", A);
    let create = Ask {
        creates: true,
        ..locked(Intent::Write)
    };
    assert_eq!(e.request(ms(1), &"f.tmp", A, create), Admission::Fenced);
    e.finish(ms(2), b.lease, B, Outcome::Committed);
    let save_in_place = Ask {
        replaces: true,
        ..ask(Intent::Write)
    };
    granted(e.request(ms(3), &"f.tmp", A, save_in_place));
}

#[test]
fn a_blind_write_that_wrote_nothing_ends_at_once() {
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Write)));
    let b = queued(e.request(ms(1), &"s", B, ask(Intent::Read)));
    assert_eq!(grants(&e.finish(ms(2), a.lease, A, Outcome::Read)), vec![b]);
    // A cycle that read lingers as before.
    let mut e = engine();
    let a = granted(e.request(ms(0), &"s", A, ask(Intent::Read)));
    let save = granted(e.request(ms(1), &"s", A, ask(Intent::Write)));
    e.finish(ms(1), a.lease, A, Outcome::Read);
    queued(e.request(ms(2), &"s", B, ask(Intent::Read)));
    assert!(e.finish(ms(3), save.lease, A, Outcome::Read).is_empty());
}

/// A lookup of a missing `key` by `holder` (no family; a name taken for a file's).
fn looks_up(
    e: &mut Engine<&'static str>,
    now: Duration,
    key: &'static str,
    holder: Holder,
) -> Absence {
    e.lookup_missing(now, &key, holder, [None, None], true)
}

/// A create by `holder` of a name its lookup just found missing (CREATE holds the
/// directory lock).
fn create_ask() -> Ask {
    Ask {
        locked: true,
        creates: true,
        ..Ask::new(Intent::Write)
    }
}

#[test]
fn a_second_loader_of_a_missing_file_waits_for_the_first_ones_save() {
    let mut e = engine();
    assert_eq!(looks_up(&mut e, ms(0), "s", A), Absence::Missing);
    // B finds the name A found missing: A's claim becomes A's cycle, B waits at its open.
    assert_eq!(looks_up(&mut e, ms(10), "s", B), Absence::Claimed);
    assert_eq!(e.holders_of(&"s"), vec![A]);
    let b = queued(e.acquire(ms(11), &"s", B, Intent::Read, None));
    // A's own lookup before its create finds the name missing, and its create joins.
    assert_eq!(looks_up(&mut e, ms(40), "s", A), Absence::Missing);
    let a = granted(e.request(ms(40), &"s", A, create_ask()));
    let actions = e.finish(ms(41), a.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![b]);
    // The gap from A's load to its create (40 ms) now sets the file's linger.
    assert_eq!(e.counters().claims, 1);
}

#[test]
fn a_claim_lapses_at_the_linger_and_a_child_never_waits_for_its_parents() {
    let mut e = engine();
    assert_eq!(looks_up(&mut e, ms(0), "s", A), Absence::Missing);
    // A's child (the shell's `mv`) is part of A's cycle.
    assert_eq!(
        e.lookup_missing(ms(5), &"s", C, [Some(A), None], true),
        Absence::Missing
    );
    // A file nobody has saved has no gaps: its claim lasts the longest linger. Past that,
    // B reads the absence as its own.
    assert_eq!(looks_up(&mut e, ms(1001), "s", B), Absence::Missing);
    assert!(e.holders_of(&"s").is_empty());
}

#[test]
fn a_first_save_later_than_the_default_linger_keeps_its_claim_until_a_probe_lingers_out() {
    let mut e = engine();
    // keyv-file: A loads the missing store and saves 120 ms later, past the 50 ms linger.
    assert_eq!(looks_up(&mut e, ms(0), "s", A), Absence::Missing);
    assert_eq!(looks_up(&mut e, ms(60), "s", B), Absence::Claimed);
    let b = queued(e.acquire(ms(61), &"s", B, Intent::Read, None));
    assert!(e.tick(ms(110)).is_empty());
    assert_eq!(looks_up(&mut e, ms(120), "s", A), Absence::Missing);
    let a = granted(e.request(ms(120), &"s", A, create_ask()));
    assert_eq!(
        grants(&e.finish(ms(121), a.lease, A, Outcome::Committed)),
        vec![b]
    );

    // A name only ever probed: the first claimed cycle lingers out at the longest linger,
    // and later claims on it last the default linger only.
    let mut e = engine();
    assert_eq!(looks_up(&mut e, ms(0), "p", A), Absence::Missing);
    assert_eq!(looks_up(&mut e, ms(10), "p", B), Absence::Claimed);
    let b = queued(e.acquire(ms(11), &"p", B, Intent::Read, None));
    assert!(e.tick(ms(500)).is_empty());
    assert_eq!(grants(&e.tick(ms(1010))), vec![b]);
    e.holder_exited(ms(1011), B, None);
    assert_eq!(looks_up(&mut e, ms(2000), "p", A), Absence::Missing);
    assert_eq!(looks_up(&mut e, ms(2060), "p", C), Absence::Missing);
    assert!(e.holders_of(&"p").is_empty());
}

#[test]
fn a_name_not_taken_for_a_file_or_claimed_by_an_exited_process_makes_nobody_wait() {
    let mut e = engine();
    let none = [None, None];
    // A directory-like name is never claimed (its placeholder would break mkdir).
    assert_eq!(
        e.lookup_missing(ms(0), &"dir", A, none, false),
        Absence::Missing
    );
    assert_eq!(
        e.lookup_missing(ms(1), &"dir", B, none, false),
        Absence::Missing
    );
    assert_eq!(looks_up(&mut e, ms(0), "s", A), Absence::Missing);
    e.holder_exited(ms(2), A, None);
    assert_eq!(looks_up(&mut e, ms(3), "s", B), Absence::Missing);
    assert!(e.holders_of(&"s").is_empty());
}

#[test]
fn a_save_granted_at_a_placeholders_getattr_is_judged_on_the_savers_absence() {
    let mut e = engine();
    let none = [None, None];
    // A and B both load the missing store before anyone claims it (A's claim lapsed at the longest
    // linger).
    assert_eq!(looks_up(&mut e, ms(0), "s", A), Absence::Missing);
    assert_eq!(looks_up(&mut e, ms(1100), "s", B), Absence::Missing);
    let b = granted(e.request(ms(1101), &"s", B, create_ask()));
    // A's save: its lookup finds B's cycle holding the name, so it waits at a placeholder.
    assert_eq!(looks_up(&mut e, ms(1102), "s", A), Absence::Claimed);
    let a = queued(e.acquire(ms(1102), &"s", A, Intent::Read, None));
    let actions = e.finish(ms(1103), b.lease, B, Outcome::Committed);
    assert_eq!(grants(&actions), vec![a]);
    // The retry is A's save in place of B's file, built on A's absence: refused.
    assert!(e.fence_stale_save(ms(1104), &"s", A, none));
    // C never loaded the store: its save is blind, and goes.
    assert!(!e.fence_stale_save(ms(1105), &"s", C, none));
}

#[test]
fn a_new_dbm_database_is_its_creators_cycle_from_the_empty_data_file_to_the_index() {
    let mut e = engine();
    // dbm.dumb makes a new database: `open(dat, 'w')` (created empty), the index found
    // missing, the first value written into `.dat`, the first entry appended to `.dir`.
    assert_eq!(looks_up(&mut e, ms(0), "dat", A), Absence::Missing);
    let touch = granted(e.request(ms(1), &"dat", A, create_ask()));
    let b = queued(e.request(ms(2), &"dat", B, ask(Intent::Read)));
    assert!(grants(&e.finish(ms(3), touch.lease, A, Outcome::Touched)).is_empty());
    assert_eq!(looks_up(&mut e, ms(4), "dir", A), Absence::Missing);
    let fill = Ask {
        replaces: true,
        ..ask(Intent::Write)
    };
    let value = granted(e.request(ms(5), &"dat", A, fill));
    // Filled while A still rests on the missing index: the cycle goes on.
    assert!(grants(&e.finish(ms(6), value.lease, A, Outcome::Committed)).is_empty());
    assert_eq!(looks_up(&mut e, ms(7), "dir", A), Absence::Missing);
    let append_create = Ask {
        locked: true,
        creates: true,
        ..Ask::new(Intent::Append)
    };
    let index = granted(e.request(ms(8), &"dir", A, append_create));
    // The index's first append is A's cycle's save, not an append beside others.
    let c = queued(e.request(ms(9), &"dir", C, ask(Intent::Append)));
    assert!(grants(&e.finish(ms(10), index.lease, A, Outcome::Committed)).is_empty());
    // Both cycles linger out together; B and C then see the whole database.
    let mut granted_later = grants(&e.tick(ms(200)));
    granted_later.sort();
    assert_eq!(granted_later, vec![b, c]);
}

#[test]
fn an_empty_create_without_a_claim_elsewhere_ends_at_its_first_fill() {
    let mut e = engine();
    let touch = granted(e.request(ms(1), &"f", A, create_ask()));
    let b = queued(e.request(ms(2), &"f", B, ask(Intent::Read)));
    assert!(grants(&e.finish(ms(3), touch.lease, A, Outcome::Touched)).is_empty());
    let fill = granted(e.request(
        ms(4),
        &"f",
        A,
        Ask {
            replaces: true,
            ..ask(Intent::Write)
        },
    ));
    assert_eq!(
        grants(&e.finish(ms(5), fill.lease, A, Outcome::Committed)),
        vec![b]
    );
}

/// keyv-file: `await set()` returns at the save's close(2) and the next update loads at
/// once; the kernel's release of the saved handle (the commit) reaches us after that load.
/// `saved` is what that release reports.
fn load_between_close_and_release(saved: Outcome) -> (Engine<&'static str>, WaitId, Admission) {
    let mut e = engine();
    let a = granted(e.acquire(ms(0), &"s", A, Intent::Read, None));
    let b = queued(e.acquire(ms(1), &"s", B, Intent::Read, None));
    assert!(e.finish(ms(2), a.lease, A, Outcome::Read).is_empty());
    let save = granted(e.acquire(ms(100), &"s", A, Intent::Write, None));
    let load = granted(e.acquire(ms(101), &"s", A, Intent::Read, None));
    assert_eq!(load.lease, save.lease, "a process never waits for itself");
    assert!(e.finish(ms(102), load.lease, A, Outcome::Read).is_empty());
    let released = e.finish(ms(103), save.lease, A, saved);
    if saved == Outcome::Reloaded {
        assert!(released.is_empty(), "B waits for A's next cycle");
        // Past the default linger, within the one A's gaps call for (4 x 98 ms).
        assert!(e.tick(ms(200)).is_empty());
    } else {
        assert_eq!(grants(&released), vec![b]);
        let Action::Granted { grant, .. } = released[0] else {
            unreachable!()
        };
        assert!(
            e.finish(ms(150), grant.lease, B, Outcome::Committed)
                .is_empty()
        );
    }
    let next_save = e.request(ms(203), &"s", A, ask(Intent::Write));
    (e, b, next_save)
}

#[test]
fn a_load_between_a_saves_close_and_its_release_starts_the_holders_next_cycle() {
    let (mut e, b, next_save) = load_between_close_and_release(Outcome::Reloaded);
    let next_save = granted(next_save);
    assert_eq!(
        next_save.generation, 1,
        "the next cycle starts from A's commit"
    );
    let actions = e.finish(ms(204), next_save.lease, A, Outcome::Committed);
    assert_eq!(grants(&actions), vec![b], "then B, in turn");
    assert_eq!(e.generation(&"s"), 2);

    // Taken as a plain commit, the cycle ended with B waiting: B went ahead, and A's save
    // from that load was refused.
    let (_, _, next_save) = load_between_close_and_release(Outcome::Committed);
    assert!(matches!(next_save, Admission::Fenced), "{next_save:?}");
}
