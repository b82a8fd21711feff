//! # boxlite-catalog-sqlite
//!
//! The default BoxLite catalog (DESIGN.md sections 3, 9 and 10): one SQLite file,
//! `<home>/boxlite.db`, in WAL mode, built on `rusqlite` with a bundled SQLite.
//!
//! * Every [`CatalogBackend::apply`] call is one `BEGIN IMMEDIATE` transaction: all ops or none.
//!   Writers of other processes wait for the write lock up to `busy_timeout_ms` (default 10 s)
//!   instead of failing with "database is locked".
//! * Reads use their own connections, so in WAL mode they never wait for a writer.
//! * The blocking SQLite work runs on tokio's blocking pool (`spawn_blocking`) when called from
//!   a tokio runtime, and inline otherwise.
//!
//! The schema, the pragmas and why, the migration policy and the concurrency behaviour are
//! described in `docs/catalog.md`.
//!
//! Settings (`[plugin.sqlite]` in the config file, parsed strictly):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `busy_timeout_ms` | `10000` | milliseconds a connection waits for another process's lock |
//! | `file` | `"boxlite.db"` | file name of the database inside the home |
//!
//! The crate registers itself as the catalog named `"sqlite"` with [`boxlite_api::inventory`].

#![warn(missing_docs)]

mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use boxlite_api::{
    BoxId, BoxRecord, BoxStatus, CatalogBackend, CatalogOp, DiskSet, Error, JournalEntry,
    ObjectKind, PluginConfig, Result, SnapshotRecord,
};
use chrono::{DateTime, Datelike, SecondsFormat, Utc};
use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension, Row};
use serde::Deserialize;

pub use schema::SCHEMA_VERSION;

/// The registry name of this catalog.
pub const NAME: &str = "sqlite";

/// Default database file name inside the home.
pub const DEFAULT_FILE: &str = "boxlite.db";

/// Default time, in milliseconds, a connection waits for a lock held by another connection or
/// process before giving up.
pub const DEFAULT_BUSY_TIMEOUT_MS: u64 = 10_000;

/// Idle read connections kept for reuse (more are opened on demand and closed after use).
const MAX_IDLE_READERS: usize = 4;

boxlite_api::inventory::submit! {
    boxlite_api::Registration {
        name: NAME,
        description: "SQLite catalog (WAL, one file boxlite.db in the home; safe across processes)",
        factory: boxlite_api::Factory::Catalog(SqliteCatalog::from_config),
    }
}

/// Settings of the sqlite catalog (`[plugin.sqlite]`). Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqliteSettings {
    /// Milliseconds a connection waits for a lock held by another connection or process
    /// (SQLite's `busy_timeout`). Default 10000.
    pub busy_timeout_ms: u64,
    /// File name of the database inside the home (a plain name, no directory part).
    /// Default `"boxlite.db"`.
    pub file: String,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            busy_timeout_ms: DEFAULT_BUSY_TIMEOUT_MS,
            file: DEFAULT_FILE.to_owned(),
        }
    }
}

impl SqliteSettings {
    fn validate(&self) -> Result<()> {
        let f = self.file.as_str();
        let plain = !f.is_empty()
            && f != "."
            && f != ".."
            && !f.contains('/')
            && !f.contains('\\')
            && !f.contains('\0');
        if !plain {
            return Err(Error::config(format!(
                "settings of plugin '{NAME}': file = {f:?} must be a plain file name inside the \
                 home (no directory part), e.g. \"{DEFAULT_FILE}\""
            )));
        }
        if self.busy_timeout_ms > i32::MAX as u64 {
            return Err(Error::config(format!(
                "settings of plugin '{NAME}': busy_timeout_ms = {} is too large (at most {})",
                self.busy_timeout_ms,
                i32::MAX
            )));
        }
        Ok(())
    }
}

/// The SQLite catalog. Cheap to share: wrap it in an `Arc` (the factory does).
///
/// Holds one write connection (behind a mutex: writes of one process are serialized, writes of
/// several processes are serialized by SQLite's lock with `busy_timeout`) and a small pool of
/// read connections.
pub struct SqliteCatalog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    busy_timeout_ms: u64,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteCatalog")
            .field("path", &self.inner.path)
            .field("busy_timeout_ms", &self.inner.busy_timeout_ms)
            .finish()
    }
}

