//! The requests that take a lease: each asks the gate, then does the core operation in a
//! continuation that owns the reply, and ends (or keeps) the lease by what happened.

use std::ffi::OsStr;
use std::sync::Arc;
use std::time::Duration;

use fuser::{Errno, Generation, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyOpen};

use super::Caller;
use super::gate::{Ask, FileKey, Gate, Held, intent_of_open};
use super::inodes::InodeKey;
use super::passthrough::{OpResult, Overlay, SetAttr};
use super::placeholders;
use super::reply::{
    Refuse, reply_absent, reply_attr, reply_create, reply_empty, reply_entry, reply_open,
    reply_open_unleased,
};
use crate::lease::{Absence, Intent, Outcome};

pub struct Leased {
    pub core: Arc<Overlay>,
    pub gate: Arc<Gate>,
}

/// How long after a rename an open for writing of the renamed inode may come from a path
/// walk of its old name (the walk and the OPEN are not atomic in the kernel).
const MOVED_WINDOW: Duration = Duration::from_secs(1);

fn key(parent: u64, name: &OsStr) -> FileKey {
    (parent, name.to_os_string())
}

fn outcome_of<T>(result: &OpResult<T>, outcome: Outcome) -> Outcome {
    if result.is_ok() {
        outcome
    } else {
        Outcome::Read
    }
}

