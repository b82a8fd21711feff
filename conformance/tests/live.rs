//! Live capture of running boxes (issue 7, DESIGN.md section 6 "Running boxes", case A08):
//! snapshot / export / clone of a box whose stand-in VMM process keeps writing through the
//! qcow2 layer, with the host's `BoxController` driving pause/resume/reopen/stop/start and the
//! real guest agent (in-process, real FIFREEZE on a loop-mounted ext4) as the `Quiescer`.
//!
//! The invariant checked everywhere: a capture contains exactly the writes the VMM had
//! acknowledged when it was paused (or stopped), and none after.

#[path = "../../sdk/tests/common/mod.rs"]
mod common;
#[path = "../../guest/tests/common/mod.rs"]
#[allow(unused_imports)]
mod guest_common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boxlite::api::{
    BoxStatus, CloneOptions, Error, ExportOptions, LiveBox, Quiescer, SnapshotOptions,
};
use boxlite::{BoxliteRuntime, Config, ConfigSources, LiteBox};
use boxlite_conformance::live::{check_region, GuestWriter, StandinVmm, Vm, VmmEvent as Event};
use boxlite_guest::AgentQuiescer;

type Standin = StandinVmm;

fn assert_region(disk: &Path, acked: u64, what: &str) {
    if let Err(e) = check_region(disk, acked, what) {
        panic!("{e}");
    }
}

// ------------------------------------------------------------- the stand-in VMM process

/// A stand-in VM in a separate process: this test binary re-executed (entering
/// `standin_vmm_entry`), running a [`GuestWriter`] and obeying one request per line on a unix
/// control socket (`pause`, `resume`, `reopen GUEST DISK`, `count`, `stop`; answers
/// `ok <acknowledged writes>` or `err <why>`). Losing the control connection stops it (its
/// host is gone).
struct ProcessVm {
    child: std::process::Child,
    out: std::os::unix::net::UnixStream,
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl ProcessVm {
    fn launch(b: &LiveBox, start_at: u64, dir: &Path) -> Result<Box<dyn Vm>, String> {
        let ctl = dir.join(format!("{}.sock", b.id));
        let _ = std::fs::remove_file(&ctl);
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "standin_vmm_entry", "--nocapture"])
            .env("BOXLITE_STANDIN_VMM", &ctl)
            .env("VMM_GUEST", &b.disks.guest_rootfs)
            .env("VMM_DISK", &b.disks.container)
            .env("VMM_START_AT", start_at.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| e.to_string())?;
        let until = Instant::now() + Duration::from_secs(20);
        let conn = loop {
            match std::os::unix::net::UnixStream::connect(&ctl) {
                Ok(c) => break c,
                Err(e) => {
                    if let Ok(Some(st)) = child.try_wait() {
                        return Err(format!("the VM process exited {st}"));
                    }
                    if Instant::now() > until {
                        let _ = child.kill();
                        return Err(e.to_string());
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        };
        let reader = std::io::BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
        Ok(Box::new(ProcessVm {
            child,
            out: conn,
            reader,
        }))
    }

    fn call(&mut self, req: &str) -> Result<u64, String> {
        use std::io::{BufRead, Write};
        writeln!(self.out, "{req}").map_err(|e| format!("control socket: {e}"))?;
        let mut line = String::new();
        self.reader
            .read_line(&mut line)
            .map_err(|e| format!("control socket: {e}"))?;
        match line.trim().split_once(' ') {
            Some(("ok", n)) => n.parse().map_err(|_| format!("bad answer {line:?}")),
            _ => Err(format!("the VM process answered {line:?}")),
        }
    }
}

impl Vm for ProcessVm {
    fn pause(&mut self) -> Result<u64, String> {
        self.call("pause")
    }
    fn resume(&mut self) -> Result<u64, String> {
        self.call("resume")
    }
    fn reopen(&mut self, disks: &boxlite::api::DiskSet) -> Result<u64, String> {
        self.call(&format!(
            "reopen {} {}",
            disks.guest_rootfs.display(),
            disks.container.display()
        ))
    }
    fn count(&mut self) -> Result<u64, String> {
        self.call("count")
    }
    fn stop(mut self: Box<Self>) -> Result<u64, String> {
        let n = self.call("stop")?;
        let st = self.child.wait().map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("the VM process exited {st}"));
        }
        Ok(n)
    }
}