impl SqliteCatalog {
    /// Open (creating if missing) the catalog file `settings.file` in `home`, switch it to WAL
    /// and run pending migrations in one transaction.
    ///
    /// A missing file is created with mode 0600 before SQLite opens it, so the database and its
    /// `-wal` and `-shm` files (SQLite gives them the database file's mode) are 0600 whatever
    /// the process umask; an existing file keeps its mode.
    ///
    /// Errors: [`Error::Config`] for bad settings; [`Error::Catalog`] when `home` is not an
    /// existing directory (the runtime creates the home, not the catalog), when the file cannot
    /// be opened or switched to WAL, or when its schema version is newer than
    /// [`SCHEMA_VERSION`] ("upgrade boxlite"); [`Error::Corrupt`] when the file is not a
    /// database.
    pub fn open(home: &Path, settings: &SqliteSettings) -> Result<SqliteCatalog> {
        settings.validate()?;
        match std::fs::metadata(home) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::catalog(
                    NAME,
                    format!(
                        "BoxLite home {} is not a directory: point BOXLITE_HOME at a directory",
                        home.display()
                    ),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::catalog(
                    NAME,
                    format!(
                        "BoxLite home {} does not exist: the runtime creates it; create the \
                         directory or fix BOXLITE_HOME",
                        home.display()
                    ),
                ))
            }
            Err(e) => return Err(Error::io(home, e)),
        }
        let path = home.join(&settings.file);
        create_private_file(&path);
        let mut writer = open_connection(&path, settings.busy_timeout_ms, true)?;
        migrate(&mut writer, &path, settings.busy_timeout_ms)?;
        Ok(SqliteCatalog {
            inner: Arc::new(Inner {
                path,
                busy_timeout_ms: settings.busy_timeout_ms,
                writer: Mutex::new(writer),
                readers: Mutex::new(Vec::new()),
            }),
        })
    }

    /// [`SqliteCatalog::open`] with default settings (`<home>/boxlite.db`, 10 s busy timeout).
    ///
    /// Errors: as [`SqliteCatalog::open`].
    pub fn open_default(home: &Path) -> Result<SqliteCatalog> {
        SqliteCatalog::open(home, &SqliteSettings::default())
    }

    /// The registry factory: parse [`SqliteSettings`] from `config.settings` and open the
    /// catalog in `config.home`.
    ///
    /// Errors: [`Error::Config`] for unknown keys or bad values; otherwise as
    /// [`SqliteCatalog::open`].
    pub fn from_config(config: &PluginConfig) -> Result<Arc<dyn CatalogBackend>> {
        let settings: SqliteSettings = config.parse(NAME)?;
        Ok(Arc::new(SqliteCatalog::open(&config.home, &settings)?))
    }

    /// Absolute path of the database file.
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

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Path) -> Result<T> + Send + 'static,
    {
        self.blocking(move |inner| inner.with_reader(|c| f(c, &inner.path)))
            .await
    }
}

impl Inner {
    fn lock_writer(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction open: rusqlite rolls back
        // a `Transaction` on drop, so the connection is still usable.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let pooled = self.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(c) => c,
            None => open_connection(&self.path, self.busy_timeout_ms, false)?,
        };
        let out = f(&conn);
        let mut pool = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < MAX_IDLE_READERS {
            pool.push(conn);
        }
        out
    }

    fn apply(&self, ops: Vec<CatalogOp>) -> Result<()> {
        let mut conn = self.lock_writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| sql_error(&self.path, "starting a write transaction", e, self))?;
        for op in ops {
            apply_op(&tx, &self.path, self, op)?;
        }
        tx.commit()
            .map_err(|e| sql_error(&self.path, "committing a write transaction", e, self))
    }
}

/// Something that knows the busy timeout, for error messages.
trait BusyTimeout {
    fn busy_timeout_ms(&self) -> u64;
}

impl BusyTimeout for Inner {
    fn busy_timeout_ms(&self) -> u64 {
        self.busy_timeout_ms
    }
}

