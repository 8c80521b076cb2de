//! The lease layer between the fuser glue and the overlay core.
//!
//! Every request that opens, replaces or removes a managed file asks the lease engine
//! first. A request that must wait is parked here as a continuation (the reply moves into
//! it) and the FUSE worker thread returns at once; the continuation runs when the engine
//! grants, fences, times out or abandons it, on whichever thread produced that answer.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fuser::Errno;
use parking_lot::Mutex;

use super::Caller;
use super::handles::FileHandle;
use super::inodes::{Inode, NamedAt};
use super::names::Names;
pub use super::names::{ExcludeFn, FileKey};
use super::passthrough::Overlay;
use super::placeholders::Placeholders;
use crate::driver::{Asker, Driver, Frontend, Granted, Refusal};
use crate::fastmap::HashMap;
use crate::lease::{Absence, Counters, Grant, Intent, LeaseView, Outcome, Policy};
use crate::platform::ProcessId;
use crate::sys;

/// How long after a refusal the kernel's retry of it is expected (it comes at once).
const REFUSAL_RETRY: Duration = Duration::from_secs(1);
/// How long a thread's lookup counts as the path walk of its next open.
const WALK_WINDOW: Duration = Duration::from_secs(1);

/// How long a lease waits for the kernel to retry an open answered with ESTALE.
const RETRY_WINDOW: Duration = Duration::from_millis(1000);
/// The same for a GETATTR of a placeholder answered with ESTALE (see `placeholders.rs`).
const STAT_RETRY_WINDOW: Duration = Duration::from_millis(100);

/// How many recently written files are remembered per process, to tie a temp file to the
/// cycle it belongs to when its writer exits.
const RECENT_WRITES: usize = 8;

/// What a leased request asks of the gate.
pub struct Ask {
    pub caller: Caller,
    pub key: FileKey,
    pub intent: Intent,
    /// The request holds a kernel directory or inode lock (CREATE, RENAME, UNLINK, LINK,
    /// truncate by path): it is answered at once and never parked.
    pub locked: bool,
    /// A rename or link onto the name (a save).
    pub replaces: bool,
    /// A create of the name (CREATE: the kernel looked it up just before and found it
    /// missing).
    pub creates: bool,
}

impl Ask {
    /// A write of `key` that holds a kernel lock.
    pub fn locked_write(caller: Caller, key: FileKey) -> Ask {
        Ask {
            caller,
            key,
            intent: Intent::Write,
            locked: true,
            replaces: false,
            creates: false,
        }
    }

    /// An OPEN of `key` with `intent` (it holds no kernel lock, so it may wait). A save in
    /// place is judged like a rename onto the name: one that rests on having found the
    /// file missing (keyv-file's first load, then writeFile) is refused once someone else
    /// created the file, instead of writing over it.
    pub fn open(caller: Caller, key: FileKey, intent: Intent) -> Ask {
        Ask {
            caller,
            key,
            intent,
            locked: false,
            replaces: intent == Intent::Write,
            creates: false,
        }
    }

    /// A rename or link onto `key`.
    pub fn replace(caller: Caller, key: FileKey) -> Ask {
        Ask {
            replaces: true,
            ..Ask::locked_write(caller, key)
        }
    }
}

/// A granted lease as a continuation sees it.
#[derive(Clone, Debug)]
pub struct Held {
    pub grant: Grant,
    pub holder: ProcessId,
    pub key: FileKey,
    /// A write let through while another process's cycle held the file (it held a
    /// kernel lock and could not wait): no lease of its own.
    pub out_of_turn: bool,
    /// The kernel's retry of an open this lease was kept for (it can retry only once).
    pub retried: bool,
}

impl Held {
    fn granted(grant: Grant, holder: ProcessId, key: FileKey) -> Held {
        Held {
            grant,
            holder,
            key,
            out_of_turn: false,
            retried: false,
        }
    }
}