impl Drop for ProcessVm {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The child side of [`ProcessVm`].
fn vmm_process_main(ctl: &Path) -> ! {
    use std::io::{BufRead, Write};
    let disks = boxlite::api::DiskSet {
        guest_rootfs: PathBuf::from(std::env::var("VMM_GUEST").expect("VMM_GUEST")),
        container: PathBuf::from(std::env::var("VMM_DISK").expect("VMM_DISK")),
    };
    let start_at = std::env::var("VMM_START_AT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let guest = GuestWriter::boot(&disks, start_at).expect("vmm: boot");
    let listener = std::os::unix::net::UnixListener::bind(ctl).expect("vmm: bind");
    let (conn, _) = listener.accept().expect("vmm: accept");
    let mut out = conn.try_clone().expect("clone");
    for line in std::io::BufReader::new(conn).lines() {
        let Ok(line) = line else { break };
        let mut words = line.split_whitespace();
        let res = match words.next() {
            Some("pause") => guest.pause(),
            Some("resume") => guest.resume(),
            Some("count") => Ok(guest.count()),
            Some("reopen") => match (words.next(), words.next()) {
                (Some(g), Some(d)) => guest.reopen(&boxlite::api::DiskSet {
                    guest_rootfs: PathBuf::from(g),
                    container: PathBuf::from(d),
                }),
                _ => Err("reopen needs two paths".into()),
            },
            Some("stop") => {
                let res = guest.shutdown();
                let ok = res.is_ok();
                let _ = match res {
                    Ok(n) => writeln!(out, "ok {n}"),
                    Err(e) => writeln!(out, "err {e}"),
                };
                std::process::exit(if ok { 0 } else { 1 });
            }
            other => Err(format!("unknown request {other:?}")),
        };
        let answer = match res {
            Ok(n) => format!("ok {n}"),
            Err(e) => format!("err {e}"),
        };
        if writeln!(out, "{answer}").is_err() {
            break;
        }
    }
    // The host is gone: stop as a VMM whose controller died would be stopped.
    let _ = guest.shutdown();
    std::process::exit(0)
}

/// A controller whose VMs are separate processes (sockets under `dir`).
fn process_vmm(dir: &Path) -> Arc<Standin> {
    let dir = dir.to_path_buf();
    StandinVmm::with_launcher(move |b, start_at| ProcessVm::launch(b, start_at, &dir))
}

/// Entry point of the stand-in VMM child process ([`ProcessVm`]). Run without
/// `BOXLITE_STANDIN_VMM` (as every test run does) it returns at once: it is not a test.
#[test]
fn standin_vmm_entry() {
    if let Ok(ctl) = std::env::var("BOXLITE_STANDIN_VMM") {
        vmm_process_main(Path::new(&ctl));
    }
}

fn no_quiesce() -> SnapshotOptions {
    let mut o = SnapshotOptions::default();
    o.quiesce(false);
    o
}

struct Host {
    _dir: tempfile::TempDir,
    home: PathBuf,
    rt: BoxliteRuntime,
    vmm: Arc<Standin>,
}

async fn open(
    home: &Path,
    storage: &str,
    vmm: &Arc<Standin>,
    q: Option<Arc<dyn Quiescer>>,
) -> BoxliteRuntime {
    let sources = ConfigSources {
        home: Some(home.to_path_buf()),
        storage: Some(storage.to_owned()),
        ..Default::default()
    };
    let mut b = BoxliteRuntime::builder()
        .config(Config::load(&sources).unwrap())
        .controller(vmm.clone());
    if let Some(q) = q {
        b = b.quiescer(q);
    }
    b.open().await.unwrap()
}

async fn host(storage: &str, q: Option<Arc<dyn Quiescer>>) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let vmm = process_vmm(dir.path());
    let rt = open(&home, storage, &vmm, q).await;
    Host {
        _dir: dir,
        home,
        rt,
        vmm,
    }
}

impl Host {
    /// Create box `name` and boot its stand-in VMM (the host's start sequence: VMM, then
    /// `LiteBox::start` to record it Running).
    async fn running_box(&self, name: &str) -> LiteBox {
        let b = self
            .rt
            .create(common::make_images(self._dir.path()), name)
            .await
            .unwrap();
        let info = b.info().await.unwrap();
        boxlite::api::BoxController::start(
            &*self.vmm,
            &LiveBox {
                id: info.id.clone(),
                name: name.to_owned(),
                disks: info.disks,
            },
        )
        .await
        .unwrap();
        b.start().await.unwrap();
        self.vmm.wait_for(b.id(), 50).unwrap();
        b
    }

    /// `boxlite doctor` finds nothing; for qcow2 also: every stored layer passes `qemu-img
    /// check` and the store holds exactly the referenced files.
    async fn consistent(&self, step: &str) {
        let report = self.rt.doctor(false).await.unwrap();
        assert!(report.problems.is_empty(), "{step}: {:?}", report.problems);
        if self.rt.storage_name() == "qcow2" {
            common::assert_store_consistent(&self.rt, &self.home, step).await;
        }
    }

