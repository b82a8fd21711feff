//! The `copy` storage backend (DESIGN.md section 7): every disk is a standalone qcow2 file
//! (no backing file); snapshot, restore and clone are sparse full copies that keep holes, so
//! the cost grows with allocated bytes, not with the virtual size. Works on any filesystem.
//!
//! The file-per-disk store itself is [`FileStore`], parametrised by a [`CopyMethod`] that
//! says how one file is copied. This crate registers `FileStore<SparseCopy>` as `copy`; the
//! `reflink` crate registers `FileStore<Ficlone>` (FICLONE copies) on the same code.
//!
//! # Layout
//!
//! ```text
//! <home>/storage/<backend>/boxes/<box_id>/
//!   live/{guest-rootfs,disk}.qcow2             live disks (create, clone, import)
//!   live-<ulid>/{guest-rootfs,disk}.qcow2      live disks made by a restore
//!   snapshots/<ulid>/{guest-rootfs,disk}.qcow2 snapshot disks (ids, never snapshot names)
//! ```
//!
//! Directories are created with mode 0700 and files with mode 0600
//! ([`boxlite_backend_qcow2::private`]); the process umask is not changed.
//!
//! # Crash safety
//!
//! Every operation writes a *new* directory: each file is written under a staging name
//! (`.NAME.partial`), fsync'd and renamed, then the directory and its parent are fsync'd.
//! Existing files are never modified or deleted by the backend; the runtime's garbage
//! collector deletes the files no catalog root references ([`SnapshotBackend::references`]
//! is the two files of a set; [`SnapshotBackend::stored_files`] every regular file under
//! `boxes/`, staging names included). Empty directories left behind by collection are
//! removed by later operations on the same box.

#![warn(missing_docs)]

pub mod files;
pub mod import;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use boxlite_api::{
    async_trait, BoxId, Capabilities, Capture, CloneOutcome, CloneSource, DiskRole, DiskSet,
    DiskSource, Error, Factory, FlatDisk, PluginConfig, Registration, Release, Result, Roots,
    SnapshotBackend, StorageContext, Usage,
};
use boxlite_backend_qcow2::image::{Image, OpenOptions};
use boxlite_backend_qcow2::FlatChain;

use files::{
    allocated_bytes, create_dir_durable, sparse_copy, sparse_copy_unshared, sync_dir, write_staged,
};

/// How a [`FileStore`] copies one disk file, plus the identity of the backend built on it.
pub trait CopyMethod: Send + Sync + 'static {
    /// The registry name of the backend using this method (e.g. `"copy"`).
    fn name(&self) -> &'static str;

    /// The capabilities of the backend using this method.
    fn capabilities(&self) -> Capabilities;

    /// Check (blocking) that this method works in the directory `store`. Must not leave files
    /// behind.
    ///
    /// Errors: [`Error::Unsupported`] naming the filesystem and what is missing; I/O errors.
    fn probe(&self, store: &Path) -> Result<()>;

    /// Copy the whole content of `src` into `dst`, a new empty file opened read-write.
    /// The paths are for error messages. The caller fsyncs and renames `dst` and removes it
    /// on error.
    ///
    /// Errors: typed errors with the paths ([`Error::NoSpace`], [`Error::Io`],
    /// [`Error::Unsupported`] when the filesystem refuses the method).
    fn copy(&self, src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<()>;
}

/// Sparse byte copies (`SEEK_DATA`/`SEEK_HOLE` + `copy_file_range`, see
/// [`files::sparse_copy`]): the `copy` backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct SparseCopy;

impl CopyMethod for SparseCopy {
    fn name(&self) -> &'static str {
        "copy"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cow_clone: false,
            constant_time_snapshot: false,
            needs_filesystem: false,
        }
    }

    fn probe(&self, store: &Path) -> Result<()> {
        // Prove the store is writable: create and remove a file.
        let probe = store.join(format!(".probe-{}", ulid::Ulid::new()));
        boxlite_backend_qcow2::private::file_options()
            .write(true)
            .create_new(true)
            .open(&probe)
            .map_err(|e| Error::io(&probe, e))?;
        fs::remove_file(&probe).map_err(|e| Error::io(&probe, e))
    }

    fn copy(&self, src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<()> {
        sparse_copy(src, src_path, dst, dst_path).map(|_| ())
    }
}

