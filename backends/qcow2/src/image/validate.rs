//! Semantic validation of a parsed header against the file it came from,
//! done before any table is read. An attacker controls every byte of the
//! file, so every size is bounded by the file length and by fixed limits
//! before anything is allocated.
//!
//! Source: qcow2 spec, "Header" (field constraints) and "Host cluster
//! management" / "Cluster mapping" (table layouts); limits follow qemu's
//! implementation limits (32 MiB L1 table, 8 MiB refcount table).

use std::path::Path;

use super::error::{ImageError, Result};
use super::header::{
    Header, EXT_CRYPTO, EXT_DATA_FILE, INCOMPAT_COMPRESSION, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE,
    INCOMPAT_DIRTY, INCOMPAT_EXTL2, INCOMPAT_KNOWN,
};

/// Smallest cluster_bits allowed by the spec (512-byte clusters).
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster_bits accepted (2 MiB clusters, qemu's limit).
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest L1 table accepted, in bytes (qemu's limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (qemu's limit).
pub const MAX_REFTABLE_BYTES: u64 = 8 << 20;
/// Largest number of internal snapshots accepted (qemu's limit).
pub const MAX_SNAPSHOTS: u32 = 65536;

/// Check the fields that must be sane before cluster 0 can even be read:
/// `cluster_bits` (9..=21), `refcount_order` (0..=6).
///
/// Errors: [`ImageError::BadClusterBits`], [`ImageError::BadRefcountOrder`].
pub fn validate_geometry(path: &Path, h: &Header) -> Result<()> {
    if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&h.cluster_bits) {
        return Err(ImageError::BadClusterBits {
            path: path.to_path_buf(),
            cluster_bits: h.cluster_bits,
        });
    }
    if h.refcount_order > 6 {
        return Err(ImageError::BadRefcountOrder {
            path: path.to_path_buf(),
            refcount_order: h.refcount_order,
        });
    }
    if u64::from(h.header_length) > h.cluster_size() {
        return Err(ImageError::BadHeader {
            path: path.to_path_buf(),
            reason: format!(
                "header_length {} is larger than the cluster size {}",
                h.header_length,
                h.cluster_size()
            ),
        });
    }
    Ok(())
}

/// Check features: encryption, external data file, extended L2, unknown
/// incompatible bits, compression type, corrupt bit (always) and dirty bit
/// (when `writable`).
///
/// Errors: [`ImageError::Encrypted`], [`ImageError::ExternalDataFile`],
/// [`ImageError::ExtendedL2`], [`ImageError::UnknownIncompatibleFeatures`],
/// [`ImageError::UnsupportedCompression`], [`ImageError::CorruptBit`],
/// [`ImageError::Dirty`].
pub fn validate_features(path: &Path, h: &Header, writable: bool) -> Result<()> {
    let p = || path.to_path_buf();
    if h.crypt_method != 0 {
        return Err(ImageError::Encrypted {
            path: p(),
            method: h.crypt_method,
        });
    }
    if h.extension(EXT_CRYPTO).is_some() {
        return Err(ImageError::Encrypted {
            path: p(),
            method: 0,
        });
    }
    let inc = h.incompatible_features;
    let unknown = inc & !INCOMPAT_KNOWN;
    if unknown != 0 {
        return Err(ImageError::UnknownIncompatibleFeatures {
            path: p(),
            bits: unknown,
        });
    }
    if inc & INCOMPAT_CORRUPT != 0 {
        return Err(ImageError::CorruptBit { path: p() });
    }
    if inc & INCOMPAT_DATA_FILE != 0 || h.extension(EXT_DATA_FILE).is_some() {
        return Err(ImageError::ExternalDataFile { path: p() });
    }
    if inc & INCOMPAT_EXTL2 != 0 {
        return Err(ImageError::ExtendedL2 { path: p() });
    }
    // Compression type: bit 3 set <=> field present and non-zero.
    let bit = inc & INCOMPAT_COMPRESSION != 0;
    if bit != (h.compression_type != 0) || h.compression().is_none() {
        return Err(ImageError::UnsupportedCompression {
            path: p(),
            compression_type: h.compression_type,
        });
    }
    if writable && inc & INCOMPAT_DIRTY != 0 {
        return Err(ImageError::Dirty { path: p() });
    }
    Ok(())
}

