//! L1 and L2 table entry encoding (qcow2 spec, "Cluster mapping": L1 table
//! entry, L2 table entry, Standard and Compressed Cluster Descriptors).

/// L1 entry bits 9-55: offset of the L2 table.
pub const L1E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bits 9-55: host cluster offset of a standard cluster.
pub const L2E_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// Refcount table entry bits 9-63: offset of a refcount block.
pub const REFT_OFFSET_MASK: u64 = 0xffff_ffff_ffff_fe00;
/// Bit 63 of L1/L2 entries: refcount is exactly one ("copied").
pub const OFLAG_COPIED: u64 = 1 << 63;
/// Bit 62 of L2 entries: compressed cluster.
pub const OFLAG_COMPRESSED: u64 = 1 << 62;
/// Bit 0 of L2 entries (v3): cluster reads as zeros.
pub const OFLAG_ZERO: u64 = 1;

/// What one guest cluster of one image maps to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Not allocated in this image: read from the backing file.
    Unallocated,
    /// Reads as zeros (v3 zero flag). `host` is a preallocated cluster or 0.
    Zero {
        /// Preallocated host offset in bytes, 0 if none.
        host: u64,
    },
    /// Standard data cluster at host byte offset `host` (cluster aligned).
    Data {
        /// Host offset in bytes.
        host: u64,
        /// Bit 63 of the entry (refcount known to be 1).
        copied: bool,
    },
    /// Compressed cluster: `len` bytes at host byte offset `host` (not aligned).
    Compressed {
        /// Host offset in bytes of the compressed data.
        host: u64,
        /// Bytes to read (up to the end of the last 512-byte sector used).
        len: u64,
    },
}

/// Decode an L2 entry for an image with `cluster_bits` and `version`.
/// Returns `Err(reason)` for entries that cannot be valid (unaligned host
/// offset), never panics.
pub fn decode_l2(entry: u64, cluster_bits: u32, version: u32) -> Result<ClusterState, String> {
    if entry & OFLAG_COMPRESSED != 0 {
        let x = 62 - (cluster_bits - 8);
        let host = entry & ((1u64 << x) - 1);
        let sectors_mask = (1u64 << (cluster_bits - 8)) - 1;
        let extra_sectors = (entry >> x) & sectors_mask;
        let len = (extra_sectors + 1) * 512 - (host & 511);
        return Ok(ClusterState::Compressed { host, len });
    }
    let host = entry & L2E_OFFSET_MASK;
    let cs_mask = (1u64 << cluster_bits) - 1;
    if version >= 3 && entry & OFLAG_ZERO != 0 {
        if host & cs_mask != 0 {
            return Err(format!(
                "zero cluster preallocation offset {host:#x} is unaligned"
            ));
        }
        return Ok(ClusterState::Zero { host });
    }
    if host == 0 {
        return Ok(ClusterState::Unallocated);
    }
    if host & cs_mask != 0 {
        return Err(format!(
            "data cluster offset {host:#x} is not cluster aligned"
        ));
    }
    Ok(ClusterState::Data {
        host,
        copied: entry & OFLAG_COPIED != 0,
    })
}

/// Host clusters (as `[first, last]` byte offsets rounded down to clusters)
/// touched by a compressed cluster at `host` of `len` bytes, as qemu counts
/// them for refcounts: the 512-byte sectors `host & !511 .. +nb_sectors*512`.
pub fn compressed_cluster_range(host: u64, len: u64, cluster_bits: u32) -> (u64, u64) {
    let start = host & !511;
    let nb_bytes = (len + (host & 511)).div_ceil(512) * 512;
    let end = start.saturating_add(nb_bytes).saturating_sub(1);
    let mask = !((1u64 << cluster_bits) - 1);
    (start & mask, end & mask)
}
