//! Writing `.boxsnap` archives: [`write_archive`] to any writer, [`export_to_path`] to a file
//! with staged, durable, all-or-nothing semantics.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use boxlite_api::types::format_sha256;
use boxlite_api::{
    validate_name, ArchiveCodec, ArchiveManifest, DiskRole, Error, FlatDisk, ObjectKind, Result,
    ARCHIVE_FORMAT_VERSION,
};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use crate::manifest::{self, FORMAT_QCOW2, MANIFEST_NAME};
use crate::tarfmt::{self, BLOCK, PAX_LOCAL, REGULAR, USTAR_MAX_SIZE};

/// File name extension of archives (`<name>.boxsnap`).
pub const ARCHIVE_EXTENSION: &str = "boxsnap";

/// Buffer between the codec and the output file, in bytes.
const OUT_BUFFER: usize = 1 << 20;

/// Descriptive fields of the manifest supplied by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportMeta {
    /// The box's name, or `None` when exporting without metadata. Must pass
    /// `validate_box_name` when present.
    pub box_name: Option<String>,
    /// Description of the box's source image (free text; empty when exporting without metadata).
    pub image: String,
    /// Export time (UTC); also the `mtime` of every tar entry (whole seconds, clamped at 0).
    pub exported_at: DateTime<Utc>,
}

/// The two disks to archive, each rendered as a standalone qcow2 stream.
pub struct ExportDisks {
    /// Streams `guest-rootfs.qcow2`.
    pub guest_rootfs: Box<dyn FlatDisk>,
    /// Streams `disk.qcow2`.
    pub container: Box<dyn FlatDisk>,
}

impl ExportDisks {
    /// Total bytes of disk data that will be streamed (the progress callback's end value).
    pub fn payload_bytes(&self) -> u64 {
        self.guest_rootfs
            .size_bytes()
            .saturating_add(self.container.size_bytes())
    }

    fn get_mut(&mut self, role: DiskRole) -> &mut Box<dyn FlatDisk> {
        match role {
            DiskRole::GuestRootfs => &mut self.guest_rootfs,
            DiskRole::Container => &mut self.container,
        }
    }
}

impl std::fmt::Debug for ExportDisks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportDisks")
            .field("guest_rootfs_bytes", &self.guest_rootfs.size_bytes())
            .field("container_bytes", &self.container.size_bytes())
            .finish()
    }
}

/// A finished export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedArchive {
    /// The archive file that was created.
    pub path: PathBuf,
    /// The manifest stored in it.
    pub manifest: ArchiveManifest,
}

/// What went wrong inside [`EntryWriter`] (kept so that the error reported names the archive,
/// whatever the [`FlatDisk`] made of it).
enum SinkError {
    Io(io::Error),
    Overflow,
}

/// Writes one tar entry's data: counts, hashes, enforces the declared size, reports progress.
struct EntryWriter<'p, W: Write + ?Sized> {
    inner: &'p mut W,
    hasher: Sha256,
    written: u64,
    declared: u64,
    error: Option<SinkError>,
    progress_base: u64,
    progress: &'p mut dyn FnMut(u64),
}

impl<W: Write + ?Sized> Write for EntryWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.error.is_some() {
            return Err(io::Error::other("archive write already failed"));
        }
        if buf.len() as u64 > self.declared - self.written {
            self.error = Some(SinkError::Overflow);
            return Err(io::Error::other(
                "disk stream is longer than its declared size",
            ));
        }
        match self.inner.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                self.written += n as u64;
                (self.progress)(self.progress_base + self.written);
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(SinkError::Io(e));
                Err(copy)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn mtime_of(meta: &ExportMeta) -> u64 {
    u64::try_from(meta.exported_at.timestamp()).unwrap_or(0)
}

/// Write a regular-file header (preceded by a pax header when the size needs one).
fn write_file_header<W: Write + ?Sized>(
    out: &mut W,
    name: &str,
    size: u64,
    mtime: u64,
) -> io::Result<()> {
    if size > USTAR_MAX_SIZE {
        let records = tarfmt::pax_record("size", &size.to_string());
        let pax_name = format!("PaxHeaders/{name}");
        out.write_all(&tarfmt::header(
            &pax_name,
            PAX_LOCAL,
            records.len() as u64,
            mtime,
        ))?;
        out.write_all(records.as_bytes())?;
        out.write_all(&[0u8; BLOCK][..tarfmt::padding(records.len() as u64)])?;
    }
    out.write_all(&tarfmt::header(name, REGULAR, size, mtime))
}

