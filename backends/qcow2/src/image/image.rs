//! One opened qcow2 file: safe open (header parsed and validated before any
//! table is read), cluster lookup through L1/L2, and reading of the data this
//! image itself holds. Backing files are handled by [`super::chain::Chain`].

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::compress::decompress_cluster;
use super::error::{corrupt, io_err, ImageError, Result};
use super::header::{Header, INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::io::{decode_table, read_zero_fill};
use super::refcount::Refcounts;
use super::table::{decode_l2, ClusterState, L1E_OFFSET_MASK};
use super::validate::{validate_features, validate_geometry, validate_tables};

/// Format of a backing file (qcow2 spec, header extension 0xe2792aca
/// "Backing file format name string").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    /// A raw disk image: the file bytes are the guest bytes.
    Raw,
    /// A qcow2 image (which may have its own backing file).
    Qcow2,
}

impl BackingFormat {
    /// The name written in the backing format extension ("raw" / "qcow2").
    pub fn as_str(self) -> &'static str {
        match self {
            BackingFormat::Raw => "raw",
            BackingFormat::Qcow2 => "qcow2",
        }
    }
}

/// Local allocation state of a guest range in one layer (see
/// [`Image::map_local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalKind {
    /// This layer holds data (standard or compressed cluster).
    Data,
    /// This layer says the range reads as zeros (zero flag, or beyond the
    /// layer's virtual size).
    Zero,
    /// Not allocated here: reads fall through to the backing file.
    Unallocated,
}

/// Largest amount of clean L2 tables cached per image, in bytes.
const L2_CACHE_BYTES: u64 = 16 << 20;

#[derive(Default)]
pub(crate) struct ReadCache {
    l2: HashMap<u64, Arc<Vec<u64>>>,
    /// Last decompressed cluster: (L2 entry host offset, data).
    compressed: Option<(u64, Vec<u8>)>,
}

/// An opened qcow2 image file (a single layer, without its backing chain).
///
/// Opening reads cluster 0, validates the header (see [`Image::open`]) and
/// loads the active L1 table (at most 32 MiB, bounded by the file size).
pub struct Image {
    pub(crate) path: PathBuf,
    pub(crate) file: File,
    pub(crate) header: Header,
    pub(crate) writable: bool,
    /// Current length of the file in bytes (grows as clusters are appended).
    pub(crate) file_len: u64,
    pub(crate) l1: Vec<u64>,
    pub(crate) cache: Mutex<ReadCache>,
    // Write state (only used when `writable`).
    pub(crate) dirty_l1: BTreeSet<usize>,
    pub(crate) dirty_l2: HashMap<u64, Vec<u64>>,
    pub(crate) rc: Option<Refcounts>,
    /// Host ranges (offset, length in bytes) to free once the references to
    /// them are on disk.
    pub(crate) pending_free: Vec<(u64, u64)>,
}

impl std::fmt::Debug for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Image")
            .field("path", &self.path)
            .field("writable", &self.writable)
            .field("virtual_size", &self.header.size)
            .field("cluster_size", &self.header.cluster_size())
            .field("backing_file", &self.header.backing_file)
            .finish()
    }
}

/// Read and validate the header of an open file. Nothing but cluster 0 is
/// read. Returns the header and the file length in bytes.
pub(crate) fn read_header(path: &Path, file: &File, writable: bool) -> Result<(Header, u64)> {
    read_header_impl(path, file, writable, false)
}

/// Like [`read_header`] but the corrupt and dirty bits are accepted (for
/// [`super::check::check`], which must look at such images).
pub(crate) fn read_header_for_check(path: &Path, file: &File) -> Result<(Header, u64)> {
    read_header_impl(path, file, false, true)
}

