//! A bounded cache of O_PATH fds, one per recently used inode.
//!
//! Inodes do not keep an fd for their whole life (a state directory can hold more files
//! than the process may open); an fd is opened from the parent's fd and the name when an
//! operation needs one, and kept here until less recently used ones push it out. An fd
//! handed out stays valid after eviction: the caller holds its own reference.

use std::num::NonZeroUsize;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use lru::LruCache;
use parking_lot::Mutex;

/// An O_PATH fd shared by the cache and the operations using it.
pub type PathFd = Arc<OwnedFd>;

pub struct FdCache {
    /// nodeid -> (generation of the inode the fd was opened for, fd).
    entries: Mutex<LruCache<u64, (u64, PathFd)>>,
}

impl FdCache {
    pub fn new(capacity: usize) -> FdCache {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        FdCache {
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// The cached fd of inode `nodeid` of `generation`, marked as just used.
    pub fn get(&self, nodeid: u64, generation: u64) -> Option<PathFd> {
        let mut entries = self.entries.lock();
        match entries.get(&nodeid) {
            Some((cached, fd)) if *cached == generation => Some(Arc::clone(fd)),
            _ => None,
        }
    }

    /// Keeps `fd` for `nodeid`, closing the least recently used fd when full (unless an
    /// operation still holds it).
    pub fn put(&self, nodeid: u64, generation: u64, fd: PathFd) {
        let evicted = self.entries.lock().push(nodeid, (generation, fd));
        drop(evicted);
    }

    pub fn remove(&self, nodeid: u64) {
        let removed = self.entries.lock().pop(&nodeid);
        drop(removed);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    pub fn capacity(&self) -> usize {
        self.entries.lock().cap().get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> PathFd {
        Arc::new(std::fs::File::open("/").unwrap().into())
    }

    #[test]
    fn the_least_recently_used_fd_goes_first_and_generations_must_match() {
        let cache = FdCache::new(2);
        cache.put(10, 1, fd());
        cache.put(11, 1, fd());
        assert!(cache.get(10, 1).is_some(), "10 is now the most recent");
        cache.put(12, 1, fd());
        assert!(cache.get(11, 1).is_none(), "11 was the least recently used");
        assert!(cache.get(10, 1).is_some());
        assert!(
            cache.get(10, 2).is_none(),
            "an fd of an older inode of that number"
        );
        assert_eq!(cache.len(), 2);
        cache.remove(10);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn an_fd_in_use_outlives_its_eviction() {
        let cache = FdCache::new(1);
        cache.put(10, 1, fd());
        let held = cache.get(10, 1).unwrap();
        cache.put(11, 1, fd());
        assert!(cache.get(10, 1).is_none());
        assert!(crate::sys::fstat(std::os::fd::AsFd::as_fd(&*held)).is_ok());
    }
}
