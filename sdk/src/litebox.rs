//! `LiteBox` (a handle on one box) and `SnapshotHandle` (its snapshots): the per-box
//! operations of DESIGN.md section 6.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boxlite_api::catalog::{BoxRecord, CatalogOp, SnapshotRecord};
use boxlite_api::status::Operation;
use boxlite_api::{
    validate_box_name, validate_snapshot_name, BoxController, BoxId, BoxInfo, BoxStatus, Capture,
    CaptureReport, CloneOptions, CloneSource, DiskSet, Error, ExportOptions, LiveBox, ObjectKind,
    Result, SnapshotInfo, SnapshotOptions,
};
use chrono::Utc;

use crate::live::LiveSession;
use crate::runtime::{Inner, Op};

/// A handle on one box. Holds its id: renames and removal by others are seen on the next call
/// (which then fails with `NotFound`).
pub struct LiteBox {
    inner: Arc<Inner>,
    id: BoxId,
    name: String,
    last_capture: Mutex<Option<CaptureReport>>,
}

impl std::fmt::Debug for LiteBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiteBox")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

fn running_unsupported(box_name: &str, what: &str) -> Error {
    Error::Unsupported {
        what: format!("{what} of running box '{box_name}'"),
        path: None,
        hint:
            "live capture needs a BoxController for the VMM, which this runtime was not given \
               (BoxliteRuntime::builder().controller(..)); stop the box first (`boxlite stop NAME`)"
                .into(),
    }
}

impl LiteBox {
    pub(crate) fn new(inner: Arc<Inner>, id: BoxId, name: String) -> Self {
        LiteBox {
            inner,
            id,
            name,
            last_capture: Mutex::new(None),
        }
    }

    /// How the last live `export` or `clone` through this handle captured the running box
    /// (`None` if it has not captured a running box). `snapshot().create` returns its report
    /// in [`SnapshotInfo::capture`] instead.
    pub fn last_capture(&self) -> Option<CaptureReport> {
        self.last_capture
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_last_capture(&self, report: CaptureReport) {
        *self.last_capture.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
    }

    /// The controller for a live capture of this running box.
    ///
    /// Errors: [`Error::Unsupported`] when the runtime has no [`BoxController`].
    fn controller(&self, what: &str) -> Result<Arc<dyn BoxController>> {
        self.inner
            .controller
            .clone()
            .ok_or_else(|| running_unsupported(&self.name, what))
    }

    /// Capture the disks of running box `rec` (held by `op`): quiesce, pause (or stop),
    /// `storage.snapshot`, reopen, commit `ops(&capture)` plus the box's new live disks in one
    /// catalog transaction, then resume (or restart) and thaw, whatever happened.
    ///
    /// Returns the capture (its `snapshot` disks are immutable and hold the captured state) and
    /// the report. If a stop-for-capture could not restart the box, `op` returns it to
    /// `Stopped`.
    ///
    /// Errors: [`Error::QuiesceFailed`] (nothing changed), [`Error::Vmm`], storage and catalog
    /// errors (the VM is back on its previous disks and nothing was committed).
    async fn capture_running(
        &self,
        op: &mut Op,
        controller: Arc<dyn BoxController>,
        rec: &BoxRecord,
        opts: &SnapshotOptions,
        ops: impl FnOnce(&Capture) -> Vec<CatalogOp>,
    ) -> Result<(Capture, CaptureReport)> {
        let inner = &self.inner;
        let live = LiveBox {
            id: rec.id.clone(),
            name: self.name.clone(),
            disks: rec.disks.under(&inner.home.root),
        };
        let mut session =
            LiveSession::begin(controller, inner.quiescer.clone(), live, opts, op.gate()).await?;
        let captured = async {
            boxlite_api::failpoint!("live.after_pause");
            let cap = inner
                .storage
                .snapshot(&inner.ctx, &rec.id, &rec.disks)
                .await?;
            session
                .switch_disks(&cap.live.under(&inner.home.root))
                .await?;
            boxlite_api::failpoint!("live.after_reopen");
            let mut batch = ops(&cap);
            batch.push(CatalogOp::SetBoxDisks {
                box_id: rec.id.clone(),
                disks: cap.live.clone(),
            });
            session.commit(inner.catalog.clone(), batch).await?;
            debug_assert_eq!(session.live().disks, cap.live.under(&inner.home.root));
            Ok(cap)
        }
        .await;
        let report = session.end().await;
        if report.stopped && !report.restarted {
            op.return_to(BoxStatus::Stopped);
        }
        captured.map(|cap| (cap, report))
    }

    /// The box's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The box's id.
    pub fn id(&self) -> &BoxId {
        &self.id
    }

    async fn record(&self) -> Result<BoxRecord> {
        self.inner.load_box_by_id(&self.id, &self.name).await
    }

    /// Current information: status, absolute disk paths, snapshot count.
    ///
    /// Errors: [`Error::NotFound`] if the box was removed.
    pub async fn info(&self) -> Result<BoxInfo> {
        let rec = self.record().await?;
        self.inner.box_info(rec).await
    }

    /// The box's snapshots.
    pub fn snapshot(&self) -> SnapshotHandle<'_> {
        SnapshotHandle { b: self }
    }

