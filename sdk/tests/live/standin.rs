//! A stand-in VMM for the live-capture tests (a test helper, not product code).
//!
//! The VMM is a separate process (this test binary re-executed with `BOXLITE_STANDIN_VMM` set,
//! entering [`vmm_main`] from the `standin_vmm_entry` test) that opens the box's disks with the
//! in-process qcow2 layer and keeps writing numbered 4 KiB records into the container disk:
//! record `i` goes to slot `i % SLOTS` of the region at [`REGION`], and a write counts as
//! acknowledged once `write_at` returned (as a virtio-blk completion would). It obeys a line
//! protocol on a unix control socket:
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `pause` | wait for the write in flight, flush, stop writing | `ok <acked>` |
//! | `resume` | write again | `ok <acked>` |
//! | `reopen <guest> <disk>` | close (flush) the disks, open these | `ok <acked>` |
//! | `count` | - | `ok <acked>` |
//! | `stop` | pause, close the disks, exit | `ok <acked>` |
//!
//! Losing the control connection stops it too (its host is gone). [`Standin`] is the host's
//! `BoxController` driving such processes, with failure injection for the error paths.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use boxlite::api::{async_trait, BoxController, BoxId, DiskSet, Error, LiveBox, Result};
use boxlite::qcow2::{Chain, OpenOptions};

/// Start of the written region in the container disk (after the test image's 1 MiB pattern).
pub const REGION: u64 = 2 << 20;
/// Record size, bytes.
pub const RECORD: usize = 4096;
/// Number of record slots (6 MiB of an 8 MiB disk).
pub const SLOTS: u64 = 1536;
/// Pause between writes.
const WRITE_GAP: Duration = Duration::from_micros(300);

/// The bytes of record `i`: `i + 1` as little-endian u64, repeated (never all zero).
pub fn record(i: u64) -> Vec<u8> {
    (i + 1).to_le_bytes().repeat(RECORD / 8)
}

/// The region's expected content after exactly `acked` writes (slot by slot, the latest record
/// written to it, or zeros).
pub fn expected_region(acked: u64) -> Vec<u8> {
    let mut out = vec![0u8; (SLOTS as usize) * RECORD];
    let first = acked.saturating_sub(SLOTS);
    for i in first..acked {
        let slot = (i % SLOTS) as usize;
        out[slot * RECORD..(slot + 1) * RECORD].copy_from_slice(&record(i));
    }
    out
}

/// Read the written region of a container disk (any qcow2 chain), read-only.
pub fn read_region(disk: &Path) -> Vec<u8> {
    let chain = Chain::open(disk, &OpenOptions::new()).expect("open disk chain");
    let mut buf = vec![0u8; (SLOTS as usize) * RECORD];
    chain.read_at(&mut buf, REGION).expect("read region");
    buf
}

/// Assert `disk` holds exactly the first `acked` records: every acknowledged write, none after.
pub fn assert_region(disk: &Path, acked: u64, what: &str) {
    let got = read_region(disk);
    let want = expected_region(acked);
    if got != want {
        let slot = got
            .chunks(RECORD)
            .zip(want.chunks(RECORD))
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let seen = u64::from_le_bytes(got[slot * RECORD..slot * RECORD + 8].try_into().unwrap());
        let holds = match seen {
            0 => "nothing".to_owned(),
            n => format!("record {}", n - 1),
        };
        panic!(
            "{what}: {} does not hold exactly the {acked} acknowledged writes: slot {slot} holds \
             {holds}",
            disk.display()
        );
    }
}

// ---------------------------------------------------------------- the VMM process

struct VmmState {
    container: Option<Chain>,
    guest: Option<Chain>,
    paused: bool,
    exit: bool,
    acked: u64,
    error: Option<String>,
}

fn open_disks(guest: &Path, disk: &Path) -> (Chain, Chain) {
    let g = Chain::open(guest, &OpenOptions::new()).expect("vmm: open guest disk");
    let c = Chain::open(disk, &OpenOptions::new().writable(true)).expect("vmm: open disk");
    (g, c)
}

