//! Live capture of a running box (DESIGN.md section 6, "Running boxes"; docs/live-snapshots.md):
//! quiesce -> pause (or stop) -> capture -> reopen -> commit -> resume (or restart) -> thaw.
//!
//! [`LiveSession`] holds the VM paused (or stopped) and the guest frozen. [`LiveSession::end`]
//! resumes and thaws on every path; if a session is dropped without `end` (the caller's future
//! was cancelled, or a panic unwound through it) its `Drop` spawns a task that does the same,
//! and the guest agent's own watchdog thaws after the timeout if even that cannot run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use boxlite_api::{
    BoxController, CaptureReport, DiskSet, Error, LiveBox, Quiescer, Result, SnapshotOptions,
};

/// The guest agent's largest accepted freeze timeout, in seconds (boxlite-guest protocol).
pub(crate) const MAX_QUIESCE_TIMEOUT_SECS: u64 = 600;

/// Check the options of a live capture before anything happens.
///
/// Errors: [`Error::Config`] for a quiesce timeout outside 1..=600 seconds.
pub(crate) fn validate(opts: &SnapshotOptions) -> Result<()> {
    if opts.quiesce && !(1..=MAX_QUIESCE_TIMEOUT_SECS).contains(&opts.quiesce_timeout_secs) {
        return Err(Error::config(format!(
            "quiesce_timeout_secs {} is outside 1..={MAX_QUIESCE_TIMEOUT_SECS} seconds",
            opts.quiesce_timeout_secs
        )));
    }
    Ok(())
}

/// A running box held for capture: frozen (if quiesced) and paused, or stopped.
///
/// The flags say what has been done and not yet undone, so that [`LiveSession::end`] and the
/// `Drop` fallback (a cancelled future, a panic) undo exactly that.
pub(crate) struct LiveSession {
    controller: Arc<dyn BoxController>,
    quiescer: Option<Arc<dyn Quiescer>>,
    live: LiveBox,
    /// The disks the VM had when the session began (it goes back to them unless committed).
    original: DiskSet,
    /// The catalog now records `live.disks` as the box's disks.
    committed: bool,
    /// A freeze was asked for (it may still be in flight) and no thaw has been sent since.
    freeze_pending: bool,
    frozen_at: Option<Instant>,
    /// A pause (or stop) was asked for (it may still be in flight) and no resume (or start)
    /// has been sent since.
    halting: bool,
    /// When the pause (or stop) completed.
    halted_at: Option<Instant>,
    /// The catalog commit in flight (its outcome decides which disks the VM must be on).
    commit_task: Option<tokio::task::JoinHandle<Result<()>>>,
    /// The operation's gate, held until this session's undo is done (see `Op::gate`).
    gate: Option<tokio::sync::OwnedMutexGuard<()>>,
    report: CaptureReport,
}

