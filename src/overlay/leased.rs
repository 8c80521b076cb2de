//! The requests that take a lease: each asks the gate, then does the core operation in a
//! continuation that owns the reply, and ends (or keeps) the lease by what happened.

use std::ffi::OsStr;
use std::sync::Arc;

use fuser::{Errno, Generation, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyOpen};

use super::Caller;
use super::core::{OpResult, Overlay, SetAttr};
use super::fs::{ATTR_TTL, ENTRY_TTL, reply_create, reply_open};
use super::gate::{FileKey, Gate, Held, intent_of_open};
use super::inodes::InodeKey;
use crate::lease::Intent;
use crate::sys;

pub struct Leased {
    pub core: Arc<Overlay>,
    pub gate: Arc<Gate>,
}

fn key(parent: u64, name: &OsStr) -> FileKey {
    (parent, name.to_os_string())
}

impl Leased {
    pub fn open(&self, caller: Caller, nodeid: u64, flags: i32, reply: ReplyOpen) {
        let Some((key, inode)) = self.gate.managed_inode(nodeid) else {
            return reply_open(&self.core, reply, self.core.open(caller, nodeid, flags));
        };
        let intent = intent_of_open(flags);
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            caller,
            key,
            intent,
            None,
            false,
            Box::new(move |outcome| {
                let held = match outcome {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::trace!(?e, "leased request refused");
                        return reply.error(e);
                    }
                };
                if !gate.still_named(&held.key, &inode) {
                    // Replaced while this open waited: the kernel retries the lookup on
                    // ESTALE, and the retry continues this same lease.
                    tracing::trace!(
                        tid = caller.pid,
                        "replaced while waiting: ESTALE for a retry"
                    );
                    gate.keep_for_retry(caller.pid, &held);
                    return reply.error(Errno::ESTALE);
                }
                match core.open(caller, nodeid, flags) {
                    Ok(handle) => {
                        gate.opened(&handle, held, intent, false);
                        reply_open(&core, reply, Ok(handle));
                    }
                    Err(e) => {
                        tracing::trace!(?e, "leased open failed");
                        gate.finish(&held, false);
                        reply.error(e);
                    }
                }
            }),
        );
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
        if !self.gate.is_managed(&key) {
            let result = self.core.create(caller, parent, name, mode, flags);
            return reply_create(&self.core, reply, result);
        }
        let intent = if flags & libc::O_APPEND != 0 {
            Intent::Append
        } else {
            Intent::Write
        };
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            caller,
            key,
            intent,
            None,
            true,
            Box::new(move |outcome| {
                let held = match outcome {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::trace!(?e, "leased request refused");
                        return reply.error(e);
                    }
                };
                match core.create(caller, held.key.0, &held.key.1, mode, flags) {
                    Ok((entry, handle)) => {
                        gate.opened(&handle, held, intent, true);
                        reply_create(&core, reply, Ok((entry, handle)));
                    }
                    Err(e) => {
                        tracing::trace!(?e, "leased open failed");
                        gate.finish(&held, false);
                        reply.error(e);
                    }
                }
            }),
        );
    }

    pub fn unlink(&self, caller: Caller, parent: u64, name: &OsStr, reply: ReplyEmpty) {
        let key = key(parent, name);
        if !self.gate.is_managed(&key) {
            return reply_empty(reply, self.core.unlink(caller, parent, name));
        }
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            caller,
            key,
            Intent::Write,
            None,
            false,
            Box::new(move |outcome| {
                let held = match outcome {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::trace!(?e, "leased request refused");
                        return reply.error(e);
                    }
                };
                let result = core.unlink(caller, held.key.0, &held.key.1);
                gate.finish(&held, result.is_ok());
                reply_empty(reply, result);
            }),
        );
    }

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
        let target = key(new_parent, new_name);
        let moved = self.stat_child(parent, name);
        let moves_a_file = moved.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFREG);
        if !moves_a_file || !self.gate.is_managed(&target) {
            let result = self
                .core
                .rename(caller, parent, name, new_parent, new_name, flags);
            return reply_empty(reply, result);
        }
        let name = name.to_os_string();
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        let run = move |outcome: Result<Held, Errno>| {
            let held = match outcome {
                Ok(held) => held,
                Err(e) => return reply.error(e),
            };
            let result = core.rename(caller, parent, &name, held.key.0, &held.key.1, flags);
            gate.finish(&held, result.is_ok());
            reply_empty(reply, result);
        };
        let from_ino = moved.map(|st| InodeKey::of(&st).ino);
        self.gate.admit(
            caller,
            target,
            Intent::Write,
            from_ino,
            false,
            Box::new(run),
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
        if !self.gate.is_managed(&key) {
            return reply_entry(reply, self.core.link(caller, nodeid, new_parent, new_name));
        }
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            caller,
            key,
            Intent::Write,
            None,
            false,
            Box::new(move |outcome| {
                let held = match outcome {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::trace!(?e, "leased request refused");
                        return reply.error(e);
                    }
                };
                let result = core.link(caller, nodeid, held.key.0, &held.key.1);
                gate.finish(&held, result.is_ok());
                reply_entry(reply, result);
            }),
        );
    }

    /// A truncate by path takes the lease; changes through an open handle ride on the
    /// handle's lease, and metadata changes take none.
    pub fn setattr(&self, caller: Caller, nodeid: u64, change: SetAttr, reply: ReplyAttr) {
        let managed = match (change.size, change.fh) {
            (Some(_), None) => self.gate.managed_inode(nodeid),
            _ => None,
        };
        let Some((key, _inode)) = managed else {
            return reply_attr(reply, self.core.setattr(caller, nodeid, change));
        };
        let (core, gate) = (Arc::clone(&self.core), Arc::clone(&self.gate));
        self.gate.admit(
            caller,
            key,
            Intent::Write,
            None,
            false,
            Box::new(move |outcome| {
                let held = match outcome {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::trace!(?e, "leased request refused");
                        return reply.error(e);
                    }
                };
                let result = core.setattr(caller, nodeid, change);
                gate.finish(&held, result.is_ok());
                reply_attr(reply, result);
            }),
        );
    }

    pub fn release(&self, fh: u64) -> OpResult<()> {
        let handle = self.core.release(fh)?;
        self.gate.released(&handle);
        Ok(())
    }

    fn stat_child(&self, parent: u64, name: &OsStr) -> Option<sys::Stat> {
        let dir = self.core.inodes().get(parent)?;
        let cname = sys::cstr(name).ok()?;
        sys::fstatat(dir.fd(), &cname, libc::AT_SYMLINK_NOFOLLOW).ok()
    }
}

pub fn reply_empty(reply: ReplyEmpty, result: OpResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

pub fn reply_attr(reply: ReplyAttr, result: OpResult<fuser::FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&ATTR_TTL, &attr),
        Err(e) => reply.error(e),
    }
}

pub fn reply_entry(reply: ReplyEntry, result: OpResult<super::core::Entry>) {
    match result {
        Ok(entry) => reply.entry(&ENTRY_TTL, &entry.attr, Generation(entry.inode.generation)),
        Err(e) => reply.error(e),
    }
}
