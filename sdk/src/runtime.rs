//! `BoxliteRuntime`: opens a home, runs recovery, and creates, finds, lists, removes and
//! imports boxes. Per-box operations live on [`crate::LiteBox`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxlite_api::catalog::{BoxRecord, CatalogOp, JournalEntry};
use boxlite_api::registry::{self, PluginKind};
use boxlite_api::status::{self, Operation};
use boxlite_api::{
    validate_box_name, ArchiveCodec, BoxController, BoxId, BoxInfo, BoxStatus, CatalogBackend,
    DiskSet, DiskSource, Error, ObjectKind, Quiescer, Result, Roots, SnapshotBackend,
    StorageContext,
};
use chrono::Utc;
use serde::Serialize;

use crate::config::{Config, ConfigSources, STORAGE_AUTO};
use crate::home::{GcGuard, Home, HomeRecord, LAYOUT_VERSION};
use crate::litebox::LiteBox;

/// The images a new box is created from (absolute or relative paths; qcow2 or raw files,
/// the format detected from the header).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoxOptions {
    /// Image for the container disk (`disk.qcow2`).
    pub disk: PathBuf,
    /// Image for the guest OS disk (`guest-rootfs.qcow2`).
    pub guest_rootfs: PathBuf,
}

/// What recovery did when the runtime opened the home.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RecoveryReport {
    /// Operations of dead processes that had not committed and were rolled back, as
    /// `"<operation> <journal id>"`.
    pub rolled_back: Vec<String>,
    /// Boxes whose transient status was reset to the status they had before.
    pub statuses_reset: Vec<String>,
    /// Unreferenced files and staging leftovers deleted (absolute paths).
    pub deleted: Vec<PathBuf>,
    /// Why garbage collection was skipped (a root could not be resolved), if it was.
    pub gc_skipped: Option<String>,
}

impl RecoveryReport {
    /// True when recovery found nothing to do.
    pub fn is_empty(&self) -> bool {
        self.rolled_back.is_empty()
            && self.statuses_reset.is_empty()
            && self.deleted.is_empty()
            && self.gc_skipped.is_none()
    }
}

/// The BoxLite runtime: one home, one storage backend, one catalog. Cheap to clone.
#[derive(Clone)]
pub struct BoxliteRuntime {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) home: Home,
    pub(crate) ctx: StorageContext,
    pub(crate) storage: Arc<dyn SnapshotBackend>,
    pub(crate) catalog: Arc<dyn CatalogBackend>,
    /// The host's VMM, for live capture of running boxes (None: running boxes are refused).
    pub(crate) controller: Option<Arc<dyn BoxController>>,
    /// The guest agent client used to quiesce running boxes.
    pub(crate) quiescer: Option<Arc<dyn Quiescer>>,
    recovery: RecoveryReport,
}

/// Builds a [`BoxliteRuntime`] with the host's hooks for running boxes:
/// `BoxliteRuntime::builder().config(cfg).controller(vmm).quiescer(agent).open().await`.
///
/// Without a [`BoxController`], snapshot/export/clone of a `Running` box fail with
/// [`Error::Unsupported`] ("stop it first"). Without a [`Quiescer`], a capture that asks to
/// quiesce (the default) counts as a quiesce failure: with the default
/// `stop_on_quiesce_fail: true` the box is stopped, captured and restarted; with `false` the
/// call fails with [`Error::QuiesceFailed`]. `quiesce: false` captures crash-consistently under
/// pause. The runtime never times out controller calls: a controller must return (an error,
/// leaving the VM as it was) rather than hang; a caller may cancel the operation's future, which
/// resumes, thaws and rolls back from a spawned task. See docs/live-snapshots.md.
#[derive(Default)]
pub struct RuntimeBuilder {
    config: Option<Config>,
    controller: Option<Arc<dyn BoxController>>,
    quiescer: Option<Arc<dyn Quiescer>>,
}

impl std::fmt::Debug for RuntimeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuntimeBuilder")
            .field("config", &self.config)
            .field("controller", &self.controller.is_some())
            .field("quiescer", &self.quiescer.is_some())
            .finish()
    }
}

impl RuntimeBuilder {
    /// Use `config` (default: the process environment, as [`BoxliteRuntime::open_default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = Some(config);
        self
    }

    /// The host's VMM controller, used for live capture and `start_after_clone`.
    pub fn controller(mut self, controller: Arc<dyn BoxController>) -> Self {
        self.controller = Some(controller);
        self
    }

    /// The guest quiescer (e.g. `boxlite_guest::AgentQuiescer`).
    pub fn quiescer(mut self, quiescer: Arc<dyn Quiescer>) -> Self {
        self.quiescer = Some(quiescer);
        self
    }

    /// Open the home and run recovery.
    ///
    /// Errors: as [`BoxliteRuntime::open`], plus config loading errors when no config was given.
    pub async fn open(self) -> Result<BoxliteRuntime> {
        let config = match self.config {
            Some(c) => c,
            None => Config::load(&ConfigSources::from_process())?,
        };
        BoxliteRuntime::open_with(config, OpenMode::Normal, self.controller, self.quiescer).await
    }
}

