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
pub(crate) struct LiveSession {
    controller: Arc<dyn BoxController>,
    quiescer: Option<Arc<dyn Quiescer>>,
    live: LiveBox,
    /// The disks the VM had when the session began (it goes back to them unless committed).
    original: DiskSet,
    /// The catalog now records `live.disks` as the box's disks.
    committed: bool,
    frozen_at: Option<Instant>,
    halted_at: Instant,
    report: CaptureReport,
    /// False once `end` ran (the Drop fallback then does nothing).
    armed: bool,
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
    ) -> Result<LiveSession> {
        let mut report = CaptureReport::default();
        let mut frozen_at = None;
        if opts.quiesce {
            let timeout = Duration::from_secs(opts.quiesce_timeout_secs);
            let reason = match &quiescer {
                None => Some(
                    "no guest agent: this runtime was built without a Quiescer \
                     (BoxliteRuntime::builder().quiescer(..))"
                        .to_owned(),
                ),
                Some(q) => match tokio::time::timeout(timeout, q.freeze(&live, timeout)).await {
                    Ok(Ok(mounts)) => {
                        frozen_at = Some(Instant::now());
                        report.quiesced = true;
                        report.frozen_mounts = mounts;
                        None
                    }
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some(format!(
                        "the guest agent did not finish freezing within {} s",
                        opts.quiesce_timeout_secs
                    )),
                },
            };
            if let Some(reason) = reason {
                // Whatever a failed or abandoned freeze left frozen is thawed now (the agent
                // also thaws when the connection goes and when its watchdog fires).
                if let Some(q) = &quiescer {
                    if let Err(e) = q.thaw(&live).await {
                        tracing::warn!(box_name = %live.name, error = %e,
                            "thaw after a failed freeze failed; the guest agent's watchdog thaws");
                    }
                }
                tracing::warn!(box_name = %live.name, %reason, stop = opts.stop_on_quiesce_fail,
                    "quiescing the running box failed");
                if !opts.stop_on_quiesce_fail {
                    return Err(Error::QuiesceFailed {
                        box_name: live.name.clone(),
                        reason,
                    });
                }
                report.quiesce_error = Some(reason);
                controller.stop(&live).await?;
                report.stopped = true;
                return Ok(LiveSession {
                    controller,
                    quiescer,
                    original: live.disks.clone(),
                    committed: false,
                    live,
                    frozen_at: None,
                    halted_at: Instant::now(),
                    report,
                    armed: true,
                });
            }
        }
        // A08 (a): the host dies right after the freeze; the agent's watchdog must thaw.
        if let Err(e) = boxlite_api::failpoint::hit("live.after_freeze") {
            thaw_quietly(&quiescer, &live).await;
            return Err(e);
        }
        if let Err(e) = controller.pause(&live).await {
            thaw_quietly(&quiescer, &live).await;
            return Err(e);
        }
        Ok(LiveSession {
            controller,
            quiescer,
            original: live.disks.clone(),
            committed: false,
            live,
            frozen_at,
            halted_at: Instant::now(),
            report,
            armed: true,
        })
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
        if !self.report.stopped {
            self.controller.reopen_disks(&self.live, disks).await?;
        }
        self.live.disks = disks.clone();
        Ok(())
    }

    /// The catalog now records the disks of the last [`LiveSession::switch_disks`]: keep the
    /// VM on them.
    pub(crate) fn mark_committed(&mut self) {
        self.committed = true;
    }

    /// Let the box run again and thaw the guest: resume (or, after a stop, start), then thaw.
    /// Unless [`LiveSession::mark_committed`] was called, the VM first goes back to the disks
    /// it had at the start (the capture failed and is being rolled back).
    ///
    /// Never fails: problems become `report.warnings` (logged at error level); the capture
    /// itself has already succeeded or failed by now.
    pub(crate) async fn end(mut self) -> CaptureReport {
        self.armed = false;
        let mut report = std::mem::take(&mut self.report);
        if !self.committed && self.live.disks != self.original {
            let original = self.original.clone();
            if !report.stopped {
                if let Err(e) = self.controller.reopen_disks(&self.live, &original).await {
                    tracing::error!(box_name = %self.live.name, error = %e,
                        "could not reopen the box's previous disks after a failed capture");
                    report.warnings.push(format!(
                        "reopening the previous disks after a failed capture failed: {e}"
                    ));
                }
            }
            self.live.disks = original;
        }
        let action = if report.stopped { "start" } else { "resume" };
        let res = if report.stopped {
            self.controller.start(&self.live).await
        } else {
            self.controller.resume(&self.live).await
        };
        match res {
            Ok(()) => report.restarted = report.stopped,
            Err(e) => {
                tracing::error!(box_name = %self.live.name, error = %e,
                    "could not {action} the box after capturing it");
                report
                    .warnings
                    .push(format!("{action} after capture failed: {e}"));
            }
        }
        report.pause_window = self.halted_at.elapsed();
        if let (Some(at), Some(q)) = (self.frozen_at, &self.quiescer) {
            if let Err(e) = q.thaw(&self.live).await {
                tracing::error!(box_name = %self.live.name, error = %e,
                    "thaw failed; the guest agent's watchdog thaws when the timeout passes");
                report
                    .warnings
                    .push(format!("thaw failed (the agent's watchdog thaws): {e}"));
            }
            report.freeze_window = Some(at.elapsed());
        }
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

async fn thaw_quietly(quiescer: &Option<Arc<dyn Quiescer>>, live: &LiveBox) {
    if let Some(q) = quiescer {
        if let Err(e) = q.thaw(live).await {
            tracing::error!(box_name = %live.name, error = %e,
                "thaw failed; the guest agent's watchdog thaws when the timeout passes");
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // Cancelled mid-capture: resume/restart and thaw from a task (Drop cannot await).
        let controller = self.controller.clone();
        let quiescer = self.quiescer.clone();
        let mut live = self.live.clone();
        let back_to =
            (!self.committed && self.live.disks != self.original).then(|| self.original.clone());
        let stopped = self.report.stopped;
        let frozen = self.frozen_at.is_some();
        tracing::warn!(box_name = %live.name, "live capture abandoned; resuming and thawing");
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
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
                    if frozen {
                        thaw_quietly(&quiescer, &live).await;
                    }
                });
            }
            Err(_) => tracing::error!(box_name = %live.name,
                "no async runtime to resume the box on; the guest agent's watchdog thaws it"),
        }
    }
}
