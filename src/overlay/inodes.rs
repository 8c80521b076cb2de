//! The inode store: one entry per underlying (dev, ino) the kernel knows, with its O_PATH fd.
//!
//! Invariants:
//! - an entry lives while the kernel holds lookups on it (every entry reply adds one,
//!   FORGET subtracts); the root is never dropped;
//! - while an entry lives its O_PATH fd pins the underlying inode, so its (dev, ino) key
//!   cannot be reused by another file;
//! - the nodeid is the underlying ino when that is free (so `st_ino` matches the disk
//!   below); otherwise a number from a range no disk ino reaches.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Weak};

use fuser::BackingId;
use parking_lot::Mutex;

use crate::sys::Stat;

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
    fd: OwnedFd,
    name: Mutex<Option<NamedAt>>,
    /// The name this inode had before it was unlinked or renamed over.
    former_name: Mutex<Option<NamedAt>>,
    /// The passthrough backing file shared by every open handle of this inode.
    backing: Mutex<Weak<BackingId>>,
}

impl Inode {
    /// The O_PATH fd that addresses this inode in every *at() call.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
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
}

pub struct InodeStore {
    tables: Mutex<Tables>,
}

impl InodeStore {
    /// A store whose root (nodeid 1) is the directory behind `root_fd`.
    pub fn new(root_fd: OwnedFd, root_stat: &Stat) -> InodeStore {
        let key = InodeKey::of(root_stat);
        let root = Arc::new(Inode {
            nodeid: ROOT_ID,
            generation: 0,
            key,
            file_type: root_stat.st_mode & libc::S_IFMT,
            fd: root_fd,
            name: Mutex::new(None),
            former_name: Mutex::new(None),
            backing: Mutex::new(Weak::new()),
        });
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

    /// Takes one lookup on the inode for `st` (whose O_PATH fd is `fd`), creating the
    /// entry if the kernel does not know it yet; a surplus `fd` is closed.
    pub fn intern(&self, fd: OwnedFd, st: &Stat) -> Arc<Inode> {
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
        let inode = Arc::new(Inode {
            nodeid,
            generation,
            key,
            file_type: st.st_mode & libc::S_IFMT,
            fd,
            name: Mutex::new(None),
            former_name: Mutex::new(None),
            backing: Mutex::new(Weak::new()),
        });
        tables.by_node.insert(
            nodeid,
            Entry {
                inode: Arc::clone(&inode),
                lookups: 1,
            },
        );
        tables.by_key.insert(key, nodeid);
        inode
    }

    /// Takes one more lookup on an inode already in the store (link, rename reply paths).
    pub fn add_lookup(&self, nodeid: u64) {
        if let Some(entry) = self.tables.lock().by_node.get_mut(&nodeid) {
            entry.lookups += 1;
        }
    }

    /// Drops `count` lookups; at zero the entry and its O_PATH fd go away.
    pub fn forget(&self, nodeid: u64, count: u64) {
        if nodeid == ROOT_ID {
            return;
        }
        let mut tables = self.tables.lock();
        let Some(entry) = tables.by_node.get_mut(&nodeid) else {
            return;
        };
        entry.lookups = entry.lookups.saturating_sub(count);
        if entry.lookups == 0 {
            let entry = tables.by_node.remove(&nodeid).expect("present");
            tables.by_key.remove(&entry.inode.key);
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
        let store = InodeStore::new(root_fd, &root_st);
        let (fd, mut st) = path_fd(&tmp.path().join("f"));
        // Pretend the file has inode number 1 on another device: it must not be the root.
        st.st_ino = ROOT_ID;
        st.st_dev = root_st.st_dev + 1;
        let inode = store.intern(fd, &st);
        assert_ne!(inode.nodeid, ROOT_ID);
        assert!(inode.nodeid >= REMAP_BASE);
        assert_ne!(inode.generation, 0);
        let (fd2, st2) = path_fd(&tmp.path().join("f"));
        let plain = store.intern(fd2, &st2);
        assert_eq!(plain.nodeid, st2.st_ino);
        assert_ne!(plain.generation, inode.generation);
        store.forget(ROOT_ID, 100);
        assert!(store.get(ROOT_ID).is_some(), "the root is never forgotten");
    }
}
