//! The redb tables of the catalog, the stored row types and the versioned migrations.
//!
//! Layout (schema version 1, see `docs/catalog.md`, section "redb"):
//!
//! | table | key | value |
//! |---|---|---|
//! | `meta` | `&str` | `u64`: `"schema_version"`, `"next_seq"` |
//! | `boxes` | box id | JSON [`BoxRow`] |
//! | `box_names` | box name | box id |
//! | `snapshots` | `(box id, seq)` | JSON [`SnapshotRow`] |
//! | `snapshot_names` | `(box id, name)` | seq |
//! | `journal` | entry id | JSON [`JournalRow`] |
//!
//! `seq` comes from one persisted monotonic counter (`meta.next_seq`) shared by boxes,
//! snapshots and journal entries; it breaks ties of equal timestamps in insertion order and is
//! never reused.
//!
//! Policy: migrations are append-only. Each entry of [`MIGRATIONS`] takes the schema from
//! version `n - 1` to `n`; all pending steps run inside one write transaction together with the
//! update of `meta.schema_version`, so a crash or a failing step leaves the file at its old
//! version. A file whose version is newer than [`SCHEMA_VERSION`] is refused, never downgraded.

use chrono::{DateTime, Utc};
use redb::{ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

/// `meta`: small named counters (schema version, next sequence number).
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `boxes`: box id -> JSON [`BoxRow`].
pub(crate) const BOXES: TableDefinition<&str, &[u8]> = TableDefinition::new("boxes");
/// `box_names`: box name -> box id (unique names).
pub(crate) const BOX_NAMES: TableDefinition<&str, &str> = TableDefinition::new("box_names");
/// `snapshots`: (box id, seq) -> JSON [`SnapshotRow`].
pub(crate) const SNAPSHOTS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("snapshots");
/// `snapshot_names`: (box id, snapshot name) -> seq (unique per box).
pub(crate) const SNAPSHOT_NAMES: TableDefinition<(&str, &str), u64> =
    TableDefinition::new("snapshot_names");
/// `journal`: entry id -> JSON [`JournalRow`].
pub(crate) const JOURNAL: TableDefinition<&str, &[u8]> = TableDefinition::new("journal");

/// Key of the schema version in `meta`.
pub(crate) const KEY_SCHEMA_VERSION: &str = "schema_version";
/// Key of the next sequence number in `meta`.
pub(crate) const KEY_NEXT_SEQ: &str = "next_seq";

/// The newest schema version this build knows (the last step of the migration list).
pub const SCHEMA_VERSION: u32 = 1;

/// One migration step: the version it produces and the function that gets there.
#[derive(Clone, Copy)]
pub(crate) struct Migration {
    /// Schema version after this step (the first step produces 1).
    pub(crate) version: u32,
    /// Runs inside the migration's write transaction.
    pub(crate) run: fn(&WriteTransaction) -> Result<(), Box<redb::Error>>,
}

/// Version 1: create every table.
fn v1(tx: &WriteTransaction) -> Result<(), Box<redb::Error>> {
    let e = |e: redb::TableError| Box::new(redb::Error::from(e));
    tx.open_table(BOXES).map_err(e)?;
    tx.open_table(BOX_NAMES).map_err(e)?;
    tx.open_table(SNAPSHOTS).map_err(e)?;
    tx.open_table(SNAPSHOT_NAMES).map_err(e)?;
    tx.open_table(JOURNAL).map_err(e)?;
    let mut meta = tx.open_table(META).map_err(e)?;
    let s = |e: redb::StorageError| Box::new(redb::Error::from(e));
    if meta.get(KEY_NEXT_SEQ).map_err(s)?.is_none() {
        meta.insert(KEY_NEXT_SEQ, 1).map_err(s)?;
    }
    Ok(())
}

/// Every migration, in order. Append only; never edit a released step.
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    run: v1,
}];

/// A box as stored in `boxes`. Paths are UTF-8 text relative to the home.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct BoxRow {
    /// Insertion sequence number (tie-break for equal `created_at`).
    pub(crate) seq: u64,
    /// The box id (ULID); equal to the key.
    pub(crate) id: String,
    /// Unique name, if any.
    pub(crate) name: Option<String>,
    /// `BoxStatus::as_str()`.
    pub(crate) status: String,
    /// Creation time, RFC 3339 with nanoseconds.
    pub(crate) created_at: DateTime<Utc>,
    /// Source image description.
    pub(crate) image: String,
    /// Storage backend name.
    pub(crate) storage: String,
    /// Live guest-rootfs disk.
    pub(crate) guest_rootfs: String,
    /// Live container disk.
    pub(crate) container: String,
}

/// A snapshot as stored in `snapshots`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotRow {
    /// Insertion sequence number; equal to the key's second part.
    pub(crate) seq: u64,
    /// Owning box id; equal to the key's first part.
    pub(crate) box_id: String,
    /// Name, unique within the box.
    pub(crate) name: String,
    /// Creation time.
    pub(crate) created_at: DateTime<Utc>,
    /// Guest-rootfs disk.
    pub(crate) guest_rootfs: String,
    /// Container disk.
    pub(crate) container: String,
    /// Allocated bytes of the guest-rootfs data.
    pub(crate) guest_disk_bytes: u64,
    /// Allocated bytes of the container data.
    pub(crate) container_disk_bytes: u64,
}

/// A journal entry as stored in `journal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct JournalRow {
    /// Insertion sequence number (tie-break for equal `started_at`).
    pub(crate) seq: u64,
    /// Entry id; equal to the key.
    pub(crate) id: String,
    /// Operation kind.
    pub(crate) operation: String,
    /// Held box id, if any.
    pub(crate) box_id: Option<String>,
    /// `BoxStatus::as_str()` of the status before the operation, if any.
    pub(crate) prior_status: Option<String>,
    /// Owner process id.
    pub(crate) owner_pid: u32,
    /// Start time.
    pub(crate) started_at: DateTime<Utc>,
    /// Staged paths (UTF-8).
    pub(crate) staged: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_one_by_one_up_to_schema_version() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
        assert_eq!(MIGRATIONS.last().map(|m| m.version), Some(SCHEMA_VERSION));
    }
}
