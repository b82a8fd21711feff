//! The `SnapshotBackend` trait: how a box's disk set is stored, captured, restored and cloned.
//!
//! # Model (what every backend implements)
//!
//! A backend owns the files under its store directory ([`StorageContext::store`]). The catalog
//! owns the *roots*: each box's live [`DiskSet`] and each snapshot's [`DiskSet`]. A backend
//! method never edits the catalog: it prepares files and returns the disk sets the runtime should
//! record, and the runtime commits them in one catalog transaction. Files are garbage once no
//! root references them ([`SnapshotBackend::references`]); the runtime deletes them after the
//! commit (or on recovery), so a crash between "files written" and "catalog committed" leaves
//! only unreferenced files that recovery removes, never a row pointing at a missing file.
//!
//! Every disk a backend hands out is a qcow2 file a VMM can open read-write (live disks) or an
//! immutable qcow2 file (snapshot disks), possibly backing onto other files in the store.
//!
//! # Rules common to every method
//! - Paths in [`DiskSet`]s passed in and returned are relative to [`StorageContext::home`].
//! - Preconditions are guaranteed by the runtime: the box is held exclusively (status
//!   compare-and-set) and its VMM is stopped or paused with its disks flushed.
//! - A method that fails must leave every root's guest-visible content unchanged and should
//!   remove the files it created; anything it leaves behind must be unreferenced (garbage).
//! - Errors: [`crate::Error::Io`] / [`crate::Error::NoSpace`] with the path, [`crate::Error::Corrupt`]
//!   for damaged images, [`crate::Error::Unsupported`] for what the backend cannot do here.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{BoxId, DiskSet};

/// Where a backend keeps its files. Built by the runtime; all paths are absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageContext {
    /// The BoxLite home directory (e.g. `~/.boxlite`).
    pub home: PathBuf,
    /// The backend's own directory, `<home>/storage/<backend name>`; created by the runtime.
    pub store: PathBuf,
    /// A staging directory on the same filesystem as `store`, `<home>/staging`, for files that
    /// are renamed into the store once complete.
    pub staging: PathBuf,
}

impl StorageContext {
    /// Resolve a catalog-relative path against the home.
    pub fn resolve(&self, rel: &Path) -> PathBuf {
        self.home.join(rel)
    }

    /// Express an absolute path inside the home as a catalog-relative path.
    ///
    /// Errors: [`crate::Error::Corrupt`] if `abs` is not inside the home.
    pub fn relative(&self, abs: &Path) -> Result<PathBuf> {
        abs.strip_prefix(&self.home)
            .map(Path::to_path_buf)
            .map_err(|_| crate::Error::corrupt(abs, "path is outside the BoxLite home"))
    }
}

/// What a backend can do, reported by [`SnapshotBackend::capabilities`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Capabilities {
    /// Clones share unchanged data with their source (copy-on-write) instead of copying it.
    pub cow_clone: bool,
    /// Snapshot time does not grow with disk size or written data.
    pub constant_time_snapshot: bool,
    /// The backend only works on particular filesystems; [`SnapshotBackend::probe`] says which.
    pub needs_filesystem: bool,
}

/// The user's images for a new box (absolute paths, qcow2 or raw, any backing chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSource {
    /// Image for the guest-rootfs disk.
    pub guest_rootfs: PathBuf,
    /// Image for the container disk.
    pub container: PathBuf,
}

/// Result of [`SnapshotBackend::snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The immutable disks of the new snapshot, to record in the snapshot row.
    pub snapshot: DiskSet,
    /// The box's live disks after the capture (may equal the ones passed in), to record in the
    /// box row. The VMM must reopen these if they changed.
    pub live: DiskSet,
    /// Allocated bytes of the captured guest-rootfs data.
    pub guest_disk_bytes: u64,
    /// Allocated bytes of the captured container data.
    pub container_disk_bytes: u64,
}

