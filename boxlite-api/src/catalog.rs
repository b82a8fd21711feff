//! The `CatalogBackend` trait: the durable record of boxes, snapshots and in-flight operations.
//!
//! # Model
//! The catalog holds three record kinds: [`BoxRecord`] (one per box, with its live disks),
//! [`SnapshotRecord`] (one per snapshot, unique `(box_id, name)`) and [`JournalEntry`] (one per
//! multi-step operation in flight, for crash recovery). Reads are single calls; every change is
//! a list of [`CatalogOp`]s applied by [`CatalogBackend::apply`] in **one transaction**: all of
//! them or none. That is how the runtime switches roots atomically (e.g. insert a snapshot row,
//! update the box's live disks and drop the journal entry together).
//!
//! The set of roots the storage garbage collector keeps is exactly: every box's `disks` and
//! every snapshot's `disks`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use async_trait::async_trait;

use crate::error::Result;
use crate::status::BoxStatus;
use crate::types::{BoxId, DiskSet};

/// A box row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BoxRecord {
    /// Generated id; primary key.
    pub id: BoxId,
    /// Unique name, if any (validated by the runtime before it reaches the catalog).
    pub name: Option<String>,
    /// Current status.
    pub status: BoxStatus,
    /// Creation time (UTC).
    pub created_at: DateTime<Utc>,
    /// Description of the source image.
    pub image: String,
    /// Storage backend name holding the disks.
    pub storage: String,
    /// Live disks, paths relative to the home.
    pub disks: DiskSet,
}

/// A snapshot row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// The owning box; removing the box removes its snapshots (cascade).
    pub box_id: BoxId,
    /// Name, unique within the box.
    pub name: String,
    /// Creation time (UTC).
    pub created_at: DateTime<Utc>,
    /// Immutable disks, paths relative to the home.
    pub disks: DiskSet,
    /// Allocated bytes of the guest-rootfs data at capture.
    pub guest_disk_bytes: u64,
    /// Allocated bytes of the container data at capture.
    pub container_disk_bytes: u64,
}

/// An operation in flight, recorded before it touches any file (DESIGN.md section 9).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Unique id (a ULID) chosen by the runtime.
    pub id: String,
    /// Operation kind, e.g. "snapshot_create", "import".
    pub operation: String,
    /// The box the operation holds, if any.
    pub box_id: Option<BoxId>,
    /// The status the box had before the operation (restored by recovery), if it holds a box.
    pub prior_status: Option<BoxStatus>,
    /// Process id of the runtime doing the work (recovery skips entries of live processes).
    pub owner_pid: u32,
    /// When the operation started (UTC).
    pub started_at: DateTime<Utc>,
    /// Absolute paths of staged files/directories the operation may create; removed by recovery
    /// if the operation did not commit.
    pub staged: Vec<std::path::PathBuf>,
}

/// One change inside a [`CatalogBackend::apply`] transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    /// Insert a box. Errors: `AlreadyExists` if the name (or id) is taken.
    InsertBox(BoxRecord),
    /// Replace a box's live disks. Errors: `NotFound`.
    SetBoxDisks {
        /// The box.
        box_id: BoxId,
        /// New live disks.
        disks: DiskSet,
    },
    /// Compare-and-set a box's status. Errors: `NotFound`; `Busy { status: actual }` when the
    /// current status is not `expected`.
    SetBoxStatus {
        /// The box.
        box_id: BoxId,
        /// Status the caller believes the box has.
        expected: BoxStatus,
        /// Status to set.
        new: BoxStatus,
    },
    /// Remove a box and, in the same transaction, all of its snapshots. Errors: `NotFound`.
    RemoveBox {
        /// The box.
        box_id: BoxId,
    },
    /// Insert a snapshot. Errors: `NotFound` for the box; `AlreadyExists` for `(box_id, name)`.
    InsertSnapshot(SnapshotRecord),
    /// Remove a snapshot. Errors: `NotFound`.
    RemoveSnapshot {
        /// The owning box.
        box_id: BoxId,
        /// Snapshot name.
        name: String,
    },
    /// Record an operation in flight. Errors: `AlreadyExists` for a duplicate id.
    InsertJournal(JournalEntry),
    /// Drop a journal entry (the operation committed or was rolled back). Removing an id that
    /// is not there is not an error (cleanup is idempotent).
    RemoveJournal {
        /// Entry id.
        id: String,
    },
}

/// A catalog backend (DESIGN.md section 3). Implementations: `sqlite` (default), `redb`.
///
/// Implementations are opened by their registry factory on a path inside the home and must be
/// safe to share between tasks (`Send + Sync`). Across processes, SQLite-like backends must
/// wait (busy timeout) rather than fail with "locked"; single-process backends must fail with a
/// clear [`crate::Error::Catalog`] naming the holder when another process has the file.
#[async_trait]
pub trait CatalogBackend: Send + Sync {
    /// The registry name, e.g. `"sqlite"`.
    fn name(&self) -> &str;

    /// The schema version this catalog file is at (after migrations ran on open).
    async fn schema_version(&self) -> Result<u32>;

    /// Apply `ops` in one transaction, in order: either every op takes effect or none does.
    ///
    /// Errors: the first failing op's error (see [`CatalogOp`]); nothing is changed then.
    async fn apply(&self, ops: Vec<CatalogOp>) -> Result<()>;

    /// The box with this id, or `None`.
    async fn get_box(&self, id: &BoxId) -> Result<Option<BoxRecord>>;

    /// The box with this name, or `None`.
    async fn find_box(&self, name: &str) -> Result<Option<BoxRecord>>;

    /// All boxes, ordered by creation (created_at, then insertion order).
    async fn list_boxes(&self) -> Result<Vec<BoxRecord>>;

    /// The snapshot `(box_id, name)`, or `None`.
    async fn get_snapshot(&self, box_id: &BoxId, name: &str) -> Result<Option<SnapshotRecord>>;

    /// A box's snapshots ordered by created_at, ties kept in insertion order. Empty for a box
    /// without snapshots or an unknown box.
    async fn list_snapshots(&self, box_id: &BoxId) -> Result<Vec<SnapshotRecord>>;

    /// Every snapshot of every box (for garbage collection), in no particular order.
    async fn list_all_snapshots(&self) -> Result<Vec<SnapshotRecord>>;

    /// Every journal entry, oldest first.
    async fn list_journal(&self) -> Result<Vec<JournalEntry>>;
}
