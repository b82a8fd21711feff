//! Creation of empty qcow2 v3 images and thin overlays.
//!
//! Layout written (64 KiB clusters, qcow2 spec "Header" v3, compat 1.1,
//! refcount_order 4 = 16-bit refcounts):
//!
//! | cluster | content |
//! |---|---|
//! | 0 | header (112 bytes), backing-format extension, end marker, backing name |
//! | 1 | refcount table (one entry -> cluster 2) |
//! | 2 | refcount block (clusters 0..3+L1 have refcount 1) |
//! | 3.. | L1 table, all zero (sparse) |
//!
//! Only three small writes, a `set_len` and one `fsync` are issued.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{io_err, ImageError, Result};
use super::header::{
    encode_extensions, Header, HeaderExtension, EXT_BACKING_FORMAT, MAX_BACKING_NAME,
    V3_WRITE_HEADER_LEN,
};
use super::image::BackingFormat;
use super::io::{sync_parent_dir, write_all_at};
use super::validate::{l1_entries_needed, MAX_L1_BYTES};

/// log2 of the cluster size of images we create (64 KiB).
pub const OVERLAY_CLUSTER_BITS: u32 = 16;

/// Build the bytes of cluster 0 (header, extensions, backing name) for a v3
/// image with the given geometry. Returns the used prefix of cluster 0.
///
/// Errors: [`ImageError::InvalidArgument`] for a bad backing name.
#[allow(clippy::too_many_arguments)]
pub(crate) fn build_header_cluster(
    path: &Path,
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    backing: Option<(&str, BackingFormat)>,
) -> Result<Vec<u8>> {
    let mut exts = Vec::new();
    if let Some((name, fmt)) = backing {
        check_backing_name(path, name)?;
        exts.push(HeaderExtension {
            kind: EXT_BACKING_FORMAT,
            data: fmt.as_str().as_bytes().to_vec(),
        });
    }
    let h = Header {
        version: 3,
        backing_file_offset: 0,
        backing_file_size: 0,
        cluster_bits,
        size,
        crypt_method: 0,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots: 0,
        snapshots_offset: 0,
        incompatible_features: 0,
        compatible_features: 0,
        autoclear_features: 0,
        refcount_order: 4,
        header_length: V3_WRITE_HEADER_LEN,
        compression_type: 0,
        extensions: exts,
        backing_file: None,
    };
    Ok(encode_header_cluster(&h, &[], backing.map(|b| b.0)))
}

/// Encode `h` (fixed fields taken from `h`, unknown additional header bytes
/// from `extra_fixed`, which holds the original bytes 0..header_length or is
/// empty), its extensions, and `backing_name` placed right after the end
/// marker. The backing offset/size fields are set accordingly.
pub(crate) fn encode_header_cluster(
    h: &Header,
    extra_fixed: &[u8],
    backing_name: Option<&str>,
) -> Vec<u8> {
    let hl = h.header_length as usize;
    let mut out = vec![0u8; hl];
    let n = extra_fixed.len().min(hl);
    out[..n].copy_from_slice(&extra_fixed[..n]);
    encode_extensions(&h.extensions, &mut out);
    let mut h2 = h.clone();
    match backing_name {
        Some(name) => {
            h2.backing_file_offset = out.len() as u64;
            h2.backing_file_size = name.len() as u32;
            out.extend_from_slice(name.as_bytes());
        }
        None => {
            h2.backing_file_offset = 0;
            h2.backing_file_size = 0;
        }
    }
    h2.write_fixed(&mut out);
    out
}

/// Check a backing name we are about to write: 1..=1023 bytes, no NUL.
pub(crate) fn check_backing_name(path: &Path, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_BACKING_NAME || name.contains('\0') {
        return Err(ImageError::InvalidArgument {
            path: path.to_path_buf(),
            reason: format!(
                "backing file name must be 1..={MAX_BACKING_NAME} bytes without NUL (got {} bytes)",
                name.len()
            ),
        });
    }
    Ok(())
}