    /// Host hook: the VMM started the box (Stopped -> Running).
    ///
    /// Errors: [`Error::Busy`] during an operation; [`Error::InvalidState`] if already running.
    pub async fn start(&self) -> Result<()> {
        self.set_resting(BoxStatus::Stopped, BoxStatus::Running, "start")
            .await
    }

    /// Host hook: the VMM stopped the box (Running -> Stopped).
    ///
    /// Errors: [`Error::Busy`] during an operation; [`Error::InvalidState`] if not running.
    pub async fn stop(&self) -> Result<()> {
        self.set_resting(BoxStatus::Running, BoxStatus::Stopped, "stop")
            .await
    }

    async fn set_resting(&self, from: BoxStatus, to: BoxStatus, verb: &str) -> Result<()> {
        let rec = self.record().await?;
        if rec.status.is_busy() {
            return Err(Error::Busy {
                box_name: self.name.clone(),
                status: rec.status,
            });
        }
        if rec.status != from {
            return Err(Error::InvalidState {
                box_name: self.name.clone(),
                operation: verb.into(),
                status: rec.status,
                hint: format!("the box is already {}", rec.status),
            });
        }
        self.inner
            .catalog
            .apply(vec![CatalogOp::SetBoxStatus {
                box_id: self.id.clone(),
                expected: from,
                new: to,
            }])
            .await
    }

    /// Export the box to a `.boxsnap` archive at `dest` (a file path, or a directory to write
    /// `<name>.boxsnap` into). Returns the archive's path.
    ///
    /// A Running box (with a [`BoxController`]) is captured live first per `opts.live` and
    /// streamed from the captured state while it runs on; the report is in
    /// [`LiteBox::last_capture`].
    ///
    /// Errors: [`Error::Busy`]; [`Error::NoSpace`] (the partial archive is removed);
    /// [`Error::Config`] for an unknown codec, a level outside its range or a quiesce timeout
    /// outside 1..=600 s; for a running box [`Error::Unsupported`] (no controller),
    /// [`Error::QuiesceFailed`] (nothing changed), [`Error::Vmm`]; I/O errors.
    pub async fn export(&self, dest: &Path, opts: &ExportOptions) -> Result<PathBuf> {
        let inner = &self.inner;
        let rec = self.record().await?;
        let controller = if rec.status == BoxStatus::Running {
            crate::live::validate(&opts.live)?;
            Some(self.controller("export")?)
        } else {
            None
        };
        let codec_name = if !opts.compress {
            "none".to_owned()
        } else {
            opts.codec
                .clone()
                .unwrap_or_else(|| inner.config.codec.clone())
        };
        let codec =
            boxlite_api::registry::codec(&codec_name, &inner.config.plugin_config(&codec_name))?;
        // The default level (3) is zstd's; a codec whose range excludes it uses its own
        // default. An explicitly chosen level outside the codec's range is an error.
        let level = if codec.levels().contains(&opts.compression_level) {
            opts.compression_level
        } else if !opts.compress
            || opts.compression_level == ExportOptions::default().compression_level
        {
            codec.default_level()
        } else {
            return Err(Error::config(format!(
                "compression level {} is outside the {} codec's range {:?}",
                opts.compression_level,
                codec.name(),
                codec.levels()
            )));
        };
        let dest = crate::runtime::absolute(dest)?;
        // The archive is written under a temporary name next to its destination, possibly
        // outside the home: journal its name so recovery can remove it after a crash.
        let tag = ulid::Ulid::new().to_string().to_lowercase();
        let target = boxlite_archive::resolve_export_path(&dest, &self.name)?;
        let partial = target
            .parent()
            .map(|d| d.join(boxlite_archive::partial_prefix(&tag)))
            .into_iter()
            .collect();
        let mut op = inner
            .begin_op_staged("export", &rec, Operation::Export, partial)
            .await?;
        let mut written = None;
        let work = async {
            // A running box is captured first (its VM then runs on while the immutable
            // captured state streams); a stopped box streams its live disks.
            let disks = match controller {
                Some(c) => {
                    let (cap, report) = self
                        .capture_running(&mut op, c, &rec, &opts.live, |_| Vec::new())
                        .await?;
                    self.set_last_capture(report);
                    cap.snapshot
                }
                None => rec.disks.clone(),
            };
            let mut flats = Vec::new();
            for (role, path) in disks.iter() {
                flats.push((role, inner.storage.read_flat(&inner.ctx, path).await?));
            }
            let meta = crate::transfer::ExportMeta {
                box_name: opts.include_metadata.then(|| self.name.clone()),
                image: if opts.include_metadata {
                    rec.image.clone()
                } else {
                    String::new()
                },
                file_stem: self.name.clone(),
                tag: tag.clone(),
            };
            let path = crate::transfer::export_blocking(dest, codec, level, meta, flats).await?;
            written = Some(path.clone());
            boxlite_api::failpoint!("export.after_write");
            Ok((Vec::new(), path))
        }
        .await;
        let result = inner.finish(op, work).await;
        if let (Err(_), Some(path)) = (&result, &written) {
            // An export that reports failure leaves no archive behind.
            let _ = std::fs::remove_file(path);
        }
        result
    }

