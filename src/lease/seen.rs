//! What processes saw of files outside a lease, and what that lets them save: a cycle's
//! view outlives its lease (a save that comes after the linger is judged on the read it
//! was built on), and a lookup that found a name missing is a view too (a first save of
//! a file two processes both found missing). Saves built on a view older than the file
//! are refused.

use std::hash::Hash;
use std::time::Duration;

use super::Holder;
use super::engine::{Ask, Engine, Entry, Intent, Mode, SEEN_HORIZON, Seen, entry_seen_by};

impl<K: Clone + Eq + Hash> Engine<K> {
    /// Whether a write from `holder`, outside any lease of its own, is built on an older
    /// view of the file than the file.
    /// A child with no view of its own (the `mv` of a shell whose `sed` read the file) is
    /// judged on its parent's recent unsaved view.
    pub(super) fn out_of_date(&self, now: Duration, key: &K, holder: Holder, ask: &Ask) -> bool {
        let generation = self.generation(key);
        let own = self.view_of(now, key, holder, ask.replaces);
        let parents = || {
            let parent = ask.family[0]?;
            let seen = self.seen.get(&(key.clone(), parent))?;
            let recent = now.saturating_sub(seen.at) <= self.policy.max_hold;
            (recent && !seen.committed && !seen.absent).then_some(seen.generation)
        };
        own.or_else(parents).is_some_and(|view| view < generation)
    }

    /// What `holder` last saw of `key` outside a lease (an absence counts for a rename
    /// or link onto the name only).
    pub(super) fn view_of(
        &self,
        _now: Duration,
        key: &K,
        holder: Holder,
        replaces: bool,
    ) -> Option<u64> {
        self.seen
            .get(&(key.clone(), holder))
            .filter(|seen| (replaces || !seen.absent) && !seen.inherited)
            .map(|seen| seen.generation)
    }

    /// A save that came after its cycle had ended teaches the file's linger how long this
    /// program takes from read to save.
    pub(super) fn teach_late_save(&mut self, now: Duration, key: &K, holder: Holder) {
        let Some(seen) = self.seen.get(&(key.clone(), holder)).copied() else {
            return;
        };
        if seen.committed {
            return;
        }
        // A gap longer than the linger's cap could not be covered anyway.
        let cap = self.policy.max_linger;
        if let (Some(read_done), Some(entry)) = (seen.read_done_at, self.entries.get_mut(key))
            && now.saturating_sub(read_done) <= cap
        {
            entry.gaps.record(now.saturating_sub(read_done));
        }
    }

    /// Whether a create, rename away or unlink by `holder` rests on its finding the name
    /// missing before somebody else created (or removed) the file. Two dbm.dumb processes
    /// that both found `state.dir` missing each created it by appending their first key;
    /// the second then renamed the first one's index away and wrote its own without the
    /// first one's key. A create right after its own lookup (a temp name) sees the file's
    /// current generation and goes ahead.
    pub(super) fn creates_on_a_stale_absence(&self, key: &K, holder: Holder, ask: &Ask) -> bool {
        ask.locked
            && !ask.replaces
            && ask.intent != Intent::Read
            && self.seen.get(&(key.clone(), holder)).is_some_and(|seen| {
                seen.absent
                    && !seen.inherited
                    && !seen.committed
                    && seen.generation < self.generation(key)
            })
    }