impl BusyTimeout for u64 {
    fn busy_timeout_ms(&self) -> u64 {
        *self
    }
}

/// Create the database file `path`, empty and with mode 0600, unless something exists there.
///
/// SQLite creates a missing database with mode 0644 under the usual umask, and gives the
/// `-wal`, `-shm` and rollback-journal files it creates later the mode of the database file;
/// an empty file is an empty database to SQLite. So putting an empty 0600 file in place first
/// makes all of them 0600 before any byte is written, without touching the process umask.
///
/// The file is made under a temporary name (`O_CREAT|O_EXCL`, mode 0600), closed, and then
/// hard-linked to `path`, which fails if anything is there already (O_EXCL semantics: a
/// concurrent opener's file is never replaced). Opening and closing a descriptor of `path`
/// itself would be racy in a subtle way: closing any descriptor of a file drops every POSIX
/// lock this process holds on it, including those of a SQLite connection that opened the new
/// file in between; the temporary file is not reachable at `path` until it is closed. Only on a
/// filesystem without hard links is `path` created with `O_CREAT|O_EXCL` directly. A crash
/// between the link and the removal of the temporary name leaves that empty 0600 file behind.
///
/// Failures are left to SQLite's own open, which reports them with its usual message.
fn create_private_file(path: &Path) {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::symlink_metadata(path).is_ok() {
        return;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let create = |p: &Path| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
            .map(drop)
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".new-{}-{nanos}", std::process::id()));
    let tmp = dir.join(tmp_name);
    if create(&tmp).is_err() {
        return;
    }
    if let Err(e) = std::fs::hard_link(&tmp, path) {
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = create(path);
        }
    }
    let _ = std::fs::remove_file(&tmp);
}

fn open_connection(path: &Path, busy_timeout_ms: u64, writer: bool) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| sql_error(path, "opening the catalog", e, &busy_timeout_ms))?;
    let ctx = |e| {
        sql_error(
            path,
            "configuring the catalog connection",
            e,
            &busy_timeout_ms,
        )
    };
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))
        .map_err(ctx)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(ctx)?;
    if writer {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(ctx)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(Error::catalog(
                NAME,
                format!(
                    "could not switch {} to WAL mode (it is in '{mode}' mode): the filesystem \
                     may not support shared memory (e.g. a network filesystem); put the BoxLite \
                     home on a local filesystem",
                    path.display()
                ),
            ));
        }
        // FULL: a committed transaction survives power loss too (see docs/catalog.md).
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(ctx)?;
    } else {
        conn.pragma_update(None, "query_only", true).map_err(ctx)?;
    }
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path, busy_timeout_ms: u64) -> Result<()> {
    let ctx = |e| sql_error(path, "migrating the catalog schema", e, &busy_timeout_ms);
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(ctx)?;
    tx.execute_batch(schema::VERSION_TABLE).map_err(ctx)?;
    let current = read_version(&tx, path)?;
    if current > SCHEMA_VERSION {
        return Err(Error::catalog(
            NAME,
            format!(
                "{} has catalog schema version {current}, newer than version {SCHEMA_VERSION} \
                 known to this build: it was written by a newer BoxLite; upgrade boxlite to \
                 open this home",
                path.display()
            ),
        ));
    }
    for m in schema::MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(|e| {
            sql_error(
                path,
                &format!("migrating the catalog schema to version {}", m.version),
                e,
                &busy_timeout_ms,
            )
        })?;
        tx.execute(
            "INSERT INTO schema_version (id, version) VALUES (1, ?1) \
             ON CONFLICT (id) DO UPDATE SET version = excluded.version",
            [m.version],
        )
        .map_err(ctx)?;
        tracing::info!(path = %path.display(), version = m.version, "catalog schema migrated");
    }
    tx.commit().map_err(ctx)
}