impl std::fmt::Debug for BoxliteRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoxliteRuntime")
            .field("home", &self.inner.home.root)
            .field("storage", &self.inner.storage.name())
            .field("catalog", &self.inner.catalog.name())
            .finish()
    }
}

impl BoxliteRuntime {
    /// Open the home configured by the process environment (`BOXLITE_HOME`, `~/.boxlite`,
    /// `config.toml`, `BOXLITE_*`), with the embedded defaults otherwise.
    ///
    /// Errors: as [`BoxliteRuntime::open`].
    pub async fn open_default() -> Result<Self> {
        Self::open(Config::load(&ConfigSources::from_process())?).await
    }

    /// Open (creating if needed) the home of `config` and run recovery.
    ///
    /// Errors: [`Error::Config`] for unknown plugins, a home created with a different storage
    /// backend or catalog, or a home with unsafe permissions; [`Error::Unsupported`] when the
    /// storage backend's probe fails on this filesystem; catalog and I/O errors.
    pub async fn open(config: Config) -> Result<Self> {
        Self::open_with(config, OpenMode::Normal, None, None).await
    }

    /// A builder, to give the runtime the host's [`BoxController`] and [`Quiescer`].
    pub fn builder() -> RuntimeBuilder {
        RuntimeBuilder::default()
    }

    /// Open an EXISTING home for inspection (`boxlite doctor`): no home is created and no
    /// recovery runs, so what a crash left behind is still there to be reported.
    ///
    /// Errors: [`Error::Config`] when the home does not exist; otherwise as
    /// [`BoxliteRuntime::open`].
    pub async fn open_for_inspection(config: Config) -> Result<Self> {
        if !config.home.join(crate::home::HOME_RECORD).is_file() {
            return Err(Error::Config {
                path: Some(config.home.clone()),
                detail: "no BoxLite home here (no home.toml); check --home / BOXLITE_HOME".into(),
            });
        }
        Self::open_with(config, OpenMode::Inspect, None, None).await
    }

    async fn open_with(
        config: Config,
        mode: OpenMode,
        controller: Option<Arc<dyn BoxController>>,
        quiescer: Option<Arc<dyn Quiescer>>,
    ) -> Result<Self> {
        // Fix this process's start instant before any journal entry is written or any
        // liveness is checked: entries of this process are then never mistaken for those of
        // an earlier process that had the same pid.
        crate::home::process_start();
        config.validate_plugins()?;
        let home = Home::new(config.home.clone());
        create_private_dir(&home.root)?;
        home.check_permissions()?;
        let record = home.read_record()?;
        let record_path = home.root.join(crate::home::HOME_RECORD);
        let mismatch = |what: &str, recorded: &str, wanted: &str| Error::Config {
            path: Some(record_path.clone()),
            detail: format!(
                "this home was created with {what} '{recorded}' but '{wanted}' is configured; \
                 use the original {what} or another home"
            ),
        };
        let storage_name = match (&record, config.storage.as_str()) {
            (Some(r), _) if config.storage_is_default => r.storage.clone(),
            (Some(r), STORAGE_AUTO) => r.storage.clone(),
            (Some(r), s) if s != r.storage => return Err(mismatch("storage", &r.storage, s)),
            (Some(r), _) => r.storage.clone(),
            (None, STORAGE_AUTO) => resolve_auto(&home, &config).await?,
            (None, s) => s.to_owned(),
        };
        let mut config = config;
        if let Some(r) = &record {
            if config.catalog_is_default {
                config.catalog = r.catalog.clone();
            }
            if r.catalog != config.catalog {
                return Err(mismatch("catalog", &r.catalog, &config.catalog));
            }
        }
        home.ensure_dirs(&storage_name)?;
        let ctx = home.storage_context(&storage_name);
        let storage = registry::storage(&storage_name, &config.plugin_config(&storage_name))?;
        // The probe writes a file into the store: hold the GC lock shared meanwhile, or
        // another process's collector may delete it mid-probe (and fail this open).
        let probe_gc = home.gc_shared()?;
        storage.probe(&ctx).await?;
        drop(probe_gc);
        let catalog = registry::catalog(&config.catalog, &config.plugin_config(&config.catalog))?;
        if record.is_none() {
            home.write_record(&HomeRecord {
                layout_version: LAYOUT_VERSION,
                storage: storage_name.clone(),
                catalog: config.catalog.clone(),
            })?;
        }
        home.hold_process_lock()?;
        let mut inner = Inner {
            config,
            home,
            ctx,
            storage,
            catalog,
            controller,
            quiescer,
            recovery: RecoveryReport::default(),
        };
        if mode == OpenMode::Normal {
            inner.recovery = inner.recover().await?;
            inner.home.sweep_stale_locks()?;
        }
        if !inner.recovery.is_empty() {
            tracing::info!(report = ?inner.recovery, "recovery finished");
        }
        Ok(BoxliteRuntime {
            inner: Arc::new(inner),
        })
    }