fn write_new_image(
    file: &File,
    path: &Path,
    backing: Option<(&str, BackingFormat)>,
    virtual_size: u64,
) -> Result<()> {
    let cs = 1u64 << OVERLAY_CLUSTER_BITS;
    let l1_size = l1_entries_needed(virtual_size, OVERLAY_CLUSTER_BITS)
        .filter(|&n| n * 8 <= MAX_L1_BYTES)
        .ok_or_else(|| ImageError::InvalidArgument {
            path: path.to_path_buf(),
            reason: format!("virtual size {virtual_size} bytes is too large"),
        })?;
    let l1_clusters = (l1_size * 8).div_ceil(cs);
    let total = 3 + l1_clusters;
    let c0 = build_header_cluster(
        path,
        OVERLAY_CLUSTER_BITS,
        virtual_size,
        l1_size as u32,
        3 * cs,
        cs,
        1,
        backing,
    )?;
    write_all_at(file, path, &c0, 0)?;
    write_all_at(file, path, &(2 * cs).to_be_bytes(), cs)?;
    let mut rb = Vec::with_capacity(total as usize * 2);
    for _ in 0..total {
        rb.extend_from_slice(&1u16.to_be_bytes());
    }
    write_all_at(file, path, &rb, 2 * cs)?;
    file.set_len(total * cs)
        .map_err(io_err(path, "set file length"))?;
    file.sync_all().map_err(io_err(path, "fsync"))
}

/// Create a new qcow2 v3 image at `path` (which must not exist: O_EXCL),
/// 64 KiB clusters, 16-bit refcounts, `virtual_size` bytes rounded up to a
/// multiple of 512 (as `qemu-img create` does), optionally backed by
/// `backing = (name, format)`: `name` is stored verbatim (a relative name is
/// resolved against `path`'s directory when opened) and the format in the
/// backing-format header extension. The backing file is not opened. The
/// file is created with mode 0600 ([`crate::private::FILE_MODE`]) and
/// fsync'd; the directory is not (callers that created it under a
/// staging name fsync the directory after their rename, or use
/// [`create_overlay_staged`]).
///
/// Errors: [`ImageError::Io`] (including `AlreadyExists`),
/// [`ImageError::InvalidArgument`] (bad name, size too large). A partially
/// written file is removed.
pub fn create_overlay(
    path: &Path,
    backing: Option<(&str, BackingFormat)>,
    virtual_size: u64,
) -> Result<()> {
    let size = virtual_size
        .checked_add(511)
        .map(|s| s & !511)
        .ok_or_else(|| ImageError::InvalidArgument {
            path: path.to_path_buf(),
            reason: format!("virtual size {virtual_size} bytes is too large"),
        })?;
    if let Some((name, _)) = backing {
        check_backing_name(path, name)?;
    }
    let file = crate::private::file_options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path, "create"))?;
    let r = write_new_image(&file, path, backing, size);
    if r.is_err() {
        drop(file);
        let _ = std::fs::remove_file(path);
    }
    r
}

/// Create an empty standalone qcow2 v3 image (no backing file); see
/// [`create_overlay`].
pub fn create_image(path: &Path, virtual_size: u64) -> Result<()> {
    create_overlay(path, None, virtual_size)
}

/// Like [`create_overlay`] but written under a temporary name in the same
/// directory and renamed onto `path` (replacing it if it exists) only once
/// complete and fsync'd; the directory is fsync'd after the rename.
///
/// Errors: as [`create_overlay`]; the temporary file is removed on failure.
pub fn create_overlay_staged(
    path: &Path,
    backing: Option<(&str, BackingFormat)>,
    virtual_size: u64,
) -> Result<()> {
    let tmp = staging_name(path);
    create_overlay(&tmp, backing, virtual_size)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(path, "rename into place")(e));
    }
    sync_parent_dir(path)
}

/// A unique temporary name next to `path`: `.NAME.PID.NANOS.tmp`.
pub(crate) fn staging_name(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".to_string());
    let tmp = format!(".{name}.{}.{nanos}.tmp", std::process::id());
    match path.parent() {
        Some(d) => d.join(tmp),
        None => PathBuf::from(tmp),
    }
}
