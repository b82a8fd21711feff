//! # boxlite-catalog-redb
//!
//! A BoxLite catalog (DESIGN.md sections 3, 9 and 10) in one [redb](https://docs.rs/redb) file,
//! `<home>/boxlite.redb`: pure Rust, no C library, **single process**.
//!
//! * Every [`CatalogBackend::apply`] call is one redb write transaction: all ops or none. redb
//!   serializes write transactions of one process; reads use MVCC read transactions and never
//!   wait for a writer.
//! * redb locks its file (`flock`) for the lifetime of the open database. When another process
//!   holds the file, [`RedbCatalog::open`] fails at once with an [`Error::Catalog`] naming the
//!   file (and the holder's pid when `/proc/locks` shows it). Within one process, opening the
//!   same file again returns a handle on the already open database, so several runtimes of one
//!   process can share a home.
//! * The blocking redb work runs on tokio's blocking pool (`spawn_blocking`) when called from a
//!   tokio runtime, and inline otherwise.
//!
//! The table layout, the migration policy and the differences from the sqlite catalog are
//! described in `docs/catalog.md` (section "redb").
//!
//! Settings (`[plugin.redb]` in the config file, parsed strictly):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `file` | `"boxlite.redb"` | file name of the database inside the home |
//!
//! The crate registers itself as the catalog named `"redb"` with [`boxlite_api::inventory`].

#![warn(missing_docs)]

mod schema;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use boxlite_api::{
    BoxId, BoxRecord, BoxStatus, CatalogBackend, CatalogOp, DiskSet, Error, JournalEntry,
    ObjectKind, PluginConfig, Result, SnapshotRecord,
};
use redb::{Database, ReadableTable, Table, WriteTransaction};
use serde::Deserialize;

pub use schema::SCHEMA_VERSION;
use schema::{
    BoxRow, JournalRow, SnapshotRow, BOXES, BOX_NAMES, JOURNAL, KEY_NEXT_SEQ, KEY_SCHEMA_VERSION,
    META, MIGRATIONS, SNAPSHOTS, SNAPSHOT_NAMES,
};

/// The registry name of this catalog.
pub const NAME: &str = "redb";

/// Default database file name inside the home.
pub const DEFAULT_FILE: &str = "boxlite.redb";

/// redb's page cache limit for the catalog (the default is 1 GiB; a catalog is small).
const CACHE_BYTES: usize = 32 << 20;

/// How long an open waits for a handle of the same file that is being closed in this process.
const CLOSING_WAIT: Duration = Duration::from_secs(10);

boxlite_api::inventory::submit! {
    boxlite_api::Registration {
        name: NAME,
        description: "redb catalog (pure Rust, one file boxlite.redb in the home; single process)",
        factory: boxlite_api::Factory::Catalog(RedbCatalog::from_config),
    }
}

/// Settings of the redb catalog (`[plugin.redb]`). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedbSettings {
    /// File name of the database inside the home (a plain name, no directory part).
    /// Default `"boxlite.redb"`.
    pub file: String,
}

impl Default for RedbSettings {
    fn default() -> Self {
        RedbSettings {
            file: DEFAULT_FILE.to_owned(),
        }
    }
}

impl RedbSettings {
    fn validate(&self) -> Result<()> {
        let f = self.file.as_str();
        let plain = !f.is_empty()
            && f != "."
            && f != ".."
            && !f.contains('/')
            && !f.contains('\\')
            && !f.contains('\0');
        if plain {
            Ok(())
        } else {
            Err(Error::config(format!(
                "settings of plugin '{NAME}': file = {f:?} must be a plain file name inside the \
                 home (no directory part), e.g. \"{DEFAULT_FILE}\""
            )))
        }
    }
}

/// The redb catalog. Cheap to share: wrap it in an `Arc` (the factory does).
///
/// Every handle of one database file in this process shares one open [`redb::Database`].
pub struct RedbCatalog {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedbCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbCatalog")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// One open database file. `db` is an `Option` only so that `Drop` can close the file before
/// it forgets the file in [`OPEN`].
struct Inner {
    path: PathBuf,
    db: Option<Database>,
}

/// Databases open in this process, by canonical file path. redb's file lock is per open file
/// description, so a second `Database` on the same file in one process would be refused: a
/// second open shares the first one instead.
static OPEN: Mutex<BTreeMap<PathBuf, Weak<Inner>>> = Mutex::new(BTreeMap::new());

fn open_map() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Weak<Inner>>> {
    OPEN.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Close the file (release redb's lock) while holding the map, so that an open of the
        // same file waiting on the map finds either a live handle or none at all.
        let mut map = open_map();
        drop(self.db.take());
        let mine = map
            .get(&self.path)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self as *const Inner));
        if mine {
            map.remove(&self.path);
        }
    }
}

