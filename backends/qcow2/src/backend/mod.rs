//! The external copy-on-write qcow2 storage backend (DESIGN.md section 7), registered as
//! `qcow2`.
//!
//! * A box's live disk is a thin overlay in `layers/` backing onto a sealed layer.
//! * Snapshot = seal: the live overlay becomes an immutable layer (it is not moved or
//!   rewritten) and the box gets a fresh overlay on top. Constant time whatever the disk size.
//! * Restore = a fresh overlay on the snapshot's layer. Clone = seal once, then N overlays on
//!   the sealed layer (`cow = false`: a flattened standalone copy instead).
//! * Remove = nothing is deleted here: the runtime's garbage collector deletes files no root
//!   reaches through [`SnapshotBackend::references`]. Before that, a removed snapshot's layer
//!   with exactly one dependant that is itself a sealed layer is streamed into it (qcow2
//!   "stream"), so the dependant no longer needs it and chains stay short.
//! * Creating a box first imports the given images into `base/`, content-addressed by the
//!   SHA-256 of their flattened standalone form, so boxes made from one image share one file.

mod flat;

pub use flat::FlatChain;
mod store;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxlite_api::{
    async_trait, BoxId, Capabilities, Capture, CloneOutcome, CloneSource, DiskRole, DiskSet,
    DiskSource, Error, Factory, FlatDisk, PluginConfig, Registration, Release, Result, Roots,
    SnapshotBackend, StorageContext, Usage,
};
use serde::Deserialize;

use crate::image::{stream, Chain, OpenOptions, DEFAULT_MAX_DEPTH};
use store::{allocated_bytes, write_plan_staged, Store};

/// Settings of the `qcow2` plugin (`[plugin.qcow2]` in config.toml).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Qcow2Settings {
    /// Longest backing chain the backend opens (files below the top). Default 256.
    pub max_chain_depth: usize,
}

impl Default for Qcow2Settings {
    fn default() -> Self {
        Qcow2Settings {
            max_chain_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// The qcow2 external-COW backend.
#[derive(Debug, Clone, Default)]
pub struct Qcow2Backend {
    settings: Qcow2Settings,
}

impl Qcow2Backend {
    /// A backend with `settings`.
    pub fn new(settings: Qcow2Settings) -> Self {
        Qcow2Backend { settings }
    }

    fn store(&self, ctx: &StorageContext) -> Store {
        Store::new(ctx, self.settings.max_chain_depth)
    }
}

boxlite_api::inventory::submit! {
    Registration {
        name: "qcow2",
        description: "external qcow2 copy-on-write layers (in-process qcow2, constant-time snapshots)",
        factory: Factory::Storage(|cfg: &PluginConfig| {
            let settings: Qcow2Settings = cfg.parse("qcow2")?;
            Ok(Arc::new(Qcow2Backend::new(settings)))
        }),
    }
}

/// Run blocking file work off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::config(format!("internal error: storage task failed: {e}")))?
}

fn rel(ctx: &StorageContext, abs: &Path) -> Result<PathBuf> {
    ctx.relative(abs)
}

fn for_roles(mut f: impl FnMut(DiskRole) -> Result<PathBuf>) -> Result<DiskSet> {
    DiskSet::try_from_fn(&mut f)
}

#[async_trait]
impl SnapshotBackend for Qcow2Backend {
    fn name(&self) -> &str {
        "qcow2"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            cow_clone: true,
            constant_time_snapshot: true,
            needs_filesystem: false,
        }
    }

    async fn probe(&self, ctx: &StorageContext) -> Result<()> {
        let store = self.store(ctx);
        blocking(move || {
            store.ensure_dirs()?;
            // Prove the store takes a real overlay: create, open, remove.
            let probe = store.new_layer_path();
            crate::image::create_image(&probe, 1 << 20)?;
            let opened = store.open(&probe).map(|_| ());
            let _ = std::fs::remove_file(&probe);
            opened
        })
        .await
    }

    async fn create_disks(
        &self,
        ctx: &StorageContext,
        _box_id: &BoxId,
        source: &DiskSource,
    ) -> Result<DiskSet> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let source = source.clone();
        blocking(move || {
            store.ensure_dirs()?;
            // Both images are opened and flattened into staging first: an image the safe
            // open (or a read of its data) refuses leaves the store untouched, whichever
            // disk it is (issue 6, "fail closed, change nothing").
            let mut flat: HashMap<DiskRole, (PathBuf, [u8; 32])> = HashMap::new();
            let staged = for_roles(|role| {
                let input = match role {
                    DiskRole::GuestRootfs => &source.guest_rootfs,
                    DiskRole::Container => &source.container,
                };
                let (f, digest) = flatten_input(&store, &ctx.staging, input)?;
                flat.insert(role, (f.clone(), digest));
                Ok(f)
            });
            let mut made = Vec::new();
            let result = staged.and_then(|_| {
                for_roles(|role| {
                    if !made.is_empty() {
                        boxlite_api::failpoint!("qcow2.between_roles");
                    }
                    let (staged, digest) = flat.get(&role).ok_or_else(|| {
                        Error::config("internal error: a flattened disk is missing")
                    })?;
                    let base = adopt_base(&store, staged, digest)?;
                    let overlay = store.overlay_on(&base)?;
                    made.push(overlay.clone());
                    rel(&ctx, &overlay)
                })
            });
            if result.is_err() {
                for f in made {
                    let _ = std::fs::remove_file(f);
                }
            }
            // Whatever was not moved into base/ (on success: nothing) goes.
            for (f, _) in flat.values() {
                let _ = std::fs::remove_file(f);
            }
            result
        })
        .await
    }