fn read_version(conn: &Connection, path: &Path) -> Result<u32> {
    let v: Option<i64> = conn
        .query_row("SELECT version FROM schema_version WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(|e| {
            if matches!(e, rusqlite::Error::InvalidColumnType(..)) {
                Error::corrupt(path, "schema_version.version is not an integer")
            } else {
                sql_error(path, "reading the schema version", e, &0u64)
            }
        })?;
    match v {
        None => Ok(0),
        Some(v) => u32::try_from(v)
            .map_err(|_| Error::corrupt(path, format!("schema_version.version is {v}"))),
    }
}

/// Map a rusqlite error to the BoxLite error type, naming the file and what to do.
fn sql_error(path: &Path, what: &str, e: rusqlite::Error, t: &dyn BusyTimeout) -> Error {
    let code = match &e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    };
    let p = path.display();
    let detail = match code {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => format!(
            "{what} on {p}: another connection or process kept the catalog locked for longer \
             than busy_timeout_ms = {}; retry, find the process holding {p} (`fuser {p}`), or \
             raise [plugin.sqlite] busy_timeout_ms",
            t.busy_timeout_ms()
        ),
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => {
            return Error::corrupt(path, format!("{what}: {e}"));
        }
        Some(ErrorCode::DiskFull) => return Error::NoSpace { path: path.into() },
        Some(ErrorCode::ReadOnly)
        | Some(ErrorCode::CannotOpen)
        | Some(ErrorCode::PermissionDenied) => format!(
            "{what} on {p}: {e}; check that the home and {p} (and its -wal/-shm files) exist \
             and are writable by this user"
        ),
        Some(ErrorCode::SystemIoFailure) => {
            format!("{what} on {p}: I/O error ({e}); check the disk and `dmesg`")
        }
        _ => format!("{what} on {p}: {e}; run `boxlite doctor` if this persists"),
    };
    Error::Catalog {
        backend: NAME.to_owned(),
        detail,
        source: Some(Box::new(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding and decoding of columns
// ---------------------------------------------------------------------------------------------

fn time_text(t: &DateTime<Utc>, what: &str) -> Result<String> {
    // Fixed-width RFC 3339 with nanoseconds sorts lexicographically like time, for years
    // 0000..=9999 only.
    if !(0..=9999).contains(&t.year()) {
        return Err(Error::catalog(
            NAME,
            format!("{what} {t} is outside the years 0000 to 9999 the catalog can store"),
        ));
    }
    Ok(t.to_rfc3339_opts(SecondsFormat::Nanos, true))
}

fn path_text<'a>(p: &'a Path, what: &str) -> Result<&'a str> {
    p.to_str().ok_or_else(|| Error::Unsupported {
        what: format!("{what} path that is not valid UTF-8"),
        path: Some(p.to_owned()),
        hint: "the catalog stores paths as UTF-8 text; use a UTF-8 home directory and file names"
            .to_owned(),
    })
}

fn bytes_int(v: u64, what: &str) -> Result<i64> {
    i64::try_from(v).map_err(|_| {
        Error::catalog(
            NAME,
            format!("{what} = {v} bytes is larger than the catalog can store (2^63 - 1)"),
        )
    })
}

/// Reads the columns of one row of `table`, turning anything unexpected into
/// [`Error::Corrupt`] on the database file.
struct Cols<'r, 'p> {
    row: &'r Row<'r>,
    path: &'p Path,
    table: &'static str,
}

impl Cols<'_, '_> {
    fn corrupt(&self, col: &str, detail: impl std::fmt::Display) -> Error {
        Error::corrupt(self.path, format!("{}.{col}: {detail}", self.table))
    }

    fn value(&self, idx: usize, col: &str) -> Result<ValueRef<'_>> {
        self.row.get_ref(idx).map_err(|e| self.corrupt(col, e))
    }

    fn opt_text(&self, idx: usize, col: &str) -> Result<Option<String>> {
        match self.value(idx, col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Text(b) => String::from_utf8(b.to_vec())
                .map(Some)
                .map_err(|_| self.corrupt(col, "text is not valid UTF-8")),
            other => Err(self.corrupt(col, format!("expected text, found {}", other.data_type()))),
        }
    }

    fn text(&self, idx: usize, col: &str) -> Result<String> {
        self.opt_text(idx, col)?
            .ok_or_else(|| self.corrupt(col, "unexpected NULL"))
    }

    fn opt_int(&self, idx: usize, col: &str) -> Result<Option<i64>> {
        match self.value(idx, col)? {
            ValueRef::Null => Ok(None),
            ValueRef::Integer(i) => Ok(Some(i)),
            other => Err(self.corrupt(
                col,
                format!("expected an integer, found {}", other.data_type()),
            )),
        }
    }

    fn u64(&self, idx: usize, col: &str) -> Result<u64> {
        let v = self
            .opt_int(idx, col)?
            .ok_or_else(|| self.corrupt(col, "unexpected NULL"))?;
        u64::try_from(v).map_err(|_| self.corrupt(col, format!("negative value {v}")))
    }

    fn id(&self, idx: usize, col: &str) -> Result<BoxId> {
        let s = self.text(idx, col)?;
        self.parse_id(&s, col)
    }

    fn parse_id(&self, s: &str, col: &str) -> Result<BoxId> {
        match BoxId::parse(s) {
            Some(id) if id.as_str() == s => Ok(id),
            _ => Err(self.corrupt(col, format!("{s:?} is not a box id (ULID)"))),
        }
    }

    fn status(&self, s: &str, col: &str) -> Result<BoxStatus> {
        BoxStatus::parse(s).ok_or_else(|| self.corrupt(col, format!("unknown status {s:?}")))
    }

    fn time(&self, idx: usize, col: &str) -> Result<DateTime<Utc>> {
        let s = self.text(idx, col)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| self.corrupt(col, format!("{s:?} is not an RFC 3339 time: {e}")))
    }
}