type Continuation = Box<dyn FnOnce(Result<Held, Errno>) + Send>;

/// The lease an open handle took, released with the handle.
struct HandleLease {
    held: Held,
    /// The thread that opened the handle, and the request id of the first close(2) seen
    /// since: a read from another thread issued while this one was open is a second cycle.
    tid: u32,
    closed_at: Option<u64>,
    writes: bool,
    /// (size, mtime, ctime) before the open, to tell whether the handle changed the file.
    before: Option<(i64, i64, i64, i64, i64)>,
    truncated_or_created: bool,
    /// The open created the file.
    created: bool,
    /// Its holder opened the file for reading after this handle's close(2) and before its
    /// release: the next load, which the commit at release starts (`Outcome::Reloaded`).
    reloaded: bool,
}

/// A file a process created or opened for writing: the temp file of a cycle, maybe.
#[derive(Clone)]
struct Written {
    parent: u64,
    name: OsString,
    ino: u64,
}

pub struct Gate {
    core: Arc<Overlay>,
    driver: Arc<Driver<FileKey>>,
    handle_leases: Mutex<HashMap<u64, HandleLease>>,
    /// Leases kept for an open answered with ESTALE, until when: the kernel's retry
    /// takes them.
    retries: Mutex<HashMap<(u32, FileKey), KeptLease>>,
    /// The close(2) request id and thread of each process's last released handle on a
    /// file: a read issued before that close was concurrent with it.
    released_closes: Mutex<HashMap<(ProcessId, FileKey), (u64, u32)>>,
    /// Saves just refused with ESTALE, by thread: the kernel retries each once, after a
    /// fresh lookup whose "not found" must not pass for a new view of the file.
    refused: Mutex<HashMap<(u32, FileKey), Duration>>,
    recent_writes: Mutex<HashMap<ProcessId, VecDeque<Written>>>,
    /// Opens of a just-renamed inode answered ESTALE: by thread, the nodeid
    /// and when. The thread's next open is the kernel's retry (see `must_look_up_again`).
    moved_refusals: Mutex<HashMap<u32, (u64, Duration)>>,
    /// The last name of a regular file each thread looked up and found, the nodeid and
    /// when: the path walk of the thread's next open (see `read_walked_elsewhere`).
    walks: Mutex<HashMap<u32, Walk>>,
    pub names: Names,
    pub placeholders: Placeholders,
}

/// A lease kept for the kernel's retry, until when, and for what.
type KeptLease = (Held, Duration, Kept);

/// What a lease kept for the kernel's retry was granted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kept {
    /// An open (for reading or not), answered ESTALE: its retry is the same open.
    ForOpen { reads: bool },
    /// The GETATTR of a placeholder, granted as a read: the retry may be an open for
    /// writing, whose save is judged when it comes.
    ForStat,
}

struct Walk {
    key: FileKey,
    nodeid: u64,
    at: Instant,
}

impl Gate {
    /// Starts the lease layer and its driver. `user_excluded` gets paths relative to the
    /// mount root.
    pub fn start(
        core: Arc<Overlay>,
        policy: Policy,
        user_excluded: Option<ExcludeFn>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
    ) -> std::io::Result<Arc<Gate>> {
        let gate = Arc::new(Gate {
            core: core.clone(),
            driver: Driver::start_in_cluster(policy, cluster)?,
            handle_leases: Mutex::new(HashMap::default()),
            retries: Mutex::new(HashMap::default()),
            refused: Mutex::new(HashMap::default()),
            released_closes: Mutex::new(HashMap::default()),
            recent_writes: Mutex::new(HashMap::default()),
            moved_refusals: Mutex::new(HashMap::default()),
            walks: Mutex::new(HashMap::default()),
            names: Names::new(core.clone(), user_excluded),
            placeholders: Placeholders::default(),
        });
        let frontend: Arc<dyn Frontend<FileKey>> = gate.clone();
        gate.driver.attach(Arc::downgrade(&frontend));
        Ok(gate)
    }

