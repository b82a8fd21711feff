//! Merging layers: `stream` (fold a parent into its single dependant) and
//! `commit` (fold a child into its parent), like qemu's block-stream and
//! block-commit, offline.
//!
//! Crash safety: both copy guest data first (through normal writes, so
//! copy-on-write, refcounts and metadata ordering apply), flush, and change
//! backing pointers last. Every intermediate on-disk state shows the same
//! guest content for every chain that is still in use:
//! * stream copies into the child exactly what the child already reads
//!   through its backing file, so before the final header rewrite the child
//!   reads the same bytes; after it, the copied clusters stand in for the
//!   parent.
//! * commit writes into the parent only ranges the child overrides, so the
//!   child's chain (and any image backed by the child) reads the same bytes
//!   at every point. The parent's own content changes: it must have no other
//!   dependant and must not be a snapshot anybody reads directly.

use std::path::{Component, Path, PathBuf};

use super::chain::{Chain, ExtentKind, Layer, OpenOptions};
use super::error::{io_err, ImageError, Result};
use super::image::{BackingFormat, LocalKind};

/// Bytes copied per read/write while merging.
const COPY_CHUNK: u64 = 1 << 20;
/// Guest bytes mapped at a time.
const MAP_WINDOW: u64 = 1 << 30;

/// Relative path from directory `from_dir` to `to` (both canonical).
fn relative_path(from_dir: &Path, to: &Path) -> PathBuf {
    let f: Vec<Component> = from_dir.components().collect();
    let t: Vec<Component> = to.components().collect();
    let common = f.iter().zip(t.iter()).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c.as_os_str());
    }
    out
}

fn copy_range(chain: &mut Chain, from: usize, off: u64, len: u64, buf: &mut [u8]) -> Result<()> {
    let mut pos = 0u64;
    while pos < len {
        let n = COPY_CHUNK.min(len - pos);
        let b = &mut buf[..n as usize];
        chain.read_from(from, b, off + pos)?;
        chain.write_at(b, off + pos)?;
        pos += n;
    }
    Ok(())
}

/// Write zeros over a range with explicit zero data, so they are stored even
/// where the current backing chain already reads zeros (it is about to be
/// replaced). v3 images get zero clusters for whole clusters; v2 images get
/// zero-filled data clusters.
fn write_zero_range(chain: &mut Chain, off: u64, len: u64, zeros: &[u8]) -> Result<()> {
    let mut pos = 0u64;
    while pos < len {
        let n = (zeros.len() as u64).min(len - pos);
        chain.write_at(&zeros[..n as usize], off + pos)?;
        pos += n;
    }
    Ok(())
}

/// Local map of layer `idx` of `chain` (raw layers are data within their
/// length and unallocated beyond).
fn local_map(chain: &Chain, idx: usize, off: u64, len: u64) -> Result<Vec<(u64, u64, LocalKind)>> {
    match &chain.layers()[idx] {
        Layer::Qcow2(img) => img.map_local(off, len),
        Layer::Raw(r) => {
            let end = off + len;
            let de = end.min(r.len()).max(off);
            let mut v = Vec::new();
            if de > off {
                v.push((off, de - off, LocalKind::Data));
            }
            if end > de {
                v.push((de, end - de, LocalKind::Unallocated));
            }
            Ok(v)
        }
    }
}

