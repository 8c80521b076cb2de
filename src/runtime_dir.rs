//! Where lockfs puts its sockets: one runtime directory per user, one socket per directory
//! served (a mount's control socket, a proxy daemon's endpoint).

use std::path::{Path, PathBuf};

/// The directory holding this user's sockets (created 0700 by the server that binds first):
/// `$XDG_RUNTIME_DIR/lockfs`, or `/run/lockfs` for root without it, or `<tmp>/lockfs-UID`.
#[cfg(unix)]
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("lockfs"),
        None if is_root() => PathBuf::from("/run/lockfs"),
        // SAFETY: getuid cannot fail and touches no memory.
        None => std::env::temp_dir().join(format!("lockfs-{}", unsafe { libc::getuid() })),
    }
}

/// Named pipes live in their own namespace on Windows.
#[cfg(windows)]
pub fn runtime_dir() -> PathBuf {
    PathBuf::from(r"\\.\pipe\lockfs")
}

#[cfg(unix)]
pub fn is_root() -> bool {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() == 0 }
}

/// A readable, bounded socket name for the directory `canonical`: its last component
/// (sanitized, at most 40 characters) and a hash of the whole path, so two directories never
/// share a socket and the path stays well under the 108-byte limit of `sun_path`.
pub fn socket_name(canonical: &Path) -> String {
    let readable: String = canonical
        .file_name()
        .map(|name| {
            name.to_string_lossy()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(40)
                .collect()
        })
        .unwrap_or_else(|| "root".to_string());
    format!(
        "{readable}-{:016x}.sock",
        fnv1a64(path_bytes(canonical).as_ref())
    )
}

#[cfg(unix)]
fn path_bytes(path: &Path) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(path.as_os_str().as_bytes())
}

#[cfg(not(unix))]
fn path_bytes(path: &Path) -> std::borrow::Cow<'_, [u8]> {
    std::borrow::Cow::Owned(path.to_string_lossy().into_owned().into_bytes())
}

/// FNV-1a: stable across Rust releases and platforms, unlike the std hasher.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_distinct_and_short() {
        let a = socket_name(Path::new("/home/ann/.openclaw"));
        let b = socket_name(Path::new("/home/bob/.openclaw"));
        assert_ne!(a, b);
        assert!(a.starts_with("_openclaw-") && a.ends_with(".sock"), "{a}");
        assert_eq!(a, socket_name(Path::new("/home/ann/.openclaw")));
        let long = socket_name(Path::new(&format!("/x/{}", "d".repeat(300))));
        assert!(long.len() < 70, "{long}");
    }
}