impl LiveSession {
    /// Quiesce (if `opts.quiesce`) and pause the box; if quiescing fails and
    /// `opts.stop_on_quiesce_fail`, stop it instead.
    ///
    /// Errors: [`Error::QuiesceFailed`] (quiescing failed and stopping was not allowed: the
    /// guest is thawed and nothing changed); [`Error::Vmm`] from pause/stop (the guest is
    /// thawed, nothing changed).
    pub(crate) async fn begin(
        controller: Arc<dyn BoxController>,
        quiescer: Option<Arc<dyn Quiescer>>,
        live: LiveBox,
        opts: &SnapshotOptions,
        gate: Arc<tokio::sync::Mutex<()>>,
    ) -> Result<LiveSession> {
        let mut s = LiveSession {
            controller,
            quiescer,
            original: live.disks.clone(),
            live,
            committed: false,
            freeze_pending: false,
            frozen_at: None,
            halting: false,
            halted_at: None,
            commit_task: None,
            gate: Some(gate.lock_owned().await),
            report: CaptureReport::default(),
        };
        let timeout = Duration::from_secs(opts.quiesce_timeout_secs);
        let mut freeze_started = None;
        if opts.quiesce {
            let reason = match s.quiescer.clone() {
                None => Some(
                    "no guest agent: this runtime was built without a Quiescer \
                     (BoxliteRuntime::builder().quiescer(..))"
                        .to_owned(),
                ),
                Some(q) => {
                    s.freeze_pending = true;
                    freeze_started = Some(Instant::now());
                    match tokio::time::timeout(timeout, q.freeze(&s.live, timeout)).await {
                        Ok(Ok(mounts)) => {
                            s.frozen_at = Some(Instant::now());
                            s.report.quiesced = true;
                            s.report.frozen_mounts = mounts;
                            None
                        }
                        Ok(Err(Error::QuiesceFailed { reason, .. })) => Some(reason),
                        Ok(Err(e)) => Some(e.to_string()),
                        Err(_) => Some(format!(
                            "the guest agent did not finish freezing within {} s",
                            opts.quiesce_timeout_secs
                        )),
                    }
                }
            };
            if let Some(reason) = reason {
                // Whatever a failed or abandoned freeze left frozen is thawed now (the agent
                // also thaws when the connection goes and when its watchdog fires).
                s.thaw().await;
                tracing::warn!(box_name = %s.live.name, %reason, stop = opts.stop_on_quiesce_fail,
                    "quiescing the running box failed");
                if !opts.stop_on_quiesce_fail {
                    return Err(Error::QuiesceFailed {
                        box_name: s.live.name.clone(),
                        reason,
                    });
                }
                s.report.quiesce_error = Some(reason);
                s.report.stopped = true;
                s.halting = true;
                if let Err(e) = s.controller.stop(&s.live).await {
                    s.halting = false;
                    s.report.stopped = false;
                    return Err(e);
                }
                s.halted_at = Some(Instant::now());
                return Ok(s);
            }
        }
        // A08 (a): the host dies right after the freeze; the agent must thaw by itself.
        if let Err(e) = boxlite_api::failpoint::hit("live.after_freeze") {
            s.thaw().await;
            return Err(e);
        }
        s.halting = true;
        if let Err(e) = s.controller.pause(&s.live).await {
            s.halting = false;
            s.thaw().await;
            return Err(e);
        }
        s.halted_at = Some(Instant::now());
        // The agent's watchdog counts from the freeze request: past the timeout the guest may
        // have thawed (and written) before the pause. The capture is then crash-consistent.
        if let Some(started) = freeze_started.filter(|_| s.report.quiesced) {
            if started.elapsed() >= timeout {
                s.report.quiesced = false;
                let why = format!(
                    "the guest's freeze (timeout {} s) may have expired before the VM was \
                     paused; the capture is crash-consistent, not application-consistent",
                    opts.quiesce_timeout_secs
                );
                tracing::warn!(box_name = %s.live.name, "{why}");
                s.report.quiesce_error = Some(why.clone());
                s.report.warnings.push(why);
            }
        }
        Ok(s)
    }

    /// The box as the VMM sees it now (absolute disk paths).
    pub(crate) fn live(&self) -> &LiveBox {
        &self.live
    }