/// The `copy` backend.
pub type CopyBackend = FileStore<SparseCopy>;

/// Settings of a file-per-disk backend: none yet; unknown keys are refused.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStoreSettings {}

boxlite_api::inventory::submit! {
    Registration {
        name: "copy",
        description: "standalone qcow2 files; snapshots and clones are sparse full copies (any filesystem)",
        factory: Factory::Storage(|cfg: &PluginConfig| {
            let _: FileStoreSettings = cfg.parse("copy")?;
            Ok(Arc::new(CopyBackend::new(SparseCopy)))
        }),
    }
}

/// A storage backend keeping every disk as a standalone qcow2 file in a per-box directory
/// (see the crate documentation for the layout), copying files with `M`.
///
/// `clone_disks` with `cow = false` always makes sparse byte copies by `pread`/`pwrite`
/// ([`files::sparse_copy_unshared`]), whatever `M`, so the clone shares no storage with its
/// source, not even extents on btrfs or xfs.
#[derive(Debug, Default)]
pub struct FileStore<M> {
    method: Arc<M>,
}

impl<M> Clone for FileStore<M> {
    fn clone(&self) -> Self {
        FileStore {
            method: self.method.clone(),
        }
    }
}

impl<M: CopyMethod> FileStore<M> {
    /// A backend copying files with `method`.
    pub fn new(method: M) -> Self {
        FileStore {
            method: Arc::new(method),
        }
    }

    /// The copy method.
    pub fn method(&self) -> &M {
        &self.method
    }

    fn ops(&self, ctx: &StorageContext) -> Ops<M> {
        Ops {
            ctx: ctx.clone(),
            method: self.method.clone(),
        }
    }
}

/// Run blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::config(format!("internal error: storage task failed: {e}")))?
}

fn source_path(src: &DiskSource, role: DiskRole) -> &Path {
    match role {
        DiskRole::GuestRootfs => &src.guest_rootfs,
        DiskRole::Container => &src.container,
    }
}

/// How one destination file of a set is produced.
#[derive(Clone, Copy)]
enum How {
    /// With the backend's [`CopyMethod`].
    Method,
    /// With a sparse byte copy by `pread`/`pwrite` (shares no extents with the source).
    Full,
}

/// The synchronous implementation, moved onto blocking threads.
struct Ops<M> {
    ctx: StorageContext,
    method: Arc<M>,
}

impl<M: CopyMethod> Ops<M> {
    fn boxes_dir(&self) -> PathBuf {
        self.ctx.store.join("boxes")
    }

    fn box_dir(&self, id: &BoxId) -> PathBuf {
        self.boxes_dir().join(id.as_str())
    }

    fn fresh_id() -> String {
        ulid::Ulid::new().to_string().to_lowercase()
    }

