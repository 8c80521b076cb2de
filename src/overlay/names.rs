//! How the overlay names files to the lease driver, and which files it manages: a key is
//! the directory's nodeid and the name there; a path is relative to the mount root.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use super::inodes::{Inode, InodeKey, ROOT_ID};
use super::passthrough::Overlay;
use crate::sys;

/// Tells, from a path relative to the mount root, whether the user excluded a file.
pub type ExcludeFn = Box<dyn Fn(&str) -> bool + Send + Sync>;

/// A file as the lease driver names it: its directory's nodeid and its name there.
pub type FileKey = (u64, OsString);

pub struct Names {
    core: Arc<Overlay>,
    excludes: Option<ExcludeFn>,
}

impl Names {
    pub fn new(core: Arc<Overlay>, excludes: Option<ExcludeFn>) -> Names {
        Names { core, excludes }
    }

    /// The managed file behind `nodeid`: a regular file still linked under a name that is
    /// not left alone.
    pub fn managed_inode(&self, nodeid: u64) -> Option<(FileKey, Arc<Inode>)> {
        let inode = self.core.inodes().get(nodeid)?;
        if inode.file_type != libc::S_IFREG {
            return None;
        }
        // A replaced file keeps its former name: an open that reached it late must still
        // take the lease on that name, then be sent to look the name up again.
        let named = inode.last_name()?;
        let key = (named.parent, named.name);
        self.is_managed(&key).then_some((key, inode))
    }

    /// Whether the name `parent/name` is one whose cycles are serialized.
    pub fn is_managed(&self, key: &FileKey) -> bool {
        let ancestors = self.ancestor_names(key.0);
        if left_alone(&key.1, ancestors[0].as_deref())
            || in_git_object_store(ancestors.each_ref().map(|name| name.as_deref()))
        {
            return false;
        }
        match &self.excludes {
            Some(excluded) => !excluded(&self.path_of(key)),
            None => true,
        }
    }

    /// The names of directory `dir` and of its parent and grandparent (None above the
    /// root or for a directory the overlay no longer knows by name).
    fn ancestor_names(&self, dir: u64) -> [Option<OsString>; 3] {
        let mut names: [Option<OsString>; 3] = Default::default();
        let mut next = Some(dir);
        for slot in &mut names {
            let Some(named) = next
                .filter(|dir| *dir != ROOT_ID)
                .and_then(|dir| self.core.inodes().get(dir))
                .and_then(|inode| inode.named_at())
            else {
                break;
            };
            next = Some(named.parent);
            *slot = Some(named.name);
        }
        names
    }

    /// The path of `key` relative to the mount root (lossy for non-UTF-8 names).
    pub fn path_of(&self, key: &FileKey) -> String {
        let mut parts = vec![key.1.clone()];
        let mut dir = key.0;
        while dir != ROOT_ID {
            match self
                .core
                .inodes()
                .get(dir)
                .and_then(|inode| inode.named_at())
            {
                Some(named) => {
                    parts.push(named.name);
                    dir = named.parent;
                }
                None => {
                    parts.push(OsString::from("?"));
                    break;
                }
            }
        }
        parts.reverse();
        parts
            .iter()
            .map(|part| part.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/")
    }

    pub fn key_of_path(&self, path: &str) -> Option<FileKey> {
        let mut dir = ROOT_ID;
        let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                return Some((dir, OsString::from(part)));
            }
            let inode = self.core.inodes().get(dir)?;
            let cname = sys::cstr(OsStr::new(part)).ok()?;
            let st = self.core.inodes().stat_child(&inode, &cname).ok()?;
            dir = self.core.inodes().find(InodeKey::of(&st))?.nodeid;
        }
        None
    }

    /// Whether `key` still names `inode`: a waiter granted after a rename-over must look
    /// the name up again rather than open the replaced file.
    pub fn still_named(&self, key: &FileKey, inode: &Inode) -> bool {
        self.core
            .inodes()
            .stat_named(key.0, &key.1)
            .is_some_and(|st| InodeKey::of(&st) == inode.key)
    }

    pub fn names_ino(&self, parent: u64, name: &OsStr, ino: u64) -> bool {
        self.core
            .inodes()
            .stat_named(parent, name)
            .is_some_and(|st| st.st_ino == ino)
    }
}