    /// What recovery did when this runtime opened the home.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.inner.recovery
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// The storage backend's registry name.
    pub fn storage_name(&self) -> &str {
        self.inner.storage.name()
    }

    /// The catalog's registry name.
    pub fn catalog_name(&self) -> &str {
        self.inner.catalog.name()
    }

    /// Create a box named `name` from two images. The images are copied into the home (the
    /// box never depends on the given files afterwards).
    ///
    /// Errors: [`Error::InvalidName`] (before any I/O), [`Error::AlreadyExists`], I/O errors
    /// naming a missing image, [`Error::Unsupported`] for an image that is not a regular file
    /// (directory, FIFO, device), [`Error::Unsupported`]/[`Error::Corrupt`] for images the
    /// safe qcow2 open refuses.
    pub async fn create(&self, opts: BoxOptions, name: &str) -> Result<LiteBox> {
        validate_box_name(name)?;
        let inner = &self.inner;
        inner.ensure_name_free(name).await?;
        let source = DiskSource {
            guest_rootfs: absolute(&opts.guest_rootfs)?,
            container: absolute(&opts.disk)?,
        };
        for p in [&source.guest_rootfs, &source.container] {
            // Not a regular file (a FIFO would block every backend's open forever): refused.
            if !std::fs::metadata(p).map_err(|e| Error::io(p, e))?.is_file() {
                return Err(Error::Unsupported {
                    what: "an image that is not a regular file".into(),
                    path: Some(p.clone()),
                    hint: "pass a qcow2 image or a raw disk image file".into(),
                });
            }
        }
        let id = BoxId::generate();
        let image = format!(
            "{} + {}",
            file_label(&source.guest_rootfs),
            file_label(&source.container)
        );
        let op = inner.begin("box_create", None, Vec::new()).await?;
        let work = async {
            let disks = inner.storage.create_disks(&inner.ctx, &id, &source).await?;
            boxlite_api::failpoint!("box_create.after_storage");
            let rec = BoxRecord {
                id: id.clone(),
                name: Some(name.to_owned()),
                status: BoxStatus::Stopped,
                created_at: Utc::now(),
                image,
                storage: inner.storage.name().to_owned(),
                disks,
            };
            Ok((vec![CatalogOp::InsertBox(rec)], ()))
        }
        .await;
        inner.finish(op, work).await?;
        Ok(LiteBox::new(self.inner.clone(), id, name.to_owned()))
    }

    /// The box named `name`, or `None`.
    ///
    /// Errors: [`Error::InvalidName`] for a name that breaks the rule; catalog errors.
    pub async fn get(&self, name: &str) -> Result<Option<LiteBox>> {
        validate_box_name(name)?;
        Ok(self
            .inner
            .catalog
            .find_box(name)
            .await?
            .map(|r| LiteBox::new(self.inner.clone(), r.id, name.to_owned())))
    }

    /// Every box, oldest first.
    pub async fn list(&self) -> Result<Vec<BoxInfo>> {
        let mut out = Vec::new();
        for rec in self.inner.catalog.list_boxes().await? {
            out.push(self.inner.box_info(rec).await?);
        }
        Ok(out)
    }

