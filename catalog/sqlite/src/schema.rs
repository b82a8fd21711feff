//! The catalog schema and its versioned migrations.
//!
//! Policy (docs/catalog.md, "Migration policy"): migrations are append-only. Each entry of
//! [`MIGRATIONS`] takes the schema from version `n - 1` to `n`; a released entry is never edited,
//! only followed by a new one. On open, every step newer than the file's version runs inside one
//! `BEGIN IMMEDIATE` transaction together with the update of `schema_version`, so a crash or a
//! failing step leaves the file at its old version. A file whose version is newer than the last
//! entry here was written by a newer BoxLite and is refused (never downgraded).

/// One migration step: the version it produces and the SQL that gets there from the previous one.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Schema version after this step (the first step produces 1).
    pub version: u32,
    /// SQL executed as a batch inside the migration transaction.
    pub sql: &'static str,
}

/// Version 1: the initial schema.
const V1: &str = r#"
CREATE TABLE box_config (
    id          TEXT    PRIMARY KEY NOT NULL,
    seq         INTEGER NOT NULL UNIQUE,
    name        TEXT    UNIQUE,
    created_at  TEXT    NOT NULL,
    image       TEXT    NOT NULL,
    storage     TEXT    NOT NULL
) STRICT;

CREATE TRIGGER box_config_immutable BEFORE UPDATE ON box_config
BEGIN
    SELECT RAISE(ABORT, 'box_config rows are immutable');
END;

CREATE TABLE box_state (
    id            TEXT PRIMARY KEY NOT NULL
                       REFERENCES box_config(id) ON DELETE CASCADE,
    status        TEXT NOT NULL,
    guest_rootfs  TEXT NOT NULL,
    container     TEXT NOT NULL
) STRICT;

CREATE TABLE box_snapshot (
    seq                   INTEGER PRIMARY KEY AUTOINCREMENT,
    box_id                TEXT    NOT NULL REFERENCES box_config(id) ON DELETE CASCADE,
    name                  TEXT    NOT NULL,
    created_at            TEXT    NOT NULL,
    guest_rootfs          TEXT    NOT NULL,
    container             TEXT    NOT NULL,
    guest_disk_bytes      INTEGER NOT NULL CHECK (guest_disk_bytes >= 0),
    container_disk_bytes  INTEGER NOT NULL CHECK (container_disk_bytes >= 0),
    UNIQUE (box_id, name)
) STRICT;

CREATE INDEX box_snapshot_order ON box_snapshot (box_id, created_at, seq);

CREATE TABLE journal (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    operation     TEXT    NOT NULL,
    box_id        TEXT,
    prior_status  TEXT,
    owner_pid     INTEGER NOT NULL,
    started_at    TEXT    NOT NULL,
    staged        TEXT    NOT NULL
) STRICT;
"#;

/// Every migration, in order. Append only; never edit a released step.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    sql: V1,
}];

/// The `schema_version` table itself: created (if missing) before any migration runs, so the
/// version of any file, even an empty one, can be read the same way.
pub const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  INTEGER NOT NULL
) STRICT;";

/// The newest schema version this build knows (the last entry of the migration list).
pub const SCHEMA_VERSION: u32 = 1;

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
