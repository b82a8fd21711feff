//! Writing to the top image of a chain: cluster allocation at the end of the
//! file, L2 table allocation, copy-on-write of partial clusters, zero
//! clusters, and crash-safe metadata ordering on [`Image::flush`].
//!
//! Ordering (each arrow is an `fdatasync`):
//! guest data clusters -> refcount blocks (-> refcount table -> header, only
//! when the table moved) -> L2 tables -> L1 entries -> decrements of freed
//! clusters. A crash at any point leaves every on-disk reference pointing at
//! a cluster whose data and refcount are already durable; the worst case is
//! a leaked cluster (refcount 1, no reference), which `qemu-img check`
//! reports as a leak, never as corruption. Guest data written since the last
//! flush may or may not be visible after a crash (like a disk write cache).

use super::error::{corrupt, io_err, ImageError, Result};
use super::image::Image;
use super::io::{encode_table, read_zero_fill, sync_data, write_all_at};
use super::refcount::Refcounts;
use super::table::{
    compressed_cluster_range, ClusterState, L1E_OFFSET_MASK, OFLAG_COPIED, OFLAG_ZERO,
};

/// Dirty L2 tables kept before an automatic flush.
const MAX_DIRTY_L2: usize = 1024;

impl Image {
    /// Called by [`Image::open`] for writable opens: refuse images we cannot
    /// safely write, load refcounts, clear auto-clear feature bits.
    pub(crate) fn prepare_for_write(&mut self) -> Result<()> {
        if self.header.nb_snapshots > 0 {
            return Err(ImageError::Unsupported {
                path: self.path.clone(),
                reason: format!(
                    "the image has {} internal snapshot(s); it can be read but not written here. \
                     Delete them with `qemu-img snapshot -d` or convert the image",
                    self.header.nb_snapshots
                ),
            });
        }
        self.rc = Some(Refcounts::load(
            &self.path,
            &self.file,
            &self.header,
            self.file_len,
        )?);
        if self.header.version >= 3 && self.header.autoclear_features != 0 {
            // qcow2 spec, header bytes 88-95: a writer that does not maintain
            // the auto-clear features must clear them before writing.
            self.header.autoclear_features = 0;
            write_all_at(&self.file, &self.path, &[0u8; 8], 88)?;
            sync_data(&self.file, &self.path)?;
        }
        Ok(())
    }

    /// Allocate `n` clusters at the end of the file; returns the byte offset.
    pub(crate) fn alloc_clusters(&mut self, n: u64) -> Result<u64> {
        let file = &self.file;
        let rc = self.rc.as_mut().ok_or_else(|| ImageError::ReadOnly {
            path: self.path.clone(),
        })?;
        let off = rc.alloc(file, n)?;
        self.file_len = self.file_len.max(rc.next_free);
        Ok(off)
    }

    /// Get the L2 table for guest cluster `gc` ready for modification
    /// (allocating it if needed). Returns (l2 offset, index in table).
    fn l2_for_write(&mut self, gc: u64) -> Result<(u64, usize)> {
        let per = self.l2_entries();
        let l1i = (gc / per) as usize;
        let l2i = (gc % per) as usize;
        let l1e = *self.l1.get(l1i).ok_or_else(|| {
            corrupt(
                &self.path,
                format!("guest cluster {gc} beyond the L1 table"),
            )
        })?;
        let l2_off = l1e & L1E_OFFSET_MASK;
        if l2_off == 0 {
            let off = self.alloc_clusters(1)?;
            self.dirty_l2.insert(off, vec![0u64; per as usize]);
            self.l1[l1i] = off | OFLAG_COPIED;
            self.dirty_l1.insert(l1i);
            return Ok((off, l2i));
        }
        if !self.dirty_l2.contains_key(&l2_off) {
            if l1e & OFLAG_COPIED == 0 {
                let file = &self.file;
                let cs_bits = self.header.cluster_bits;
                let rc = self.rc.as_mut().ok_or_else(|| ImageError::ReadOnly {
                    path: self.path.clone(),
                })?;
                let refs = rc.get(file, l2_off >> cs_bits)?;
                if refs != 1 {
                    return Err(ImageError::Unsupported {
                        path: self.path.clone(),
                        reason: format!(
                            "L2 table at {l2_off:#x} is shared (refcount {refs}); writing shared tables is not supported"
                        ),
                    });
                }
            }
            let t = self.load_l2(l2_off)?;
            self.forget_clean_l2(l2_off);
            self.dirty_l2.insert(l2_off, t);
        }
        Ok((l2_off, l2i))
    }

    fn set_l2(&mut self, gc: u64, entry: u64) -> Result<()> {
        let (l2_off, l2i) = self.l2_for_write(gc)?;
        match self.dirty_l2.get_mut(&l2_off) {
            Some(t) => {
                t[l2i] = entry;
                Ok(())
            }
            None => Err(corrupt(&self.path, "L2 table vanished from the cache")),
        }
    }

    /// Queue freeing of the host clusters behind an old L2 entry state; done
    /// after the new references are durable.
    fn free_later(&mut self, st: ClusterState) {
        let cs = self.cluster_size();
        match st {
            ClusterState::Data { host, .. } => self.pending_free.push((host, cs)),
            ClusterState::Zero { host } if host != 0 => self.pending_free.push((host, cs)),
            ClusterState::Compressed { host, len } => {
                let (first, last) = compressed_cluster_range(host, len, self.header.cluster_bits);
                self.pending_free.push((first, last - first + cs));
            }
            _ => {}
        }
    }