/// Number of L1 entries needed to map `size` bytes with clusters of
/// `1 << cluster_bits` bytes and 8-byte L2 entries, or `None` on overflow.
pub fn l1_entries_needed(size: u64, cluster_bits: u32) -> Option<u64> {
    let per_l2_bits = cluster_bits.checked_add(cluster_bits.checked_sub(3)?)?;
    if per_l2_bits >= 64 {
        return Some(u64::from(size > 0));
    }
    let per_l1 = 1u64 << per_l2_bits;
    Some(size.div_ceil(per_l1))
}

fn check_table(
    path: &Path,
    table: &'static str,
    offset: u64,
    bytes: u64,
    max_bytes: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<()> {
    let bad = |reason: String| ImageError::BadTable {
        path: path.to_path_buf(),
        table,
        reason,
    };
    if bytes > max_bytes {
        return Err(bad(format!(
            "declared size {bytes} bytes exceeds the limit of {max_bytes} bytes"
        )));
    }
    if !offset.is_multiple_of(cluster_size) {
        return Err(bad(format!(
            "offset {offset:#x} is not aligned to the cluster size {cluster_size}"
        )));
    }
    if bytes > 0 {
        if offset == 0 {
            return Err(bad("offset 0 overlaps the header".to_string()));
        }
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| bad(format!("offset {offset:#x} + size {bytes} overflows")))?;
        if end > file_len {
            return Err(bad(format!(
                "bytes {offset:#x}..{end:#x} lie past the end of the file ({file_len} bytes)"
            )));
        }
    }
    Ok(())
}

/// Check the L1 table, refcount table and snapshot table positions and sizes
/// against the file length and the limits, and that the L1 table is large
/// enough for the virtual size.
///
/// Errors: [`ImageError::BadTable`], [`ImageError::BadHeader`] (virtual size
/// not representable).
pub fn validate_tables(path: &Path, h: &Header, file_len: u64) -> Result<()> {
    let cs = h.cluster_size();
    let needed =
        l1_entries_needed(h.size, h.cluster_bits).ok_or_else(|| ImageError::BadHeader {
            path: path.to_path_buf(),
            reason: format!("virtual size {} is not representable", h.size),
        })?;
    if u64::from(h.l1_size) < needed {
        return Err(ImageError::BadTable {
            path: path.to_path_buf(),
            table: "L1 table",
            reason: format!(
                "{} entries cannot map the virtual size {} (needs {needed})",
                h.l1_size, h.size
            ),
        });
    }
    check_table(
        path,
        "L1 table",
        h.l1_table_offset,
        u64::from(h.l1_size) * 8,
        MAX_L1_BYTES,
        cs,
        file_len,
    )?;
    check_table(
        path,
        "refcount table",
        h.refcount_table_offset,
        u64::from(h.refcount_table_clusters) * cs,
        MAX_REFTABLE_BYTES,
        cs,
        file_len,
    )?;
    if h.nb_snapshots > 0 {
        if h.nb_snapshots > MAX_SNAPSHOTS {
            return Err(ImageError::BadTable {
                path: path.to_path_buf(),
                table: "snapshot table",
                reason: format!("{} snapshots (limit {MAX_SNAPSHOTS})", h.nb_snapshots),
            });
        }
        // Each entry is at least 40 bytes.
        check_table(
            path,
            "snapshot table",
            h.snapshots_offset,
            u64::from(h.nb_snapshots) * 40,
            u64::from(MAX_SNAPSHOTS) * 40,
            cs,
            file_len,
        )?;
    }
    Ok(())
}