    /// Remove the box `name` and its snapshots. Storage shared with other boxes (clones) is
    /// kept until its last user goes.
    ///
    /// A running box needs `force`; with a [`BoxController`] the runtime then stops its VM
    /// first (without one, the host must have stopped it: its files are deleted).
    ///
    /// Errors: [`Error::NotFound`]; [`Error::Busy`] during another operation;
    /// [`Error::InvalidState`] for a running box unless `force`; [`Error::Vmm`] when the
    /// controller cannot stop it (nothing removed).
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        validate_box_name(name)?;
        let inner = &self.inner;
        let rec = inner.load_box(name).await?;
        if rec.status.is_busy() {
            return Err(Error::Busy {
                box_name: name.to_owned(),
                status: rec.status,
            });
        }
        if rec.status == BoxStatus::Running && !force {
            return Err(Error::InvalidState {
                box_name: name.to_owned(),
                operation: "remove".into(),
                status: rec.status,
                hint: "stop it first, or pass --force".into(),
            });
        }
        let op = inner
            .begin_holding("box_remove", &rec, BoxStatus::Removing, Vec::new())
            .await?;
        let work = async {
            if let (BoxStatus::Running, Some(controller)) = (rec.status, &inner.controller) {
                let live = boxlite_api::LiveBox {
                    id: rec.id.clone(),
                    name: inner.label(&rec),
                    disks: rec.disks.under(&inner.home.root),
                };
                controller.stop(&live).await?;
            }
            let snaps = inner.catalog.list_snapshots(&rec.id).await?;
            let own: HashSet<&DiskSet> = std::iter::once(&rec.disks)
                .chain(snaps.iter().map(|s| &s.disks))
                .collect();
            let mut remaining = inner.roots().await?;
            remaining.live.retain(|d| !own.contains(d));
            remaining.snapshots.retain(|d| !own.contains(d));
            inner
                .storage
                .remove_disks(&inner.ctx, &rec.disks, &remaining)
                .await?;
            boxlite_api::failpoint!("box_remove.after_storage");
            Ok((
                vec![CatalogOp::RemoveBox {
                    box_id: rec.id.clone(),
                }],
                (),
            ))
        }
        .await;
        inner.finish(op, work).await
    }

    /// Import a `.boxsnap` archive as a new stopped box named `name`. Every checksum and disk
    /// header is verified before the box becomes visible; on failure nothing is left behind.
    ///
    /// Errors: [`Error::InvalidName`], [`Error::AlreadyExists`], [`Error::Archive`] for a
    /// malformed, truncated, unsafe or newer-version archive, [`Error::NoSpace`].
    pub async fn import(&self, archive: &Path, name: &str) -> Result<LiteBox> {
        validate_box_name(name)?;
        let inner = &self.inner;
        inner.ensure_name_free(name).await?;
        let archive = absolute(archive)?;
        let codecs = all_codecs(&inner.config)?;
        let id = BoxId::generate();
        let op = inner.begin("import", None, Vec::new()).await?;
        let staging = inner.ctx.staging.clone();
        let work = async {
            let imported =
                crate::transfer::import_blocking(archive.clone(), codecs, staging).await?;
            let result = async {
                boxlite_api::failpoint!("import.after_extract");
                let disks = inner
                    .storage
                    .adopt_disks(&inner.ctx, &id, &imported.disks)
                    .await?;
                boxlite_api::failpoint!("import.after_adopt");
                let rec = BoxRecord {
                    id: id.clone(),
                    name: Some(name.to_owned()),
                    status: BoxStatus::Stopped,
                    created_at: Utc::now(),
                    image: imported.manifest.image.clone(),
                    storage: inner.storage.name().to_owned(),
                    disks,
                };
                Ok((vec![CatalogOp::InsertBox(rec)], ()))
            }
            .await;
            imported.cleanup();
            result
        }
        .await;
        inner.finish(op, work).await?;
        Ok(LiteBox::new(self.inner.clone(), id, name.to_owned()))
    }

    /// Delete unreferenced storage now (normally done after every operation).
    ///
    /// Returns the deleted files; empty when another operation is in flight (it will collect).
    pub async fn collect_garbage(&self) -> Result<Vec<PathBuf>> {
        self.inner.gc().await
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    Normal,
    Inspect,
}

/// An operation in flight: its journal entry, the status transition it holds, and the shared
/// GC lock that keeps its new files from being collected before it commits.
///
/// An `Op` dropped without [`Inner::finish`] (the caller's future was cancelled, or a panic
/// unwound through it) rolls itself back from a spawned task: status restored, journal entry
/// removed, staged paths deleted, so the box is not left busy until the next open.
pub(crate) struct Op {
    journal_id: String,
    /// The journal operation name, the prefix of this operation's failpoints.
    operation: String,
    held: Option<(BoxId, BoxStatus, BoxStatus)>,
    /// Paths recorded in the journal entry (removed if the operation is abandoned).
    staged: Vec<PathBuf>,
    catalog: Arc<dyn CatalogBackend>,
    /// Committed or rolled back: nothing left for `Drop` to do.
    settled: std::sync::atomic::AtomicBool,
    /// Held by a live capture's session until its undo (resume, thaw) is done: an abandoned
    /// operation restores the box's status only after that, so no next operation can start
    /// while the VM is still paused by this one.
    gate: Arc<tokio::sync::Mutex<()>>,
    _gc: GcGuard,
}

