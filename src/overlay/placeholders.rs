//! Stand-ins for a missing name that another process's cycle holds.
//!
//! A LOOKUP cannot wait for a lease: it holds the directory's lock (shared), and the
//! holder's CREATE or RENAME of the name needs that lock exclusive. So a lookup of a
//! missing name held by another process's cycle is answered with a placeholder: a
//! regular file of size 0 that exists only in the kernel's cache, with no time to live
//! for the name or its attributes. The asker's next request on it (the OPEN of its
//! open(2), or the GETATTR of a stat) holds no directory lock and waits in the file's
//! queue. When its turn comes it is answered ESTALE with the lease kept: the kernel walks
//! the name again (once), finds what is there now (the file the holder saved, or still
//! nothing), and the retry continues that lease.
//!
//! The holder itself never sees a placeholder: its lookups say what is on disk.
//! Placeholder nodeids come from a range that no disk inode and no remapped nodeid
//! reaches, and live until the kernel forgets them.

use std::time::{Duration, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use parking_lot::Mutex;

use super::names::FileKey;
use crate::fastmap::HashMap;

/// The first placeholder nodeid (remapped inode nodeids start at 2^56 and count up).
const BASE: u64 = 1 << 62;

/// How long the kernel may trust a placeholder: not at all, so every path walk asks again
/// and a stat never answers from a cached size.
pub const TTL: Duration = Duration::ZERO;

#[derive(Default)]
pub struct Placeholders {
    tables: Mutex<Tables>,
}

#[derive(Default)]
struct Tables {
    by_node: HashMap<u64, (FileKey, u64)>,
    by_key: HashMap<FileKey, u64>,
    next: u64,
}

pub fn is_placeholder(nodeid: u64) -> bool {
    nodeid >= BASE
}

impl Placeholders {
    /// The placeholder for `key`, with one more lookup the kernel holds on it.
    pub fn look_up(&self, key: &FileKey) -> u64 {
        let mut tables = self.tables.lock();
        if let Some(&nodeid) = tables.by_key.get(key) {
            tables.by_node.get_mut(&nodeid).expect("tables agree").1 += 1;
            return nodeid;
        }
        let nodeid = BASE + tables.next;
        tables.next += 1;
        tables.by_node.insert(nodeid, (key.clone(), 1));
        tables.by_key.insert(key.clone(), nodeid);
        nodeid
    }

    /// The name a placeholder stands for, while the kernel knows it.
    pub fn key_of(&self, nodeid: u64) -> Option<FileKey> {
        self.tables
            .lock()
            .by_node
            .get(&nodeid)
            .map(|(key, _)| key.clone())
    }

    /// The kernel dropped `count` lookups of placeholder `nodeid`.
    pub fn forget(&self, nodeid: u64, count: u64) {
        let mut tables = self.tables.lock();
        let Some((key, lookups)) = tables.by_node.get_mut(&nodeid) else {
            return;
        };
        *lookups = lookups.saturating_sub(count);
        if *lookups == 0 {
            let key = key.clone();
            tables.by_node.remove(&nodeid);
            tables.by_key.remove(&key);
        }
    }

    /// How many placeholders the kernel knows now.
    #[cfg(test)]
    pub fn count(&self) -> usize {
        self.tables.lock().by_node.len()
    }
}

/// What the kernel sees of a placeholder: an empty regular file of the asker's.
pub fn attr(nodeid: u64, uid: u32, gid: u32) -> FileAttr {
    FileAttr {
        ino: INodeNo(nodeid),
        size: 0,
        blocks: 0,
        atime: UNIX_EPOCH,
        mtime: UNIX_EPOCH,
        ctime: UNIX_EPOCH,
        crtime: UNIX_EPOCH,
        kind: FileType::RegularFile,
        perm: 0o600,
        nlink: 1,
        uid,
        gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn one_placeholder_per_name_until_every_lookup_is_forgotten() {
        let placeholders = Placeholders::default();
        let key: FileKey = (1, OsString::from("store.json"));
        let first = placeholders.look_up(&key);
        assert!(is_placeholder(first));
        assert_eq!(placeholders.look_up(&key), first);
        placeholders.forget(first, 1);
        assert_eq!(placeholders.key_of(first), Some(key.clone()));
        placeholders.forget(first, 1);
        assert_eq!(placeholders.key_of(first), None);
        assert_eq!(placeholders.count(), 0);
        let again = placeholders.look_up(&key);
        assert_ne!(again, first);
        assert!(!is_placeholder(super::super::inodes::ROOT_ID));
    }
}