const BOX_COLUMNS: &str = "c.id, c.name, c.created_at, c.image, c.storage, \
                           s.status, s.guest_rootfs, s.container \
                           FROM box_config c LEFT JOIN box_state s ON s.id = c.id";

fn box_from_row(row: &Row<'_>, path: &Path) -> Result<BoxRecord> {
    let c = Cols {
        row,
        path,
        table: "box_config",
    };
    let id = c.id(0, "id")?;
    let name = c.opt_text(1, "name")?;
    let created_at = c.time(2, "created_at")?;
    let image = c.text(3, "image")?;
    let storage = c.text(4, "storage")?;
    let s = Cols {
        row,
        path,
        table: "box_state",
    };
    let Some(status) = s.opt_text(5, "status")? else {
        return Err(Error::corrupt(
            path,
            format!("box {id} has no box_state row"),
        ));
    };
    let status = s.status(&status, "status")?;
    let disks = DiskSet {
        guest_rootfs: s.text(6, "guest_rootfs")?.into(),
        container: s.text(7, "container")?.into(),
    };
    Ok(BoxRecord {
        id,
        name,
        status,
        created_at,
        image,
        storage,
        disks,
    })
}

const SNAPSHOT_COLUMNS: &str = "box_id, name, created_at, guest_rootfs, container, \
                                guest_disk_bytes, container_disk_bytes FROM box_snapshot";

fn snapshot_from_row(row: &Row<'_>, path: &Path) -> Result<SnapshotRecord> {
    let c = Cols {
        row,
        path,
        table: "box_snapshot",
    };
    Ok(SnapshotRecord {
        box_id: c.id(0, "box_id")?,
        name: c.text(1, "name")?,
        created_at: c.time(2, "created_at")?,
        disks: DiskSet {
            guest_rootfs: c.text(3, "guest_rootfs")?.into(),
            container: c.text(4, "container")?.into(),
        },
        guest_disk_bytes: c.u64(5, "guest_disk_bytes")?,
        container_disk_bytes: c.u64(6, "container_disk_bytes")?,
    })
}

const JOURNAL_COLUMNS: &str =
    "id, operation, box_id, prior_status, owner_pid, started_at, staged FROM journal";

