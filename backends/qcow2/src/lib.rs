//! In-process qcow2 image layer and the external copy-on-write qcow2 backend.
//!
//! * [`image`]: the qcow2 format itself (safe open, chains, reads, writes, overlays,
//!   flatten, rebase, merge, check); see `docs/qcow2.md`.
//! * [`backend`]: the `qcow2` storage backend built on it, registered with the plugin
//!   registry under the name `qcow2`.
//! * [`private`]: owner-only file and directory creation (0600 / 0700), shared with the
//!   file-per-disk backends.

pub mod backend;
mod convert;
pub mod image;
pub mod private;

pub use backend::{raw_input_size, FlatChain, Qcow2Backend, Qcow2Settings};