/// Where a clone starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloneSource {
    /// The live disks of a box (the backend may have to capture them first).
    Live {
        /// The source box.
        box_id: BoxId,
        /// Its live disks.
        disks: DiskSet,
    },
    /// A snapshot's immutable disks.
    Snapshot {
        /// The box that owns the snapshot.
        box_id: BoxId,
        /// The snapshot's disks.
        disks: DiskSet,
    },
}

/// Result of [`SnapshotBackend::clone_disks`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneOutcome {
    /// For [`CloneSource::Live`]: the source box's new live disks if cloning changed them
    /// (qcow2 seals the live overlay), else `None`.
    pub source_live: Option<DiskSet>,
    /// The new boxes' live disks, one per requested id, in request order.
    pub clones: Vec<DiskSet>,
}

/// Every root that must keep its exact guest-visible content while a backend prepares a
/// removal: the catalog's roots minus the ones being removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Live disks of boxes. A VMM may have these open read-write at any time: a backend must
    /// never modify them on behalf of another box's operation.
    pub live: Vec<DiskSet>,
    /// Snapshot disks (immutable; a backend may reorganise their storage as long as their
    /// content is unchanged at every instant).
    pub snapshots: Vec<DiskSet>,
}

impl Roots {
    /// All roots, live disks first.
    pub fn iter(&self) -> impl Iterator<Item = &DiskSet> {
        self.live.iter().chain(self.snapshots.iter())
    }
}

/// Files a backend expects to become garbage once the catalog transaction has committed.
/// The runtime's garbage collector (reachability from the catalog's roots through
/// [`SnapshotBackend::references`]) is authoritative; this list is logged for diagnosis.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// Absolute paths; deleting them must be safe once the commit is durable.
    pub delete_after_commit: Vec<PathBuf>,
}

/// Allocated storage of one disk set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes allocated on the host for the guest-rootfs data the set owns (not shared data).
    pub guest_disk_bytes: u64,
    /// Bytes allocated on the host for the container data the set owns (not shared data).
    pub container_disk_bytes: u64,
}

/// A disk rendered as a standalone, flattened, sparse qcow2 image, ready to stream.
///
/// The size is known before streaming starts (a tar header needs it). Streaming is synchronous
/// (run it on a blocking thread) and uses bounded memory.
pub trait FlatDisk: Send {
    /// Exact number of bytes [`FlatDisk::write_to`] will write.
    fn size_bytes(&self) -> u64;
    /// Guest-visible size of the disk, in bytes.
    fn virtual_size(&self) -> u64;
    /// Write the standalone qcow2 image to `out`; returns bytes written (== `size_bytes`).
    ///
    /// Errors: [`crate::Error::Io`] / [`crate::Error::Corrupt`] while reading the source chain;
    /// write errors of `out` as [`crate::Error::Io`].
    fn write_to(&mut self, out: &mut dyn Write) -> Result<u64>;
}

/// A storage backend (DESIGN.md sections 3 and 7). Implementations: `qcow2` (external
/// copy-on-write, default), `reflink` (FICLONE), `copy` (sparse full copy), or third-party.
///
/// See the module documentation for the model and the rules every method follows.
#[async_trait]
pub trait SnapshotBackend: Send + Sync {
    /// The registry name, e.g. `"qcow2"`. Recorded in the home; must never change.
    fn name(&self) -> &str;

    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// Check that the backend can work on the filesystem holding `ctx.store`.
    ///
    /// Errors: [`crate::Error::Unsupported`] naming the filesystem and what is missing (e.g.
    /// "ext4 does not support reflink (FICLONE: EOPNOTSUPP)"). Must not create files that outlive
    /// the call.
    async fn probe(&self, ctx: &StorageContext) -> Result<()>;

    /// Create the live disks of a new box `box_id` whose content equals the given images.
    ///
    /// Postcondition: the returned set's guest-visible content equals `source`, and later
    /// changes to (or deletion of) the source files never affect it.
    /// Errors: [`crate::Error::Unsupported`] / [`crate::Error::Corrupt`] for images the safe
    /// qcow2 open refuses; I/O errors with the path.
    async fn create_disks(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        source: &DiskSource,
    ) -> Result<DiskSet>;

