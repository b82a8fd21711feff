//! The one error type every BoxLite crate returns to callers.
//!
//! Each variant carries the box, snapshot or path it is about, and its message ends with what
//! the user can do about it. Implementations (storage backends, catalogs, codecs) map their own
//! failures onto these variants so that hosts can match on them whatever backend is selected.

use std::path::PathBuf;

use crate::status::BoxStatus;

/// Result alias used across the BoxLite API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of object a [`Error::NotFound`] / [`Error::AlreadyExists`] / [`Error::InvalidName`]
/// is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectKind {
    /// A box (micro-VM with its disk set).
    Box,
    /// A named snapshot of a box.
    Snapshot,
    /// A `.boxsnap` archive file.
    Archive,
    /// A plugin (storage backend, catalog or codec) in the registry.
    Plugin,
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ObjectKind::Box => "box",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Archive => "archive",
            ObjectKind::Plugin => "plugin",
        })
    }
}

/// Every failure the BoxLite API reports.
///
/// Variants are stable: hosts match on them. Messages are one line, name the object involved
/// and say what to do next. `source` chains keep the underlying cause for `-v` output.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The named box or snapshot does not exist.
    #[error("{kind} '{name}' not found{}: check the name with `boxlite ls` / `boxlite snapshot ls`", in_box(.box_name))]
    NotFound {
        /// What was looked up.
        kind: ObjectKind,
        /// The name (or id) that was looked up.
        name: String,
        /// For snapshots: the box that was searched.
        box_name: Option<String>,
    },

    /// An object with this name already exists.
    #[error("{kind} '{name}' already exists{}: pick another name or remove the existing one first", in_box(.box_name))]
    AlreadyExists {
        /// What was being created.
        kind: ObjectKind,
        /// The name that is taken.
        name: String,
        /// For snapshots: the box that holds the existing one.
        box_name: Option<String>,
    },

    /// A box or snapshot name breaks the naming rule (DESIGN.md section 6). Raised before any I/O.
    #[error("invalid {kind} name {name:?}: {reason}; names are 1 to 128 characters of A-Z a-z 0-9 . _ - and must not start with '.' or '-'")]
    InvalidName {
        /// What the name was for.
        kind: ObjectKind,
        /// The rejected name, exactly as given (Debug-escaped in the message).
        name: String,
        /// Which part of the rule it breaks.
        reason: &'static str,
    },

    /// The box is in the middle of another exclusive operation. Returned at once, never waited on.
    #[error(
        "box '{box_name}' is busy ({status}): wait for the running operation to finish and retry"
    )]
    Busy {
        /// The busy box.
        box_name: String,
        /// Its status at the time of the attempt.
        status: BoxStatus,
    },

    /// The operation is not allowed from the box's current status (see [`crate::status::allowed`]).
    #[error("cannot {operation} box '{box_name}' while it is {status}: {hint}")]
    InvalidState {
        /// The box.
        box_name: String,
        /// The operation that was refused, e.g. "restore a snapshot of".
        operation: String,
        /// The box's status.
        status: BoxStatus,
        /// What to do instead, e.g. "stop it first".
        hint: String,
    },

    /// The guest could not be quiesced (FIFREEZE through the guest agent) within the timeout
    /// and `stop_on_quiesce_fail` was false. Nothing was changed.
    #[error("could not quiesce box '{box_name}': {reason}; retry, or set stop_on_quiesce_fail to stop the box and capture it")]
    QuiesceFailed {
        /// The box.
        box_name: String,
        /// What the guest agent reported (or the timeout).
        reason: String,
    },

    /// The host's VMM controller ([`crate::BoxController`]) failed to pause, resume, stop,
    /// start or reopen the disks of a running box.
    #[error("VMM could not {action} box '{box_name}': {detail}; check the VM with your VMM's tools (the box's status is unchanged)")]
    Vmm {
        /// The box.
        box_name: String,
        /// What was asked: "pause", "resume", "stop", "start" or "reopen the disks of".
        action: String,
        /// What the VMM reported.
        detail: String,
    },

    /// On-disk data (a qcow2 image, an archive, a catalog row) is damaged or inconsistent.
    #[error("corrupt data in {}: {detail}; run `boxlite doctor` (or re-create the object from a good copy)", .path.display())]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong, e.g. "L2 table offset 0x1234 is not cluster aligned".
        detail: String,
    },

    /// A valid input uses a feature this build does not support (e.g. encrypted qcow2), or a
    /// backend cannot work in this environment (e.g. reflink on ext4).
    #[error("unsupported: {what}{}: {hint}", at_path(.path))]
    Unsupported {
        /// The unsupported feature or operation.
        what: String,
        /// The file or directory involved, if any.
        path: Option<PathBuf>,
        /// What to do instead.
        hint: String,
    },

    /// The filesystem ran out of space (ENOSPC / EDQUOT). Partial output has been removed.
    #[error("no space left on the filesystem holding {}: free space or choose another destination; partial output was removed", .path.display())]
    NoSpace {
        /// The file being written when space ran out.
        path: PathBuf,
    },

    /// Any other I/O failure, with the file involved.
    #[error("I/O error on {}: {source}", .path.display())]
    Io {
        /// The file or directory being accessed.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },

    /// The catalog (SQLite, redb, ...) failed or holds unexpected data.
    #[error("catalog error ({backend}): {detail}")]
    Catalog {
        /// The catalog backend name.
        backend: String,
        /// What failed and what to do, e.g. "database is held by process 123; close it".
        detail: String,
        /// The backend's own error, if any.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// A `.boxsnap` archive is malformed, truncated, unsafe or of an unsupported version.
    #[error("archive {}: {detail}", .path.display())]
    Archive {
        /// The archive file.
        path: PathBuf,
        /// The offending entry, if the problem is one entry.
        entry: Option<String>,
        /// What is wrong and what to do.
        detail: String,
    },

    /// Configuration is invalid: unknown key, unknown plugin name, bad value, or a home opened
    /// with a storage/catalog choice different from the one it was created with.
    #[error("configuration error{}: {detail}", at_path(.path))]
    Config {
        /// The config file involved, if any.
        path: Option<PathBuf>,
        /// What is wrong and how to fix it (e.g. the list of registered plugin names).
        detail: String,
    },
}

fn in_box(box_name: &Option<String>) -> String {
    match box_name {
        Some(b) => format!(" in box '{b}'"),
        None => String::new(),
    }
}

fn at_path(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" ({})", p.display()),
        None => String::new(),
    }
}