    fn now(&self) -> Duration {
        self.driver.now()
    }

    pub fn passthrough(&self) -> bool {
        self.core.passthrough()
    }

    /// What the inode store holds: files the kernel knows and the fds kept for them.
    pub fn inode_counts(&self) -> super::inodes::StoreCounts {
        self.core.inodes().counts()
    }

    pub fn policy(&self) -> Policy {
        self.driver.policy()
    }

    /// Leases and queues with paths relative to the mount root, and the counters.
    pub fn status(&self) -> (Vec<LeaseView<String>>, Counters) {
        let (views, counters) = self.driver.status();
        let views = views
            .into_iter()
            .map(|view| LeaseView {
                key: self.names.path_of(&view.key),
                holders: view.holders,
                state: view.state,
                held: view.held,
                generation: view.generation,
                waiters: view.waiters,
            })
            .collect();
        (views, counters)
    }

    /// The command line of a process that held or waited for a lease.
    pub fn command_of(&self, process: ProcessId) -> String {
        self.driver.command_of(process)
    }

    pub fn cluster_health(&self) -> Option<crate::cluster::ClusterHealth> {
        self.driver.cluster_health()
    }

    /// Revokes the lease on `path` (relative to the mount root) by hand.
    pub fn break_lease(&self, path: &str) -> Result<String, String> {
        let key = self
            .names
            .key_of_path(path)
            .ok_or_else(|| format!("{path}: no such file in the mount"))?;
        let holders = self.driver.revoke(&key);
        if holders.is_empty() {
            return Ok(format!("{path}: no lease to break"));
        }
        let said: Vec<String> = holders
            .into_iter()
            .map(|holder| {
                format!(
                    "revoked the lease on {path} held by pid {} ({})",
                    holder.pid,
                    self.command_of(holder)
                )
            })
            .collect();
        Ok(said.join("\n"))
    }

    /// Asks for the lease `ask` describes; `run` gets the answer now or later. A `locked`
    /// request is answered at once (see [`crate::lease::Ask::locked`]).
    pub fn admit(self: &Arc<Self>, ask: Ask, run: Continuation) {
        let Ask {
            caller,
            key,
            intent,
            locked,
            replaces,
            creates,
        } = ask;
        let holder = match self.driver.process_of_thread(caller.pid) {
            Ok(holder) => holder,
            // The caller is gone already: nobody waits for this answer.
            Err(_) => return run(Err(Errno::EINTR)),
        };
        let retry = self.retries.lock().remove(&(caller.pid, key.clone()));
        if let Some((held, _, Kept::ForStat)) = &retry
            && intent != Intent::Read
            && self.driver.fence_stale_save(&key, holder)
        {
            self.finish(held, Outcome::Read);
            return run(Err(Errno::ESTALE));
        }
        if let Some((held, _, _)) = retry {
            tracing::trace!(path = %self.names.path_of(&key), tid = caller.pid, "admit: retry keeps its lease");
            return run(Ok(Held {
                retried: true,
                ..held
            }));
        }
        // The kernel's one retry of a refusal is refused again, but arms nothing: the
        // program's own next attempt looks the name up afresh.
        let kernel_retry = self
            .refused
            .lock()
            .remove(&(caller.pid, key.clone()))
            .is_some_and(|at| self.now().saturating_sub(at) < REFUSAL_RETRY);
        let ask = crate::lease::Ask {
            // A read issued while another thread had the file open is a second cycle (and
            // the engine starts one for every read from a worker thread).
            concurrent: intent == Intent::Read && self.opened_elsewhere(holder, caller, &key),
            locked,
            replaces,
            creates,
            thread: caller.pid,
            ..crate::lease::Ask::new(intent)
        };
        let asker = Asker {
            process: holder,
            thread: Some(caller.pid),
        };
        let gate = Arc::clone(self);
        let answer_key = key.clone();
        self.driver.request(
            key,
            asker,
            ask,
            Box::new(move |answer| {
                let answer = match answer {
                    Ok(Granted { grant, out_of_turn }) => Ok(Held {
                        out_of_turn,
                        ..Held::granted(grant, holder, answer_key)
                    }),
                    Err(refusal) => {
                        if refusal == Refusal::Fenced && !kernel_retry {
                            gate.note_refused(caller.pid, &answer_key);
                        }
                        Err(errno_of(refusal))
                    }
                };
                run(answer)
            }),
        );
    }

