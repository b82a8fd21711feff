//! # boxlite
//!
//! The BoxLite runtime: [`BoxliteRuntime`] opens a home (default `~/.boxlite`), runs crash
//! recovery and creates, lists, removes and imports boxes; [`LiteBox`] exports and clones a
//! box; [`SnapshotHandle`] creates, lists, gets, removes and restores its snapshots
//! (DESIGN.md sections 4-9). The `boxlite` CLI (`src/bin/boxlite.rs`) is built on it.
//!
//! The plugins linked into this crate register themselves: storage `qcow2`, `copy` and
//! `reflink`; catalogs `sqlite` and `redb`; codecs `zstd`, `lz4` and `none`.

#![warn(missing_docs)]

// Linked for their plugin registrations (inventory), even where no item is named.
extern crate boxlite_archive;
extern crate boxlite_backend_copy;
extern crate boxlite_backend_qcow2;
extern crate boxlite_backend_reflink;
extern crate boxlite_catalog_redb;
extern crate boxlite_catalog_sqlite;

pub mod config;
pub mod demo;
mod doctor;
pub mod home;
mod litebox;
mod live;
mod runtime;
mod transfer;

pub use boxlite_api as api;
/// The in-process qcow2 image layer (every backend's disks are qcow2 files): for hosts and
/// tests that read or write guest data the way a VMM does.
pub use boxlite_backend_qcow2::image as qcow2;
pub use config::{Config, ConfigSources};
pub use doctor::{DoctorReport, Problem, ProblemKind};
pub use litebox::{LiteBox, SnapshotHandle};
pub use runtime::{BoxOptions, BoxliteRuntime, RecoveryReport, RuntimeBuilder};