    /// Stop the box's VMM (flushing) and record it Stopped; returns the final write count.
    async fn shutdown(&self, b: &LiteBox) -> u64 {
        let info = b.info().await.unwrap();
        boxlite::api::BoxController::stop(
            &*self.vmm,
            &LiveBox {
                id: info.id.clone(),
                name: b.name().to_owned(),
                disks: info.disks,
            },
        )
        .await
        .unwrap();
        b.stop().await.unwrap();
        match self.vmm.events(b.id()).last() {
            Some(Event::Stopped(n)) => *n,
            other => panic!("expected a stop event, got {other:?}"),
        }
    }
}

impl Host {
    /// Stop the box's VM and check its recorded live disk holds every acknowledged write.
    async fn stop_and_check_live(&self, b: &LiteBox, what: &str) -> u64 {
        let fin = self.shutdown(b).await;
        let live = b.info().await.unwrap().disks;
        assert_region(&live.container, fin, what);
        fin
    }
}

/// Check snapshot `name` of `b` holds exactly the writes acknowledged at the last pause/stop.
async fn check_snapshot_at_last_halt(vmm: &Standin, b: &LiteBox, name: &str) {
    let acked = last_halt(vmm, b);
    let disks = b.snapshot().disks(name).await.unwrap();
    assert_region(&disks.container, acked, &format!("snapshot {name}"));
}

/// The write count at the most recent pause or stop of box `b`.
fn last_halt(vmm: &Standin, b: &LiteBox) -> u64 {
    vmm.last_halt(b.id())
        .expect("the box was never paused or stopped")
}

async fn live_snapshots_hold_exactly_the_acknowledged_writes(storage: &str) {
    if !common::have_qemu() {
        return;
    }
    let h = host(storage, None).await;
    let b = h.running_box("web").await;
    let mut taken = Vec::new();
    for k in 0..5u64 {
        h.vmm.wait_for(b.id(), 100 * (k + 1) + 50).unwrap();
        let name = format!("v{k}");
        let info = b.snapshot().create(&name, &no_quiesce()).await.unwrap();
        let report = info
            .capture
            .clone()
            .expect("a running box's capture report");
        assert!(!report.quiesced && !report.stopped, "{report:?}");
        assert!(report.freeze_window.is_none());
        assert!(report.warnings.is_empty(), "{report:?}");
        let acked = last_halt(&h.vmm, &b);
        taken.push((name, acked));
        assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
        // The guest runs on after the capture (on the box's new live disks).
        h.vmm.wait_for(b.id(), acked + 20).unwrap();
    }
    // Every snapshot: exactly the writes acknowledged at its pause, none after, even though
    // the VM kept writing to the box for the later snapshots.
    for (name, acked) in &taken {
        let disks = b.snapshot().disks(name).await.unwrap();
        assert_region(&disks.container, *acked, &format!("snapshot {name}"));
        assert!(b
            .snapshot()
            .get(name)
            .await
            .unwrap()
            .unwrap()
            .capture
            .is_none());
    }
    let events = h.vmm.events(b.id());
    let reopens = events
        .iter()
        .filter(|e| matches!(e, Event::Reopened(_)))
        .count();
    if storage == "qcow2" {
        assert_eq!(
            reopens, 5,
            "qcow2 seals and reopens at every capture: {events:?}"
        );
    } else {
        assert_eq!(reopens, 0, "{storage} keeps the live files: {events:?}");
    }
    h.stop_and_check_live(&b, "live disk after stop").await;
    // A restore of a live snapshot gives back exactly its writes.
    b.snapshot().restore("v2").await.unwrap();
    assert_region(
        &b.info().await.unwrap().disks.container,
        taken[2].1,
        "restored v2",
    );
    h.consistent("after live snapshots").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_live_snapshots_hold_exactly_the_acknowledged_writes() {
    live_snapshots_hold_exactly_the_acknowledged_writes("qcow2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_live_snapshots_hold_exactly_the_acknowledged_writes() {
    live_snapshots_hold_exactly_the_acknowledged_writes("copy").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_export_streams_the_captured_state_and_the_guest_runs_on() {
    if !common::have_qemu() {
        return;
    }
    let h = host("qcow2", None).await;
    let b = h.running_box("web").await;
    h.vmm.wait_for(b.id(), 300).unwrap();
    let mut opts = ExportOptions::default();
    opts.live(no_quiesce());
    let archive = b.export(h._dir.path(), &opts).await.unwrap();
    let acked = last_halt(&h.vmm, &b);
    let report = b.last_capture().expect("report of the live export");
    assert!(!report.stopped && report.warnings.is_empty(), "{report:?}");
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
    h.vmm.wait_for(b.id(), acked + 50).unwrap();
    let imported = h.rt.import(&archive, "copy-of-web").await.unwrap();
    assert_region(
        &imported.info().await.unwrap().disks.container,
        acked,
        "imported live export",
    );
    let fin = h.stop_and_check_live(&b, "live disk").await;
    assert!(fin > acked + 50);
    h.consistent("after live export").await;
}

async fn live_clone(storage: &str) {
    if !common::have_qemu() {
        return;
    }
    let h = host(storage, None).await;
    let b = h.running_box("web").await;
    h.vmm.wait_for(b.id(), 300).unwrap();
    let mut opts = CloneOptions::default();
    opts.live(no_quiesce());
    let clones = b.clone_many(&["c1", "c2"], &opts).await.unwrap();
    let acked = last_halt(&h.vmm, &b);
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
    for c in &clones {
        let info = c.info().await.unwrap();
        assert_eq!(info.status, BoxStatus::Stopped);
        assert_region(&info.disks.container, acked, "live clone");
    }
    // start_after_clone boots the clone through the controller and records it Running.
    opts.start_after_clone(true);
    let started = b.clone("c3", &opts).await.unwrap();
    assert_eq!(started.info().await.unwrap().status, BoxStatus::Running);
    assert!(h.vmm.running(started.id()));
    h.vmm.wait_for(started.id(), 20).unwrap();
    h.shutdown(&started).await;
    h.stop_and_check_live(&b, "source live disk").await;
    h.consistent("after live clones").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qcow2_live_clone_holds_the_acknowledged_writes() {
    live_clone("qcow2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_live_clone_holds_the_acknowledged_writes() {
    live_clone("copy").await;
}

// ------------------------------------------------------------- quiescing

/// A guest agent that accepts connections and never answers: a freeze that blocks (A08 c).
struct StuckAgent {
    sock: PathBuf,
    _dir: tempfile::TempDir,
    _thread: std::thread::JoinHandle<()>,
}

impl StuckAgent {
    fn start() -> StuckAgent {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("stuck.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                match conn {
                    Ok(c) => held.push(c),
                    Err(_) => return,
                }
            }
        });
        StuckAgent {
            sock,
            _dir: dir,
            _thread: thread,
        }
    }
}

fn quiescer_at(sock: PathBuf) -> Arc<dyn Quiescer> {
    Arc::new(AgentQuiescer::new(move |_b: &LiveBox| sock.clone()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesce_failure_without_stop_fallback_changes_nothing() {
    if !common::have_qemu() {
        return;
    }
    // No agent listens at this path: the freeze fails at once.
    let gone = tempfile::tempdir().unwrap().path().join("no-agent.sock");
    let h = host("qcow2", Some(quiescer_at(gone))).await;
    let b = h.running_box("web").await;
    let before = b.info().await.unwrap();
    let mut opts = SnapshotOptions::default();
    opts.stop_on_quiesce_fail(false);
    let err = b.snapshot().create("v1", &opts).await.unwrap_err();
    assert!(
        matches!(err, Error::QuiesceFailed { ref box_name, .. } if box_name == "web"),
        "{err}"
    );
    let mut eopts = ExportOptions::default();
    eopts.live(opts.clone());
    let err = b.export(h._dir.path(), &eopts).await.unwrap_err();
    assert!(matches!(err, Error::QuiesceFailed { .. }), "{err}");
    let mut copts = CloneOptions::default();
    copts.live(opts.clone());
    let err = b.clone("c", &copts).await.unwrap_err();
    assert!(matches!(err, Error::QuiesceFailed { .. }), "{err}");
    // Nothing changed: no snapshot, no clone, no archive, same disks, still running, and the
    // VM was never paused.
    assert!(b.snapshot().list().await.unwrap().is_empty());
    assert!(h.rt.get("c").await.unwrap().is_none());
    assert!(!h._dir.path().join("web.boxsnap").exists());
    assert_eq!(b.info().await.unwrap(), before);
    assert!(h
        .vmm
        .events(b.id())
        .iter()
        .all(|e| matches!(e, Event::Started(_))));
    h.shutdown(&b).await;
    h.consistent("after refused live captures").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_blocking_past_the_timeout_stops_captures_and_restarts() {
    if !common::have_qemu() {
        return;
    }
    // A08 (c): the freeze does not answer within quiesce_timeout_secs.
    let stuck = StuckAgent::start();
    let h = host("qcow2", Some(quiescer_at(stuck.sock.clone()))).await;
    let b = h.running_box("web").await;
    let mut opts = SnapshotOptions::default();
    opts.quiesce_timeout_secs(1).stop_on_quiesce_fail(false);
    let t = Instant::now();
    let err = b.snapshot().create("v1", &opts).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(
        matches!(err, Error::QuiesceFailed { ref reason, .. } if reason.contains("1 s")),
        "{err}"
    );
    assert!(b.snapshot().list().await.unwrap().is_empty());

    // With the fallback: stop, capture, start again, and say so.
    opts.stop_on_quiesce_fail(true);
    let info = b.snapshot().create("v1", &opts).await.unwrap();
    let report = info.capture.expect("report");
    assert!(
        report.stopped && report.restarted && !report.quiesced,
        "{report:?}"
    );
    assert!(
        report
            .quiesce_error
            .as_deref()
            .unwrap_or("")
            .contains("1 s"),
        "{report:?}"
    );
    let stopped_at = last_halt(&h.vmm, &b);
    let events = h.vmm.events(b.id());
    let n = events.len();
    assert!(matches!(events[n - 2], Event::Stopped(_)), "{events:?}");
    // Restarted on the box's new live disks (qcow2: a fresh overlay on the sealed layer).
    let live = b.info().await.unwrap();
    assert_eq!(events[n - 1], Event::Started(live.disks.clone()));
    assert_eq!(live.status, BoxStatus::Running);
    let disks = b.snapshot().disks("v1").await.unwrap();
    assert_region(&disks.container, stopped_at, "snapshot taken stopped");
    h.vmm.wait_for(b.id(), stopped_at + 30).unwrap();
    h.stop_and_check_live(&b, "live after restart").await;

    // If the restart fails, the box is recorded Stopped and the report says so.
    let b2 = h.running_box("web2").await;
    h.vmm.fail_next("start");
    let info = b2.snapshot().create("v1", &opts).await.unwrap();
    let report = info.capture.expect("report");
    assert!(report.stopped && !report.restarted, "{report:?}");
    assert!(
        report.warnings.iter().any(|w| w.contains("start")),
        "{report:?}"
    );
    assert_eq!(b2.info().await.unwrap().status, BoxStatus::Stopped);
    assert!(!h.vmm.running(b2.id()));
    h.consistent("after stop fallback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_failures_roll_back_and_the_guest_runs_on() {
    if !common::have_qemu() {
        return;
    }
    let h = host("qcow2", None).await;
    let b = h.running_box("web").await;
    let before = b.info().await.unwrap();
    for action in ["pause", "reopen"] {
        h.vmm.fail_next(action);
        let err = b.snapshot().create("v1", &no_quiesce()).await.unwrap_err();
        assert!(
            matches!(err, Error::Vmm { action: ref a, .. } if a == action),
            "{action}: {err}"
        );
        assert!(b.snapshot().list().await.unwrap().is_empty());
        assert_eq!(b.info().await.unwrap(), before, "{action}");
        // Resumed on its previous disks and still writing to them.
        let n = h.vmm.count(b.id()).unwrap();
        h.vmm.wait_for(b.id(), n + 20).unwrap();
    }
    let events = h.vmm.events(b.id());
    assert!(
        !events.iter().any(|e| matches!(e, Event::Reopened(_))),
        "a failed reopen must leave the VM on its disks: {events:?}"
    );
    // A failed resume after a good capture: the snapshot stands, the report warns.
    h.vmm.fail_next("resume");
    let info = b.snapshot().create("v1", &no_quiesce()).await.unwrap();
    let report = info.capture.unwrap();
    assert!(
        report.warnings.iter().any(|w| w.contains("resume")),
        "{report:?}"
    );
    check_snapshot_at_last_halt(&h.vmm, &b, "v1").await;
    boxlite::api::BoxController::resume(
        &*h.vmm,
        &LiveBox {
            id: b.id().clone(),
            name: "web".into(),
            disks: b.info().await.unwrap().disks,
        },
    )
    .await
    .unwrap();
    h.stop_and_check_live(&b, "live").await;
    h.consistent("after controller failures").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_box_without_a_controller_is_refused_with_advice() {
    if !common::have_qemu() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rt = common::open_runtime(&dir.path().join("home")).await;
    let b = rt
        .create(common::make_images(dir.path()), "web")
        .await
        .unwrap();
    b.start().await.unwrap();
    let err = b
        .snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unsupported { .. }), "{err}");
    assert!(err.to_string().contains("controller"), "{err}");
    let mut bad = SnapshotOptions::default();
    bad.quiesce_timeout_secs(0);
    assert!(b.snapshot().create("v1", &bad).await.is_err());
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
}

// ------------------------------------------------- the real guest agent (loop-mounted ext4)

/// True when `mnt` is frozen right now: FIFREEZE answers EBUSY on a frozen filesystem (if it
/// succeeds instead, the filesystem was not frozen and is thawed again at once).
fn is_frozen(mnt: &Path) -> bool {
    let f = boxlite_guest::mounts::open_mount(mnt).expect("open mount");
    match boxlite_guest::mounts::fifreeze(&f) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => true,
        Err(e) => panic!("FIFREEZE probe on {}: {e}", mnt.display()),
        Ok(()) => {
            boxlite_guest::mounts::fithaw(&f).expect("thaw after probe");
            false
        }
    }
}

/// A loop-mounted ext4 standing in for the guest's filesystem, its in-process agent (allowed
/// to freeze only that mount), and a quiescer for it. None (after a loud skip) without root.
struct Guest {
    fs: guest_common::LoopFs,
    agent: guest_common::InProcess,
    _serial: guest_common::Serial,
}

impl Guest {
    fn start() -> Option<Guest> {
        if !guest_common::can_mount("ext4") {
            return None;
        }
        let serial = guest_common::serial();
        let fs = guest_common::LoopFs::new("ext4", None);
        let agent = guest_common::InProcess::start(boxlite_guest::Config {
            only: vec![fs.mnt.clone()],
            default_timeout_secs: 30,
        });
        Some(Guest {
            fs,
            agent,
            _serial: serial,
        })
    }

    fn quiescer(&self) -> Arc<dyn Quiescer> {
        let sock = self.agent.sock.clone();
        Arc::new(
            AgentQuiescer::new(move |_b: &LiveBox| sock.clone())
                .with_mounts(vec![self.fs.mnt.clone()]),
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiesced_live_snapshots_freeze_the_guest_only_around_the_pause() {
    if !common::have_qemu() {
        return;
    }
    let Some(guest) = Guest::start() else { return };
    let h = host("qcow2", Some(guest.quiescer())).await;
    let frozen_at_pause = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let seen = frozen_at_pause.clone();
        let mnt = guest.fs.mnt.clone();
        h.vmm
            .on_pause(move || seen.lock().unwrap().push(is_frozen(&mnt)));
    }
    let b = h.running_box("web").await;
    // Dirty data in the guest's page cache for the freeze's sync to write out.
    std::fs::write(guest.fs.mnt.join("app.log"), vec![7u8; 1 << 20]).unwrap();
    let runs: usize = std::env::var("BOXLITE_LIVE_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let (mut freeze, mut pause) = (Vec::new(), Vec::new());
    for k in 0..runs {
        let n = h.vmm.count(b.id()).unwrap();
        h.vmm.wait_for(b.id(), n + 10).unwrap();
        let name = format!("s{k}");
        let info = b
            .snapshot()
            .create(&name, &SnapshotOptions::default())
            .await
            .unwrap();
        let report = info.capture.expect("report");
        assert!(report.quiesced && !report.stopped, "{report:?}");
        assert_eq!(report.frozen_mounts, vec![guest.fs.mnt.clone()]);
        assert!(report.warnings.is_empty(), "{report:?}");
        // Thawed when create returns.
        assert!(
            !is_frozen(&guest.fs.mnt),
            "left frozen after snapshot {name}"
        );
        let acked = last_halt(&h.vmm, &b);
        assert_region(
            &b.snapshot().disks(&name).await.unwrap().container,
            acked,
            &name,
        );
        freeze.push(report.freeze_window.expect("freeze window"));
        pause.push(report.pause_window);
    }
    assert_eq!(
        *frozen_at_pause.lock().unwrap(),
        vec![true; runs],
        "frozen at every pause"
    );
    freeze.sort();
    pause.sort();
    eprintln!(
        "LIVE SNAPSHOT (qcow2, ext4 guest fs, {runs} runs): freeze window p50 {:?} p99 {:?} max {:?}; \
         pause window p50 {:?} p99 {:?}",
        percentile(&freeze, 0.5),
        percentile(&freeze, 0.99),
        freeze[freeze.len() - 1],
        percentile(&pause, 0.5),
        percentile(&pause, 0.99),
    );
    h.stop_and_check_live(&b, "live").await;
    h.consistent("after quiesced live snapshots").await;
}

/// A08 (b): the capture fails after the freeze (here: after the VM was already reopened on
/// the new overlay). The guest is thawed, the VM is back on its previous disks and running,
/// nothing is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_failure_after_freeze_thaws_resumes_and_changes_nothing() {
    if !common::have_qemu() {
        return;
    }
    let Some(guest) = Guest::start() else { return };
    std::env::set_var(boxlite::api::failpoint::ENV, "live.after_reopen=error");
    let h = host("qcow2", Some(guest.quiescer())).await;
    let b = h.running_box("web").await;
    let before = b.info().await.unwrap();
    let err = b
        .snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap_err();
    assert!(boxlite::api::failpoint::is_injected(&err), "{err}");
    std::env::remove_var(boxlite::api::failpoint::ENV);
    assert!(
        !is_frozen(&guest.fs.mnt),
        "the guest must be thawed after a failed capture"
    );
    assert!(guest_common::writable_within(
        &guest.fs.mnt,
        Duration::from_secs(5)
    ));
    assert!(b.snapshot().list().await.unwrap().is_empty());
    assert_eq!(b.info().await.unwrap(), before);
    let events = h.vmm.events(b.id());
    let reopened: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Reopened(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reopened.len(),
        2,
        "reopened on the new overlay, then back: {events:?}"
    );
    assert_eq!(reopened[1], before.disks);
    assert!(
        matches!(events.last(), Some(Event::Resumed(_))),
        "{events:?}"
    );
    // The VM writes to its original disk again, and a retry works.
    let n = h.vmm.count(b.id()).unwrap();
    h.vmm.wait_for(b.id(), n + 20).unwrap();
    b.snapshot()
        .create("v1", &SnapshotOptions::default())
        .await
        .unwrap();
    check_snapshot_at_last_halt(&h.vmm, &b, "v1").await;
    h.stop_and_check_live(&b, "live").await;
    h.consistent("after a failed live capture").await;
}

/// Entry point of the host process killed in A08 (a). Returns at once in normal test runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_host_entry() {
    let Ok(spec) = std::env::var("BOXLITE_LIVE_KILLED_HOST") else {
        return;
    };
    let mut parts = spec.split('\n');
    let (home, sock, mnt) = (
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
        PathBuf::from(parts.next().unwrap()),
    );
    let vmm = process_vmm(home.parent().expect("home has a parent"));
    let q: Arc<dyn Quiescer> =
        Arc::new(AgentQuiescer::new(move |_b: &LiveBox| sock.clone()).with_mounts(vec![mnt]));
    let rt = open(&home, "qcow2", &vmm, Some(q)).await;
    let h = Host {
        _dir: tempfile::tempdir().unwrap(),
        home,
        rt,
        vmm,
    };
    let b = h.running_box("web").await;
    // BOXLITE_FAILPOINT=live.after_freeze aborts this process with the guest frozen.
    let _ = b.snapshot().create("v1", &SnapshotOptions::default()).await;
    panic!("the failpoint should have aborted the process");
}

/// A08 (a): the host process dies right after the freeze. The agent thaws (the freezing
/// connection is gone; its watchdog would otherwise), and reopening the home rolls the
/// operation back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_after_freeze_leaves_the_guest_thawed_and_recovery_rolls_back() {
    if !common::have_qemu() {
        return;
    }
    let Some(guest) = Guest::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "killed_host_entry", "--nocapture"])
        .env(
            "BOXLITE_LIVE_KILLED_HOST",
            format!(
                "{}\n{}\n{}",
                home.display(),
                guest.agent.sock.display(),
                guest.fs.mnt.display()
            ),
        )
        .env(boxlite::api::failpoint::ENV, "live.after_freeze=abort")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("failpoint live.after_freeze: aborting"),
        "the host did not die at the failpoint: {}\n{stderr}",
        out.status
    );
    let t = Instant::now();
    assert!(
        guest_common::writable_within(&guest.fs.mnt, Duration::from_secs(10)),
        "the guest filesystem stayed frozen after its host died"
    );
    eprintln!("guest writable {:?} after the host died", t.elapsed());
    let rt = common::open_runtime(&home).await;
    let report = rt.recovery_report();
    assert!(
        report
            .rolled_back
            .iter()
            .any(|r| r.starts_with("snapshot_create")),
        "{report:?}"
    );
    let b = rt.get("web").await.unwrap().unwrap();
    assert_eq!(b.info().await.unwrap().status, BoxStatus::Running);
    assert!(b.snapshot().list().await.unwrap().is_empty());
    assert!(rt.doctor(false).await.unwrap().problems.is_empty());
    common::assert_store_consistent(&rt, &home, "after a killed live capture").await;
}

// ------------------------------------------- cancellation, and doctor during an operation

/// Make every pause of `vmm` take `d` longer (a slow VMM), so a capture can be cancelled
/// while the pause is in flight (already effective).
fn slow_pauses(vmm: &Standin, d: Duration) {
    vmm.delay_after("pause", d);
}

/// Wait (up to 5 s) until the box rests in `want` again.
async fn wait_status(b: &LiteBox, want: BoxStatus) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let st = b.info().await.unwrap().status;
        if st == want {
            return;
        }
        assert!(
            Instant::now() < until,
            "status stuck at {st}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_live_captures_resume_roll_back_and_release_the_box() {
    if !common::have_qemu() {
        return;
    }
    let h = host("qcow2", None).await;
    let b = h.running_box("web").await;
    let before = b.info().await.unwrap();
    slow_pauses(&h.vmm, Duration::from_millis(600));
    // Cancelled while paused: the VM is resumed, the status restored, nothing committed.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(300),
        b.snapshot().create("v1", &no_quiesce()),
    )
    .await;
    assert!(cancelled.is_err(), "the create should have been cancelled");
    wait_status(&b, BoxStatus::Running).await;
    let n = h.vmm.count(b.id()).unwrap();
    h.vmm.wait_for(b.id(), n + 20).unwrap();
    assert!(b.snapshot().list().await.unwrap().is_empty());
    assert_eq!(b.info().await.unwrap(), before);
    // A cancelled export leaves no partial archive behind.
    let mut eopts = ExportOptions::default();
    eopts.live(no_quiesce());
    let out = h._dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(300), b.export(&out, &eopts)).await;
    assert!(cancelled.is_err());
    wait_status(&b, BoxStatus::Running).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "a cancelled export left {left:?}");
    // The box is usable at once: no Busy, no stale state.
    slow_pauses(&h.vmm, Duration::ZERO);
    b.snapshot().create("v1", &no_quiesce()).await.unwrap();
    check_snapshot_at_last_halt(&h.vmm, &b, "v1").await;
    h.stop_and_check_live(&b, "live").await;
    h.consistent("after cancelled captures").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_freeze_does_not_block_the_next_capture() {
    if !common::have_qemu() {
        return;
    }
    let stuck = StuckAgent::start();
    let h = host("qcow2", Some(quiescer_at(stuck.sock.clone()))).await;
    let b = h.running_box("web").await;
    let mut opts = SnapshotOptions::default();
    opts.quiesce_timeout_secs(30).stop_on_quiesce_fail(false);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(300), b.snapshot().create("v1", &opts)).await;
    assert!(cancelled.is_err());
    wait_status(&b, BoxStatus::Running).await;
    // The abandoned freeze was let go: the next one times out on its own (not "already in
    // progress"), and the VM was never paused.
    opts.quiesce_timeout_secs(1);
    let err = b.snapshot().create("v1", &opts).await.unwrap_err();
    assert!(
        matches!(err, Error::QuiesceFailed { ref reason, .. } if reason.contains("within 1 s")),
        "{err}"
    );
    assert!(
        !err.to_string()
            .contains("could not quiesce box 'web': could not"),
        "{err}"
    );
    assert!(h
        .vmm
        .events(b.id())
        .iter()
        .all(|e| matches!(e, Event::Started(_))));
    h.shutdown(&b).await;
    h.consistent("after a cancelled freeze").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_or_a_second_runtime_during_a_live_capture_leaves_it_alone() {
    if !common::have_qemu() {
        return;
    }
    let h = host("qcow2", None).await;
    let b = h.running_box("web").await;
    slow_pauses(&h.vmm, Duration::from_millis(800));
    let rt = h.rt.clone();
    let name = b.name().to_owned();
    let capture = tokio::spawn(async move {
        let b = rt.get(&name).await.unwrap().unwrap();
        b.snapshot().create("v1", &no_quiesce()).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Same process: the operation in flight is alive, not a crash to repair.
    let report = h.rt.doctor(true).await.unwrap();
    assert!(
        !report.problems.iter().any(|p| matches!(
            p.kind,
            boxlite::ProblemKind::StaleJournal | boxlite::ProblemKind::StuckStatus
        )),
        "{:?}",
        report.problems
    );
    let second = common::open_runtime(&h.home).await;
    assert!(
        second.recovery_report().rolled_back.is_empty(),
        "{:?}",
        second.recovery_report()
    );
    capture.await.unwrap().unwrap();
    slow_pauses(&h.vmm, Duration::ZERO);
    check_snapshot_at_last_halt(&h.vmm, &b, "v1").await;
    h.stop_and_check_live(&b, "live").await;
    h.consistent("after doctor during a capture").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_during_reopen_or_resume_keeps_every_acknowledged_write() {
    if !common::have_qemu() {
        return;
    }
    let h = host("qcow2", None).await;
    let b = h.running_box("web").await;
    for action in ["reopen", "resume"] {
        h.vmm.delay_after(action, Duration::from_millis(600));
        let cancelled = tokio::time::timeout(
            Duration::from_millis(300),
            b.snapshot()
                .create(&format!("after-{action}"), &no_quiesce()),
        )
        .await;
        assert!(cancelled.is_err(), "{action}: should have been cancelled");
        h.vmm.delay_after(action, Duration::ZERO);
        wait_status(&b, BoxStatus::Running).await;
        // Running again, on the disks the catalog records.
        let n = h.vmm.count(b.id()).unwrap();
        h.vmm.wait_for(b.id(), n + 20).unwrap();
    }
    let listed: Vec<String> = b
        .snapshot()
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    // Cancelled during reopen: rolled back. Cancelled during resume: already committed.
    assert_eq!(listed, vec!["after-resume".to_owned()]);
    h.stop_and_check_live(&b, "live after cancels").await;
    // An abandoned operation rolls back but does not collect: its files go at the next
    // operation's (or open's) collection, here an explicit one.
    assert!(!h.rt.collect_garbage().await.unwrap().is_empty());
    h.consistent("after cancels during reopen and resume").await;
}