    /// The directory `nodeid` was removed: forget the lease history of its files.
    pub fn forget_dir(&self, nodeid: u64) {
        self.driver.forget_files(|key| key.0 == nodeid);
    }

    /// A lookup by `caller` found nothing at `key`: the absence is what its cycle read,
    /// unless another process's cycle holds the name ([`Absence::Claimed`]: the caller
    /// must wait for it at its next OPEN or GETATTR).
    pub fn lookup_missing(&self, caller: Caller, key: &FileKey) -> Absence {
        let now = self.now();
        let retrying = self
            .refused
            .lock()
            .get(&(caller.pid, key.clone()))
            .is_some_and(|at| now.saturating_sub(*at) < REFUSAL_RETRY);
        let Ok(holder) = self.driver.process_of_thread(caller.pid) else {
            return Absence::Missing;
        };
        if retrying {
            self.driver.saw_missing_again(key, holder);
            Absence::Missing
        } else {
            let may_claim = super::names::looks_like_a_file(&key.1);
            self.driver.lookup_missing(key, holder, may_claim)
        }
    }

    /// Whether another thread of `holder` had `key` open, and `caller`'s thread had not,
    /// when `caller`'s request was issued (the kernel numbers requests in queue order; the
    /// daemon may admit them in another).
    fn opened_elsewhere(&self, holder: ProcessId, caller: Caller, key: &FileKey) -> bool {
        let mut open_here = false;
        let mut open_elsewhere = false;
        let mut note_open = |tid: u32| {
            if tid == caller.pid {
                open_here = true;
            } else {
                open_elsewhere = true;
            }
        };
        for lease in self.handle_leases.lock().values() {
            if lease.held.holder != holder || lease.held.key != *key {
                continue;
            }
            if lease.closed_at.is_none_or(|closed| closed > caller.unique) {
                note_open(lease.tid);
            }
        }
        // A handle closed and released since this request was issued was open then.
        if let Some((closed, tid)) = self.released_closes.lock().get(&(holder, key.clone()))
            && *closed > caller.unique
        {
            note_open(*tid);
        }
        open_elsewhere && !open_here
    }

    /// Ends one use of a lease with `outcome`.
    pub fn finish(&self, held: &Held, outcome: Outcome) {
        tracing::trace!(path = %self.names.path_of(&held.key), pid = held.holder.pid, ?outcome, "finish");
        if held.out_of_turn {
            self.driver
                .commit_out_of_turn(&held.key, held.holder, outcome);
            return;
        }
        self.driver.finish(held.grant.lease, held.holder, outcome);
    }

    /// Keeps a granted lease whose open is answered with ESTALE (the name now points at
    /// another file): the kernel looks the name up again and retries on the same thread,
    /// and that retry takes this lease instead of queueing again.
    pub fn keep_for_retry(&self, tid: u32, held: &Held, intent: Intent) {
        let reads = intent == Intent::Read;
        self.keep_for_retry_as(tid, held, Kept::ForOpen { reads });
    }

    /// Keeps a granted lease for the retry of a stat, or of the open whose permission check
    /// that stat was: an open comes at once, and a plain stat never comes back for it.
    pub fn keep_for_stat_retry(&self, tid: u32, held: &Held) {
        self.keep_for_retry_as(tid, held, Kept::ForStat);
    }