impl RedbCatalog {
    /// Open (creating if missing) the catalog file `settings.file` in `home` and run pending
    /// migrations in one write transaction. A file already open in this process is shared.
    /// A missing file is created with mode 0600; an existing file keeps its mode.
    ///
    /// Errors: [`Error::Config`] for bad settings; [`Error::Catalog`] when `home` is not an
    /// existing directory (the runtime creates the home, not the catalog), when another process
    /// holds the file, or when its schema version is newer than [`SCHEMA_VERSION`] ("upgrade
    /// boxlite"); [`Error::Corrupt`] when the file is not a redb database of this layout.
    pub fn open(home: &Path, settings: &RedbSettings) -> Result<RedbCatalog> {
        settings.validate()?;
        let home = check_home(home)?;
        let path = home.join(&settings.file);
        let deadline = Instant::now() + CLOSING_WAIT;
        loop {
            let mut map = open_map();
            match map.get(&path).map(Weak::upgrade) {
                Some(Some(inner)) => return Ok(RedbCatalog { inner }),
                Some(None) if Instant::now() < deadline => {
                    // Another handle is being dropped right now; its Drop removes the entry.
                    drop(map);
                    std::thread::sleep(Duration::from_millis(1));
                }
                Some(None) | None => {
                    let db = open_database(&path)?;
                    let inner = Arc::new(Inner {
                        path: path.clone(),
                        db: Some(db),
                    });
                    map.insert(path, Arc::downgrade(&inner));
                    return Ok(RedbCatalog { inner });
                }
            }
        }
    }

    /// [`RedbCatalog::open`] with default settings (`<home>/boxlite.redb`).
    ///
    /// Errors: as [`RedbCatalog::open`].
    pub fn open_default(home: &Path) -> Result<RedbCatalog> {
        RedbCatalog::open(home, &RedbSettings::default())
    }

    /// The registry factory: parse [`RedbSettings`] from `config.settings` and open the catalog
    /// in `config.home`.
    ///
    /// Errors: [`Error::Config`] for unknown keys or bad values; otherwise as
    /// [`RedbCatalog::open`].
    pub fn from_config(config: &PluginConfig) -> Result<Arc<dyn CatalogBackend>> {
        let settings: RedbSettings = config.parse(NAME)?;
        Ok(Arc::new(RedbCatalog::open(&config.home, &settings)?))
    }

    /// Absolute path of the database file (with the home canonicalized).
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Run `f` off the async runtime's worker threads (tokio's blocking pool), or inline when
    /// not called from a tokio runtime.
    async fn blocking<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => handle
                .spawn_blocking(move || f(&inner))
                .await
                .map_err(|e| {
                    Error::catalog(
                        NAME,
                        format!(
                            "catalog worker for {} failed: {e}; this is a bug, please report it",
                            self.inner.path.display()
                        ),
                    )
                })?,
            Err(_) => f(&inner),
        }
    }

    /// Run `f` in a read transaction.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction, &Path) -> Result<T> + Send + 'static,
    {
        self.blocking(move |inner| {
            let tx = inner
                .db()?
                .begin_read()
                .map_err(|e| db_error(&inner.path, "starting a read transaction", e))?;
            f(&tx, &inner.path)
        })
        .await
    }
}

