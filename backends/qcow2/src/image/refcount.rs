//! Refcount table and refcount blocks of a writable image (qcow2 spec, "Host
//! cluster management"), with end-of-file cluster allocation.
//!
//! The refcount table (at most 8 MiB) is held in memory; refcount blocks are
//! loaded on demand and kept until [`Refcounts::write_blocks`]. New refcount
//! blocks are placed at the end of the file and describe themselves when
//! they can. When the table is full it is relocated to the end of the file,
//! twice as large; the old table is freed only after the header points at the
//! new one.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{corrupt, ImageError, Result};
use super::header::Header;
use super::io::{decode_table, encode_table, read_zero_fill, write_all_at};
use super::table::REFT_OFFSET_MASK;
use super::validate::MAX_REFTABLE_BYTES;

struct Block {
    data: Vec<u8>,
    dirty: bool,
}

/// In-memory refcount state of one writable image.
pub(crate) struct Refcounts {
    path: PathBuf,
    order: u32,
    cluster_bits: u32,
    /// Decoded refcount table.
    table: Vec<u64>,
    pub(crate) table_offset: u64,
    pub(crate) table_clusters: u64,
    table_dirty: bool,
    /// Previous table locations (offset, clusters) to free after the header
    /// switch.
    pub(crate) old_tables: Vec<(u64, u64)>,
    blocks: HashMap<u64, Block>,
    /// First byte past every allocated cluster; new clusters go here.
    pub(crate) next_free: u64,
}

/// Read refcount entry `i` of a block with entries of `1 << order` bits.
pub(crate) fn get_entry(data: &[u8], order: u32, i: u64) -> u64 {
    let bits = 1u64 << order;
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let at = i as usize * bytes;
        data[at..at + bytes]
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    } else {
        let bit = i * bits;
        let byte = data[(bit / 8) as usize];
        (u64::from(byte) >> (bit % 8)) & ((1u64 << bits) - 1)
    }
}

/// Write refcount entry `i` of a block (see [`get_entry`]). `v` must fit.
pub(crate) fn set_entry(data: &mut [u8], order: u32, i: u64, v: u64) {
    let bits = 1u64 << order;
    if bits >= 8 {
        let bytes = (bits / 8) as usize;
        let at = i as usize * bytes;
        for k in 0..bytes {
            data[at + k] = (v >> (8 * (bytes - 1 - k))) as u8;
        }
    } else {
        let bit = i * bits;
        let idx = (bit / 8) as usize;
        let shift = bit % 8;
        let mask = ((1u64 << bits) - 1) as u8;
        data[idx] = (data[idx] & !(mask << shift)) | (((v as u8) & mask) << shift);
    }
}

impl Refcounts {
    /// Load the refcount table of `h` and find the first free cluster past
    /// everything that is allocated or present in the file.
    pub(crate) fn load(path: &Path, file: &File, h: &Header, file_len: u64) -> Result<Refcounts> {
        let cs = h.cluster_size();
        if h.refcount_table_clusters == 0 {
            return Err(corrupt(path, "the refcount table is empty"));
        }
        let mut tb = vec![0u8; (u64::from(h.refcount_table_clusters) * cs) as usize];
        read_zero_fill(file, path, &mut tb, h.refcount_table_offset)?;
        let mut rc = Refcounts {
            path: path.to_path_buf(),
            order: h.refcount_order,
            cluster_bits: h.cluster_bits,
            table: decode_table(&tb),
            table_offset: h.refcount_table_offset,
            table_clusters: u64::from(h.refcount_table_clusters),
            table_dirty: false,
            old_tables: Vec::new(),
            blocks: HashMap::new(),
            next_free: file_len.div_ceil(cs) * cs,
        };
        // Highest cluster with a non-zero refcount.
        if let Some(ti) = rc.table.iter().rposition(|&e| e & REFT_OFFSET_MASK != 0) {
            rc.load_block(file, ti as u64)?;
            let per = rc.per_block();
            if let Some(b) = rc.blocks.get(&(ti as u64)) {
                if let Some(i) = (0..per)
                    .rev()
                    .find(|&i| get_entry(&b.data, rc.order, i) != 0)
                {
                    let end = (ti as u64 * per + i + 1).checked_mul(cs).ok_or_else(|| {
                        corrupt(path, "refcount table covers an impossible range")
                    })?;
                    rc.next_free = rc.next_free.max(end);
                }
            }
        }
        Ok(rc)
    }

