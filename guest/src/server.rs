//! The in-guest agent: accepts one client at a time on a unix or vsock socket and serves
//! freeze / thaw / status / ping (see [`crate::protocol`] and `docs/live-snapshots.md`).
//!
//! Threads: the accept loop (the caller of [`Agent::serve`]), one thread for the connected
//! client, a watchdog that thaws when a freeze's deadline passes, and a logger that writes to
//! stderr (so that a blocked stderr — say a log file on a frozen filesystem — never stalls a
//! thaw). A second client gets an error answer and is disconnected; it never waits.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use boxlite_api::{Error, Result};

use crate::mounts::{self, MountEntry};
use crate::protocol::{
    read_line, Line, Request, Response, DEFAULT_TIMEOUT_SECS, MAX_LINE, MAX_TIMEOUT_SECS,
};

/// How long the agent waits for a client to take an answer before treating it as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at the shutdown flag.
const ACCEPT_POLL: Duration = Duration::from_millis(200);

/// Agent settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// When non-empty, the only mount points the agent may freeze (`--only`, repeatable).
    /// A request naming a mount outside this set is refused. Empty: every eligible mount.
    pub only: Vec<PathBuf>,
    /// Watchdog timeout for freeze requests that give no `timeout_secs` (1..=600).
    pub default_timeout_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            only: Vec::new(),
            default_timeout_secs: DEFAULT_TIMEOUT_SECS,
        }
    }
}

/// Where the agent listens: `unix:PATH` or `vsock:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A unix stream socket at this path.
    Unix(PathBuf),
    /// An AF_VSOCK stream socket on this port, any CID.
    Vsock(u32),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path, e.g. unix:/run/boxlite-agent.sock".into());
            }
            Ok(ListenAddr::Unix(PathBuf::from(path)))
        } else if let Some(port) = s.strip_prefix("vsock:") {
            port.parse::<u32>()
                .map(ListenAddr::Vsock)
                .map_err(|_| format!("vsock port {port:?} is not a number in 0..=4294967295"))
        } else {
            Err(format!(
                "listen address {s:?} must be unix:PATH or vsock:PORT"
            ))
        }
    }
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenAddr::Vsock(port) => write!(f, "vsock:{port}"),
        }
    }
}

/// A bound, listening socket the agent serves on.
#[derive(Debug)]
pub enum Listener {
    /// A unix stream socket.
    Unix(UnixListener),
    /// An AF_VSOCK stream socket.
    Vsock(OwnedFd),
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Self {
        Listener::Unix(l)
    }
}

impl Listener {
    /// Bind and listen on `addr`. For a unix path, a stale socket file nobody listens on is
    /// replaced; a live one is an error. AF_VSOCK on a kernel without vsock support is an
    /// [`Error::Unsupported`] that says so.
    pub fn bind(addr: &ListenAddr) -> Result<Listener> {
        match addr {
            ListenAddr::Unix(path) => bind_unix(path).map(Listener::Unix),
            ListenAddr::Vsock(port) => bind_vsock(*port).map(Listener::Vsock),
        }
    }

    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Vsock(fd) => fd.as_fd(),
        }
    }

    /// Device (major, minor) of the filesystem holding a unix socket's file, if any.
    fn socket_dev(&self) -> Option<(u64, u64)> {
        let Listener::Unix(l) = self else { return None };
        let addr = l.local_addr().ok()?;
        let path = addr.as_pathname()?;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(_) => std::fs::metadata(path.parent()?).ok()?,
        };
        let dev = meta.dev();
        Some((libc::major(dev).into(), libc::minor(dev).into()))
    }

    /// Wait up to `timeout` for a connection.
    fn accept_timeout(&self, timeout: Duration) -> io::Result<Option<UnixStream>> {
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: self.fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut pfd, 1, ms) } {
            0 => return Ok(None),
            n if n < 0 => {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::Interrupted {
                    Ok(None)
                } else {
                    Err(e)
                };
            }
            _ => {}
        }
        let accepted = match self {
            Listener::Unix(l) => l.accept().map(|(s, _)| s),
            Listener::Vsock(fd) => {
                nix::sys::socket::accept4(fd.as_raw_fd(), nix::sys::socket::SockFlag::SOCK_CLOEXEC)
                    .map_err(io::Error::from)
                    // SAFETY: accept4 returned a fresh descriptor that nothing else owns.
                    .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) })
                    // A connected vsock stream socket supports exactly the calls UnixStream
                    // makes (read, write, shutdown, SO_RCVTIMEO/SO_SNDTIMEO).
                    .map(UnixStream::from)
            }
        };
        match accepted {
            Ok(s) => {
                s.set_nonblocking(false)?;
                Ok(Some(s))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

fn bind_unix(path: &Path) -> Result<UnixListener> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::config(format!(
                "{} exists and is not a socket: remove it or choose another --listen path",
                path.display()
            )));
        }
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(Error::config(format!(
                    "another agent is already listening on {}: stop it first",
                    path.display()
                )))
            }
            Err(_) => std::fs::remove_file(path).map_err(|e| Error::io(path, e))?,
        }
    }
    let l = UnixListener::bind(path).map_err(|e| Error::io(path, e))?;
    l.set_nonblocking(true).map_err(|e| Error::io(path, e))?;
    Ok(l)
}