    /// Mark guest cluster `gc` as reading zeros (v3 zero flag), freeing what
    /// it pointed at.
    pub(crate) fn set_zero_cluster(&mut self, gc: u64) -> Result<()> {
        let cs = self.cluster_size();
        let st = self.cluster_state(gc * cs)?;
        if matches!(st, ClusterState::Zero { host: 0 }) {
            return Ok(());
        }
        self.set_l2(gc, OFLAG_ZERO)?;
        self.free_later(st);
        self.maybe_autoflush()
    }

    /// Write one whole new cluster `data` (cluster size bytes) for guest
    /// cluster `gc`, replacing state `old`.
    pub(crate) fn write_new_cluster(
        &mut self,
        gc: u64,
        data: &[u8],
        old: ClusterState,
    ) -> Result<()> {
        let host = self.alloc_clusters(1)?;
        write_all_at(&self.file, &self.path, data, host)?;
        self.set_l2(gc, host | OFLAG_COPIED)?;
        self.free_later(old);
        self.maybe_autoflush()
    }

    /// Whether an existing data cluster can be overwritten in place.
    pub(crate) fn can_write_in_place(&mut self, st: ClusterState) -> Result<bool> {
        match st {
            ClusterState::Data { copied: true, .. } => Ok(true),
            ClusterState::Data {
                host,
                copied: false,
            } => {
                let bits = self.header.cluster_bits;
                let file = &self.file;
                let rc = self.rc.as_mut().ok_or_else(|| ImageError::ReadOnly {
                    path: self.path.clone(),
                })?;
                Ok(rc.get(file, host >> bits)? == 1)
            }
            _ => Ok(false),
        }
    }

    /// Old content of a cluster of this image (for copy-on-write) when it is
    /// allocated here; `None` when unallocated (read the backing instead).
    pub(crate) fn old_cluster_content(&self, st: ClusterState, out: &mut [u8]) -> Result<bool> {
        match st {
            ClusterState::Unallocated => Ok(false),
            ClusterState::Zero { .. } => {
                out.fill(0);
                Ok(true)
            }
            ClusterState::Data { host, .. } => {
                read_zero_fill(&self.file, &self.path, out, host)?;
                Ok(true)
            }
            ClusterState::Compressed { host, len } => {
                self.read_compressed(host, len, out)?;
                Ok(true)
            }
        }
    }

    fn maybe_autoflush(&mut self) -> Result<()> {
        if self.dirty_l2.len() > MAX_DIRTY_L2 {
            self.flush()?;
        }
        Ok(())
    }

    /// Make every write so far durable, in crash-safe order (see the module
    /// docs): data, refcounts, L2 tables, L1 entries, then frees. A no-op for
    /// read-only images.
    ///
    /// Errors: [`ImageError::Io`], [`ImageError::Corrupt`].
    pub fn flush(&mut self) -> Result<()> {
        if !self.writable {
            return Ok(());
        }
        let Some(rc) = self.rc.as_mut() else {
            return Ok(());
        };
        let file = &self.file;
        let path = &self.path;
        let dirty_meta = rc.is_dirty()
            || !self.dirty_l2.is_empty()
            || !self.dirty_l1.is_empty()
            || !self.pending_free.is_empty()
            || !rc.old_tables.is_empty();
        if !dirty_meta {
            return sync_data(file, path);
        }
        // 0. The file covers every allocated cluster.
        let phys = file.metadata().map_err(io_err(path, "stat"))?.len();
        if phys < rc.next_free {
            file.set_len(rc.next_free)
                .map_err(io_err(path, "extend file"))?;
        }
        // 1. Guest data.
        sync_data(file, path)?;
        // 2. Refcounts (blocks, then table, then header pointer).
        rc.write_blocks(file)?;
        sync_data(file, path)?;
        if rc.write_table(file)? {
            sync_data(file, path)?;
        }
        if !rc.old_tables.is_empty() {
            let mut b = [0u8; 12];
            b[0..8].copy_from_slice(&rc.table_offset.to_be_bytes());
            b[8..12].copy_from_slice(&(rc.table_clusters as u32).to_be_bytes());
            // 12 bytes inside one sector: written atomically.
            write_all_at(file, path, &b, 48)?;
            sync_data(file, path)?;
            self.header.refcount_table_offset = rc.table_offset;
            self.header.refcount_table_clusters = rc.table_clusters as u32;
            let cs = self.header.cluster_size();
            for (off, n) in std::mem::take(&mut rc.old_tables) {
                self.pending_free.push((off, n * cs));
            }
        }
        // 3. L2 tables.
        if !self.dirty_l2.is_empty() {
            for (off, t) in self.dirty_l2.drain() {
                write_all_at(file, path, &encode_table(&t), off)?;
            }
            sync_data(file, path)?;
        }
        // 4. L1 entries.
        if !self.dirty_l1.is_empty() {
            let base = self.header.l1_table_offset;
            for i in std::mem::take(&mut self.dirty_l1) {
                write_all_at(file, path, &self.l1[i].to_be_bytes(), base + i as u64 * 8)?;
            }
            sync_data(file, path)?;
        }
        // 5. Frees (a crash before this only leaks clusters).
        if !self.pending_free.is_empty() {
            let cs = self.header.cluster_size();
            for (off, len) in std::mem::take(&mut self.pending_free) {
                let first = off / cs;
                let last = (off + len - 1) / cs;
                for ci in first..=last {
                    rc.add(file, ci, -1)?;
                }
            }
            rc.write_blocks(file)?;
            if rc.write_table(file)? {
                sync_data(file, path)?;
            }
            sync_data(file, path)?;
        }
        Ok(())
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.writable {
            // Best effort: callers that care call flush() and see errors.
            let _ = self.flush();
        }
    }
}
