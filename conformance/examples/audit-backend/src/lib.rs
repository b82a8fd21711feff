//! A worked example of a third-party storage backend (see `docs/backend-guide.md`).
//!
//! `audit` is a decorator: it delegates every operation to another registered backend (by
//! default `qcow2`, configurable with `[plugin.audit] inner = "copy"`) and appends one line per
//! state-changing call to `<home>/audit.log` (`<unix seconds> <operation> <box id>`). It shows
//! the three things every backend author does:
//!
//! 1. implement [`SnapshotBackend`] (here by forwarding, adding behaviour around each call);
//! 2. register a factory under a name with `inventory::submit!`, parsing its own settings
//!    strictly with [`PluginConfig::parse`];
//! 3. certify it with `boxlite_conformance::runtime_suite_tests!` (see `tests/conformance.rs`).
//!
//! It depends on `boxlite-api` only: the inner backend is found through the registry at run
//! time, so any storage backend linked into the host can be audited.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use boxlite_api::registry;
use boxlite_api::{
    async_trait, BoxId, Capabilities, Capture, CloneOutcome, CloneSource, DiskSet, DiskSource,
    Error, Factory, FlatDisk, PluginConfig, Registration, Release, Result, Roots, SnapshotBackend,
    StorageContext, Usage,
};

/// Settings of the `audit` plugin (`[plugin.audit]`).
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditSettings {
    /// Name of the backend that really stores the disks. Default "qcow2".
    pub inner: String,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            inner: "qcow2".into(),
        }
    }
}

/// The audit backend: forwards to `inner`, logging state changes.
pub struct AuditBackend {
    inner: Arc<dyn SnapshotBackend>,
    log: Mutex<Option<std::fs::File>>,
    log_path: PathBuf,
}

impl AuditBackend {
    /// Build from the plugin config: look the inner backend up in the registry.
    ///
    /// Errors: [`Error::Config`] for bad settings, an unknown inner backend, or `inner = "audit"`.
    pub fn from_config(cfg: &PluginConfig) -> Result<AuditBackend> {
        let settings: AuditSettings = cfg.parse("audit")?;
        if settings.inner == "audit" {
            return Err(Error::config(
                "[plugin.audit] inner must name another backend",
            ));
        }
        let inner = registry::storage(&settings.inner, cfg)?;
        Ok(AuditBackend {
            inner,
            log: Mutex::new(None),
            log_path: cfg.home.join("audit.log"),
        })
    }

    fn record(&self, op: &str, box_id: Option<&BoxId>) -> Result<()> {
        let mut guard = self.log.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            // Like every file in a home: owner-only, whatever the umask.
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&self.log_path)
                .map_err(|e| Error::io(&self.log_path, e))?;
            *guard = Some(f);
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = box_id.map(BoxId::as_str).unwrap_or("-");
        if let Some(f) = guard.as_mut() {
            writeln!(f, "{secs} {op} {id}").map_err(|e| Error::io(&self.log_path, e))?;
        }
        Ok(())
    }
}

boxlite_api::inventory::submit! {
    Registration {
        name: "audit",
        description: "example third-party backend: audits calls, stores through another backend",
        factory: Factory::Storage(|cfg| Ok(Arc::new(AuditBackend::from_config(cfg)?))),
    }
}

#[async_trait]
impl SnapshotBackend for AuditBackend {
    fn name(&self) -> &str {
        "audit"
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn probe(&self, ctx: &StorageContext) -> Result<()> {
        self.inner.probe(ctx).await
    }
    async fn create_disks(
        &self,
        ctx: &StorageContext,
        id: &BoxId,
        src: &DiskSource,
    ) -> Result<DiskSet> {
        self.record("create", Some(id))?;
        self.inner.create_disks(ctx, id, src).await
    }
    async fn snapshot(&self, ctx: &StorageContext, id: &BoxId, live: &DiskSet) -> Result<Capture> {
        self.record("snapshot", Some(id))?;
        self.inner.snapshot(ctx, id, live).await
    }
    async fn restore(&self, ctx: &StorageContext, id: &BoxId, snap: &DiskSet) -> Result<DiskSet> {
        self.record("restore", Some(id))?;
        self.inner.restore(ctx, id, snap).await
    }
    async fn clone_disks(
        &self,
        ctx: &StorageContext,
        source: &CloneSource,
        dests: &[BoxId],
        cow: bool,
    ) -> Result<CloneOutcome> {
        for d in dests {
            self.record("clone", Some(d))?;
        }
        self.inner.clone_disks(ctx, source, dests, cow).await
    }
    async fn read_flat(&self, ctx: &StorageContext, disk: &Path) -> Result<Box<dyn FlatDisk>> {
        self.inner.read_flat(ctx, disk).await
    }
    async fn adopt_disks(
        &self,
        ctx: &StorageContext,
        id: &BoxId,
        staged: &DiskSource,
    ) -> Result<DiskSet> {
        self.record("import", Some(id))?;
        self.inner.adopt_disks(ctx, id, staged).await
    }
    async fn remove_snapshot(
        &self,
        ctx: &StorageContext,
        snap: &DiskSet,
        rest: &Roots,
    ) -> Result<Release> {
        self.record("remove_snapshot", None)?;
        self.inner.remove_snapshot(ctx, snap, rest).await
    }
    async fn remove_disks(
        &self,
        ctx: &StorageContext,
        live: &DiskSet,
        rest: &Roots,
    ) -> Result<Release> {
        self.record("remove_box", None)?;
        self.inner.remove_disks(ctx, live, rest).await
    }
    async fn references(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Vec<PathBuf>> {
        self.inner.references(ctx, disks).await
    }
    async fn references_all(
        &self,
        ctx: &StorageContext,
        roots: &[DiskSet],
    ) -> Result<std::collections::HashSet<PathBuf>> {
        self.inner.references_all(ctx, roots).await
    }
    async fn stored_files(&self, ctx: &StorageContext) -> Result<Vec<PathBuf>> {
        self.inner.stored_files(ctx).await
    }
    async fn usage(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Usage> {
        self.inner.usage(ctx, disks).await
    }
}
