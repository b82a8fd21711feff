//! # boxlite
//!
//! The BoxLite runtime crate: configuration (this scope), and — as later work lands —
//! `BoxliteRuntime`, `LiteBox` and `SnapshotHandle` with the eight operations, plus the
//! `boxlite` command-line tool (`src/bin/boxlite.rs`).

#![warn(missing_docs)]

pub mod config;

pub use boxlite_api as api;
pub use config::{Config, ConfigSources};
