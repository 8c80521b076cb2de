//! A name several processes find missing at once (four processes loading a store nobody
//! has saved yet): the first one's lookup claims the name, and a lookup by anyone else
//! while that claim is fresh starts the claimant's cycle and is told to wait for it.
//!
//! A lookup cannot wait itself: it holds the directory's lock (shared), and the
//! claimant's create or rename needs it exclusive. The front end answers the lookup with
//! a stand-in (a placeholder inode) and makes the asker's next OPEN or GETATTR of it wait
//! in the file's queue; those hold no directory lock. Nothing is kept for a lookup nobody
//! contends: a claim is a record of who looked first, made a lease only when a second
//! process comes.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Ask, Engine, Entry, Intent, Lease, LeaseId, Mode};

/// What a lookup that found no file tells the asker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Absence {
    /// The name is missing, and that is what the asker's cycle reads.
    Missing,
    /// Another process's cycle holds the name (or has just claimed it): the asker must
    /// wait for that cycle before it may see the name at all.
    Claimed,
}

/// The first process that found a name missing, its parent and grandparent, and when.
#[derive(Clone, Copy, Debug)]
pub(super) struct Claim {
    holder: Holder,
    family: [Option<Holder>; 2],
    at: Duration,
}

impl<K: Clone + Eq + Hash> Engine<K> {
    /// A lookup by `holder` (whose parent and grandparent are `family`) found no file at
    /// `key`. Only a name the front end takes for a file's (`may_claim`) is claimed; a
    /// name held by a lease is a file's already.
    pub fn lookup_missing(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        family: [Option<Holder>; 2],
        may_claim: bool,
    ) -> Absence {
        let related = |other: Holder, others_family: &[Option<Holder>; 2]| {
            other == holder
                || family.contains(&Some(other))
                || others_family.contains(&Some(holder))
        };
        if let Some(entry) = self.entries.get(key) {
            let held_by_another = entry.lease.as_ref().is_some_and(|lease| match &lease.mode {
                Mode::Exclusive { holder: h, .. } => !related(*h, &[None, None]),
                Mode::Shared { holders } => !holders.keys().any(|h| related(*h, &[None, None])),
            });
            let others_queue = entry.lease.is_none() && !entry.queue.is_empty();
            if held_by_another || others_queue {
                // A save of the asker's that comes after its own cycle lingered out (keyv-file
                // saves 100 ms after its load, the default linger): its gap is known now, and
                // taught at once it lengthens the linger of the cycle it waits behind, which
                // belongs to another process of the same program.
                self.teach_late_save(now, key, holder);
                self.schedule(key);
                return Absence::Claimed;
            }
        }
        if let Some(claim) = self.claims.get(key).copied()
            && !related(claim.holder, &claim.family)
        {
            self.claims.remove(key);
            if self.claim_is_fresh(now, key, &claim) {
                self.start_claimed_cycle(now, key, &claim);
                return Absence::Claimed;
            }
        }
        self.saw_missing(now, key, holder);
        if may_claim && !self.holds(key, holder) && !self.claims.contains_key(key) {
            self.prune_claims(now);
            self.claims.insert(
                key.clone(),
                Claim {
                    holder,
                    family,
                    at: now,
                },
            );
        }
        Absence::Missing
    }

    /// The claimant still rests on the absence it found (nobody committed since, it has not
    /// saved), and its linger from that lookup has not run out.
    fn claim_is_fresh(&self, now: Duration, key: &K, claim: &Claim) -> bool {
        let Some(entry) = self.entries.get(key) else {
            return false;
        };
        let still_absent = self
            .seen
            .get(&(key.clone(), claim.holder))
            .is_some_and(|seen| {
                seen.absent
                    && !seen.committed
                    && !seen.inherited
                    && seen.generation == entry.generation
            });
        let linger = self.claim_linger(entry);
        entry.lease.is_none()
            && entry.queue.is_empty()
            && still_absent
            && !linger.is_zero()
            && now.saturating_sub(claim.at) <= linger
    }

