//! Where a mount's control socket lives.
//!
//! `$XDG_RUNTIME_DIR/lockfs/` (or `/run/lockfs/` for root without one, `/tmp/lockfs-UID/`
//! for anyone else), one socket per mount, named after the canonical mount directory.

use std::path::{Component, Path, PathBuf};

use crate::runtime_dir::{is_root, runtime_dir, socket_name};

/// The socket of the mount over `mount_dir`, in the runtime dir of the calling user.
///
/// The daemon must call this before it mounts: resolving the path touches only the parent of
/// `mount_dir`, except when `mount_dir` itself is a symlink.
pub fn socket_path_for(mount_dir: &Path) -> PathBuf {
    runtime_dir().join(socket_name(&canonical_mount_dir(mount_dir)))
}

/// Every place a socket for `mount_dir` may be, most likely first: the daemon may have run
/// with or without `XDG_RUNTIME_DIR` (root under sudo, under systemd).
pub fn socket_candidates_for(mount_dir: &Path) -> Vec<PathBuf> {
    let name = socket_name(&canonical_mount_dir(mount_dir));
    let mut dirs = vec![runtime_dir()];
    if is_root() {
        for dir in [
            PathBuf::from("/run/lockfs"),
            PathBuf::from("/run/user/0/lockfs"),
        ] {
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
    }
    dirs.into_iter().map(|dir| dir.join(&name)).collect()
}

/// `mount_dir` made absolute with its parent resolved. The mount point itself is not
/// stat'ed unless it is a symlink, so this works on a dead mount (which answers ENOTCONN
/// or ECONNABORTED).
pub fn canonical_mount_dir(mount_dir: &Path) -> PathBuf {
    let absolute = lexically_absolute(mount_dir);
    let (Some(parent), Some(name)) = (absolute.parent(), absolute.file_name()) else {
        return absolute;
    };
    let joined = std::fs::canonicalize(parent)
        .unwrap_or_else(|_| parent.to_path_buf())
        .join(name);
    match std::fs::symlink_metadata(&joined) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::canonicalize(&joined).unwrap_or(joined)
        }
        _ => joined,
    }
}

/// `path` made absolute against the current directory, with `.` and `..` removed by text.
pub fn lexically_absolute(path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("/"))
            .join(path)
    };
    let mut normal = PathBuf::from("/");
    for component in joined.components() {
        match component {
            Component::Normal(part) => normal.push(part),
            Component::ParentDir => {
                normal.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    normal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_absolute_drops_dots() {
        assert_eq!(
            lexically_absolute(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
    }

    #[test]
    fn same_dir_spelled_differently_gives_one_socket() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        let dotted = temp.path().join("state/../state/.");
        assert_eq!(socket_path_for(&dir), socket_path_for(&dotted));
    }
}
