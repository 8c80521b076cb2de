//! Open file and directory handles: what each fh the kernel holds refers to.

use std::ffi::{CStr, OsStr, OsString};
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fuser::BackingId;
use lru::LruCache;
use parking_lot::{Mutex, RwLock};

use super::inodes::Inode;
use crate::fastmap::HashMap;

/// One open file: created by OPEN/CREATE, gone at RELEASE.
#[derive(Debug)]
pub struct FileHandle {
    pub fh: u64,
    pub inode: Arc<Inode>,
    /// The open(2) flags the caller passed (O_ACCMODE, O_APPEND, ...).
    pub flags: i32,
    pub file: OwnedFd,
    /// Set when the kernel serves READ/WRITE from the backing file itself; kept alive
    /// from open to release because dropping it closes the backing file in the kernel.
    pub backing: Mutex<Option<Arc<BackingId>>>,
}

impl FileHandle {
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// One open directory stream.
pub struct DirHandle {
    pub inode: Arc<Inode>,
    pub stream: Mutex<DirStream>,
}

pub struct Handles {
    next: AtomicU64,
    files: RwLock<HashMap<u64, Arc<FileHandle>>>,
    dirs: RwLock<HashMap<u64, Arc<DirHandle>>>,
    parked: ParkedStreams,
}

impl Default for Handles {
    fn default() -> Self {
        Handles {
            next: AtomicU64::new(1),
            files: RwLock::default(),
            dirs: RwLock::default(),
            parked: ParkedStreams::new(PARKED_STREAMS),
        }
    }
}

/// How many directory listings may be under way at once without OPENDIR before the
/// least recently read one must reopen its directory and seek.
const PARKED_STREAMS: usize = 64;

/// Directory streams between the READDIRs of one listing when the kernel sends no
/// OPENDIR (FUSE_NO_OPENDIR_SUPPORT): a READDIR then names only the directory and a
/// cookie, so the stream a batch stopped at is kept under (directory, generation, cookie)
/// for the batch that continues there. A listing that reached its end keeps nothing.
struct ParkedStreams {
    streams: Mutex<LruCache<(u64, u64, u64), DirStream>>,
}

impl ParkedStreams {
    fn new(capacity: usize) -> ParkedStreams {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        ParkedStreams {
            streams: Mutex::new(LruCache::new(capacity)),
        }
    }
}

impl Handles {
    /// A fresh fh number; never reused within a session.
    pub fn next_fh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    pub fn insert_file(&self, handle: Arc<FileHandle>) {
        self.files.write().insert(handle.fh, handle);
    }

    pub fn file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.read().get(&fh).cloned()
    }

    pub fn remove_file(&self, fh: u64) -> Option<Arc<FileHandle>> {
        self.files.write().remove(&fh)
    }

    pub fn insert_dir(&self, inode: Arc<Inode>, stream: DirStream) -> u64 {
        let fh = self.next_fh();
        let handle = Arc::new(DirHandle {
            inode,
            stream: Mutex::new(stream),
        });
        self.dirs.write().insert(fh, handle);
        fh
    }

    pub fn dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.read().get(&fh).cloned()
    }

    pub fn remove_dir(&self, fh: u64) -> Option<Arc<DirHandle>> {
        self.dirs.write().remove(&fh)
    }

    /// The stream a listing of `inode` left at cookie `offset`, if one is parked there.
    pub fn take_parked(&self, inode: &Inode, offset: u64) -> Option<DirStream> {
        let key = (inode.nodeid, inode.generation, offset);
        self.parked.streams.lock().pop(&key)
    }

    /// Keeps `stream` for the READDIR that continues `inode`'s listing where it stands.
    pub fn park(&self, inode: &Inode, stream: DirStream) {
        let key = (inode.nodeid, inode.generation, stream.position);
        let evicted = self.parked.streams.lock().push(key, stream);
        drop(evicted);
    }

    #[cfg(test)]
    pub fn parked_count(&self) -> usize {
        self.parked.streams.lock().len()
    }
}

/// A directory entry as read from the disk below.
pub struct DirEntry {
    pub ino: u64,
    /// The cookie to resume reading after this entry.
    pub next_offset: u64,
    pub d_type: u8,
    pub name: OsString,
}

/// A libc directory stream over an fd of its own.
pub struct DirStream {
    dir: *mut libc::DIR,
    /// The cookie of the next entry `read` will return (0 = start).
    position: u64,
}

// SAFETY: the DIR pointer is only used behind the DirHandle's mutex.
unsafe impl Send for DirStream {}

impl DirStream {
    pub fn open(fd: OwnedFd) -> std::io::Result<DirStream> {
        let raw = fd.into_raw_fd();
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let err = std::io::Error::last_os_error();
            unsafe { libc::close(raw) };
            return Err(err);
        }
        Ok(DirStream { dir, position: 0 })
    }

    pub fn raw_fd(&self) -> i32 {
        unsafe { libc::dirfd(self.dir) }
    }

    /// Positions the stream at cookie `offset` (0 = start) unless already there.
    pub fn seek(&mut self, offset: u64) {
        if offset == self.position {
            return;
        }
        if offset == 0 {
            unsafe { libc::rewinddir(self.dir) };
        } else {
            unsafe { libc::seekdir(self.dir, offset as libc::c_long) };
        }
        self.position = offset;
    }

    /// The next entry, `Ok(None)` at the end.
    pub fn next_entry(&mut self) -> std::io::Result<Option<DirEntry>> {
        errno_clear();
        let ent = unsafe { libc::readdir64(self.dir) };
        if ent.is_null() {
            let errno = std::io::Error::last_os_error();
            return match errno.raw_os_error() {
                Some(0) | None => Ok(None),
                Some(_) => Err(errno),
            };
        }
        let ent = unsafe { &*ent };
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) };
        self.position = ent.d_off as u64;
        Ok(Some(DirEntry {
            ino: ent.d_ino,
            next_offset: ent.d_off as u64,
            d_type: ent.d_type,
            name: OsStr::from_bytes(name.to_bytes()).to_os_string(),
        }))
    }

    /// Steps back so that the entry starting at `offset` is returned again next time.
    pub fn rewind_to(&mut self, offset: u64) {
        self.position = u64::MAX;
        self.seek(offset);
    }
}

impl AsRawFd for DirStream {
    fn as_raw_fd(&self) -> i32 {
        self.raw_fd()
    }
}

impl Drop for DirStream {
    fn drop(&mut self) {
        unsafe { libc::closedir(self.dir) };
    }
}

fn errno_clear() {
    unsafe { *libc::__errno_location() = 0 };
}