fn check_home(home: &Path) -> Result<PathBuf> {
    match std::fs::metadata(home) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(home).map_err(|e| Error::io(home, e)),
        Ok(_) => Err(Error::catalog(
            NAME,
            format!(
                "BoxLite home {} is not a directory: point BOXLITE_HOME at a directory",
                home.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::catalog(
            NAME,
            format!(
                "BoxLite home {} does not exist: the runtime creates it; create the directory \
                 or fix BOXLITE_HOME",
                home.display()
            ),
        )),
        Err(e) => Err(Error::io(home, e)),
    }
}

/// Open or create the file (a new file gets mode 0600, not 0666 minus the umask) and bring its
/// schema up to date.
fn open_database(path: &Path) -> Result<Database> {
    use std::os::unix::fs::OpenOptionsExt;
    // What `redb::Builder::create` does, plus the mode of a new file (redb would use 0666
    // minus the umask). redb locks the file with flock, per open file description.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| db_error(path, "opening the catalog", e))?;
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_file(file)
        .map_err(|e| db_error(path, "opening the catalog", e))?;
    migrate(&db, path)?;
    Ok(db)
}

fn migrate(db: &Database, path: &Path) -> Result<()> {
    let ctx = |e: redb::Error| db_error(path, "migrating the catalog schema", e);
    let tx = db.begin_write().map_err(|e| ctx(e.into()))?;
    let current = {
        let meta = tx.open_table(META).map_err(|e| ctx(e.into()))?;
        let v = meta
            .get(KEY_SCHEMA_VERSION)
            .map_err(|e| ctx(e.into()))?
            .map(|g| g.value());
        v
    };
    let current = match current {
        None => 0,
        Some(v) => u32::try_from(v)
            .map_err(|_| Error::corrupt(path, format!("meta.schema_version is {v}")))?,
    };
    if current > SCHEMA_VERSION {
        // Dropping `tx` aborts it: nothing is written.
        return Err(Error::catalog(
            NAME,
            format!(
                "{} has catalog schema version {current}, newer than version {SCHEMA_VERSION} \
                 known to this build: it was written by a newer BoxLite; upgrade boxlite to open \
                 this home",
                path.display()
            ),
        ));
    }
    let pending: Vec<_> = MIGRATIONS.iter().filter(|m| m.version > current).collect();
    if pending.is_empty() {
        return tx
            .abort()
            .map_err(|e| db_error(path, "ending the schema check", e));
    }
    for m in pending {
        (m.run)(&tx).map_err(|e| {
            db_error(
                path,
                &format!("migrating the catalog schema to version {}", m.version),
                *e,
            )
        })?;
        let mut meta = tx.open_table(META).map_err(|e| ctx(e.into()))?;
        meta.insert(KEY_SCHEMA_VERSION, u64::from(m.version))
            .map_err(|e| ctx(e.into()))?;
        tracing::info!(path = %path.display(), version = m.version, "catalog schema migrated");
    }
    tx.commit().map_err(|e| ctx(e.into()))
}

impl Inner {
    fn db(&self) -> Result<&Database> {
        self.db.as_ref().ok_or_else(|| {
            Error::catalog(
                NAME,
                format!(
                    "{} was used after it was closed; this is a bug, please report it",
                    self.path.display()
                ),
            )
        })
    }

    fn apply(&self, ops: Vec<CatalogOp>) -> Result<()> {
        let path = self.path.as_path();
        let tx = self
            .db()?
            .begin_write()
            .map_err(|e| db_error(path, "starting a write transaction", e))?;
        {
            let mut t = Tables::open(&tx, path)?;
            for op in ops {
                // On error, `tx` is dropped below without commit: redb aborts it.
                t.apply_op(op)?;
            }
        }
        tx.commit()
            .map_err(|e| db_error(path, "committing a write transaction", e))
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Linux errno for "No space left on device".
const ENOSPC: i32 = 28;
/// Linux errno for "Disk quota exceeded".
const EDQUOT: i32 = 122;

/// Map a redb error to the BoxLite error type, naming the file and what to do.
fn db_error(path: &Path, what: &str, e: impl Into<redb::Error>) -> Error {
    let e: redb::Error = e.into();
    let p = path.display();
    let detail = match e {
        redb::Error::DatabaseAlreadyOpen => return held_error(path),
        redb::Error::Corrupted(msg) => {
            return Error::corrupt(path, format!("{what}: redb reports corruption: {msg}"))
        }
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TableIsNotMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }
        | redb::Error::TableDoesNotExist(_)) => {
            return Error::corrupt(
                path,
                format!("{what}: {e}; the file does not hold a BoxLite catalog of a known layout"),
            )
        }
        redb::Error::Io(io) => {
            let full = matches!(io.raw_os_error(), Some(ENOSPC | EDQUOT))
                || io.kind() == std::io::ErrorKind::StorageFull;
            if full {
                return Error::io(path, io);
            }
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) {
                return Error::corrupt(
                    path,
                    format!("{what}: the file is truncated or not a redb database ({io})"),
                );
            }
            return Error::Catalog {
                backend: NAME.to_owned(),
                detail: format!(
                    "{what} on {p}: I/O error ({io}); check that the file exists and is \
                     writable by this user, and check the disk (`dmesg`)"
                ),
                source: Some(Box::new(io)),
            };
        }
        redb::Error::UpgradeRequired(v) => format!(
            "{what} on {p}: the file uses redb file format {v}, which this build cannot open; \
             it was written by an older BoxLite: export the boxes with that version, or switch \
             the home to the sqlite catalog"
        ),
        redb::Error::PreviousIo => format!(
            "{what} on {p}: an earlier I/O error left the database unusable in this process; \
             check the disk and restart the process"
        ),
        redb::Error::ValueTooLarge(n) => {
            format!("{what} on {p}: a record of {n} bytes is larger than redb can store")
        }
        other => format!("{what} on {p}: {other}; run `boxlite doctor` if this persists"),
    };
    Error::catalog(NAME, detail)
}

