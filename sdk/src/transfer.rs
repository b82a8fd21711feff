//! Glue between the runtime and `boxlite-archive`: export and import on blocking threads, and
//! the qcow2 validator that import runs on every staged disk.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use boxlite_api::{ArchiveCodec, DiskRole, DiskSource, Error, FlatDisk, Result};
use boxlite_archive::{ExportDisks, ImportLimits};
use boxlite_backend_qcow2::image::{check, Chain, OpenOptions};

/// What the manifest says about the box, and the file name stem for a directory destination.
pub(crate) struct ExportMeta {
    pub box_name: Option<String>,
    pub image: String,
    pub file_stem: String,
    /// Tag of the temporary file's name (journaled for recovery).
    pub tag: String,
}

/// Stream the flattened disks into an archive at `dest` on a blocking thread.
pub(crate) async fn export_blocking(
    dest: PathBuf,
    codec: Arc<dyn ArchiveCodec>,
    level: i32,
    meta: ExportMeta,
    flats: Vec<(DiskRole, Box<dyn FlatDisk>)>,
) -> Result<PathBuf> {
    let mut guest = None;
    let mut container = None;
    for (role, flat) in flats {
        match role {
            DiskRole::GuestRootfs => guest = Some(flat),
            DiskRole::Container => container = Some(flat),
        }
    }
    let (Some(guest_rootfs), Some(container)) = (guest, container) else {
        return Err(Error::config("internal error: export needs both disks"));
    };
    join(tokio::task::spawn_blocking(move || {
        let disks = ExportDisks {
            guest_rootfs,
            container,
        };
        let m = boxlite_archive::ExportMeta {
            box_name: meta.box_name,
            image: meta.image,
            exported_at: chrono::Utc::now(),
        };
        boxlite_archive::export_to_path_tagged(
            &dest,
            &meta.file_stem,
            &meta.tag,
            codec.as_ref(),
            level,
            &m,
            disks,
            &mut |_| {},
        )
        .map(|a| a.path)
    }))
    .await
}

/// The staged result of an import, removed by [`Imported::cleanup`] whether or not the disks
/// were adopted.
pub(crate) struct Imported {
    pub manifest: boxlite_api::ArchiveManifest,
    pub disks: DiskSource,
    staging: PathBuf,
}

impl Imported {
    /// Remove the private staging directory (adopted disks were moved out of it already).
    pub fn cleanup(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.staging) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.staging.display(), error = %e,
                    "could not remove import staging; garbage collection will");
            }
        }
    }
}

/// Verify and extract `archive` into a private directory under `staging` on a blocking thread.
pub(crate) async fn import_blocking(
    archive: PathBuf,
    codecs: Vec<Arc<dyn ArchiveCodec>>,
    staging: PathBuf,
) -> Result<Imported> {
    join(tokio::task::spawn_blocking(move || {
        let root = staging.clone();
        let imported = boxlite_archive::import_archive(
            &archive,
            &codecs,
            &staging,
            &ImportLimits::default(),
            |_role, path| validate_standalone(path, &root),
        )?;
        Ok(Imported {
            disks: imported.disk_source(),
            manifest: imported.manifest,
            staging: imported.staging,
        })
    }))
    .await
}

/// Open `path` as an untrusted standalone qcow2 image: the safe open (header checks), no
/// backing file at all, and a clean refcount check. Returns the virtual size in bytes.
pub(crate) fn validate_standalone(path: &Path, root: &Path) -> Result<u64> {
    let chain = Chain::open(
        path,
        &OpenOptions::new().allowed_root(Some(root.to_path_buf())),
    )?;
    if chain.layers().len() != 1 {
        return Err(Error::corrupt(
            path,
            "the disk has a backing file; archives must hold standalone disks",
        ));
    }
    let report = check(path)?;
    if !report.is_clean() {
        return Err(Error::corrupt(
            path,
            format!("qcow2 consistency check failed: {report:?}"),
        ));
    }
    Ok(chain.virtual_size())
}

async fn join<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    h.await
        .map_err(|e| Error::config(format!("internal error: worker task failed: {e}")))?
}