fn journal_from_row(row: &Row<'_>, path: &Path) -> Result<JournalEntry> {
    let c = Cols {
        row,
        path,
        table: "journal",
    };
    let box_id = match c.opt_text(2, "box_id")? {
        None => None,
        Some(s) => Some(c.parse_id(&s, "box_id")?),
    };
    let prior_status = match c.opt_text(3, "prior_status")? {
        None => None,
        Some(s) => Some(c.status(&s, "prior_status")?),
    };
    let pid = c
        .opt_int(4, "owner_pid")?
        .ok_or_else(|| c.corrupt("owner_pid", "unexpected NULL"))?;
    let owner_pid =
        u32::try_from(pid).map_err(|_| c.corrupt("owner_pid", format!("{pid} is not a pid")))?;
    let staged_json = c.text(6, "staged")?;
    let staged: Vec<String> = serde_json::from_str(&staged_json).map_err(|e| {
        c.corrupt(
            "staged",
            format!("not a JSON array of strings ({e}): {staged_json:?}"),
        )
    })?;
    Ok(JournalEntry {
        id: c.text(0, "id")?,
        operation: c.text(1, "operation")?,
        box_id,
        prior_status,
        owner_pid,
        started_at: c.time(5, "started_at")?,
        staged: staged.into_iter().map(PathBuf::from).collect(),
    })
}

/// Run a query and decode every row with `decode`.
fn query_all<T>(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>, &Path) -> Result<T>,
) -> Result<Vec<T>> {
    let ctx = |e| sql_error(path, "reading the catalog", e, &0u64);
    let mut stmt = conn.prepare_cached(sql).map_err(ctx)?;
    let mut rows = stmt.query(params).map_err(ctx)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(ctx)? {
        out.push(decode(row, path)?);
    }
    Ok(out)
}

