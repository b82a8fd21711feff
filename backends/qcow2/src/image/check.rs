//! Consistency check of refcounts against L1/L2 references, like
//! `qemu-img check` (read-only; nothing is repaired).
//!
//! Every metadata structure that references host clusters is walked: the
//! header cluster, the refcount table and blocks, the active L1 table and
//! its L2 tables and data clusters, the snapshot table and each snapshot's
//! L1/L2 tables (qcow2 spec, "Host cluster management", "Cluster mapping",
//! "Snapshots"). The computed reference count of each cluster is compared
//! with the stored refcount: stored < computed is a corruption (the cluster
//! could be reallocated while in use), stored > computed is a leak (wasted
//! space only). References outside the file, unaligned offsets and
//! inconsistent "copied" flags (bit 63) are corruptions too.

use std::fs::File;
use std::path::Path;

use super::error::{io_err, ImageError, Result};
use super::header::{Header, EXT_BITMAPS};
use super::image::read_header_for_check;
use super::io::{decode_table, get_be64, read_zero_fill};
use super::refcount::get_entry;
use super::table::{
    compressed_cluster_range, decode_l2, ClusterState, L1E_OFFSET_MASK, OFLAG_COPIED,
    REFT_OFFSET_MASK,
};
use super::validate::MAX_L1_BYTES;

/// Largest number of host clusters [`check`] handles (the in-memory
/// reference counts use 8 bytes per cluster).
const MAX_CHECK_CLUSTERS: u64 = 1 << 28;
/// Messages kept in a report.
const MAX_MESSAGES: usize = 100;

/// Result of [`check`]. Counts are numbers of host clusters unless noted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Clusters whose stored refcount is lower than their references, or
    /// references that are invalid (outside the file, unaligned), or wrong
    /// "copied" flags. Any corruption makes writes unsafe.
    pub corruptions: u64,
    /// Clusters whose stored refcount is higher than their references
    /// (leaked space; harmless).
    pub leaks: u64,
    /// Structures that could not be checked (e.g. persistent bitmaps).
    pub check_errors: u64,
    /// Guest clusters mapped to data (standard or compressed) by the active L1.
    pub allocated_clusters: u64,
    /// Of which compressed.
    pub compressed_clusters: u64,
    /// Guest clusters of the virtual size.
    pub total_clusters: u64,
    /// Byte offset just past the highest referenced host cluster.
    pub image_end_offset: u64,
    /// Human-readable descriptions of the first 100 problems.
    pub messages: Vec<String>,
}

impl CheckReport {
    /// No corruption, no leak, nothing left unchecked.
    pub fn is_clean(&self) -> bool {
        self.corruptions == 0 && self.leaks == 0 && self.check_errors == 0
    }

    fn note(&mut self, m: String) {
        if self.messages.len() < MAX_MESSAGES {
            self.messages.push(m);
        }
    }
}

struct Walker<'a> {
    path: &'a Path,
    file: &'a File,
    h: &'a Header,
    cs: u64,
    nclusters: u64,
    refs: Vec<u64>,
    r: CheckReport,
}

