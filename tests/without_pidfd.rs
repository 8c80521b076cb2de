//! A daemon that cannot watch exits with pidfd_open (kernels before 5.3, a seccomp policy,
//! valgrind) still serializes every cycle: failing to watch a process is not its exit.
//! The daemon here runs under a seccomp filter that answers pidfd_open with ENOSYS.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::time::Duration;

use common::cycle::Cycle;
use common::writers::{assert_clean, race};
use common::{MountGuard, state_dir};

const SYS_PIDFD_OPEN: u32 = 434;

/// Installs a seccomp filter on the calling process: pidfd_open fails with ENOSYS,
/// everything else is allowed. Inherited by the daemon `lockfs mount` starts.
fn deny_pidfd_open() -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JEQ_K: u16 = 0x15;
    const BPF_RET_K: u16 = 0x06;
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let filter = [
        // A = seccomp_data.nr
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: 1,
            k: SYS_PIDFD_OPEN,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: SECCOMP_RET_ALLOW,
        },
    ];
    let program = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &program as *const libc::sock_fprog,
            ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mount_without_pidfd(dir: &Path, args: &[&str]) -> MountGuard {
    MountGuard::mount_with(dir, args, |command| unsafe {
        command.pre_exec(deny_pidfd_open);
    })
}

#[test]
fn cycles_stay_serialized_when_exits_cannot_be_watched() {
    let (_tmp, state) = state_dir();
    let report = {
        let _mount = mount_without_pidfd(&state, &[]);
        race(&state, "S1")
    };
    eprintln!("lockfs S1 without pidfd_open:\n{}", report.summary());
    assert_clean(&report, "S1 under lockfs without pidfd_open");
}

#[test]
fn a_killed_holder_is_found_by_polling_when_exits_cannot_be_watched() {
    let (_tmp, state) = state_dir();
    std::fs::write(state.join("store.json"), "old").unwrap();
    // A maximum hold far beyond the hang guard: the waiter gets in because the holder's
    // death was found, not because its lease was revoked.
    let _mount = mount_without_pidfd(&state, &["--max-hold", "120s"]);
    let store = state.join("store.json");
    let mut holder = Cycle::start(&store, &["open", "read", "temp:new", "pause"]);
    holder.expect_line("pause ok", Duration::from_secs(20));
    let mut waiter = Cycle::start(&store, &["read"]);
    assert!(
        waiter
            .wait_line("read ok", Duration::from_millis(500))
            .is_none(),
        "the waiter waits behind the live holder"
    );
    holder.kill();
    assert!(
        holder.wait(Duration::from_secs(5)).is_some(),
        "the holder died"
    );
    waiter.expect_line("read ok", Duration::from_secs(30));
    assert!(waiter.wait(Duration::from_secs(5)).unwrap().success());
}
