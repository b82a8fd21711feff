//! Typed errors of the qcow2 image layer.
//!
//! Every variant names the file it is about (`path`) and its message says what
//! the user can do about it. Use [`ImageError::path`] to get the file and the
//! classifiers [`ImageError::is_unsupported`], [`ImageError::is_corrupt`],
//! [`ImageError::is_io`] and [`ImageError::is_policy`] to map errors onto the
//! API crate's error kinds.

use std::path::{Path, PathBuf};

/// Result alias used by every function of [`crate::image`].
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// An error of the qcow2 image layer. Each variant carries the path of the
/// file involved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// An operating-system I/O error while doing `op` on `path`.
    #[error("{path}: {op} failed: {source}; check that the file exists, is readable/writable and the filesystem has space")]
    Io {
        /// File involved.
        path: PathBuf,
        /// What was being done ("open", "read L2 table", ...).
        op: &'static str,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The first 4 bytes are not `QFI\xfb` (qcow2 spec, header bytes 0-3),
    /// or the file is shorter than a qcow2 header.
    #[error(
        "{path}: not a qcow2 image ({reason}); pass a qcow2 file (check with `qemu-img info`)"
    )]
    BadMagic {
        /// File involved.
        path: PathBuf,
        /// What was found instead.
        reason: String,
    },

    /// Header version is not 2 or 3 (qcow2 spec, header bytes 4-7).
    #[error("{path}: unsupported qcow2 version {version} (only 2 and 3 are supported); convert it with `qemu-img convert -O qcow2 -o compat=1.1`")]
    UnsupportedVersion {
        /// File involved.
        path: PathBuf,
        /// Version found.
        version: u32,
    },

    /// `cluster_bits` outside 9..=21 (qcow2 spec, header bytes 20-23).
    #[error("{path}: invalid cluster_bits {cluster_bits} (qcow2 allows 9..=21); the image is damaged or not produced by a qcow2 writer")]
    BadClusterBits {
        /// File involved.
        path: PathBuf,
        /// Value found.
        cluster_bits: u32,
    },

    /// `refcount_order` above 6 (qcow2 spec, header v3 bytes 96-99).
    #[error("{path}: invalid refcount_order {refcount_order} (qcow2 allows 0..=6); the image is damaged")]
    BadRefcountOrder {
        /// File involved.
        path: PathBuf,
        /// Value found.
        refcount_order: u32,
    },

    /// `header_length` is not valid (v3: >= 104, multiple of 8, within cluster 0;
    /// qcow2 spec, header v3 bytes 100-103), or the header extensions / backing
    /// file name do not fit in cluster 0.
    #[error("{path}: invalid header layout: {reason}; the image is damaged")]
    BadHeader {
        /// File involved.
        path: PathBuf,
        /// Which field is wrong and why.
        reason: String,
    },

    /// A table (L1, refcount table, snapshot table) declared by the header lies
    /// outside the file, is not cluster aligned or is larger than the limits.
    #[error("{path}: the {table} is invalid: {reason}; the image is truncated or damaged (try `qemu-img check`)")]
    BadTable {
        /// File involved.
        path: PathBuf,
        /// Which table ("L1 table", "refcount table", "snapshot table").
        table: &'static str,
        /// Why it is refused.
        reason: String,
    },

    /// The image is encrypted (`crypt_method` != 0, qcow2 spec header bytes
    /// 32-35, or a full-disk-encryption header extension is present).
    #[error("{path}: encrypted qcow2 images are not supported (crypt_method {method}); decrypt it with `qemu-img convert` first")]
    Encrypted {
        /// File involved.
        path: PathBuf,
        /// `crypt_method` value (1 = AES, 2 = LUKS).
        method: u32,
    },

    /// The image stores its data in an external data file (incompatible
    /// feature bit 2 or the external data file name header extension).
    #[error("{path}: qcow2 images with an external data file are not supported; convert it to a self-contained image with `qemu-img convert -O qcow2`")]
    ExternalDataFile {
        /// File involved.
        path: PathBuf,
    },

    /// The image uses extended L2 entries / subclusters (incompatible bit 4).
    #[error("{path}: qcow2 extended L2 entries (subclusters) are not supported; convert it with `qemu-img convert -O qcow2 -o extended_l2=off`")]
    ExtendedL2 {
        /// File involved.
        path: PathBuf,
    },

    /// Incompatible feature bits this implementation does not know are set.
    #[error("{path}: unknown qcow2 incompatible feature bits {bits:#x}; this image needs a newer qcow2 implementation, convert it with `qemu-img convert -O qcow2`")]
    UnknownIncompatibleFeatures {
        /// File involved.
        path: PathBuf,
        /// The unknown bits.
        bits: u64,
    },

    /// Compression type other than zlib (0) or zstd (1) (qcow2 spec, header
    /// v3 byte 104), or the compression-type bit and field disagree.
    #[error("{path}: unsupported compression type {compression_type}; convert it with `qemu-img convert -O qcow2 -o compression_type=zlib`")]
    UnsupportedCompression {
        /// File involved.
        path: PathBuf,
        /// Value found.
        compression_type: u8,
    },

    /// The corrupt bit (incompatible bit 1) is set.
    #[error("{path}: the image is marked corrupt; repair it with `qemu-img check -r all` or restore it from a backup")]
    CorruptBit {
        /// File involved.
        path: PathBuf,
    },

    /// The dirty bit (incompatible bit 0) is set and the image was opened for writing.
    #[error("{path}: the image is marked dirty (lazy refcounts not repaired); run `qemu-img check -r all` before writing to it")]
    Dirty {
        /// File involved.
        path: PathBuf,
    },

    /// Metadata found while reading or writing is inconsistent (L2 table out of
    /// the file, unaligned offset, undecompressable cluster, refcount underflow...).
    #[error("{path}: corrupt image: {reason}; run `qemu-img check` on it")]
    Corrupt {
        /// File involved.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A write was attempted on an image opened read-only.
    #[error("{path}: the image is open read-only; open it with `OpenOptions::writable(true)`")]
    ReadOnly {
        /// File involved.
        path: PathBuf,
    },

    /// The backing chain refers back to a file already in the chain.
    #[error("{path}: backing file {backing} makes a loop in the backing chain; fix the chain with `qemu-img rebase -u`")]
    BackingLoop {
        /// Image whose backing closes the loop.
        path: PathBuf,
        /// The backing file (canonical path).
        backing: PathBuf,
    },

    /// The chain has more backing files than allowed.
    #[error("{path}: backing chain deeper than {max} files; raise `OpenOptions::max_depth` or merge layers")]
    ChainTooDeep {
        /// Image at which the limit was hit.
        path: PathBuf,
        /// The limit.
        max: usize,
    },

    /// A backing file resolves outside the allowed root directory.
    #[error("{path}: backing file {backing} resolves outside the allowed directory {root}; this image is refused (it may point at host files)")]
    BackingOutsideRoot {
        /// Image that names the backing file.
        path: PathBuf,
        /// The backing file (canonical path).
        backing: PathBuf,
        /// The allowed root (canonical path).
        root: PathBuf,
    },

    /// The backing format named in the header is not raw or qcow2, or the
    /// backing name uses a protocol/`json:` syntax.
    #[error("{path}: unsupported backing file {what}; only plain raw or qcow2 backing files are supported, convert the chain with `qemu-img convert`")]
    UnsupportedBacking {
        /// Image that names the backing file.
        path: PathBuf,
        /// The offending format or name.
        what: String,
    },

    /// A feature the image uses is valid qcow2 but not supported by this
    /// operation (e.g. writing to an image with internal snapshots).
    #[error("{path}: {reason}")]
    Unsupported {
        /// File involved.
        path: PathBuf,
        /// What is unsupported and how to work around it.
        reason: String,
    },

    /// An argument is invalid (range beyond the virtual size, name too long...).
    #[error("{path}: invalid argument: {reason}")]
    InvalidArgument {
        /// File involved.
        path: PathBuf,
        /// What is wrong with the argument.
        reason: String,
    },
}