/// Write a complete `.boxsnap` v1 archive to `out`.
///
/// Layout (docs/archive-format.md): a tar stream compressed by `codec` at `level` holding
/// `guest-rootfs.qcow2`, `disk.qcow2`, then `manifest.json` last, then the two zero blocks of
/// the tar end-of-archive marker. Each disk's SHA-256 is computed from the bytes as they are
/// written; each disk is read exactly once. `progress` is called with the cumulative number of
/// disk bytes streamed so far (ending at [`ExportDisks::payload_bytes`]). `out_path` is only
/// used to name the destination in errors. `out` is flushed but not synced.
///
/// Errors: [`Error::Config`] for a level the codec refuses; [`Error::InvalidName`] for a bad
/// `meta.box_name`; [`Error::NoSpace`] / [`Error::Io`] (with `out_path`) when `out` fails;
/// [`Error::Archive`] naming the entry when a disk streams a different number of bytes than
/// its `size_bytes()`; the [`FlatDisk`]'s own errors while reading its source.
pub fn write_archive<W: Write + Send>(
    out: W,
    out_path: &Path,
    codec: &dyn ArchiveCodec,
    level: i32,
    meta: &ExportMeta,
    mut disks: ExportDisks,
    progress: &mut dyn FnMut(u64),
) -> Result<ArchiveManifest> {
    if let Some(name) = &meta.box_name {
        boxlite_api::validate_box_name(name)?;
    }
    let io_err = |e: io::Error| Error::io(out_path, e);
    let mtime = mtime_of(meta);
    let mut enc = codec.encoder(Box::new(out), level)?;
    let mut sums = Vec::with_capacity(2);
    let mut streamed = 0u64;
    for role in DiskRole::ALL {
        let name = role.file_name();
        let disk = disks.get_mut(role);
        let size = disk.size_bytes();
        write_file_header(&mut *enc, name, size, mtime).map_err(io_err)?;
        let mut entry = EntryWriter {
            inner: &mut *enc,
            hasher: Sha256::new(),
            written: 0,
            declared: size,
            error: None,
            progress_base: streamed,
            progress: &mut *progress,
        };
        let result = disk.write_to(&mut entry);
        match entry.error.take() {
            Some(SinkError::Io(e)) => return Err(io_err(e)),
            Some(SinkError::Overflow) => {
                return Err(Error::archive(
                    out_path,
                    Some(name),
                    format!(
                        "the {role} disk streamed more than its declared {size} bytes; the \
                         storage backend's flat image is inconsistent, nothing was exported"
                    ),
                ))
            }
            None => {}
        }
        result?;
        if entry.written != size {
            return Err(Error::archive(
                out_path,
                Some(name),
                format!(
                    "the {role} disk streamed {} bytes but declared {size}; the storage \
                     backend's flat image is inconsistent, nothing was exported",
                    entry.written
                ),
            ));
        }
        let digest: [u8; 32] = entry.hasher.finalize().into();
        enc.write_all(&[0u8; BLOCK][..tarfmt::padding(size)])
            .map_err(io_err)?;
        streamed += size;
        sums.push((size, disk.virtual_size(), format_sha256(&digest)));
    }
    let [(guest_bytes, guest_virtual, guest_sum), (container_bytes, container_virtual, container_sum)]: [(u64, u64, String); 2] =
        sums.try_into().map_err(|_| Error::config("internal error: disk count"))?;
    let manifest = ArchiveManifest {
        version: ARCHIVE_FORMAT_VERSION,
        box_name: meta.box_name.clone(),
        image: meta.image.clone(),
        guest_disk_checksum: guest_sum,
        container_disk_checksum: container_sum,
        exported_at: meta.exported_at,
        codec: codec.name().to_owned(),
        format: FORMAT_QCOW2.to_owned(),
        guest_disk_virtual_size: guest_virtual,
        container_disk_virtual_size: container_virtual,
        guest_disk_bytes: guest_bytes,
        container_disk_bytes: container_bytes,
    };
    let json = manifest::to_json(&manifest)?;
    write_file_header(&mut *enc, MANIFEST_NAME, json.len() as u64, mtime).map_err(io_err)?;
    enc.write_all(&json).map_err(io_err)?;
    enc.write_all(&[0u8; BLOCK][..tarfmt::padding(json.len() as u64)])
        .map_err(io_err)?;
    enc.write_all(&[0u8; 2 * BLOCK]).map_err(io_err)?;
    enc.finish().map_err(io_err)?;
    Ok(manifest)
}

/// Where [`export_to_path`] will write: `dest/<stem>.boxsnap` when `dest` is an existing
/// directory, else `dest` itself.
///
/// Errors: [`Error::InvalidName`] when `stem` (a box name or id) is not a valid name;
/// [`Error::AlreadyExists`] (kind Archive) when the target exists; [`Error::Io`] when the
/// parent directory is missing.
pub fn resolve_export_path(dest: &Path, stem: &str) -> Result<PathBuf> {
    let target = if dest.is_dir() {
        validate_name(ObjectKind::Box, stem)?;
        dest.join(format!("{stem}.{ARCHIVE_EXTENSION}"))
    } else {
        dest.to_path_buf()
    };
    if target.symlink_metadata().is_ok() {
        return Err(Error::AlreadyExists {
            kind: ObjectKind::Archive,
            name: target.display().to_string(),
            box_name: None,
        });
    }
    let parent = parent_dir(&target);
    if !parent.is_dir() {
        return Err(Error::io(
            parent,
            io::Error::new(
                io::ErrorKind::NotFound,
                "destination directory does not exist",
            ),
        ));
    }
    Ok(target)
}

