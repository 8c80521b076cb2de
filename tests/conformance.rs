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
