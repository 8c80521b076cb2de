//! Read-only views of the engine: who holds what, for the front ends and `lockfs status`.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Engine, Lease, Mode};
use super::view::{HolderView, LeaseState, LeaseView, WaiterView};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// The files `holder` holds a lease on.
    pub fn leases_of(&self, holder: Holder) -> Vec<K> {
        self.active
            .values()
            .filter(|key| match self.entries[*key].lease.as_ref() {
                Some(Lease { tied: true, .. }) | None => false,
                Some(lease) => match &lease.mode {
                    Mode::Exclusive { holder: h, .. } => *h == holder,
                    Mode::Shared { holders } => holders.contains_key(&holder),
                },
            })
            .cloned()
            .collect()
    }

    /// A file `holder` is reading (a cycle with no write yet) among those `wanted` picks.
    /// `wanted` is asked first, so a cheap test keeps this a plain walk over the leases.
    pub fn reading_cycle_of(&self, holder: Holder, wanted: impl Fn(&K) -> bool) -> Option<K> {
        self.active
            .values()
            .find(|key| wanted(key) && self.is_reading(key, holder))
            .cloned()
    }

    /// The processes other than `holder` that read a file among those `wanted` picks.
    pub fn other_readers(&self, holder: Holder, wanted: impl Fn(&K) -> bool) -> Vec<Holder> {
        self.active
            .values()
            .filter(|key| wanted(key))
            .filter_map(|key| match self.entries[key].lease.as_ref()?.mode {
                Mode::Exclusive {
                    holder: h,
                    writing: false,
                    ..
                } if h != holder => Some(h),
                _ => None,
            })
            .collect()
    }

    /// Every live lease and queue, for `lockfs status`.
    pub fn snapshot(&self, now: Duration) -> Vec<LeaseView<K>> {
        let mut views: Vec<LeaseView<K>> = self
            .entries
            .iter()
            .filter(|(_, entry)| entry.lease.is_some() || !entry.queue.is_empty())
            .map(|(key, entry)| {
                let (holders, state, held) = match &entry.lease {
                    None => (Vec::new(), LeaseState::Lingering, Duration::ZERO),
                    Some(lease) => {
                        let held = now.saturating_sub(lease.granted_at);
                        match &lease.mode {
                            Mode::Exclusive {
                                holder,
                                uses,
                                writing,
                                ..
                            } => {
                                // A cycle kept after a save in place waits for its holder's
                                // next step as a read-only one waits for its save.
                                let kept_idle = lease.kept && *uses == 0;
                                let state = if *writing && !kept_idle {
                                    LeaseState::Writing
                                } else if *uses == 0 {
                                    LeaseState::Lingering
                                } else {
                                    LeaseState::Reading
                                };
                                let view = HolderView {
                                    process: *holder,
                                    handles: *uses,
                                };
                                (vec![view], state, held)
                            }
                            Mode::Shared { holders } => {
                                let views = holders
                                    .iter()
                                    .map(|(process, handles)| HolderView {
                                        process: *process,
                                        handles: *handles,
                                    })
                                    .collect();
                                (views, LeaseState::Appending, held)
                            }
                        }
                    }
                };
                LeaseView {
                    key: key.clone(),
                    holders,
                    state,
                    held,
                    generation: entry.generation,
                    waiters: entry
                        .queue
                        .iter()
                        .map(|waiter| WaiterView {
                            process: waiter.holder,
                            waited: now.saturating_sub(waiter.since),
                            intent: waiter.ask.intent,
                        })
                        .collect(),
                }
            })
            .collect();
        views.sort_by_key(|view| std::cmp::Reverse(view.held));
        views
    }

    /// The processes holding or waiting for `key`, oldest first.
    pub fn holders_of(&self, key: &K) -> Vec<Holder> {
        let Some(entry) = self.entries.get(key) else {
            return Vec::new();
        };
        let mut holders: Vec<Holder> = match entry.lease.as_ref().map(|lease| &lease.mode) {
            Some(Mode::Exclusive { holder, .. }) => vec![*holder],
            Some(Mode::Shared { holders }) => holders.keys().copied().collect(),
            None => Vec::new(),
        };
        holders.extend(entry.queue.iter().map(|waiter| waiter.holder));
        holders
    }
}
