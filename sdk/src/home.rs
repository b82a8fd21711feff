//! The on-disk layout of a BoxLite home and the files that guard it.
//!
//! ```text
//! <home>/                 0700
//!   home.toml             which storage backend and catalog this home was created with
//!   config.toml           optional user configuration (sdk/src/config.rs)
//!   boxlite.db            the catalog (sqlite; other catalogs choose their own file)
//!   storage/<backend>/    the storage backend's files (StorageContext::store)
//!   staging/              files being built; anything here without a live journal entry is
//!                         removed by recovery
//!   locks/gc.lock         shared by every operation that creates files, exclusive for GC
//!   locks/pid-<pid>.lock  held by each live process that has the home open
//! ```
//!
//! Every directory BoxLite creates in a home is 0700 and every file 0600, with the mode given
//! at creation (the process umask is not changed); see `docs/SECURITY.md`, "The home and file
//! modes". [`Home::check_permissions`] checks the home directory itself on every open.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use boxlite_api::{Error, Result, StorageContext};
use serde::{Deserialize, Serialize};

/// File recording the plugin choice a home was created with.
pub const HOME_RECORD: &str = "home.toml";
/// Version of the home layout written by this build.
pub const LAYOUT_VERSION: u32 = 1;

/// The contents of `home.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HomeRecord {
    /// Layout version ([`LAYOUT_VERSION`]).
    pub layout_version: u32,
    /// Storage backend name (never "auto": the resolved choice).
    pub storage: String,
    /// Catalog backend name.
    pub catalog: String,
}

/// Paths of one home.
#[derive(Debug, Clone)]
pub struct Home {
    /// The home directory (absolute).
    pub root: PathBuf,
}

impl Home {
    /// A handle on `root` (nothing is touched).
    pub fn new(root: PathBuf) -> Self {
        Home { root }
    }

    /// `<home>/staging`.
    pub fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    /// `<home>/locks`.
    pub fn locks(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// The storage context for backend `name`.
    pub fn storage_context(&self, name: &str) -> StorageContext {
        StorageContext {
            home: self.root.clone(),
            store: self.root.join("storage").join(name),
            staging: self.staging(),
        }
    }

    /// Create the home and its fixed subdirectories (mode 0700) if missing.
    ///
    /// Errors: [`Error::Io`] with the directory that could not be created.
    pub fn ensure_dirs(&self, storage: &str) -> Result<()> {
        let ctx = self.storage_context(storage);
        for dir in [&self.root, &self.staging(), &self.locks(), &ctx.store] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| Error::io(dir, e))?;
        }
        Ok(())
    }

    /// Read `home.toml`, or `None` for a new home.
    ///
    /// Errors: [`Error::Config`] for an unreadable or unknown-format record.
    pub fn read_record(&self) -> Result<Option<HomeRecord>> {
        let path = self.root.join(HOME_RECORD);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let rec: HomeRecord = toml::from_str(&text).map_err(|e| Error::Config {
            path: Some(path.clone()),
            detail: format!("unreadable home record: {}", e.to_string().trim_end()),
        })?;
        if rec.layout_version > LAYOUT_VERSION {
            return Err(Error::Config {
                path: Some(path),
                detail: format!(
                    "this home has layout version {} but this boxlite knows only up to {}; upgrade boxlite",
                    rec.layout_version, LAYOUT_VERSION
                ),
            });
        }
        Ok(Some(rec))
    }

    /// Write `home.toml` atomically (temp file, fsync, rename, fsync dir).
    pub fn write_record(&self, rec: &HomeRecord) -> Result<()> {
        let path = self.root.join(HOME_RECORD);
        let text = toml::to_string(rec)
            .map_err(|e| Error::config(format!("cannot encode home record: {e}")))?;
        write_atomic(&path, text.as_bytes())
    }

    /// Take this process's liveness lock (`locks/pid-<pid>.lock`), once per home per process.
    pub fn hold_process_lock(&self) -> Result<()> {
        static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
        let path = self
            .locks()
            .join(format!("pid-{}.lock", std::process::id()));
        let held = HELD.get_or_init(Default::default);
        let mut held = held.lock().unwrap_or_else(|p| p.into_inner());
        if held.contains_key(&path) {
            return Ok(());
        }
        // A sweeper (another process's `sweep_stale_locks`) may unlink the file between our
        // open and our lock: keep trying until the locked file is the one at `path`.
        loop {
            let f = open_lock_file(&path)?;
            f.lock().map_err(|e| Error::io(&path, e))?;
            if same_file(&f, &path)? {
                held.insert(path, f);
                return Ok(());
            }
        }
    }

    /// Remove the liveness lock files of processes that are gone (nobody holds their lock).
    /// Returns how many were removed.
    pub fn sweep_stale_locks(&self) -> Result<usize> {
        let dir = self.locks();
        let mine = format!("pid-{}.lock", std::process::id());
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with("pid-") || !name.ends_with(".lock") || name == mine {
                continue;
            }
            let path = entry.path();
            let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else {
                continue;
            };
            // Unlink only while holding the lock, and only the file we locked.
            if f.try_lock().is_ok() && same_file(&f, &path)? {
                if fs::remove_file(&path).is_ok() {
                    removed += 1;
                }
                let _ = f.unlock();
            }
        }
        Ok(removed)
    }

    /// Whether the process `pid` that wrote a journal entry still has this home open.
    ///
    /// For our own pid the answer is "alive" only for entries started after this process did
    /// (an entry with our pid from before that belongs to a dead process whose pid was reused).
    pub fn process_alive(&self, pid: u32, entry_started: chrono::DateTime<chrono::Utc>) -> bool {
        if pid == std::process::id() {
            return entry_started >= process_start();
        }
        let path = self.locks().join(format!("pid-{pid}.lock"));
        let Ok(f) = OpenOptions::new().read(true).write(true).open(&path) else {
            return false;
        };
        match f.try_lock() {
            // Nobody holds it: the owner is gone (sweep_stale_locks removes the file).
            Ok(()) => false,
            Err(_) => true,
        }
    }

    /// Take the GC lock shared (every operation that creates files holds it until it commits).
    pub fn gc_shared(&self) -> Result<GcGuard> {
        let path = self.locks().join("gc.lock");
        let f = open_lock_file(&path)?;
        f.lock_shared().map_err(|e| Error::io(&path, e))?;
        Ok(GcGuard { _file: f })
    }

    /// Try to take the GC lock exclusively; `None` while any operation is in flight.
    pub fn gc_exclusive(&self) -> Result<Option<GcGuard>> {
        let path = self.locks().join("gc.lock");
        let f = open_lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(Some(GcGuard { _file: f })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }

    /// Check that the home is a directory owned by us and not writable by others.
    ///
    /// Errors: [`Error::Config`] naming the home and the fix.
    pub fn check_permissions(&self) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let md = fs::symlink_metadata(&self.root).map_err(|e| Error::io(&self.root, e))?;
        let fix = |detail: String| Error::Config {
            path: Some(self.root.clone()),
            detail,
        };
        if !md.is_dir() {
            return Err(fix(
                "the home is not a directory; pass --home DIR with a directory".into(),
            ));
        }
        let me = nix::unistd::geteuid().as_raw();
        if md.uid() != me {
            return Err(fix(format!(
                "the home is owned by uid {} but boxlite runs as uid {me}; use your own home",
                md.uid()
            )));
        }
        if md.permissions().mode() & 0o022 != 0 {
            return Err(fix(format!(
                "the home is writable by other users (mode {:o}); run `chmod go-w {}`",
                md.permissions().mode() & 0o777,
                self.root.display()
            )));
        }
        Ok(())
    }
}