    async fn snapshot(
        &self,
        ctx: &StorageContext,
        _box_id: &BoxId,
        live: &DiskSet,
    ) -> Result<Capture> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let live = live.clone();
        blocking(move || {
            let mut made = Vec::new();
            let result = (|| {
                // The new overlay adds one file to the chain: refuse (changing nothing) rather
                // than make a chain that can no longer be opened.
                let mut walker = ChainWalker::new(&store);
                for (_, p) in live.iter() {
                    let top = ctx.resolve(p);
                    let depth = walker.files(&top)?.len();
                    if depth + 1 > store.max_chain_depth {
                        return Err(Error::Unsupported {
                            what: format!(
                                "a snapshot that would make the backing chain {} files deep \
                                 (max_chain_depth {})",
                                depth + 1,
                                store.max_chain_depth
                            ),
                            path: Some(top),
                            hint: "remove snapshots of the box while it is stopped (their \
                                   layers are merged away), or raise [plugin.qcow2] \
                                   max_chain_depth"
                                .into(),
                        });
                    }
                }
                let new_live = for_roles(|role| {
                    if !made.is_empty() {
                        boxlite_api::failpoint!("qcow2.between_roles");
                    }
                    let sealed = ctx.resolve(live.get(role));
                    let overlay = store.overlay_on(&sealed)?;
                    made.push(overlay.clone());
                    rel(&ctx, &overlay)
                })?;
                Ok(Capture {
                    guest_disk_bytes: allocated_bytes(&ctx.resolve(&live.guest_rootfs))?,
                    container_disk_bytes: allocated_bytes(&ctx.resolve(&live.container))?,
                    snapshot: live.clone(),
                    live: new_live,
                })
            })();
            if result.is_err() {
                for f in made {
                    let _ = std::fs::remove_file(f);
                }
            }
            result
        })
        .await
    }

    async fn restore(
        &self,
        ctx: &StorageContext,
        _box_id: &BoxId,
        snapshot: &DiskSet,
    ) -> Result<DiskSet> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let snapshot = snapshot.clone();
        blocking(move || overlays_on(&store, &ctx, &snapshot)).await
    }

    async fn clone_disks(
        &self,
        ctx: &StorageContext,
        source: &CloneSource,
        dests: &[BoxId],
        cow: bool,
    ) -> Result<CloneOutcome> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let source = source.clone();
        let n = dests.len();
        blocking(move || {
            let (base, seal) = match &source {
                CloneSource::Live { disks, .. } => (disks.clone(), cow),
                CloneSource::Snapshot { disks, .. } => (disks.clone(), false),
            };
            let mut made: Vec<PathBuf> = Vec::new();
            let result = (|| {
                // Sealing the live disks is only needed when clones will back onto them.
                let source_live = if seal {
                    let set = overlays_on(&store, &ctx, &base)?;
                    made.extend(set.iter().map(|(_, p)| ctx.resolve(p)));
                    Some(set)
                } else {
                    None
                };
                let mut clones = Vec::with_capacity(n);
                for _ in 0..n {
                    let set = if cow {
                        overlays_on(&store, &ctx, &base)?
                    } else {
                        for_roles(|role| {
                            let flat = store.flatten_into_layer(&ctx.resolve(base.get(role)))?;
                            rel(&ctx, &flat)
                        })?
                    };
                    made.extend(set.iter().map(|(_, p)| ctx.resolve(p)));
                    clones.push(set);
                }
                Ok(CloneOutcome {
                    source_live,
                    clones,
                })
            })();
            if result.is_err() {
                for f in made {
                    let _ = std::fs::remove_file(f);
                }
            }
            result
        })
        .await
    }

    async fn read_flat(&self, ctx: &StorageContext, disk: &Path) -> Result<Box<dyn FlatDisk>> {
        let store = self.store(ctx);
        let path = ctx.resolve(disk);
        blocking(move || {
            Ok(Box::new(FlatChain::open(&path, &store.open_options())?) as Box<dyn FlatDisk>)
        })
        .await
    }

    async fn adopt_disks(
        &self,
        ctx: &StorageContext,
        _box_id: &BoxId,
        staged: &DiskSource,
    ) -> Result<DiskSet> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let staged = staged.clone();
        blocking(move || {
            store.ensure_dirs()?;
            let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
            let result = for_roles(|role| {
                let from = match role {
                    DiskRole::GuestRootfs => &staged.guest_rootfs,
                    DiskRole::Container => &staged.container,
                };
                // Re-validate under the store's rules: standalone, opens cleanly.
                let chain = Chain::open(
                    from,
                    &OpenOptions::new().allowed_root(Some(store.root.clone())),
                )?;
                if chain.layers().len() != 1 {
                    return Err(Error::corrupt(from, "adopted disks must be standalone"));
                }
                drop(chain);
                let to = store.new_layer_path();
                std::fs::rename(from, &to).map_err(|e| Error::io(&to, e))?;
                moved.push((to.clone(), from.clone()));
                rel(&ctx, &to)
            });
            match result {
                Ok(set) => {
                    store::sync_dir(&store.layers_dir())?;
                    Ok(set)
                }
                Err(e) => {
                    for (to, from) in moved {
                        let _ = std::fs::rename(&to, &from);
                    }
                    Err(e)
                }
            }
        })
        .await
    }

    async fn remove_snapshot(
        &self,
        ctx: &StorageContext,
        snapshot: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release> {
        self.release(ctx, snapshot, remaining).await
    }

    async fn remove_disks(
        &self,
        ctx: &StorageContext,
        live: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release> {
        self.release(ctx, live, remaining).await
    }

    async fn references(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Vec<PathBuf>> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let disks = disks.clone();
        blocking(move || {
            let mut out = Vec::new();
            for (_, p) in disks.iter() {
                out.extend(chain_files(&store, &ctx.resolve(p))?);
            }
            Ok(out)
        })
        .await
    }

    async fn references_all(
        &self,
        ctx: &StorageContext,
        roots: &[DiskSet],
    ) -> Result<HashSet<PathBuf>> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let roots = roots.to_vec();
        blocking(move || {
            let mut walker = ChainWalker::new(&store);
            let mut out = HashSet::new();
            for root in &roots {
                for (_, p) in root.iter() {
                    out.extend(walker.files(&ctx.resolve(p))?);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn stored_files(&self, ctx: &StorageContext) -> Result<Vec<PathBuf>> {
        let store = self.store(ctx);
        blocking(move || store.files()?.into_iter().map(|p| canonical(&p)).collect()).await
    }

    async fn usage(&self, ctx: &StorageContext, disks: &DiskSet) -> Result<Usage> {
        Ok(Usage {
            guest_disk_bytes: allocated_bytes(&ctx.resolve(&disks.guest_rootfs))?,
            container_disk_bytes: allocated_bytes(&ctx.resolve(&disks.container))?,
        })
    }
}

impl Qcow2Backend {
    /// Shared body of remove_snapshot / remove_disks: stream each removed top file into its
    /// single sealed dependant (if it has exactly one), then report the files no remaining
    /// root reaches.
    async fn release(
        &self,
        ctx: &StorageContext,
        removed: &DiskSet,
        remaining: &Roots,
    ) -> Result<Release> {
        let store = self.store(ctx);
        let ctx = ctx.clone();
        let removed = removed.clone();
        let remaining = remaining.clone();
        blocking(move || {
            let live_tops: HashSet<PathBuf> = remaining
                .live
                .iter()
                .flat_map(|d| d.iter().map(|(_, p)| ctx.resolve(p)).collect::<Vec<_>>())
                .map(|p| canonical(&p))
                .collect::<Result<_>>()?;
            for (_, p) in removed.iter() {
                let layer = canonical(&ctx.resolve(p))?;
                let dependants = dependants_of(&store, &layer)?;
                if let [only] = dependants.as_slice() {
                    if !live_tops.contains(only) {
                        tracing::debug!(layer = %layer.display(), into = %only.display(), "streaming removed layer into its single dependant");
                        stream(only, &store.open_options())?;
                    }
                }
            }
            let mut walker = ChainWalker::new(&store);
            let mut reachable = HashSet::new();
            for root in remaining.iter() {
                for (_, p) in root.iter() {
                    reachable.extend(walker.files(&ctx.resolve(p))?);
                }
            }
            let mut delete = Vec::new();
            for (_, p) in removed.iter() {
                for f in walker.files(&ctx.resolve(p))? {
                    if !reachable.contains(&f) && !delete.contains(&f) {
                        delete.push(f);
                    }
                }
            }
            Ok(Release {
                delete_after_commit: delete,
            })
        })
        .await
    }
}

/// Fresh overlays for both roles on `base`'s files; returns the catalog-relative set.
fn overlays_on(store: &Store, ctx: &StorageContext, base: &DiskSet) -> Result<DiskSet> {
    let mut made = Vec::new();
    let result = for_roles(|role| {
        if !made.is_empty() {
            boxlite_api::failpoint!("qcow2.between_roles");
        }
        let overlay = store.overlay_on(&ctx.resolve(base.get(role)))?;
        made.push(overlay.clone());
        rel(ctx, &overlay)
    });
    if result.is_err() {
        for f in made {
            let _ = std::fs::remove_file(f);
        }
    }
    result
}

/// Flatten one user image (qcow2 or raw, any chain) into a standalone qcow2 file in
/// `staging` (the home's staging directory), returning its path and the SHA-256 of its bytes.
/// Nothing is written outside `staging`: the temporary overlay a raw image is read through
/// lives there too.
///
/// Errors: [`Error::Unsupported`] for a file that is not a regular file, or neither qcow2
/// nor a plausible raw disk, or that uses a qcow2 feature the safe open refuses;
/// [`Error::Corrupt`] for a damaged image or chain (loops, depth, unreadable clusters);
/// [`Error::Io`] for a missing image or backing file.
fn flatten_input(store: &Store, staging: &Path, input: &Path) -> Result<(PathBuf, [u8; 32])> {
    // The user's own image may back onto anything the user can read: no allowed root here.
    let opts = OpenOptions::new().max_depth(store.max_chain_depth);
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if !meta.is_file() {
        // A FIFO would block the open below forever; a directory or device is no image.
        return Err(Error::Unsupported {
            what: "an image that is not a regular file".into(),
            path: Some(input.to_owned()),
            hint: "pass a qcow2 image or a raw disk image file".into(),
        });
    }
    let is_qcow2 = {
        use std::io::Read;
        let mut magic = [0u8; 4];
        let mut f = std::fs::File::open(input).map_err(|e| Error::io(input, e))?;
        let n = f.read(&mut magic).map_err(|e| Error::io(input, e))?;
        n == 4 && magic == crate::image::QCOW2_MAGIC
    };
    // A raw image is read through a temporary overlay that backs onto it, so one flatten path
    // serves both formats.
    let mut raw_overlay = None;
    let chain = if is_qcow2 {
        Chain::open(input, &opts)
    } else {
        let ov = staging.join(format!(".raw-{}.qcow2", ulid::Ulid::new()));
        let size = raw_input_size(input)?;
        let name = input.to_str().ok_or_else(|| {
            Error::config(format!("{}: image path is not UTF-8", input.display()))
        })?;
        crate::image::create_overlay(&ov, Some((name, crate::image::BackingFormat::Raw)), size)?;
        raw_overlay = Some(ov.clone());
        Chain::open(&ov, &opts)
    };
    let result = chain.map_err(Error::from).and_then(|chain| {
        for layer in chain.layers().iter().skip(if is_qcow2 { 1 } else { 2 }) {
            tracing::warn!(image = %input.display(), backing = %layer.path().display(),
                "the image has a backing file: its content is copied into the box");
        }
        let tmp = staging.join(format!("import-{}.qcow2", ulid::Ulid::new()));
        write_plan_staged(&chain, &tmp).map(|digest| (tmp, digest))
    });
    if let Some(ov) = raw_overlay {
        let _ = std::fs::remove_file(ov);
    }
    result
}

/// Move a flattened image from staging into `base/` under `digest`, the SHA-256 of its bytes
/// (so boxes made from one image share one file); an identical image already there is reused
/// and the staged copy removed. Returns the path in `base/`.
///
/// Errors: [`Error::Io`] / [`Error::NoSpace`] renaming or removing the file.
fn adopt_base(store: &Store, staged: &Path, digest: &[u8; 32]) -> Result<PathBuf> {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let dest = store.base_dir().join(format!("{hex}.qcow2"));
    if dest.exists() {
        std::fs::remove_file(staged).map_err(|e| Error::io(staged, e))?;
    } else {
        std::fs::rename(staged, &dest).map_err(|e| Error::io(&dest, e))?;
        store::sync_dir(&store.base_dir())?;
    }
    Ok(dest)
}

/// Walks backing chains reading each file's header once (memoized), strictly: a missing or
/// unreadable file, a backing file outside the store, a loop or a chain deeper than the limit
/// is an error, never a shorter answer (the garbage collector relies on that).
struct ChainWalker<'a> {
    store: &'a Store,
    root: PathBuf,
    backing: HashMap<PathBuf, Option<PathBuf>>,
}

impl<'a> ChainWalker<'a> {
    fn new(store: &'a Store) -> Self {
        let root = std::fs::canonicalize(&store.root).unwrap_or_else(|_| store.root.clone());
        ChainWalker {
            store,
            root,
            backing: HashMap::new(),
        }
    }

    /// Canonical paths of the chain whose top is `top`, top first.
    fn files(&mut self, top: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut cur = canonical(top)?;
        loop {
            if out.contains(&cur) {
                return Err(Error::corrupt(&cur, "backing chain loops"));
            }
            if out.len() > self.store.max_chain_depth {
                return Err(Error::corrupt(
                    top,
                    "backing chain is deeper than max_chain_depth",
                ));
            }
            out.push(cur.clone());
            let next = match self.backing.get(&cur) {
                Some(b) => b.clone(),
                None => {
                    let b = strict_backing_of(&cur)?;
                    self.backing.insert(cur.clone(), b.clone());
                    b
                }
            };
            match next {
                None => return Ok(out),
                Some(n) => {
                    if !n.starts_with(&self.root) {
                        return Err(Error::corrupt(
                            &cur,
                            format!("backing file {} is outside the store", n.display()),
                        ));
                    }
                    cur = n;
                }
            }
        }
    }
}

/// The canonical backing file of `file` (None for a standalone image or a raw file).
fn strict_backing_of(file: &Path) -> Result<Option<PathBuf>> {
    let img = crate::image::Image::open(file, false)?;
    match img.backing_file() {
        None => Ok(None),
        Some(name) => {
            let p = crate::image::resolve_backing(file, name);
            Ok(Some(canonical(&p)?))
        }
    }
}

/// The canonical paths of every file in the chain whose top is `top`.
fn chain_files(store: &Store, top: &Path) -> Result<Vec<PathBuf>> {
    let chain = store.open(top)?;
    chain.layers().iter().map(|l| canonical(l.path())).collect()
}

/// Files in the store whose backing file is `layer` (canonical paths).
fn dependants_of(store: &Store, layer: &Path) -> Result<Vec<PathBuf>> {
    let mut memo: HashMap<PathBuf, Option<PathBuf>> = HashMap::new();
    let mut out = Vec::new();
    for file in store.files()? {
        if file
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'))
        {
            continue; // a staging name of an operation in flight (maybe in another process)
        }
        // Checked before canonicalizing: a staging file renamed away by another process's
        // operation between the listing and here is no error (no collector runs meanwhile).
        let file = match std::fs::canonicalize(&file) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(&file, e)),
        };
        let backing = match memo.get(&file) {
            Some(b) => b.clone(),
            None => {
                let b = backing_of(&file)?;
                memo.insert(file.clone(), b.clone());
                b
            }
        };
        if backing.as_deref() == Some(layer) {
            out.push(file);
        }
    }
    Ok(out)
}

/// The canonical backing file of a qcow2 image, read from its header only.
fn backing_of(file: &Path) -> Result<Option<PathBuf>> {
    let img = match crate::image::Image::open(file, false) {
        Ok(i) => i,
        // A half-written staging file or a non-qcow2 file cannot be anyone's parent link.
        Err(e) if e.is_corrupt() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match img.backing_file() {
        None => Ok(None),
        Some(name) => {
            let p = crate::image::resolve_backing(file, name);
            Ok(std::fs::canonicalize(&p).ok())
        }
    }
}

fn canonical(p: &Path) -> Result<PathBuf> {
    std::fs::canonicalize(p).map_err(|e| Error::io(p, e))
}

/// The size in bytes of a user image that is not qcow2 and is therefore read as raw.
///
/// Errors: [`Error::Io`] naming the file; [`Error::Unsupported`] when the file cannot be a raw
/// disk image (empty, or not a multiple of 512 bytes), so that a stray file is refused instead
/// of silently becoming a disk. Shared by every backend that imports user images.
pub fn raw_input_size(input: &Path) -> Result<u64> {
    let size = std::fs::metadata(input)
        .map_err(|e| Error::io(input, e))?
        .len();
    if size == 0 || size % 512 != 0 {
        return Err(Error::Unsupported {
            what: format!(
                "{} is neither a qcow2 image nor a raw disk image ({size} bytes is not a \
                 non-zero multiple of 512)",
                input.display()
            ),
            path: Some(input.to_owned()),
            hint: "pass a qcow2 image or a raw disk image (e.g. made by mkfs or qemu-img)".into(),
        });
    }
    Ok(size)
}
