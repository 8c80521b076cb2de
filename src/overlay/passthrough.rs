//! The overlay core: every operation as a plain method on held fds, returning the
//! underlying errno unchanged. No fuser request or reply types in here, so the lease layer
//! can call these from any thread, later than the request arrived.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::UNIX_EPOCH;

use fuser::{Errno, FileAttr, TimeOrNow};
use parking_lot::Mutex;

use super::Caller;
use super::attr::to_file_attr;
use super::creds::FsCredsGuard;
use super::fds::PathFd;
use super::handles::{DirEntry, DirStream, FileHandle, Handles};
use super::inodes::{Inode, InodeKey, InodeStore, ROOT_ID};
use crate::sys;

pub type OpResult<T> = Result<T, Errno>;

fn errno(err: io::Error) -> Errno {
    Errno::from_i32(err.raw_os_error().unwrap_or(libc::EIO))
}

/// A reply to an entry request: the inode (one lookup already taken for the kernel) and
/// its attributes.
#[derive(Debug)]
pub struct Entry {
    pub inode: Arc<Inode>,
    pub attr: FileAttr,
}

/// The attribute changes of one SETATTR.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
    /// The open handle the change came through (ftruncate, fchmod, futimens).
    pub fh: Option<u64>,
}

pub struct Overlay {
    inodes: InodeStore,
    handles: Handles,
    /// Whether opens should ask the kernel for passthrough (user choice and kernel grant).
    passthrough: AtomicBool,
    passthrough_failed_logged: AtomicBool,
    /// Serializes the (stat target, rename, update names) sequence so that the names the
    /// lease layer reads are never half-updated.
    rename_lock: Mutex<()>,
}

impl Overlay {
    /// An overlay serving the directory behind `root` (an O_PATH|O_DIRECTORY fd), keeping
    /// up to `fd_cache` O_PATH fds of other inodes open.
    pub fn new(root: OwnedFd, fd_cache: usize) -> io::Result<Overlay> {
        let st = sys::fstat(root.as_fd())?;
        Ok(Overlay {
            inodes: InodeStore::new(root, &st, fd_cache),
            handles: Handles::default(),
            passthrough: AtomicBool::new(false),
            passthrough_failed_logged: AtomicBool::new(false),
            rename_lock: Mutex::new(()),
        })
    }

    pub fn inodes(&self) -> &InodeStore {
        &self.inodes
    }

    pub fn set_passthrough(&self, on: bool) {
        self.passthrough.store(on, Ordering::Relaxed);
    }

