//! Cycles kept after a save in place: a store made of several files (Python's `dbm.dumb`:
//! `state.dat` holds the values, `state.dir` the index) is saved file by file within one
//! load-modify-save. Its holder reads both, writes the value into `.dat` in place, appends
//! to `.dir`, then renames `.dir` away and writes a new one from the index it loaded.
//! Ended at the first of those saves, the cycles let another process load the index
//! between them, and the holder's new `.dir` then dropped that process's key.
//!
//! So a save by a holder that still holds a cycle on another file (untied, and one it
//! read) does not end the saved file's cycle: it goes on, its view the holder's own
//! commit, until the holder exits, it lingers out, or the holder begins its next load by
//! reading one of those files again. With others waiting, that read ends every kept cycle
//! of the holder at once and queues behind them; with nobody waiting, it begins a fresh
//! cycle in place.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Engine, Lease, Mode, Seen};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Whether `holder`'s save of `key`, which it read in this cycle, keeps the cycle
    /// going: the holder also holds a cycle it read on another file.
    pub(super) fn keeps_after_commit(&self, key: &K, holder: Holder) -> bool {
        let read_here = self
            .entries
            .get(key)
            .and_then(|entry| entry.lease.as_ref())
            .is_some_and(|lease| lease.view.is_some() && holds_cycle(lease, holder));
        read_here
            && self.active.values().any(|other| {
                other != key
                    && self
                        .entries
                        .get(other)
                        .and_then(|entry| entry.lease.as_ref())
                        .is_some_and(|lease| lease.view.is_some() && holds_cycle(lease, holder))
            })
    }

    /// The holder's next load begins while others wait: every cycle it kept after a save
    /// ends at the next tick, in FIFO order with the waiters.
    pub(super) fn yield_kept(&mut self, holder: Holder) {
        let keys: Vec<K> = self.active.values().cloned().collect();
        for key in keys {
            let Some(lease) = self
                .entries
                .get_mut(&key)
                .and_then(|entry| entry.lease.as_mut())
            else {
                continue;
            };
            if lease.kept && holds_cycle(lease, holder) {
                lease.yielded = true;
                self.schedule(&key);
            }
        }
    }

    /// The holder's next load begins with nobody waiting: its kept cycle on `key` becomes a
    /// fresh one, as if it had ended and the read had started another.
    pub(super) fn restart_cycle(&mut self, now: Duration, key: &K) {
        let Some(lease) = self
            .entries
            .get_mut(key)
            .and_then(|entry| entry.lease.as_mut())
        else {
            return;
        };
        if let Mode::Exclusive {
            writing,
            read_done_at,
            ..
        } = &mut lease.mode
        {
            *writing = false;
            *read_done_at = None;
        }
        lease.kept = false;
        lease.view = None;
        lease.granted_at = now;
        self.schedule(key);
    }

    /// Ends an idle lease at its linger (or yielded): a kept cycle as the commit it was, any
    /// other as a read-only cycle.
    pub(super) fn end_quiet(&mut self, now: Duration, key: &K) {
        let kept = self
            .entries
            .get(key)
            .and_then(|entry| entry.lease.as_ref())
            .and_then(|lease| match lease.mode {
                Mode::Exclusive { holder, .. } if lease.kept => Some((holder, lease.view)),
                _ => None,
            });
        let Some((holder, view)) = kept else {
            self.end_read_only(now, key);
            return;
        };
        self.read_streaks.remove(&(key.clone(), holder));
        if let Some(view) = view {
            self.note_seen(key, holder, Seen::own_commit(view, now));
        }
        self.end_lease(key);
    }
}

/// Whether `lease` is an untied exclusive cycle of `holder`.
fn holds_cycle(lease: &Lease, holder: Holder) -> bool {
    !lease.tied && matches!(lease.mode, Mode::Exclusive { holder: h, .. } if h == holder)
}