impl Leased {
    /// Asks for the lease and runs `work` once it is granted; a refusal (fenced,
    /// timed out, waiter gone) becomes the reply's errno.
    fn with_lease<R: Refuse>(
        &self,
        ask: Ask,
        reply: R,
        work: impl FnOnce(&Overlay, &Gate, Held, R) + Send + 'static,
    ) {
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            ask,
            Box::new(move |outcome| match outcome {
                Ok(held) => work(&core, &gate, held, reply),
                Err(e) => {
                    tracing::trace!(?e, "leased request refused");
                    reply.refuse(e);
                }
            }),
        );
    }

    /// A lease for one operation that commits when it succeeds (rename, unlink, link,
    /// truncate): the operation runs, the lease ends with `outcome`, then the reply goes out.
    fn commit_with_lease<R: Refuse, T: 'static>(
        &self,
        ask: Ask,
        outcome: Outcome,
        reply: R,
        operation: impl FnOnce(&Overlay, &FileKey) -> OpResult<T> + Send + 'static,
        answer: impl FnOnce(R, OpResult<T>) + Send + 'static,
    ) {
        self.with_lease(ask, reply, move |core, gate, held, reply| {
            let result = operation(core, &held.key);
            gate.finish(&held, outcome_of(&result, outcome));
            answer(reply, result);
        });
    }

    /// A lookup; finding nothing at a managed name is what the caller's cycle reads,
    /// unless another process's cycle holds that name: then the answer is a placeholder,
    /// and the caller waits at its next request on it (see `placeholders.rs`). Nothing at
    /// a name no lease covers is an absence the kernel may keep.
    pub fn lookup(&self, caller: Caller, parent: u64, name: &OsStr, reply: ReplyEntry) {
        let result = self.core.lookup(parent, name);
        match &result {
            Err(e) if *e == Errno::ENOENT => {
                let key = key(parent, name);
                if !self.gate.names.is_managed(&key) {
                    return reply_absent(reply);
                }
                self.gate.retry_found_nothing(caller.pid, &key);
                if self.gate.lookup_missing(caller, &key) == Absence::Claimed {
                    let nodeid = self.gate.placeholders.look_up(&key);
                    let attr = placeholders::attr(nodeid, caller.uid, caller.gid);
                    return reply.entry(&placeholders::TTL, &attr, Generation(0));
                }
            }
            // Whether the file is managed is asked only if the thread opens it for reading.
            Ok(entry) if entry.attr.kind == fuser::FileType::RegularFile => {
                self.gate
                    .note_walk(caller.pid, key(parent, name), entry.inode.nodeid);
            }
            _ => {}
        }
        reply_entry(reply, result);
    }

    /// An OPEN or GETATTR of a placeholder waits for the cycle that holds its name; then
    /// the kernel is sent to look the name up again (ESTALE), and its retry continues the
    /// lease granted here.
    pub fn wait_at_placeholder<R: Refuse>(
        &self,
        caller: Caller,
        nodeid: u64,
        intent: Intent,
        stat: bool,
        reply: R,
    ) {
        let Some(key) = self.gate.placeholders.key_of(nodeid) else {
            return reply.refuse(Errno::ESTALE);
        };
        // Judged like the open it stands for.
        let ask = Ask::open(caller, key, intent);
        self.with_lease(ask, reply, move |_, gate, held, reply| {
            tracing::trace!(
                tid = caller.pid,
                "placeholder's turn: ESTALE for a fresh lookup"
            );
            if stat {
                gate.keep_for_stat_retry(caller.pid, &held);
            } else {
                gate.keep_for_retry(caller.pid, &held, intent);
            }
            reply.refuse(Errno::ESTALE);
        });
    }

    pub fn open(&self, caller: Caller, nodeid: u64, flags: i32, reply: ReplyOpen) {
        if placeholders::is_placeholder(nodeid) {
            return self.wait_at_placeholder(caller, nodeid, intent_of_open(flags), false, reply);
        }
        let Some((key, inode)) = self.gate.names.managed_inode(nodeid) else {
            let result = self.core.open(caller, nodeid, flags);
            return reply_open_unleased(&self.core, reply, result, flags);
        };
        let intent = intent_of_open(flags);
        let moved_from = inode.moved_within(MOVED_WINDOW);
        // The name the open went through, when it must look that name up again (ESTALE,
        // which the kernel retries once after a fresh lookup): None when it is not managed.
        let look_up_again = match intent {
            Intent::Read => {
                let walked = self
                    .gate
                    .read_walked_elsewhere(caller.pid, &key, &inode, moved_from);
                self.gate
                    .must_look_up_again(caller.pid, nodeid, walked.is_some())
                    .then_some(walked)
            }
            // The kernel strips O_TRUNC from OPEN (the truncate follows as a SETATTR), so
            // every open for writing in place counts; appends do not (they destroy nothing).
            Intent::Write => self
                .gate
                .must_look_up_again(caller.pid, nodeid, moved_from.is_some())
                .then(|| {
                    moved_from
                        .map(|from| (from.parent, from.name))
                        .filter(|from| self.gate.names.is_managed(from))
                }),
            Intent::Append => None,
        };
        if let Some(walked) = look_up_again {
            let Some(walked) = walked else {
                tracing::trace!(
                    tid = caller.pid,
                    "open of a just-renamed inode: ESTALE for a fresh lookup"
                );
                return reply.error(Errno::ESTALE);
            };
            // The kernel retries once. Sent back at once, the retry found the name it
            // walked held by the next cycle (a shared temp, a re-created dbm index),
            // waited, and was replaced again: a second ESTALE, which the program sees. So
            // the open first waits its turn at that name, like a placeholder's, and the
            // retry continues the lease.
            tracing::trace!(
                tid = caller.pid,
                ?intent,
                "open of a just-renamed inode: waits at the name it walked, then ESTALE"
            );
            let ask = Ask::open(caller, walked, intent);
            return self.with_lease(ask, reply, move |_, gate, held, reply| {
                gate.keep_for_retry(caller.pid, &held, intent);
                reply.error(Errno::ESTALE);
            });
        }
        let ask = Ask::open(caller, key, intent);
        self.with_lease(ask, reply, move |core, gate, held, reply| {
            if intent == Intent::Read {
                gate.loading(&held, caller);
            }
            // A retried read whose name was replaced again meanwhile (a blind save went
            // ahead out of turn) opens the version the kernel found, as natively: the
            // kernel retries only once, and that version is complete. Its cycle's save
            // is fenced if it comes.
            let reread_old = held.retried && intent == Intent::Read;
            if !reread_old && !gate.names.still_named(&held.key, &inode) {
                // Replaced while this open waited: the kernel retries the lookup on
                // ESTALE, and the retry continues this same lease.
                tracing::trace!(
                    tid = caller.pid,
                    "replaced while waiting: ESTALE for a retry"
                );
                if flags & libc::O_TRUNC != 0 && intent != Intent::Read {
                    // The name vanished (a shared temp renamed into place): make the file
                    // its `> name` would have made now, inside the rename that freed this
                    // lease, so no other creator finds the name missing in between. The
                    // kernel strips O_CREAT from OPEN, so O_TRUNC stands for it.
                    let _ = core.precreate(caller, held.key.0, &held.key.1, &inode);
                }
                gate.keep_for_retry(caller.pid, &held, intent);
                return reply.error(Errno::ESTALE);
            }
            match core.open(caller, nodeid, flags) {
                Ok(handle) => {
                    gate.opened(&handle, held, intent, false, caller);
                    reply_open(core, reply, Ok(handle));
                }
                Err(e) => {
                    gate.finish(&held, Outcome::Read);
                    reply.error(e);
                }
            }
        });
    }

    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let key = key(parent, name);
        if !self.gate.names.is_managed(&key) {
            let result = self.core.create(caller, parent, name, mode, flags);
            return reply_create(&self.core, reply, result);
        }
        let intent = if flags & libc::O_APPEND != 0 {
            Intent::Append
        } else {
            Intent::Write
        };
        let ask = Ask {
            caller,
            key,
            intent,
            locked: true,
            replaces: false,
            creates: true,
        };
        self.with_lease(ask, reply, move |core, gate, held, reply| {
            match core.create(caller, held.key.0, &held.key.1, mode, flags) {
                Ok((entry, handle)) => {
                    gate.opened(&handle, held, intent, true, caller);
                    reply_create(core, reply, Ok((entry, handle)));
                }
                Err(e) => {
                    gate.finish(&held, Outcome::Read);
                    reply.error(e);
                }
            }
        });
    }

    pub fn unlink(&self, caller: Caller, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let key = key(parent, name);
        if !self.gate.names.is_managed(&key) {
            return reply_empty(reply, self.core.unlink(caller, parent, name));
        }
        self.commit_with_lease(
            Ask::locked_write(caller, key),
            Outcome::Removed,
            reply,
            move |core, key| core.unlink(caller, key.0, &key.1),
            reply_empty,
        );
    }

    /// A removed directory's nodeid (its ino) can come back with a new directory: what the
    /// engine knew of the old one's files must not judge the new one's.
    pub fn rmdir(&self, caller: Caller, parent: u64, name: &OsStr) -> OpResult<()> {
        let removed = self
            .core
            .inodes()
            .stat_named(parent, name)
            .and_then(|st| self.core.inodes().find(InodeKey::of(&st)));
        self.core.rmdir(caller, parent, name)?;
        if let Some(dir) = removed {
            self.gate.forget_dir(dir.nodeid);
        }
        Ok(())
    }

    /// A rename is a write of its target and, for a managed file, a removal of its source
    /// (dbm's `.dir` renamed to `.bak` before a new `.dir` is written): both leases are
    /// taken (the request holds the directory locks, so neither waits).
    #[allow(clippy::too_many_arguments)]
    pub fn rename(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
        reply: ReplyEmpty,
    ) {
        self.gate.forget_walk(caller.pid);
        let target = key(new_parent, new_name);
        let source = key(parent, name);
        let moved = self.core.inodes().stat_named(parent, name);
        let moves_a_file = moved.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        let target_managed = moves_a_file && self.gate.names.is_managed(&target);
        let source_managed =
            moves_a_file && source != target && self.gate.names.is_managed(&source);
        if !target_managed && !source_managed {
            let result = self
                .core
                .rename(caller, parent, name, new_parent, new_name, flags);
            return reply_empty(reply, result);
        }
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let source_outcome = if exchange {
            Outcome::Committed
        } else {
            Outcome::Removed
        };
        let leases: Vec<(Ask, Outcome)> = [
            target_managed.then(|| (Ask::replace(caller, target), Outcome::Committed)),
            source_managed.then(|| (Ask::locked_write(caller, source), source_outcome)),
        ]
        .into_iter()
        .flatten()
        .collect();
        let name = name.to_os_string();
        let new_name = new_name.to_os_string();
        self.with_leases(leases, Vec::new(), reply, move |core, reply| {
            let result = core.rename(caller, parent, &name, new_parent, &new_name, flags);
            (result.is_ok(), move || reply_empty(reply, result))
        });
    }

    /// Takes the locked-write leases in `wanted` one after another (none of them waits),
    /// runs `operation`, ends every lease with its outcome if it succeeded, then answers.
    fn with_leases<R: Refuse, A: FnOnce() + Send + 'static>(
        &self,
        mut wanted: Vec<(Ask, Outcome)>,
        mut taken: Vec<(Held, Outcome)>,
        reply: R,
        operation: impl FnOnce(&Overlay, R) -> (bool, A) + Send + 'static,
    ) {
        let Some((ask, outcome)) = wanted.pop() else {
            let (ok, answer) = operation(&self.core, reply);
            for (held, outcome) in &taken {
                let outcome = if ok { *outcome } else { Outcome::Read };
                self.gate.finish(held, outcome);
            }
            return answer();
        };
        let leased = Leased {
            core: Arc::clone(&self.core),
            gate: Arc::clone(&self.gate),
        };
        let gate = Arc::clone(&self.gate);
        let undo: Vec<Held> = taken.iter().map(|(held, _)| held.clone()).collect();
        self.gate.admit(
            ask,
            Box::new(move |answer| match answer {
                Ok(held) => {
                    taken.push((held, outcome));
                    leased.with_leases(wanted, taken, reply, operation);
                }
                Err(e) => {
                    for held in &undo {
                        gate.finish(held, Outcome::Read);
                    }
                    reply.refuse(e);
                }
            }),
        );
    }

    pub fn link(
        &self,
        caller: Caller,
        nodeid: u64,
        new_parent: u64,
        new_name: &OsStr,
        reply: ReplyEntry,
    ) {
        let key = key(new_parent, new_name);
        if !self.gate.names.is_managed(&key) {
            return reply_entry(reply, self.core.link(caller, nodeid, new_parent, new_name));
        }
        self.commit_with_lease(
            Ask::replace(caller, key),
            Outcome::Committed,
            reply,
            move |core, key| core.link(caller, nodeid, key.0, &key.1),
            reply_entry,
        );
    }

    /// A truncate by path takes the lease; changes through an open handle ride on the
    /// handle's lease, and metadata changes take none.
    pub fn setattr(&self, caller: Caller, nodeid: u64, change: SetAttr, reply: ReplyAttr) {
        let managed = match (change.size, change.fh) {
            (Some(_), None) => self.gate.names.managed_inode(nodeid),
            _ => None,
        };
        let Some((key, _inode)) = managed else {
            if let (Some(_), Some(fh)) = (change.size, change.fh) {
                self.gate.truncated(fh);
            }
            return reply_attr(reply, self.core.setattr(caller, nodeid, change));
        };
        self.with_lease(
            Ask::locked_write(caller, key),
            reply,
            move |core, gate, held, reply| {
                let result = core.setattr(caller, nodeid, change);
                // Part of an open(O_TRUNC) of the holder's: its handle commits at close.
                let by_open = gate.truncated_by_open(held.holder, &held.key);
                let outcome = if by_open {
                    Outcome::Read
                } else {
                    outcome_of(&result, Outcome::Committed)
                };
                gate.finish(&held, outcome);
                reply_attr(reply, result);
            },
        );
    }

    pub fn release(&self, fh: u64) -> OpResult<()> {
        let handle = self.core.release(fh)?;
        self.gate.released(&handle);
        Ok(())
    }
}
