//! Security through a real mount, with a second, unprivileged user (nobody): what another
//! user may see and do is exactly what the native permissions allow, and the daemon never
//! acts outside its root on its own behalf through a symlink.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output};

use common::cycle::python3;
use common::{MountGuard, script, state_dir};

const NOBODY: u32 = 65534;

/// Runs tests/scripts/as_other.py in `dir` as nobody (via setpriv); None if setpriv is
/// missing.
fn as_nobody(dir: &Path) -> Option<Output> {
    let script = std::fs::File::open(script("as_other.py")).unwrap();
    Command::new("setpriv")
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            python3(),
            "-",
        ])
        .arg(dir)
        .stdin(script)
        .output()
        .ok()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn running_as_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A temp dir that nobody can traverse, with state/ laid out as as_other.py expects.
fn layout() -> (tempfile::TempDir, std::path::PathBuf) {
    let (tmp, state) = state_dir();
    chmod(tmp.path(), 0o755);
    chmod(&state, 0o755);
    std::fs::write(state.join("secret"), "root only\n").unwrap();
    chmod(&state.join("secret"), 0o600);
    std::fs::write(state.join("pub"), "everyone\n").unwrap();
    chmod(&state.join("pub"), 0o644);
    std::fs::create_dir(state.join("open")).unwrap();
    chmod(&state.join("open"), 0o777);
    std::fs::create_dir(state.join("closed")).unwrap();
    std::fs::write(state.join("closed/x"), "x").unwrap();
    chmod(&state.join("closed"), 0o700);
    (tmp, state)
}

fn lines(out: &Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "as_other.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn without_allow_other_another_user_cannot_see_into_the_mount() {
    if !running_as_root() {
        println!("skipped: needs root to switch to nobody");
        return;
    }
    let (_tmp, state) = layout();
    let native = as_nobody(&state).expect("setpriv");
    assert!(lines(&native).contains(&"read pub: ok 9".to_string()));
    let _mount = MountGuard::mount(&state, &[]);
    let out = as_nobody(&state).expect("setpriv");
    let got = lines(&out);
    eprintln!("{}", got.join("\n"));
    assert_eq!(
        got,
        vec![
            "whoami: ok 65534:65534".to_string(),
            "enter dir: EACCES".to_string()
        ],
        "without --allow-other nobody must get EACCES"
    );
    // The owner still can.
    assert_eq!(
        std::fs::read_to_string(state.join("pub")).unwrap(),
        "everyone\n"
    );
}

#[test]
fn with_allow_other_permissions_are_exactly_native() {
    if !running_as_root() {
        println!("skipped: needs root to switch to nobody");
        return;
    }
    let (_tmp_native, native) = layout();
    let (_tmp, state) = layout();
    let expected = lines(&as_nobody(&native).expect("setpriv"));
    let actual = {
        let _mount = MountGuard::mount(&state, &["--allow-other"]);
        lines(&as_nobody(&state).expect("setpriv"))
    };
    eprintln!("{}", actual.join("\n"));
    let differences: Vec<String> = expected
        .iter()
        .zip(&actual)
        .filter(|(e, a)| e != a)
        .map(|(e, a)| format!("native: {e}\nmount:  {a}"))
        .collect();
    assert!(
        differences.is_empty() && expected.len() == actual.len(),
        "results differ:\n{}",
        differences.join("\n")
    );
    // The anchors, stated outright.
    for needle in [
        "read secret: EACCES",
        "read pub: ok 9",
        "create in root: EACCES",
        "create open/mine: ok 5",
        "owner open/mine: ok 65534:65534 0o100644",
        "owner open/d: ok 65534:65534 0o40755",
        "owner open/s.json: ok 65534:65534 0o100644",
    ] {
        assert!(
            actual.iter().any(|l| l == needle),
            "missing {needle:?} in {actual:?}"
        );
    }
    // And on the disk below, after unmounting: the files nobody made belong to nobody.
    let meta = std::fs::symlink_metadata(state.join("open/s.json")).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (NOBODY, NOBODY));
    assert_eq!(
        std::fs::read_to_string(state.join("secret")).unwrap(),
        "root only\n"
    );
}

/// What a file outside the root looks like: content and mtime.
fn snapshot(path: &Path) -> (String, i64, i64, u32) {
    let meta = std::fs::metadata(path).unwrap();
    (
        std::fs::read_to_string(path).unwrap(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.mode(),
    )
}

#[test]
fn the_daemon_never_acts_outside_its_root_through_a_symlink() {
    let (tmp, state) = state_dir();
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target = outside.join("store.json");
    std::fs::write(&target, r#"{"outside": true}"#).unwrap();
    let before = snapshot(&target);
    std::os::unix::fs::symlink(&target, state.join("abs.json")).unwrap();
    std::os::unix::fs::symlink("../outside/store.json", state.join("rel.json")).unwrap();
    std::os::unix::fs::symlink(&outside, state.join("outdir")).unwrap();
    let mount = MountGuard::mount(&state, &[]);

    // Reading through the link is the kernel's resolution (native behaviour).
    assert_eq!(
        std::fs::read_to_string(state.join("abs.json")).unwrap(),
        r#"{"outside": true}"#
    );
    // lchown / utimensat(AT_SYMLINK_NOFOLLOW) / rename / unlink act on the link itself.
    let c = std::ffi::CString::new(state.join("abs.json").to_str().unwrap()).unwrap();
    let times = [libc::timespec {
        tv_sec: 1,
        tv_nsec: 0,
    }; 2];
    assert_eq!(
        unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c.as_ptr(),
                times.as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        },
        0
    );
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), 0, 0) }, 0);
    // A load-modify-save cycle whose target is a symlink out of the root: the rename
    // replaces the link (as natively), the file outside is untouched.
    for name in ["abs.json", "rel.json"] {
        let link = state.join(name);
        let text = std::fs::read_to_string(&link).unwrap();
        assert_eq!(text, r#"{"outside": true}"#);
        let tmp_file = state.join(format!("{name}.tmp"));
        std::fs::write(&tmp_file, r#"{"inside": true}"#).unwrap();
        std::fs::rename(&tmp_file, &link).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());
        assert_eq!(
            snapshot(&target),
            before,
            "the file outside changed via {name}"
        );
    }
    // Renaming and unlinking a link to an outside dir moves the link only.
    std::fs::rename(state.join("outdir"), state.join("outdir2")).unwrap();
    std::fs::remove_file(state.join("outdir2")).unwrap();
    assert!(outside.is_dir());
    assert_eq!(snapshot(&target), before);
    drop(mount);
    assert_eq!(snapshot(&target), before, "after unmount");
    assert_eq!(
        std::fs::read_to_string(state.join("abs.json")).unwrap(),
        r#"{"inside": true}"#
    );
}