    /// Create a new live directory for `id`: `live/` if it does not exist yet, else
    /// `live-<ulid>/`.
    fn new_live_dir(&self, id: &BoxId, generation: bool) -> Result<PathBuf> {
        let box_dir = self.box_dir(id);
        if !generation {
            let dir = box_dir.join("live");
            match create_dir_durable(&dir) {
                Ok(()) => return Ok(dir),
                Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let dir = box_dir.join(format!("live-{}", Self::fresh_id()));
        create_dir_durable(&dir)?;
        Ok(dir)
    }

    fn new_snapshot_dir(&self, id: &BoxId) -> Result<PathBuf> {
        let dir = self.box_dir(id).join("snapshots").join(Self::fresh_id());
        create_dir_durable(&dir)?;
        Ok(dir)
    }

    /// Produce both disks in the fresh directory `dir` with `produce(role, dest)`, then fsync
    /// the directory and its parent. On error the directory and everything in it is removed.
    fn fill_dir(
        &self,
        dir: &Path,
        mut produce: impl FnMut(DiskRole, &Path) -> Result<()>,
    ) -> Result<DiskSet> {
        let result = (|| {
            let set = DiskSet::try_from_fn(|role| {
                let dest = dir.join(role.file_name());
                produce(role, &dest)?;
                self.ctx.relative(&dest)
            })?;
            sync_dir(dir)?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
            Ok(set)
        })();
        if result.is_err() {
            remove_new_dir(dir);
        }
        result
    }

    /// Copy the file `src` to `dest` through a staging name.
    fn copy_one(&self, src: &Path, dest: &Path, how: How) -> Result<()> {
        let s = File::open(src).map_err(|e| Error::io(src, e))?;
        let md = s.metadata().map_err(|e| Error::io(src, e))?;
        if !md.is_file() {
            return Err(Error::corrupt(src, "disk is not a regular file"));
        }
        write_staged(dest, |d, tmp| match how {
            How::Method => self.method.copy(&s, src, d, tmp),
            How::Full => sparse_copy_unshared(&s, src, d, tmp).map(|_| ()),
        })
    }

    /// Copy the set `from` (catalog-relative) into the fresh directory `dir`.
    fn copy_set(&self, from: &DiskSet, dir: &Path, how: How) -> Result<DiskSet> {
        self.fill_dir(dir, |role, dest| {
            self.copy_one(&self.ctx.resolve(from.get(role)), dest, how)
        })
    }

    fn create(&self, id: &BoxId, source: &DiskSource) -> Result<DiskSet> {
        let result = self.new_live_dir(id, false).and_then(|dir| {
            self.fill_dir(&dir, |role, dest| {
                import::flatten_image(source_path(source, role), dest)
            })
        });
        if result.is_err() {
            self.forget_new_box(id);
        }
        result
    }

    /// After a failed create, clone or adopt: remove the new box's directory if it is empty
    /// (the id is fresh, so no other operation uses it).
    fn forget_new_box(&self, id: &BoxId) {
        let _ = fs::remove_dir(self.box_dir(id));
    }

    fn snapshot(&self, id: &BoxId, live: &DiskSet) -> Result<Capture> {
        self.tidy_box(&self.box_dir(id));
        let dir = self.new_snapshot_dir(id)?;
        let snapshot = self.copy_set(live, &dir, How::Method)?;
        Ok(Capture {
            guest_disk_bytes: allocated_bytes(&self.ctx.resolve(&snapshot.guest_rootfs))?,
            container_disk_bytes: allocated_bytes(&self.ctx.resolve(&snapshot.container))?,
            snapshot,
            live: live.clone(),
        })
    }

    fn restore(&self, id: &BoxId, snapshot: &DiskSet) -> Result<DiskSet> {
        self.tidy_box(&self.box_dir(id));
        let dir = self.new_live_dir(id, true)?;
        self.copy_set(snapshot, &dir, How::Method)
    }

    fn clone_disks(
        &self,
        source: &CloneSource,
        dests: &[BoxId],
        cow: bool,
    ) -> Result<CloneOutcome> {
        let from = match source {
            CloneSource::Live { disks, .. } | CloneSource::Snapshot { disks, .. } => disks,
        };
        let how = if cow { How::Method } else { How::Full };
        let mut made: Vec<PathBuf> = Vec::new();
        let result = (|| {
            let mut clones = Vec::with_capacity(dests.len());
            for id in dests {
                let dir = self.new_live_dir(id, false)?;
                clones.push(self.copy_set(from, &dir, how)?);
                made.push(dir);
            }
            Ok(CloneOutcome {
                source_live: None,
                clones,
            })
        })();
        if result.is_err() {
            for dir in made {
                remove_new_dir(&dir);
            }
            for id in dests {
                self.forget_new_box(id);
            }
        }
        result
    }

    fn adopt(&self, id: &BoxId, staged: &DiskSource) -> Result<DiskSet> {
        let dir = self.new_live_dir(id, false)?;
        let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
        let result = (|| {
            let set = DiskSet::try_from_fn(|role| {
                let from = source_path(staged, role);
                // Re-validate: a qcow2 file that opens cleanly and has no backing file (its
                // header is checked without following any backing name).
                let img = Image::open(from, false)?;
                if img.backing_file().is_some() {
                    return Err(Error::corrupt(from, "adopted disks must be standalone"));
                }
                drop(img);
                let to = dir.join(role.file_name());
                fs::rename(from, &to).map_err(|e| Error::io(&to, e))?;
                moved.push((to.clone(), from.to_path_buf()));
                self.ctx.relative(&to)
            })?;
            sync_dir(&dir)?;
            Ok(set)
        })();
        if result.is_err() {
            for (to, from) in moved.into_iter().rev() {
                if let Err(e) = fs::rename(&to, &from) {
                    tracing::warn!(from = %to.display(), to = %from.display(), error = %e, "could not move an adopted disk back");
                }
            }
            remove_new_dir(&dir);
            self.forget_new_box(id);
        }
        result
    }

    /// The canonical files of `disks`. A missing file is an error: the runtime then deletes
    /// nothing.
    fn files_of(&self, disks: &DiskSet) -> Result<Vec<PathBuf>> {
        disks
            .iter()
            .map(|(_, p)| {
                let abs = self.ctx.resolve(p);
                fs::canonicalize(&abs).map_err(|e| match e.kind() {
                    io::ErrorKind::NotFound => {
                        Error::corrupt(&abs, "a disk the catalog references is missing")
                    }
                    _ => Error::io(&abs, e),
                })
            })
            .collect()
    }

    fn release(&self, removed: &DiskSet, remaining: &Roots) -> Result<Release> {
        let mut reachable = HashSet::new();
        for root in remaining.iter() {
            for (_, p) in root.iter() {
                let abs = self.ctx.resolve(p);
                // A remaining root's file that cannot be resolved is kept by its plain path.
                reachable.insert(fs::canonicalize(&abs).unwrap_or(abs));
            }
        }
        let mut delete = Vec::new();
        for (_, p) in removed.iter() {
            let abs = self.ctx.resolve(p);
            let file = match fs::canonicalize(&abs) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&abs, e)),
            };
            if !reachable.contains(&file) && !delete.contains(&file) {
                delete.push(file);
            }
            if let Some(box_dir) = self.box_dir_of(&abs) {
                self.tidy_box(&box_dir);
            }
        }
        Ok(Release {
            delete_after_commit: delete,
        })
    }

    /// The box directory holding the file `abs`, if it follows the layout.
    fn box_dir_of(&self, abs: &Path) -> Option<PathBuf> {
        let boxes = self.boxes_dir();
        let rest = abs.strip_prefix(&boxes).ok()?;
        match rest.components().next()? {
            Component::Normal(id) => Some(boxes.join(id)),
            _ => None,
        }
    }

    /// Remove the empty set directories (and `snapshots/`) of a box, left behind once the
    /// garbage collector deleted their files. Only called for a box the caller holds
    /// exclusively, so no operation is creating a directory there; `rmdir` never removes a
    /// non-empty directory.
    fn tidy_box(&self, box_dir: &Path) {
        let Ok(entries) = fs::read_dir(box_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            if entry.file_name() == "snapshots" {
                if let Ok(snaps) = fs::read_dir(&path) {
                    for s in snaps.flatten() {
                        let _ = fs::remove_dir(s.path());
                    }
                }
            }
            let _ = fs::remove_dir(&path);
        }
    }

    /// Every regular file under `boxes/` (any depth) and leftover probe files, canonical.
    fn stored_files(&self) -> Result<Vec<PathBuf>> {
        let root = match fs::canonicalize(&self.ctx.store) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.ctx.store, e)),
        };
        let mut out = Vec::new();
        let rd = fs::read_dir(&root).map_err(|e| Error::io(&root, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(&root, e))?;
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file && entry.file_name().to_string_lossy().starts_with(".probe-") {
                out.push(entry.path());
            }
        }
        walk_files(&root.join("boxes"), 4, &mut out)?;
        Ok(out)
    }
}

