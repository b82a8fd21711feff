//! Streaming flatten: the guest-visible content of a chain as a standalone,
//! sparse qcow2 v3 image, written strictly in file order to any
//! [`std::io::Write`], with its exact byte size known before the first byte.
//!
//! Algorithm (two passes over the chain, bounded memory):
//! 1. [`FlattenPlan::new`] walks the allocation map ([`Chain::map`]) and
//!    reads every cluster that some layer provides data for, 1 MiB at a time,
//!    recording in a bitmap (1 bit per 64 KiB guest cluster) which ones are
//!    not all zeros. Zero clusters, unallocated ranges and all-zero data are
//!    left unallocated in the output (they read as zeros, no backing file).
//! 2. From the counts the layout is fixed: header cluster, refcount table,
//!    refcount blocks (16-bit, covering every cluster of the output), L1
//!    table, one L2 table per L1 entry that maps data, then the non-zero data
//!    clusters in guest order. [`FlattenPlan::size_bytes`] is therefore exact.
//! 3. [`FlattenPlan::write_to`] emits those regions in order, reading the
//!    non-zero clusters again (second pass).
//!
//! Memory: the bitmap (virtual size / 512 KiB bytes, e.g. 2 KiB per GiB),
//! one bit per L1 entry, a 1 MiB read buffer and one 64 KiB table buffer.
//! The chain must not change between `new` and `write_to`.

use std::io::Write;
use std::path::Path;

use super::chain::{Chain, ExtentKind};
use super::error::{corrupt, io_err, ImageError, Result};
use super::io::{is_zero, sync_parent_dir};
use super::overlay::{build_header_cluster, staging_name};
use super::table::OFLAG_COPIED;

/// Cluster size of flattened images, in bytes (64 KiB).
pub const FLATTEN_CLUSTER_SIZE: u64 = 1 << FLATTEN_CLUSTER_BITS;
const FLATTEN_CLUSTER_BITS: u32 = 16;
/// L2 entries per table with 64 KiB clusters.
const L2_ENTRIES: u64 = FLATTEN_CLUSTER_SIZE / 8;
/// 16-bit refcounts per 64 KiB refcount block.
const RB_ENTRIES: u64 = FLATTEN_CLUSTER_SIZE / 2;
/// Bytes read from the chain at a time.
const READ_CHUNK: u64 = 16 * FLATTEN_CLUSTER_SIZE;

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Bits {
        Bits(vec![0; n.div_ceil(64) as usize])
    }
    fn set(&mut self, i: u64) {
        self.0[(i / 64) as usize] |= 1 << (i % 64);
    }
    fn get(&self, i: u64) -> bool {
        self.0[(i / 64) as usize] & (1 << (i % 64)) != 0
    }
}

/// The exact layout of the flattened image of a chain (see module docs).
pub struct FlattenPlan<'a> {
    chain: &'a Chain,
    virtual_size: u64,
    guest_clusters: u64,
    nonzero: Bits,
    l1_used: Bits,
    data_clusters: u64,
    l1_size: u64,
    l1_clusters: u64,
    l2_tables: u64,
    rt_clusters: u64,
    rb_clusters: u64,
    total_clusters: u64,
}

impl std::fmt::Debug for FlattenPlan<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlattenPlan")
            .field("virtual_size", &self.virtual_size)
            .field("data_clusters", &self.data_clusters)
            .field("l2_tables", &self.l2_tables)
            .field("size_bytes", &self.size_bytes())
            .finish()
    }
}