/// The error for a file locked by another process.
fn held_error(path: &Path) -> Error {
    let holder = match lock_holder(path) {
        Some(pid) => format!("another process (pid {pid})"),
        None => "another process".to_owned(),
    };
    Error::catalog(
        NAME,
        format!(
            "{} is held by {holder}: the redb catalog is single-process; stop the other \
             BoxLite process using this home and retry, or use the sqlite catalog for a home \
             shared by several processes",
            path.display()
        ),
    )
}

/// The pid holding a `flock` on `path`, from `/proc/locks` (Linux; best effort).
fn lock_holder(path: &Path) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    let want = format!("{major:02x}:{minor:02x}:{}", meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let me = std::process::id();
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.get(1) == Some(&"->") || !fields.contains(&"FLOCK") {
            return None;
        }
        let at = fields.iter().position(|f| *f == want)?;
        let pid: u32 = fields.get(at.checked_sub(1)?)?.parse().ok()?;
        (pid != me).then_some(pid)
    })
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding of rows
// ---------------------------------------------------------------------------------------------

fn path_text(p: &Path, what: &str) -> Result<String> {
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| Error::Unsupported {
            what: format!("{what} path that is not valid UTF-8"),
            path: Some(p.to_owned()),
            hint:
                "the catalog stores paths as UTF-8 text; use a UTF-8 home directory and file names"
                    .to_owned(),
        })
}

fn encode<T: serde::Serialize>(row: &T, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(row).map_err(|e| {
        Error::catalog(
            NAME,
            format!("encoding {what}: {e}; please report this bug"),
        )
    })
}

fn decode<'a, T: Deserialize<'a>>(
    path: &Path,
    table: &str,
    key: &str,
    bytes: &'a [u8],
) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| {
        // Records are one line of JSON: show the bytes around where decoding stopped.
        let at = e.column().min(bytes.len());
        let window = &bytes[at.saturating_sub(60)..(at + 20).min(bytes.len())];
        let shown = String::from_utf8_lossy(window).into_owned();
        Error::corrupt(
            path,
            format!("{table}[{key}]: not a valid record ({e}) near {shown:?}"),
        )
    })
}

fn parse_id(path: &Path, table: &str, key: &str, s: &str) -> Result<BoxId> {
    match BoxId::parse(s) {
        Some(id) if id.as_str() == s => Ok(id),
        _ => Err(Error::corrupt(
            path,
            format!("{table}[{key}]: {s:?} is not a box id (ULID)"),
        )),
    }
}

fn parse_status(path: &Path, table: &str, key: &str, s: &str) -> Result<BoxStatus> {
    BoxStatus::parse(s)
        .ok_or_else(|| Error::corrupt(path, format!("{table}[{key}]: unknown status {s:?}")))
}

fn box_row(b: &BoxRecord, seq: u64) -> Result<BoxRow> {
    Ok(BoxRow {
        seq,
        id: b.id.to_string(),
        name: b.name.clone(),
        status: b.status.as_str().to_owned(),
        created_at: b.created_at,
        image: b.image.clone(),
        storage: b.storage.clone(),
        guest_rootfs: path_text(&b.disks.guest_rootfs, "guest-rootfs disk")?,
        container: path_text(&b.disks.container, "container disk")?,
    })
}

fn decode_box(path: &Path, key: &str, bytes: &[u8]) -> Result<(BoxRow, BoxRecord)> {
    let row: BoxRow = decode(path, "boxes", key, bytes)?;
    let id = parse_id(path, "boxes", key, &row.id)?;
    if row.id != key {
        return Err(Error::corrupt(
            path,
            format!("boxes[{key}]: the record holds the id {:?}", row.id),
        ));
    }
    let rec = BoxRecord {
        id,
        name: row.name.clone(),
        status: parse_status(path, "boxes", key, &row.status)?,
        created_at: row.created_at,
        image: row.image.clone(),
        storage: row.storage.clone(),
        disks: DiskSet {
            guest_rootfs: row.guest_rootfs.clone().into(),
            container: row.container.clone().into(),
        },
    };
    Ok((row, rec))
}

fn snapshot_row(s: &SnapshotRecord, seq: u64) -> Result<SnapshotRow> {
    Ok(SnapshotRow {
        seq,
        box_id: s.box_id.to_string(),
        name: s.name.clone(),
        created_at: s.created_at,
        guest_rootfs: path_text(&s.disks.guest_rootfs, "guest-rootfs disk")?,
        container: path_text(&s.disks.container, "container disk")?,
        guest_disk_bytes: s.guest_disk_bytes,
        container_disk_bytes: s.container_disk_bytes,
    })
}

