//! Backing chains: explicit, policy-checked opening of every backing file,
//! guest reads through the chain, allocation maps, and writes to the top.
//!
//! Backing resolution (qcow2 spec, header bytes 8-19 and extension
//! 0xe2792aca):
//! * a relative backing name is resolved against the directory of the image
//!   that names it (never the process working directory); backing files are
//!   then opened by their canonical path, so their own relative backing names
//!   resolve against the directory the file really lives in;
//! * names using qemu protocol syntax (`json:...`, `proto://...`) are refused;
//! * the backing format comes from the backing-format extension ("raw" or
//!   "qcow2", anything else is refused). When the extension is absent the
//!   backing file is probed: qcow2 if its first 4 bytes are the qcow2 magic,
//!   otherwise raw. (qemu probes more formats; we only know these two.)
//! * loops are detected with the set of canonical paths, depth is capped by
//!   [`OpenOptions::max_depth`], and every backing file's canonical path must
//!   be inside [`OpenOptions::allowed_root`] when one is set.

use std::collections::HashSet;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::error::{io_err, ImageError, Result};
use super::header::QCOW2_MAGIC;
use super::image::{BackingFormat, Image, LocalKind};
use super::io::is_zero;
use super::raw::RawFile;
use super::table::ClusterState;

/// Default for [`OpenOptions::max_depth`].
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// How to open a chain.
#[derive(Debug, Clone)]
pub struct OpenOptions {
    /// Open the top image read-write (backing files are always read-only).
    pub writable: bool,
    /// When set, every backing file must canonicalize to a path inside this
    /// directory (itself canonicalized). `None` = no restriction. The top
    /// image is not checked: the caller chose it.
    pub allowed_root: Option<PathBuf>,
    /// Maximum number of backing files below the top (default 256).
    pub max_depth: usize,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            writable: false,
            allowed_root: None,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

impl OpenOptions {
    /// Read-only options with defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Set [`OpenOptions::writable`].
    pub fn writable(mut self, w: bool) -> Self {
        self.writable = w;
        self
    }
    /// Set [`OpenOptions::allowed_root`].
    pub fn allowed_root(mut self, root: Option<PathBuf>) -> Self {
        self.allowed_root = root;
        self
    }
    /// Set [`OpenOptions::max_depth`].
    pub fn max_depth(mut self, d: usize) -> Self {
        self.max_depth = d;
        self
    }
}

/// One file of a chain.
#[derive(Debug)]
pub enum Layer {
    /// A qcow2 image.
    Qcow2(Box<Image>),
    /// A raw file (always the bottom of a chain).
    Raw(RawFile),
}

impl Layer {
    /// Path the layer was opened with (canonical for backing files).
    pub fn path(&self) -> &Path {
        match self {
            Layer::Qcow2(i) => i.path(),
            Layer::Raw(r) => r.path(),
        }
    }

    /// Guest size in bytes: the qcow2 virtual size, or the raw file length.
    pub fn virtual_size(&self) -> u64 {
        match self {
            Layer::Qcow2(i) => i.virtual_size(),
            Layer::Raw(r) => r.len(),
        }
    }

    /// The qcow2 image, if this layer is one.
    pub fn as_qcow2(&self) -> Option<&Image> {
        match self {
            Layer::Qcow2(i) => Some(i),
            Layer::Raw(_) => None,
        }
    }

    /// The format of this layer.
    pub fn format(&self) -> BackingFormat {
        match self {
            Layer::Qcow2(_) => BackingFormat::Qcow2,
            Layer::Raw(_) => BackingFormat::Raw,
        }
    }
}

/// Allocation kind of an extent returned by [`Chain::map`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Data provided by layer `n` (0 = top).
    Data(usize),
    /// Reads as zeros because a layer says so (zero cluster, or past the
    /// virtual size of a qcow2 backing file).
    Zero,
    /// No layer provides it: reads as zeros.
    Unallocated,
}

/// A guest byte range and how it is provided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Guest offset in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// Who provides it.
    pub kind: ExtentKind,
}