    /// A create (or another locked write that is not a save onto the name) by a process
    /// that found the name missing uses up that view: the kernel sends LOOKUP and then
    /// CREATE for one open(O_CREAT) while it holds the directory lock, so nothing came in
    /// between, and the gap between them is no read-to-save gap to learn a linger from.
    /// Kept, the view held every temp name a writer ever created (about 1.5 KB each).
    ///
    /// An absence the process loaded (found again by the create's own lookup: dbm's
    /// index, created by appending its first key) becomes what the process knows of the
    /// file it creates: its own commit. Renaming that file away is then part of its cycle
    /// (the name stays held until the re-create), not a blind removal that frees the name
    /// for another process to create from an index without this one's key. The time from
    /// that load to the create is the program's read-to-save gap (keyv-file saves 100 ms
    /// after it found its store missing): taught to the linger, the cycles of the processes
    /// that wait for this first save last long enough for their own saves.
    pub(super) fn consume_absence(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        ask: &Ask,
    ) -> bool {
        if !ask.locked || ask.replaces {
            return false;
        }
        self.use_up_claim(key, holder);
        let generation = self.generation(key);
        let slot = (key.clone(), holder);
        match self.seen.get_mut(&slot) {
            Some(seen) if seen.absent && seen.renewed && !seen.inherited => {
                let gap = now.saturating_sub(seen.read_done_at.unwrap_or(seen.at));
                *seen = Seen::own_commit(generation, seen.at);
                if gap <= self.policy.max_linger
                    && let Some(entry) = self.entries.get_mut(key)
                {
                    entry.gaps.record(gap);
                }
                true
            }
            Some(seen) if seen.absent => {
                self.seen.remove(&slot);
                entry_seen_by(&mut self.entries, key, -1);
                false
            }
            _ => false,
        }
    }

    /// An append by a process whose view was current when it wrote (nobody else
    /// committed in between) leaves that view current: the file is what it knew plus its
    /// own line.
    pub(super) fn carry_view_over_append(&mut self, key: &K, holder: Holder, before: u64) {
        let generation = self.generation(key);
        if let Some(seen) = self.seen.get_mut(&(key.clone(), holder))
            && !seen.absent
            && !seen.inherited
            && seen.committed
            && seen.generation == before
        {
            seen.generation = generation;
        }
    }

    /// A create refused (the name is held by another process, or the absence it rests on
    /// is older than the file): if only this create's own lookup found the name missing
    /// (a shell's `> store.tmp` while another script holds the temp name), that was never
    /// a load, and it goes; kept, every later save of the temp was refused as stale. An
    /// absence the program loaded before (found again by this lookup: dbm's index), or
    /// one that a rename away or an unlink rests on, stays and refuses the kernel's retry
    /// and the program's next try too.
    pub(super) fn forget_absence_of_refused_create(
        &mut self,
        now: Duration,
        key: &K,
        holder: Holder,
        ask: &Ask,
    ) {
        let own_lookup = self
            .seen
            .get(&(key.clone(), holder))
            .is_some_and(|seen| !seen.renewed);
        if ask.creates && own_lookup {
            self.consume_absence(now, key, holder, ask);
        }
    }

    /// A refused save ends the cycle it was built on: the process's next read is fresh.
    /// An absence stays as it was: the process has read nothing since, so its next save
    /// (dbm.dumb saves again when the refused database is collected) still rests on it,
    /// and a lookup finding the name missing again within the linger does not renew it.
    pub(super) fn close_view(&mut self, key: &K, holder: Holder) {
        if let Some(seen) = self.seen.get_mut(&(key.clone(), holder))
            && !seen.absent
        {
            seen.committed = true;
        }
    }

    /// A lookup by `holder` found no file at `key`: that absence is what its cycle reads.
    pub fn saw_missing(&mut self, now: Duration, key: &K, holder: Holder) {
        let lease = self.entries.get(key).and_then(|entry| entry.lease.as_ref());
        let refused = lease.is_some_and(|lease| lease.refused);
        if self.holds(key, holder) && !refused {
            return;
        }
        // Missing while another process holds the name (or after somebody wrote out of turn
        // over the asker's own cycle) is a moment of another process's cycle: dbm.dumb has
        // renamed its index away and creates it again next. A save built on it would drop
        // what that cycle writes back, so it is older than the file.
        let mid_cycle = lease.is_some();
        let generation = if mid_cycle {
            self.generation(key).saturating_sub(1)
        } else {
            self.generation(key)
        };
        let current = self.seen.get(&(key.clone(), holder)).copied();
        // A read the process has not saved from still judges its saves for the maximum
        // hold, as a re-read would not replace it (fencing is on the first read).
        let keep = current.is_some_and(|seen| {
            let age = now.saturating_sub(seen.at);
            !seen.committed
                && if seen.absent {
                    age <= self.policy.max_linger
                } else {
                    !seen.inherited && age <= self.policy.max_hold
                }
        });
        if keep {
            self.saw_missing_again(key, holder);
        } else {
            self.entries.entry(key.clone()).or_insert_with(|| Entry {
                generation,
                ..Entry::default()
            });
            let absent = Seen {
                absent: true,
                ..Seen::read(generation, now)
            };
            self.note_seen(key, holder, absent);
        }
    }