impl Drop for Op {
    fn drop(&mut self) {
        if self.settled.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let ops = rollback_ops(&self.journal_id, &self.held);
        let catalog = self.catalog.clone();
        let staged = std::mem::take(&mut self.staged);
        let journal = self.journal_id.clone();
        let gate = self.gate.clone();
        tracing::warn!(operation = %self.operation, journal = %journal,
            "operation abandoned before it finished; rolling it back");
        let undo = async move {
            let _after_live_undo = gate.lock().await;
            for path in &staged {
                remove_staged(path);
            }
            if let Err(e) = catalog.apply(ops).await {
                tracing::error!(error = %e, journal = %journal,
                    "could not roll back an abandoned operation; recovery will on next open");
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(undo);
            }
            Err(_) => tracing::error!(journal = %self.journal_id,
                "no async runtime to roll back an abandoned operation; recovery will on next open"),
        }
    }
}

/// Apply `ops` (one transaction) on a spawned task and wait for it. Dropping the caller's
/// future cannot leave the outcome unknown: the task still completes, and if it committed
/// after the caller was gone, `undo` is applied and `staged` removed.
///
/// Errors: the catalog's error (nothing applied).
async fn apply_or_undo(
    catalog: &Arc<dyn CatalogBackend>,
    ops: Vec<CatalogOp>,
    undo: Vec<CatalogOp>,
    staged: Vec<PathBuf>,
) -> Result<()> {
    struct Pending {
        task: Option<tokio::task::JoinHandle<Result<()>>>,
        catalog: Arc<dyn CatalogBackend>,
        undo: Vec<CatalogOp>,
        staged: Vec<PathBuf>,
    }
    impl Drop for Pending {
        fn drop(&mut self) {
            let Some(task) = self.task.take() else { return };
            let catalog = self.catalog.clone();
            let undo = std::mem::take(&mut self.undo);
            let staged = std::mem::take(&mut self.staged);
            let Ok(handle) = tokio::runtime::Handle::try_current() else {
                tracing::error!(
                    "no async runtime to undo an abandoned begin; recovery will on next open"
                );
                return;
            };
            handle.spawn(async move {
                if let Ok(Ok(())) = task.await {
                    for p in &staged {
                        remove_staged(p);
                    }
                    if let Err(e) = catalog.apply(undo).await {
                        tracing::error!(error = %e,
                            "could not undo an abandoned begin; recovery will on next open");
                    }
                }
            });
        }
    }
    let task = {
        let catalog = catalog.clone();
        tokio::spawn(async move { catalog.apply(ops).await })
    };
    let mut pending = Pending {
        task: Some(task),
        catalog: catalog.clone(),
        undo,
        staged,
    };
    let res = match pending.task.as_mut() {
        Some(t) => t.await,
        None => return Ok(()),
    };
    pending.task = None;
    res.map_err(|e| Error::config(format!("internal error: catalog task failed: {e}")))?
}

/// The catalog changes that undo an operation's begin: the held status back, the journal
/// entry gone.
fn rollback_ops(journal_id: &str, held: &Option<(BoxId, BoxStatus, BoxStatus)>) -> Vec<CatalogOp> {
    let mut ops = Vec::new();
    if let Some((box_id, hold, prior)) = held {
        ops.push(CatalogOp::SetBoxStatus {
            box_id: box_id.clone(),
            expected: *hold,
            new: *prior,
        });
    }
    ops.push(CatalogOp::RemoveJournal {
        id: journal_id.to_owned(),
    });
    ops
}

impl Op {
    /// The gate a live capture holds until its undo is done (see the field's docs).
    pub(crate) fn gate(&self) -> Arc<tokio::sync::Mutex<()>> {
        self.gate.clone()
    }

    /// The status the box returns to when the operation ends (its status before it began,
    /// unless changed with [`Op::return_to`]).
    pub(crate) fn return_to(&mut self, status: BoxStatus) {
        if let Some((_, _, prior)) = &mut self.held {
            *prior = status;
        }
    }
}

impl Inner {
    /// Begin an operation that does not hold a box.
    pub(crate) async fn begin(
        &self,
        operation: &str,
        box_id: Option<&BoxId>,
        staged: Vec<PathBuf>,
    ) -> Result<Op> {
        let gc = self.gc_shared().await?;
        let entry = self.journal_entry(operation, box_id.cloned(), None, staged.clone());
        let journal_id = entry.id.clone();
        apply_or_undo(
            &self.catalog,
            vec![CatalogOp::InsertJournal(entry)],
            rollback_ops(&journal_id, &None),
            staged.clone(),
        )
        .await?;
        let op = Op {
            journal_id,
            operation: operation.to_owned(),
            held: None,
            staged,
            catalog: self.catalog.clone(),
            settled: false.into(),
            gate: Default::default(),
            _gc: gc,
        };
        self.after_begin(op).await
    }