impl Walker<'_> {
    fn corrupt(&mut self, m: String) {
        self.r.corruptions += 1;
        self.r.note(format!("ERROR {m}"));
    }

    /// Count one reference to every cluster of `[off, off+len)`. Returns
    /// false when the range is invalid.
    fn reference(&mut self, off: u64, len: u64, what: &str) -> bool {
        if len == 0 {
            return true;
        }
        let Some(end) = off.checked_add(len) else {
            self.corrupt(format!("{what} at {off:#x}: offset overflows"));
            return false;
        };
        let first = off / self.cs;
        let last = (end - 1) / self.cs;
        if last >= self.nclusters {
            self.corrupt(format!("{what} at {off:#x} lies past the end of the file"));
            return false;
        }
        for c in first..=last {
            self.refs[c as usize] += 1;
        }
        true
    }

    fn read(&self, off: u64, len: u64) -> Result<Vec<u8>> {
        let mut b = vec![0u8; len as usize];
        read_zero_fill(self.file, self.path, &mut b, off)?;
        Ok(b)
    }

    /// Walk an L1 table; `active` counts allocations.
    fn walk_l1(&mut self, l1_off: u64, l1_size: u64, active: bool, what: &str) -> Result<()> {
        if l1_size * 8 > MAX_L1_BYTES {
            self.corrupt(format!(
                "{what}: L1 table of {l1_size} entries is too large"
            ));
            return Ok(());
        }
        if !l1_off.is_multiple_of(self.cs) {
            self.corrupt(format!("{what}: L1 table offset {l1_off:#x} unaligned"));
            return Ok(());
        }
        if !self.reference(l1_off, l1_size * 8, &format!("{what} L1 table")) {
            return Ok(());
        }
        let l1 = decode_table(&self.read(l1_off, l1_size * 8)?);
        for (i, e) in l1.iter().enumerate() {
            let l2_off = e & L1E_OFFSET_MASK;
            if l2_off == 0 {
                continue;
            }
            if !l2_off.is_multiple_of(self.cs) {
                self.corrupt(format!("{what} L1[{i}]: L2 offset {l2_off:#x} unaligned"));
                continue;
            }
            if !self.reference(l2_off, self.cs, &format!("{what} L2 table")) {
                continue;
            }
            let l2 = self.read(l2_off, self.cs)?;
            for j in 0..(self.cs / 8) as usize {
                let ent = get_be64(&l2, j);
                match decode_l2(ent, self.h.cluster_bits, self.h.version) {
                    Err(m) => self.corrupt(format!("{what} L2 at {l2_off:#x} entry {j}: {m}")),
                    Ok(ClusterState::Unallocated) | Ok(ClusterState::Zero { host: 0 }) => {}
                    Ok(ClusterState::Zero { host }) => {
                        self.reference(host, self.cs, "preallocated zero cluster");
                    }
                    Ok(ClusterState::Data { host, .. }) => {
                        if active {
                            self.r.allocated_clusters += 1;
                        }
                        self.reference(host, self.cs, "data cluster");
                    }
                    Ok(ClusterState::Compressed { host, len }) => {
                        if active {
                            self.r.allocated_clusters += 1;
                            self.r.compressed_clusters += 1;
                        }
                        let (a, b) = compressed_cluster_range(host, len, self.h.cluster_bits);
                        self.reference(a, b - a + self.cs, "compressed cluster");
                    }
                }
            }
        }
        Ok(())
    }

    fn walk_snapshots(&mut self) -> Result<()> {
        let mut off = self.h.snapshots_offset;
        let start = off;
        for s in 0..self.h.nb_snapshots {
            let e = self.read(off, 40)?;
            let l1_off = get_be64(&e, 0);
            let l1_size = u64::from(u32::from_be_bytes([e[8], e[9], e[10], e[11]]));
            let id_len = u64::from(u16::from_be_bytes([e[12], e[13]]));
            let name_len = u64::from(u16::from_be_bytes([e[14], e[15]]));
            let extra = u64::from(u32::from_be_bytes([e[36], e[37], e[38], e[39]]));
            let len = (40 + extra + id_len + name_len).div_ceil(8) * 8;
            off = match off.checked_add(len) {
                Some(o) => o,
                None => {
                    self.corrupt(format!("snapshot {s}: table offset overflows"));
                    return Ok(());
                }
            };
            if off > self.nclusters * self.cs {
                self.corrupt(format!("snapshot {s}: table runs past the end of the file"));
                return Ok(());
            }
            self.walk_l1(l1_off, l1_size, false, &format!("snapshot {s}"))?;
        }
        self.reference(start, off - start, "snapshot table");
        Ok(())
    }
}

