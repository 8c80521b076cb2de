//! The mount and unmount commands, and the daemon's life: checks, backgrounding, the
//! session, signals.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::mountinfo::{self, is_dead_mount_error};
use crate::options::LeaseOptions;
use crate::sys;

use super::fuse::LockFs;
use super::passthrough::Overlay;
use super::{control, gate, leased, mounting};

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The directory to protect; lockfs mounts over this same path.
    pub dir: PathBuf,
    /// Stay attached to the terminal (for systemd and debugging) instead of backgrounding.
    #[arg(long)]
    pub foreground: bool,
    /// Let other users use the mount (permissions are still checked as on the disk below).
    #[arg(long)]
    pub allow_other: bool,
    /// Serve reads and writes in the daemon instead of kernel passthrough (for benchmarks).
    #[arg(long)]
    pub no_passthrough: bool,
    /// FUSE worker threads.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub threads: usize,
    /// Keep up to N fds of recently used files and directories open (default: a quarter
    /// of the open file limit, at most 4096). Files the kernel knows need no fd of their
    /// own; a larger cache only saves re-opening them by name.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub fd_cache: Option<u32>,
    /// Write the daemon's pid to FILE (removed when the daemon exits).
    #[arg(long, value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// Append the background daemon's log to FILE (default: discarded).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Serve DIR as a view of the directory BACKING, instead of the directory under DIR
    /// itself (as bindfs does). Neither may lie inside the other.
    #[arg(long, value_name = "BACKING")]
    pub source: Option<PathBuf>,
    /// Coordinate leases with other hosts that share this directory (NFS, CephFS, a
    /// ReadWriteMany volume) through etcd: its client URLs, comma-separated
    /// (http://10.0.0.5:2379,http://10.0.0.6:2379). Opens of managed files wait while etcd
    /// cannot be reached, and fail at --max-wait; they never go ahead unprotected.
    #[arg(
        long,
        value_name = "URL,...",
        value_delimiter = ',',
        env = "LOCKFS_ETCD"
    )]
    pub etcd: Vec<String>,
    /// The etcd key prefix of this directory's leases; every host of the directory must use
    /// the same one [default: /lockfs/ and the name of the directory served]
    #[arg(
        long,
        value_name = "PREFIX",
        requires = "etcd",
        env = "LOCKFS_ETCD_PREFIX"
    )]
    pub etcd_prefix: Option<String>,
    /// How long the files of a host that died or lost etcd stay held before the other
    /// hosts get them (its etcd session's TTL; whole seconds)
    #[arg(long, value_name = "DURATION", value_parser = crate::options::parse_duration,
          default_value = "5s", requires = "etcd")]
    pub etcd_ttl: Duration,
    #[command(flatten)]
    pub lease: LeaseOptions,
}

#[derive(Args, Debug)]
pub struct UnmountArgs {
    /// The mounted directory.
    pub dir: PathBuf,
    /// Detach the mount even while files in it are open (they keep working until closed).
    #[arg(long)]
    pub lazy: bool,
}