fn read_header_impl(
    path: &Path,
    file: &File,
    writable: bool,
    allow_state_bits: bool,
) -> Result<(Header, u64)> {
    let file_len = file.metadata().map_err(io_err(path, "stat"))?.len();
    let mut prefix = vec![0u8; file_len.min(112) as usize];
    read_zero_fill(file, path, &mut prefix, 0)?;
    let mut h = Header::parse_fixed(path, &prefix)?;
    validate_geometry(path, &h)?;
    let c0_len = file_len.min(h.cluster_size()) as usize;
    let mut c0 = vec![0u8; c0_len];
    read_zero_fill(file, path, &mut c0, 0)?;
    h.parse_cluster0(path, &c0)?;
    if allow_state_bits {
        let mut masked = h.clone();
        masked.incompatible_features &= !(INCOMPAT_CORRUPT | INCOMPAT_DIRTY);
        validate_features(path, &masked, false)?;
    } else {
        validate_features(path, &h, writable)?;
    }
    validate_tables(path, &h, file_len)?;
    Ok((h, file_len))
}

impl Image {
    /// Open the qcow2 file at `path`, read-only or read-write.
    ///
    /// Order of checks (nothing beyond cluster 0 is read before they pass):
    /// magic and version (header bytes 0-7), `cluster_bits` 9..=21,
    /// `refcount_order` 0..=6, `header_length`, header extensions and backing
    /// name inside cluster 0, encryption, external data file, extended L2,
    /// unknown incompatible bits, compression type (zlib/zstd), corrupt bit,
    /// dirty bit (only when `writable`), then L1/refcount/snapshot tables
    /// inside the file and within qemu's size limits. Only then is the L1
    /// table read. When `writable`, unknown auto-clear bits are cleared in the
    /// header (qcow2 spec, header v3 bytes 88-95) before any write.
    ///
    /// The backing file is *not* opened: use [`super::chain::Chain::open`].
    ///
    /// Errors: [`ImageError::Io`] and every header/feature variant of
    /// [`ImageError`].
    pub fn open(path: &Path, writable: bool) -> Result<Image> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(writable)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let (header, file_len) = read_header(path, &file, writable)?;
        let mut l1_bytes = vec![0u8; header.l1_size as usize * 8];
        read_zero_fill(&file, path, &mut l1_bytes, header.l1_table_offset)?;
        let l1 = decode_table(&l1_bytes);
        let mut img = Image {
            path: path.to_path_buf(),
            file,
            header,
            writable,
            file_len,
            l1,
            cache: Mutex::new(ReadCache::default()),
            dirty_l1: BTreeSet::new(),
            dirty_l2: HashMap::new(),
            rc: None,
            pending_free: Vec::new(),
        };
        if writable {
            img.prepare_for_write()?;
        }
        Ok(img)
    }

    /// Path the image was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Virtual disk size in bytes (qcow2 spec, header bytes 24-31).
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    /// Cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// Backing file name as stored in the header (relative names are
    /// relative to this image's directory), if any.
    pub fn backing_file(&self) -> Option<&str> {
        self.header.backing_file.as_deref()
    }

    /// Backing format from the header extension, if present and known.
    /// `Some(Err(name))` when present but neither "raw" nor "qcow2".
    pub fn backing_format(&self) -> Option<std::result::Result<BackingFormat, String>> {
        self.header.backing_format().map(|f| match f.as_str() {
            "raw" => Ok(BackingFormat::Raw),
            "qcow2" => Ok(BackingFormat::Qcow2),
            _ => Err(f),
        })
    }

    /// Whether the image was opened for writing.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn lock_cache(&self) -> MutexGuard<'_, ReadCache> {
        // A poisoned lock only means a panic elsewhere; the cache is still
        // structurally valid (worst case: stale entries are dropped below).
        match self.cache.lock() {
            Ok(g) => g,
            Err(p) => {
                let mut g = p.into_inner();
                g.l2.clear();
                g.compressed = None;
                g
            }
        }
    }

    pub(crate) fn l2_entries(&self) -> u64 {
        self.header.cluster_size() / 8
    }

    /// Validate an L2 table offset taken from the L1 table.
    pub(crate) fn check_l2_offset(&self, l2_off: u64) -> Result<()> {
        let cs = self.cluster_size();
        if !l2_off.is_multiple_of(cs) {
            return Err(corrupt(
                &self.path,
                format!("L2 table offset {l2_off:#x} is not cluster aligned"),
            ));
        }
        if l2_off.checked_add(cs).is_none_or(|e| e > self.file_len) {
            return Err(corrupt(
                &self.path,
                format!("L2 table at {l2_off:#x} lies past the end of the file"),
            ));
        }
        Ok(())
    }

    /// Load an L2 table from disk (bypassing caches).
    pub(crate) fn load_l2(&self, l2_off: u64) -> Result<Vec<u64>> {
        self.check_l2_offset(l2_off)?;
        let mut b = vec![0u8; self.cluster_size() as usize];
        read_zero_fill(&self.file, &self.path, &mut b, l2_off)?;
        Ok(decode_table(&b))
    }

    /// Raw L2 entry for guest cluster index `gc`, or 0 when unmapped.
    pub(crate) fn l2_entry(&self, gc: u64) -> Result<u64> {
        let per = self.l2_entries();
        let l1i = gc / per;
        let l2i = (gc % per) as usize;
        let Some(&l1e) = self.l1.get(l1i as usize) else {
            return Ok(0);
        };
        let l2_off = l1e & L1E_OFFSET_MASK;
        if l2_off == 0 {
            return Ok(0);
        }
        if let Some(t) = self.dirty_l2.get(&l2_off) {
            return Ok(t[l2i]);
        }
        {
            let c = self.lock_cache();
            if let Some(t) = c.l2.get(&l2_off) {
                return Ok(t[l2i]);
            }
        }
        let t = Arc::new(self.load_l2(l2_off)?);
        let v = t[l2i];
        let mut c = self.lock_cache();
        if (c.l2.len() as u64 + 1) * self.cluster_size() > L2_CACHE_BYTES {
            c.l2.clear();
        }
        c.l2.insert(l2_off, t);
        Ok(v)
    }

    /// Drop a table from the clean cache (it is about to be modified).
    pub(crate) fn forget_clean_l2(&self, l2_off: u64) {
        self.lock_cache().l2.remove(&l2_off);
    }

    /// State of the guest cluster containing byte `guest_off` in this image.
    ///
    /// Errors: [`ImageError::Corrupt`] for invalid L1/L2 entries,
    /// [`ImageError::Io`].
    pub fn cluster_state(&self, guest_off: u64) -> Result<ClusterState> {
        let gc = guest_off >> self.header.cluster_bits;
        let e = self.l2_entry(gc)?;
        decode_l2(e, self.header.cluster_bits, self.header.version)
            .map_err(|r| corrupt(&self.path, format!("guest cluster {gc}: {r}")))
    }

    /// Decompress the compressed cluster at `host`/`len` into `out` (one
    /// cluster), using a one-entry cache.
    pub(crate) fn read_compressed(&self, host: u64, len: u64, out: &mut [u8]) -> Result<()> {
        {
            let c = self.lock_cache();
            if let Some((h, data)) = &c.compressed {
                if *h == host && data.len() == out.len() {
                    out.copy_from_slice(data);
                    return Ok(());
                }
            }
        }
        let kind = self
            .header
            .compression()
            .ok_or_else(|| ImageError::UnsupportedCompression {
                path: self.path.clone(),
                compression_type: self.header.compression_type,
            })?;
        // len <= (2^13 sectors) * 512 = 4 MiB for 2 MiB clusters.
        let mut input = vec![0u8; len as usize];
        read_zero_fill(&self.file, &self.path, &mut input, host)?;
        decompress_cluster(kind, &input, out)
            .map_err(|r| corrupt(&self.path, format!("compressed cluster at {host:#x}: {r}")))?;
        self.lock_cache().compressed = Some((host, out.to_vec()));
        Ok(())
    }

    /// Read `buf.len()` guest bytes at `offset` from this image. Ranges this
    /// image does not allocate are passed to `below(buf, offset)` (the backing
    /// chain); ranges past the virtual size read as zeros.
    ///
    /// Errors: [`ImageError::Corrupt`], [`ImageError::Io`], and whatever
    /// `below` returns.
    pub fn read_local(
        &self,
        buf: &mut [u8],
        offset: u64,
        below: &mut dyn FnMut(&mut [u8], u64) -> Result<()>,
    ) -> Result<()> {
        let size = self.header.size;
        let inside = if offset >= size {
            0
        } else {
            (size - offset).min(buf.len() as u64) as usize
        };
        buf[inside..].fill(0);
        let buf = &mut buf[..inside];
        let cs = self.cluster_size();
        let mut pos = 0usize;
        let mut cbuf: Vec<u8> = Vec::new();
        let mut carried: Option<ClusterState> = None;
        // Runs are coalesced: contiguous host data, zeros, unallocated.
        while pos < buf.len() {
            let off = offset + pos as u64;
            let in_cl = off % cs;
            let n = ((cs - in_cl) as usize).min(buf.len() - pos);
            let st = match carried.take() {
                Some(st) => st,
                None => self.cluster_state(off)?,
            };
            // Extend the run while the next clusters continue it.
            let mut run = n;
            while !matches!(st, ClusterState::Compressed { .. }) && pos + run < buf.len() {
                let next_off = offset + (pos + run) as u64;
                let nst = self.cluster_state(next_off)?;
                let cont = match (st, nst) {
                    (ClusterState::Unallocated, ClusterState::Unallocated) => true,
                    (ClusterState::Zero { .. }, ClusterState::Zero { .. }) => true,
                    (ClusterState::Data { host: h0, .. }, ClusterState::Data { host: h1, .. }) => {
                        Some(h1) == h0.checked_add(in_cl + run as u64)
                    }
                    _ => false,
                };
                if !cont {
                    carried = Some(nst);
                    break;
                }
                run += (cs as usize).min(buf.len() - pos - run);
            }
            let dst = &mut buf[pos..pos + run];
            match st {
                ClusterState::Unallocated => below(dst, off)?,
                ClusterState::Zero { .. } => dst.fill(0),
                ClusterState::Data { host, .. } => {
                    read_zero_fill(&self.file, &self.path, dst, host + in_cl)?;
                }
                ClusterState::Compressed { host, len } => {
                    cbuf.resize(cs as usize, 0);
                    self.read_compressed(host, len, &mut cbuf)?;
                    dst.copy_from_slice(&cbuf[in_cl as usize..in_cl as usize + run]);
                }
            }
            pos += run;
        }
        Ok(())
    }

    /// Allocation map of this image alone for `len` bytes at `offset`:
    /// coalesced `(offset, length, kind)` extents in bytes. Compressed
    /// clusters are [`LocalKind::Data`]; bytes past the virtual size are
    /// [`LocalKind::Zero`] (they read as zeros and do not fall through).
    ///
    /// Errors: [`ImageError::Corrupt`], [`ImageError::Io`].
    pub fn map_local(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, LocalKind)>> {
        let mut out: Vec<(u64, u64, LocalKind)> = Vec::new();
        let mut push = |o: u64, l: u64, k: LocalKind| {
            if let Some(last) = out.last_mut() {
                if last.2 == k && last.0 + last.1 == o {
                    last.1 += l;
                    return;
                }
            }
            out.push((o, l, k));
        };
        let end = offset.saturating_add(len);
        let size = self.header.size;
        let cs = self.cluster_size();
        let mut off = offset;
        while off < end.min(size) {
            let n = (cs - off % cs).min(end.min(size) - off);
            let k = match self.cluster_state(off)? {
                ClusterState::Unallocated => LocalKind::Unallocated,
                ClusterState::Zero { .. } => LocalKind::Zero,
                ClusterState::Data { .. } | ClusterState::Compressed { .. } => LocalKind::Data,
            };
            push(off, n, k);
            off += n;
        }
        if end > off {
            push(off, end - off, LocalKind::Zero);
        }
        Ok(out)
    }
}