/// Check the qcow2 image at `path` (read-only). The header must pass the
/// safe-open validation (the corrupt and dirty bits are allowed here).
///
/// Errors: header validation errors of [`super::Image::open`],
/// [`ImageError::Unsupported`] when the file has more than 2^28 clusters,
/// [`ImageError::Io`]. Inconsistencies are reported in the
/// [`CheckReport`], not as errors.
pub fn check(path: &Path) -> Result<CheckReport> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    let (h, file_len) = read_header_for_check(path, &file)?;
    let cs = h.cluster_size();
    let nclusters = file_len.div_ceil(cs);
    if nclusters > MAX_CHECK_CLUSTERS {
        return Err(ImageError::Unsupported {
            path: path.to_path_buf(),
            reason: format!("the file has {nclusters} clusters, too many to check in memory"),
        });
    }
    let mut w = Walker {
        path,
        file: &file,
        h: &h,
        cs,
        nclusters,
        refs: vec![0u64; nclusters as usize],
        r: CheckReport::default(),
    };
    w.r.total_clusters = h.size.div_ceil(cs);
    w.reference(0, cs, "header");
    let rt_bytes = u64::from(h.refcount_table_clusters) * cs;
    w.reference(h.refcount_table_offset, rt_bytes, "refcount table");
    let rt = decode_table(&w.read(h.refcount_table_offset, rt_bytes)?);
    for (i, e) in rt.iter().enumerate() {
        let b = e & REFT_OFFSET_MASK;
        if b == 0 {
            continue;
        }
        if !b.is_multiple_of(cs) {
            w.corrupt(format!(
                "refcount table entry {i}: block offset {b:#x} unaligned"
            ));
            continue;
        }
        w.reference(b, cs, "refcount block");
    }
    w.walk_l1(h.l1_table_offset, u64::from(h.l1_size), true, "active")?;
    if h.nb_snapshots > 0 {
        w.walk_snapshots()?;
    }
    if h.extension(EXT_BITMAPS).is_some() {
        w.r.check_errors += 1;
        w.r.note("persistent bitmaps are not checked; their clusters show as leaks".into());
    }

    // Stored refcounts, compared with the computed ones.
    let per = (cs * 8) >> h.refcount_order;
    let mut stored = vec![0u64; nclusters as usize];
    for (ti, e) in rt.iter().enumerate() {
        let b = e & REFT_OFFSET_MASK;
        if b == 0 || !b.is_multiple_of(cs) {
            continue;
        }
        let blk = w.read(b, cs)?;
        for i in 0..per {
            let ci = ti as u64 * per + i;
            let v = get_entry(&blk, h.refcount_order, i);
            if ci < nclusters {
                stored[ci as usize] = v;
            } else if v != 0 {
                w.r.leaks += 1;
                w.r.note(format!(
                    "Leaked cluster {ci} (past the end of the file) refcount={v}"
                ));
            }
        }
    }
    for (ci, (&s, &c)) in stored.iter().zip(w.refs.iter()).enumerate() {
        if s == c {
            continue;
        }
        if s < c {
            w.r.corruptions += 1;
            w.r.note(format!("ERROR cluster {ci} refcount={s} reference={c}"));
        } else if c == 0 {
            w.r.leaks += 1;
            w.r.note(format!("Leaked cluster {ci} refcount={s} reference=0"));
        } else {
            w.r.leaks += 1;
            w.r.note(format!("Cluster {ci} refcount={s} reference={c}"));
        }
    }
    if let Some(last) = w.refs.iter().rposition(|&c| c > 0) {
        w.r.image_end_offset = (last as u64 + 1) * cs;
    }

    // Copied flags of the active tables (bit 63 <=> refcount == 1).
    if h.l1_size > 0 && h.l1_table_offset.is_multiple_of(cs) {
        let l1 = decode_table(&w.read(h.l1_table_offset, u64::from(h.l1_size) * 8)?);
        for (i, e) in l1.iter().enumerate() {
            let l2_off = e & L1E_OFFSET_MASK;
            if l2_off == 0 || !l2_off.is_multiple_of(cs) || l2_off / cs >= nclusters {
                continue;
            }
            let rc = stored[(l2_off / cs) as usize];
            if (e & OFLAG_COPIED != 0) != (rc == 1) {
                w.corrupt(format!(
                    "OFLAG_COPIED L2 cluster: l1_index={i} refcount={rc}"
                ));
            }
            let l2 = w.read(l2_off, cs)?;
            for j in 0..(cs / 8) as usize {
                let ent = get_be64(&l2, j);
                if let Ok(ClusterState::Data { host, copied }) =
                    decode_l2(ent, h.cluster_bits, h.version)
                {
                    if host / cs < nclusters {
                        let rc = stored[(host / cs) as usize];
                        if copied != (rc == 1) {
                            w.corrupt(format!(
                                "OFLAG_COPIED data cluster: l2_entry={ent:#x} refcount={rc}"
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(w.r)
}
