use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use parking_lot::Mutex;

use super::ProcessId;
use crate::fastmap::HashMap;

const SIGKILL_BIT: u64 = 1 << (libc::SIGKILL - 1);

/// The thread group (process) id of thread `tid`.
pub fn tgid_of(tid: u32) -> io::Result<u32> {
    let status = fs::read_to_string(format!("/proc/{tid}/status"))?;
    status_field(&status, "Tgid:")
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| io::Error::other("no Tgid in /proc status"))
}

/// Start time of process `pid`, in clock ticks since boot.
pub fn start_time(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| io::Error::other("malformed /proc stat"))
}

/// The process that thread `tid` belongs to.
pub fn process_of_thread(tid: u32) -> io::Result<ProcessId> {
    let pid = tgid_of(tid)?;
    Ok(ProcessId {
        pid,
        start_time: start_time(pid)?,
    })
}

/// The process `pid` now, named with its start time.
pub fn process(pid: u32) -> io::Result<ProcessId> {
    Ok(ProcessId {
        pid,
        start_time: start_time(pid)?,
    })
}

/// Whether `process` is still the one running under its pid (a zombie has exited).
pub fn is_alive(process: ProcessId) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", process.pid)) else {
        return false;
    };
    parse_start_time(&stat) == Some(process.start_time)
        && stat_fields(&stat).and_then(|mut fields| fields.next()) != Some("Z")
}

/// The parent of `process`, while both live; None for children of init or of nobody.
pub fn parent_of(process: ProcessId) -> Option<ProcessId> {
    let stat = fs::read_to_string(format!("/proc/{}/stat", process.pid)).ok()?;
    if parse_start_time(&stat) != Some(process.start_time) {
        return None;
    }
    let ppid: u32 = stat_fields(&stat)?.nth(1)?.parse().ok()?;
    if ppid <= 1 {
        return None;
    }
    let parent = self::process(ppid).ok()?;
    // A parent younger than its child is a recycled pid (the real parent is gone).
    (parent.start_time <= process.start_time).then_some(parent)
}

/// Fields 3.. of a /proc stat line (state, ppid, ...).
fn stat_fields(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace())
}

/// True when thread `tid` is gone or has SIGKILL pending: a request it waits on can be
/// answered at once, since the kernel ignores FUSE interrupts we do not act on.
pub fn thread_is_dying(tid: u32) -> bool {
    let Ok(status) = fs::read_to_string(format!("/proc/{tid}/status")) else {
        return true;
    };
    if status_field(&status, "State:").is_some_and(|state| state.starts_with('Z')) {
        return true;
    }
    ["SigPnd:", "ShdPnd:"].iter().any(|field| {
        status_field(&status, field)
            .and_then(|mask| u64::from_str_radix(mask, 16).ok())
            .is_some_and(|mask| mask & SIGKILL_BIT != 0)
    })
}

/// The command line of `pid`, with arguments joined by spaces ("?" when unreadable).
pub fn command_line(pid: u32) -> String {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(bytes) if !bytes.is_empty() => bytes
            .split(|b| *b == 0)
            .filter(|part| !part.is_empty())
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect::<Vec<_>>()
            .join(" "),
        _ => fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|comm| format!("[{}]", comm.trim()))
            .unwrap_or_else(|_| "?".to_string()),
    }
}

fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .map(str::trim)
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // The command name may hold spaces and parentheses: fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' come fields 3.. ; start time is field 22, the 20th of these.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The process and user at the other end of a Unix socket, from SO_PEERCRED: what the
/// kernel says, never what the peer claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCredentials {
    pub pid: u32,
    pub uid: u32,
}