/// Stream: fold the parent (backing file) of the image at `child` into the
/// child, then rebase the child onto the parent's own backing file (or no
/// backing). Afterwards the child no longer references the parent, which
/// the caller may delete if nothing else uses it.
///
/// Every range the child does not allocate and the parent itself allocates
/// is copied into the child; ranges where the parent reads as zeros (zero
/// clusters, past its virtual size) while the parent's backing would provide
/// data are written as zeros. The new backing name is the grandparent's path
/// relative to the child's directory, with the grandparent's format.
///
/// `opts` gives the allowed root and depth limit; the child is opened
/// writable regardless of `opts.writable`.
///
/// Errors: [`ImageError::InvalidArgument`] when the child has no backing
/// file; all errors of [`Chain::open`], [`Chain::write_at`] and
/// [`super::rebase_unsafe`].
pub fn stream(child: &Path, opts: &OpenOptions) -> Result<()> {
    let mut chain = Chain::open(child, &opts.clone().writable(true))?;
    if chain.layers().len() < 2 {
        return Err(ImageError::InvalidArgument {
            path: child.to_path_buf(),
            reason: "the image has no backing file to stream".to_string(),
        });
    }
    let v = chain.virtual_size();
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let zeros = vec![0u8; COPY_CHUNK as usize];
    let mut woff = 0u64;
    while woff < v {
        let wlen = MAP_WINDOW.min(v - woff);
        let child_map = local_map(&chain, 0, woff, wlen)?;
        for (co, cl, ck) in child_map {
            if ck != LocalKind::Unallocated {
                continue;
            }
            for (po, pl, pk) in local_map(&chain, 1, co, cl)? {
                match pk {
                    LocalKind::Data => copy_range(&mut chain, 1, po, pl, &mut buf)?,
                    LocalKind::Zero => {
                        for e in chain.map_from(2, po, pl)? {
                            if matches!(e.kind, ExtentKind::Data(_)) {
                                write_zero_range(&mut chain, e.offset, e.length, &zeros)?;
                            }
                        }
                    }
                    LocalKind::Unallocated => {}
                }
            }
        }
        woff += wlen;
    }
    chain.flush()?;
    // New backing: the grandparent, relative to the child's directory.
    let new_backing: Option<(String, BackingFormat)> = match chain.layers().get(2) {
        None => None,
        Some(gp) => {
            let child_canon =
                std::fs::canonicalize(child).map_err(io_err(child, "resolve path"))?;
            let dir = child_canon.parent().unwrap_or(Path::new("/"));
            let rel = relative_path(dir, gp.path());
            let name =
                rel.to_str()
                    .map(str::to_string)
                    .ok_or_else(|| ImageError::InvalidArgument {
                        path: child.to_path_buf(),
                        reason: format!("backing path {} is not UTF-8", rel.display()),
                    })?;
            Some((name, gp.format()))
        }
    };
    let top = match &mut chain.layers[0] {
        Layer::Qcow2(i) => i,
        Layer::Raw(_) => unreachable!("top layer is always qcow2"),
    };
    top.set_backing(new_backing.as_ref().map(|(n, f)| (n.as_str(), *f)))?;
    chain.layers.remove(1);
    Ok(())
}

/// Commit: copy every range the image at `child` allocates (data and zero
/// clusters) into its parent (backing file), which must be qcow2 with a
/// virtual size at least the child's; past the child's size the parent is
/// zeroed where it has data, so it then reads exactly like the child.
/// Returns the parent's canonical path. The caller then rebases every
/// dependant of the child onto the parent ([`super::rebase_unsafe`]) and may
/// delete the child.
///
/// Precondition (not checkable here): nothing but the child depends on the
/// parent, since the parent's content changes.
///
/// Errors: [`ImageError::InvalidArgument`] (no backing), [`ImageError::Unsupported`]
/// (raw parent, parent smaller than the child); errors of [`Chain::open`] and
/// [`Chain::write_at`].
pub fn commit(child: &Path, opts: &OpenOptions) -> Result<PathBuf> {
    let cchain = Chain::open(child, &opts.clone().writable(false))?;
    let parent_path = match cchain.layers().get(1) {
        None => {
            return Err(ImageError::InvalidArgument {
                path: child.to_path_buf(),
                reason: "the image has no backing file to commit into".to_string(),
            })
        }
        Some(Layer::Raw(r)) => {
            return Err(ImageError::Unsupported {
                path: r.path().to_path_buf(),
                reason: "committing into a raw backing file is not supported".to_string(),
            })
        }
        Some(Layer::Qcow2(p)) => p.path().to_path_buf(),
    };
    let mut pchain = Chain::open(&parent_path, &opts.clone().writable(true))?;
    let cv = cchain.virtual_size();
    let pv = pchain.virtual_size();
    if pv < cv {
        return Err(ImageError::Unsupported {
            path: parent_path,
            reason: format!(
                "the parent ({pv} bytes) is smaller than the child ({cv} bytes); resize it first"
            ),
        });
    }
    let mut buf = vec![0u8; COPY_CHUNK as usize];
    let mut woff = 0u64;
    while woff < pv {
        let wlen = MAP_WINDOW.min(pv - woff);
        let cimg = cchain.top();
        for (o, l, k) in cimg.map_local(woff, wlen)? {
            match k {
                LocalKind::Data => {
                    let mut pos = 0u64;
                    while pos < l {
                        let n = COPY_CHUNK.min(l - pos);
                        let b = &mut buf[..n as usize];
                        cchain.read_from(0, b, o + pos)?;
                        pchain.write_at(b, o + pos)?;
                        pos += n;
                    }
                }
                LocalKind::Zero => {
                    for e in pchain.map(o, l)? {
                        if matches!(e.kind, ExtentKind::Data(_)) {
                            pchain.write_zeroes(e.offset, e.length)?;
                        }
                    }
                }
                LocalKind::Unallocated => {}
            }
        }
        woff += wlen;
    }
    pchain.flush()?;
    Ok(parent_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths() {
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/b/c.qcow2")),
            PathBuf::from("c.qcow2")
        );
        assert_eq!(
            relative_path(Path::new("/a/b"), Path::new("/a/x/c.qcow2")),
            PathBuf::from("../x/c.qcow2")
        );
    }
}