impl Error {
    /// Wrap an I/O error with the path involved, mapping ENOSPC/EDQUOT to [`Error::NoSpace`].
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if code == ENOSPC || code == EDQUOT => Error::NoSpace { path },
            _ if source.kind() == std::io::ErrorKind::StorageFull => Error::NoSpace { path },
            _ => Error::Io { path, source },
        }
    }

    /// Build a [`Error::Catalog`] without an underlying source error.
    pub fn catalog(backend: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Catalog {
            backend: backend.into(),
            detail: detail.into(),
            source: None,
        }
    }

    /// Build a [`Error::Config`] without a file.
    pub fn config(detail: impl Into<String>) -> Self {
        Error::Config {
            path: None,
            detail: detail.into(),
        }
    }

    /// Build a [`Error::Corrupt`].
    pub fn corrupt(path: impl Into<PathBuf>, detail: impl Into<String>) -> Self {
        Error::Corrupt {
            path: path.into(),
            detail: detail.into(),
        }
    }

    /// Build a [`Error::Archive`] about one entry (or the whole archive when `entry` is None).
    pub fn archive(
        path: impl Into<PathBuf>,
        entry: Option<&str>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Archive {
            path: path.into(),
            entry: entry.map(str::to_owned),
            detail: detail.into(),
        }
    }

    /// Build a [`Error::NotFound`] for a box.
    pub fn box_not_found(name: impl Into<String>) -> Self {
        Error::NotFound {
            kind: ObjectKind::Box,
            name: name.into(),
            box_name: None,
        }
    }

    /// Build a [`Error::NotFound`] for a snapshot of a box.
    pub fn snapshot_not_found(box_name: impl Into<String>, name: impl Into<String>) -> Self {
        Error::NotFound {
            kind: ObjectKind::Snapshot,
            name: name.into(),
            box_name: Some(box_name.into()),
        }
    }

    /// Build a [`Error::Vmm`] (for [`crate::BoxController`] implementations).
    pub fn vmm(
        box_name: impl Into<String>,
        action: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Error::Vmm {
            box_name: box_name.into(),
            action: action.into(),
            detail: detail.into(),
        }
    }

    /// True for [`Error::NoSpace`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, Error::NoSpace { .. })
    }
}

/// Linux errno for "No space left on device".
const ENOSPC: i32 = 28;
/// Linux errno for "Disk quota exceeded".
const EDQUOT: i32 = 122;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_maps_to_no_space() {
        let e = Error::io("/x/y", std::io::Error::from_raw_os_error(ENOSPC));
        assert!(e.is_no_space(), "{e}");
        let e = Error::io("/x/y", std::io::Error::from_raw_os_error(2));
        assert!(matches!(e, Error::Io { .. }));
        assert!(e.to_string().contains("/x/y"));
    }

    #[test]
    fn messages_name_the_object_and_the_remedy() {
        let e = Error::snapshot_not_found("web", "v1");
        let s = e.to_string();
        assert!(
            s.contains("'v1'") && s.contains("'web'") && s.contains("boxlite"),
            "{s}"
        );
        let e = Error::Busy {
            box_name: "web".into(),
            status: BoxStatus::Snapshotting,
        };
        assert!(e.to_string().contains("snapshotting"), "{e}");
    }
}