    /// Begin an exclusive operation governed by the status table: check `operation` against
    /// the box's status, then compare-and-set it to the operation's holding status.
    pub(crate) async fn begin_op(
        &self,
        journal_name: &str,
        rec: &BoxRecord,
        operation: Operation,
    ) -> Result<Op> {
        self.begin_op_staged(journal_name, rec, operation, Vec::new())
            .await
    }

    /// [`Inner::begin_op`] recording `staged` paths in the journal entry, which recovery
    /// removes if the operation's process dies before it commits (see [`remove_staged`]).
    pub(crate) async fn begin_op_staged(
        &self,
        journal_name: &str,
        rec: &BoxRecord,
        operation: Operation,
        staged: Vec<PathBuf>,
    ) -> Result<Op> {
        status::check(operation, &self.label(rec), rec.status)?;
        match operation.rule().holds {
            Some(hold) => self.begin_holding(journal_name, rec, hold, staged).await,
            None => self.begin(journal_name, Some(&rec.id), staged).await,
        }
    }

    /// Begin an operation holding box `rec` in status `hold` (compare-and-set from its
    /// current status, so a concurrent operation gets `Busy`).
    pub(crate) async fn begin_holding(
        &self,
        operation: &str,
        rec: &BoxRecord,
        hold: BoxStatus,
        staged: Vec<PathBuf>,
    ) -> Result<Op> {
        let gc = self.gc_shared().await?;
        let entry = self.journal_entry(
            operation,
            Some(rec.id.clone()),
            Some(rec.status),
            staged.clone(),
        );
        let journal_id = entry.id.clone();
        let held = Some((rec.id.clone(), hold, rec.status));
        apply_or_undo(
            &self.catalog,
            vec![
                CatalogOp::SetBoxStatus {
                    box_id: rec.id.clone(),
                    expected: rec.status,
                    new: hold,
                },
                CatalogOp::InsertJournal(entry),
            ],
            rollback_ops(&journal_id, &held),
            staged.clone(),
        )
        .await?;
        let op = Op {
            journal_id,
            operation: operation.to_owned(),
            held,
            staged,
            catalog: self.catalog.clone(),
            settled: false.into(),
            gate: Default::default(),
            _gc: gc,
        };
        self.after_begin(op).await
    }

    /// Failpoint `<op>.after_begin`: the journal entry and the held status are committed.
    async fn after_begin(&self, op: Op) -> Result<Op> {
        if let Err(e) = boxlite_api::failpoint::hit_at(&op.operation, "after_begin") {
            self.rollback(&op).await;
            return Err(e);
        }
        Ok(op)
    }

    /// Take the shared GC lock on a blocking thread (flock may wait for a running GC, and
    /// must not block an async worker that the GC itself may need).
    async fn gc_shared(&self) -> Result<GcGuard> {
        let home = self.home.clone();
        tokio::task::spawn_blocking(move || home.gc_shared())
            .await
            .map_err(|e| Error::config(format!("internal error: lock task failed: {e}")))?
    }

    fn journal_entry(
        &self,
        operation: &str,
        box_id: Option<BoxId>,
        prior_status: Option<BoxStatus>,
        staged: Vec<PathBuf>,
    ) -> JournalEntry {
        JournalEntry {
            id: ulid::Ulid::new().to_string(),
            operation: operation.to_owned(),
            box_id,
            prior_status,
            owner_pid: std::process::id(),
            started_at: Utc::now(),
            staged,
        }
    }