impl<'a> FlattenPlan<'a> {
    /// First pass: find the non-zero clusters of `chain` and compute the
    /// output layout. Reads every allocated data cluster once.
    ///
    /// Errors: [`ImageError::Io`], [`ImageError::Corrupt`] from reading the
    /// chain; [`ImageError::InvalidArgument`] when the virtual size is too
    /// large for a 64 KiB-cluster image (L1 over 32 MiB).
    pub fn new(chain: &'a Chain) -> Result<FlattenPlan<'a>> {
        let v = chain.virtual_size();
        let cs = FLATTEN_CLUSTER_SIZE;
        let n = v.div_ceil(cs);
        let l1_size = n.div_ceil(L2_ENTRIES);
        if l1_size * 8 > super::validate::MAX_L1_BYTES {
            return Err(ImageError::InvalidArgument {
                path: chain.top().path().to_path_buf(),
                reason: format!("virtual size {v} bytes is too large to flatten"),
            });
        }
        let mut nonzero = Bits::new(n);
        let mut l1_used = Bits::new(l1_size);
        let mut buf = vec![0u8; READ_CHUNK as usize];
        let mut next_unchecked = 0u64; // first guest cluster not yet examined
        let window = 1u64 << 30;
        let mut woff = 0u64;
        while woff < v {
            let wlen = window.min(v - woff);
            for e in chain.map(woff, wlen)? {
                if !matches!(e.kind, ExtentKind::Data(_)) {
                    continue;
                }
                let first = (e.offset / cs).max(next_unchecked);
                let last = (e.offset + e.length - 1) / cs; // inclusive
                let mut c = first;
                while c <= last {
                    let cnt = (last - c + 1).min(READ_CHUNK / cs);
                    let start = c * cs;
                    let len = (cnt * cs).min(v - start);
                    let b = &mut buf[..len as usize];
                    chain.read_at(b, start)?;
                    for k in 0..cnt {
                        let s = (k * cs) as usize;
                        let e2 = ((k + 1) * cs).min(len) as usize;
                        if !is_zero(&b[s..e2]) {
                            nonzero.set(c + k);
                            l1_used.set((c + k) / L2_ENTRIES);
                        }
                    }
                    c += cnt;
                }
                next_unchecked = next_unchecked.max(last + 1);
            }
            woff += wlen;
        }
        let data_clusters: u64 = nonzero.0.iter().map(|w| u64::from(w.count_ones())).sum();
        let l2_tables: u64 = l1_used.0.iter().map(|w| u64::from(w.count_ones())).sum();
        let l1_clusters = (l1_size * 8).div_ceil(cs);
        let fixed = 1 + l1_clusters + l2_tables + data_clusters;
        let (mut rt, mut rb) = (1u64, 1u64);
        loop {
            let total = fixed + rt + rb;
            let need_rb = total.div_ceil(RB_ENTRIES);
            let need_rt = (need_rb * 8).div_ceil(cs);
            if need_rb <= rb && need_rt <= rt {
                break;
            }
            rb = rb.max(need_rb);
            rt = rt.max(need_rt);
        }
        Ok(FlattenPlan {
            chain,
            virtual_size: v,
            guest_clusters: n,
            nonzero,
            l1_used,
            data_clusters,
            l1_size,
            l1_clusters,
            l2_tables,
            rt_clusters: rt,
            rb_clusters: rb,
            total_clusters: fixed + rt + rb,
        })
    }

    /// Exact size in bytes of the output [`FlattenPlan::write_to`] produces.
    pub fn size_bytes(&self) -> u64 {
        self.total_clusters * FLATTEN_CLUSTER_SIZE
    }

    /// Virtual size of the output in bytes (the chain's virtual size).
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Number of 64 KiB data clusters the output stores (non-zero clusters).
    pub fn data_clusters(&self) -> u64 {
        self.data_clusters
    }

    fn rt_start(&self) -> u64 {
        1
    }
    fn rb_start(&self) -> u64 {
        self.rt_start() + self.rt_clusters
    }
    fn l1_start(&self) -> u64 {
        self.rb_start() + self.rb_clusters
    }
    fn l2_start(&self) -> u64 {
        self.l1_start() + self.l1_clusters
    }
    fn data_start(&self) -> u64 {
        self.l2_start() + self.l2_tables
    }

    /// Second pass: write the image to `w`, strictly sequentially. Returns
    /// the number of bytes written, always equal to
    /// [`FlattenPlan::size_bytes`].
    ///
    /// Errors: [`ImageError::Io`] (write errors carry the top image's path
    /// and op "write flattened image"), read errors of the chain, and
    /// [`ImageError::Corrupt`] if the chain changed since the plan was made.
    pub fn write_to<W: Write>(&self, w: &mut W) -> Result<u64> {
        let cs = FLATTEN_CLUSTER_SIZE;
        let top = self.chain.top().path().to_path_buf();
        let mut written = 0u64;
        let mut emit = |w: &mut W, b: &[u8]| -> Result<()> {
            w.write_all(b)
                .map_err(io_err(&top, "write flattened image"))?;
            written += b.len() as u64;
            Ok(())
        };
        let mut cluster = vec![0u8; cs as usize];
        // Header.
        let c0 = build_header_cluster(
            self.chain.top().path(),
            FLATTEN_CLUSTER_BITS,
            self.virtual_size,
            self.l1_size as u32,
            self.l1_start() * cs,
            self.rt_start() * cs,
            self.rt_clusters as u32,
            None,
        )?;
        cluster.fill(0);
        cluster[..c0.len()].copy_from_slice(&c0);
        emit(w, &cluster)?;
        // Refcount table.
        for i in 0..self.rt_clusters {
            cluster.fill(0);
            for j in 0..cs / 8 {
                let rb = i * (cs / 8) + j;
                if rb < self.rb_clusters {
                    let off = (self.rb_start() + rb) * cs;
                    cluster[(j * 8) as usize..(j * 8 + 8) as usize]
                        .copy_from_slice(&off.to_be_bytes());
                }
            }
            emit(w, &cluster)?;
        }
        // Refcount blocks: every cluster of the output has refcount 1.
        for i in 0..self.rb_clusters {
            cluster.fill(0);
            for j in 0..RB_ENTRIES {
                if i * RB_ENTRIES + j < self.total_clusters {
                    cluster[(j * 2) as usize..(j * 2 + 2) as usize]
                        .copy_from_slice(&1u16.to_be_bytes());
                }
            }
            emit(w, &cluster)?;
        }
        // L1 table.
        let mut l2_rank = 0u64;
        for i in 0..self.l1_clusters {
            cluster.fill(0);
            for j in 0..cs / 8 {
                let e = i * (cs / 8) + j;
                if e < self.l1_size && self.l1_used.get(e) {
                    let off = (self.l2_start() + l2_rank) * cs;
                    l2_rank += 1;
                    cluster[(j * 8) as usize..(j * 8 + 8) as usize]
                        .copy_from_slice(&(off | OFLAG_COPIED).to_be_bytes());
                }
            }
            emit(w, &cluster)?;
        }
        // L2 tables.
        let mut data_rank = 0u64;
        for e in 0..self.l1_size {
            if !self.l1_used.get(e) {
                continue;
            }
            cluster.fill(0);
            for j in 0..L2_ENTRIES {
                let gc = e * L2_ENTRIES + j;
                if gc < self.guest_clusters && self.nonzero.get(gc) {
                    let off = (self.data_start() + data_rank) * cs;
                    data_rank += 1;
                    cluster[(j * 8) as usize..(j * 8 + 8) as usize]
                        .copy_from_slice(&(off | OFLAG_COPIED).to_be_bytes());
                }
            }
            emit(w, &cluster)?;
        }
        // Data clusters, in guest order, read in runs of up to 1 MiB.
        let mut buf = vec![0u8; READ_CHUNK as usize];
        let mut gc = 0u64;
        while gc < self.guest_clusters {
            if !self.nonzero.get(gc) {
                gc += 1;
                continue;
            }
            let mut cnt = 1u64;
            while cnt < READ_CHUNK / cs
                && gc + cnt < self.guest_clusters
                && self.nonzero.get(gc + cnt)
            {
                cnt += 1;
            }
            let start = gc * cs;
            let len = (cnt * cs).min(self.virtual_size - start);
            let b = &mut buf[..(cnt * cs) as usize];
            b[len as usize..].fill(0);
            self.chain.read_at(&mut b[..len as usize], start)?;
            emit(w, b)?;
            gc += cnt;
        }
        if written != self.size_bytes() {
            return Err(corrupt(
                self.chain.top().path(),
                format!(
                    "flatten wrote {written} bytes but planned {}; the chain changed during flatten",
                    self.size_bytes()
                ),
            ));
        }
        Ok(written)
    }
}

/// Flatten `chain` into a new standalone qcow2 file at `dest`: written under
/// a temporary name in the same directory (created with mode 0600,
/// [`crate::private::FILE_MODE`]), fsync'd, renamed onto `dest`
/// (replacing it), then the directory is fsync'd. Returns the file size in
/// bytes.
///
/// Errors: those of [`FlattenPlan::new`] and [`FlattenPlan::write_to`];
/// [`ImageError::Io`] for the destination. The temporary file is removed on
/// failure.
pub fn flatten_to_file(chain: &Chain, dest: &Path) -> Result<u64> {
    let plan = FlattenPlan::new(chain)?;
    let tmp = staging_name(dest);
    let result = (|| {
        let f = crate::private::file_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        let mut bw = std::io::BufWriter::with_capacity(1 << 20, f);
        let n = plan.write_to(&mut bw)?;
        let f = bw
            .into_inner()
            .map_err(|e| io_err(&tmp, "write")(e.into_error()))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, dest).map_err(io_err(dest, "rename into place"))?;
        Ok(n)
    })();
    match result {
        Ok(n) => {
            sync_parent_dir(dest)?;
            Ok(n)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