    /// Capture the live disks `live` of box `box_id` as an immutable snapshot.
    ///
    /// Postcondition: [`Capture::snapshot`]'s content equals `live`'s content at the call, and
    /// no later write to [`Capture::live`] changes it.
    async fn snapshot(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        live: &DiskSet,
    ) -> Result<Capture>;

    /// Make new live disks for box `box_id` whose content equals `snapshot`.
    ///
    /// Postcondition: `snapshot` and every other root are unchanged. The old live disks become
    /// garbage once the runtime records the returned set.
    async fn restore(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        snapshot: &DiskSet,
    ) -> Result<DiskSet>;

    /// Make live disks for each box in `dests` equal to `source`. `cow = false` asks for
    /// standalone copies that share nothing with the source.
    ///
    /// Postcondition: the source's content is unchanged; each clone is independent of the
    /// others and of the source (writes never show across).
    async fn clone_disks(
        &self,
        ctx: &StorageContext,
        source: &CloneSource,
        dests: &[BoxId],
        cow: bool,
    ) -> Result<CloneOutcome>;

    /// Render one disk (catalog-relative path) as a standalone flattened qcow2 stream.
    ///
    /// Errors: I/O and corruption errors of the disk or its chain.
    async fn read_flat(&self, ctx: &StorageContext, disk: &Path) -> Result<Box<dyn FlatDisk>>;

    /// Take ownership of validated standalone qcow2 files in `ctx.staging` (from an import) as
    /// the live disks of new box `box_id`. The staged files may be moved (they are on the same
    /// filesystem); on error they are left where they were.
    async fn adopt_disks(
        &self,
        ctx: &StorageContext,
        box_id: &BoxId,
        staged: &DiskSource,
    ) -> Result<DiskSet>;

    /// Prepare the removal of a snapshot's disks. `remaining` lists every other root that must
    /// keep its exact content (all boxes' live disks and all other snapshots).
    /// Roots created concurrently by non-exclusive operations (a clone from a snapshot) may be
    /// missing from `remaining`: a backend must never change the content of any file another
    /// file may back onto.
    ///
    /// The backend may reorganise storage first (e.g. merge a qcow2 layer into its single
    /// dependant so chains stay short) as long as every root in `remaining` keeps its
    /// guest-visible content at every instant. Returns the files that become garbage once the
    /// catalog no longer references the snapshot.
    async fn remove_snapshot(
        &self,
        ctx: &StorageContext,
        snapshot: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release>;

    /// Prepare the removal of a box's live disks; same contract as
    /// [`SnapshotBackend::remove_snapshot`].
    async fn remove_disks(
        &self,
        ctx: &StorageContext,
        live: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release>;

    /// Every file (absolute path) that `disks` needs to be readable: the disks themselves and,
    /// for copy-on-write backends, their backing chains.
    ///
    /// Errors: [`crate::Error::Corrupt`] if a chain cannot be resolved. The runtime never
    /// deletes files while any root's references cannot be computed.
    async fn references(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Vec<PathBuf>>;

    /// The union of [`SnapshotBackend::references`] over many roots (what the garbage
    /// collector keeps). The default calls `references` per root; backends whose roots share
    /// files (backing chains) override it to read each shared file once.
    ///
    /// Errors: as [`SnapshotBackend::references`]; never a partial answer.
    async fn references_all(
        &self,
        ctx: &StorageContext,
        roots: &[DiskSet],
    ) -> Result<std::collections::HashSet<PathBuf>> {
        let mut out = std::collections::HashSet::new();
        for root in roots {
            out.extend(self.references(ctx, root).await?);
        }
        Ok(out)
    }

    /// Every file (absolute path) currently in the backend's store, for garbage collection and
    /// `boxlite doctor`.
    async fn stored_files(&self, ctx: &StorageContext) -> Result<Vec<PathBuf>>;

    /// Host storage allocated to the data that `disks` owns (not shared with other roots).
    async fn usage(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Usage>;
}
