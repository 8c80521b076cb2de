//! State directories with more files than the daemon may open: the daemon keeps no fd per
//! file the kernel knows, so a tree larger than its open file limit is served whole.

mod common;

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use common::{MountGuard, lockfs, read_pid, state_dir};

/// The daemon's open file limit in these tests: far below the number of files.
const DAEMON_NOFILE: u64 = 256;
const DIRS: usize = 20;
const FILES_PER_DIR: usize = 250;

fn make_tree(root: &Path) {
    for d in 0..DIRS {
        let dir = root.join(format!("d{d}"));
        std::fs::create_dir(&dir).unwrap();
        for f in 0..FILES_PER_DIR {
            std::fs::write(dir.join(format!("f{f}")), format!("{d}/{f}")).unwrap();
        }
    }
}

/// Mounts `dir` with the daemon's open file limit (soft and hard) set to DAEMON_NOFILE.
fn mount_with_few_fds(dir: &Path, pid_file: &Path) -> MountGuard {
    let pid_arg = pid_file.to_str().unwrap().to_string();
    MountGuard::mount_with(dir, &["--pid-file", &pid_arg], |command| unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: DAEMON_NOFILE,
                rlim_max: DAEMON_NOFILE,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    })
}

/// lstat()s every file of the directories `dirs` through the mount, so the kernel knows
/// them all; panics at the first error.
fn stat_tree(state: &Path, dirs: std::ops::Range<usize>) {
    for d in dirs {
        for f in 0..FILES_PER_DIR {
            std::fs::symlink_metadata(state.join(format!("d{d}/f{f}"))).unwrap();
        }
    }
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn counter(dir: &Path, name: &str) -> u64 {
    let out = lockfs(&["status", dir.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {report}"))
}

#[test]
fn a_tree_larger_than_the_daemons_fd_limit_is_served_without_errors() {
    let (tmp, state) = state_dir();
    make_tree(&state);
    let pid_file = tmp.path().join("daemon.pid");
    let _mount = mount_with_few_fds(&state, &pid_file);
    let pid = read_pid(&pid_file);

    let mut errors = Vec::new();
    let mut seen = 0;
    for d in 0..DIRS {
        for f in 0..FILES_PER_DIR {
            let path = state.join(format!("d{d}/f{f}"));
            match std::fs::symlink_metadata(&path) {
                Ok(_) => seen += 1,
                Err(e) => errors.push(format!("stat {}: {e}", path.display())),
            }
            if f % 25 == 0 {
                match std::fs::read_to_string(&path) {
                    Ok(text) if text == format!("{d}/{f}") => {}
                    other => errors.push(format!("read {}: {other:?}", path.display())),
                }
            }
        }
    }
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );
    assert_eq!(seen, DIRS * FILES_PER_DIR);

    let known = counter(&state, "inodes_known");
    assert!(
        known as usize > DIRS * FILES_PER_DIR / 2,
        "the kernel knows the files ({known})"
    );
    let fds = open_fds(pid);
    assert!(
        (fds as u64) < DAEMON_NOFILE,
        "the daemon holds {fds} fds for {known} inodes"
    );
    assert!(counter(&state, "fds_cached") <= counter(&state, "fd_cache_size"));

    // Still usable: create, write and read back a new file.
    std::fs::write(state.join("d0/new.json"), "{\"new\":true}").unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("d0/new.json")).unwrap(),
        "{\"new\":true}"
    );
}