    /// The claimant's cycle, as if its lookup had been a read: its read-to-save gap counts
    /// from that lookup, and it lingers from `now`, when somebody first waits for it (a
    /// first save has no gaps to set its linger by).
    fn start_claimed_cycle(&mut self, now: Duration, key: &K, claim: &Claim) {
        let id = LeaseId(self.fresh_id());
        let entry = self.entries.get_mut(key).expect("checked fresh");
        let mode = Mode::Exclusive {
            holder: claim.holder,
            uses: 0,
            writing: false,
            idle_since: Some(now),
            read_done_at: Some(claim.at),
        };
        let mut lease = Lease::new(id, mode, claim.at, Some(entry.generation));
        lease.claimed = true;
        entry.lease = Some(lease);
        self.active.insert(id, key.clone());
        self.counters.claims += 1;
        self.schedule(key);
    }

    /// How long a claim, and the claimed cycle, may wait for its holder's first save. A
    /// file nobody has saved yet has no gaps to go by, and a first save is late by nature:
    /// its program starts up, loads, then saves after its own delay (keyv-file's 100 ms
    /// debounce plus a start-up, over the 100 ms default). So a claim waits up to the
    /// longest linger until the file has shown a gap, or until a claim on it has lingered
    /// out without a save (its claimants only probe the name).
    pub(super) fn claim_linger(&self, entry: &Entry) -> Duration {
        if entry.gaps.is_empty() && !entry.probed {
            self.policy.max_linger.max(self.policy.linger)
        } else {
            entry.gaps.linger(&self.policy)
        }
    }

    /// Drops claims older than the longest linger once there are many (the next pruning
    /// waits for twice as many, so a burst of fresh ones is not scanned at every insert).
    fn prune_claims(&mut self, now: Duration) {
        if self.prune_claims_at.due(self.claims.len()) {
            let horizon = self.policy.max_linger;
            self.claims
                .retain(|_, claim| now.saturating_sub(claim.at) <= horizon);
            self.prune_claims_at.pruned(self.claims.len());
        }
    }

    /// `holder` creates (or otherwise writes) `key`: a claim of its own is used up. A temp
    /// name, found missing by its writer's lookup just before its CREATE, leaves nothing.
    pub(super) fn use_up_claim(&mut self, key: &K, holder: Holder) {
        if self
            .claims
            .get(key)
            .is_some_and(|claim| claim.holder == holder)
        {
            self.claims.remove(key);
        }
    }

    /// A save by `holder` through a lease it was granted for a read: the GETATTR of a
    /// placeholder, which the kernel sends as the permission check of an open for writing
    /// too. It is judged as that save would have been at its own request: refused (and the
    /// cycle ended) when it rests on an older view of the file than the file, an absence
    /// included.
    pub fn fence_stale_save(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        family: [Option<Holder>; 2],
    ) -> bool {
        let ask = Ask {
            family,
            replaces: true,
            ..Ask::new(Intent::Write)
        };
        if !self.out_of_date(now, key, holder, &ask) {
            return false;
        }
        self.counters.fenced_commits += 1;
        self.teach_late_save(now, key, holder);
        self.close_view(key, holder);
        if self.holds(key, holder)
            && let Some(lease) = self.entries.get_mut(key).and_then(|e| e.lease.as_mut())
        {
            lease.refused = true;
            lease.yielded = true;
            self.schedule(key);
        }
        true
    }

    /// `holder` claims a name other than `key` and still rests on its absence.
    pub(super) fn claims_another(&self, key: &K, holder: Holder) -> bool {
        self.claims.iter().any(|(other, claim)| {
            other != key
                && claim.holder == holder
                && self
                    .seen
                    .get(&(other.clone(), holder))
                    .is_some_and(|seen| seen.absent && !seen.committed && !seen.inherited)
        })
    }

    /// An exited process claims nothing.
    pub(super) fn drop_claims_of(&mut self, holder: Holder) {
        self.claims.retain(|_, claim| claim.holder != holder);
    }
}