fn bind_vsock(port: u32) -> Result<OwnedFd> {
    use nix::errno::Errno;
    use nix::sys::socket::{
        bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
    };
    let what = format!("vsock:{port}");
    let unsupported = |e: Errno| Error::Unsupported {
        what: format!("listening on {what} ({e}: {})", e.desc()),
        path: None,
        hint: "this kernel has no usable AF_VSOCK transport: load the guest transport \
               (modprobe vmw_vsock_virtio_transport) or use --listen unix:PATH"
            .into(),
    };
    let io_err = |e: Errno| Error::io(&what, io::Error::from(e));
    let fd = socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(|e| match e {
        Errno::EAFNOSUPPORT | Errno::EPROTONOSUPPORT | Errno::ESOCKTNOSUPPORT => unsupported(e),
        e => io_err(e),
    })?;
    bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port)).map_err(|e| match e {
        Errno::EADDRNOTAVAIL | Errno::ENODEV | Errno::EAFNOSUPPORT => unsupported(e),
        e => io_err(e),
    })?;
    let backlog = Backlog::new(16).map_err(io_err)?;
    listen(&fd, backlog).map_err(io_err)?;
    Ok(fd)
}

/// Run an agent with `config` on `listener` until it is shut down (which only
/// [`Agent::shutdown`] on a clone does; the binary calls it on SIGTERM/SIGINT).
pub fn serve(listener: Listener, config: Config) -> Result<()> {
    Agent::new(config)?.serve(listener)
}

/// A mount point the agent froze, with the descriptor it froze it through (thawing uses the
/// same descriptor, so the thaw reaches the same filesystem even if the path is remounted).
#[derive(Debug)]
struct Frozen {
    path: PathBuf,
    file: File,
}

#[derive(Debug, Default)]
struct State {
    /// In freeze order (deepest first).
    frozen: Vec<Frozen>,
    /// When the watchdog thaws.
    deadline: Option<Instant>,
    /// The connection that froze.
    owner: Option<u64>,
    /// A freeze request is between its `sync()` and its last FIFREEZE.
    busy: bool,
    shutdown: bool,
    /// The connected client, if any (one at a time).
    client: Option<u64>,
    next_conn: u64,
    /// Device of the filesystem holding the agent's socket.
    socket_dev: Option<(u64, u64)>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    state: Mutex<State>,
    cv: Condvar,
    log: SyncSender<String>,
}

/// The agent. Cheap to clone (shared state); [`Agent::shutdown`] from any clone thaws and
/// stops [`Agent::serve`].
#[derive(Debug, Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

/// A freeze target.
#[derive(Debug, Clone)]
struct Target {
    path: PathBuf,
    /// Named by `--only` or the request: a filesystem that cannot be frozen is an error
    /// rather than skipped.
    explicit: bool,
}

impl Agent {
    /// Check `config` and start the logger. `only` paths must be absolute; they are
    /// canonicalized when they exist.
    pub fn new(mut config: Config) -> Result<Agent> {
        if !(1..=MAX_TIMEOUT_SECS).contains(&config.default_timeout_secs) {
            return Err(Error::config(format!(
                "default timeout {} s is out of range: use 1..={MAX_TIMEOUT_SECS} seconds",
                config.default_timeout_secs
            )));
        }
        for p in &mut config.only {
            if !p.is_absolute() {
                return Err(Error::config(format!(
                    "--only {} is not an absolute path",
                    p.display()
                )));
            }
            if let Ok(c) = p.canonicalize() {
                *p = c;
            }
        }
        let (tx, rx) = mpsc::sync_channel::<String>(1024);
        thread::Builder::new()
            .name("agent-log".into())
            .spawn(move || {
                for msg in rx {
                    let _ = writeln!(io::stderr().lock(), "boxlite-guest-agent: {msg}");
                }
            })
            .map_err(|e| Error::io("agent-log thread", e))?;
        Ok(Agent {
            shared: Arc::new(Shared {
                config,
                state: Mutex::new(State::default()),
                cv: Condvar::new(),
                log: tx,
            }),
        })
    }