fn decode_snapshot(
    path: &Path,
    key: (&str, u64),
    bytes: &[u8],
) -> Result<(SnapshotRow, SnapshotRecord)> {
    let k = format!("{}/{}", key.0, key.1);
    let row: SnapshotRow = decode(path, "snapshots", &k, bytes)?;
    if row.box_id != key.0 || row.seq != key.1 {
        return Err(Error::corrupt(
            path,
            format!(
                "snapshots[{k}]: the record says box {:?}, seq {}",
                row.box_id, row.seq
            ),
        ));
    }
    let rec = SnapshotRecord {
        box_id: parse_id(path, "snapshots", &k, &row.box_id)?,
        name: row.name.clone(),
        created_at: row.created_at,
        disks: DiskSet {
            guest_rootfs: row.guest_rootfs.clone().into(),
            container: row.container.clone().into(),
        },
        guest_disk_bytes: row.guest_disk_bytes,
        container_disk_bytes: row.container_disk_bytes,
    };
    Ok((row, rec))
}

fn journal_row(j: &JournalEntry, seq: u64) -> Result<JournalRow> {
    Ok(JournalRow {
        seq,
        id: j.id.clone(),
        operation: j.operation.clone(),
        box_id: j.box_id.as_ref().map(BoxId::to_string),
        prior_status: j.prior_status.map(|s| s.as_str().to_owned()),
        owner_pid: j.owner_pid,
        started_at: j.started_at,
        staged: j
            .staged
            .iter()
            .map(|p| path_text(p, "staged"))
            .collect::<Result<_>>()?,
    })
}