    fn keep_for_retry_as(&self, tid: u32, held: &Held, kept: Kept) {
        let window = match kept {
            Kept::ForOpen { .. } => RETRY_WINDOW,
            Kept::ForStat => STAT_RETRY_WINDOW,
        };
        let until = self.now() + window;
        self.retries
            .lock()
            .insert((tid, held.key.clone()), (held.clone(), until, kept));
    }

    /// `tid`'s retry of a read (or of a stat) looked `key` up again and found it missing:
    /// the read fails in the kernel without an OPEN, so the read the lease was kept for
    /// ends now (the read-to-save gap counts from here, and the name is not held for the
    /// rest of the retry window). A write's lease stays for its CREATE: ended now, a blind
    /// write's lease would end at once and let the next waiter take the name first.
    pub fn retry_found_nothing(&self, tid: u32, key: &FileKey) {
        let slot = (tid, key.clone());
        let kept = {
            let mut retries = self.retries.lock();
            match retries.get(&slot) {
                Some((_, _, Kept::ForStat | Kept::ForOpen { reads: true })) => {
                    retries.remove(&slot)
                }
                _ => None,
            }
        };
        if let Some((held, _, _)) = kept {
            self.finish(&held, Outcome::Read);
        }
    }

    /// Ends every lease kept for a retry by thread `tid`.
    fn end_retries_of(&self, tid: u32) {
        let ended: Vec<Held> = {
            let mut retries = self.retries.lock();
            let mine: Vec<_> = retries.keys().filter(|k| k.0 == tid).cloned().collect();
            mine.into_iter()
                .filter_map(|k| retries.remove(&k).map(|(held, _, _)| held))
                .collect()
        };
        for held in ended {
            self.finish(&held, Outcome::Read);
        }
    }

    /// Ends reservations for retries that never came (the name is gone, say).
    fn expire_retries(&self) {
        let now = self.now();
        let expired: Vec<Held> = {
            let mut retries = self.retries.lock();
            let old: Vec<_> = retries
                .iter()
                .filter(|(_, (_, until, _))| now > *until)
                .map(|(k, _)| k.clone())
                .collect();
            old.into_iter()
                .filter_map(|k| retries.remove(&k).map(|(held, _, _)| held))
                .collect()
        };
        for held in expired {
            self.finish(&held, Outcome::Read);
        }
    }

    /// Whether thread `tid`'s open of `nodeid` must first look its name up again (ESTALE,
    /// which the kernel retries once after a fresh lookup), when a rename just gave that
    /// inode a new name (`moved`). A shell's `> store.tmp` walked the temp's
    /// name just before another script renamed that temp over the store, and its OPEN then
    /// came for the store's inode: it truncated the store and wrote its own update into
    /// it. The thread's very next open is the retry: let through if its fresh lookup found
    /// the same inode (the program did mean it); another just-renamed inode gets ESTALE
    /// again, an error rather than a write into a file the program did not name.
    pub fn must_look_up_again(&self, tid: u32, nodeid: u64, moved: bool) -> bool {
        let now = self.now();
        let mut refusals = self.moved_refusals.lock();
        let prior = refusals.remove(&tid);
        if prior.is_some_and(|(refused, at)| {
            refused == nodeid && now.saturating_sub(at) < REFUSAL_RETRY
        }) {
            // The retry found the same inode under its new name (the program meant that
            // name): the lease kept at the old name is not its.
            drop(refusals);
            self.end_retries_of(tid);
            return false;
        }
        if !moved {
            return false;
        }
        if refusals.len() > 1024 {
            refusals.retain(|_, (_, at)| now.saturating_sub(*at) < REFUSAL_RETRY);
        }
        refusals.insert(tid, (nodeid, now));
        true
    }

