//! The qcow2 backend's store layout and the small file operations it is built from.
//!
//! ```text
//! <home>/storage/qcow2/
//!   base/<sha256>.qcow2    content-addressed standalone images that boxes were created from
//!   layers/<ulid>.qcow2    overlays: live disks (read-write by a VMM) and sealed layers
//!                          (immutable once anything backs onto them or a snapshot holds them)
//! ```
//!
//! Directories are created with mode 0700 and files with mode 0600 ([`crate::private`]).
//!
//! Backing names are always relative (`<ulid>.qcow2` within `layers/`, `../base/<hash>.qcow2`
//! for a base), so a home can be moved; every chain is opened with the store as its allowed
//! root, so a backing name can never reach outside the store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use boxlite_api::{Error, Result, StorageContext};
use sha2::{Digest, Sha256};

use crate::image::{create_overlay_staged, BackingFormat, Chain, FlattenPlan, OpenOptions};

/// Paths of the qcow2 store.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    pub root: PathBuf,
    pub max_chain_depth: usize,
}

impl Store {
    pub fn new(ctx: &StorageContext, max_chain_depth: usize) -> Store {
        Store {
            root: ctx.store.clone(),
            max_chain_depth,
        }
    }

    pub fn base_dir(&self) -> PathBuf {
        self.root.join("base")
    }

    pub fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    pub fn ensure_dirs(&self) -> Result<()> {
        for d in [self.base_dir(), self.layers_dir()] {
            crate::private::dir_builder()
                .recursive(true)
                .create(&d)
                .map_err(|e| Error::io(&d, e))?;
        }
        Ok(())
    }

    /// Options for opening any chain inside the store.
    pub fn open_options(&self) -> OpenOptions {
        OpenOptions::new()
            .allowed_root(Some(self.root.clone()))
            .max_depth(self.max_chain_depth)
    }

    /// Open the chain whose top is `path` (absolute), read-only.
    pub fn open(&self, path: &Path) -> Result<Chain> {
        Ok(Chain::open(path, &self.open_options())?)
    }

    /// A fresh overlay path in `layers/`.
    pub fn new_layer_path(&self) -> PathBuf {
        self.layers_dir().join(format!(
            "{}.qcow2",
            ulid::Ulid::new().to_string().to_lowercase()
        ))
    }

    /// Create a thin overlay in `layers/` backing onto `backing` (absolute path of a file in the
    /// store), with the backing's virtual size. Returns the new overlay's absolute path.
    pub fn overlay_on(&self, backing: &Path) -> Result<PathBuf> {
        // Only the backing's own header is needed for its size; its chain was validated
        // when it was created and is validated again whenever the overlay is opened.
        let size = crate::image::Image::open(backing, false)?.virtual_size();
        let path = self.new_layer_path();
        let name = self.backing_name(backing)?;
        create_overlay_staged(&path, Some((&name, BackingFormat::Qcow2)), size)?;
        Ok(path)
    }

    /// The relative backing name of `target` as seen from a file in `layers/`.
    fn backing_name(&self, target: &Path) -> Result<String> {
        let rel = target
            .strip_prefix(&self.root)
            .map_err(|_| Error::corrupt(target, "backing file is outside the qcow2 store"))?;
        let rel = rel
            .to_str()
            .ok_or_else(|| Error::corrupt(target, "store path is not UTF-8"))?;
        Ok(match rel.strip_prefix("layers/") {
            Some(file) => file.to_owned(),
            None => format!("../{rel}"),
        })
    }

    /// Flatten the chain at `top` into a new standalone image in `layers/`; returns its path.
    pub fn flatten_into_layer(&self, top: &Path) -> Result<PathBuf> {
        let chain = self.open(top)?;
        let dest = self.new_layer_path();
        write_plan_staged(&chain, &dest)?;
        Ok(dest)
    }

    /// Every regular file in `base/` and `layers/` (staging names included: they are garbage
    /// unless an operation in flight owns them, which the runtime's GC lock guarantees).
    pub fn files(&self) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for dir in [self.base_dir(), self.layers_dir()] {
            let rd = match fs::read_dir(&dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&dir, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| Error::io(&dir, e))?;
                if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    out.push(entry.path());
                }
            }
        }
        Ok(out)
    }
}

/// Write the flattened image of `chain` to `dest` through a temporary name (mode 0600), fsync,
/// rename.
/// Returns the SHA-256 of the written bytes.
pub(crate) fn write_plan_staged(chain: &Chain, dest: &Path) -> Result<[u8; 32]> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::corrupt(dest, "destination has no directory"))?;
    let tmp = dir.join(format!(
        ".{}.partial",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("flat")
    ));
    let result = (|| {
        let plan = FlattenPlan::new(chain)?;
        let file = crate::private::file_options()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(&tmp, e))?;
        let mut w = HashingWriter {
            inner: io::BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
        };
        plan.write_to(&mut w)?;
        let file = w
            .inner
            .into_inner()
            .map_err(|e| Error::io(&tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        let digest: [u8; 32] = w.hasher.finalize().into();
        fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
        sync_dir(dir)?;
        Ok(digest)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// fsync a directory so renames into it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Bytes allocated on the host for `path` (st_blocks * 512).
pub(crate) fn allocated_bytes(path: &Path) -> Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let md = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(md.blocks() * 512)
}
