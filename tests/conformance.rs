//! pjdfstest and fsx through a lockfs mount (scripts/conformance.sh); slow and needs root,
//! so it runs only with LOCKFS_CONFORMANCE=1.

mod common;

use std::process::Command;

#[test]
fn pjdfstest_and_fsx_pass_through_the_mount_as_natively() {
    if std::env::var("LOCKFS_CONFORMANCE").as_deref() != Ok("1") {
        println!("skipped: set LOCKFS_CONFORMANCE=1 to run scripts/conformance.sh (needs root)");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/conformance.sh");
    let status = Command::new("bash")
        .arg(script)
        .arg(common::LOCKFS)
        .status()
        .expect("run scripts/conformance.sh");
    assert!(status.success(), "conformance failed; see the output above");
}

/// stress-ng (--rename --link --flock --lockf --iomix --dentry --verify) through a mount
/// for LOCKFS_STRESS_SECS (default 10) in each data path: clean, as natively.
#[test]
fn stress_ng_through_the_mount_is_clean() {
    if Command::new("stress-ng").arg("--version").output().is_err() {
        println!("skipped: stress-ng is not installed (scripts/setup.sh installs it)");
        return;
    }
    let secs = std::env::var("LOCKFS_STRESS_SECS").unwrap_or_else(|_| "10".to_string());
    for args in [&[][..], &["--no-passthrough"][..]] {
        let (_tmp, state) = common::state_dir();
        let _mount = common::MountGuard::mount(&state, args);
        let work = state.join("stress");
        std::fs::create_dir(&work).unwrap();
        let out = Command::new("stress-ng")
            .arg("--temp-path")
            .arg(&work)
            .args([
                "--rename",
                "1",
                "--link",
                "1",
                "--flock",
                "1",
                "--lockf",
                "1",
                "--iomix",
                "1",
                "--dentry",
                "1",
                "--verify",
                "--metrics-brief",
                "--timeout",
            ])
            .arg(format!("{secs}s"))
            .output()
            .expect("run stress-ng");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("stress-ng {args:?}:\n{text}");
        // Exit 7 alone means a stressor was stopped at the timeout inside a bogo-op
        // counter update: its metrics are untrustworthy, the file system is not at fault.
        let metrics_only = out.status.code() == Some(7) && !text.contains("fail:");
        assert!(
            out.status.success() || metrics_only,
            "stress-ng failed through the mount {args:?} ({}):\n{text}",
            out.status
        );
        assert!(
            !text.contains("fail:"),
            "stress-ng reported failures {args:?}"
        );
    }
}