/// An opened backing chain: layer 0 is the top image, the last is the base.
#[derive(Debug)]
pub struct Chain {
    pub(crate) layers: Vec<Layer>,
}

fn canonical(path: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(path).map_err(io_err(path, "resolve path"))
}

/// Resolve `name` against the directory of `image` (qcow2 semantics).
pub fn resolve_backing(image: &Path, name: &str) -> PathBuf {
    let n = Path::new(name);
    if n.is_absolute() {
        return n.to_path_buf();
    }
    match image.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.join(n),
        _ => Path::new(".").join(n),
    }
}

fn probe_format(path: &Path) -> Result<BackingFormat> {
    let mut f = File::open(path).map_err(io_err(path, "open backing file"))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, "read backing file")(e)),
        }
    }
    Ok(if got == 4 && magic == QCOW2_MAGIC {
        BackingFormat::Qcow2
    } else {
        BackingFormat::Raw
    })
}

/// Read from `layers[0..]`: unallocated ranges fall through; past the end
/// of the list everything is zero.
pub(crate) fn read_layers(layers: &[Layer], buf: &mut [u8], offset: u64) -> Result<()> {
    match layers.first() {
        None => {
            buf.fill(0);
            Ok(())
        }
        Some(Layer::Raw(r)) => r.read_at(buf, offset),
        Some(Layer::Qcow2(img)) => {
            let rest = &layers[1..];
            img.read_local(buf, offset, &mut |b, o| read_layers(rest, b, o))
        }
    }
}

fn push_extent(out: &mut Vec<Extent>, offset: u64, length: u64, kind: ExtentKind) {
    if length == 0 {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.kind == kind && last.offset + last.length == offset {
            last.length += length;
            return;
        }
    }
    out.push(Extent {
        offset,
        length,
        kind,
    });
}

pub(crate) fn map_layers(
    layers: &[Layer],
    first_index: usize,
    offset: u64,
    len: u64,
    out: &mut Vec<Extent>,
) -> Result<()> {
    match layers.first() {
        None => push_extent(out, offset, len, ExtentKind::Unallocated),
        Some(Layer::Raw(r)) => {
            let end = offset + len;
            let data_end = end.min(r.len()).max(offset);
            push_extent(
                out,
                offset,
                data_end - offset,
                ExtentKind::Data(first_index),
            );
            push_extent(out, data_end, end - data_end, ExtentKind::Unallocated);
        }
        Some(Layer::Qcow2(img)) => {
            for (o, l, k) in img.map_local(offset, len)? {
                match k {
                    LocalKind::Data => push_extent(out, o, l, ExtentKind::Data(first_index)),
                    LocalKind::Zero => push_extent(out, o, l, ExtentKind::Zero),
                    LocalKind::Unallocated => map_layers(&layers[1..], first_index + 1, o, l, out)?,
                }
            }
        }
    }
    Ok(())
}

impl Chain {
    /// Open the qcow2 image at `path` and, explicitly, its whole backing
    /// chain (see the module docs for resolution and policy).
    ///
    /// Errors: every [`Image::open`] error for each qcow2 layer;
    /// [`ImageError::Io`] for missing backing files (the path is the
    /// resolved backing path); [`ImageError::BackingLoop`],
    /// [`ImageError::ChainTooDeep`], [`ImageError::BackingOutsideRoot`],
    /// [`ImageError::UnsupportedBacking`].
    pub fn open(path: &Path, opts: &OpenOptions) -> Result<Chain> {
        let top = Image::open(path, opts.writable)?;
        let root = match &opts.allowed_root {
            Some(r) => Some(canonical(r)?),
            None => None,
        };
        let mut seen = HashSet::new();
        seen.insert(canonical(path)?);
        let mut layers = vec![Layer::Qcow2(Box::new(top))];
        while let Some(Layer::Qcow2(img)) = layers.last() {
            let Some(name) = img.backing_file() else {
                break;
            };
            let img_path = img.path().to_path_buf();
            if layers.len() > opts.max_depth {
                return Err(ImageError::ChainTooDeep {
                    path: img_path,
                    max: opts.max_depth,
                });
            }
            if name.starts_with("json:") || name.contains("://") {
                return Err(ImageError::UnsupportedBacking {
                    path: img_path,
                    what: format!("name {name:?} (protocol syntax)"),
                });
            }
            let resolved = resolve_backing(&img_path, name);
            let canon =
                std::fs::canonicalize(&resolved).map_err(io_err(&resolved, "open backing file"))?;
            if let Some(root) = &root {
                if !canon.starts_with(root) {
                    return Err(ImageError::BackingOutsideRoot {
                        path: img_path,
                        backing: canon,
                        root: root.clone(),
                    });
                }
            }
            if !seen.insert(canon.clone()) {
                return Err(ImageError::BackingLoop {
                    path: img_path,
                    backing: canon,
                });
            }
            let fmt = match img.backing_format() {
                Some(Ok(f)) => f,
                Some(Err(other)) => {
                    return Err(ImageError::UnsupportedBacking {
                        path: img_path,
                        what: format!("format {other:?}"),
                    })
                }
                None => probe_format(&canon)?,
            };
            let layer = match fmt {
                BackingFormat::Raw => Layer::Raw(RawFile::open(&canon)?),
                BackingFormat::Qcow2 => Layer::Qcow2(Box::new(Image::open(&canon, false)?)),
            };
            layers.push(layer);
        }
        Ok(Chain { layers })
    }