fn decode_journal(path: &Path, key: &str, bytes: &[u8]) -> Result<(u64, JournalEntry)> {
    let row: JournalRow = decode(path, "journal", key, bytes)?;
    if row.id != key {
        return Err(Error::corrupt(
            path,
            format!("journal[{key}]: the record holds the id {:?}", row.id),
        ));
    }
    let box_id = match &row.box_id {
        None => None,
        Some(s) => Some(parse_id(path, "journal", key, s)?),
    };
    let prior_status = match &row.prior_status {
        None => None,
        Some(s) => Some(parse_status(path, "journal", key, s)?),
    };
    Ok((
        row.seq,
        JournalEntry {
            id: row.id,
            operation: row.operation,
            box_id,
            prior_status,
            owner_pid: row.owner_pid,
            started_at: row.started_at,
            staged: row.staged.into_iter().map(PathBuf::from).collect(),
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// Every table, opened for writing in one transaction.
struct Tables<'tx> {
    path: &'tx Path,
    meta: Table<'tx, &'static str, u64>,
    boxes: Table<'tx, &'static str, &'static [u8]>,
    names: Table<'tx, &'static str, &'static str>,
    snaps: Table<'tx, (&'static str, u64), &'static [u8]>,
    snap_names: Table<'tx, (&'static str, &'static str), u64>,
    journal: Table<'tx, &'static str, &'static [u8]>,
}

impl<'tx> Tables<'tx> {
    fn open(tx: &'tx WriteTransaction, path: &'tx Path) -> Result<Tables<'tx>> {
        let ctx = |e| db_error(path, "opening the catalog tables", redb::Error::from(e));
        Ok(Tables {
            path,
            meta: tx.open_table(META).map_err(ctx)?,
            boxes: tx.open_table(BOXES).map_err(ctx)?,
            names: tx.open_table(BOX_NAMES).map_err(ctx)?,
            snaps: tx.open_table(SNAPSHOTS).map_err(ctx)?,
            snap_names: tx.open_table(SNAPSHOT_NAMES).map_err(ctx)?,
            journal: tx.open_table(JOURNAL).map_err(ctx)?,
        })
    }

    fn err(&self, what: &str) -> impl Fn(redb::StorageError) -> Error + '_ {
        let what = what.to_owned();
        move |e| db_error(self.path, &what, e)
    }

    /// The next insertion sequence number (persisted, never reused).
    fn next_seq(&mut self) -> Result<u64> {
        let path = self.path;
        let cur = self
            .meta
            .get(KEY_NEXT_SEQ)
            .map_err(|e| db_error(path, "reading the sequence counter", e))?
            .map(|g| g.value())
            .unwrap_or(1);
        let next = cur
            .checked_add(1)
            .ok_or_else(|| Error::corrupt(path, "meta.next_seq is at its maximum"))?;
        self.meta
            .insert(KEY_NEXT_SEQ, next)
            .map_err(|e| db_error(path, "updating the sequence counter", e))?;
        Ok(cur)
    }

    fn get_box(&self, id: &str) -> Result<Option<(BoxRow, BoxRecord)>> {
        let g = self.boxes.get(id).map_err(self.err("reading a box"))?;
        match g {
            None => Ok(None),
            Some(g) => decode_box(self.path, id, g.value()).map(Some),
        }
    }

    fn put_box(&mut self, row: &BoxRow) -> Result<()> {
        let bytes = encode(row, "a box")?;
        let path = self.path;
        self.boxes
            .insert(row.id.as_str(), bytes.as_slice())
            .map_err(|e| db_error(path, "writing a box", e))?;
        Ok(())
    }

    /// The box's name for messages (its name, or its id when it has none); `None` if no box.
    fn box_label(&self, id: &BoxId) -> Result<Option<String>> {
        Ok(self
            .get_box(id.as_str())?
            .map(|(row, _)| row.name.unwrap_or_else(|| id.to_string())))
    }

    fn apply_op(&mut self, op: CatalogOp) -> Result<()> {
        let path = self.path;
        match op {
            CatalogOp::InsertBox(b) => {
                let mut row = box_row(&b, 0)?;
                if self.get_box(b.id.as_str())?.is_some() {
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Box,
                        name: b.id.to_string(),
                        box_name: None,
                    });
                }
                if let Some(name) = &b.name {
                    let taken = self
                        .names
                        .get(name.as_str())
                        .map_err(self.err("looking up a box name"))?
                        .is_some();
                    if taken {
                        return Err(Error::AlreadyExists {
                            kind: ObjectKind::Box,
                            name: name.clone(),
                            box_name: None,
                        });
                    }
                }
                row.seq = self.next_seq()?;
                self.put_box(&row)?;
                if let Some(name) = &b.name {
                    self.names
                        .insert(name.as_str(), b.id.as_str())
                        .map_err(|e| db_error(path, "writing a box name", e))?;
                }
            }
            CatalogOp::SetBoxDisks { box_id, disks } => {
                let guest = path_text(&disks.guest_rootfs, "guest-rootfs disk")?;
                let container = path_text(&disks.container, "container disk")?;
                let Some((mut row, _)) = self.get_box(box_id.as_str())? else {
                    return Err(Error::box_not_found(box_id.to_string()));
                };
                row.guest_rootfs = guest;
                row.container = container;
                self.put_box(&row)?;
            }
            CatalogOp::SetBoxStatus {
                box_id,
                expected,
                new,
            } => {
                let Some((mut row, rec)) = self.get_box(box_id.as_str())? else {
                    return Err(Error::box_not_found(box_id.to_string()));
                };
                if rec.status != expected {
                    return Err(Error::Busy {
                        box_name: row.name.unwrap_or_else(|| box_id.to_string()),
                        status: rec.status,
                    });
                }
                row.status = new.as_str().to_owned();
                self.put_box(&row)?;
            }
            CatalogOp::RemoveBox { box_id } => self.remove_box(&box_id)?,
            CatalogOp::InsertSnapshot(s) => {
                let mut row = snapshot_row(&s, 0)?;
                let Some(label) = self.box_label(&s.box_id)? else {
                    return Err(Error::box_not_found(s.box_id.to_string()));
                };
                let key = (s.box_id.as_str(), s.name.as_str());
                let taken = self
                    .snap_names
                    .get(key)
                    .map_err(self.err("looking up a snapshot name"))?
                    .is_some();
                if taken {
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Snapshot,
                        name: s.name,
                        box_name: Some(label),
                    });
                }
                row.seq = self.next_seq()?;
                let bytes = encode(&row, "a snapshot")?;
                self.snaps
                    .insert((s.box_id.as_str(), row.seq), bytes.as_slice())
                    .map_err(|e| db_error(path, "writing a snapshot", e))?;
                self.snap_names
                    .insert(key, row.seq)
                    .map_err(|e| db_error(path, "writing a snapshot name", e))?;
            }
            CatalogOp::RemoveSnapshot { box_id, name } => {
                let Some(label) = self.box_label(&box_id)? else {
                    return Err(Error::box_not_found(box_id.to_string()));
                };
                let seq = self
                    .snap_names
                    .remove((box_id.as_str(), name.as_str()))
                    .map_err(|e| db_error(path, "removing a snapshot name", e))?
                    .map(|g| g.value());
                let Some(seq) = seq else {
                    return Err(Error::snapshot_not_found(label, name));
                };
                let removed = self
                    .snaps
                    .remove((box_id.as_str(), seq))
                    .map_err(|e| db_error(path, "removing a snapshot", e))?
                    .is_some();
                if !removed {
                    return Err(Error::corrupt(
                        path,
                        format!(
                            "snapshot_names[{box_id}/{name}] points to snapshot seq {seq}, \
                             which does not exist"
                        ),
                    ));
                }
            }
            CatalogOp::InsertJournal(j) => {
                let mut row = journal_row(&j, 0)?;
                let taken = self
                    .journal
                    .get(j.id.as_str())
                    .map_err(self.err("looking up a journal entry"))?
                    .is_some();
                if taken {
                    // ObjectKind has no journal variant (as in the sqlite catalog); the id names it.
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Box,
                        name: format!("journal entry {}", j.id),
                        box_name: None,
                    });
                }
                row.seq = self.next_seq()?;
                let bytes = encode(&row, "a journal entry")?;
                self.journal
                    .insert(j.id.as_str(), bytes.as_slice())
                    .map_err(|e| db_error(path, "writing a journal entry", e))?;
            }
            CatalogOp::RemoveJournal { id } => {
                self.journal
                    .remove(id.as_str())
                    .map_err(|e| db_error(path, "removing a journal entry", e))?;
            }
        }
        Ok(())
    }

    /// Remove a box, its name and, in the same transaction, all of its snapshots. A box whose
    /// record does not decode is still removed (with every name pointing to it), so that a
    /// damaged record can be cleaned up.
    fn remove_box(&mut self, box_id: &BoxId) -> Result<()> {
        let path = self.path;
        let id = box_id.as_str();
        let old = self
            .boxes
            .remove(id)
            .map_err(|e| db_error(path, "removing a box", e))?
            .map(|g| g.value().to_vec());
        let Some(old) = old else {
            return Err(Error::box_not_found(box_id.to_string()));
        };
        match decode::<BoxRow>(path, "boxes", id, &old) {
            Ok(row) => {
                if let Some(name) = row.name {
                    self.names
                        .remove(name.as_str())
                        .map_err(|e| db_error(path, "removing a box name", e))?;
                }
            }
            Err(_) => {
                self.names
                    .retain(|_, v| v != id)
                    .map_err(|e| db_error(path, "removing a box name", e))?;
            }
        }
        self.snaps
            .retain_in((id, 0u64)..=(id, u64::MAX), |_, _| false)
            .map_err(|e| db_error(path, "removing a box's snapshots", e))?;
        let mut names = Vec::new();
        for item in self
            .snap_names
            .range((id, "")..)
            .map_err(|e| db_error(path, "listing a box's snapshot names", e))?
        {
            let (k, _) = item.map_err(|e| db_error(path, "listing a box's snapshot names", e))?;
            let (b, n) = k.value();
            if b != id {
                break;
            }
            names.push(n.to_owned());
        }
        for n in names {
            self.snap_names
                .remove((id, n.as_str()))
                .map_err(|e| db_error(path, "removing a snapshot name", e))?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reads
// ---------------------------------------------------------------------------------------------

fn read_version(tx: &redb::ReadTransaction, path: &Path) -> Result<u32> {
    let meta = tx
        .open_table(META)
        .map_err(|e| db_error(path, "reading the schema version", e))?;
    let v = meta
        .get(KEY_SCHEMA_VERSION)
        .map_err(|e| db_error(path, "reading the schema version", e))?
        .map(|g| g.value());
    match v {
        None => Ok(0),
        Some(v) => u32::try_from(v)
            .map_err(|_| Error::corrupt(path, format!("meta.schema_version is {v}"))),
    }
}

fn read_box(tx: &redb::ReadTransaction, path: &Path, id: &str) -> Result<Option<BoxRecord>> {
    let ctx = |e: redb::Error| db_error(path, "reading a box", e);
    let boxes = tx.open_table(BOXES).map_err(|e| ctx(e.into()))?;
    let g = boxes.get(id).map_err(|e| ctx(e.into()))?;
    match g {
        None => Ok(None),
        Some(g) => decode_box(path, id, g.value()).map(|(_, r)| Some(r)),
    }
}

fn read_snapshots(
    tx: &redb::ReadTransaction,
    path: &Path,
    box_id: Option<&str>,
) -> Result<Vec<(SnapshotRow, SnapshotRecord)>> {
    let ctx = |e: redb::Error| db_error(path, "listing snapshots", e);
    let snaps = tx.open_table(SNAPSHOTS).map_err(|e| ctx(e.into()))?;
    let iter = match box_id {
        Some(id) => snaps.range((id, 0u64)..=(id, u64::MAX)),
        None => snaps.iter(),
    }
    .map_err(|e| ctx(e.into()))?;
    let mut out = Vec::new();
    for item in iter {
        let (k, v) = item.map_err(|e| ctx(e.into()))?;
        out.push(decode_snapshot(path, k.value(), v.value())?);
    }
    Ok(out)
}

#[async_trait]
impl CatalogBackend for RedbCatalog {
    fn name(&self) -> &str {
        NAME
    }

    async fn schema_version(&self) -> Result<u32> {
        self.read(read_version).await
    }

    async fn apply(&self, ops: Vec<CatalogOp>) -> Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        self.blocking(move |inner| inner.apply(ops)).await
    }

    async fn get_box(&self, id: &BoxId) -> Result<Option<BoxRecord>> {
        let id = id.clone();
        self.read(move |tx, path| read_box(tx, path, id.as_str()))
            .await
    }

    async fn find_box(&self, name: &str) -> Result<Option<BoxRecord>> {
        let name = name.to_owned();
        self.read(move |tx, path| {
            let ctx = |e: redb::Error| db_error(path, "looking up a box name", e);
            let names = tx.open_table(BOX_NAMES).map_err(|e| ctx(e.into()))?;
            let id = names
                .get(name.as_str())
                .map_err(|e| ctx(e.into()))?
                .map(|g| g.value().to_owned());
            let Some(id) = id else { return Ok(None) };
            match read_box(tx, path, &id)? {
                Some(b) if b.name.as_deref() == Some(name.as_str()) => Ok(Some(b)),
                Some(_) => Err(Error::corrupt(
                    path,
                    format!("box_names[{name}] points to box {id}, which has another name"),
                )),
                None => Err(Error::corrupt(
                    path,
                    format!("box_names[{name}] points to box {id}, which does not exist"),
                )),
            }
        })
        .await
    }

    async fn list_boxes(&self) -> Result<Vec<BoxRecord>> {
        self.read(|tx, path| {
            let ctx = |e: redb::Error| db_error(path, "listing boxes", e);
            let boxes = tx.open_table(BOXES).map_err(|e| ctx(e.into()))?;
            let mut out = Vec::new();
            for item in boxes.iter().map_err(|e| ctx(e.into()))? {
                let (k, v) = item.map_err(|e| ctx(e.into()))?;
                out.push(decode_box(path, k.value(), v.value())?);
            }
            out.sort_by_key(|(a, _)| (a.created_at, a.seq));
            Ok(out.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }

    async fn get_snapshot(&self, box_id: &BoxId, name: &str) -> Result<Option<SnapshotRecord>> {
        let (box_id, name) = (box_id.clone(), name.to_owned());
        self.read(move |tx, path| {
            let ctx = |e: redb::Error| db_error(path, "reading a snapshot", e);
            let names = tx.open_table(SNAPSHOT_NAMES).map_err(|e| ctx(e.into()))?;
            let seq = names
                .get((box_id.as_str(), name.as_str()))
                .map_err(|e| ctx(e.into()))?
                .map(|g| g.value());
            let Some(seq) = seq else { return Ok(None) };
            let snaps = tx.open_table(SNAPSHOTS).map_err(|e| ctx(e.into()))?;
            let key = (box_id.as_str(), seq);
            let g = snaps.get(key).map_err(|e| ctx(e.into()))?;
            let Some(g) = g else {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "snapshot_names[{box_id}/{name}] points to snapshot seq {seq}, which \
                         does not exist"
                    ),
                ));
            };
            let (_, rec) = decode_snapshot(path, key, g.value())?;
            if rec.name != name {
                return Err(Error::corrupt(
                    path,
                    format!(
                        "snapshot_names[{box_id}/{name}] points to snapshot seq {seq}, which is \
                         named {:?}",
                        rec.name
                    ),
                ));
            }
            Ok(Some(rec))
        })
        .await
    }

    async fn list_snapshots(&self, box_id: &BoxId) -> Result<Vec<SnapshotRecord>> {
        let box_id = box_id.clone();
        self.read(move |tx, path| {
            let mut v = read_snapshots(tx, path, Some(box_id.as_str()))?;
            v.sort_by_key(|(a, _)| (a.created_at, a.seq));
            Ok(v.into_iter().map(|(_, r)| r).collect())
        })
        .await
    }

    async fn list_all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.read(|tx, path| {
            Ok(read_snapshots(tx, path, None)?
                .into_iter()
                .map(|(_, r)| r)
                .collect())
        })
        .await
    }

    async fn list_journal(&self) -> Result<Vec<JournalEntry>> {
        self.read(|tx, path| {
            let ctx = |e: redb::Error| db_error(path, "listing the journal", e);
            let journal = tx.open_table(JOURNAL).map_err(|e| ctx(e.into()))?;
            let mut out = Vec::new();
            for item in journal.iter().map_err(|e| ctx(e.into()))? {
                let (k, v) = item.map_err(|e| ctx(e.into()))?;
                out.push(decode_journal(path, k.value(), v.value())?);
            }
            out.sort_by_key(|(sa, a)| (a.started_at, *sa));
            Ok(out.into_iter().map(|(_, j)| j).collect())
        })
        .await
    }
}