impl ImageError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ImageError::Io { path, .. }
            | ImageError::BadMagic { path, .. }
            | ImageError::UnsupportedVersion { path, .. }
            | ImageError::BadClusterBits { path, .. }
            | ImageError::BadRefcountOrder { path, .. }
            | ImageError::BadHeader { path, .. }
            | ImageError::BadTable { path, .. }
            | ImageError::Encrypted { path, .. }
            | ImageError::ExternalDataFile { path }
            | ImageError::ExtendedL2 { path }
            | ImageError::UnknownIncompatibleFeatures { path, .. }
            | ImageError::UnsupportedCompression { path, .. }
            | ImageError::CorruptBit { path }
            | ImageError::Dirty { path }
            | ImageError::Corrupt { path, .. }
            | ImageError::ReadOnly { path }
            | ImageError::BackingLoop { path, .. }
            | ImageError::ChainTooDeep { path, .. }
            | ImageError::BackingOutsideRoot { path, .. }
            | ImageError::UnsupportedBacking { path, .. }
            | ImageError::Unsupported { path, .. }
            | ImageError::InvalidArgument { path, .. } => path,
        }
    }

    /// True for valid qcow2 features this layer refuses (encryption, external
    /// data file, extended L2, unknown incompatible bits, other compression
    /// types, unsupported versions/backing formats, unsupported operations).
    pub fn is_unsupported(&self) -> bool {
        matches!(
            self,
            ImageError::UnsupportedVersion { .. }
                | ImageError::Encrypted { .. }
                | ImageError::ExternalDataFile { .. }
                | ImageError::ExtendedL2 { .. }
                | ImageError::UnknownIncompatibleFeatures { .. }
                | ImageError::UnsupportedCompression { .. }
                | ImageError::UnsupportedBacking { .. }
                | ImageError::Unsupported { .. }
        )
    }

    /// True when the file is not a valid qcow2 image or its metadata is
    /// inconsistent (including the corrupt and dirty bits).
    pub fn is_corrupt(&self) -> bool {
        matches!(
            self,
            ImageError::BadMagic { .. }
                | ImageError::BadClusterBits { .. }
                | ImageError::BadRefcountOrder { .. }
                | ImageError::BadHeader { .. }
                | ImageError::BadTable { .. }
                | ImageError::CorruptBit { .. }
                | ImageError::Dirty { .. }
                | ImageError::Corrupt { .. }
        )
    }

    /// True for operating-system I/O errors.
    pub fn is_io(&self) -> bool {
        matches!(self, ImageError::Io { .. })
    }

    /// True when a backing chain was refused by policy (loop, depth, outside
    /// the allowed root).
    pub fn is_policy(&self) -> bool {
        matches!(
            self,
            ImageError::BackingLoop { .. }
                | ImageError::ChainTooDeep { .. }
                | ImageError::BackingOutsideRoot { .. }
        )
    }

    /// The underlying `std::io::Error`, for [`ImageError::Io`].
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            ImageError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Shorthand to build an [`ImageError::Io`] mapper: `.map_err(io_err(path, "read"))`.
pub(crate) fn io_err<'a>(
    path: &'a Path,
    op: &'static str,
) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// Shorthand for [`ImageError::Corrupt`].
pub(crate) fn corrupt(path: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::Corrupt {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
