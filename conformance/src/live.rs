//! A stand-in VMM for live-capture tests (DESIGN.md section 6, "Running boxes").
//!
//! [`GuestWriter`] plays a running guest: a thread that keeps writing numbered 4 KiB records
//! into the box's container disk through the in-process qcow2 layer (`boxlite::qcow2`), record
//! `i` into slot `i % SLOTS` of the region at [`REGION`]. A write counts as acknowledged once
//! `write_at` returned (as a virtio-blk completion would). It honours pause (wait for the write
//! in flight, flush, stop writing), resume, reopen (close the files, open others) and shutdown.
//!
//! [`StandinVmm`] is a host's [`BoxController`] over such guests, one per running box. Each
//! guest runs behind a [`Vm`]: [`ThreadVm`] in-process (used by the conformance cases), or a
//! separate process driven over a socket (the `live` integration test of this crate). It records
//! every call as a [`VmmEvent`] and can inject failures, so tests can check that a capture holds
//! exactly the writes acknowledged at the pause ([`check_region`]) and how the runtime reacted.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boxlite::api::{async_trait, BoxController, BoxId, DiskSet, Error, LiveBox, Result};
use boxlite::qcow2::{Chain, OpenOptions};

/// Start of the written region in the container disk, bytes (the suite's images hold their
/// patterns below it and zeros in it).
pub const REGION: u64 = 2 << 20;
/// Record size, bytes.
pub const RECORD: usize = 4096;
/// Number of record slots (2 MiB: the region ends at 4 MiB, the suite's disk size).
pub const SLOTS: u64 = 512;
/// Pause between two writes of the guest.
const WRITE_GAP: Duration = Duration::from_micros(300);

/// The bytes of record `i`: `i + 1` as little-endian u64, repeated (never all zero).
pub fn record(i: u64) -> Vec<u8> {
    (i + 1).to_le_bytes().repeat(RECORD / 8)
}

/// The region's expected content after exactly `acked` writes over `base` (the region's
/// content before the first write; `None` = zeros).
pub fn expected_region(acked: u64, base: Option<&[u8]>) -> Vec<u8> {
    let mut out = match base {
        Some(b) => b.to_vec(),
        None => vec![0u8; SLOTS as usize * RECORD],
    };
    for i in acked.saturating_sub(SLOTS)..acked {
        let slot = (i % SLOTS) as usize;
        out[slot * RECORD..(slot + 1) * RECORD].copy_from_slice(&record(i));
    }
    out
}

/// Read the written region of a disk (any qcow2 chain), read-only.
///
/// Errors: the disk cannot be opened or read (message names the path).
pub fn read_region(disk: &Path) -> std::result::Result<Vec<u8>, String> {
    let chain = Chain::open(disk, &OpenOptions::new())
        .map_err(|e| format!("opening {}: {e}", disk.display()))?;
    let mut buf = vec![0u8; SLOTS as usize * RECORD];
    chain
        .read_at(&mut buf, REGION)
        .map_err(|e| format!("reading {}: {e}", disk.display()))?;
    Ok(buf)
}

/// Check that `disk` holds exactly the first `acked` records (over zeros): every acknowledged
/// write, none after.
///
/// Errors: a description of the first differing slot.
pub fn check_region(disk: &Path, acked: u64, what: &str) -> std::result::Result<(), String> {
    let got = read_region(disk)?;
    let want = expected_region(acked, None);
    match got
        .chunks(RECORD)
        .zip(want.chunks(RECORD))
        .position(|(a, b)| a != b)
    {
        None => Ok(()),
        Some(slot) => {
            let mut word = [0u8; 8];
            word.copy_from_slice(&got[slot * RECORD..slot * RECORD + 8]);
            let holds = match u64::from_le_bytes(word) {
                0 => "nothing".to_owned(),
                n => format!("record {}", n - 1),
            };
            Err(format!(
                "{what}: {} does not hold exactly the {acked} writes acknowledged at the pause: \
                 slot {slot} holds {holds}",
                disk.display()
            ))
        }
    }
}

// ------------------------------------------------------------------------- the guest

struct GuestState {
    container: Option<Chain>,
    guest: Option<Chain>,
    paused: bool,
    exit: bool,
    acked: u64,
    error: Option<String>,
}