fn query_one<T>(
    conn: &Connection,
    path: &Path,
    sql: &str,
    params: impl rusqlite::Params,
    decode: impl Fn(&Row<'_>, &Path) -> Result<T>,
) -> Result<Option<T>> {
    Ok(query_all(conn, path, sql, params, decode)?
        .into_iter()
        .next())
}

// ---------------------------------------------------------------------------------------------
// Writes
// ---------------------------------------------------------------------------------------------

/// The box's name for messages: its name, or its id when it has none. `None` if no such box.
fn box_label(tx: &Connection, path: &Path, id: &BoxId, t: &Inner) -> Result<Option<String>> {
    let row: Option<Option<String>> = tx
        .prepare_cached("SELECT name FROM box_config WHERE id = ?1")
        .and_then(|mut s| s.query_row([id.as_str()], |r| r.get(0)).optional())
        .map_err(|e| sql_error(path, "looking up a box", e, t))?;
    Ok(row.map(|name| name.unwrap_or_else(|| id.to_string())))
}

fn apply_op(tx: &Connection, path: &Path, t: &Inner, op: CatalogOp) -> Result<()> {
    let ctx = |what: &'static str| move |e| sql_error(path, what, e, t);
    match op {
        CatalogOp::InsertBox(b) => {
            let created_at = time_text(&b.created_at, "box created_at")?;
            let guest = path_text(&b.disks.guest_rootfs, "guest-rootfs disk")?;
            let container = path_text(&b.disks.container, "container disk")?;
            if box_label(tx, path, &b.id, t)?.is_some() {
                return Err(Error::AlreadyExists {
                    kind: ObjectKind::Box,
                    name: b.id.to_string(),
                    box_name: None,
                });
            }
            if let Some(name) = &b.name {
                let taken: Option<i64> = tx
                    .prepare_cached("SELECT 1 FROM box_config WHERE name = ?1")
                    .and_then(|mut s| s.query_row([name], |r| r.get(0)).optional())
                    .map_err(ctx("looking up a box name"))?;
                if taken.is_some() {
                    return Err(Error::AlreadyExists {
                        kind: ObjectKind::Box,
                        name: name.clone(),
                        box_name: None,
                    });
                }
            }
            tx.prepare_cached(
                "INSERT INTO box_config (id, seq, name, created_at, image, storage) VALUES \
                 (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM box_config), ?2, ?3, ?4, ?5)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    b.id.as_str(),
                    b.name,
                    created_at,
                    b.image,
                    b.storage
                ])
            })
            .map_err(ctx("inserting a box"))?;
            tx.prepare_cached(
                "INSERT INTO box_state (id, status, guest_rootfs, container) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .and_then(|mut s| {
                s.execute(params![b.id.as_str(), b.status.as_str(), guest, container])
            })
            .map_err(ctx("inserting a box"))?;
        }
        CatalogOp::SetBoxDisks { box_id, disks } => {
            let guest = path_text(&disks.guest_rootfs, "guest-rootfs disk")?;
            let container = path_text(&disks.container, "container disk")?;
            let n = tx
                .prepare_cached(
                    "UPDATE box_state SET guest_rootfs = ?2, container = ?3 WHERE id = ?1",
                )
                .and_then(|mut s| s.execute(params![box_id.as_str(), guest, container]))
                .map_err(ctx("updating a box's disks"))?;
            if n == 0 {
                return Err(Error::box_not_found(box_id.to_string()));
            }
        }
        CatalogOp::SetBoxStatus {
            box_id,
            expected,
            new,
        } => {
            let n = tx
                .prepare_cached("UPDATE box_state SET status = ?3 WHERE id = ?1 AND status = ?2")
                .and_then(|mut s| {
                    s.execute(params![box_id.as_str(), expected.as_str(), new.as_str()])
                })
                .map_err(ctx("updating a box's status"))?;
            if n == 0 {
                let row: Option<(Option<String>, Option<String>)> = tx
                    .prepare_cached(
                        "SELECT c.name, s.status FROM box_config c \
                         LEFT JOIN box_state s ON s.id = c.id WHERE c.id = ?1",
                    )
                    .and_then(|mut s| {
                        s.query_row([box_id.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))
                            .optional()
                    })
                    .map_err(ctx("reading a box's status"))?;
                let Some((name, status)) = row else {
                    return Err(Error::box_not_found(box_id.to_string()));
                };
                let status = status.ok_or_else(|| {
                    Error::corrupt(path, format!("box {box_id} has no box_state row"))
                })?;
                let actual = BoxStatus::parse(&status).ok_or_else(|| {
                    Error::corrupt(
                        path,
                        format!("box_state.status: unknown status {status:?} for box {box_id}"),
                    )
                })?;
                return Err(Error::Busy {
                    box_name: name.unwrap_or_else(|| box_id.to_string()),
                    status: actual,
                });
            }
        }
        CatalogOp::RemoveBox { box_id } => {
            let n = tx
                .prepare_cached("DELETE FROM box_config WHERE id = ?1")
                .and_then(|mut s| s.execute([box_id.as_str()]))
                .map_err(ctx("removing a box"))?;
            if n == 0 {
                return Err(Error::box_not_found(box_id.to_string()));
            }
        }
        CatalogOp::InsertSnapshot(s) => {
            let created_at = time_text(&s.created_at, "snapshot created_at")?;
            let guest = path_text(&s.disks.guest_rootfs, "guest-rootfs disk")?;
            let container = path_text(&s.disks.container, "container disk")?;
            let guest_bytes = bytes_int(s.guest_disk_bytes, "guest_disk_bytes")?;
            let container_bytes = bytes_int(s.container_disk_bytes, "container_disk_bytes")?;
            let Some(label) = box_label(tx, path, &s.box_id, t)? else {
                return Err(Error::box_not_found(s.box_id.to_string()));
            };
            let n = tx
                .prepare_cached(
                    "INSERT INTO box_snapshot (box_id, name, created_at, guest_rootfs, \
                     container, guest_disk_bytes, container_disk_bytes) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (box_id, name) DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        s.box_id.as_str(),
                        s.name,
                        created_at,
                        guest,
                        container,
                        guest_bytes,
                        container_bytes
                    ])
                })
                .map_err(ctx("inserting a snapshot"))?;
            if n == 0 {
                return Err(Error::AlreadyExists {
                    kind: ObjectKind::Snapshot,
                    name: s.name,
                    box_name: Some(label),
                });
            }
        }
        CatalogOp::RemoveSnapshot { box_id, name } => {
            let Some(label) = box_label(tx, path, &box_id, t)? else {
                return Err(Error::box_not_found(box_id.to_string()));
            };
            let n = tx
                .prepare_cached("DELETE FROM box_snapshot WHERE box_id = ?1 AND name = ?2")
                .and_then(|mut s| s.execute(params![box_id.as_str(), name]))
                .map_err(ctx("removing a snapshot"))?;
            if n == 0 {
                return Err(Error::snapshot_not_found(label, name));
            }
        }
        CatalogOp::InsertJournal(j) => {
            let started_at = time_text(&j.started_at, "journal started_at")?;
            let staged = j
                .staged
                .iter()
                .map(|p| path_text(p, "staged").map(str::to_owned))
                .collect::<Result<Vec<_>>>()?;
            let staged = serde_json::to_string(&staged)
                .map_err(|e| Error::catalog(NAME, format!("encoding journal staged paths: {e}")))?;
            let n = tx
                .prepare_cached(
                    "INSERT INTO journal (id, operation, box_id, prior_status, owner_pid, \
                     started_at, staged) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        j.id,
                        j.operation,
                        j.box_id.as_ref().map(BoxId::as_str),
                        j.prior_status.map(BoxStatus::as_str),
                        j.owner_pid,
                        started_at,
                        staged
                    ])
                })
                .map_err(ctx("inserting a journal entry"))?;
            if n == 0 {
                // ObjectKind has no journal variant (see the crate docs); the id names it.
                return Err(Error::AlreadyExists {
                    kind: ObjectKind::Box,
                    name: format!("journal entry {}", j.id),
                    box_name: None,
                });
            }
        }
        CatalogOp::RemoveJournal { id } => {
            tx.prepare_cached("DELETE FROM journal WHERE id = ?1")
                .and_then(|mut s| s.execute([id]))
                .map_err(ctx("removing a journal entry"))?;
        }
    }
    Ok(())
}

