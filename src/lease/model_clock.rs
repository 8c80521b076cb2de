//! What the exhaustive checks (`model.rs`, `model_stores.rs`) share: recording the
//! engine's answers to parked requests, and letting time run on once nobody can move.

use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// Each parked request's answer: its grant, or None when it was refused, timed out or
/// abandoned.
pub(super) type Answers = HashMap<WaitId, Option<Grant>>;

/// Records the answers among `actions` (revocations answer nobody).
pub(super) fn record_answers(answered: &mut Answers, actions: Vec<Action<&'static str>>) {
    for action in actions {
        match action {
            Action::Granted { wait, grant } => {
                answered.insert(wait, Some(grant));
            }
            Action::Fenced { wait } | Action::TimedOut { wait } | Action::Abandoned { wait } => {
                answered.insert(wait, None);
            }
            Action::Revoked { .. } => {}
        }
    }
}

/// A world of an exhaustive check: an engine, its clock, and actors that may wait.
pub(super) trait Clocked {
    fn engine_and_clock(&mut self) -> (&mut Engine<&'static str>, &mut Duration);
    /// Hands the engine's `actions` to the actors.
    fn apply(&mut self, actions: Vec<Action<&'static str>>);
    fn anyone_waits(&self) -> bool;

    /// Lets time run on from deadline to deadline (at most 64) while anyone waits;
    /// whether every parked request was answered.
    fn run_out_the_clock(&mut self) -> bool {
        for _ in 0..64 {
            if !self.anyone_waits() {
                return true;
            }
            let (engine, now) = self.engine_and_clock();
            let Some(at) = engine.next_deadline() else {
                break;
            };
            *now = (*now).max(at);
            let actions = engine.tick(*now);
            self.apply(actions);
        }
        !self.anyone_waits()
    }
}
