//! Helpers for the guest agent tests: scratch filesystems on loop devices (thawed, unmounted
//! and detached by a Drop guard even on panic), agents in-process or as the binary, and
//! writer processes used to observe whether a filesystem is frozen.
//!
//! Safety rule: tests only ever freeze their own loop mounts (`--only` or request `mounts`),
//! never the host's filesystems.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use boxlite_guest::{Agent, Config, ListenAddr, Listener};

static LOOP_LOCK: Mutex<()> = Mutex::new(());

/// Serializes loop-device tests: a static mutex within this process plus an flock across
/// processes (cargo-nextest runs each test in its own process).
pub struct Serial {
    _guard: MutexGuard<'static, ()>,
    _file: File,
}

pub fn serial() -> Serial {
    let guard = LOOP_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let file = File::create("/tmp/boxlite-guest-loop-tests.lock").expect("lock file");
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&file), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    Serial {
        _guard: guard,
        _file: file,
    }
}

/// Report a missing prerequisite: panic under `CI=true`, else print a loud skip.
pub fn skip(reason: &str) -> bool {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("prerequisite missing under CI=true: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
    false
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// True when loop-mounted filesystems of `fstype` can be made here (root, loop devices, tools).
pub fn can_mount(fstype: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return skip("needs root to create loop devices, mount and FIFREEZE");
    }
    if !Path::new("/dev/loop-control").exists() {
        return skip("no /dev/loop-control: loop devices are unavailable here");
    }
    let mkfs = format!("mkfs.{fstype}");
    for t in [
        "losetup",
        "mount",
        "umount",
        "truncate",
        "dd",
        mkfs.as_str(),
    ] {
        if !have(t) {
            return skip(&format!(
                "`{t}` not found (apt-get install e2fsprogs xfsprogs util-linux coreutils)"
            ));
        }
    }
    true
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A filesystem on a loop device mounted under a temp dir. Drop thaws it (FITHAW, ignoring
/// "not frozen"), unmounts it and detaches the loop device, even while unwinding a panic.
pub struct LoopFs {
    pub mnt: PathBuf,
    dev: Option<String>,
    mounted: bool,
    pub dir: tempfile::TempDir,
}

impl LoopFs {
    /// `fstype` is ext4 (64 MiB) or xfs (320 MiB). `mnt` is created if missing (it may be
    /// inside another LoopFs to nest mounts).
    pub fn new(fstype: &str, mnt: Option<&Path>) -> LoopFs {
        let dir = tempfile::Builder::new()
            .prefix("boxlite-guest-fs")
            .tempdir()
            .expect("tempdir");
        let img = dir.path().join("fs.img");
        let mnt = mnt
            .map(Path::to_path_buf)
            .unwrap_or_else(|| dir.path().join("mnt"));
        std::fs::create_dir_all(&mnt).expect("mkdir mnt");
        let mut fs = LoopFs {
            mnt,
            dev: None,
            mounted: false,
            dir,
        };
        let size = if fstype == "xfs" { "320M" } else { "64M" };
        run(Command::new("truncate").args(["-s", size]).arg(&img)).unwrap();
        match fstype {
            "xfs" => run(Command::new("mkfs.xfs").args(["-q", "-f"]).arg(&img)).unwrap(),
            _ => run(Command::new(format!("mkfs.{fstype}"))
                .args(["-q", "-F"])
                .arg(&img))
            .unwrap(),
        };
        let dev = run(Command::new("losetup").args(["-f", "--show"]).arg(&img))
            .unwrap()
            .trim()
            .to_string();
        fs.dev = Some(dev.clone());
        run(Command::new("mount").arg(&dev).arg(&fs.mnt)).unwrap();
        fs.mounted = true;
        fs
    }

    /// Thaw directly (FITHAW on the mount point); false if it was not frozen.
    pub fn thaw(&self) -> bool {
        boxlite_guest::mounts::thaw_path(&self.mnt).unwrap_or(false)
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        if self.mounted {
            let _ = self.thaw();
            let mut ok = false;
            for _ in 0..20 {
                if run(Command::new("umount").arg(&self.mnt)).is_ok() {
                    ok = true;
                    break;
                }
                thread::sleep(Duration::from_millis(100));
            }
            if !ok {
                let _ = self.thaw();
                let _ = run(Command::new("umount").arg("-l").arg(&self.mnt));
            }
        }
        if let Some(dev) = &self.dev {
            let _ = run(Command::new("losetup").arg("-d").arg(dev));
        }
    }
}

/// A process writing 4 KiB + fsync into a file on a mount (to see whether it is frozen).
/// Drop thaws that mount first (so a blocked writer can finish), then kills and reaps it.
pub struct Writer {
    child: Option<Child>,
    mnt: PathBuf,
    pub started: Instant,
}

impl Writer {
    pub fn start(mnt: &Path, name: &str) -> Writer {
        let child = Command::new("dd")
            .arg("if=/dev/urandom")
            .arg(format!("of={}", mnt.join(name).display()))
            .args(["bs=4k", "count=1", "conv=fsync", "status=none"])
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn dd");
        Writer {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            started: Instant::now(),
        }
    }

    /// Wait up to `limit` for the write to finish; Some(elapsed since start) if it did.
    pub fn finished_within(&mut self, limit: Duration) -> Option<Duration> {
        let until = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                assert!(status.success(), "writer failed: {status}");
                self.child = None;
                return Some(self.started.elapsed());
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Assert the write is still blocked after `wait`.
    pub fn assert_blocked(&mut self, wait: Duration) {
        assert!(
            self.finished_within(wait).is_none(),
            "a write to {} completed while it should be frozen",
            self.mnt.display()
        );
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = boxlite_guest::mounts::thaw_path(&self.mnt);
            let _ = c.kill();
            for _ in 0..200 {
                if !matches!(c.try_wait(), Ok(None)) {
                    return;
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// True when a fresh write to `mnt` completes within `limit` (the fs is not frozen).
pub fn writable_within(mnt: &Path, limit: Duration) -> bool {
    Writer::start(mnt, "probe").finished_within(limit).is_some()
}

/// An in-process agent served on a thread; Drop shuts it down (thawing) and joins.
pub struct InProcess {
    pub agent: Agent,
    pub sock: PathBuf,
    thread: Option<thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl InProcess {
    pub fn start(config: Config) -> InProcess {
        let dir = tempfile::Builder::new()
            .prefix("boxlite-guest-sock")
            .tempdir()
            .expect("tempdir");
        Self::start_at(config, dir.path().join("agent.sock"), dir)
    }

    pub fn start_at(config: Config, sock: PathBuf, dir: tempfile::TempDir) -> InProcess {
        let agent = Agent::new(config).expect("agent config");
        let listener = Listener::bind(&ListenAddr::Unix(sock.clone())).expect("bind");
        let a = agent.clone();
        let thread = thread::spawn(move || a.serve(listener).expect("serve"));
        InProcess {
            agent,
            sock,
            thread: Some(thread),
            _dir: dir,
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.agent.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The agent binary as a child process; Drop sends SIGTERM (it thaws) and reaps it.
pub struct AgentProcess {
    pub child: Option<Child>,
    pub sock: PathBuf,
    pub dir: tempfile::TempDir,
}

impl AgentProcess {
    pub fn start(only: &[&Path], default_timeout: u64) -> AgentProcess {
        let dir = tempfile::Builder::new()
            .prefix("boxlite-guest-bin")
            .tempdir()
            .expect("tempdir");
        let sock = dir.path().join("agent.sock");
        // Defined only when this module is built for boxlite-guest's own tests (the sdk's live
        // tests include this module for the loop-mount helpers and use in-process agents).
        let Some(bin) = option_env!("CARGO_BIN_EXE_boxlite-guest-agent") else {
            panic!("AgentProcess is only available in boxlite-guest's tests");
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .arg("--default-timeout")
            .arg(default_timeout.to_string());
        for o in only {
            cmd.arg("--only").arg(o);
        }
        let child = cmd.stdin(Stdio::null()).spawn().expect("spawn agent");
        let p = AgentProcess {
            child: Some(child),
            sock,
            dir,
        };
        let until = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&p.sock).is_err() {
            assert!(Instant::now() < until, "agent did not start listening");
            thread::sleep(Duration::from_millis(20));
        }
        // That probe connection took the client slot briefly; wait until it is released.
        thread::sleep(Duration::from_millis(50));
        p
    }

    pub fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Wait for exit up to `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + limit;
        loop {
            let c = self.child.as_mut()?;
            if let Ok(Some(s)) = c.try_wait() {
                self.child = None;
                return Some(s);
            }
            if Instant::now() >= until {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGTERM);
            if self.wait(Duration::from_secs(10)).is_none() {
                self.signal(libc::SIGKILL);
                let _ = self.wait(Duration::from_secs(5));
            }
        }
    }
}

/// Connect to an agent, retrying while another (probe) client still holds the slot.
pub fn connect(sock: &Path) -> boxlite_guest::AgentClient {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = boxlite_guest::AgentClient::connect(sock).expect("connect");
        match c.ping() {
            Ok(()) => return c,
            Err(e) if Instant::now() < until => {
                let _ = e;
                thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("agent at {} does not answer: {e}", sock.display()),
        }
    }
}

/// Send raw bytes and read one answer line as JSON.
pub fn raw(stream: &mut UnixStream, bytes: &[u8]) -> serde_json::Value {
    stream.write_all(bytes).expect("write");
    let mut line = String::new();
    BufReader::new(stream.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read");
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer {line:?}: {e}"))
}