#[test]
fn identity_survives_renames_links_and_unlinks_without_an_fd_per_file() {
    let (tmp, state) = state_dir();
    make_tree(&state);
    let pid_file = tmp.path().join("daemon.pid");
    let _mount = mount_with_few_fds(&state, &pid_file);

    // Every file is known to the kernel, most without a cached fd in the daemon.
    let ino_before = std::fs::metadata(state.join("d3/f7")).unwrap().ino();
    stat_tree(&state, 0..DIRS);
    // A directory renamed: its files are reached by their new path, same inodes.
    std::fs::rename(state.join("d3"), state.join("moved")).unwrap();
    let moved = state.join("moved/f7");
    assert_eq!(std::fs::metadata(&moved).unwrap().ino(), ino_before);
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), "3/7");
    std::fs::write(&moved, "rewritten").unwrap();
    assert_eq!(std::fs::read_to_string(&moved).unwrap(), "rewritten");

    // A hard link shares the inode; unlinking the first name leaves the second intact.
    std::fs::hard_link(&moved, state.join("d4/link")).unwrap();
    assert_eq!(
        std::fs::metadata(state.join("d4/link")).unwrap().ino(),
        ino_before
    );
    std::fs::remove_file(&moved).unwrap();
    assert_eq!(
        std::fs::read_to_string(state.join("d4/link")).unwrap(),
        "rewritten"
    );

    // A file unlinked while open stays usable through its open fd, fstat included.
    let open = std::fs::File::open(state.join("d5/f1")).unwrap();
    std::fs::remove_file(state.join("d5/f1")).unwrap();
    stat_tree(&state, 6..DIRS);
    let meta = open.metadata().unwrap();
    assert_eq!(meta.nlink(), 0);
    assert_eq!(std::io::read_to_string(&open).unwrap(), "5/1");
    assert!(counter(&state, "fds_pinned") >= 1);
}

/// When the kernel forgets inodes (here: told to drop its inode and dentry caches), the
/// daemon forgets them too.
#[test]
fn the_daemon_forgets_what_the_kernel_forgets() {
    let (tmp, state) = state_dir();
    make_tree(&state);
    let pid_file = tmp.path().join("daemon.pid");
    let _mount = mount_with_few_fds(&state, &pid_file);
    stat_tree(&state, 0..DIRS);
    let known = counter(&state, "inodes_known");
    assert!(known as usize >= DIRS * FILES_PER_DIR, "{known}");
    if std::fs::write("/proc/sys/vm/drop_caches", "2").is_err() {
        eprintln!("cannot write /proc/sys/vm/drop_caches (not root?): skipping the check");
        return;
    }
    let forgotten = common::wait_until(std::time::Duration::from_secs(30), || {
        counter(&state, "inodes_known") < known / 2
    });
    assert!(
        forgotten,
        "the daemon still knows {} inodes after the kernel dropped its caches",
        counter(&state, "inodes_known")
    );
}

/// A user's mount (through fusermount3) serves the same tree with as few fds. /dev/fuse is
/// root-only on this kind of machine, so the test runs in a private mount namespace where
/// a world-usable node of the same device stands in for it, as on a desktop system.
#[test]
fn an_unprivileged_mount_serves_a_tree_larger_than_its_fd_limit() {
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to make the namespace and switch to nobody");
        return;
    }
    let (tmp, state) = state_dir();
    make_tree(&state);
    let fuse_node = tmp.path().join("fuse");
    let script = format!(
        r#"set -e
mknod -m 666 '{node}' c 10 229
mount --bind '{node}' /dev/fuse
exec setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '
ulimit -n {nofile}
trap "{lockfs} unmount {state} 2>/dev/null || fusermount3 -uz {state}" EXIT
{lockfs} mount {state} --pid-file {tmp}/user.pid
grep -c " {state} .* fuse.lockfs " /proc/self/mountinfo
find {state} -type f -exec stat -c %s {{}} + | wc -l
echo made > {state}/d0/by-nobody && cat {state}/d0/by-nobody
ls /proc/$(cat {tmp}/user.pid)/fd | wc -l
'
"#,
        node = fuse_node.display(),
        nofile = DAEMON_NOFILE,
        lockfs = common::LOCKFS,
        state = state.display(),
        tmp = tmp.path().display(),
    );
    let mut paths = vec![tmp.path().to_path_buf(), state.clone()];
    for d in 0..DIRS {
        paths.push(state.join(format!("d{d}")));
    }
    for path in &paths {
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
    }
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .expect("run unshare");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let lines: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert_eq!(
        lines[0], "1",
        "mounted by nobody through fusermount3: {stdout}"
    );
    assert_eq!(
        lines[1],
        (DIRS * FILES_PER_DIR).to_string(),
        "every file stat'ed; stderr:\n{stderr}"
    );
    assert_eq!(lines[2], "made");
    let fds: u64 = lines[3].parse().unwrap();
    assert!(fds < DAEMON_NOFILE, "the user's daemon holds {fds} fds");
    assert!(stderr.trim().is_empty(), "no errors: {stderr}");
    assert_eq!(
        std::fs::read_to_string(state.join("d0/by-nobody")).unwrap(),
        "made\n",
        "the file reached the directory below"
    );
}