    /// Point the VM at `disks` (absolute): `reopen_disks` while paused; while stopped, only
    /// remember them for the restart. A no-op when they are the current disks.
    ///
    /// Errors: [`Error::Vmm`] from `reopen_disks` (the VM still uses its previous disks).
    pub(crate) async fn switch_disks(&mut self, disks: &DiskSet) -> Result<()> {
        if *disks == self.live.disks {
            return Ok(());
        }
        // Recorded before the call: if this future is dropped while the VMM reopens, the undo
        // must assume the VM may be on `disks` and reopen the original ones.
        let current = self.live.clone();
        self.live.disks = disks.clone();
        if !self.report.stopped {
            if let Err(e) = self.controller.reopen_disks(&current, disks).await {
                self.live.disks = current.disks;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Commit `batch` (which records the disks of the last [`LiveSession::switch_disks`]) in
    /// one catalog transaction, on a spawned task: if this future is dropped mid-commit, the
    /// undo waits for the outcome and keeps the VM on the new disks if it committed.
    ///
    /// Errors: the catalog's error (nothing committed).
    pub(crate) async fn commit(
        &mut self,
        catalog: Arc<dyn boxlite_api::CatalogBackend>,
        batch: Vec<boxlite_api::CatalogOp>,
    ) -> Result<()> {
        let task = tokio::spawn(async move { catalog.apply(batch).await });
        let res = match self.commit_task.insert(task).await {
            Ok(r) => r,
            Err(e) => Err(Error::config(format!(
                "internal error: catalog task failed: {e}"
            ))),
        };
        self.commit_task = None;
        self.committed = res.is_ok();
        res
    }

    /// Send the thaw (once); failures are logged and reported as warnings.
    async fn thaw(&mut self) {
        if !std::mem::take(&mut self.freeze_pending) {
            return;
        }
        if let Some(q) = &self.quiescer {
            if let Err(e) = q.thaw(&self.live).await {
                tracing::error!(box_name = %self.live.name, error = %e,
                    "thaw failed; the guest agent's watchdog thaws when the timeout passes");
                self.report
                    .warnings
                    .push(format!("thaw failed (the agent's watchdog thaws): {e}"));
            }
        }
    }

    /// Let the box run again and thaw the guest: resume (or, after a stop, start), then thaw.
    /// Unless [`LiveSession::commit`] succeeded, the VM first goes back to the disks
    /// it had at the start (the capture failed and is being rolled back).
    ///
    /// Never fails: problems become `report.warnings` (logged at error level); the capture
    /// itself has already succeeded or failed by now.
    pub(crate) async fn end(mut self) -> CaptureReport {
        if !self.committed && self.live.disks != self.original {
            let original = self.original.clone();
            if !self.report.stopped {
                if let Err(e) = self.controller.reopen_disks(&self.live, &original).await {
                    tracing::error!(box_name = %self.live.name, error = %e,
                        "could not reopen the box's previous disks after a failed capture");
                    self.report.warnings.push(format!(
                        "reopening the previous disks after a failed capture failed: {e}"
                    ));
                }
            }
            self.live.disks = original;
        }
        if self.halting {
            let stopped = self.report.stopped;
            let action = if stopped { "start" } else { "resume" };
            let res = if stopped {
                self.controller.start(&self.live).await
            } else {
                self.controller.resume(&self.live).await
            };
            // Tried: the Drop fallback must not try again.
            self.halting = false;
            match res {
                Ok(()) => self.report.restarted = stopped,
                Err(e) => {
                    tracing::error!(box_name = %self.live.name, error = %e,
                        "could not {action} the box after capturing it");
                    self.report
                        .warnings
                        .push(format!("{action} after capture failed: {e}"));
                }
            }
            if let Some(halted) = self.halted_at {
                self.report.pause_window = halted.elapsed();
            }
        }
        self.thaw().await;
        if let Some(at) = self.frozen_at {
            self.report.freeze_window = Some(at.elapsed());
        }
        let report = std::mem::take(&mut self.report);
        tracing::info!(
            box_name = %self.live.name,
            quiesced = report.quiesced,
            stopped = report.stopped,
            freeze_window_ms = report.freeze_window.map(|d| d.as_secs_f64() * 1e3),
            pause_window_ms = report.pause_window.as_secs_f64() * 1e3,
            "live capture finished"
        );
        report
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        let halted = self.halting;
        let gate = self.gate.take();
        if !halted && !self.freeze_pending {
            return;
        }
        let commit_task = self.commit_task.take();
        // Cancelled or unwound mid-capture: undo from a task (Drop cannot await).
        let controller = self.controller.clone();
        let quiescer = self.quiescer.clone();
        let mut live = self.live.clone();
        let back_to =
            (!self.committed && self.live.disks != self.original).then(|| self.original.clone());
        let stopped = self.report.stopped;
        let thaw = self.freeze_pending;
        tracing::warn!(box_name = %live.name, "live capture abandoned; resuming and thawing");
        let undo = async move {
            // Held until this undo is done: the abandoned operation restores the box's status
            // only afterwards.
            let _gate = gate;
            // A commit in flight decides: committed -> the VM stays on the new disks.
            let committed = match commit_task {
                Some(t) => matches!(t.await, Ok(Ok(()))),
                None => false,
            };
            let back_to = back_to.filter(|_| !committed);
            if halted {
                if let Some(original) = back_to {
                    if !stopped {
                        if let Err(e) = controller.reopen_disks(&live, &original).await {
                            tracing::error!(box_name = %live.name, error = %e,
                                "could not reopen the previous disks of an abandoned capture");
                        }
                    }
                    live.disks = original;
                }
                let res = if stopped {
                    controller.start(&live).await
                } else {
                    controller.resume(&live).await
                };
                if let Err(e) = res {
                    tracing::error!(box_name = %live.name, error = %e,
                        "could not resume the box after an abandoned capture");
                }
            }
            if thaw {
                if let Some(q) = quiescer {
                    if let Err(e) = q.thaw(&live).await {
                        tracing::error!(box_name = %live.name, error = %e,
                            "thaw failed; the guest agent's watchdog thaws when the timeout passes");
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(undo);
            }
            Err(_) => tracing::error!(box_name = %self.live.name,
                "no async runtime to resume the box on; the guest agent's watchdog thaws it"),
        }
    }
}