    /// The configuration in force (`only` canonicalized).
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Serve clients on `listener` until [`Agent::shutdown`] is called.
    pub fn serve(&self, listener: Listener) -> Result<()> {
        self.lock().socket_dev = listener.socket_dev();
        let watchdog = {
            let agent = self.clone();
            thread::Builder::new()
                .name("agent-watchdog".into())
                .spawn(move || agent.watchdog())
                .map_err(|e| Error::io("agent-watchdog thread", e))?
        };
        let result = loop {
            if self.lock().shutdown {
                break Ok(());
            }
            match listener.accept_timeout(ACCEPT_POLL) {
                Ok(None) => {}
                Ok(Some(stream)) => self.admit(stream),
                Err(e) => {
                    // EMFILE and friends: keep serving (a frozen guest must stay thawable).
                    self.log(format!("accept failed: {e}; retrying"));
                    thread::sleep(Duration::from_millis(100));
                }
            }
        };
        let _ = watchdog.join();
        result
    }

    /// Thaw everything (waiting for a freeze in progress to finish first), refuse further
    /// freezes and make [`Agent::serve`] return. Returns the mount points it thawed.
    pub fn shutdown(&self) -> Vec<PathBuf> {
        let mut st = self.lock();
        st.shutdown = true;
        self.shared.cv.notify_all();
        while st.busy {
            st = self
                .shared
                .cv
                .wait(st)
                .unwrap_or_else(|poison| poison.into_inner());
        }
        let paths = frozen_paths(&st);
        let errors = self.thaw_all(&mut st);
        drop(st);
        if !paths.is_empty() {
            self.log(format!("shutting down: thawed {}", join(&paths)));
        }
        for e in errors {
            self.log(format!("shutting down: {e}"));
        }
        paths
    }

    /// The mount points frozen now, in freeze order.
    pub fn frozen(&self) -> Vec<PathBuf> {
        frozen_paths(&self.lock())
    }

    /// FITHAW every mount this agent may freeze, ignoring those that are not frozen: undoes a
    /// freeze left behind by a previous agent process that was killed with SIGKILL. Returns
    /// the mounts that were frozen and are now thawed, plus errors as text.
    pub fn thaw_leftovers(&self) -> (Vec<PathBuf>, Vec<String>) {
        let (mut thawed, mut errors) = (Vec::new(), Vec::new());
        let targets = match self.select(None) {
            Ok(t) => t,
            Err(_) => return (thawed, errors),
        };
        for t in targets.iter().rev() {
            match mounts::thaw_path(&t.path) {
                Ok(true) => thawed.push(t.path.clone()),
                Ok(false) => {}
                Err(e) => errors.push(format!(
                    "FITHAW {}: {}",
                    t.path.display(),
                    mounts::describe_errno(&e)
                )),
            }
        }
        if !thawed.is_empty() {
            self.log(format!(
                "thawed filesystems left frozen by an earlier agent: {}",
                join(&thawed)
            ));
        }
        (thawed, errors)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn log(&self, msg: String) {
        // Never block on logging: drop the message when the logger is behind.
        let _ = self.shared.log.try_send(msg);
    }

    fn watchdog(&self) {
        let mut st = self.lock();
        loop {
            if st.shutdown {
                return;
            }
            if !st.busy && !st.frozen.is_empty() {
                let now = Instant::now();
                let deadline = st.deadline.unwrap_or(now);
                if now >= deadline {
                    let paths = frozen_paths(&st);
                    let errors = self.thaw_all(&mut st);
                    self.log(format!(
                        "watchdog: freeze timeout expired, thawed {}",
                        join(&paths)
                    ));
                    for e in errors {
                        self.log(format!("watchdog: {e} (will retry)"));
                    }
                    continue;
                }
                st = self
                    .shared
                    .cv
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|poison| poison.into_inner())
                    .0;
                continue;
            }
            st = self
                .shared
                .cv
                .wait(st)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    /// FITHAW everything frozen, parents first (reverse freeze order). Mounts whose thaw
    /// fails (other than EINVAL, "not frozen") stay listed and the watchdog retries in 1 s.
    fn thaw_all(&self, st: &mut State) -> Vec<String> {
        let mut errors = Vec::new();
        let mut kept = Vec::new();
        while let Some(f) = st.frozen.pop() {
            match mounts::fithaw(&f.file) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    errors.push(format!(
                        "FITHAW {} failed: {}",
                        f.path.display(),
                        mounts::describe_errno(&e)
                    ));
                    kept.push(f);
                }
            }
        }
        kept.reverse();
        st.frozen = kept;
        if st.frozen.is_empty() {
            st.deadline = None;
            st.owner = None;
        } else {
            st.deadline = Some(Instant::now() + Duration::from_secs(1));
        }
        self.shared.cv.notify_all();
        errors
    }