/// A held GC lock (shared or exclusive); released on drop.
#[derive(Debug)]
pub struct GcGuard {
    _file: File,
}

/// Whether the open file `f` is still the file at `path` (same device and inode).
fn same_file(f: &File, path: &Path) -> Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let a = f.metadata().map_err(|e| Error::io(path, e))?;
    match fs::metadata(path) {
        Ok(b) => Ok(a.dev() == b.dev() && a.ino() == b.ino()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

/// When this process first opened a home (an approximation of the process start time that is
/// always earlier than any journal entry this process writes).
pub fn process_start() -> chrono::DateTime<chrono::Utc> {
    static START: OnceLock<chrono::DateTime<chrono::Utc>> = OnceLock::new();
    *START.get_or_init(chrono::Utc::now)
}

/// Write `data` to `path` atomically: a temp file in the same directory, fsync, rename, fsync
/// of the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| Error::config(format!("{} has no parent directory", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        ulid::Ulid::new()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        f.write_all(data).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// fsync a directory so that renames and creations inside it are durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Shared handle type used by the runtime for the home.
pub type SharedHome = Arc<Home>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_pid_locks_are_swept_and_held_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().to_path_buf());
        home.ensure_dirs("qcow2").unwrap();
        let stale = home.locks().join("pid-4000000.lock");
        fs::write(&stale, b"").unwrap();
        let held_path = home.locks().join("pid-4000001.lock");
        let held = open_lock_file(&held_path).unwrap();
        held.lock().unwrap();
        home.hold_process_lock().unwrap();
        assert_eq!(home.sweep_stale_locks().unwrap(), 1);
        assert!(!stale.exists());
        assert!(held_path.exists(), "a lock held by a live process stays");
        let mine = home
            .locks()
            .join(format!("pid-{}.lock", std::process::id()));
        assert!(mine.exists());
        assert!(home.process_alive(4000001, chrono::Utc::now()));
        assert!(!home.process_alive(4000000, chrono::Utc::now()));
    }

    #[test]
    fn unsafe_home_permissions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        home.ensure_dirs("qcow2").unwrap();
        home.check_permissions().unwrap();
        fs::set_permissions(&home.root, fs::Permissions::from_mode(0o777)).unwrap();
        let err = home.check_permissions().unwrap_err().to_string();
        assert!(err.contains("chmod go-w"), "{err}");
    }
}
