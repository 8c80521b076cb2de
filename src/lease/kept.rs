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
//!
//! Between renaming `.dir` away and creating it again, the name is missing, and a lookup
//! cannot wait: another process that loads the store then finds no index and would save
//! one holding only its own key. So a removal by a holder that keeps cycles (or kept one
//! within the maximum hold: descheduled for longer than the linger after its append, its
//! kept cycles had ended before it renamed the index away) is a store's save under way:
//! it and the holder's kept cycles hold until the re-create, the holder's exit, or the
//! maximum hold, instead of lingering out. And a lookup that finds a name missing while
//! another process holds it counts as older than the file, so a save built on it is
//! refused. The exhaustive check of both is `model_stores.rs`.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Engine, Lease, LeaseId, Mode, Seen};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Whether `holder`'s save of `key`, which it read in this cycle, keeps the cycle
    /// going: the holder also holds a cycle it read on another file, or, for a file it
    /// created empty (a new dbm.dumb database's `.dat`, filled next), a claim on another
    /// missing name it loaded (the new database's index, created after).
    pub(super) fn keeps_after_commit(&self, key: &K, holder: Holder) -> bool {
        let lease = self
            .entries
            .get(key)
            .and_then(|entry| entry.lease.as_ref())
            .filter(|lease| lease.view.is_some() && holds_cycle(lease, holder));
        let Some(lease) = lease else {
            return false;
        };
        (lease.touched && self.claims_another(key, holder))
            || self.active.values().any(|other| {
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
        for key in self.cycles_of(holder) {
            let Some(lease) = self
                .entries
                .get_mut(&key)
                .and_then(|entry| entry.lease.as_mut())
            else {
                continue;
            };
            if lease.kept {
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
        lease.removed = false;
        lease.view = None;
        lease.granted_at = now;
        self.schedule(key);
    }

    /// `holder` removed a file of its cycle: if it keeps cycles on other files, or kept
    /// one lately (a store's save under way), they and the removed one hold until the
    /// name is created again.
    pub(super) fn hold_store_save(&mut self, now: Duration, holder: Holder) {
        // Every kept cycle stamped `kept_at`: a holder without one keeps none.
        let Some(kept_at) = self.kept_at.get(&holder) else {
            return;
        };
        let lately = now.saturating_sub(*kept_at) <= self.policy.max_hold;
        let keys = self.cycles_of(holder);
        let store = lately
            || keys.iter().any(|key| {
                self.entries[key]
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.kept)
            });
        if store {
            self.mark_pending(&keys, true);
        }
    }

    /// `holder` committed a file: a store's save it held is no longer under way.
    pub(super) fn end_store_save(&mut self, holder: Holder) {
        if !self.kept_at.contains_key(&holder) {
            return;
        }
        // Only cycles still marked change, and only those are filed again.
        let keys = self.cycles_of(holder);
        self.mark_pending(&keys, false);
    }

    /// `holder` renamed `key` away out of turn, over another process's cycle that can no
    /// longer commit: the removal is a moment of `holder`'s own cycle (dbm.dumb renames its
    /// index away to create it again), so that cycle takes the name over until the
    /// re-create, as if it had held it. Left without a lease, the name looked simply
    /// missing to the next process that loaded the store.
    pub(super) fn take_over_after_removal(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        generation: u64,
    ) {
        let Some(lease) = self
            .entries
            .get_mut(key)
            .and_then(|entry| entry.lease.as_mut())
        else {
            return;
        };
        let Mode::Exclusive {
            holder: overtaken, ..
        } = lease.mode
        else {
            return;
        };
        if !lease.ties.is_empty() || lease.tied {
            return;
        }
        lease.refused = true;
        self.remember_view(now, key);
        // The overtaken process has not been told: what it read still judges its saves,
        // and a lookup of the name it finds missing now must not replace it.
        if let Some(seen) = self.seen.get_mut(&(key.clone(), overtaken))
            && !seen.absent
        {
            seen.committed = false;
        }
        self.end_lease(key);
        let id = LeaseId(self.fresh_id());
        let removed = Mode::Exclusive {
            holder,
            uses: 0,
            writing: true,
            idle_since: Some(now),
            read_done_at: None,
        };
        let entry = self.entries.get_mut(key).expect("entry exists");
        entry.lease = Some(Lease {
            removed: true,
            ..Lease::new(id, removed, now, Some(generation))
        });
        self.active.insert(id, key.clone());
        self.schedule(key);
        self.hold_store_save(now, holder);
    }

    /// The keys of `holder`'s untied exclusive cycles.
    fn cycles_of(&self, holder: Holder) -> Vec<K> {
        self.active
            .values()
            .filter(|key| {
                self.entries[*key]
                    .lease
                    .as_ref()
                    .is_some_and(|lease| holds_cycle(lease, holder))
            })
            .cloned()
            .collect()
    }

    /// Marks the cycles on `keys`; only those that change are filed again (git prunes a
    /// thousand objects it read, each a removal: filing every cycle at each was quadratic).
    fn mark_pending(&mut self, keys: &[K], pending: bool) {
        for key in keys {
            let Some(lease) = self
                .entries
                .get_mut(key)
                .and_then(|entry| entry.lease.as_mut())
            else {
                continue;
            };
            if lease.pending != pending {
                lease.pending = pending;
                self.schedule(key);
            }
        }
    }

    /// Ends an idle lease at its linger (or yielded): a kept cycle as the commit it was, any
    /// other as a read-only cycle.
    pub(super) fn end_quiet(&mut self, now: Duration, key: &K) {
        if let Some(entry) = self.entries.get_mut(key)
            && entry.lease.as_ref().is_some_and(|lease| lease.claimed)
        {
            entry.probed = true;
        }
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
pub(super) fn holds_cycle(lease: &Lease, holder: Holder) -> bool {
    !lease.tied && matches!(lease.mode, Mode::Exclusive { holder: h, .. } if h == holder)
}