    /// The layers, top first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// The top image.
    pub fn top(&self) -> &Image {
        match &self.layers[0] {
            Layer::Qcow2(i) => i,
            // Chain::open always puts a qcow2 image on top.
            Layer::Raw(_) => unreachable!("top layer is always qcow2"),
        }
    }

    fn top_mut(&mut self) -> &mut Image {
        match &mut self.layers[0] {
            Layer::Qcow2(i) => i,
            Layer::Raw(_) => unreachable!("top layer is always qcow2"),
        }
    }

    /// Guest-visible size in bytes (the top image's virtual size).
    pub fn virtual_size(&self) -> u64 {
        self.top().virtual_size()
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.virtual_size();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(ImageError::InvalidArgument {
                path: self.top().path().to_path_buf(),
                reason: format!("range {offset}+{len} is beyond the virtual size {size} bytes"),
            });
        }
        Ok(())
    }

    /// Read `buf.len()` guest bytes at byte `offset` through the chain.
    /// Unallocated clusters fall through to the backing file; zero clusters,
    /// ranges past a raw backing's end and past a qcow2 backing's virtual
    /// size read as zeros; zlib and zstd compressed clusters are decompressed.
    ///
    /// Errors: [`ImageError::InvalidArgument`] if the range passes the
    /// virtual size; [`ImageError::Corrupt`]; [`ImageError::Io`].
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        read_layers(&self.layers, buf, offset)
    }

    /// Allocation map of `len` bytes at `offset` (clamped to the virtual
    /// size): coalesced extents, each provided by a layer (`Data(i)`), zero
    /// (`Zero`) or by nobody (`Unallocated`, reads zeros).
    ///
    /// Errors: [`ImageError::Corrupt`], [`ImageError::Io`].
    pub fn map(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let size = self.virtual_size();
        let end = offset.saturating_add(len).min(size);
        let mut out = Vec::new();
        if end > offset {
            map_layers(&self.layers, 0, offset, end - offset, &mut out)?;
        }
        Ok(out)
    }

    /// Allocation map of layers `from..` only (as if layer `from` were the
    /// top), for `len` bytes at `offset`. Layer indexes in the result are
    /// indexes into [`Chain::layers`].
    pub fn map_from(&self, from: usize, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let mut out = Vec::new();
        let layers = self.layers.get(from..).unwrap_or(&[]);
        map_layers(layers, from, offset, len, &mut out)?;
        Ok(out)
    }

    /// Read guest bytes as seen from layer `from` downwards (zeros past each
    /// layer's size; no range check against the top).
    pub fn read_from(&self, from: usize, buf: &mut [u8], offset: u64) -> Result<()> {
        read_layers(self.layers.get(from..).unwrap_or(&[]), buf, offset)
    }

    /// Write `buf` at guest byte `offset` into the top image. Partial
    /// clusters are completed with the old content (copy-on-write from the
    /// backing chain when unallocated); new clusters are appended to the
    /// file; a whole cluster of zeros is stored as a zero cluster on v3
    /// images. Call [`Chain::flush`] to make the writes durable.
    ///
    /// Errors: [`ImageError::ReadOnly`], [`ImageError::InvalidArgument`]
    /// (range past the virtual size), [`ImageError::Corrupt`],
    /// [`ImageError::Unsupported`] (shared clusters), [`ImageError::Io`].
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<()> {
        self.write_impl(Some(buf), offset, buf.len() as u64)
    }

    /// Make `len` guest bytes at `offset` read as zeros: whole clusters
    /// become zero clusters (v3) and partial clusters are written with
    /// zeros.
    ///
    /// Errors: as [`Chain::write_at`].
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<()> {
        self.write_impl(None, offset, len)
    }

    fn write_impl(&mut self, data: Option<&[u8]>, offset: u64, len: u64) -> Result<()> {
        if !self.top().is_writable() {
            return Err(ImageError::ReadOnly {
                path: self.top().path().to_path_buf(),
            });
        }
        self.check_range(offset, len)?;
        let size = self.virtual_size();
        let (top_slice, below) = self.layers.split_at_mut(1);
        let top = match &mut top_slice[0] {
            Layer::Qcow2(i) => i,
            Layer::Raw(_) => unreachable!("top layer is always qcow2"),
        };
        let cs = top.cluster_size();
        let v3 = top.header().version >= 3;
        let mut cl = vec![0u8; cs as usize];
        let zeros = vec![0u8; cs as usize];
        let mut pos = 0u64;
        while pos < len {
            let off = offset + pos;
            let in_cl = off % cs;
            let n = (cs - in_cl).min(len - pos);
            let chunk: &[u8] = match data {
                Some(d) => &d[pos as usize..(pos + n) as usize],
                None => &zeros[..n as usize],
            };
            let gc = off / cs;
            let cl_start = off - in_cl;
            let whole = in_cl == 0 && (n == cs || off + n == size);
            let st = top.cluster_state(off)?;
            if whole && v3 && is_zero(chunk) {
                top.set_zero_cluster(gc)?;
            } else if top.can_write_in_place(st)? {
                if let ClusterState::Data { host, .. } = st {
                    super::io::write_all_at(&top.file, &top.path, chunk, host + in_cl)?;
                }
            } else if matches!(st, ClusterState::Zero { .. } | ClusterState::Unallocated)
                && data.is_none()
                && !v3
                && is_zero_below(below, st, cl_start, cs, size, &mut cl)?
            {
                // v2: the range already reads as zeros; nothing to store.
            } else {
                if !whole {
                    if !top.old_cluster_content(st, &mut cl)? {
                        read_layers(below, &mut cl, cl_start)?;
                    }
                } else {
                    cl.fill(0);
                }
                // Bytes past the virtual size are kept zero.
                if cl_start + cs > size {
                    let keep = (size - cl_start) as usize;
                    cl[keep..].fill(0);
                }
                cl[in_cl as usize..(in_cl + n) as usize].copy_from_slice(chunk);
                top.write_new_cluster(gc, &cl, st)?;
            }
            pos += n;
        }
        Ok(())
    }

    /// Flush the top image (see [`Image::flush`]).
    pub fn flush(&mut self) -> Result<()> {
        self.top_mut().flush()
    }

    /// Consume the chain, flushing the top image.
    pub fn close(mut self) -> Result<()> {
        self.flush()
    }
}

/// For v2 zero writes: does an unallocated cluster already read as zeros?
fn is_zero_below(
    below: &[Layer],
    st: ClusterState,
    cl_start: u64,
    cs: u64,
    size: u64,
    scratch: &mut [u8],
) -> Result<bool> {
    if matches!(st, ClusterState::Zero { .. }) {
        return Ok(true);
    }
    let n = (size - cl_start).min(cs) as usize;
    read_layers(below, &mut scratch[..n], cl_start)?;
    Ok(is_zero(&scratch[..n]))
}