    /// Clone the box into a new stopped box `name` (see [`LiteBox::clone_many`]).
    pub async fn clone(&self, name: &str, opts: &CloneOptions) -> Result<LiteBox> {
        let mut boxes = self.clone_many(&[name], opts).await?;
        boxes
            .pop()
            .ok_or_else(|| Error::config("internal error: clone returned no box"))
    }

    /// Clone the box into several new stopped boxes in one call (a fan-out: with the qcow2
    /// backend every clone is a thin overlay on one shared layer).
    ///
    /// From the current state (default) the box may be Stopped, or Running when the runtime
    /// has a [`BoxController`] (captured live per `opts.live`, see docs/live-snapshots.md; the
    /// report is in [`LiteBox::last_capture`]); with `opts.from_snapshot` any status is fine.
    /// `opts.cow = false` makes standalone copies. `opts.start_after_clone` boots every new box
    /// through the controller and records it Running.
    ///
    /// Errors: [`Error::InvalidName`] / [`Error::AlreadyExists`] for any name (before any
    /// I/O; duplicates in `names` count); [`Error::NotFound`] for the snapshot; [`Error::Busy`];
    /// for a running source: [`Error::Unsupported`] (no controller), [`Error::Config`] (quiesce
    /// timeout outside 1..=600 s), [`Error::QuiesceFailed`] (nothing changed), [`Error::Vmm`];
    /// with `start_after_clone`, [`Error::Vmm`] naming the clones that were and were not
    /// started (all clones exist).
    pub async fn clone_many(&self, names: &[&str], opts: &CloneOptions) -> Result<Vec<LiteBox>> {
        let inner = &self.inner;
        let mut seen = HashSet::new();
        for name in names {
            validate_box_name(name)?;
            if !seen.insert(*name) {
                return Err(Error::InvalidName {
                    kind: ObjectKind::Box,
                    name: (*name).to_owned(),
                    reason: "it is given more than once in one clone call",
                });
            }
        }
        if opts.start_after_clone && inner.controller.is_none() {
            return Err(Error::Unsupported {
                what: "start_after_clone".into(),
                path: None,
                hint: "starting a VM needs a BoxController, which this runtime was not given \
                       (BoxliteRuntime::builder().controller(..)); clone, then start the box \
                       from your VMM"
                    .into(),
            });
        }
        for name in names {
            inner.ensure_name_free(name).await?;
        }
        if let Some(snap) = &opts.from_snapshot {
            validate_snapshot_name(snap)?;
        }
        let rec = self.record().await?;
        // Where the clones come from: a snapshot, the stopped box's live disks, or (running
        // box) a live capture taken inside the operation below.
        let (mut op, source, label) = match &opts.from_snapshot {
            Some(snap_name) => {
                let snap = inner
                    .catalog
                    .get_snapshot(&rec.id, snap_name)
                    .await?
                    .ok_or_else(|| Error::snapshot_not_found(&self.name, snap_name))?;
                let op = inner
                    .begin_op("clone", &rec, Operation::CloneFromSnapshot)
                    .await?;
                let src = CloneFrom::Ready(CloneSource::Snapshot {
                    box_id: rec.id.clone(),
                    disks: snap.disks,
                });
                (op, src, format!("clone of {}@{}", self.name, snap_name))
            }
            None => {
                let src = if rec.status == BoxStatus::Running {
                    crate::live::validate(&opts.live)?;
                    CloneFrom::Capture(self.controller("clone")?)
                } else {
                    CloneFrom::Ready(CloneSource::Live {
                        box_id: rec.id.clone(),
                        disks: rec.disks.clone(),
                    })
                };
                let op = inner
                    .begin_op("clone", &rec, Operation::CloneCurrent)
                    .await?;
                (op, src, format!("clone of {}", self.name))
            }
        };
        let ids: Vec<BoxId> = names.iter().map(|_| BoxId::generate()).collect();
        let work = async {
            let source = match source {
                CloneFrom::Ready(source) => source,
                CloneFrom::Capture(controller) => {
                    let (cap, report) = self
                        .capture_running(&mut op, controller, &rec, &opts.live, |_| Vec::new())
                        .await?;
                    self.set_last_capture(report);
                    CloneSource::Snapshot {
                        box_id: rec.id.clone(),
                        disks: cap.snapshot,
                    }
                }
            };
            let outcome = inner
                .storage
                .clone_disks(&inner.ctx, &source, &ids, opts.cow)
                .await?;
            boxlite_api::failpoint!("clone.after_storage");
            if outcome.clones.len() != ids.len() {
                return Err(Error::config(format!(
                    "storage backend '{}' returned {} clones for {} requested",
                    inner.storage.name(),
                    outcome.clones.len(),
                    ids.len()
                )));
            }
            let mut ops = Vec::new();
            if let Some(live) = outcome.source_live {
                ops.push(CatalogOp::SetBoxDisks {
                    box_id: rec.id.clone(),
                    disks: live,
                });
            }
            let now = Utc::now();
            for ((id, name), disks) in ids.iter().zip(names).zip(outcome.clones) {
                ops.push(CatalogOp::InsertBox(BoxRecord {
                    id: id.clone(),
                    name: Some((*name).to_owned()),
                    status: BoxStatus::Stopped,
                    created_at: now,
                    image: label.clone(),
                    storage: inner.storage.name().to_owned(),
                    disks,
                }));
            }
            Ok((ops, ()))
        }
        .await;
        inner.finish(op, work).await?;
        let boxes: Vec<LiteBox> = ids
            .into_iter()
            .zip(names)
            .map(|(id, name)| LiteBox::new(inner.clone(), id, (*name).to_owned()))
            .collect();
        if opts.start_after_clone {
            let (mut started, mut failed) = (Vec::new(), Vec::new());
            for b in &boxes {
                match b.start_vm().await {
                    Ok(()) => started.push(b.name.clone()),
                    Err(e) => failed.push(format!("'{}': {e}", b.name)),
                }
            }
            if !failed.is_empty() {
                return Err(Error::vmm(
                    names.join(", "),
                    "start",
                    format!(
                        "the clones exist; started: [{}]; not started (Stopped): {}",
                        started.join(", "),
                        failed.join("; ")
                    ),
                ));
            }
        }
        Ok(boxes)
    }