pub fn mount_command(mut args: MountArgs) -> anyhow::Result<ExitCode> {
    let dir = checked_mount_dir(&args.dir)?;
    if let Some(source) = &args.source {
        args.source = Some(checked_source(source, &dir)?);
    }
    if args.etcd_ttl < Duration::from_secs(1) {
        bail!("--etcd-ttl must be at least 1s (etcd counts its leases in whole seconds)");
    }
    if args.etcd.iter().any(|url| url.trim().is_empty()) {
        bail!("--etcd has an empty URL; give client URLs like http://127.0.0.1:2379");
    }
    if !args.etcd.is_empty() {
        crate::cluster::etcd::Etcd::new(&args.etcd, Duration::from_secs(1)).map_err(|e| {
            anyhow::anyhow!("--etcd: {e}; give client URLs like http://127.0.0.1:2379")
        })?;
    }
    if let Some(pid_file) = &args.pid_file {
        args.pid_file = Some(checked_side_file(pid_file, &dir, "--pid-file")?);
    }
    if let Some(log_file) = &args.log_file {
        args.log_file = Some(checked_side_file(log_file, &dir, "--log-file")?);
    }
    if args.foreground {
        run_daemon(&args, &dir, None)?;
        return Ok(ExitCode::SUCCESS);
    }
    let (ready_read, ready_write) = pipe()?;
    // Fork before any thread exists: the child runs the session, the parent only waits.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork the daemon"),
        0 => {
            drop(ready_read);
            let code = daemon_child(&args, &dir, ready_write);
            std::process::exit(code);
        }
        child => {
            drop(ready_write);
            let mut message = String::new();
            let _ = std::fs::File::from(ready_read).read_to_string(&mut message);
            if message.starts_with("ok") {
                return Ok(ExitCode::SUCCESS);
            }
            unsafe { libc::waitpid(child, std::ptr::null_mut(), 0) };
            match message.strip_prefix("error: ") {
                Some(error) => bail!("{}", error.trim_end()),
                None => bail!(
                    "the daemon exited before {} was mounted; run with --foreground -v to see why",
                    dir.display()
                ),
            }
        }
    }
}

pub fn unmount_command(args: UnmountArgs) -> anyhow::Result<ExitCode> {
    let dir = mounting::absolute_mount_path(&args.dir)?;
    if !mountinfo::is_lockfs_mount(&dir) {
        bail!(
            "{} is not a lockfs mount; nothing to unmount (see /proc/self/mountinfo)",
            dir.display()
        );
    }
    let daemon_gone = matches!(std::fs::metadata(&dir), Err(e) if is_dead_mount_error(&e));
    if daemon_gone {
        mounting::unmount(&dir, true)?;
        eprintln!(
            "lockfs: the daemon for {} was gone; cleared its mount",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    match mounting::unmount(&dir, args.lazy) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => bail!(
            "{} is busy: a process has files open or its working directory there; \
             close them, or run `lockfs unmount --lazy {}`",
            dir.display(),
            dir.display()
        ),
        other => other.with_context(|| format!("unmount {}", dir.display()))?,
    }
    if !args.lazy {
        wait_for_daemon_exit(&dir);
    }
    Ok(ExitCode::SUCCESS)
}

/// After an unmount, waits (a bounded while) until the daemon has removed its control
/// socket on its way out, so that a `lockfs mount` right after finds the place free.
fn wait_for_daemon_exit(dir: &Path) {
    let socket = crate::control::socket_path_for(dir);
    let started = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_ok()
        && started.elapsed() < CONTROL_SOCKET_HANDOVER
    {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The canonical directory to mount over, or a one-line error that says what to do.
fn checked_mount_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let meta = match std::fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{} does not exist; create it first (mkdir -p {})",
            dir.display(),
            dir.display()
        ),
        Err(e) if is_dead_mount_error(&e) => bail!(
            "{} is a lockfs mount whose daemon died; run `lockfs unmount {}` first",
            dir.display(),
            dir.display()
        ),
        Err(e) => bail!("cannot use {}: {e}", dir.display()),
    };
    if !meta.is_dir() {
        bail!(
            "{} is not a directory; lockfs mounts over a directory (the state dir)",
            dir.display()
        );
    }
    let dir = std::fs::canonicalize(dir).with_context(|| format!("resolve {}", dir.display()))?;
    if mountinfo::is_lockfs_mount(&dir) {
        bail!(
            "{} is already mounted by lockfs; run `lockfs unmount {}` first",
            dir.display(),
            dir.display()
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!(
            "/dev/fuse is missing: load the fuse module (modprobe fuse) or pass the device \
             into the container (--device /dev/fuse); without FUSE use `lockfs serve`"
        );
    }
    Ok(dir)
}

/// The canonical directory `--source` names: it must exist, and neither it nor the mount
/// directory may contain the other (the mount would serve itself).
fn checked_source(source: &Path, mount_dir: &Path) -> anyhow::Result<PathBuf> {
    let canonical = std::fs::canonicalize(source).map_err(|e| {
        anyhow::anyhow!(
            "--source {}: {e}; give an existing directory",
            source.display()
        )
    })?;
    if !canonical.is_dir() {
        bail!("--source {} is not a directory", source.display());
    }
    if canonical.starts_with(mount_dir) || mount_dir.starts_with(&canonical) {
        bail!(
            "--source {} and {} lie inside one another; the mount would serve itself. \
             Use a directory beside it",
            source.display(),
            mount_dir.display()
        );
    }
    Ok(canonical)
}

/// An absolute path for a file the daemon writes (pid or log file): its directory must
/// exist, and it must lie outside the mount, which cannot serve the daemon before it runs.
fn checked_side_file(file: &Path, mount_dir: &Path, option: &str) -> anyhow::Result<PathBuf> {
    let name = file
        .file_name()
        .with_context(|| format!("{option} {} names no file", file.display()))?;
    let parent = match file.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent).map_err(|e| {
        anyhow::anyhow!(
            "{option} {}: its directory cannot be used ({e}); create it or choose another path",
            file.display()
        )
    })?;
    let absolute = parent.join(name);
    if absolute.starts_with(mount_dir) {
        bail!(
            "{option} {} is inside {}, which lockfs is about to mount over; put it outside",
            file.display(),
            mount_dir.display()
        );
    }
    Ok(absolute)
}

fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("create the readiness pipe");
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The forked daemon: detach from the terminal, run the session, report readiness.
fn daemon_child(args: &MountArgs, dir: &Path, ready: OwnedFd) -> i32 {
    unsafe { libc::setsid() };
    redirect_stdio(args.log_file.as_deref());
    match run_daemon(args, dir, Some(ready)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            1
        }
    }
}

fn redirect_stdio(log_file: Option<&Path>) {
    let null = CString::new("/dev/null").expect("no NUL");
    let null_fd = unsafe { libc::open(null.as_ptr(), libc::O_RDWR) };
    let log_fd = log_file
        .and_then(|p| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .ok()
        })
        .map(std::os::fd::IntoRawFd::into_raw_fd);
    unsafe {
        libc::dup2(null_fd, 0);
        libc::dup2(null_fd, 1);
        libc::dup2(log_fd.unwrap_or(null_fd), 2);
        libc::close(null_fd);
        if let Some(fd) = log_fd {
            libc::close(fd);
        }
    }
}

/// Mounts and serves until unmounted; `ready` gets "ok" once the mount answers, or the
/// error that prevented it.
fn run_daemon(args: &MountArgs, dir: &Path, ready: Option<OwnedFd>) -> anyhow::Result<()> {
    let mut ready = ready.map(std::fs::File::from);
    // Named before mounting: finding it afterwards would touch the mount point.
    let socket = crate::control::socket_path_for(dir);
    let stop_signals = block_stop_signals();
    // Every failure before the mount is ready goes to `lockfs mount`, which waits for it.
    let mut cluster = None;
    let started = start_session(args, dir, &mut cluster).and_then(|(mut session, gate)| {
        let control = control::OverlayControl::new(gate, dir);
        let control = start_control(&socket, Arc::new(control))?;
        spawn_signal_thread(stop_signals, session.unmount_callable(), dir.to_path_buf())?;
        Ok((session, control))
    });
    let (session, _control) = match started {
        Ok(started) => started,
        Err(e) => {
            // A failure after the mount was made must not leave it behind, dead.
            if mountinfo::is_lockfs_mount(dir) {
                let _ = mounting::unmount(dir, true);
            }
            if let Some(ready) = ready.as_mut() {
                let _ = writeln!(ready, "error: {e:#}");
            }
            return Err(e);
        }
    };
    if let Some(pid_file) = &args.pid_file {
        let _ = std::fs::write(pid_file, format!("{}\n", std::process::id()));
    }
    tracing::info!("mounted {}", dir.display());
    if let Some(mut ready) = ready.take() {
        let _ = ready.write_all(b"ok\n");
    }
    let result = session.run();
    if let Some(cluster) = cluster {
        // The other hosts get this host's files now, not after the session's TTL.
        cluster.stop();
    }
    if let Some(pid_file) = &args.pid_file {
        let _ = std::fs::remove_file(pid_file);
    }
    tracing::info!("unmounted {}", dir.display());
    result.context("FUSE session")
}

