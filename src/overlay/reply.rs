//! Turning results into fuser replies, from the glue's thread or from a continuation that
//! the lease gate runs later on another.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fuser::{
    Errno, FileHandle, FopenFlags, Generation, ReplyAttr, ReplyCreate, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyXattr,
};

use super::handles;
use super::passthrough::{Entry, OpResult, Overlay, Xattr};
use super::placeholders;

/// How long the kernel may trust a name -> inode answer and an inode's attributes.
///
/// Every change goes through this mount, so the kernel sees each one and updates or
/// invalidates its cache itself (write replies update the size, rename moves the dentry,
/// passthrough writes invalidate size and times, entry changes invalidate the directory's
/// attributes). The TTL only bounds staleness against changes made on the disk below
/// behind the mount's back, which lockfs does not support anyway. With 1 s every `stat`
/// of a file created more than a second ago cost a LOOKUP round trip (the metadata bench
/// creates for several seconds before it stats); a minute keeps that bound loose but finite.
const ENTRY_TTL: Duration = Duration::from_secs(60);
const ATTR_TTL: Duration = Duration::from_secs(60);

/// Whether other hosts or other mounts change the directory too (`--etcd`, `--source`):
/// then the kernel may cache no name, attribute or listing, since a change it did not
/// see (a file replaced elsewhere, its inode number reused) would leave it serving a
/// stale size over new bytes.
static SHARED: AtomicBool = AtomicBool::new(false);

/// Set once, before the session starts.
pub fn set_shared(shared: bool) {
    SHARED.store(shared, Ordering::Relaxed);
}

pub fn is_shared() -> bool {
    SHARED.load(Ordering::Relaxed)
}

pub fn entry_ttl() -> Duration {
    if is_shared() {
        Duration::ZERO
    } else {
        ENTRY_TTL
    }
}

fn attr_ttl() -> Duration {
    if is_shared() {
        Duration::ZERO
    } else {
        ATTR_TTL
    }
}

/// Open flags for file handles. Not FOPEN_NOFLUSH in general: the gate orders a leased
/// file's opens against its handles' closes by the FLUSH, and for handles that write it
/// broke ETXTBSY (pjdfstest open::etxtbsy failed 4 runs in 5: a freshly written and then
/// executed file could still be opened for writing). See [`reply_open_unleased`].
const OPEN_FLAGS: FopenFlags = FopenFlags::empty();

pub fn reply_entry(reply: ReplyEntry, result: OpResult<Entry>) {
    match result {
        Ok(entry) => reply.entry(
            &entry_ttl(),
            &entry.attr,
            Generation(entry.inode.generation),
        ),
        Err(e) => reply.error(e),
    }
}

/// Answers a LOOKUP that found nothing with a negative entry (nodeid 0): the kernel then
/// keeps the absence for the entry TTL and asks again only once that passes, or once a
/// create or rename through this mount has put something there. Only for names no lease
/// covers: a managed name's LOOKUP is what claims it and records its absence.
pub fn reply_absent(reply: ReplyEntry) {
    if is_shared() {
        return reply.error(Errno::ENOENT);
    }
    // The kernel reads nothing of a negative entry but its nodeid and TTL.
    let nothing = placeholders::attr(0, 0, 0);
    reply.entry(&entry_ttl(), &nothing, Generation(0));
}

pub fn reply_empty(reply: ReplyEmpty, result: OpResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

pub fn reply_attr(reply: ReplyAttr, result: OpResult<fuser::FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&attr_ttl(), &attr),
        Err(e) => reply.error(e),
    }
}

pub fn reply_xattr(reply: ReplyXattr, result: OpResult<Xattr>) {
    match result {
        Ok(Xattr::Size(n)) => reply.size(n),
        Ok(Xattr::Data(data)) => reply.data(&data),
        Err(e) => reply.error(e),
    }
}

/// Answers an OPEN with the handle `result` from [`Overlay::open`], registering its file as
/// the kernel's passthrough backing file when passthrough is on. Callable from any thread.
pub fn reply_open(core: &Overlay, reply: ReplyOpen, result: OpResult<Arc<handles::FileHandle>>) {
    reply_open_with(core, reply, result, OPEN_FLAGS);
}

/// [`reply_open`] for a file no lease covers, opened with `flags`. A read-only handle gets
/// FOPEN_NOFLUSH: nothing here needs its FLUSH, and close(2) then returns without a round
/// trip (git gc reads about 2,000 loose objects, each open and closed once).
pub fn reply_open_unleased(
    core: &Overlay,
    reply: ReplyOpen,
    result: OpResult<Arc<handles::FileHandle>>,
    flags: i32,
) {
    let open_flags = if flags & libc::O_ACCMODE == libc::O_RDONLY {
        FopenFlags::FOPEN_NOFLUSH
    } else {
        OPEN_FLAGS
    };
    reply_open_with(core, reply, result, open_flags);
}

fn reply_open_with(
    core: &Overlay,
    reply: ReplyOpen,
    result: OpResult<Arc<handles::FileHandle>>,
    open_flags: FopenFlags,
) {
    let handle = match result {
        Ok(handle) => handle,
        Err(e) => return reply.error(e),
    };
    let fh = FileHandle(handle.fh);
    if core.passthrough() {
        match handle.inode.backing_or(|| reply.open_backing(handle.fd())) {
            Ok(id) => {
                reply.opened_passthrough(fh, open_flags, &id);
                *handle.backing.lock() = Some(id);
                return;
            }
            Err(err) => core.passthrough_refused(&err),
        }
    }
    reply.opened(fh, open_flags);
}

/// Answers a CREATE with the result of [`Overlay::create`]; see [`reply_open`].
pub fn reply_create(
    core: &Overlay,
    reply: ReplyCreate,
    result: OpResult<(Entry, Arc<handles::FileHandle>)>,
) {
    let (entry, handle) = match result {
        Ok(pair) => pair,
        Err(e) => return reply.error(e),
    };
    let fh = FileHandle(handle.fh);
    let generation = Generation(entry.inode.generation);
    if core.passthrough() {
        match handle.inode.backing_or(|| reply.open_backing(handle.fd())) {
            Ok(id) => {
                reply.created_passthrough(
                    &entry_ttl(),
                    &entry.attr,
                    generation,
                    fh,
                    OPEN_FLAGS,
                    &id,
                );
                *handle.backing.lock() = Some(id);
                return;
            }
            Err(err) => core.passthrough_refused(&err),
        }
    }
    reply.created(&entry_ttl(), &entry.attr, generation, fh, OPEN_FLAGS);
}

/// A fuser reply that can carry an errno (every reply type can).
pub trait Refuse: Send + 'static {
    fn refuse(self, error: Errno);
}

macro_rules! refuse_with_error {
    ($($reply:ty),*) => {
        $(impl Refuse for $reply {
            fn refuse(self, error: Errno) {
                self.error(error);
            }
        })*
    };
}

refuse_with_error!(ReplyOpen, ReplyCreate, ReplyEmpty, ReplyEntry, ReplyAttr);
