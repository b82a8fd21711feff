//! # boxlite-archive
//!
//! The `.boxsnap` v1 archive format (DESIGN.md section 8; full specification in
//! `docs/archive-format.md`): a tar stream (POSIX ustar, with pax headers only for entries of
//! 8 GiB or more) holding `guest-rootfs.qcow2`, `disk.qcow2` and `manifest.json`, compressed
//! by one of the [`codec`]s (`zstd` by default, `lz4`, or `none`).
//!
//! - [`write_archive`] / [`export_to_path`]: stream two [`boxlite_api::FlatDisk`]s into an
//!   archive, hashing them on the way, manifest last; file output is staged and atomic.
//! - [`import_archive`]: detect the codec by magic bytes, extract safely into a private
//!   staging directory under limits, verify the manifest, sizes, checksums and (through a
//!   caller-supplied validator) the qcow2 headers; remove everything on failure.
//! - [`inspect`]: the same verification without keeping files.
//!
//! This crate does not depend on a qcow2 implementation: the runtime passes the qcow2
//! backend's safe open as the validator.

#![warn(missing_docs)]

pub mod codec;
#[doc(hidden)]
pub mod fuzzing;
pub mod manifest;
mod read;
mod tarfmt;
mod write;

pub use codec::{builtin_codecs, Lz4Codec, NoneCodec, ZstdCodec};
pub use manifest::{MANIFEST_NAME, MAX_MANIFEST_BYTES};
pub use read::{import_archive, inspect, ArchiveInfo, EntryInfo, ImportLimits, ImportedArchive};
pub use write::{
    export_to_path, export_to_path_tagged, partial_prefix, resolve_export_path, write_archive,
    ExportDisks, ExportMeta, ExportedArchive, ARCHIVE_EXTENSION,
};