    /// `tid` looked up the name `key` and found the regular file `nodeid`.
    pub fn note_walk(&self, tid: u32, key: FileKey, nodeid: u64) {
        let mut walks = self.walks.lock();
        if walks.len() > 4096 {
            walks.retain(|_, walk| walk.at.elapsed() < WALK_WINDOW);
        }
        walks.insert(
            tid,
            Walk {
                key,
                nodeid,
                at: Instant::now(),
            },
        );
    }

    /// `tid` renamed a file: its own move must not look like another process's.
    pub fn forget_walk(&self, tid: u32) {
        self.walks.lock().remove(&tid);
    }

    /// The name `tid` most likely walked to reach `inode`, which it opens for reading as
    /// `key`, when that is another name somebody renamed `inode` away from between the
    /// walk and the open. dbm.dumb loading `state.dir` walked it just before another
    /// process renamed it to `state.bak`: its read was counted on `.bak`, and its later
    /// rewrite of `.dir` from that old index passed for a blind save.
    ///
    /// A walk that sent a LOOKUP says which name it took. One through a cached entry sends
    /// nothing, so the name `inode` was just moved away from (`moved_from`) stands in for
    /// it while the renamer's cycle on that name goes on (dbm.dumb has not committed its
    /// new index yet): a temp file renamed into place ended its cycle, so readers of a
    /// store pay nothing, and a child never waits here for its parent's cycle.
    pub fn read_walked_elsewhere(
        &self,
        tid: u32,
        key: &FileKey,
        inode: &Inode,
        moved_from: Option<NamedAt>,
    ) -> Option<FileKey> {
        let walk = self.walks.lock().remove(&tid);
        if let Some(walk) =
            walk.filter(|walk| walk.nodeid == inode.nodeid && walk.at.elapsed() < WALK_WINDOW)
        {
            return (walk.key != *key && inode.moved_after(walk.at)).then_some(walk.key);
        }
        let from = moved_from.map(|from| (from.parent, from.name))?;
        (self.names.is_managed(&from) && self.driver.renamed_away_by_another(&from, tid))
            .then_some(from)
    }

    /// A read open by `caller` was granted `held`: when its process saved through a handle
    /// whose close(2) came before this open but whose release has not been processed yet,
    /// this load starts the holder's next cycle, and that handle's commit must not hand
    /// the file to a waiter (`Outcome::Reloaded`). Called as soon as the grant arrives,
    /// before the open itself, so that a release processed meanwhile on another thread
    /// sees the mark.
    pub fn loading(&self, held: &Held, caller: Caller) {
        for saved in self.handle_leases.lock().values_mut() {
            if saved.writes
                && saved.held.grant.lease == held.grant.lease
                && saved.held.holder == held.holder
                && saved.closed_at.is_some_and(|closed| closed < caller.unique)
            {
                saved.reloaded = true;
            }
        }
    }

    /// Records the lease an open handle holds until its release.
    pub fn opened(
        &self,
        handle: &FileHandle,
        held: Held,
        intent: Intent,
        created: bool,
        caller: Caller,
    ) {
        let writes = intent != Intent::Read;
        let truncated_or_created = created || handle.flags & libc::O_TRUNC != 0;
        if writes {
            self.note_write(held.holder, &held.key, handle.inode.key.ino);
        }
        let before = fingerprint(handle);
        self.handle_leases.lock().insert(
            handle.fh,
            HandleLease {
                held,
                tid: caller.pid,
                closed_at: None,
                writes,
                before,
                truncated_or_created,
                created,
                reloaded: false,
            },
        );
    }

    /// A truncate came through handle `fh` (an open with O_TRUNC arrives as an OPEN and
    /// then this): the handle now counts as having written a temp-like file.
    pub fn truncated(&self, fh: u64) {
        if let Some(lease) = self.handle_leases.lock().get_mut(&fh) {
            lease.writes = true;
            lease.truncated_or_created = true;
        }
    }

