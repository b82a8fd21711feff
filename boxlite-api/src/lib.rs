//! # boxlite-api
//!
//! The bottom crate of the BoxLite snapshot storage framework: the traits every storage
//! backend ([`SnapshotBackend`]), catalog ([`CatalogBackend`]) and archive codec
//! ([`ArchiveCodec`]) implements, the types and options of the eight box operations, the error
//! type, name validation, the status rules, and the plugin [`registry`].
//!
//! This crate does no I/O of its own. The contract it documents is specified in the project's
//! `DESIGN.md` (sections 3 to 6) and checked by `boxlite-conformance`.

#![warn(missing_docs)]

pub mod catalog;
pub mod codec;
pub mod error;
pub mod failpoint;
pub mod live;
pub mod name;
pub mod options;
pub mod registry;
pub mod status;
pub mod storage;
pub mod types;

pub use async_trait::async_trait;
pub use inventory;

pub use catalog::{BoxRecord, CatalogBackend, CatalogOp, JournalEntry, SnapshotRecord};
pub use codec::{ArchiveCodec, DecodeLimits, Encoder};
pub use error::{Error, ObjectKind, Result};
pub use live::{BoxController, CaptureReport, LiveBox, Quiescer};
pub use name::{validate_box_name, validate_name, validate_snapshot_name, MAX_NAME_LEN};
pub use options::{CloneOptions, ExportOptions, SnapshotOptions};
pub use registry::{Factory, PluginConfig, PluginKind, Registration};
pub use status::{BoxStatus, Operation};
pub use storage::{
    Capabilities, Capture, CloneOutcome, CloneSource, DiskSource, FlatDisk, Release, Roots,
    SnapshotBackend, StorageContext, Usage,
};
pub use types::{
    ArchiveManifest, BoxId, BoxInfo, DiskRole, DiskSet, SnapshotInfo, ARCHIVE_FORMAT_VERSION,
};