/// The stand-in VMM's main loop (runs in the child process; exits the process).
pub fn vmm_main(ctl: &Path) -> ! {
    let guest = PathBuf::from(std::env::var("VMM_GUEST").expect("VMM_GUEST"));
    let disk = PathBuf::from(std::env::var("VMM_DISK").expect("VMM_DISK"));
    let (g, c) = open_disks(&guest, &disk);
    let start = std::env::var("VMM_START_AT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0u64);
    let state = Arc::new((
        Mutex::new(VmmState {
            container: Some(c),
            guest: Some(g),
            paused: false,
            exit: false,
            acked: start,
            error: None,
        }),
        Condvar::new(),
    ));
    let listener = UnixListener::bind(ctl).expect("vmm: bind control socket");
    let writer = {
        let state = state.clone();
        std::thread::spawn(move || loop {
            let (lock, cv) = &*state;
            let mut st = lock.lock().unwrap();
            while st.paused && !st.exit {
                st = cv.wait(st).unwrap();
            }
            if st.exit {
                return;
            }
            let i = st.acked;
            let off = REGION + (i % SLOTS) * RECORD as u64;
            let res = st
                .container
                .as_mut()
                .expect("disk open while running")
                .write_at(&record(i), off);
            match res {
                Ok(()) => st.acked = i + 1,
                Err(e) => {
                    st.error = Some(e.to_string());
                    st.paused = true;
                }
            }
            drop(st);
            std::thread::sleep(WRITE_GAP);
        })
    };
    let (conn, _) = listener.accept().expect("vmm: accept");
    let mut out = conn.try_clone().expect("clone");
    let reader = BufReader::new(conn);
    let (lock, cv) = &*state;
    let halt = |st: &mut VmmState| -> std::result::Result<(), String> {
        st.paused = true;
        if let Some(c) = st.container.as_mut() {
            c.flush().map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let mut st = lock.lock().unwrap();
        let res: std::result::Result<(), String> = match words.next() {
            Some("pause") => halt(&mut st),
            Some("resume") => {
                st.paused = false;
                Ok(())
            }
            Some("count") => Ok(()),
            Some("reopen") => match (words.next(), words.next()) {
                (Some(gp), Some(dp)) => {
                    let closed = st.container.take().map(|c| c.close());
                    st.guest = None;
                    match closed {
                        Some(Err(e)) => Err(e.to_string()),
                        _ => {
                            let (g, c) = open_disks(Path::new(gp), Path::new(dp));
                            st.guest = Some(g);
                            st.container = Some(c);
                            Ok(())
                        }
                    }
                }
                _ => Err("reopen needs two paths".into()),
            },
            Some("stop") => {
                let r = halt(&mut st);
                let acked = st.acked;
                st.exit = true;
                if let Some(c) = st.container.take() {
                    c.close().expect("vmm: close disk");
                }
                cv.notify_all();
                let _ = writeln!(out, "ok {acked}");
                drop(st);
                let _ = writer.join();
                if let Err(e) = r {
                    eprintln!("vmm: flush at stop failed: {e}");
                    std::process::exit(1);
                }
                std::process::exit(0);
            }
            other => Err(format!("unknown request {other:?}")),
        };
        let res = match (&st.error, res) {
            (Some(e), _) => Err(format!("disk write failed: {e}")),
            (None, r) => r,
        };
        let answer = match res {
            Ok(()) => format!("ok {}", st.acked),
            Err(e) => format!("err {e}"),
        };
        cv.notify_all();
        drop(st);
        if writeln!(out, "{answer}").is_err() {
            break;
        }
    }
    // The host went away: stop like a VMM whose controller died would be stopped.
    let mut st = lock.lock().unwrap();
    let _ = halt(&mut st);
    st.exit = true;
    if let Some(c) = st.container.take() {
        let _ = c.close();
    }
    cv.notify_all();
    std::process::exit(0)
}

// ---------------------------------------------------------------- the controller

struct Vmm {
    child: Child,
    out: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Vmm {
    fn call(&mut self, box_name: &str, action: &str, req: &str) -> Result<u64> {
        let vmm = |detail: String| Error::vmm(box_name, action, detail);
        writeln!(self.out, "{req}").map_err(|e| vmm(format!("control socket: {e}")))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| vmm(format!("control socket: {e}")))?;
        match line.trim().split_once(' ') {
            Some(("ok", n)) => n.parse().map_err(|_| vmm(format!("bad answer {line:?}"))),
            _ => Err(vmm(format!("stand-in VMM answered {line:?}"))),
        }
    }
}

/// One event seen by the controller, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Paused after this many acknowledged writes.
    Paused(u64),
    Resumed(u64),
    Reopened(DiskSet),
    /// Stopped after this many acknowledged writes.
    Stopped(u64),
    Started(DiskSet),
}

/// The host's `BoxController` over stand-in VMM processes, one per running box.
pub struct Standin {
    exe: PathBuf,
    dir: tempfile::TempDir,
    vmms: Mutex<HashMap<BoxId, Vmm>>,
    /// Acknowledged writes carried over a stop/start (the record numbering continues).
    carried: Mutex<HashMap<BoxId, u64>>,
    events: Mutex<Vec<(BoxId, Event)>>,
    fail_next: Mutex<HashSet<&'static str>>,
    /// Run right after every successful pause (tests observe the guest's state there).
    on_pause: Mutex<Option<PauseHook>>,
}

/// A test's observer run after each pause.
pub type PauseHook = Box<dyn Fn() + Send + Sync>;

impl Standin {
    pub fn new() -> Arc<Standin> {
        Arc::new(Standin {
            exe: std::env::current_exe().expect("current_exe"),
            dir: tempfile::Builder::new()
                .prefix("boxlite-vmm")
                .tempdir()
                .expect("tempdir"),
            vmms: Mutex::new(HashMap::new()),
            carried: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            fail_next: Mutex::new(HashSet::new()),
            on_pause: Mutex::new(None),
        })
    }

    /// Run `hook` right after every successful pause.
    pub fn on_pause(&self, hook: impl Fn() + Send + Sync + 'static) {
        *self.on_pause.lock().unwrap() = Some(Box::new(hook));
    }

    /// Make the next call of `action` ("pause", "resume", "reopen", "stop", "start") fail.
    pub fn fail_next(&self, action: &'static str) {
        self.fail_next.lock().unwrap().insert(action);
    }

    fn injected(&self, b: &LiveBox, action: &'static str) -> Result<()> {
        if self.fail_next.lock().unwrap().remove(action) {
            return Err(Error::vmm(&b.name, action, "injected failure"));
        }
        Ok(())
    }

    /// Every event for box `id`, in order.
    pub fn events(&self, id: &BoxId) -> Vec<Event> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|(b, _)| b == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    fn event(&self, id: &BoxId, e: Event) {
        self.events.lock().unwrap().push((id.clone(), e));
    }

    /// The box's acknowledged write count right now.
    pub fn count(&self, id: &BoxId) -> u64 {
        let mut vmms = self.vmms.lock().unwrap();
        let vmm = vmms.get_mut(id).expect("no VMM for this box");
        vmm.call("?", "count", "count").expect("count")
    }

    /// Whether a VMM process runs for the box.
    pub fn running(&self, id: &BoxId) -> bool {
        self.vmms.lock().unwrap().contains_key(id)
    }

    /// Wait until the box has at least `n` acknowledged writes.
    pub fn wait_for(&self, id: &BoxId, n: u64) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.count(id) < n {
            assert!(Instant::now() < until, "the stand-in VMM stopped writing");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn call(&self, b: &LiveBox, action: &'static str, req: &str) -> Result<u64> {
        let mut vmms = self.vmms.lock().unwrap();
        let vmm = vmms
            .get_mut(&b.id)
            .ok_or_else(|| Error::vmm(&b.name, action, "the box's VM is not running"))?;
        vmm.call(&b.name, action, req)
    }
}

impl Drop for Standin {
    fn drop(&mut self) {
        for (_, mut vmm) in self.vmms.lock().unwrap().drain() {
            let _ = vmm.child.kill();
            let _ = vmm.child.wait();
        }
    }
}

#[async_trait]
impl BoxController for Standin {
    async fn pause(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "pause")?;
        let n = self.call(b, "pause", "pause")?;
        self.event(&b.id, Event::Paused(n));
        if let Some(hook) = &*self.on_pause.lock().unwrap() {
            hook();
        }
        Ok(())
    }

    async fn resume(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "resume")?;
        let n = self.call(b, "resume", "resume")?;
        self.event(&b.id, Event::Resumed(n));
        Ok(())
    }

    async fn stop(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "stop")?;
        let n = self.call(b, "stop", "stop")?;
        let mut vmm = self.vmms.lock().unwrap().remove(&b.id).expect("vmm");
        let status = vmm
            .child
            .wait()
            .map_err(|e| Error::vmm(&b.name, "stop", e.to_string()))?;
        if !status.success() {
            return Err(Error::vmm(&b.name, "stop", format!("VMM exited {status}")));
        }
        self.carried.lock().unwrap().insert(b.id.clone(), n);
        self.event(&b.id, Event::Stopped(n));
        Ok(())
    }

    async fn start(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "start")?;
        let ctl = self.dir.path().join(format!("{}.sock", b.id));
        let _ = std::fs::remove_file(&ctl);
        let start_at = self
            .carried
            .lock()
            .unwrap()
            .get(&b.id)
            .copied()
            .unwrap_or(0);
        let mut child = Command::new(&self.exe)
            .args(["--exact", "standin_vmm_entry", "--nocapture"])
            .env("BOXLITE_STANDIN_VMM", &ctl)
            .env("VMM_GUEST", &b.disks.guest_rootfs)
            .env("VMM_DISK", &b.disks.container)
            .env("VMM_START_AT", start_at.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::vmm(&b.name, "start", e.to_string()))?;
        let until = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match UnixStream::connect(&ctl) {
                Ok(c) => break c,
                Err(_) if Instant::now() < until => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(Error::vmm(&b.name, "start", format!("VMM exited {st}")));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let _ = child.kill();
                    return Err(Error::vmm(&b.name, "start", e.to_string()));
                }
            }
        };
        let reader = BufReader::new(conn.try_clone().expect("clone"));
        self.vmms.lock().unwrap().insert(
            b.id.clone(),
            Vmm {
                child,
                out: conn,
                reader,
            },
        );
        self.event(&b.id, Event::Started(b.disks.clone()));
        Ok(())
    }

    async fn reopen_disks(&self, b: &LiveBox, disks: &DiskSet) -> Result<()> {
        self.injected(b, "reopen")?;
        let req = format!(
            "reopen {} {}",
            disks.guest_rootfs.display(),
            disks.container.display()
        );
        self.call(b, "reopen", &req)?;
        self.event(&b.id, Event::Reopened(disks.clone()));
        Ok(())
    }
}