/// Files whose programs coordinate by themselves: SQLite and its journals (byte-range
/// locks and shared memory must keep working), lock files and anything inside lock dirs.
pub fn left_alone(name: &OsStr, parent_name: Option<&OsStr>) -> bool {
    let name = name.as_bytes();
    const SUFFIXES: [&[u8]; 8] = [
        b".sqlite",
        b".sqlite3",
        b".db",
        b"-wal",
        b"-shm",
        b"-journal",
        b".lock",
        b".lck",
    ];
    if SUFFIXES.iter().any(|suffix| name.ends_with(suffix)) {
        return true;
    }
    parent_name.is_some_and(|parent| parent.as_bytes().ends_with(b".lock"))
}

/// Whether a missing name looks like a file's: it has an extension (`store.json`,
/// `state.dir`, `store.json.tmp`), not only a leading dot (`.config`). Only such a name
/// is claimed by the first process that finds it missing (see `lease/claims.rs`): a
/// placeholder at a name that becomes a directory would turn a path walk through it
/// into ENOTDIR and a `mkdir` of it into EEXIST.
pub fn looks_like_a_file(name: &OsStr) -> bool {
    let name = name.as_bytes();
    let start = name.iter().take_while(|&&b| b == b'.').count();
    name[start..]
        .iter()
        .rposition(|&b| b == b'.')
        .is_some_and(|dot| dot > 0 && start + dot + 1 < name.len())
}

/// Whether a file whose directory and its two ancestors are named `dirs` (nearest first)
/// is in a git object store: `.git/objects/ab/<sha>`, `.git/objects/pack/pack-*.pack`,
/// `.git/objects/info/*`, or the same under a bare `repo.git/objects`. Objects and packs
/// are content-addressed and written once (a temp file linked or renamed into place),
/// and git guards the few files it rewrites there with its own `.lock` files, so there
/// is no load-modify-save cycle to serialize; leased, `git gc` ran at 4x native (a read
/// cycle for each of about 2,000 object reads and a write for each of 1,000 unlinks).
pub fn in_git_object_store(dirs: [Option<&OsStr>; 3]) -> bool {
    let is_git_dir = |name: Option<&OsStr>| name.is_some_and(|n| n.as_bytes().ends_with(b".git"));
    let objects = |name: Option<&OsStr>| name.is_some_and(|n| n.as_bytes() == b"objects");
    (objects(dirs[0]) && is_git_dir(dirs[1])) || (objects(dirs[1]) && is_git_dir(dirs[2]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_object_stores_are_left_alone() {
        fn dirs(names: [&str; 3]) -> [Option<&OsStr>; 3] {
            names.map(|n| (!n.is_empty()).then(|| OsStr::new(n)))
        }
        for store in [
            ["ab", "objects", ".git"],
            ["pack", "objects", ".git"],
            ["info", "objects", "repo.git"],
            ["objects", ".git", "project"],
            ["objects", "repo.git", ""],
        ] {
            assert!(in_git_object_store(dirs(store)), "{store:?}");
        }
        for other in [
            ["refs", ".git", "project"],
            [".git", "project", ""],
            ["ab", "objects", "state"],
            ["objects", "state", ""],
            ["ab", "objects", "legit"],
            ["", "", ""],
        ] {
            assert!(!in_git_object_store(dirs(other)), "{other:?}");
        }
    }

    #[test]
    fn only_names_with_an_extension_look_like_files() {
        for file in [
            "store.json",
            "state.dir",
            "store.json.tmp",
            ".env.local",
            "a.b",
        ] {
            assert!(looks_like_a_file(OsStr::new(file)), "{file}");
        }
        for other in ["configstore", "race-S1", ".config", ".git", "x.", "..", "."] {
            assert!(!looks_like_a_file(OsStr::new(other)), "{other}");
        }
    }

    #[test]
    fn sqlite_and_lock_files_are_left_alone() {
        for name in [
            "app.sqlite",
            "x.db",
            "x.db-wal",
            "x.db-shm",
            "j-journal",
            "s.jsonl.lock",
        ] {
            assert!(left_alone(OsStr::new(name), None), "{name}");
        }
        assert!(left_alone(
            OsStr::new("pid"),
            Some(OsStr::new("store.json.lock"))
        ));
        assert!(!left_alone(
            OsStr::new("store.json"),
            Some(OsStr::new("state"))
        ));
    }
}