    /// A truncate by path from `holder`, which has `key` open: the open(O_TRUNC) it is part
    /// of (the kernel sends those without the handle). Its handles now count as having
    /// written; true when there was such a handle, and the handle's close will commit.
    pub fn truncated_by_open(&self, holder: ProcessId, key: &FileKey) -> bool {
        let mut found = false;
        for lease in self.handle_leases.lock().values_mut() {
            if lease.held.holder == holder && lease.held.key == *key {
                lease.writes = true;
                lease.truncated_or_created = true;
                found = true;
            }
        }
        found
    }

    /// A close(2) of handle `fh` by thread `tid`: a read from another thread of its process
    /// no longer counts as a second cycle.
    ///
    /// Never reads /proc: a FLUSH comes from execve's close-on-exec while the exec'ing
    /// process holds its exec_update_lock, and reading its /proc/PID/stat would wait for
    /// that lock while the exec waits for this reply (a deadlock seen in the tests). The
    /// thread cache says which process a known thread belongs to.
    pub fn flushed(&self, fh: u64, tid: u32, unique: u64) {
        let cached = self.driver.cached_process_of_thread(tid);
        if let Some(lease) = self.handle_leases.lock().get_mut(&fh)
            && (lease.tid == tid || cached == Some(lease.held.holder))
        {
            lease.closed_at.get_or_insert(unique);
        }
    }

    /// The last close of a handle: ends its lease, committing if the handle wrote.
    pub fn released(&self, handle: &FileHandle) {
        let Some(lease) = self.handle_leases.lock().remove(&handle.fh) else {
            return;
        };
        if let Some(closed_at) = lease.closed_at {
            let mut closes = self.released_closes.lock();
            if closes.len() > 4096 {
                closes.clear();
            }
            let slot = (lease.held.holder, lease.held.key.clone());
            let latest = closes.entry(slot).or_insert((closed_at, lease.tid));
            if closed_at >= latest.0 {
                *latest = (closed_at, lease.tid);
            }
        }
        let wrote =
            lease.writes && (lease.truncated_or_created || fingerprint(handle) != lease.before);
        let held = &lease.held;
        if wrote {
            self.driver.activity(held.holder);
        }
        // A temp file written while its process reads another file of the directory stays
        // leased until that cycle ends: nobody may truncate it before its rename.
        if lease.truncated_or_created && self.driver.tie_to_cycle(&held.key, held.holder, wrote) {
            return;
        }
        let outcome = if !wrote {
            Outcome::Read
        } else if lease.created && fingerprint(handle).is_some_and(|after| after.0 == 0) {
            Outcome::Touched
        } else if lease.reloaded {
            Outcome::Reloaded
        } else {
            Outcome::Committed
        };
        self.finish(held, outcome);
    }

    /// A file the process wrote: it may be the temp file of a cycle on another file.
    pub fn note_write(&self, holder: ProcessId, key: &FileKey, ino: u64) {
        let mut recent = self.recent_writes.lock();
        let list = recent.entry(holder).or_default();
        list.retain(|w| w.ino != ino);
        list.push_back(Written {
            parent: key.0,
            name: key.1.clone(),
            ino,
        });
        if list.len() > RECENT_WRITES {
            list.pop_front();
        }
        drop(recent);
        self.driver.activity(holder);
    }

    fn note_refused(&self, tid: u32, key: &FileKey) {
        let now = self.now();
        let mut refused = self.refused.lock();
        if refused.len() > 1024 {
            refused.retain(|_, at| now.saturating_sub(*at) < REFUSAL_RETRY);
        }
        refused.insert((tid, key.clone()), now);
    }
}

impl Frontend<FileKey> for Gate {
    fn describe(&self, key: &FileKey) -> String {
        self.names.path_of(key)
    }