/// Collect the regular files under `dir`, descending at most `depth` levels.
fn walk_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in rd {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let ty = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
        if ty.is_file() {
            out.push(entry.path());
        } else if ty.is_dir() && depth > 0 {
            walk_files(&entry.path(), depth - 1, out)?;
        }
    }
    Ok(())
}

/// Remove a directory this operation created, with whatever it wrote into it.
fn remove_new_dir(dir: &Path) {
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %dir.display(), error = %e, "could not remove a directory after a failed operation");
        }
    }
}

#[async_trait]
impl<M: CopyMethod> SnapshotBackend for FileStore<M> {
    fn name(&self) -> &str {
        self.method.name()
    }

    fn capabilities(&self) -> Capabilities {
        self.method.capabilities()
    }

    async fn probe(&self, ctx: &StorageContext) -> Result<()> {
        let method = self.method.clone();
        let store = ctx.store.clone();
        blocking(move || {
            boxlite_backend_qcow2::private::dir_builder()
                .recursive(true)
                .create(&store)
                .map_err(|e| Error::io(&store, e))?;
            method.probe(&store)
        })
        .await
    }

    async fn create_disks(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        source: &DiskSource,
    ) -> Result<DiskSet> {
        let ops = self.ops(ctx);
        let (id, source) = (box_id.clone(), source.clone());
        blocking(move || ops.create(&id, &source)).await
    }