/// How long a new daemon waits for the control socket of the previous daemon of the same
/// directory to go away (it is shutting down after an unmount).
const CONTROL_SOCKET_HANDOVER: Duration = Duration::from_secs(10);

fn start_control(
    socket: &Path,
    control: Arc<control::OverlayControl>,
) -> anyhow::Result<crate::control::ServerHandle> {
    let started = Instant::now();
    loop {
        match crate::control::Server::start(socket, control.clone()) {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < CONTROL_SOCKET_HANDOVER =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => {
                return other
                    .with_context(|| format!("start the control socket {}", socket.display()));
            }
        }
    }
}

/// The fd cache: what `--fd-cache` asks for, or a quarter of the open file limit (between
/// 64 and 4096). The rest of the limit is for the files and directories programs hold open
/// through the mount, one fd each.
fn fd_cache_size(asked: Option<u32>, open_file_limit: u64) -> anyhow::Result<usize> {
    let limit = usize::try_from(open_file_limit).unwrap_or(usize::MAX);
    match asked {
        Some(n) if n as usize > limit / 2 => anyhow::bail!(
            "--fd-cache {n} is more than half of the daemon's open file limit ({limit}); \
             the rest is needed for the files programs open through the mount. \
             Use at most {}, or raise the limit (ulimit -n) first",
            limit / 2
        ),
        Some(n) => Ok(n as usize),
        None => Ok((limit / 4).clamp(64, 4096)),
    }
}

fn start_session(
    args: &MountArgs,
    dir: &Path,
    cluster: &mut Option<Arc<crate::cluster::Cluster>>,
) -> anyhow::Result<(fuser::Session<LockFs>, Arc<gate::Gate>)> {
    let limit = match sys::raise_nofile_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot raise the open file limit: {e}");
            1024
        }
    };
    let fd_cache = fd_cache_size(args.fd_cache, limit)?;
    tracing::debug!("open file limit {limit}, fd cache {fd_cache}");
    // The kernel applies the caller's umask before a create reaches us.
    unsafe { libc::umask(0) };
    let backing = args.source.as_deref().unwrap_or(dir);
    super::reply::set_shared(args.source.is_some() || !args.etcd.is_empty());
    let cdir = CString::new(backing.as_os_str().as_bytes()).context("directory name")?;
    let root = sys::openat(
        unsafe { std::os::fd::BorrowedFd::borrow_raw(libc::AT_FDCWD) },
        &cdir,
        libc::O_PATH | libc::O_DIRECTORY,
        0,
    )
    .with_context(|| format!("open {}", backing.display()))?;
    let core = Arc::new(Overlay::new(root, fd_cache).context("stat the directory")?);
    let resolved = crate::config::resolve(&args.lease)?;
    let policy = resolved.policy.clone();
    tracing::info!(
        linger_ms = policy.linger.as_millis() as u64,
        max_hold_ms = policy.max_hold.as_millis() as u64,
        max_wait_ms = policy.max_wait.as_millis() as u64,
        "lease policy"
    );
    let has_excludes =
        !resolved.excludes.is_empty() || resolved.rules.iter().any(|rule| rule.exclude.is_some());
    let excluded: Option<gate::ExcludeFn> = has_excludes
        .then(|| Box::new(move |path: &str| resolved.is_excluded(Path::new(path))) as _);
    if !args.etcd.is_empty() {
        *cluster = Some(start_cluster(args, backing)?);
    }
    let gate = gate::Gate::start(Arc::clone(&core), policy, excluded, cluster.clone())
        .context("start the lease layer")?;
    let fs = LockFs {
        leased: leased::Leased {
            core: Arc::clone(&core),
            gate: Arc::clone(&gate),
        },
        core,
        want_passthrough: !args.no_passthrough,
        no_opendir: false,
    };
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("lockfs".into()),
        fuser::MountOption::Subtype("lockfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if args.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(args.threads.max(1));
    config.clone_fd = true;
    if unsafe { libc::geteuid() } == 0 {
        let dev = mounting::mount_fuse(dir, args.allow_other).map_err(|e| mount_error(dir, e))?;
        let session = fuser::Session::from_fd(fs, dev, config.acl, config)
            .map_err(|e| mount_error(dir, e))?;
        return Ok((session, gate));
    }
    let session = fuser::Session::new(fs, dir, &config).map_err(|e| mount_error(dir, e))?;
    Ok((session, gate))
}