pub fn peer_credentials(stream: &impl AsRawFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` describe a valid ucred buffer.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(PeerCredentials {
        pid: u32::try_from(cred.pid).unwrap_or(0),
        uid: cred.uid,
    })
}

/// Calls back once when a watched process exits, noticed through a pidfd (not polling).
/// Its thread stops when the watch is dropped.
pub struct ExitWatch {
    inner: Arc<Watched>,
}

struct Watched {
    epoll: OwnedFd,
    /// An eventfd in the epoll set: written when the watch is dropped.
    stop: OwnedFd,
    watched: Mutex<HashMap<ProcessId, OwnedFd>>,
    by_fd: Mutex<HashMap<RawFd, ProcessId>>,
}

/// The epoll token of the stop eventfd (pidfds are registered under their fd number).
const STOP_TOKEN: u64 = u64::MAX;

impl ExitWatch {
    /// Starts the watcher thread; `on_exit` runs on it for each watched process that exits.
    pub fn start(on_exit: impl Fn(ProcessId) + Send + 'static) -> io::Result<Arc<ExitWatch>> {
        // SAFETY: epoll_create1 returns a new fd or -1.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: epoll is a fresh descriptor we own.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        // SAFETY: eventfd returns a new fd or -1.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if stop < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: stop is a fresh descriptor we own.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: STOP_TOKEN,
        };
        // SAFETY: both fds are valid; event is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                stop.as_raw_fd(),
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let inner = Arc::new(Watched {
            epoll,
            stop,
            watched: Mutex::new(HashMap::default()),
            by_fd: Mutex::new(HashMap::default()),
        });
        let worker = Arc::clone(&inner);
        std::thread::Builder::new()
            .name("lockfs-exitwatch".into())
            .spawn(move || worker.run(on_exit))?;
        Ok(Arc::new(ExitWatch { inner }))
    }

    /// Watches `process`; if it is already gone, reports that at once with `Err`.
    pub fn watch(&self, process: ProcessId) -> io::Result<()> {
        let inner = &self.inner;
        let mut watched = inner.watched.lock();
        if watched.contains_key(&process) {
            return Ok(());
        }
        // SAFETY: plain syscall; returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, process.pid, 0) } as RawFd;
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh descriptor we own.
        let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
        // The pid may have been recycled between the caller's look-up and pidfd_open.
        if !is_alive(process) {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        let mut event = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: raw as u64,
        };
        // SAFETY: both fds are valid; event is a valid epoll_event.
        let rc = unsafe {
            libc::epoll_ctl(
                inner.epoll.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                raw,
                &mut event,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        inner.by_fd.lock().insert(raw, process);
        watched.insert(process, pidfd);
        Ok(())
    }

    /// Whether watched `process` has exited, from its pidfd (one poll, no /proc read):
    /// readable once the process is gone, before its exit is reported. None when it is
    /// not watched (never was, or its exit was reported already).
    pub fn has_exited(&self, process: ProcessId) -> Option<bool> {
        let watched = self.inner.watched.lock();
        let pidfd = watched.get(&process)?;
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        let ready = unsafe { libc::poll(&mut poll, 1, 0) };
        (ready >= 0).then_some(ready > 0 && poll.revents & libc::POLLIN != 0)
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to our eventfd.
        unsafe {
            libc::write(
                self.inner.stop.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl Watched {
    fn run(&self, on_exit: impl Fn(ProcessId)) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: events has room for 64 entries.
            let n =
                unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, -1) };
            if n < 0 {
                if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return;
            }
            for event in &events[..n as usize] {
                if event.u64 == STOP_TOKEN {
                    return;
                }
                let raw = event.u64 as RawFd;
                let process = {
                    let mut watched = self.watched.lock();
                    let Some(process) = self.by_fd.lock().remove(&raw) else {
                        continue;
                    };
                    watched.remove(&process);
                    process
                };
                on_exit(process);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_parses_after_the_last_paren() {
        let stat = "123 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20 21";
        assert_eq!(parse_start_time(stat), Some(4242));
    }

    #[test]
    fn own_process_resolves_from_a_thread() {
        let me = std::process::id();
        let tid = unsafe { libc::gettid() } as u32;
        let process = process_of_thread(tid).unwrap();
        assert_eq!(process.pid, me);
        assert!(is_alive(process));
        assert!(!thread_is_dying(tid));
        assert!(!is_alive(ProcessId {
            pid: me,
            start_time: process.start_time + 1
        }));
    }

    #[test]
    fn exit_of_a_child_is_reported() {
        let (tx, rx) = std::sync::mpsc::channel();
        let watch = ExitWatch::start(move |p| tx.send(p).unwrap()).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .unwrap();
        let process = super::process(child.id()).unwrap();
        watch.watch(process).unwrap();
        child.wait().unwrap();
        let exited = rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
        assert_eq!(exited, process);
    }

    #[test]
    fn a_watched_process_is_never_taken_for_alive_after_its_exit() {
        let watch = ExitWatch::start(|_| {}).unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let process = super::process(child.id()).unwrap();
        assert_eq!(watch.has_exited(process), None, "not watched yet");
        watch.watch(process).unwrap();
        assert_eq!(watch.has_exited(process), Some(false));
        child.kill().unwrap();
        child.wait().unwrap();
        // Until the watcher thread takes the exit event, the pidfd answers; after, None
        // sends the caller to /proc. Never "alive".
        assert_ne!(watch.has_exited(process), Some(false));
    }

    #[test]
    fn dropping_the_watch_stops_its_thread() {
        let (tx, rx) = std::sync::mpsc::channel::<ProcessId>();
        let watch = ExitWatch::start(move |p| {
            let _ = tx.send(p);
        })
        .unwrap();
        drop(watch);
        // The thread owned the only sender: it is dropped when the thread returns.
        let ended = rx.recv_timeout(std::time::Duration::from_secs(20));
        assert_eq!(ended, Err(std::sync::mpsc::RecvTimeoutError::Disconnected));
    }
}