/// A running stand-in guest (see the module docs). Dropping it stops the writer thread.
pub struct GuestWriter {
    state: Arc<(Mutex<GuestState>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn open_disks(disks: &DiskSet) -> std::result::Result<(Chain, Chain), String> {
    let g = Chain::open(&disks.guest_rootfs, &OpenOptions::new())
        .map_err(|e| format!("opening {}: {e}", disks.guest_rootfs.display()))?;
    let c = Chain::open(&disks.container, &OpenOptions::new().writable(true))
        .map_err(|e| format!("opening {}: {e}", disks.container.display()))?;
    Ok((g, c))
}

impl GuestWriter {
    /// Open `disks` (absolute; the guest disk read-only, the container disk read-write) and
    /// start writing records from number `start_at` on.
    ///
    /// Errors: a disk cannot be opened.
    pub fn boot(disks: &DiskSet, start_at: u64) -> std::result::Result<GuestWriter, String> {
        let (g, c) = open_disks(disks)?;
        let state = Arc::new((
            Mutex::new(GuestState {
                container: Some(c),
                guest: Some(g),
                paused: false,
                exit: false,
                acked: start_at,
                error: None,
            }),
            Condvar::new(),
        ));
        let st = state.clone();
        let thread = std::thread::spawn(move || loop {
            let (lock, cv) = &*st;
            let mut s = lock.lock().unwrap_or_else(|p| p.into_inner());
            while s.paused && !s.exit {
                s = cv.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            if s.exit {
                return;
            }
            let i = s.acked;
            let off = REGION + (i % SLOTS) * RECORD as u64;
            let res = match s.container.as_mut() {
                Some(c) => c.write_at(&record(i), off).map_err(|e| e.to_string()),
                None => Err("no disk open while running".into()),
            };
            match res {
                Ok(()) => s.acked = i + 1,
                Err(e) => {
                    s.error = Some(e);
                    s.paused = true;
                }
            }
            drop(s);
            std::thread::sleep(WRITE_GAP);
        });
        Ok(GuestWriter {
            state,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> MutexGuard<'_, GuestState> {
        self.state.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn answer(s: &GuestState) -> std::result::Result<u64, String> {
        match &s.error {
            Some(e) => Err(format!("a guest write failed: {e}")),
            None => Ok(s.acked),
        }
    }

    /// Stop writing (after the write in flight) and flush. Returns the acknowledged count.
    ///
    /// Errors: the flush or an earlier write failed.
    pub fn pause(&self) -> std::result::Result<u64, String> {
        let mut s = self.lock();
        s.paused = true;
        if let Some(c) = s.container.as_mut() {
            c.flush().map_err(|e| e.to_string())?;
        }
        Self::answer(&s)
    }

    /// Write again. Returns the acknowledged count.
    ///
    /// Errors: an earlier write failed.
    pub fn resume(&self) -> std::result::Result<u64, String> {
        let mut s = self.lock();
        s.paused = false;
        self.state.1.notify_all();
        Self::answer(&s)
    }

    /// Close the disks (flushing) and open `disks` instead.
    ///
    /// Errors: closing or opening failed (then no disk is open and writes fail).
    pub fn reopen(&self, disks: &DiskSet) -> std::result::Result<u64, String> {
        let mut s = self.lock();
        s.guest = None;
        if let Some(c) = s.container.take() {
            c.close().map_err(|e| e.to_string())?;
        }
        let (g, c) = open_disks(disks)?;
        s.guest = Some(g);
        s.container = Some(c);
        Self::answer(&s)
    }

    /// The acknowledged count now.
    pub fn count(&self) -> u64 {
        self.lock().acked
    }

    /// Pause, close the disks and stop the thread. Returns the final acknowledged count.
    ///
    /// Errors: the final flush/close failed.
    pub fn shutdown(mut self) -> std::result::Result<u64, String> {
        let res = {
            let mut s = self.lock();
            s.paused = true;
            s.exit = true;
            s.guest = None;
            let closed = match s.container.take() {
                Some(c) => c.close().map_err(|e| e.to_string()),
                None => Ok(()),
            };
            self.state.1.notify_all();
            closed.and_then(|()| Self::answer(&s))
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        res
    }
}

impl Drop for GuestWriter {
    fn drop(&mut self) {
        {
            let mut s = self.lock();
            s.exit = true;
            self.state.1.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------------- the VMM

/// One running VM as [`StandinVmm`] drives it; every call returns the acknowledged count.
pub trait Vm: Send {
    /// See [`GuestWriter::pause`].
    fn pause(&mut self) -> std::result::Result<u64, String>;
    /// See [`GuestWriter::resume`].
    fn resume(&mut self) -> std::result::Result<u64, String>;
    /// See [`GuestWriter::reopen`].
    fn reopen(&mut self, disks: &DiskSet) -> std::result::Result<u64, String>;
    /// See [`GuestWriter::count`].
    fn count(&mut self) -> std::result::Result<u64, String>;
    /// See [`GuestWriter::shutdown`].
    fn stop(self: Box<Self>) -> std::result::Result<u64, String>;
}

/// An in-process [`Vm`]: a [`GuestWriter`].
pub struct ThreadVm(pub GuestWriter);

impl Vm for ThreadVm {
    fn pause(&mut self) -> std::result::Result<u64, String> {
        self.0.pause()
    }
    fn resume(&mut self) -> std::result::Result<u64, String> {
        self.0.resume()
    }
    fn reopen(&mut self, disks: &DiskSet) -> std::result::Result<u64, String> {
        self.0.reopen(disks)
    }
    fn count(&mut self) -> std::result::Result<u64, String> {
        Ok(self.0.count())
    }
    fn stop(self: Box<Self>) -> std::result::Result<u64, String> {
        self.0.shutdown()
    }
}

/// Boots a [`Vm`] for a box on its disks, continuing the record numbering at `start_at`.
pub type Launcher = dyn Fn(&LiveBox, u64) -> std::result::Result<Box<dyn Vm>, String> + Send + Sync;

/// One call the controller received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmEvent {
    /// Paused after this many acknowledged writes.
    Paused(u64),
    /// Resumed (count at that moment).
    Resumed(u64),
    /// Reopened on these disks.
    Reopened(DiskSet),
    /// Stopped after this many acknowledged writes.
    Stopped(u64),
    /// Started on these disks.
    Started(DiskSet),
}

/// A test's observer, run right after every successful pause.
pub type PauseHook = Box<dyn Fn() + Send + Sync>;

/// The host's [`BoxController`] over stand-in VMs (see the module docs).
pub struct StandinVmm {
    launch: Box<Launcher>,
    vms: Mutex<HashMap<BoxId, Box<dyn Vm>>>,
    /// Acknowledged writes carried over a stop/start (the numbering continues).
    carried: Mutex<HashMap<BoxId, u64>>,
    events: Mutex<Vec<(BoxId, VmmEvent)>>,
    fail_next: Mutex<HashSet<&'static str>>,
    on_pause: Mutex<Option<PauseHook>>,
    delays: Mutex<HashMap<&'static str, Duration>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl StandinVmm {
    /// A controller running each box's guest as an in-process [`ThreadVm`].
    pub fn in_process() -> Arc<StandinVmm> {
        Self::with_launcher(|b, start_at| {
            Ok(Box::new(ThreadVm(GuestWriter::boot(&b.disks, start_at)?)) as Box<dyn Vm>)
        })
    }

    /// A controller booting VMs with `launch` (e.g. as separate processes).
    pub fn with_launcher(
        launch: impl Fn(&LiveBox, u64) -> std::result::Result<Box<dyn Vm>, String>
            + Send
            + Sync
            + 'static,
    ) -> Arc<StandinVmm> {
        Arc::new(StandinVmm {
            launch: Box::new(launch),
            vms: Mutex::new(HashMap::new()),
            carried: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
            fail_next: Mutex::new(HashSet::new()),
            on_pause: Mutex::new(None),
            delays: Mutex::new(HashMap::new()),
        })
    }

    /// Make the next call of `action` ("pause", "resume", "reopen", "stop", "start") fail with
    /// an `Error::Vmm`, changing nothing.
    pub fn fail_next(&self, action: &'static str) {
        lock(&self.fail_next).insert(action);
    }

    /// Make every call of `action` ("pause", "resume", "reopen", "stop", "start") take `d`
    /// longer, sleeping asynchronously AFTER the VM did it (so a caller can be cancelled while
    /// the call is in flight but already effective). `Duration::ZERO` removes the delay.
    pub fn delay_after(&self, action: &'static str, d: Duration) {
        lock(&self.delays).insert(action, d);
    }

    async fn delay(&self, action: &'static str) {
        let d = lock(&self.delays).get(action).copied();
        if let Some(d) = d.filter(|d| !d.is_zero()) {
            tokio::time::sleep(d).await;
        }
    }

    /// Run `hook` right after every successful pause.
    pub fn on_pause(&self, hook: impl Fn() + Send + Sync + 'static) {
        *lock(&self.on_pause) = Some(Box::new(hook));
    }

    /// Every event of box `id`, in order.
    pub fn events(&self, id: &BoxId) -> Vec<VmmEvent> {
        lock(&self.events)
            .iter()
            .filter(|(b, _)| b == id)
            .map(|(_, e)| e.clone())
            .collect()
    }

    /// The acknowledged count at the box's most recent pause or stop.
    pub fn last_halt(&self, id: &BoxId) -> Option<u64> {
        self.events(id).iter().rev().find_map(|e| match e {
            VmmEvent::Paused(n) | VmmEvent::Stopped(n) => Some(*n),
            _ => None,
        })
    }

    /// Whether a VM runs for the box.
    pub fn running(&self, id: &BoxId) -> bool {
        lock(&self.vms).contains_key(id)
    }

    /// The box's acknowledged count now.
    ///
    /// Errors: no VM runs for the box, or it failed.
    pub fn count(&self, id: &BoxId) -> std::result::Result<u64, String> {
        match lock(&self.vms).get_mut(id) {
            Some(vm) => vm.count(),
            None => Err(format!("no VM runs for box {id}")),
        }
    }

    /// Wait (up to 30 s) until the box has at least `n` acknowledged writes.
    ///
    /// Errors: the VM stopped writing or is not running.
    pub fn wait_for(&self, id: &BoxId, n: u64) -> std::result::Result<(), String> {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.count(id)?;
            if c >= n {
                return Ok(());
            }
            if Instant::now() > until {
                return Err(format!(
                    "the stand-in VM stopped writing at {c} (waited for {n})"
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn injected(&self, b: &LiveBox, action: &'static str) -> Result<()> {
        if lock(&self.fail_next).remove(action) {
            return Err(Error::vmm(&b.name, action, "injected failure"));
        }
        Ok(())
    }

    fn event(&self, id: &BoxId, e: VmmEvent) {
        lock(&self.events).push((id.clone(), e));
    }

    fn with_vm(
        &self,
        b: &LiveBox,
        action: &'static str,
        f: impl FnOnce(&mut Box<dyn Vm>) -> std::result::Result<u64, String>,
    ) -> Result<u64> {
        let mut vms = lock(&self.vms);
        let vm = vms
            .get_mut(&b.id)
            .ok_or_else(|| Error::vmm(&b.name, action, "the box's VM is not running"))?;
        f(vm).map_err(|e| Error::vmm(&b.name, action, e))
    }
}

impl std::fmt::Debug for StandinVmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandinVmm")
            .field("running", &lock(&self.vms).len())
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl BoxController for StandinVmm {
    async fn pause(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "pause")?;
        let n = self.with_vm(b, "pause", |vm| vm.pause())?;
        self.event(&b.id, VmmEvent::Paused(n));
        if let Some(hook) = &*lock(&self.on_pause) {
            hook();
        }
        self.delay("pause").await;
        Ok(())
    }

    async fn resume(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "resume")?;
        let n = self.with_vm(b, "resume", |vm| vm.resume())?;
        self.event(&b.id, VmmEvent::Resumed(n));
        self.delay("resume").await;
        Ok(())
    }

    async fn stop(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "stop")?;
        let vm = lock(&self.vms)
            .remove(&b.id)
            .ok_or_else(|| Error::vmm(&b.name, "stop", "the box's VM is not running"))?;
        let n = vm.stop().map_err(|e| Error::vmm(&b.name, "stop", e))?;
        lock(&self.carried).insert(b.id.clone(), n);
        self.event(&b.id, VmmEvent::Stopped(n));
        Ok(())
    }

    async fn start(&self, b: &LiveBox) -> Result<()> {
        self.injected(b, "start")?;
        if self.running(&b.id) {
            return Err(Error::vmm(
                &b.name,
                "start",
                "the box's VM is already running",
            ));
        }
        let start_at = lock(&self.carried).get(&b.id).copied().unwrap_or(0);
        let vm = (self.launch)(b, start_at).map_err(|e| Error::vmm(&b.name, "start", e))?;
        lock(&self.vms).insert(b.id.clone(), vm);
        self.event(&b.id, VmmEvent::Started(b.disks.clone()));
        Ok(())
    }

    async fn reopen_disks(&self, b: &LiveBox, disks: &DiskSet) -> Result<()> {
        self.injected(b, "reopen")?;
        self.with_vm(b, "reopen", |vm| vm.reopen(disks))?;
        self.event(&b.id, VmmEvent::Reopened(disks.clone()));
        self.delay("reopen").await;
        Ok(())
    }
}