    /// Take a new connection: serve it, or refuse it when another client is connected.
    fn admit(&self, stream: UnixStream) {
        let admitted: std::result::Result<u64, &'static str> = {
            let mut st = self.lock();
            if st.shutdown {
                Err("the agent is shutting down")
            } else if st.client.is_some() {
                Err(
                    "another client is connected (the agent serves one client at a time): \
                     retry after it disconnects",
                )
            } else {
                st.next_conn += 1;
                st.client = Some(st.next_conn);
                Ok(st.next_conn)
            }
        };
        let agent = self.clone();
        let spawned = match admitted {
            Err(reason) => thread::Builder::new()
                .name("agent-refuse".into())
                .spawn(move || agent.refuse(stream, reason)),
            Ok(id) => thread::Builder::new()
                .name("agent-client".into())
                .spawn(move || agent.client(id, stream)),
        };
        if let Err(e) = spawned {
            // The stream was moved into the closure that failed to spawn and is closed.
            self.log(format!("could not start a client thread: {e}"));
            if admitted.is_ok() {
                self.lock().client = None;
            }
        }
    }

    /// Answer a refused client with an error line (after its first request, or at once) and
    /// close. Bounded in time: never waits on a client for more than a few seconds.
    fn refuse(&self, stream: UnixStream, reason: &str) {
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
        let frozen = self.frozen();
        let _ = (&stream).write_all(Response::err(reason, frozen).to_line().as_bytes());
        let mut reader = BufReader::new(&stream);
        let _ = read_line(&mut reader, MAX_LINE);
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }

    fn client(&self, id: u64, stream: UnixStream) {
        let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
        let mut reader = BufReader::new(&stream);
        loop {
            let answer = match read_line(&mut reader, MAX_LINE) {
                Ok(Line::Eof) | Err(_) => break,
                Ok(Line::TooLong) => Response::err(
                    format!("request line longer than {MAX_LINE} bytes: discarded"),
                    self.frozen(),
                ),
                Ok(Line::Line(line)) => match Request::parse(&line) {
                    Ok(req) => self.handle(id, req),
                    Err(msg) => Response::err(msg, self.frozen()),
                },
            };
            if (&stream).write_all(answer.to_line().as_bytes()).is_err() {
                break;
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let mut st = self.lock();
        if st.owner == Some(id) && !st.frozen.is_empty() {
            let paths = frozen_paths(&st);
            let errors = self.thaw_all(&mut st);
            self.log(format!(
                "client disconnected while frozen: thawed {}",
                join(&paths)
            ));
            for e in errors {
                self.log(format!("{e} (will retry)"));
            }
        }
        st.client = None;
    }

    fn handle(&self, id: u64, req: Request) -> Response {
        match req {
            Request::Ping | Request::Status => Response::ok(self.frozen()),
            Request::Thaw => {
                let mut st = self.lock();
                if st.busy {
                    return Response::err("a freeze is in progress", frozen_paths(&st));
                }
                let paths = frozen_paths(&st);
                let errors = self.thaw_all(&mut st);
                let now = frozen_paths(&st);
                drop(st);
                if !paths.is_empty() {
                    self.log(format!("thawed {}", join(&paths)));
                }
                if errors.is_empty() {
                    Response::ok(now)
                } else {
                    Response::err(errors.join("; "), now)
                }
            }
            Request::Freeze {
                timeout_secs,
                mounts,
            } => self.freeze(id, timeout_secs, mounts),
        }
    }

    fn freeze(&self, id: u64, timeout_secs: Option<u64>, mounts: Option<Vec<PathBuf>>) -> Response {
        let start = Instant::now();
        let timeout = timeout_secs.unwrap_or(self.shared.config.default_timeout_secs);
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Response::err(
                format!("timeout_secs {timeout} is out of range 1..={MAX_TIMEOUT_SECS}"),
                self.frozen(),
            );
        }
        {
            let st = self.lock();
            if st.shutdown {
                return Response::err("the agent is shutting down", frozen_paths(&st));
            }
            if !st.frozen.is_empty() {
                return Response::err(
                    format!("already frozen ({}): thaw first", join(&frozen_paths(&st))),
                    frozen_paths(&st),
                );
            }
        }
        let targets = match self.select(mounts) {
            Ok(t) => t,
            Err(msg) => return Response::err(msg, self.frozen()),
        };
        let deadline = start + Duration::from_secs(timeout);
        {
            let mut st = self.lock();
            if st.shutdown || st.busy || !st.frozen.is_empty() {
                return Response::err("already frozen", frozen_paths(&st));
            }
            st.busy = true;
            st.owner = Some(id);
            st.deadline = Some(deadline);
        }
        // Flush everything once, before any filesystem is frozen; never while frozen.
        nix::unistd::sync();
        let mut failure: Option<String> = None;
        let mut skipped = Vec::new();
        if Instant::now() >= deadline {
            failure = Some(format!(
                "sync() took longer than timeout_secs ({timeout} s): nothing was frozen"
            ));
        }
        for t in &targets {
            if failure.is_some() {
                break;
            }
            if self.lock().shutdown {
                failure = Some("the agent is shutting down".into());
                break;
            }
            let file = match mounts::open_mount(&t.path) {
                Ok(f) => f,
                Err(e) => {
                    failure = Some(format!(
                        "cannot open {}: {}",
                        t.path.display(),
                        mounts::describe_errno(&e)
                    ));
                    break;
                }
            };
            match mounts::fifreeze(&file) {
                Ok(()) => self.lock().frozen.push(Frozen {
                    path: t.path.clone(),
                    file,
                }),
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) && !t.explicit => {
                    skipped.push(t.path.clone());
                }
                Err(e) => {
                    let hint = if e.raw_os_error() == Some(libc::EBUSY) {
                        " (already frozen by someone else)"
                    } else {
                        ""
                    };
                    failure = Some(format!(
                        "FIFREEZE {} failed: {}{hint}",
                        t.path.display(),
                        mounts::describe_errno(&e)
                    ));
                }
            }
            if failure.is_none() && Instant::now() >= deadline {
                failure = Some(format!(
                    "freezing took longer than timeout_secs ({timeout} s)"
                ));
            }
        }
        let mut st = self.lock();
        if failure.is_none() && st.frozen.is_empty() {
            failure = Some(format!(
                "none of the candidate filesystems supports freezing ({})",
                join(&skipped)
            ));
        }
        if failure.is_none() && st.shutdown {
            failure = Some("the agent is shutting down".into());
        }
        st.busy = false;
        let result = match failure {
            None => {
                let frozen = frozen_paths(&st);
                self.shared.cv.notify_all();
                drop(st);
                self.log(format!(
                    "froze {} in {:?} (watchdog {timeout} s)",
                    join(&frozen),
                    start.elapsed()
                ));
                Response::ok(frozen)
            }
            Some(msg) => {
                let undone = frozen_paths(&st);
                let errors = self.thaw_all(&mut st);
                let now = frozen_paths(&st);
                drop(st);
                let mut msg = msg;
                if !undone.is_empty() {
                    msg.push_str(&format!("; thawed {} again", join(&undone)));
                }
                for e in errors {
                    msg.push_str(&format!("; {e}"));
                }
                self.log(format!("freeze failed: {msg}"));
                Response::err(msg, now)
            }
        };
        if !skipped.is_empty() {
            self.log(format!(
                "skipped filesystems that cannot be frozen (EOPNOTSUPP): {}",
                join(&skipped)
            ));
        }
        result
    }

    /// The mounts a freeze would touch, deepest first, one per filesystem.
    fn select(&self, requested: Option<Vec<PathBuf>>) -> std::result::Result<Vec<Target>, String> {
        let table = mounts::read_mountinfo()
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        // The last entry for a mount point is the visible one (later mounts stack on top).
        let mut visible: Vec<MountEntry> = Vec::new();
        for m in table {
            visible.retain(|v| v.mount_point != m.mount_point);
            visible.push(m);
        }
        let socket_dev = self.lock().socket_dev;
        let why_not = |m: &MountEntry| -> Option<String> {
            if mounts::is_pseudo(&m.fstype) {
                Some(format!(
                    "is a {} filesystem, which is never frozen",
                    m.fstype
                ))
            } else if m.read_only {
                Some("is mounted read-only".into())
            } else if Some((m.major, m.minor)) == socket_dev {
                Some("holds the agent's own socket".into())
            } else {
                None
            }
        };
        let find = |p: &Path| visible.iter().find(|m| m.mount_point == p);
        let only = &self.shared.config.only;
        let mut targets = Vec::new();
        match requested {
            Some(list) => {
                if list.is_empty() {
                    return Err(
                        "mounts is empty: omit it to freeze every allowed filesystem".into(),
                    );
                }
                for r in list {
                    let canon = r
                        .canonicalize()
                        .map_err(|e| format!("{}: {e}", r.display()))?;
                    if !only.is_empty() && !only.contains(&canon) {
                        return Err(format!(
                            "{} is not in the agent's --only list ({}): nothing was frozen",
                            r.display(),
                            join(only)
                        ));
                    }
                    let m = find(&canon)
                        .ok_or_else(|| format!("{} is not a mount point", r.display()))?;
                    if let Some(reason) = why_not(m) {
                        return Err(format!("{} {reason}", r.display()));
                    }
                    targets.push((m.clone(), true));
                }
            }
            None if !only.is_empty() => {
                for p in only {
                    if let Some(m) = find(p) {
                        if why_not(m).is_none() {
                            targets.push((m.clone(), true));
                        }
                    }
                }
            }
            None => {
                for m in &visible {
                    if why_not(m).is_none() {
                        targets.push((m.clone(), false));
                    }
                }
            }
        }
        // One FIFREEZE per filesystem: a second one on the same superblock fails with EBUSY.
        let mut seen = BTreeSet::new();
        targets.retain(|(m, _)| seen.insert((m.major, m.minor)));
        if targets.is_empty() {
            return Err(if only.is_empty() {
                "no freezable filesystem is mounted".into()
            } else {
                format!(
                    "none of the --only mount points ({}) is mounted, writable and freezable",
                    join(only)
                )
            });
        }
        let mut targets: Vec<Target> = targets
            .into_iter()
            .map(|(m, explicit)| Target {
                path: m.mount_point,
                explicit,
            })
            .collect();
        // Deepest first: a parent is frozen after its children, so its freeze never waits on a
        // child's writeback; thaw runs in reverse (parents first).
        targets.sort_by(|a, b| {
            let depth = |p: &Path| p.components().count();
            depth(&b.path)
                .cmp(&depth(&a.path))
                .then_with(|| b.path.as_os_str().len().cmp(&a.path.as_os_str().len()))
                .then_with(|| a.path.cmp(&b.path))
        });
        Ok(targets)
    }
}