#[async_trait]
impl CatalogBackend for SqliteCatalog {
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
        self.read(move |c, path| {
            query_one(
                c,
                path,
                &format!("SELECT {BOX_COLUMNS} WHERE c.id = ?1"),
                [id.as_str()],
                box_from_row,
            )
        })
        .await
    }

    async fn find_box(&self, name: &str) -> Result<Option<BoxRecord>> {
        let name = name.to_owned();
        self.read(move |c, path| {
            query_one(
                c,
                path,
                &format!("SELECT {BOX_COLUMNS} WHERE c.name = ?1"),
                [name],
                box_from_row,
            )
        })
        .await
    }

    async fn list_boxes(&self) -> Result<Vec<BoxRecord>> {
        self.read(|c, path| {
            query_all(
                c,
                path,
                &format!("SELECT {BOX_COLUMNS} ORDER BY c.created_at, c.seq"),
                [],
                box_from_row,
            )
        })
        .await
    }

    async fn get_snapshot(&self, box_id: &BoxId, name: &str) -> Result<Option<SnapshotRecord>> {
        let (box_id, name) = (box_id.clone(), name.to_owned());
        self.read(move |c, path| {
            query_one(
                c,
                path,
                &format!("SELECT {SNAPSHOT_COLUMNS} WHERE box_id = ?1 AND name = ?2"),
                params![box_id.as_str(), name],
                snapshot_from_row,
            )
        })
        .await
    }

    async fn list_snapshots(&self, box_id: &BoxId) -> Result<Vec<SnapshotRecord>> {
        let box_id = box_id.clone();
        self.read(move |c, path| {
            query_all(
                c,
                path,
                &format!("SELECT {SNAPSHOT_COLUMNS} WHERE box_id = ?1 ORDER BY created_at, seq"),
                [box_id.as_str()],
                snapshot_from_row,
            )
        })
        .await
    }

    async fn list_all_snapshots(&self) -> Result<Vec<SnapshotRecord>> {
        self.read(|c, path| {
            query_all(
                c,
                path,
                &format!("SELECT {SNAPSHOT_COLUMNS} ORDER BY seq"),
                [],
                snapshot_from_row,
            )
        })
        .await
    }

    async fn list_journal(&self) -> Result<Vec<JournalEntry>> {
        self.read(|c, path| {
            query_all(
                c,
                path,
                &format!("SELECT {JOURNAL_COLUMNS} ORDER BY started_at, seq"),
                [],
                journal_from_row,
            )
        })
        .await
    }
}
