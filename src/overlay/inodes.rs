//! The inode store: one entry per underlying (dev, ino) the kernel knows, addressed by its
//! parent and name; fds come from a bounded cache (`fds.rs`), not one per inode.
//!
//! Invariants:
//! - an entry lives while the kernel holds lookups on it (every entry reply adds one,
//!   FORGET subtracts); the root is never dropped;
//! - while an entry lives, its (dev, ino) key cannot be reused by another file: either the
//!   file is still linked under the name the entry records (every rename and unlink goes
//!   through the overlay, which keeps the names), or the entry pins an O_PATH fd, taken
//!   just before the overlay unlinked the name or renamed another file over it;
//! - an fd opened from (parent fd, name) is only used after fstat shows the entry's key;
//!   anything else means the name moved under us, and the answer is ESTALE;
//! - the nodeid is the underlying ino when that is free (so `st_ino` matches the disk
//!   below); otherwise a number from a range no disk ino reaches.

use std::ffi::{CStr, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use fuser::BackingId;
use parking_lot::Mutex;

use super::fds::{FdCache, PathFd};
use crate::fastmap::HashMap;
use crate::sys::{self, Stat};

pub const ROOT_ID: u64 = 1;
const REMAP_BASE: u64 = 1 << 56;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InodeKey {
    pub dev: u64,
    pub ino: u64,
}

impl InodeKey {
    pub fn of(st: &Stat) -> InodeKey {
        InodeKey {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// Where an inode was last seen in the tree: its parent nodeid and its name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedAt {
    pub parent: u64,
    pub name: OsString,
}

#[derive(Debug)]
pub struct Inode {
    pub nodeid: u64,
    pub generation: u64,
    pub key: InodeKey,
    /// `st_mode & S_IFMT` at lookup time; a file never changes type.
    pub file_type: u32,
    /// An fd kept for the entry's whole life: the root's, and that of a file whose name
    /// the overlay removed while the kernel still knew it.
    pinned: Mutex<Option<PathFd>>,
    name: Mutex<Option<NamedAt>>,
    /// The name this inode had before it was unlinked or renamed over.
    former_name: Mutex<Option<NamedAt>>,
    /// The passthrough backing file shared by every open handle of this inode.
    backing: Mutex<Weak<BackingId>>,
    /// When a rename through the mount last gave this inode a new name, and the name it
    /// had before.
    moved: Mutex<Option<(Instant, NamedAt)>>,
}

impl Inode {
    fn new(nodeid: u64, generation: u64, st: &Stat, pinned: Option<PathFd>) -> Inode {
        Inode {
            nodeid,
            generation,
            key: InodeKey::of(st),
            file_type: st.st_mode & libc::S_IFMT,
            pinned: Mutex::new(pinned),
            name: Mutex::new(None),
            former_name: Mutex::new(None),
            backing: Mutex::new(Weak::new()),
            moved: Mutex::new(None),
        }
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type == libc::S_IFLNK
    }

    /// The last (parent, name) by which this inode was looked up, created or renamed to;
    /// `None` after that name was unlinked (or for the root).
    pub fn named_at(&self) -> Option<NamedAt> {
        self.name.lock().clone()
    }

    /// The current name, or the one it had before it was unlinked or replaced.
    pub fn last_name(&self) -> Option<NamedAt> {
        self.named_at().or_else(|| self.former_name.lock().clone())
    }

    pub fn set_name(&self, parent: u64, name: &OsStr) {
        *self.name.lock() = Some(NamedAt {
            parent,
            name: name.to_os_string(),
        });
    }

    /// A rename gave this inode a new name; it was (`parent`, `name`) (see
    /// [`Inode::moved_within`]).
    pub fn note_moved(&self, parent: u64, name: &OsStr) {
        let from = NamedAt {
            parent,
            name: name.to_os_string(),
        };
        *self.moved.lock() = Some((Instant::now(), from));
    }

    /// Whether a rename gave this inode a new name after `at`.
    pub fn moved_after(&self, at: Instant) -> bool {
        self.moved
            .lock()
            .as_ref()
            .is_some_and(|(moved, _)| *moved > at)
    }

    /// The name a rename took this inode from within `window`: a process that walked
    /// that name just before may open it by this nodeid just after.
    pub fn moved_within(&self, window: Duration) -> Option<NamedAt> {
        self.moved
            .lock()
            .as_ref()
            .filter(|(at, _)| at.elapsed() < window)
            .map(|(_, from)| from.clone())
    }

    /// Forgets the name if it is still (parent, name): that name no longer points here.
    pub fn clear_name_if(&self, parent: u64, name: &OsStr) {
        let mut slot = self.name.lock();
        if slot
            .as_ref()
            .is_some_and(|at| at.parent == parent && at.name == name)
        {
            *self.former_name.lock() = slot.take();
        }
    }

    /// The live backing id of this inode, or a new one from `make` (kept weakly here;
    /// the open handles hold it strongly from open to release).
    pub fn backing_or(
        &self,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> std::io::Result<Arc<BackingId>> {
        let mut slot = self.backing.lock();
        if let Some(id) = slot.upgrade() {
            return Ok(id);
        }
        let id = Arc::new(make()?);
        *slot = Arc::downgrade(&id);
        Ok(id)
    }
}

struct Entry {
    inode: Arc<Inode>,
    lookups: u64,
}

#[derive(Default)]
struct Tables {
    by_node: HashMap<u64, Entry>,
    by_key: HashMap<InodeKey, u64>,
    next_remap: u64,
    next_generation: u64,
    /// The most entries held since memory was last given back to the system.
    high_water: usize,
}

/// What the store holds, for `lockfs status` and the size tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreCounts {
    pub inodes: usize,
    pub pinned_fds: usize,
    pub cached_fds: usize,
    pub fd_cache_capacity: usize,
}

/// Lock order: `tables` before the fd cache's lock; neither is held during a syscall.
pub struct InodeStore {
    tables: Mutex<Tables>,
    fds: FdCache,
}

/// Deeper than any directory tree a path walk could reach; a longer parent chain means
/// the recorded names form a loop.
const MAX_DEPTH: usize = 1 << 16;

/// Once the store has held this many inodes and the kernel has forgotten half of them,
/// the freed memory is returned to the system (the allocator keeps it otherwise).
const TRIM_AFTER: usize = 10_000;

fn give_back_memory() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

fn stale() -> io::Error {
    io::Error::from_raw_os_error(libc::ESTALE)
}

impl InodeStore {
    /// A store whose root (nodeid 1) is the directory behind `root_fd`, caching up to
    /// `fd_cache` fds of other inodes.
    pub fn new(root_fd: OwnedFd, root_stat: &Stat, fd_cache: usize) -> InodeStore {
        let key = InodeKey::of(root_stat);
        let root = Arc::new(Inode::new(ROOT_ID, 0, root_stat, Some(Arc::new(root_fd))));
        let mut tables = Tables {
            next_remap: REMAP_BASE,
            next_generation: 1,
            ..Tables::default()
        };
        tables.by_node.insert(
            ROOT_ID,
            Entry {
                inode: root,
                lookups: 1,
            },
        );
        tables.by_key.insert(key, ROOT_ID);
        InodeStore {
            tables: Mutex::new(tables),
            fds: FdCache::new(fd_cache),
        }
    }

    /// An O_PATH fd of `inode`: its pinned one, a cached one, or one opened from its
    /// parent's fd and its name (and cached). ESTALE when the inode cannot be reached by
    /// the names the store knows.
    pub fn fd(&self, inode: &Inode) -> io::Result<PathFd> {
        match self.resolve(inode) {
            // A rename of an ancestor can race the walk: one more try sees its new names.
            Err(e) if e.raw_os_error() == Some(libc::ESTALE) => self.resolve(inode),
            other => other,
        }
    }

    fn held_fd(&self, inode: &Inode) -> Option<PathFd> {
        if let Some(fd) = inode.pinned.lock().clone() {
            return Some(fd);
        }
        self.fds.get(inode.nodeid, inode.generation)
    }

    fn resolve(&self, inode: &Inode) -> io::Result<PathFd> {
        if let Some(fd) = self.held_fd(inode) {
            return Ok(fd);
        }
        // Walk up to the nearest ancestor whose fd is held, then open back down, each
        // directory by the name read on the way up.
        let target = inode.named_at().ok_or_else(stale)?;
        let mut dirs: Vec<(Arc<Inode>, OsString)> = Vec::new();
        let mut parent = target.parent;
        let mut dir_fd = loop {
            let dir = self.get(parent).ok_or_else(stale)?;
            if let Some(fd) = self.held_fd(&dir) {
                break fd;
            }
            if dirs.len() >= MAX_DEPTH {
                return Err(io::Error::from_raw_os_error(libc::ELOOP));
            }
            let named = dir.named_at().ok_or_else(stale)?;
            parent = named.parent;
            dirs.push((dir, named.name));
        };
        while let Some((dir, name)) = dirs.pop() {
            dir_fd = self.open_child(&dir_fd, &dir, &name)?;
        }
        self.open_child(&dir_fd, inode, &target.name)
    }

    /// Opens `inode` as `name` in the directory `dir_fd`, checks it is the same file, and
    /// caches the fd.
    fn open_child(&self, dir_fd: &PathFd, inode: &Inode, name: &OsStr) -> io::Result<PathFd> {
        let cname = sys::cstr(name)?;
        let fd = match sys::openat(
            dir_fd.as_fd(),
            &cname,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0,
        ) {
            Ok(fd) => fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Err(stale()),
            Err(e) => return Err(e),
        };
        if InodeKey::of(&sys::fstat(fd.as_fd())?) != inode.key {
            return Err(stale());
        }
        let fd = Arc::new(fd);
        self.fds
            .put(inode.nodeid, inode.generation, Arc::clone(&fd));
        Ok(fd)
    }

    /// Keeps an fd of `inode` for as long as the kernel knows it; called before the
    /// overlay removes the name that reaches it.
    pub fn pin(&self, inode: &Inode) -> io::Result<()> {
        if inode.pinned.lock().is_some() {
            return Ok(());
        }
        let fd = self.fd(inode)?;
        *inode.pinned.lock() = Some(fd);
        Ok(())
    }

    /// `lstat` of `name` in the directory `parent`.
    pub fn stat_child(&self, parent: &Inode, name: &CStr) -> io::Result<Stat> {
        sys::fstatat(self.fd(parent)?.as_fd(), name, libc::AT_SYMLINK_NOFOLLOW)
    }

    /// `lstat` of `name` in the directory with nodeid `parent`; None when either is gone.
    pub fn stat_named(&self, parent: u64, name: &OsStr) -> Option<Stat> {
        let dir = self.get(parent)?;
        let cname = sys::cstr(name).ok()?;
        self.stat_child(&dir, &cname).ok()
    }

    /// The live inode currently at `parent/name`, if the kernel knows it.
    pub fn known_child(&self, parent: &Inode, name: &CStr) -> Option<Arc<Inode>> {
        let st = self.stat_child(parent, name).ok()?;
        self.find(InodeKey::of(&st))
    }

    /// How many inodes the store knows, how many fds it pins, and how many it caches.
    pub fn counts(&self) -> StoreCounts {
        let tables = self.tables.lock();
        let pinned = tables
            .by_node
            .values()
            .filter(|e| e.inode.pinned.lock().is_some())
            .count();
        StoreCounts {
            inodes: tables.by_node.len(),
            pinned_fds: pinned,
            cached_fds: self.fds.len(),
            fd_cache_capacity: self.fds.capacity(),
        }
    }

    pub fn get(&self, nodeid: u64) -> Option<Arc<Inode>> {
        self.tables
            .lock()
            .by_node
            .get(&nodeid)
            .map(|e| Arc::clone(&e.inode))
    }

    /// The live inode for `key`, if the kernel knows it (no lookup count taken).
    pub fn find(&self, key: InodeKey) -> Option<Arc<Inode>> {
        let tables = self.tables.lock();
        let nodeid = tables.by_key.get(&key)?;
        tables.by_node.get(nodeid).map(|e| Arc::clone(&e.inode))
    }

    /// The nodeid the kernel sees for `key` (for readdir), without creating an entry.
    pub fn nodeid_for(&self, key: InodeKey) -> u64 {
        let tables = self.tables.lock();
        match tables.by_key.get(&key) {
            Some(&nodeid) => nodeid,
            None if key.ino == ROOT_ID || key.ino == 0 => REMAP_BASE - 1,
            None => key.ino,
        }
    }

    /// Takes one lookup on the inode for `st`, creating the entry if the kernel does not
    /// know it yet.
    pub fn intern(&self, st: &Stat) -> Arc<Inode> {
        let key = InodeKey::of(st);
        let mut tables = self.tables.lock();
        if let Some(&nodeid) = tables.by_key.get(&key) {
            let entry = tables.by_node.get_mut(&nodeid).expect("tables agree");
            entry.lookups += 1;
            return Arc::clone(&entry.inode);
        }
        let nodeid = if key.ino != ROOT_ID
            && key.ino != 0
            && key.ino < REMAP_BASE
            && !tables.by_node.contains_key(&key.ino)
        {
            key.ino
        } else {
            loop {
                let candidate = tables.next_remap;
                tables.next_remap += 1;
                if !tables.by_node.contains_key(&candidate) {
                    break candidate;
                }
            }
        };
        let generation = tables.next_generation;
        tables.next_generation += 1;
        let inode = Arc::new(Inode::new(nodeid, generation, st, None));
        tables.by_node.insert(
            nodeid,
            Entry {
                inode: Arc::clone(&inode),
                lookups: 1,
            },
        );
        tables.by_key.insert(key, nodeid);
        tables.high_water = tables.high_water.max(tables.by_node.len());
        inode
    }

    /// Takes one more lookup on an inode already in the store (link, rename reply paths).
    pub fn add_lookup(&self, nodeid: u64) {
        if let Some(entry) = self.tables.lock().by_node.get_mut(&nodeid) {
            entry.lookups += 1;
        }
    }

    /// Drops `count` lookups; at zero the entry and its fds go away.
    pub fn forget(&self, nodeid: u64, count: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let gone = {
            let mut tables = self.tables.lock();
            let Some(entry) = tables.by_node.get_mut(&nodeid) else {
                return;
            };
            entry.lookups = entry.lookups.saturating_sub(count);
            if entry.lookups > 0 {
                return;
            }
            let entry = tables.by_node.remove(&nodeid).expect("present");
            tables.by_key.remove(&entry.inode.key);
            let held = tables.by_node.len();
            let shrunk = tables.high_water >= TRIM_AFTER && held < tables.high_water / 2;
            if shrunk {
                tables.high_water = held;
                tables.by_node.shrink_to_fit();
                tables.by_key.shrink_to_fit();
            }
            (entry, shrunk)
        };
        self.fds.remove(nodeid);
        drop(gone.0);
        if gone.1 {
            give_back_memory();
        }
    }

    /// How many inodes the store knows.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.tables.lock().by_node.len()
    }

    /// How many lookups the kernel holds on `nodeid` (0 when unknown).
    #[cfg(test)]
    pub fn lookups(&self, nodeid: u64) -> u64 {
        self.tables
            .lock()
            .by_node
            .get(&nodeid)
            .map_or(0, |e| e.lookups)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::BorrowedFd;

    use super::*;
    use crate::sys;

    fn path_fd(path: &std::path::Path) -> (OwnedFd, Stat) {
        let cpath = sys::cstr(path.as_os_str()).unwrap();
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let fd = sys::openat(cwd, &cpath, libc::O_PATH, 0).unwrap();
        let st = sys::fstat(fd.as_fd()).unwrap();
        (fd, st)
    }

    #[test]
    fn colliding_numbers_are_remapped_and_generations_differ() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        let (root_fd, root_st) = path_fd(tmp.path());
        let store = InodeStore::new(root_fd, &root_st, 16);
        let (_fd, mut st) = path_fd(&tmp.path().join("f"));
        // Pretend the file has inode number 1 on another device: it must not be the root.
        st.st_ino = ROOT_ID;
        st.st_dev = root_st.st_dev + 1;
        let inode = store.intern(&st);
        assert_ne!(inode.nodeid, ROOT_ID);
        assert!(inode.nodeid >= REMAP_BASE);
        assert_ne!(inode.generation, 0);
        let (_fd2, st2) = path_fd(&tmp.path().join("f"));
        let plain = store.intern(&st2);
        assert_eq!(plain.nodeid, st2.st_ino);
        assert_ne!(plain.generation, inode.generation);
        store.forget(ROOT_ID, 100);
        assert!(store.get(ROOT_ID).is_some(), "the root is never forgotten");
    }

    /// A store over a temp dir with a two-entry fd cache, and a helper that interns
    /// `parent/name` as LOOKUP would.
    fn store_over(dir: &std::path::Path) -> InodeStore {
        let (root_fd, root_st) = path_fd(dir);
        InodeStore::new(root_fd, &root_st, 2)
    }

    fn look_up(store: &InodeStore, parent: &Arc<Inode>, name: &str) -> Arc<Inode> {
        let cname = sys::cstr(OsStr::new(name)).unwrap();
        let st = store.stat_child(parent, &cname).unwrap();
        let inode = store.intern(&st);
        inode.set_name(parent.nodeid, OsStr::new(name));
        inode
    }

    #[test]
    fn fds_are_opened_by_name_through_evicted_parents_and_checked() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("a/b/c")).unwrap();
        std::fs::write(tmp.path().join("a/b/c/f"), "data").unwrap();
        let store = store_over(tmp.path());
        let root = store.get(ROOT_ID).unwrap();
        let a = look_up(&store, &root, "a");
        let b = look_up(&store, &a, "b");
        let c = look_up(&store, &b, "c");
        let f = look_up(&store, &c, "f");
        // The cache holds two fds: opening f walked down a, b and c and kept the last two.
        let fd = store.fd(&f).unwrap();
        assert_eq!(sys::fstat(fd.as_fd()).unwrap().st_size, 4);
        assert!(store.counts().cached_fds <= 2);
        assert_eq!(store.counts().pinned_fds, 1, "only the root");

        // A directory renamed below the store's back: its names no longer reach f.
        std::fs::rename(tmp.path().join("a"), tmp.path().join("z")).unwrap();
        store.fds.remove(f.nodeid);
        store.fds.remove(c.nodeid);
        store.fds.remove(b.nodeid);
        store.fds.remove(a.nodeid);
        let err = store.fd(&f).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE));
        // Renamed through the store (as the overlay does), every child is reachable again.
        a.set_name(ROOT_ID, OsStr::new("z"));
        assert!(store.fd(&f).is_ok());

        // Another file under the same name is not f.
        std::fs::remove_file(tmp.path().join("z/b/c/f")).unwrap();
        std::fs::write(tmp.path().join("z/b/c/f"), "other").unwrap();
        store.fds.remove(f.nodeid);
        let err = store.fd(&f).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESTALE));
    }

    #[test]
    fn a_pinned_inode_outlives_its_name_until_forgotten() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), "data").unwrap();
        let store = store_over(tmp.path());
        let root = store.get(ROOT_ID).unwrap();
        let f = look_up(&store, &root, "f");
        store.pin(&f).unwrap();
        std::fs::remove_file(tmp.path().join("f")).unwrap();
        f.clear_name_if(ROOT_ID, OsStr::new("f"));
        let fd = store.fd(&f).unwrap();
        assert_eq!(sys::fstat(fd.as_fd()).unwrap().st_nlink, 0);
        assert_eq!(store.counts().pinned_fds, 2);
        drop(fd);
        store.forget(f.nodeid, 1);
        assert_eq!(store.counts().pinned_fds, 1, "the root's alone");
        assert_eq!(store.counts().inodes, 1);
    }
}