    pub fn passthrough(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Turns passthrough off after the kernel refused a backing file; logs it once.
    pub fn passthrough_refused(&self, err: &io::Error) {
        if !self.passthrough_failed_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "kernel refused a passthrough backing file ({err}); using daemon read/write"
            );
        }
    }

    pub fn inode(&self, nodeid: u64) -> OpResult<Arc<Inode>> {
        self.inodes.get(nodeid).ok_or(Errno::ESTALE)
    }

    pub fn file(&self, fh: u64) -> OpResult<Arc<FileHandle>> {
        self.handles.file(fh).ok_or(Errno::EBADF)
    }

    /// Which path (parent nodeid, name) `nodeid` was last known by; `None` once unlinked.
    #[cfg(test)]
    pub fn path_of(&self, nodeid: u64) -> Option<super::inodes::NamedAt> {
        self.inodes.get(nodeid)?.named_at()
    }

    /// An O_PATH fd of `inode` (from the store's cache, or opened by its name).
    pub fn path_fd(&self, inode: &Inode) -> OpResult<PathFd> {
        self.inodes.fd(inode).map_err(errno)
    }

    fn node_fd(&self, nodeid: u64) -> OpResult<PathFd> {
        let inode = self.inode(nodeid)?;
        self.path_fd(&inode)
    }

    /// Interns the file `name` in `parent` and takes one lookup on it.
    fn entry_at(&self, parent: &Inode, name: &OsStr) -> OpResult<Entry> {
        let cname = sys::cstr(name).map_err(errno)?;
        let st = self.inodes.stat_child(parent, &cname).map_err(errno)?;
        Ok(self.entry_from_stat(&st, parent.nodeid, name))
    }

    fn entry_from_stat(&self, st: &sys::Stat, parent: u64, name: &OsStr) -> Entry {
        let inode = self.inodes.intern(st);
        if inode.nodeid != ROOT_ID && name.as_bytes() != b"." && name.as_bytes() != b".." {
            inode.set_name(parent, name);
        }
        let attr = to_file_attr(inode.nodeid, st);
        Entry { inode, attr }
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> OpResult<Entry> {
        let dir = self.inode(parent)?;
        if name.as_bytes() == b"." || (name.as_bytes() == b".." && parent == ROOT_ID) {
            let st = sys::fstat(self.path_fd(&dir)?.as_fd()).map_err(errno)?;
            self.inodes.add_lookup(dir.nodeid);
            return Ok(Entry {
                attr: to_file_attr(dir.nodeid, &st),
                inode: dir,
            });
        }
        self.entry_at(&dir, name)
    }

    pub fn forget(&self, nodeid: u64, count: u64) {
        self.inodes.forget(nodeid, count);
    }

    pub fn getattr(&self, nodeid: u64, fh: Option<u64>) -> OpResult<FileAttr> {
        let st = match fh.and_then(|fh| self.handles.file(fh)) {
            Some(handle) => sys::fstat(handle.fd()),
            None => match self.node_fd(nodeid) {
                Ok(fd) => sys::fstat(fd.as_fd()),
                Err(Errno::ESTALE) if super::reply::is_shared() => {
                    return self.attr_of_replaced(nodeid);
                }
                Err(e) => return Err(e),
            },
        }
        .map_err(errno)?;
        Ok(to_file_attr(nodeid, &st))
    }

    /// The attributes of what is at a replaced inode's name now. Only where another mount
    /// or host changes the directory (`--etcd`, `--source`): the kernel checks an open's
    /// permissions with a GETATTR of the inode it last looked up, and an ESTALE there
    /// spent the one retry the kernel gives an open, which the open needs once it has
    /// waited for the other host (the name is looked up again then).
    fn attr_of_replaced(&self, nodeid: u64) -> OpResult<FileAttr> {
        let inode = self.inode(nodeid)?;
        let named = inode.named_at().ok_or(Errno::ESTALE)?;
        let st = self
            .inodes
            .stat_named(named.parent, &named.name)
            .ok_or(Errno::ESTALE)?;
        if st.st_mode & libc::S_IFMT != inode.file_type {
            return Err(Errno::ESTALE);
        }
        Ok(to_file_attr(nodeid, &st))
    }

    /// `_caller` is unused here; the lease layer needs it for truncates.
    pub fn setattr(&self, _caller: Caller, nodeid: u64, change: SetAttr) -> OpResult<FileAttr> {
        let inode = self.inode(nodeid)?;
        let fd = self.path_fd(&inode)?;
        let fd = fd.as_fd();
        let handle = change.fh.and_then(|fh| self.handles.file(fh));
        if let Some(mode) = change.mode {
            match &handle {
                Some(h) => sys::fchmod(h.fd(), mode),
                None => sys::chmod_fd(fd, mode),
            }
            .map_err(errno)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            sys::chown_fd(
                fd,
                change.uid.unwrap_or(u32::MAX),
                change.gid.unwrap_or(u32::MAX),
            )
            .map_err(errno)?;
        }
        if let Some(size) = change.size {
            match &handle {
                Some(h) if h.flags & libc::O_ACCMODE != libc::O_RDONLY => {
                    sys::ftruncate(h.fd(), size)
                }
                _ => {
                    sys::reopen(fd, libc::O_WRONLY).and_then(|fd| sys::ftruncate(fd.as_fd(), size))
                }
            }
            .map_err(errno)?;
        }
        if change.atime.is_some() || change.mtime.is_some() {
            let times = [timespec(change.atime), timespec(change.mtime)];
            match &handle {
                Some(h) => sys::futimens(h.fd(), &times),
                None => sys::utimens_fd(fd, &times, inode.is_symlink()),
            }
            .map_err(errno)?;
        }
        let st = sys::fstat(fd).map_err(errno)?;
        Ok(to_file_attr(nodeid, &st))
    }

    pub fn readlink(&self, nodeid: u64) -> OpResult<Vec<u8>> {
        sys::readlink_fd(self.node_fd(nodeid)?.as_fd()).map_err(errno)
    }

    /// Runs `make` (which creates `name` in `parent`) as the caller, then interns the result.
    fn create_node(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        make: impl FnOnce(BorrowedFd<'_>, &CStr) -> io::Result<()>,
    ) -> OpResult<Entry> {
        let dir = self.inode(parent)?;
        let cname = sys::cstr(name).map_err(errno)?;
        {
            let dir_fd = self.path_fd(&dir)?;
            let _creds = FsCredsGuard::become_caller(caller);
            make(dir_fd.as_fd(), &cname).map_err(errno)?;
        }
        self.entry_at(&dir, name)
    }

    pub fn mknod(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        rdev: u32,
    ) -> OpResult<Entry> {
        self.create_node(caller, parent, name, |dir, cname| {
            sys::mknodat(dir, cname, mode, u64::from(rdev))
        })
    }

    pub fn mkdir(&self, caller: Caller, parent: u64, name: &OsStr, mode: u32) -> OpResult<Entry> {
        self.create_node(caller, parent, name, |dir, cname| {
            sys::mkdirat(dir, cname, mode)
        })
    }

    pub fn symlink(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
    ) -> OpResult<Entry> {
        let ctarget = sys::cstr(target).map_err(errno)?;
        self.create_node(caller, parent, name, |dir, cname| {
            sys::symlinkat(&ctarget, dir, cname)
        })
    }

    /// The live inode currently at `parent/name`, if the kernel knows it, with an fd
    /// pinned for as long as the kernel knows it: the caller is about to take that name
    /// away, and the inode must stay reachable (and its number unused) without it.
    fn known_child_to_unname(&self, parent: &Inode, name: &CStr) -> Option<Arc<Inode>> {
        let child = self.inodes.known_child(parent, name)?;
        if let Err(e) = self.inodes.pin(&child) {
            tracing::debug!(
                nodeid = child.nodeid,
                "cannot keep an fd of a file losing its name: {e}"
            );
        }
        Some(child)
    }

    pub fn unlink(&self, caller: Caller, parent: u64, name: &OsStr) -> OpResult<()> {
        self.remove(caller, parent, name, 0)
    }

    pub fn rmdir(&self, caller: Caller, parent: u64, name: &OsStr) -> OpResult<()> {
        self.remove(caller, parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, _caller: Caller, parent: u64, name: &OsStr, flags: i32) -> OpResult<()> {
        let dir = self.inode(parent)?;
        let cname = sys::cstr(name).map_err(errno)?;
        let dir_fd = self.path_fd(&dir)?;
        let _names = self.rename_lock.lock();
        let victim = self.known_child_to_unname(&dir, &cname);
        sys::unlinkat(dir_fd.as_fd(), &cname, flags).map_err(errno)?;
        if let Some(victim) = victim {
            victim.clear_name_if(parent, name);
        }
        Ok(())
    }

    /// rename(2) / renameat2(2) with `flags` (RENAME_NOREPLACE, RENAME_EXCHANGE).
    pub fn rename(
        &self,
        _caller: Caller,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> OpResult<()> {
        let from_dir = self.inode(parent)?;
        let to_dir = self.inode(new_parent)?;
        let cname = sys::cstr(name).map_err(errno)?;
        let cnew = sys::cstr(new_name).map_err(errno)?;
        let from_fd = self.path_fd(&from_dir)?;
        let to_fd = self.path_fd(&to_dir)?;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let _names = self.rename_lock.lock();
        let moved = self.inodes.known_child(&from_dir, &cname);
        let replaced = if exchange {
            self.inodes.known_child(&to_dir, &cnew)
        } else {
            self.known_child_to_unname(&to_dir, &cnew)
        };
        sys::renameat2(from_fd.as_fd(), &cname, to_fd.as_fd(), &cnew, flags).map_err(errno)?;
        if let Some(replaced) = &replaced {
            if exchange {
                replaced.set_name(parent, name);
            } else if moved.as_ref().is_none_or(|m| m.nodeid != replaced.nodeid) {
                replaced.clear_name_if(new_parent, new_name);
            }
        }
        if let Some(moved) = moved {
            moved.set_name(new_parent, new_name);
            moved.note_moved(parent, name);
        }
        Ok(())
    }

    pub fn link(
        &self,
        _caller: Caller,
        nodeid: u64,
        new_parent: u64,
        new_name: &OsStr,
    ) -> OpResult<Entry> {
        let inode = self.inode(nodeid)?;
        let dir = self.inode(new_parent)?;
        let cname = sys::cstr(new_name).map_err(errno)?;
        let fd = self.path_fd(&inode)?;
        sys::link_fd(fd.as_fd(), self.path_fd(&dir)?.as_fd(), &cname).map_err(errno)?;
        let st = sys::fstat(fd.as_fd()).map_err(errno)?;
        self.inodes.add_lookup(inode.nodeid);
        inode.set_name(new_parent, new_name);
        Ok(Entry {
            attr: to_file_attr(inode.nodeid, &st),
            inode,
        })
    }

    fn register(&self, inode: Arc<Inode>, flags: i32, file: OwnedFd) -> Arc<FileHandle> {
        let handle = Arc::new(FileHandle {
            fh: self.handles.next_fh(),
            inode,
            flags,
            file,
            backing: Mutex::new(None),
        });
        self.handles.insert_file(Arc::clone(&handle));
        handle
    }

    /// Opens `nodeid` with the caller's open(2) `flags`; the handle lives until `release`.
    pub fn open(&self, _caller: Caller, nodeid: u64, flags: i32) -> OpResult<Arc<FileHandle>> {
        let inode = self.inode(nodeid)?;
        // The kernel resolved the path already: following the /proc link must not fail on
        // O_NOFOLLOW, and creation flags mean nothing on an existing file.
        let open_flags =
            flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        let file = sys::reopen(self.path_fd(&inode)?.as_fd(), open_flags).map_err(errno)?;
        Ok(self.register(inode, flags, file))
    }

    /// Creates `parent/name` empty as the caller, with the permission bits of `like` (an
    /// open with O_CREAT whose name vanished while it waited: the kernel's retry then
    /// finds the file, as its own O_CREAT would have made it). EEXIST is not an error.
    pub fn precreate(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        like: &Inode,
    ) -> OpResult<()> {
        let dir = self.inode(parent)?;
        let cname = sys::cstr(name).map_err(errno)?;
        let mode = sys::fstat(self.path_fd(like)?.as_fd())
            .map_err(errno)?
            .st_mode
            & 0o7777;
        let dir_fd = self.path_fd(&dir)?;
        let _creds = FsCredsGuard::become_caller(caller);
        match sys::openat(
            dir_fd.as_fd(),
            &cname,
            libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        ) {
            Ok(_file) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Creates and opens `parent/name` (O_CREAT, maybe O_EXCL) as the caller.
    pub fn create(
        &self,
        caller: Caller,
        parent: u64,
        name: &OsStr,
        mode: u32,
        flags: i32,
    ) -> OpResult<(Entry, Arc<FileHandle>)> {
        let dir = self.inode(parent)?;
        let cname = sys::cstr(name).map_err(errno)?;
        let dir_fd = self.path_fd(&dir)?;
        let file = {
            let _creds = FsCredsGuard::become_caller(caller);
            sys::openat(
                dir_fd.as_fd(),
                &cname,
                (flags | libc::O_CREAT) & !libc::O_NOCTTY,
                mode,
            )
            .map_err(errno)?
        };
        let st = sys::fstat(file.as_fd()).map_err(errno)?;
        let entry = self.entry_from_stat(&st, parent, name);
        let handle = self.register(Arc::clone(&entry.inode), flags, file);
        Ok((entry, handle))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32) -> OpResult<Vec<u8>> {
        let handle = self.file(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut done = 0;
        while done < buf.len() {
            let n =
                sys::pread(handle.fd(), &mut buf[done..], offset + done as u64).map_err(errno)?;
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> OpResult<u32> {
        let handle = self.file(fh)?;
        let n = sys::pwrite(handle.fd(), data, offset).map_err(errno)?;
        Ok(n as u32)
    }

    /// close(2) of one fd of this handle (the handle itself lives until `release`).
    pub fn flush(&self, _caller: Caller, fh: u64) -> OpResult<()> {
        self.file(fh).map(drop)
    }

    /// The last close of the handle: closes the file and drops the backing id.
    pub fn release(&self, fh: u64) -> OpResult<Arc<FileHandle>> {
        self.handles.remove_file(fh).ok_or(Errno::EBADF)
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> OpResult<()> {
        sys::fsync(self.file(fh)?.fd(), datasync).map_err(errno)
    }

    pub fn opendir(&self, nodeid: u64) -> OpResult<u64> {
        let inode = self.inode(nodeid)?;
        let stream = self.dir_stream(&inode)?;
        Ok(self.handles.insert_dir(inode, stream))
    }

    /// Runs `list` on the stream of directory handle `fh` or, when the kernel sent no
    /// OPENDIR (`fh` 0), on a stream of directory `nodeid`: the one its listing parked at
    /// `offset`, else a fresh one. `list` returns whether it read to the end; a stream
    /// that did not is parked where it stopped. A batch stops at an entry that did not
    /// fit by seeking back to it, which also drops what the C library had buffered, so a
    /// parked stream reads on from the disk below as a fresh open and seek would.
    fn with_stream(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        list: impl FnOnce(&Arc<Inode>, &mut DirStream) -> OpResult<bool>,
    ) -> OpResult<()> {
        if fh != 0 {
            let handle = self.handles.dir(fh).ok_or(Errno::EBADF)?;
            let mut stream = handle.stream.lock();
            stream.seek(offset);
            return list(&handle.inode, &mut stream).map(drop);
        }
        let dir = self.inode(nodeid)?;
        let mut stream = match self.handles.take_parked(&dir, offset) {
            Some(stream) => stream,
            None => self.dir_stream(&dir)?,
        };
        stream.seek(offset);
        if !list(&dir, &mut stream)? {
            self.handles.park(&dir, stream);
        }
        Ok(())
    }

    fn dir_stream(&self, dir: &Inode) -> OpResult<DirStream> {
        let fd = sys::reopen(
            self.path_fd(dir)?.as_fd(),
            libc::O_RDONLY | libc::O_DIRECTORY,
        )
        .map_err(errno)?;
        DirStream::open(fd).map_err(errno)
    }

    /// Reads entries of directory `nodeid` (handle `fh`, or 0 without OPENDIR) from cookie
    /// `offset`; `add(nodeid, entry)` returns true when the reply buffer is full (that
    /// entry is then returned again next time).
    pub fn readdir(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> OpResult<()> {
        self.with_stream(nodeid, fh, offset, |dir, stream| {
            let mut resume = offset;
            while let Some(entry) = stream.next_entry().map_err(errno)? {
                if add(self.nodeid_of_entry(dir, &entry), &entry) {
                    stream.rewind_to(resume);
                    return Ok(false);
                }
                resume = entry.next_offset;
            }
            Ok(true)
        })
    }

    /// Like [`Overlay::readdir`], but hands each entry over interned, with its attributes,
    /// so `find` and `ls -l` need no LOOKUP per name. Every entry but `.` and `..` takes
    /// one lookup, as LOOKUP would (the kernel links each one, or forgets it); the entry
    /// that did not fit gives its lookup back. Names gone since getdents are skipped; when
    /// interning fails otherwise (EMFILE) the reply ends early, or fails if it is empty.
    pub fn readdirplus(
        &self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(&DirEntry, &Entry) -> bool,
    ) -> OpResult<()> {
        self.with_stream(nodeid, fh, offset, |dir, stream| {
            let mut resume = offset;
            let mut added = 0usize;
            while let Some(entry) = stream.next_entry().map_err(errno)? {
                let dot = matches!(entry.name.as_bytes(), b"." | b"..");
                let found = if dot {
                    self.dot_entry(dir, &entry)
                } else {
                    self.entry_at(dir, &entry.name)
                };
                let found = match found {
                    Ok(found) => found,
                    Err(e) if e.code() == libc::ENOENT => {
                        resume = entry.next_offset;
                        continue;
                    }
                    Err(_) if added > 0 => {
                        stream.rewind_to(resume);
                        return Ok(false);
                    }
                    Err(e) => return Err(e),
                };
                if add(&entry, &found) {
                    if !dot {
                        self.inodes.forget(found.inode.nodeid, 1);
                    }
                    stream.rewind_to(resume);
                    return Ok(false);
                }
                added += 1;
                resume = entry.next_offset;
            }
            Ok(true)
        })
    }

    /// `.` or `..` for readdirplus: the kernel does not link these, so no lookup is taken;
    /// only the number matters (the same one plain readdir reports).
    fn dot_entry(&self, dir: &Arc<Inode>, entry: &DirEntry) -> OpResult<Entry> {
        let st = sys::fstat(self.path_fd(dir)?.as_fd()).map_err(errno)?;
        Ok(Entry {
            attr: to_file_attr(self.nodeid_of_entry(dir, entry), &st),
            inode: Arc::clone(dir),
        })
    }

    /// The nodeid a listing of `dir` reports for `entry`: `dir` itself for `.`, else the
    /// one the entry's inode number maps to.
    fn nodeid_of_entry(&self, dir: &Inode, entry: &DirEntry) -> u64 {
        if entry.name.as_bytes() == b"." {
            dir.nodeid
        } else {
            self.inodes.nodeid_for(InodeKey {
                dev: dir.key.dev,
                ino: entry.ino,
            })
        }
    }

    pub fn releasedir(&self, fh: u64) -> OpResult<()> {
        self.handles.remove_dir(fh).map(drop).ok_or(Errno::EBADF)
    }

    /// fsync of directory handle `fh`, or of directory `nodeid` when the kernel sent no
    /// OPENDIR (`fh` 0).
    pub fn fsyncdir(&self, nodeid: u64, fh: u64, datasync: bool) -> OpResult<()> {
        let fsync = |stream: &DirStream| {
            let fd = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
            sys::fsync(fd, datasync).map_err(errno)
        };
        if fh == 0 {
            return fsync(&self.dir_stream(&*self.inode(nodeid)?)?);
        }
        fsync(&self.handles.dir(fh).ok_or(Errno::EBADF)?.stream.lock())
    }

    pub fn statfs(&self, nodeid: u64) -> OpResult<libc::statvfs64> {
        sys::fstatvfs(self.node_fd(nodeid)?.as_fd()).map_err(errno)
    }

    pub fn setxattr(&self, nodeid: u64, name: &OsStr, value: &[u8], flags: i32) -> OpResult<()> {
        let cname = sys::cstr(name).map_err(errno)?;
        let fd = self.node_fd(nodeid)?;
        sys::setxattr(fd.as_fd(), &cname, value, flags).map_err(errno)
    }

    /// The value (size 0: only its length, as `Err`-free `Ok(len)` with an empty buffer).
    pub fn getxattr(&self, nodeid: u64, name: &OsStr, size: u32) -> OpResult<Xattr> {
        let cname = sys::cstr(name).map_err(errno)?;
        let fd = self.node_fd(nodeid)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::getxattr(fd.as_fd(), &cname, &mut buf).map_err(errno)?;
        Ok(xattr_reply(size, buf, n))
    }

    pub fn listxattr(&self, nodeid: u64, size: u32) -> OpResult<Xattr> {
        let fd = self.node_fd(nodeid)?;
        let mut buf = vec![0u8; size as usize];
        let n = sys::listxattr(fd.as_fd(), &mut buf).map_err(errno)?;
        Ok(xattr_reply(size, buf, n))
    }

    pub fn removexattr(&self, nodeid: u64, name: &OsStr) -> OpResult<()> {
        let cname = sys::cstr(name).map_err(errno)?;
        let fd = self.node_fd(nodeid)?;
        sys::removexattr(fd.as_fd(), &cname).map_err(errno)
    }

    pub fn access(&self, nodeid: u64, mask: i32) -> OpResult<()> {
        sys::access_fd(self.node_fd(nodeid)?.as_fd(), mask).map_err(errno)
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> OpResult<()> {
        sys::fallocate(self.file(fh)?.fd(), mode, offset, length).map_err(errno)
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32) -> OpResult<i64> {
        sys::lseek(self.file(fh)?.fd(), offset, whence).map_err(errno)
    }

    pub fn copy_file_range(
        &self,
        fh_in: u64,
        offset_in: u64,
        fh_out: u64,
        offset_out: u64,
        len: u64,
    ) -> OpResult<u32> {
        let input = self.file(fh_in)?;
        let output = self.file(fh_out)?;
        let len = len.min(u32::MAX as u64 / 2) as usize;
        sys::copy_file_range(input.fd(), offset_in, output.fd(), offset_out, len, 0)
            .map(|n| n as u32)
            .map_err(errno)
    }
}

/// An xattr answer: the needed size (when asked with size 0) or the bytes.
pub enum Xattr {
    Size(u32),
    Data(Vec<u8>),
}

fn xattr_reply(size: u32, mut buf: Vec<u8>, n: usize) -> Xattr {
    if size == 0 {
        Xattr::Size(n as u32)
    } else {
        buf.truncate(n);
        Xattr::Data(buf)
    }
}

fn timespec(time: Option<TimeOrNow>) -> libc::timespec {
    match time {
        None => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        Some(TimeOrNow::Now) => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        Some(TimeOrNow::SpecificTime(t)) => {
            let (secs, nanos) = match t.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => {
                    let d = e.duration();
                    let mut secs = -(d.as_secs() as i64);
                    let mut nanos = d.subsec_nanos() as i64;
                    if nanos > 0 {
                        secs -= 1;
                        nanos = 1_000_000_000 - nanos;
                    }
                    (secs, nanos)
                }
            };
            libc::timespec {
                tv_sec: secs,
                tv_nsec: nanos,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::ffi::{OsStr, OsString};
    use std::os::fd::AsFd;

    use super::*;

    const CALLER: Caller = Caller {
        pid: 1,
        uid: 0,
        gid: 0,
        unique: 0,
    };

    /// An overlay on a fresh temp dir (for tests here and in the lease layer).
    pub(crate) fn overlay() -> (tempfile::TempDir, Overlay) {
        let tmp = tempfile::tempdir().unwrap();
        let cpath = sys::cstr(tmp.path().as_os_str()).unwrap();
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let root = sys::openat(cwd, &cpath, libc::O_PATH | libc::O_DIRECTORY, 0).unwrap();
        (tmp, Overlay::new(root, 64).unwrap())
    }

    fn named(overlay: &Overlay, nodeid: u64) -> Option<(u64, String)> {
        overlay
            .path_of(nodeid)
            .map(|at| (at.parent, at.name.to_string_lossy().into_owned()))
    }

    #[test]
    fn the_core_is_shareable_across_threads() {
        fn check<T: Send + Sync>() {}
        check::<Overlay>();
        check::<Arc<FileHandle>>();
    }

    #[test]
    fn names_follow_create_rename_and_unlink() {
        let (_tmp, overlay) = overlay();
        let (entry, handle) = overlay
            .create(CALLER, ROOT_ID, OsStr::new("tmp.1"), 0o644, libc::O_WRONLY)
            .unwrap();
        let tmp_node = entry.inode.nodeid;
        assert_eq!(named(&overlay, tmp_node), Some((ROOT_ID, "tmp.1".into())));
        overlay.write(handle.fh, 0, b"new").unwrap();
        overlay.release(handle.fh).unwrap();

        let store = overlay
            .create(CALLER, ROOT_ID, OsStr::new("store"), 0o644, libc::O_WRONLY)
            .unwrap();
        overlay.release(store.1.fh).unwrap();
        let store_node = store.0.inode.nodeid;

        overlay
            .rename(
                CALLER,
                ROOT_ID,
                OsStr::new("tmp.1"),
                ROOT_ID,
                OsStr::new("store"),
                0,
            )
            .unwrap();
        assert_eq!(named(&overlay, tmp_node), Some((ROOT_ID, "store".into())));
        assert_eq!(
            named(&overlay, store_node),
            None,
            "the replaced file has no name"
        );

        let again = overlay.lookup(ROOT_ID, OsStr::new("store")).unwrap();
        assert_eq!(again.inode.nodeid, tmp_node);
        assert_eq!(again.attr.size, 3);

        overlay
            .unlink(CALLER, ROOT_ID, OsStr::new("store"))
            .unwrap();
        assert_eq!(named(&overlay, tmp_node), None);
    }

    #[test]
    fn exchange_swaps_names_and_lookups_count() {
        let (tmp, overlay) = overlay();
        std::fs::write(tmp.path().join("a"), "a").unwrap();
        std::fs::write(tmp.path().join("b"), "bb").unwrap();
        let a = overlay.lookup(ROOT_ID, OsStr::new("a")).unwrap().inode;
        let b = overlay.lookup(ROOT_ID, OsStr::new("b")).unwrap().inode;
        overlay
            .rename(
                CALLER,
                ROOT_ID,
                OsStr::new("a"),
                ROOT_ID,
                OsStr::new("b"),
                libc::RENAME_EXCHANGE,
            )
            .unwrap();
        assert_eq!(named(&overlay, a.nodeid), Some((ROOT_ID, "b".into())));
        assert_eq!(named(&overlay, b.nodeid), Some((ROOT_ID, "a".into())));

        overlay.lookup(ROOT_ID, OsStr::new("a")).unwrap();
        assert_eq!(overlay.inodes().lookups(b.nodeid), 2);
        overlay.forget(b.nodeid, 2);
        assert_eq!(overlay.inodes().lookups(b.nodeid), 0);
        assert!(overlay.inodes().get(b.nodeid).is_none(), "dropped at zero");
        assert_eq!(
            sys::fstat(overlay.path_fd(&a).unwrap().as_fd())
                .unwrap()
                .st_size,
            1
        );
    }

    #[test]
    fn nodeids_are_the_inode_numbers_below_and_hard_links_share_one() {
        let (tmp, overlay) = overlay();
        std::fs::write(tmp.path().join("f"), "x").unwrap();
        std::fs::hard_link(tmp.path().join("f"), tmp.path().join("g")).unwrap();
        let ino =
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(tmp.path().join("f")).unwrap());
        let f = overlay.lookup(ROOT_ID, OsStr::new("f")).unwrap();
        let g = overlay.lookup(ROOT_ID, OsStr::new("g")).unwrap();
        assert_eq!(f.inode.nodeid, ino);
        assert_eq!(g.inode.nodeid, ino);
        assert_eq!(overlay.inodes().lookups(ino), 2);
        assert_eq!(named(&overlay, ino), Some((ROOT_ID, "g".into())));
    }

    #[test]
    fn readdirplus_takes_one_lookup_per_name_and_gives_back_the_one_that_did_not_fit() {
        let (tmp, overlay) = overlay();
        for name in ["a", "b", "c"] {
            std::fs::write(tmp.path().join(name), name).unwrap();
        }
        let fh = overlay.opendir(ROOT_ID).unwrap();
        let mut seen = Vec::new();
        overlay
            .readdirplus(ROOT_ID, fh, 0, |entry, found| {
                if seen.len() == 4 {
                    return true;
                }
                seen.push((entry.name.clone(), found.inode.nodeid, found.attr.size));
                false
            })
            .unwrap();
        assert_eq!(seen.len(), 4, "., .. and two files fit");
        let files: Vec<_> = seen
            .iter()
            .filter(|(n, ..)| n != "." && n != "..")
            .collect();
        assert_eq!(files.len(), 2);
        for (name, nodeid, size) in &files {
            assert_eq!(overlay.inodes().lookups(*nodeid), 1, "{name:?}");
            assert_eq!(*size, 1);
        }
        assert_eq!(overlay.inodes().lookups(ROOT_ID), 1, "dots take no lookup");
        assert_eq!(overlay.inodes().count(), 3, "the root and the two that fit");
        let mut rest = Vec::new();
        overlay
            .readdirplus(ROOT_ID, fh, 0, |entry, _| {
                rest.push(entry.name.clone());
                false
            })
            .unwrap();
        assert_eq!(rest.len(), 5, "a fresh read sees every name");
        overlay.releasedir(fh).unwrap();
    }

    /// One batch of a listing without OPENDIR, as the kernel asks for it: from `offset`,
    /// at most `room` entries. Returns the names and the cookie to continue from.
    fn batch(overlay: &Overlay, offset: u64, room: usize) -> (Vec<OsString>, u64) {
        let (mut names, mut next) = (Vec::new(), offset);
        overlay
            .readdir(ROOT_ID, 0, offset, |_, entry| {
                if names.len() == room {
                    return true;
                }
                names.push(entry.name.clone());
                next = entry.next_offset;
                false
            })
            .unwrap();
        (names, next)
    }

    #[test]
    fn listings_without_opendir_continue_where_their_batch_stopped_and_keep_nothing_at_the_end() {
        let (tmp, overlay) = overlay();
        for i in 0..50 {
            std::fs::write(tmp.path().join(format!("f{i}")), "x").unwrap();
        }
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let (mut at_first, mut at_second) = (0, 0);
        loop {
            // Two listings of one directory, interleaved, in batches of different sizes.
            let (names, next) = batch(&overlay, at_first, 7);
            let first_done = names.is_empty();
            first.extend(names);
            at_first = next;
            let (names, next) = batch(&overlay, at_second, 3);
            let second_done = names.is_empty();
            second.extend(names);
            at_second = next;
            if first_done && second_done {
                break;
            }
        }
        for listing in [&mut first, &mut second] {
            listing.sort();
            let before = listing.len();
            listing.dedup();
            assert_eq!(listing.len(), before, "no name twice");
            assert_eq!(listing.len(), 52, "50 files, . and ..");
        }
        assert_eq!(
            overlay.handles.parked_count(),
            0,
            "finished listings park nothing"
        );

        // A name unlinked between batches is not listed by later ones, though the C
        // library read all 52 names into its buffer for the first batch.
        let (names, next) = batch(&overlay, 0, 10);
        std::fs::remove_file(tmp.path().join("f49")).unwrap();
        let mut rest = Vec::new();
        let mut at = next;
        loop {
            let (more, next) = batch(&overlay, at, 10);
            if more.is_empty() {
                break;
            }
            rest.extend(more);
            at = next;
        }
        let listed_first = names.iter().any(|n| n == "f49");
        assert!(
            !rest.iter().any(|n| n == "f49"),
            "f49 listed after its unlink"
        );
        let expected = if listed_first { 52 } else { 51 };
        assert_eq!(names.len() + rest.len(), expected);
    }

    #[test]
    fn errors_are_the_errno_below() {
        let (_tmp, overlay) = overlay();
        let err = overlay.lookup(ROOT_ID, OsStr::new("missing")).unwrap_err();
        assert_eq!(err.code(), libc::ENOENT);
        overlay
            .mkdir(CALLER, ROOT_ID, OsStr::new("d"), 0o755)
            .unwrap();
        let err = overlay
            .mkdir(CALLER, ROOT_ID, OsStr::new("d"), 0o755)
            .unwrap_err();
        assert_eq!(err.code(), libc::EEXIST);
    }
}