    /// Finish an operation: commit its catalog changes together with the status restore and
    /// the journal removal in one transaction, or roll back if `work` (or the commit) failed.
    /// Runs garbage collection afterwards either way.
    pub(crate) async fn finish<T>(&self, op: Op, work: Result<(Vec<CatalogOp>, T)>) -> Result<T> {
        // From here on this call settles the operation (even if its own future is dropped
        // mid-commit, recovery on the next open handles what is left).
        op.settled.store(true, std::sync::atomic::Ordering::SeqCst);
        let work = work.and_then(|w| {
            boxlite_api::failpoint::hit_at(&op.operation, "before_commit")?;
            Ok(w)
        });
        let result = match work {
            Ok((mut ops, value)) => {
                if let Some((box_id, hold, prior)) = &op.held {
                    let removed = ops
                        .iter()
                        .any(|o| matches!(o, CatalogOp::RemoveBox { box_id: b } if b == box_id));
                    if !removed {
                        ops.push(CatalogOp::SetBoxStatus {
                            box_id: box_id.clone(),
                            expected: *hold,
                            new: *prior,
                        });
                    }
                }
                ops.push(CatalogOp::RemoveJournal {
                    id: op.journal_id.clone(),
                });
                // On a spawned task: a caller dropping this future mid-commit cannot leave
                // the box held (the task commits, or rolls back if the commit fails).
                let catalog = self.catalog.clone();
                let undo = rollback_ops(&op.journal_id, &op.held);
                let journal = op.journal_id.clone();
                let task = tokio::spawn(async move {
                    let res = catalog.apply(ops).await;
                    if res.is_err() {
                        if let Err(e) = catalog.apply(undo).await {
                            tracing::error!(error = %e, %journal,
                                "could not roll back an operation's catalog state; recovery will on next open");
                        }
                    }
                    res
                });
                match task.await {
                    Ok(Ok(())) => Ok(value),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(Error::config(format!(
                        "internal error: catalog task failed: {e}"
                    ))),
                }
            }
            Err(e) => {
                self.rollback(&op).await;
                Err(e)
            }
        };
        // `<op>.after_commit` (between the commit and the collection): `=error` skips the
        // collection, which the next operation or open then does.
        let skip_gc = result.is_ok()
            && boxlite_api::failpoint::hit_at(&op.operation, "after_commit").is_err();
        drop(op);
        if skip_gc {
            return result;
        }
        if let Err(e) = self.gc().await {
            tracing::warn!(error = %e, "garbage collection after the operation failed; it will be retried");
        }
        result
    }

    async fn rollback(&self, op: &Op) {
        op.settled.store(true, std::sync::atomic::Ordering::SeqCst);
        let ops = rollback_ops(&op.journal_id, &op.held);
        let catalog = self.catalog.clone();
        let journal = op.journal_id.clone();
        // On a spawned task, so that dropping the caller's future cannot cut it short.
        let task = tokio::spawn(async move {
            if let Err(e) = catalog.apply(ops).await {
                tracing::error!(error = %e, %journal,
                    "could not roll back an operation's catalog state; recovery will on next open");
            }
        });
        let _ = task.await;
    }

    /// Every root the garbage collector keeps: each box's live disks and each snapshot's disks.
    pub(crate) async fn roots(&self) -> Result<Roots> {
        Ok(Roots {
            live: self
                .catalog
                .list_boxes()
                .await?
                .into_iter()
                .map(|b| b.disks)
                .collect(),
            snapshots: self
                .catalog
                .list_all_snapshots()
                .await?
                .into_iter()
                .map(|s| s.disks)
                .collect(),
        })
    }