    /// The files the process wrote that still name what it wrote: temp files, maybe.
    fn exited(&self, process: ProcessId) -> Vec<FileKey> {
        let written = self
            .recent_writes
            .lock()
            .get(&process)
            .cloned()
            .unwrap_or_default();
        written
            .into_iter()
            .filter(|written| {
                self.names
                    .names_ino(written.parent, &written.name, written.ino)
            })
            .map(|written| (written.parent, written.name))
            .collect()
    }

    fn forget(&self, process: ProcessId) {
        self.recent_writes.lock().remove(&process);
        self.retries
            .lock()
            .retain(|_, (held, _, _)| held.holder != process);
        self.released_closes
            .lock()
            .retain(|(holder, _), _| *holder != process);
    }

    fn exists(&self, key: &FileKey) -> bool {
        self.core.inodes().stat_named(key.0, &key.1).is_some()
    }

    fn tick(&self) -> bool {
        self.expire_retries();
        !self.retries.lock().is_empty()
    }
}

fn errno_of(refusal: Refusal) -> Errno {
    match refusal {
        Refusal::Fenced => Errno::ESTALE,
        Refusal::TimedOut => Errno::ETIMEDOUT,
        Refusal::Abandoned => Errno::EINTR,
    }
}

fn fingerprint(handle: &FileHandle) -> Option<(i64, i64, i64, i64, i64)> {
    let st = sys::fstat(handle.fd()).ok()?;
    Some((
        st.st_size,
        st.st_mtime,
        st.st_mtime_nsec,
        st.st_ctime,
        st.st_ctime_nsec,
    ))
}

/// The lease an open(2) with `flags` asks for.
pub fn intent_of_open(flags: i32) -> Intent {
    let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
    if !writes {
        Intent::Read
    } else if flags & libc::O_APPEND != 0 && flags & libc::O_TRUNC == 0 {
        Intent::Append
    } else {
        Intent::Write
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::overlay::inodes::ROOT_ID;

    /// Two reports of one exit can run at once (the pidfd watch, and a request that found
    /// the holder dead), and the one that takes the engine first ties the process's temp
    /// files to its cycles: both must get them. When the first report to ask took them
    /// away, a shell's `awk f > f.tmp` could exit with its temp untied, the next script's
    /// `> f.tmp` truncated it, and the shell's `mv` was refused (S15, 1 run in 70 to 90
    /// under load).
    #[test]
    fn every_report_of_an_exit_gets_the_temp_files_until_the_exit_is_dealt_with() {
        let (tmp, core) = crate::overlay::passthrough::tests::overlay();
        let gate = Gate::start(Arc::new(core), Policy::default(), None, None).unwrap();
        std::fs::write(tmp.path().join("store.txt.tmp"), "x").unwrap();
        let ino = std::fs::metadata(tmp.path().join("store.txt.tmp"))
            .unwrap()
            .ino();
        let process = crate::platform::process(std::process::id()).unwrap();
        let temp: FileKey = (ROOT_ID, OsString::from("store.txt.tmp"));
        gate.note_write(process, &temp, ino);
        let reports: &dyn Frontend<FileKey> = &*gate;
        assert_eq!(reports.exited(process), vec![temp.clone()]);
        assert_eq!(reports.exited(process), vec![temp], "a second report");
        reports.forget(process);
        assert!(
            reports.exited(process).is_empty(),
            "forgotten once dealt with"
        );
    }

    #[test]
    fn open_flags_map_to_intents() {
        assert_eq!(intent_of_open(libc::O_RDONLY), Intent::Read);
        assert_eq!(
            intent_of_open(libc::O_WRONLY | libc::O_TRUNC),
            Intent::Write
        );
        assert_eq!(intent_of_open(libc::O_RDWR), Intent::Write);
        assert_eq!(
            intent_of_open(libc::O_WRONLY | libc::O_APPEND),
            Intent::Append
        );
        assert_eq!(
            intent_of_open(libc::O_RDONLY | libc::O_TRUNC),
            Intent::Write
        );
    }
}
