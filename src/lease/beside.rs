//! Reads beside a cycle: a process that has shown itself a reader of a file (read-only
//! cycles in a row, never a save) reads it without taking the lease. A file replaced by
//! rename gives every reader the old or the new inode whole, natively as through the
//! mount, so such a read need not wait for another process's cycle; it must only never
//! see a write in place. So a write in place (an open for writing that is not a create,
//! a rename or a truncate under a kernel lock) waits until the reads beside the file have
//! closed, and no new read goes beside while one waits; a read beside open longer than
//! the maximum hold stops counting, as a holder's lease would be revoked.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Action, Ask, Engine, Entry, Grant, Intent, LeaseId, Mode, Seen};

/// One read beside a cycle, open now.
#[derive(Clone, Debug)]
pub(super) struct Beside<K> {
    pub(super) key: K,
    pub(super) holder: Holder,
    pub(super) since: Duration,
}

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Whether a read of `key` by `holder` goes beside the file's cycle: `holder` is a
    /// known reader, nobody writes the file in place or appends to it now, and no write in
    /// place waits for the reads beside it to close.
    pub(super) fn may_read_beside(&self, key: &K, holder: Holder) -> bool {
        if !self.is_reader(key, holder) {
            return false;
        }
        let Some(entry) = self.entries.get(key) else {
            return true;
        };
        let quiet = match entry.lease.as_ref() {
            None => true,
            Some(lease) => {
                !lease.tied && matches!(lease.mode, Mode::Exclusive { writing: false, .. })
            }
        };
        quiet
            && !entry
                .queue
                .iter()
                .any(|waiter| writes_in_place(waiter.ask.intent))
    }

    /// Lets `holder` read `key` beside its cycle; end it with [`Engine::finish`].
    pub(super) fn read_beside(&mut self, now: Duration, key: &K, holder: Holder) -> Grant {
        let generation = self.generation(key);
        let entry = self.entries.get_mut(key).expect("admit made the entry");
        entry.beside += 1;
        let lease = LeaseId(self.fresh_id());
        self.beside.insert(
            lease,
            Beside {
                key: key.clone(),
                holder,
                since: now,
            },
        );
        self.note_seen(key, holder, Seen::read(generation, now));
        self.counters.reads_beside += 1;
        Grant { lease, generation }
    }

    /// Whether `ask` on `key` must wait for the reads beside it to close (see
    /// [`Entry::waits_for_readers`]).
    pub(super) fn waits_for_readers(&self, key: &K, ask: &Ask) -> bool {
        self.entries
            .get(key)
            .is_some_and(|entry| entry.waits_for_readers(ask))
    }

    /// Ends the read beside `lease`, if it is one; true when it was.
    pub(super) fn end_read_beside(
        &mut self,
        now: Duration,
        lease: LeaseId,
        actions: &mut Vec<Action<K>>,
    ) -> bool {
        let Some(read) = self.beside.remove(&lease) else {
            return false;
        };
        self.drop_reader(now, &read.key, actions);
        true
    }

    /// The reads beside of `holder`, which exited, end.
    pub(super) fn end_reads_beside_of(
        &mut self,
        now: Duration,
        holder: Holder,
        actions: &mut Vec<Action<K>>,
    ) {
        self.end_reads_beside_where(now, actions, |read| read.holder == holder);
    }

    /// Reads beside open longer than the maximum hold stop counting.
    pub(super) fn expire_reads_beside(&mut self, now: Duration, actions: &mut Vec<Action<K>>) {
        let max_hold = self.policy().max_hold;
        self.end_reads_beside_where(now, actions, |read| {
            now.saturating_sub(read.since) >= max_hold
        });
    }

    /// When the oldest read beside reaches the maximum hold.
    pub(super) fn next_read_beside_deadline(&self) -> Option<Duration> {
        let max_hold = self.policy().max_hold;
        self.beside
            .values()
            .map(|read| read.since.saturating_add(max_hold))
            .min()
    }

    fn end_reads_beside_where(
        &mut self,
        now: Duration,
        actions: &mut Vec<Action<K>>,
        ends: impl Fn(&Beside<K>) -> bool,
    ) {
        let ended: Vec<LeaseId> = self
            .beside
            .iter()
            .filter(|(_, read)| ends(read))
            .map(|(lease, _)| *lease)
            .collect();
        for lease in ended {
            self.end_read_beside(now, lease, actions);
        }
    }

    fn drop_reader(&mut self, now: Duration, key: &K, actions: &mut Vec<Action<K>>) {
        let Some(entry) = self.entries.get_mut(key) else {
            return;
        };
        entry.beside = entry.beside.saturating_sub(1);
        if entry.beside == 0 {
            self.grant_waiters(now, key, actions);
        }
    }
}

impl Entry {
    /// Whether `ask` is a write in place (or an append) that must wait for the reads
    /// beside this file to close. A request under a kernel lock cannot wait (and is
    /// never queued): a create, a rename or an unlink leaves an open reader its inode
    /// whole; a truncate by path is the one write in place it can then see (as natively).
    pub(super) fn waits_for_readers(&self, ask: &Ask) -> bool {
        writes_in_place(ask.intent) && !ask.locked && self.beside > 0
    }
}

/// A request of this intent changes the file's bytes in place.
fn writes_in_place(intent: Intent) -> bool {
    matches!(intent, Intent::Write | Intent::Append)
}