    fn cs(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    /// Entries per refcount block.
    fn per_block(&self) -> u64 {
        (self.cs() * 8) >> self.order
    }

    fn max_value(&self) -> u64 {
        let bits = 1u32 << self.order;
        if bits >= 64 {
            u64::MAX
        } else {
            (1u64 << bits) - 1
        }
    }

    fn load_block(&mut self, file: &File, ti: u64) -> Result<()> {
        if self.blocks.contains_key(&ti) {
            return Ok(());
        }
        let off = self.table[ti as usize] & REFT_OFFSET_MASK;
        let cs = self.cs();
        if !off.is_multiple_of(cs) {
            return Err(corrupt(
                &self.path,
                format!("refcount block offset {off:#x} is not cluster aligned"),
            ));
        }
        // A block past the end of the file is corrupt (qemu-img check: "refcount block is
        // outside image"). Reading it as zeros and then writing it back would extend the file
        // to wherever a hostile table points (found by fuzzing: a 3 KB image grew to a 90 GB
        // sparse file). Blocks this session allocated are already in `blocks`.
        let len = file
            .metadata()
            .map_err(|e| ImageError::Io {
                path: self.path.clone(),
                op: "stat",
                source: e,
            })?
            .len();
        if off >= len {
            return Err(corrupt(
                &self.path,
                format!(
                    "refcount block {ti} at offset {off:#x} lies past the end of the file \
                     ({len} bytes)"
                ),
            ));
        }
        let mut data = vec![0u8; cs as usize];
        read_zero_fill(file, &self.path, &mut data, off)?;
        self.blocks.insert(ti, Block { data, dirty: false });
        Ok(())
    }

    /// Refcount of the cluster with index `ci`.
    pub(crate) fn get(&mut self, file: &File, ci: u64) -> Result<u64> {
        let per = self.per_block();
        let ti = ci / per;
        if ti >= self.table.len() as u64 || self.table[ti as usize] & REFT_OFFSET_MASK == 0 {
            return Ok(0);
        }
        self.load_block(file, ti)?;
        Ok(self
            .blocks
            .get(&ti)
            .map(|b| get_entry(&b.data, self.order, ci % per))
            .unwrap_or(0))
    }

    /// Make sure the refcount block for table index `ti` exists (allocating
    /// it, and growing the table, as needed) and is loaded.
    fn ensure_block(&mut self, file: &File, ti: u64) -> Result<()> {
        if ti >= self.table.len() as u64 {
            self.grow_table(file, ti)?;
        }
        if self.table[ti as usize] & REFT_OFFSET_MASK != 0 {
            return self.load_block(file, ti);
        }
        let cs = self.cs();
        let off = self.next_free;
        self.next_free = off
            .checked_add(cs)
            .ok_or_else(|| corrupt(&self.path, "file offset overflow"))?;
        self.table[ti as usize] = off;
        self.table_dirty = true;
        self.blocks.insert(
            ti,
            Block {
                data: vec![0u8; cs as usize],
                dirty: true,
            },
        );
        // The new block's own cluster needs a refcount (maybe in itself).
        self.add(file, off / cs, 1)
    }

    fn grow_table(&mut self, file: &File, min_ti: u64) -> Result<()> {
        let cs = self.cs();
        let per_cluster = cs / 8;
        let mut clusters = (self.table_clusters * 2).max((min_ti + 1).div_ceil(per_cluster) + 1);
        // The new table must also cover its own clusters and a few blocks.
        loop {
            let end_cluster = self.next_free / cs + clusters + 4;
            let needed = end_cluster.div_ceil(self.per_block());
            if needed <= clusters * per_cluster {
                break;
            }
            clusters = needed.div_ceil(per_cluster);
        }
        if clusters * cs > MAX_REFTABLE_BYTES {
            return Err(ImageError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "the refcount table would exceed {MAX_REFTABLE_BYTES} bytes; the image is too large to grow"
                ),
            });
        }
        let new_off = self.next_free;
        self.next_free += clusters * cs;
        self.old_tables
            .push((self.table_offset, self.table_clusters));
        self.table.resize((clusters * per_cluster) as usize, 0);
        self.table_offset = new_off;
        self.table_clusters = clusters;
        self.table_dirty = true;
        for c in 0..clusters {
            self.add(file, new_off / cs + c, 1)?;
        }
        Ok(())
    }

    /// Add `delta` (may be negative) to the refcount of cluster `ci`.
    ///
    /// Errors: [`ImageError::Corrupt`] on underflow, [`ImageError::Unsupported`]
    /// on overflow of the refcount width.
    pub(crate) fn add(&mut self, file: &File, ci: u64, delta: i64) -> Result<()> {
        let per = self.per_block();
        let ti = ci / per;
        self.ensure_block(file, ti)?;
        let order = self.order;
        let max = self.max_value();
        let path = self.path.clone();
        let b = self
            .blocks
            .get_mut(&ti)
            .ok_or_else(|| corrupt(&path, "refcount block vanished"))?;
        let cur = get_entry(&b.data, order, ci % per);
        let new = if delta >= 0 {
            cur.checked_add(delta as u64)
                .filter(|&v| v <= max)
                .ok_or_else(|| ImageError::Unsupported {
                    path: path.clone(),
                    reason: format!("refcount of cluster {ci} would overflow"),
                })?
        } else {
            cur.checked_sub(delta.unsigned_abs()).ok_or_else(|| {
                corrupt(
                    &path,
                    format!("refcount of cluster {ci} would drop below zero"),
                )
            })?
        };
        set_entry(&mut b.data, order, ci % per, new);
        b.dirty = true;
        Ok(())
    }

    /// Allocate `n` contiguous new clusters at the end of the file, with
    /// refcount 1. Returns the byte offset of the first one.
    pub(crate) fn alloc(&mut self, file: &File, n: u64) -> Result<u64> {
        let cs = self.cs();
        let off = self.next_free;
        self.next_free = n
            .checked_mul(cs)
            .and_then(|b| off.checked_add(b))
            .ok_or_else(|| corrupt(&self.path, "file offset overflow"))?;
        for c in 0..n {
            let ci = off / cs + c;
            if self.get(file, ci)? != 0 {
                return Err(corrupt(
                    &self.path,
                    format!("cluster {ci} past the end of the data is already in use"),
                ));
            }
            self.add(file, ci, 1)?;
        }
        Ok(off)
    }

    /// Whether anything needs writing.
    pub(crate) fn is_dirty(&self) -> bool {
        self.table_dirty || self.blocks.values().any(|b| b.dirty)
    }

    /// Write every dirty refcount block. Returns whether anything was written.
    pub(crate) fn write_blocks(&mut self, file: &File) -> Result<bool> {
        let mut any = false;
        for (ti, b) in self.blocks.iter_mut() {
            if b.dirty {
                let off = self.table[*ti as usize] & REFT_OFFSET_MASK;
                write_all_at(file, &self.path, &b.data, off)?;
                b.dirty = false;
                any = true;
            }
        }
        // Bound memory: drop clean blocks when many are cached.
        if self.blocks.len() > 256 {
            self.blocks.retain(|_, b| b.dirty);
        }
        Ok(any)
    }

    /// Write the whole refcount table if it changed. Returns whether it was
    /// written.
    pub(crate) fn write_table(&mut self, file: &File) -> Result<bool> {
        if !self.table_dirty {
            return Ok(false);
        }
        write_all_at(
            file,
            &self.path,
            &encode_table(&self.table),
            self.table_offset,
        )?;
        self.table_dirty = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_roundtrip_all_orders() {
        for order in 0..=6u32 {
            let mut d = vec![0u8; 512];
            let bits = 1u32 << order;
            let max = if bits == 64 {
                u64::MAX
            } else {
                (1u64 << bits) - 1
            };
            let n = 512 * 8 / u64::from(bits);
            for i in 0..n {
                set_entry(&mut d, order, i, (i * 7) & max);
            }
            for i in 0..n {
                assert_eq!(
                    get_entry(&d, order, i),
                    (i * 7) & max,
                    "order {order} i {i}"
                );
            }
        }
    }
}
