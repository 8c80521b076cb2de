//! The engine's rules for temp files and dead holders: a temp file written during a cycle
//! is tied to it, a dead reader's lease waits for the rename of its temp file (the shell
//! case), and retried or abandoned uses give their lease up.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Action, Engine, Grant, Lease, LeaseId, Mode, WaitId, entry_seen_by};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Ends a use that did not touch the file (an open answered with a retry): the holder
    /// keeps the lease for a moment, and its next read continues this cycle.
    pub fn finish_unused(
        &mut self,
        now: Duration,
        lease: LeaseId,
        holder: Holder,
    ) -> Vec<Action<K>> {
        let Some(key) = self.active.get(&lease).cloned() else {
            return Vec::new();
        };
        let entry = self
            .entries
            .get_mut(&key)
            .expect("active lease has an entry");
        if let Some(Lease {
            mode:
                Mode::Exclusive {
                    holder: current,
                    uses,
                    idle_since,
                    reopen,
                    ..
                },
            ..
        }) = entry.lease.as_mut()
            && *current == holder
        {
            *uses = uses.saturating_sub(1);
            if *uses == 0 {
                *idle_since = Some(now);
                *reopen = true;
            }
            return Vec::new();
        }
        self.finish(now, lease, holder, false)
    }

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
                    bound: None,
                    ..
                },
                tied: false,
                ..
            }) if *h == holder
        )
    }

    /// Gives up one unused use of a lease at once, with no linger: the use never touched
    /// the file, and keeping the lease would make others wait for nothing.
    pub fn abandon(&mut self, now: Duration, lease: LeaseId, holder: Holder) -> Vec<Action<K>> {
        let Some(key) = self.active.get(&lease).cloned() else {
            return Vec::new();
        };
        let entry = self
            .entries
            .get_mut(&key)
            .expect("active lease has an entry");
        let current = entry.lease.as_mut().expect("active lease is current");
        let ended = match &mut current.mode {
            Mode::Exclusive {
                holder: h, uses, ..
            } if *h == holder => {
                *uses = uses.saturating_sub(1);
                *uses == 0
            }
            _ => return self.finish(now, lease, holder, false),
        };
        let mut actions = Vec::new();
        if ended {
            self.end_lease(&key);
            self.grant_waiters(now, &key, &mut actions);
        }
        actions
    }

    /// The holder exited. Its leases end, except a read lease named in `handoffs`, which
    /// waits (for the policy's handoff time) for the rename of the temp file with that token.
    pub fn holder_exited(
        &mut self,
        now: Duration,
        holder: Holder,
        handoffs: &[(K, u64)],
    ) -> Vec<Action<K>> {
        let mut actions = Vec::new();
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
            // Ending one lease may end the leases tied to it: skip those already gone.
            let Some(lease) = self
                .entries
                .get_mut(&key)
                .and_then(|entry| entry.lease.as_mut())
            else {
                continue;
            };
            if lease.tied {
                continue;
            }
            let ended = match &mut lease.mode {
                // A lease already waiting for its handoff stays: this exit was seen before.
                Mode::Exclusive {
                    holder: h,
                    uses,
                    writing,
                    idle_since,
                    bound: bound @ None,
                    ..
                } if *h == holder => {
                    let token = handoffs
                        .iter()
                        .find(|(handoff_key, _)| *handoff_key == key)
                        .map(|(_, token)| *token);
                    match token {
                        Some(token) if !*writing => {
                            *bound = Some(token);
                            *uses = 0;
                            *idle_since = Some(now);
                            self.counters.handoffs += 1;
                            false
                        }
                        _ => true,
                    }
                }
                Mode::Shared { holders } if holders.contains_key(&holder) => {
                    holders.remove(&holder);
                    holders.is_empty()
                }
                _ => false,
            };
            if ended {
                self.counters.holder_exits_mid_cycle += 1;
                self.end_lease(&key);
            }
            self.grant_waiters(now, &key, &mut actions);
        }
        self.read_streaks.retain(|(_, h), _| *h != holder);
        let entries = &mut self.entries;
        self.seen.retain(|(key, h), _| {
            if *h == holder {
                entry_seen_by(entries, key, -1);
            }
            *h != holder
        });
        let idle: Vec<K> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.is_idle())
            .map(|(key, _)| key.clone())
            .collect();
        for key in idle {
            self.entries.remove(&key);
        }
        actions
    }

    /// The token of the temp file a dead holder's lease on `key` waits for, if any.
    pub fn handoff_token(&self, key: &K) -> Option<u64> {
        match self.entries.get(key)?.lease.as_ref()?.mode {
            Mode::Exclusive { bound, .. } => bound,
            Mode::Shared { .. } => None,
        }
    }

    /// Passes a dead holder's lease on `key` to `holder`, which renames the temp file with
    /// `token` onto it. None when no lease waits for that token.
    pub fn adopt(&mut self, now: Duration, key: &K, token: u64, holder: Holder) -> Option<Grant> {
        let entry = self.entries.get_mut(key)?;
        let generation = entry.generation;
        let lease = entry.lease.as_mut()?;
        match &mut lease.mode {
            Mode::Exclusive {
                holder: h,
                uses,
                writing,
                idle_since,
                bound,
                ..
            } if *bound == Some(token) => {
                *h = holder;
                *uses = 1;
                *writing = true;
                *idle_since = None;
                *bound = None;
                lease.granted_at = now;
                Some(Grant {
                    lease: lease.id,
                    generation,
                })
            }
            _ => None,
        }
    }
}