    /// `holder` found the name missing again: a lookup soon after its earlier one, or the
    /// kernel's fresh lookup before it retries a refused request (`saw_missing` is not
    /// called for that one). It records no new absence (the retry must not rest on one),
    /// but an absence the process loaded before is renewed: dbm.dumb, refused while renaming its
    /// index away, creates it next, and that create must not pass for one that only its
    /// own lookup found missing (a temp name), or its retry as an O_TRUNC open of the
    /// index somebody else created since would write the stale index over it.
    pub fn saw_missing_again(&mut self, key: &K, holder: Holder) {
        if let Some(seen) = self.seen.get_mut(&(key.clone(), holder))
            && seen.absent
        {
            seen.renewed = true;
        }
    }

    /// The view of a read that starts a cycle. A re-read after the process's own cycle
    /// ended without a save (its linger ran out, or it was revoked) keeps that cycle's
    /// older view: the save it is building may rest on the first read, and a re-read must
    /// never launder it. A process that has shown itself a reader (read-only cycles in a
    /// row), or that comes back after the maximum hold, reads afresh.
    pub(super) fn view_for_new_read(
        &self,
        now: Duration,
        key: &K,
        holder: Holder,
        generation: u64,
    ) -> u64 {
        match self.seen.get(&(key.clone(), holder)) {
            Some(seen)
                if !seen.committed
                    && !seen.absent
                    && !seen.inherited
                    && !self.is_reader(key, holder)
                    && now.saturating_sub(seen.at) <= self.policy.max_hold =>
            {
                seen.generation.min(generation)
            }
            _ => generation,
        }
    }

    pub(super) fn note_seen(&mut self, key: &K, holder: Holder, seen: Seen) {
        if self.seen.insert((key.clone(), holder), seen).is_none() {
            entry_seen_by(&mut self.entries, key, 1);
        }
    }

    /// Forgets old `seen` records once there are many (a process probing thousands of
    /// missing names): a save later than the horizon after its read counts as blind.
    pub(super) fn prune_seen(&mut self, now: Duration) {
        if !self.prune_seen_at.due(self.seen.len()) {
            return;
        }
        let horizon = SEEN_HORIZON.max(self.policy.max_wait);
        let entries = &mut self.entries;
        self.seen.retain(|(key, _), seen| {
            let keep = now.saturating_sub(seen.at) <= horizon;
            if !keep {
                entry_seen_by(entries, key, -1);
            }
            keep
        });
        self.prune_seen_at.pruned(self.seen.len());
        self.forget_idle_entries();
    }

    /// Keeps what the holder of a lease that ends without its commit saw, so that a save
    /// it makes late is judged on that view.
    pub(super) fn remember_view(&mut self, now: Duration, key: &K) {
        let Some(lease) = self.entries[key].lease.as_ref() else {
            return;
        };
        let (
            Mode::Exclusive {
                holder,
                read_done_at,
                ..
            },
            Some(view),
        ) = (&lease.mode, lease.view)
        else {
            return;
        };
        let seen = if lease.kept {
            Seen::own_commit(view, now)
        } else {
            Seen {
                read_done_at: read_done_at.or(Some(now)),
                committed: lease.refused,
                ..Seen::read(view, now)
            }
        };
        let holder = *holder;
        // The holder found the name missing after this cycle had gone dead (somebody
        // renamed it away out of turn): that absence is its newer view.
        let newer_absence = self
            .seen
            .get(&(key.clone(), holder))
            .is_some_and(|seen| seen.absent && seen.at >= lease.granted_at);
        if !newer_absence {
            self.note_seen(key, holder, seen);
        }
    }
}
