//! The engine's rules for cycles that span more than one file or process: a temp file
//! written during a cycle is tied to it, and a cycle whose holder exits before saving
//! passes to the holder's parent (the shell of `sed f > f.tmp && mv f.tmp f`).

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Action, Engine, Lease, LeaseId, Mode, Seen, WaitId, entry_seen_by};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Ties `holder`'s lease on the temp file `temp` to its read cycle on `to`: the temp
    /// lease then ends (committing if `wrote`) when that cycle ends. `release_use` ends
    /// one use of the temp lease first (its handle closed); otherwise all uses end (the
    /// holder died). False when there is nothing to tie, and nothing changed.
    pub fn tie(
        &mut self,
        temp: &K,
        holder: Holder,
        wrote: bool,
        to: &K,
        release_use: bool,
    ) -> bool {
        if !self.is_reading(to, holder) {
            return false;
        }
        let Some(Lease {
            id,
            mode: Mode::Exclusive {
                holder: h, uses, ..
            },
            tied,
            ..
        }) = self
            .entries
            .get_mut(temp)
            .and_then(|entry| entry.lease.as_mut())
        else {
            return false;
        };
        if *h != holder {
            return false;
        }
        let id = *id;
        *uses = if release_use {
            uses.saturating_sub(1)
        } else {
            0
        };
        if *uses > 0 {
            return true;
        }
        *tied = true;
        let target = self
            .entries
            .get_mut(to)
            .and_then(|entry| entry.lease.as_mut())
            .expect("checked above");
        target.ties.push((id, wrote));
        true
    }

    /// Whether `holder` holds `key` in a cycle that has not written yet.
    pub fn is_reading(&self, key: &K, holder: Holder) -> bool {
        matches!(
            self.entries.get(key).and_then(|entry| entry.lease.as_ref()),
            Some(Lease {
                mode: Mode::Exclusive {
                    holder: h,
                    writing: false,
                    ..
                },
                tied: false,
                ..
            }) if *h == holder
        )
    }

    /// The holder exited. Its waits are answered. A cycle it was still reading passes to
    /// `parent` when that process lives (the cycle of a shell pipeline goes on in the
    /// shell: its next child renames the temp file), lingering from now; every other lease
    /// of the holder ends.
    pub fn holder_exited(
        &mut self,
        now: Duration,
        holder: Holder,
        parent: Option<Holder>,
    ) -> Vec<Action<K>> {
        let mut actions = Vec::new();
        self.end_reads_beside_of(now, holder, &mut actions);
        let waits: Vec<(WaitId, K)> = self
            .waiting
            .iter()
            .map(|(wait, key)| (*wait, key.clone()))
            .collect();
        for (wait, key) in waits {
            let entry = self
                .entries
                .get_mut(&key)
                .expect("waiting key has an entry");
            if entry
                .queue
                .iter()
                .any(|waiter| waiter.id == wait && waiter.holder == holder)
            {
                entry.queue.retain(|waiter| waiter.id != wait);
                self.waiting.remove(&wait);
                actions.push(Action::Abandoned { wait });
            }
        }
        let held: Vec<K> = self.active.values().cloned().collect();
        for key in held {
            let renewed = LeaseId(self.fresh_id());
            // Ending one lease may end the leases tied to it: skip those already gone.
            let Some(lease) = self
                .entries
                .get_mut(&key)
                .and_then(|entry| entry.lease.as_mut())
            else {
                continue;
            };
            if lease.tied {
                // A tied temp file goes where the cycle it belongs to goes.
                if let (Mode::Exclusive { holder: h, .. }, Some(parent)) = (&mut lease.mode, parent)
                    && *h == holder
                {
                    *h = parent;
                }
                continue;
            }
            let ended = match &mut lease.mode {
                Mode::Exclusive {
                    holder: h,
                    uses,
                    writing,
                    idle_since,
                    ..
                } if *h == holder => match parent {
                    Some(parent) if !*writing => {
                        *h = parent;
                        lease.passed = true;
                        // A new id: the dead holder's handles may still close, and their
                        // late ends must not count against the next holder's uses.
                        let old = std::mem::replace(&mut lease.id, renewed);
                        if let Some(at) = lease.scheduled.take() {
                            self.deadlines.remove(&(at, old));
                        }
                        self.active.remove(&old);
                        self.active.insert(renewed, key.clone());
                        *uses = 0;
                        *idle_since = Some(now);
                        self.counters.handoffs += 1;
                        false
                    }
                    _ => {
                        if (*uses > 0 || *writing) && !lease.kept {
                            self.counters.holder_exits_mid_cycle += 1;
                        }
                        true
                    }
                },
                Mode::Shared { holders } if holders.contains_key(&holder) => {
                    holders.remove(&holder);
                    holders.is_empty()
                }
                _ => false,
            };
            if ended {
                self.end_lease(&key);
            } else {
                // A passed cycle lingers from now.
                self.schedule(&key);
            }
            self.grant_waiters(now, &key, &mut actions);
        }
        self.read_streaks.retain(|(_, h), _| *h != holder);
        self.last_activity.remove(&holder);
        self.kept_at.remove(&holder);
        self.drop_claims_of(holder);
        self.savers.retain(|(_, h)| *h != holder);
        if let Some(parent) = parent {
            // What the exiting process read and did not save goes with its cycles.
            let unsaved: Vec<(K, Seen)> = self
                .seen
                .iter()
                .filter(|((_, h), seen)| *h == holder && !seen.committed && !seen.absent)
                .map(|((key, _), seen)| (key.clone(), *seen))
                .collect();
            for (key, seen) in unsaved {
                // A sibling has saved over this view since: the family's cycle is done.
                let sibling_saved = self.entries.get(&key).is_some_and(|entry| {
                    entry.generation != seen.generation && entry.saver_parent == Some(parent)
                });
                if sibling_saved {
                    continue;
                }
                let older = self
                    .seen
                    .get(&(key.clone(), parent))
                    .is_none_or(|mine| mine.committed || mine.at <= seen.at);
                if older {
                    let inherited = Seen {
                        inherited: true,
                        ..seen
                    };
                    self.note_seen(&key, parent, inherited);
                }
            }
        }
        let entries = &mut self.entries;
        self.seen.retain(|(key, h), _| {
            if *h == holder {
                entry_seen_by(entries, key, -1);
            }
            *h != holder
        });
        self.forget_idle_entries();
        actions
    }
}