    /// Delete every stored file no root references, if no operation is in flight.
    pub(crate) async fn gc(&self) -> Result<Vec<PathBuf>> {
        // A shared holder may be an operation in flight (then the last one to finish
        // collects) or, briefly, a child process forked by the host between fork and exec
        // (it inherits the lock's file description): retry for a few milliseconds.
        let mut lock = None;
        for _ in 0..10 {
            lock = self.home.gc_exclusive()?;
            if lock.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        let Some(_lock) = lock else {
            return Ok(Vec::new());
        };
        let roots: Vec<DiskSet> = self.roots().await?.iter().cloned().collect();
        let live = self.storage.references_all(&self.ctx, &roots).await?;
        let mut deleted = Vec::new();
        for file in self.storage.stored_files(&self.ctx).await? {
            if live.contains(&file) {
                continue;
            }
            match std::fs::remove_file(&file) {
                Ok(()) => {
                    deleted.push(file);
                    boxlite_api::failpoint!("gc.mid_delete");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&file, e)),
            }
        }
        // Staging leftovers: with the exclusive lock held no operation is using staging.
        let staging = &self.ctx.staging;
        let entries = std::fs::read_dir(staging).map_err(|e| Error::io(staging, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(staging, e))?;
            let path = entry.path();
            let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match res {
                Ok(()) => deleted.push(path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        if !deleted.is_empty() {
            crate::home::sync_dir(&self.ctx.store)?;
            tracing::debug!(count = deleted.len(), "garbage collected");
        }
        Ok(deleted)
    }

    /// Roll back the journal entries of dead processes, then collect garbage.
    pub(crate) async fn recover(&self) -> Result<RecoveryReport> {
        let mut report = RecoveryReport::default();
        for entry in self.catalog.list_journal().await? {
            if self.home.process_alive(entry.owner_pid, entry.started_at) {
                continue;
            }
            let mut ops = Vec::new();
            if let (Some(box_id), Some(prior)) = (&entry.box_id, entry.prior_status) {
                if let Some(rec) = self.catalog.get_box(box_id).await? {
                    if rec.status.is_busy() {
                        ops.push(CatalogOp::SetBoxStatus {
                            box_id: box_id.clone(),
                            expected: rec.status,
                            new: prior,
                        });
                        report.statuses_reset.push(self.label(&rec));
                    }
                }
            }
            for path in &entry.staged {
                report.deleted.extend(remove_staged(path));
            }
            ops.push(CatalogOp::RemoveJournal {
                id: entry.id.clone(),
            });
            self.catalog.apply(ops).await?;
            report
                .rolled_back
                .push(format!("{} {}", entry.operation, entry.id));
        }
        match self.gc().await {
            Ok(deleted) => report.deleted.extend(deleted),
            // A root that cannot be resolved (e.g. a missing layer) must not make the home
            // unusable: nothing is deleted, and `boxlite doctor` reports the broken chain.
            Err(e) => {
                tracing::warn!(error = %e, "garbage collection skipped; run `boxlite doctor`");
                report.gc_skipped = Some(e.to_string());
            }
        }
        Ok(report)
    }

    pub(crate) fn label(&self, rec: &BoxRecord) -> String {
        rec.name.clone().unwrap_or_else(|| rec.id.to_string())
    }

    /// The box named `name`. Errors: [`Error::NotFound`].
    pub(crate) async fn load_box(&self, name: &str) -> Result<BoxRecord> {
        self.catalog
            .find_box(name)
            .await?
            .ok_or_else(|| Error::box_not_found(name))
    }

    /// The box with id `id`. Errors: [`Error::NotFound`] (it was removed).
    pub(crate) async fn load_box_by_id(&self, id: &BoxId, name: &str) -> Result<BoxRecord> {
        self.catalog
            .get_box(id)
            .await?
            .ok_or_else(|| Error::box_not_found(name))
    }

    pub(crate) async fn ensure_name_free(&self, name: &str) -> Result<()> {
        if self.catalog.find_box(name).await?.is_some() {
            return Err(Error::AlreadyExists {
                kind: ObjectKind::Box,
                name: name.to_owned(),
                box_name: None,
            });
        }
        Ok(())
    }

    pub(crate) async fn box_info(&self, rec: BoxRecord) -> Result<BoxInfo> {
        let snapshot_count = self.catalog.list_snapshots(&rec.id).await?.len() as u64;
        Ok(BoxInfo {
            disks: rec.disks.under(&self.home.root),
            id: rec.id,
            name: rec.name,
            status: rec.status,
            created_at: rec.created_at,
            image: rec.image,
            storage: rec.storage,
            snapshot_count,
        })
    }
}

async fn resolve_auto(home: &Home, config: &Config) -> Result<String> {
    if registry::lookup(PluginKind::Storage, "reflink").is_ok() {
        home.ensure_dirs("reflink")?;
        let ctx = home.storage_context("reflink");
        let backend = registry::storage("reflink", &config.plugin_config("reflink"))?;
        match backend.probe(&ctx).await {
            Ok(()) => return Ok("reflink".into()),
            Err(e) => {
                tracing::info!(reason = %e, "storage = auto: reflink unavailable, using qcow2");
                let _ = std::fs::remove_dir(&ctx.store);
            }
        }
    }
    Ok("qcow2".into())
}

fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Error::io(dir, e))
}

/// Every registered codec, for detecting an archive's codec on import.
pub(crate) fn all_codecs(config: &Config) -> Result<Vec<Arc<dyn ArchiveCodec>>> {
    registry::registered(PluginKind::Codec)
        .into_iter()
        .map(|r| registry::codec(r.name, &config.plugin_config(r.name)))
        .collect()
}

pub(crate) fn absolute(p: &Path) -> Result<PathBuf> {
    if p.is_absolute() {
        Ok(p.to_owned())
    } else {
        let cwd = std::env::current_dir().map_err(|e| Error::io(".", e))?;
        Ok(cwd.join(p))
    }
}

fn file_label(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// Remove what a dead operation staged. A path whose file name is an export's temporary-file
/// prefix (`.boxsnap-<tag>`, see `boxlite_archive::partial_prefix`) stands for the
/// `<prefix>*.partial` files in its directory (the archive may be written outside the home);
/// any other path is removed as a file or directory. Returns what was removed.
fn remove_staged(path: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name.starts_with(&boxlite_archive::partial_prefix("")) {
        let Some(dir) = path.parent() else {
            return removed;
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
            return removed;
        };
        for e in rd.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(name)
                && n.ends_with(".partial")
                && std::fs::remove_file(e.path()).is_ok()
            {
                removed.push(e.path());
            }
        }
    } else if path.is_dir() {
        if std::fs::remove_dir_all(path).is_ok() {
            removed.push(path.to_owned());
        }
    } else if std::fs::remove_file(path).is_ok() {
        removed.push(path.to_owned());
    }
    removed
}
