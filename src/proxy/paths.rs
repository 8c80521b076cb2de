//! Client paths, checked and resolved strictly beneath the served root.
//!
//! A path from the wire is untrusted: it must be relative, without `..`, and every
//! directory on the way must resolve inside the root without following a symlink out
//! (openat2 with RESOLVE_BENEATH; a component walk with O_NOFOLLOW where openat2 is
//! missing). The last component is never followed: renames and unlinks act on the name.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::protocol::ErrorCode;
use crate::sys;

/// A wire path made canonical: components joined by `/`, no `.`, no empty parts.
pub fn normalize(path: &str) -> Result<String, (ErrorCode, String)> {
    let refuse = |why: &str| (ErrorCode::PathEscape, format!("{why}: {path:?}"));
    if path.contains('\0') {
        return Err(refuse("path holds a NUL byte"));
    }
    if path.starts_with('/') || path.starts_with('\\') {
        return Err(refuse(
            "absolute paths are refused; send a path relative to the root",
        ));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => continue,
            ".." => return Err(refuse("`..` is refused")),
            _ => parts.push(part),
        }
    }
    if parts.is_empty() {
        return Err((ErrorCode::BadRequest, "the path names no file".into()));
    }
    Ok(parts.join("/"))
}

/// The served directory, held open so that later renames of its path do not matter.
pub struct Root {
    dir: OwnedFd,
    path: PathBuf,
}

impl Root {
    pub fn open(path: &Path) -> io::Result<Root> {
        let canonical = path.canonicalize()?;
        let name = CString::new(canonical.as_os_str().as_bytes())?;
        // SAFETY: AT_FDCWD is a valid directory for the length of this call.
        let cwd = unsafe { BorrowedFd::borrow_raw(libc::AT_FDCWD) };
        let dir = sys::openat(cwd, &name, libc::O_PATH | libc::O_DIRECTORY, 0)?;
        Ok(Root {
            dir,
            path: canonical,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory holding `normalized` (opened beneath the root) and the last name.
    pub fn parent_of(&self, normalized: &str) -> io::Result<(OwnedFd, CString)> {
        let (dir, name) = match normalized.rsplit_once('/') {
            Some((dir, name)) => (dir, name),
            None => (".", normalized),
        };
        let name = CString::new(name)?;
        Ok((self.open_dir_beneath(dir)?, name))
    }

    fn open_dir_beneath(&self, dir: &str) -> io::Result<OwnedFd> {
        let path = CString::new(dir)?;
        match sys::openat2_beneath(self.dir.as_fd(), &path, libc::O_PATH | libc::O_DIRECTORY) {
            Err(err) if err.raw_os_error() == Some(libc::ENOSYS) => self.walk_beneath(dir),
            other => other,
        }
    }

    fn walk_beneath(&self, dir: &str) -> io::Result<OwnedFd> {
        let open_dir = |at: BorrowedFd<'_>, name: &str, extra: i32| {
            let name = CString::new(name)?;
            sys::openat(at, &name, libc::O_PATH | libc::O_DIRECTORY | extra, 0)
        };
        let mut current = open_dir(self.dir.as_fd(), ".", 0)?;
        for part in dir
            .split('/')
            .filter(|part| !part.is_empty() && *part != ".")
        {
            current = open_dir(current.as_fd(), part, libc::O_NOFOLLOW)?;
        }
        Ok(current)
    }

    /// Renames `temp` onto `target`, both beneath the root; `temp` must be a regular file.
    pub fn rename(&self, temp: &str, target: &str) -> io::Result<()> {
        let (temp_dir, temp_name) = self.parent_of(temp)?;
        let (target_dir, target_name) = self.parent_of(target)?;
        let st = sys::fstatat(temp_dir.as_fd(), &temp_name, libc::AT_SYMLINK_NOFOLLOW)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the temp file is not a regular file",
            ));
        }
        sys::renameat2(
            temp_dir.as_fd(),
            &temp_name,
            target_dir.as_fd(),
            &target_name,
            0,
        )
    }

    /// Removes the name `path` beneath the root (never what a symlink points to).
    pub fn remove(&self, path: &str) -> io::Result<()> {
        let (dir, name) = self.parent_of(path)?;
        sys::unlinkat(dir.as_fd(), &name, 0)
    }
}

/// How an OS error on a client path reads on the wire.
pub fn error_code(err: &io::Error) -> ErrorCode {
    match err.raw_os_error() {
        Some(libc::EXDEV | libc::ELOOP | libc::ENOTDIR) => ErrorCode::PathEscape,
        Some(libc::ENOENT) => ErrorCode::NotFound,
        _ => ErrorCode::Io,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_refused_and_harmless_forms_normalized() {
        assert_eq!(normalize("a//./b.json").unwrap(), "a/b.json");
        assert_eq!(normalize("./store.json").unwrap(), "store.json");
        for bad in ["/etc/passwd", "../x", "a/../../x", "a/..", "x\0y"] {
            assert_eq!(
                normalize(bad).unwrap_err().0,
                ErrorCode::PathEscape,
                "{bad}"
            );
        }
        assert_eq!(normalize("./").unwrap_err().0, ErrorCode::BadRequest);
    }

    #[test]
    fn symlinked_directories_out_of_the_root_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let root_dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root_dir.path().join("out")).unwrap();
        std::fs::create_dir(root_dir.path().join("in")).unwrap();
        std::fs::write(outside.path().join("t"), b"x").unwrap();
        let root = Root::open(root_dir.path()).unwrap();
        let err = root.parent_of("out/t").unwrap_err();
        assert_eq!(error_code(&err), ErrorCode::PathEscape);
        let err = root.walk_beneath("out").unwrap_err();
        assert_eq!(error_code(&err), ErrorCode::PathEscape);
        assert!(root.parent_of("in/t").is_ok());
        assert!(root.rename("out/t", "in/t").is_err());
        assert!(outside.path().join("t").exists());
    }

    #[test]
    fn rename_moves_a_temp_and_refuses_a_directory() {
        let root_dir = tempfile::tempdir().unwrap();
        std::fs::write(root_dir.path().join("t"), b"new").unwrap();
        std::fs::create_dir(root_dir.path().join("d")).unwrap();
        let root = Root::open(root_dir.path()).unwrap();
        root.rename("t", "s").unwrap();
        assert_eq!(std::fs::read(root_dir.path().join("s")).unwrap(), b"new");
        assert!(root.rename("d", "s").is_err());
    }
}