fn start_cluster(args: &MountArgs, backing: &Path) -> anyhow::Result<Arc<crate::cluster::Cluster>> {
    let prefix = args.etcd_prefix.clone().unwrap_or_else(|| {
        let name = backing.file_name().unwrap_or_default().to_string_lossy();
        format!("/lockfs/{name}")
    });
    let config = crate::cluster::ClusterConfig {
        endpoints: args.etcd.clone(),
        prefix: prefix.clone(),
        ttl: args.etcd_ttl,
    };
    let cluster =
        crate::cluster::Cluster::start(config).map_err(|e| anyhow::anyhow!("--etcd: {e}"))?;
    tracing::info!(endpoints = %args.etcd.join(","), %prefix, ttl_s = args.etcd_ttl.as_secs(), "leases are coordinated through etcd");
    Ok(cluster)
}

fn mount_error(dir: &Path, e: std::io::Error) -> anyhow::Error {
    let hint = match e.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "not permitted; run as root, or install fuse3 (fusermount3) for mounts by a user"
        }
        Some(libc::ENODEV) | Some(libc::ENXIO) => {
            "the kernel has no FUSE support here (modprobe fuse), or use `lockfs serve`"
        }
        _ if e.kind() == std::io::ErrorKind::NotFound => {
            "a FUSE helper is missing; run as root or install fuse3 (fusermount3)"
        }
        _ => "run `lockfs doctor` for a check of this machine",
    };
    anyhow::anyhow!("cannot mount {}: {e}; {hint}", dir.display())
}

/// SIGINT/SIGTERM unmount cleanly: blocked in every thread (the workers inherit the mask)
/// and taken by one thread that unmounts, which ends the session loop.
/// Blocks SIGINT and SIGTERM in this thread and every thread started after it, so that
/// only the signal thread (sigwait) receives them. Call before starting any thread.
fn block_stop_signals() -> libc::sigset_t {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    set
}

fn spawn_signal_thread(
    set: libc::sigset_t,
    mut unmounter: fuser::SessionUnmounter,
    dir: PathBuf,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal = 0;
            unsafe { libc::sigwait(&set, &mut signal) };
            tracing::info!("signal {signal}: unmounting {}", dir.display());
            // A session from our own mount(2) has nothing for fuser to unmount.
            let _ = unmounter.unmount();
            if mountinfo::is_lockfs_mount(&dir)
                && let Err(e) = mounting::unmount(&dir, false)
            {
                tracing::warn!("unmount failed ({e}); detaching the mount");
                let _ = mounting::unmount(&dir, true);
            }
        })
        .context("start the signal thread")?;
    Ok(())
}