fn parent_dir(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Export to a file: [`resolve_export_path`], then [`write_archive`] into a staged temporary
/// file created with `O_EXCL` (mode 0600) in the destination directory, `fsync` it, link it
/// to the final name without replacing anything, `fsync` the directory.
///
/// On any error (including a full disk, reported as [`Error::NoSpace`]) the temporary file is
/// removed and no file appears at the destination. The archive keeps mode 0600: it holds
/// whole disks.
///
/// Errors: those of [`resolve_export_path`] and [`write_archive`]; [`Error::AlreadyExists`]
/// if the destination appeared while writing.
pub fn export_to_path(
    dest: &Path,
    stem: &str,
    codec: &dyn ArchiveCodec,
    level: i32,
    meta: &ExportMeta,
    disks: ExportDisks,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportedArchive> {
    export_to_path_tagged(dest, stem, "", codec, level, meta, disks, progress)
}

/// The name prefix of the temporary file [`export_to_path_tagged`] writes with `tag`
/// (`.boxsnap-<tag>`), so a caller that journals the tag can find and remove the temporary
/// file after a crash.
pub fn partial_prefix(tag: &str) -> String {
    format!(".boxsnap-{tag}")
}

/// [`export_to_path`] with the temporary file named [`partial_prefix`]`(tag)` + random +
/// `.partial` in the destination directory. `tag` must be a plain file-name fragment
/// (e.g. a ULID). Errors: as [`export_to_path`].
#[allow(clippy::too_many_arguments)]
pub fn export_to_path_tagged(
    dest: &Path,
    stem: &str,
    tag: &str,
    codec: &dyn ArchiveCodec,
    level: i32,
    meta: &ExportMeta,
    disks: ExportDisks,
    progress: &mut dyn FnMut(u64),
) -> Result<ExportedArchive> {
    if tag.contains('/') || tag.contains('\0') {
        return Err(Error::config(format!("invalid temporary-file tag {tag:?}")));
    }
    let target = resolve_export_path(dest, stem)?;
    let dir = parent_dir(&target);
    // Mode 0600 (tempfile's default, stated here because the archive holds whole disks).
    let tmp = tempfile::Builder::new()
        .prefix(&partial_prefix(tag))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(&dir)
        .map_err(|e| Error::io(&dir, e))?;
    let manifest = {
        let file: &File = tmp.as_file();
        let out = BufWriter::with_capacity(OUT_BUFFER, file);
        write_archive(out, &target, codec, level, meta, disks, progress)?
    };
    tmp.as_file()
        .sync_all()
        .map_err(|e| Error::io(&target, e))?;
    tmp.persist_noclobber(&target).map_err(|e| {
        if e.error.kind() == io::ErrorKind::AlreadyExists {
            Error::AlreadyExists {
                kind: ObjectKind::Archive,
                name: target.display().to_string(),
                box_name: None,
            }
        } else {
            Error::io(&target, e.error)
        }
    })?;
    if let Err(e) = File::open(&dir).and_then(|d| d.sync_all()) {
        let _ = std::fs::remove_file(&target);
        return Err(Error::io(&dir, e));
    }
    Ok(ExportedArchive {
        path: target,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_over_8_gib_get_a_pax_size_record() {
        let size = USTAR_MAX_SIZE + 12345;
        let mut out = Vec::new();
        write_file_header(&mut out, "disk.qcow2", size, 1_700_000_000).unwrap();
        assert_eq!(out.len(), 3 * BLOCK, "pax header, pax data, file header");
        let pax: [u8; BLOCK] = out[..BLOCK].try_into().unwrap();
        let pax = tarfmt::parse_header(&pax).unwrap();
        assert_eq!(pax.typeflag, PAX_LOCAL);
        let records = tarfmt::parse_pax(&out[BLOCK..BLOCK + pax.size as usize]).unwrap();
        assert_eq!(
            records,
            vec![("size".to_owned(), size.to_string().into_bytes())]
        );
        let file: [u8; BLOCK] = out[2 * BLOCK..].try_into().unwrap();
        let file = tarfmt::parse_header(&file).unwrap();
        assert_eq!(file.name, b"disk.qcow2");
        assert_eq!(file.size, USTAR_MAX_SIZE);
    }
}