fn frozen_paths(st: &State) -> Vec<PathBuf> {
    st.frozen.iter().map(|f| f.path.clone()).collect()
}

fn join(paths: &[PathBuf]) -> String {
    let v: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    v.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_addresses() {
        assert_eq!(
            "unix:/run/a.sock".parse::<ListenAddr>(),
            Ok(ListenAddr::Unix("/run/a.sock".into()))
        );
        assert_eq!(
            "vsock:1024".parse::<ListenAddr>(),
            Ok(ListenAddr::Vsock(1024))
        );
        assert!("vsock:x".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
        assert!("tcp:1".parse::<ListenAddr>().is_err());
        assert_eq!(ListenAddr::Vsock(7).to_string(), "vsock:7");
    }

    #[test]
    fn vsock_fails_clearly_or_binds() {
        match Listener::bind(&ListenAddr::Vsock(0x7a11)) {
            Ok(_) => {}
            Err(e) => {
                let s = e.to_string();
                assert!(s.contains("vsock:"), "{s}");
            }
        }
    }

    #[test]
    fn config_is_checked() {
        let bad = Config {
            default_timeout_secs: 0,
            ..Config::default()
        };
        assert!(Agent::new(bad).is_err());
        let rel = Config {
            only: vec!["mnt".into()],
            ..Config::default()
        };
        assert!(Agent::new(rel).is_err());
    }
}
