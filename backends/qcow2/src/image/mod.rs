//! In-process qcow2 image layer.
//!
//! Everything BoxLite needs from qcow2 without `qemu-img`: safe open
//! ([`Image::open`], [`Chain::open`]), guest reads through backing chains
//! ([`Chain::read_at`], [`Chain::map`]), writes ([`Chain::write_at`]),
//! overlay creation ([`create_overlay`]), streaming flatten to a standalone
//! sparse image ([`FlattenPlan`]), backing-file header rewrites
//! ([`rebase_unsafe`]), layer merges ([`stream`], [`commit`]) and
//! consistency checks ([`check`]).
//!
//! The on-disk format follows the qcow2 specification (qemu
//! `docs/interop/qcow2.rst`); each item cites the part it implements.
//! See `docs/qcow2.md` for what is supported and refused.

#![warn(missing_docs)]

mod chain;
mod check;
mod compress;
mod error;
mod flatten;
#[doc(hidden)]
pub mod fuzzing;
mod header;
#[allow(clippy::module_inception)]
mod image;
mod io;
mod merge;
mod overlay;
mod raw;
mod rebase;
mod refcount;
mod table;
mod validate;
mod write;

pub use chain::{
    resolve_backing, Chain, Extent, ExtentKind, Layer, OpenOptions, DEFAULT_MAX_DEPTH,
};
pub use check::{check, CheckReport};
pub use error::{ImageError, Result};
pub use flatten::{flatten_to_file, FlattenPlan, FLATTEN_CLUSTER_SIZE};
pub use header::{Compression, Header, HeaderExtension, QCOW2_MAGIC};
pub use image::{BackingFormat, Image, LocalKind};
pub use merge::{commit, stream};
pub use overlay::{create_image, create_overlay, create_overlay_staged, OVERLAY_CLUSTER_BITS};
pub use raw::RawFile;
pub use rebase::rebase_unsafe;
pub use table::ClusterState;