    /// Boot this (Stopped) box through the runtime's controller, then record it `Running`.
    ///
    /// Errors: [`Error::Vmm`] (the box stays Stopped and says so), catalog errors.
    async fn start_vm(&self) -> Result<()> {
        let controller = self.controller("start")?;
        let rec = self.record().await?;
        let live = LiveBox {
            id: rec.id.clone(),
            name: self.name.clone(),
            disks: rec.disks.under(&self.inner.home.root),
        };
        controller.start(&live).await?;
        self.start().await
    }
}

/// Where a clone's disks come from, decided before the operation begins.
enum CloneFrom {
    /// A snapshot, or a stopped box's live disks.
    Ready(CloneSource),
    /// A running box, captured live (through this controller) inside the operation.
    Capture(Arc<dyn BoxController>),
}

/// The snapshots of one box: `box.snapshot().create/list/get/remove/restore`.
pub struct SnapshotHandle<'a> {
    b: &'a LiteBox,
}

impl SnapshotHandle<'_> {
    /// Take a snapshot named `name` of the box's disks.
    ///
    /// A Running box is captured live (docs/live-snapshots.md): quiesced per `opts`, paused,
    /// captured, resumed and thawed; the returned [`SnapshotInfo::capture`] says how.
    ///
    /// Errors: [`Error::InvalidName`] (before any I/O), [`Error::AlreadyExists`],
    /// [`Error::Busy`]; for a running box [`Error::Unsupported`] (no controller),
    /// [`Error::Config`] (quiesce timeout outside 1..=600 s), [`Error::QuiesceFailed`] (with
    /// `stop_on_quiesce_fail: false`; nothing changed), [`Error::Vmm`] (nothing committed).
    pub async fn create(&self, name: &str, opts: &SnapshotOptions) -> Result<SnapshotInfo> {
        validate_snapshot_name(name)?;
        let inner = &self.b.inner;
        let rec = self.b.record().await?;
        if inner.catalog.get_snapshot(&rec.id, name).await?.is_some() {
            return Err(already(&self.b.name, name));
        }
        if rec.status == BoxStatus::Running {
            crate::live::validate(opts)?;
            let controller = self.b.controller("snapshot")?;
            let mut op = inner
                .begin_op("snapshot_create", &rec, Operation::SnapshotCreate)
                .await?;
            let mut made = None;
            let work = self
                .b
                .capture_running(&mut op, controller, &rec, opts, |cap| {
                    let snap = SnapshotRecord {
                        box_id: rec.id.clone(),
                        name: name.to_owned(),
                        created_at: Utc::now(),
                        disks: cap.snapshot.clone(),
                        guest_disk_bytes: cap.guest_disk_bytes,
                        container_disk_bytes: cap.container_disk_bytes,
                    };
                    made = Some(snapshot_info(&snap));
                    vec![CatalogOp::InsertSnapshot(snap)]
                })
                .await
                .and_then(|(_, report)| {
                    let mut info = made.ok_or_else(|| {
                        Error::config("internal error: live capture made no snapshot")
                    })?;
                    info.capture = Some(report);
                    Ok((Vec::new(), info))
                });
            return inner.finish(op, work).await;
        }
        let op = inner
            .begin_op("snapshot_create", &rec, Operation::SnapshotCreate)
            .await?;
        let work = async {
            let cap = inner
                .storage
                .snapshot(&inner.ctx, &rec.id, &rec.disks)
                .await?;
            boxlite_api::failpoint!("snapshot_create.after_storage");
            let snap = SnapshotRecord {
                box_id: rec.id.clone(),
                name: name.to_owned(),
                created_at: Utc::now(),
                disks: cap.snapshot,
                guest_disk_bytes: cap.guest_disk_bytes,
                container_disk_bytes: cap.container_disk_bytes,
            };
            let info = snapshot_info(&snap);
            Ok((
                vec![
                    CatalogOp::InsertSnapshot(snap),
                    CatalogOp::SetBoxDisks {
                        box_id: rec.id.clone(),
                        disks: cap.live,
                    },
                ],
                info,
            ))
        }
        .await;
        inner.finish(op, work).await
    }

    /// The box's snapshots, oldest first (same-instant snapshots in creation order).
    pub async fn list(&self) -> Result<Vec<SnapshotInfo>> {
        let rec = self.b.record().await?;
        Ok(self
            .b
            .inner
            .catalog
            .list_snapshots(&rec.id)
            .await?
            .iter()
            .map(snapshot_info)
            .collect())
    }

    /// The snapshot `name`, or `None`.
    ///
    /// Errors: [`Error::InvalidName`]; [`Error::NotFound`] if the box was removed.
    pub async fn get(&self, name: &str) -> Result<Option<SnapshotInfo>> {
        validate_snapshot_name(name)?;
        let rec = self.b.record().await?;
        Ok(self
            .b
            .inner
            .catalog
            .get_snapshot(&rec.id, name)
            .await?
            .as_ref()
            .map(snapshot_info))
    }

    /// Absolute paths of the snapshot's (immutable) disk files, for inspection tools.
    ///
    /// Errors: [`Error::NotFound`].
    pub async fn disks(&self, name: &str) -> Result<DiskSet> {
        validate_snapshot_name(name)?;
        let rec = self.b.record().await?;
        let snap = self.load(&rec, name).await?;
        Ok(snap.disks.under(&self.b.inner.home.root))
    }

    /// Make the box's disks equal to snapshot `name`. The box must be Stopped and stays
    /// Stopped; every snapshot is kept.
    ///
    /// Errors: [`Error::NotFound`], [`Error::InvalidState`] (running), [`Error::Busy`].
    pub async fn restore(&self, name: &str) -> Result<()> {
        validate_snapshot_name(name)?;
        let inner = &self.b.inner;
        let rec = self.b.record().await?;
        let snap = self.load(&rec, name).await?;
        let op = inner
            .begin_op("snapshot_restore", &rec, Operation::SnapshotRestore)
            .await?;
        let work = async {
            let live = inner
                .storage
                .restore(&inner.ctx, &rec.id, &snap.disks)
                .await?;
            boxlite_api::failpoint!("snapshot_restore.after_storage");
            Ok((
                vec![CatalogOp::SetBoxDisks {
                    box_id: rec.id.clone(),
                    disks: live,
                }],
                (),
            ))
        }
        .await;
        inner.finish(op, work).await
    }

    /// Remove snapshot `name`. Boxes cloned from it and other snapshots are unaffected; its
    /// storage is reclaimed once nothing depends on it.
    ///
    /// Errors: [`Error::NotFound`], [`Error::InvalidState`] (running), [`Error::Busy`].
    pub async fn remove(&self, name: &str) -> Result<()> {
        validate_snapshot_name(name)?;
        let inner = &self.b.inner;
        let rec = self.b.record().await?;
        self.load(&rec, name).await?;
        let op = inner
            .begin_op("snapshot_remove", &rec, Operation::SnapshotRemove)
            .await?;
        let work = async {
            // Re-read under the held status: a concurrent remove may have won.
            let snap = inner
                .catalog
                .get_snapshot(&rec.id, name)
                .await?
                .ok_or_else(|| Error::snapshot_not_found(&self.b.name, name))?;
            let mut remaining = inner.roots().await?;
            if let Some(pos) = remaining.snapshots.iter().position(|d| *d == snap.disks) {
                remaining.snapshots.remove(pos);
            }
            inner
                .storage
                .remove_snapshot(&inner.ctx, &snap.disks, &remaining)
                .await?;
            boxlite_api::failpoint!("snapshot_remove.after_storage");
            Ok((
                vec![CatalogOp::RemoveSnapshot {
                    box_id: rec.id.clone(),
                    name: name.to_owned(),
                }],
                (),
            ))
        }
        .await;
        inner.finish(op, work).await
    }

    async fn load(&self, rec: &BoxRecord, name: &str) -> Result<SnapshotRecord> {
        self.b
            .inner
            .catalog
            .get_snapshot(&rec.id, name)
            .await?
            .ok_or_else(|| Error::snapshot_not_found(&self.b.name, name))
    }
}

fn already(box_name: &str, name: &str) -> Error {
    Error::AlreadyExists {
        kind: ObjectKind::Snapshot,
        name: name.to_owned(),
        box_name: Some(box_name.to_owned()),
    }
}

fn snapshot_info(s: &SnapshotRecord) -> SnapshotInfo {
    SnapshotInfo {
        name: s.name.clone(),
        created_at: s.created_at,
        size_bytes: s.guest_disk_bytes + s.container_disk_bytes,
        guest_disk_bytes: s.guest_disk_bytes,
        container_disk_bytes: s.container_disk_bytes,
        capture: None,
    }
}