    async fn snapshot(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        live: &DiskSet,
    ) -> Result<Capture> {
        let ops = self.ops(ctx);
        let (id, live) = (box_id.clone(), live.clone());
        blocking(move || ops.snapshot(&id, &live)).await
    }

    async fn restore(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        snapshot: &DiskSet,
    ) -> Result<DiskSet> {
        let ops = self.ops(ctx);
        let (id, snapshot) = (box_id.clone(), snapshot.clone());
        blocking(move || ops.restore(&id, &snapshot)).await
    }

    async fn clone_disks(
        &self,
        ctx: &StorageContext,
        source: &CloneSource,
        dests: &[BoxId],
        cow: bool,
    ) -> Result<CloneOutcome> {
        let ops = self.ops(ctx);
        let (source, dests) = (source.clone(), dests.to_vec());
        blocking(move || ops.clone_disks(&source, &dests, cow)).await
    }

    async fn read_flat(&self, ctx: &StorageContext, disk: &Path) -> Result<Box<dyn FlatDisk>> {
        let store = ctx.store.clone();
        let path = ctx.resolve(disk);
        blocking(move || {
            let opts = OpenOptions::new().allowed_root(Some(store.to_path_buf()));
            Ok(Box::new(FlatChain::open(&path, &opts)?) as Box<dyn FlatDisk>)
        })
        .await
    }

    async fn adopt_disks(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        staged: &DiskSource,
    ) -> Result<DiskSet> {
        let ops = self.ops(ctx);
        let (id, staged) = (box_id.clone(), staged.clone());
        blocking(move || ops.adopt(&id, &staged)).await
    }

    async fn remove_snapshot(
        &self,
        ctx: &StorageContext,
        snapshot: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release> {
        let ops = self.ops(ctx);
        let (removed, remaining) = (snapshot.clone(), remaining.clone());
        blocking(move || ops.release(&removed, &remaining)).await
    }

    async fn remove_disks(
        &self,
        ctx: &StorageContext,
        live: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release> {
        let ops = self.ops(ctx);
        let (removed, remaining) = (live.clone(), remaining.clone());
        blocking(move || ops.release(&removed, &remaining)).await
    }

    async fn references(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Vec<PathBuf>> {
        let ops = self.ops(ctx);
        let disks = disks.clone();
        blocking(move || ops.files_of(&disks)).await
    }

    async fn stored_files(&self, ctx: &StorageContext) -> Result<Vec<PathBuf>> {
        let ops = self.ops(ctx);
        blocking(move || ops.stored_files()).await
    }

    async fn usage(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Usage> {
        let (g, c) = (
            ctx.resolve(&disks.guest_rootfs),
            ctx.resolve(&disks.container),
        );
        blocking(move || {
            Ok(Usage {
                guest_disk_bytes: allocated_bytes(&g)?,
                container_disk_bytes: allocated_bytes(&c)?,
            })
        })
        .await
    }
}
