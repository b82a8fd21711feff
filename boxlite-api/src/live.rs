//! Running boxes: the two traits a host implements (or takes from `boxlite-guest`) so the
//! runtime can capture a box whose VM is running (DESIGN.md section 6, "Running boxes"), and
//! the report of how a capture went.
//!
//! # The live capture sequence (docs/live-snapshots.md)
//! For `snapshot().create`, `export` and `clone` (from the current state) of a `Running` box:
//!
//! 1. [`Quiescer::freeze`] the guest's filesystems (sync, then FIFREEZE), bounded by
//!    `quiesce_timeout_secs`;
//! 2. [`BoxController::pause`] the VM (vCPUs stopped, the VMM's disk caches flushed);
//! 3. capture the disks (qcow2: seal the live overlay and put a fresh one on top; reflink:
//!    FICLONE; copy: a sparse copy) and, when the live disk files changed,
//!    [`BoxController::reopen_disks`];
//! 4. commit the catalog change;
//! 5. [`BoxController::resume`], then [`Quiescer::thaw`].
//!
//! Resume and thaw run on every path, errors included. If the freeze fails (no agent, an agent
//! error, or the timeout) the runtime either fails with [`crate::Error::QuiesceFailed`] having
//! changed nothing, or (with `stop_on_quiesce_fail`) [`BoxController::stop`]s the box, captures
//! it, [`BoxController::start`]s it again and says so in the [`CaptureReport`].

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::types::{BoxId, DiskSet};

/// A box as handed to a [`BoxController`] or [`Quiescer`]: who it is and where its disks are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveBox {
    /// The box's id (stable for the box's life; a host may key its VMM table by it).
    pub id: BoxId,
    /// The box's name.
    pub name: String,
    /// ABSOLUTE paths of the disk files the VMM has open (or must open on `start`).
    pub disks: DiskSet,
}

/// The host's handle on its VMM (libkrun, Firecracker, cloud-hypervisor, ...), one
/// implementation for all of the host's boxes.
///
/// Every method must be all-or-nothing: on `Err` the VM is in the state it was in before the
/// call. Errors are returned as [`crate::Error::Vmm`] (see [`crate::Error::vmm`]).
///
/// The runtime never times out these calls: return an error rather than hang. When the caller
/// cancels an operation while a call is in flight, the runtime cannot know whether it took
/// effect and undoes it blindly, so `resume` of a VM that is not paused and `reopen_disks` to
/// the files the VM already uses must succeed without effect, and `start` of a VM that runs
/// must fail without effect.
#[async_trait]
pub trait BoxController: Send + Sync {
    /// Stop the vCPUs and make every write the guest has been told is complete durable in the
    /// disk files (a qcow2 flush: data clusters, L2 tables, refcounts), and submit no further
    /// disk I/O until [`BoxController::resume`]. The runtime reads and seals the files next.
    async fn pause(&self, b: &LiveBox) -> Result<()>;

    /// Let a paused VM run again (on the disks of the last [`BoxController::reopen_disks`]).
    async fn resume(&self, b: &LiveBox) -> Result<()>;

    /// Shut the VM down (gracefully if the host can, so the guest flushes its caches) and
    /// close its disk files. Used only when quiescing fails and `stop_on_quiesce_fail` is set.
    async fn stop(&self, b: &LiveBox) -> Result<()>;

    /// Boot the VM on `b.disks` (after a stop for capture, or `start_after_clone`).
    async fn start(&self, b: &LiveBox) -> Result<()>;

    /// While paused: close the disk files the VM has open and open `disks` instead (absolute
    /// paths; after a qcow2 seal the old files are immutable snapshot layers and the new ones
    /// are thin overlays backing onto them). Called only when the live files changed. On `Err`
    /// the VM must still be using its previous files; the runtime then rolls the capture back.
    async fn reopen_disks(&self, b: &LiveBox, disks: &DiskSet) -> Result<()>;
}

/// Quiesces a guest's filesystems through an agent inside the guest (`boxlite-guest` ships
/// `AgentQuiescer`, a client of `boxlite-guest-agent` over the VMM's vsock-as-unix-socket).
#[async_trait]
pub trait Quiescer: Send + Sync {
    /// Flush and freeze the guest's writable filesystems (sync, then FIFREEZE). `timeout` is
    /// also the guest-side watchdog: the guest thaws by itself once it passes, even if the host
    /// never calls [`Quiescer::thaw`]. Returns the frozen mount points (guest paths).
    ///
    /// Errors: any [`crate::Error`]; the runtime turns a failure (or `timeout` elapsing first)
    /// into a quiesce failure.
    async fn freeze(&self, b: &LiveBox, timeout: Duration) -> Result<Vec<PathBuf>>;

    /// Thaw what [`Quiescer::freeze`] froze (a no-op when nothing is frozen). Also called after
    /// a failed or timed-out freeze, so the guest is never left frozen.
    async fn thaw(&self, b: &LiveBox) -> Result<()>;
}

/// How a running box was captured by a live `snapshot().create`, `export` or `clone`.
///
/// Returned in [`crate::SnapshotInfo::capture`] by `create` (not stored: `get`/`list` return
/// `None`), and by `LiteBox::last_capture` after an export or clone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureReport {
    /// The guest's filesystems were frozen during the capture (application-consistent).
    /// False means crash-consistent: the VM was paused (or stopped) but not quiesced.
    pub quiesced: bool,
    /// Guest mount points that were frozen, in freeze order.
    pub frozen_mounts: Vec<PathBuf>,
    /// Why quiescing was not done or failed (`None` when it succeeded or was not asked for).
    pub quiesce_error: Option<String>,
    /// The box was stopped for the capture because quiescing failed (`stop_on_quiesce_fail`).
    pub stopped: bool,
    /// After a stop for capture: the box was started again. False with `stopped` means the
    /// restart failed (see `warnings`) and the box is now `Stopped`.
    pub restarted: bool,
    /// Time from the freeze's success to the thaw's completion (the guest's frozen window as
    /// the host measures it), `None` when no freeze succeeded. When the pause came after the
    /// quiesce timeout, the agent's watchdog may have thawed earlier: `quiesced` is then false.
    pub freeze_window: Option<Duration>,
    /// Time from pause (or stop) to resume (or restart): how long the guest did not run.
    pub pause_window: Duration,
    /// Problems that did not fail the operation, e.g. a thaw error after a good capture.
    pub warnings: Vec<String>,
}
