//! Rewriting the backing file name and format of an existing image in place
//! (the equivalent of `qemu-img rebase -u`), including removing the backing.
//!
//! Crash safety: the header, every header extension (the backing-format
//! extension replaced, all others kept byte for byte) and the backing name
//! are re-encoded into one buffer that must fit in cluster 0 (qcow2 spec,
//! "Header extensions": the name lives between the extension area and the
//! end of cluster 0, where nothing else may be stored). The buffer, padded
//! with zeros up to the larger of the old and new used length and rounded
//! up to 512 bytes, is written with a single `pwrite` at offset 0 and then
//! `fdatasync`'d. When it is at most 512 bytes (the common case: 112-byte
//! header + 16-byte format extension + 8-byte end marker leaves 376 bytes of
//! name) the write is one sector and is atomic on every disk; longer rewrites
//! are one page (4 KiB) write, atomic on 4K-sector devices and in practice on
//! Linux filesystems, but not guaranteed by POSIX.

use std::fs::File;
use std::path::Path;

use super::error::{io_err, ImageError, Result};
use super::header::{Header, HeaderExtension, EXT_BACKING_FORMAT};
use super::image::{read_header, BackingFormat, Image};
use super::io::{read_zero_fill, sync_data, write_all_at};
use super::overlay::{check_backing_name, encode_header_cluster};

/// Bytes of cluster 0 used by the header, extensions (with end marker) and
/// backing name of `h`.
fn used_len(h: &Header) -> u64 {
    let ext: u64 = h
        .extensions
        .iter()
        .map(|e| 8 + (e.data.len() as u64).div_ceil(8) * 8)
        .sum();
    let mut end = u64::from(h.header_length) + ext + 8;
    if h.backing_file_offset != 0 {
        end = end.max(h.backing_file_offset + u64::from(h.backing_file_size));
    }
    end
}

/// Rewrite the backing fields of the header of the open `file` (already
/// validated as `h`). Returns the new header.
pub(crate) fn rewrite_backing(
    path: &Path,
    file: &File,
    h: &Header,
    backing: Option<(&str, BackingFormat)>,
) -> Result<Header> {
    if let Some((name, _)) = backing {
        check_backing_name(path, name)?;
    }
    let mut nh = h.clone();
    nh.extensions.retain(|e| e.kind != EXT_BACKING_FORMAT);
    if let Some((_, fmt)) = backing {
        nh.extensions.insert(
            0,
            HeaderExtension {
                kind: EXT_BACKING_FORMAT,
                data: fmt.as_str().as_bytes().to_vec(),
            },
        );
    }
    let mut fixed = vec![0u8; h.header_length as usize];
    read_zero_fill(file, path, &mut fixed, 0)?;
    let mut buf = encode_header_cluster(&nh, &fixed, backing.map(|b| b.0));
    let cs = h.cluster_size();
    if buf.len() as u64 > cs {
        return Err(ImageError::InvalidArgument {
            path: path.to_path_buf(),
            reason: format!(
                "the header, its extensions and the backing name need {} bytes, more than the {cs}-byte first cluster",
                buf.len()
            ),
        });
    }
    let want = (buf.len() as u64).max(used_len(h)).div_ceil(512) * 512;
    buf.resize(want.min(cs) as usize, 0);
    write_all_at(file, path, &buf, 0)?;
    sync_data(file, path)?;
    match backing {
        Some((name, _)) => {
            nh.backing_file = Some(name.to_string());
            nh.backing_file_offset = u64::from(nh.header_length)
                + nh.extensions
                    .iter()
                    .map(|e| 8 + (e.data.len() as u64).div_ceil(8) * 8)
                    .sum::<u64>()
                + 8;
            nh.backing_file_size = name.len() as u32;
        }
        None => {
            nh.backing_file = None;
            nh.backing_file_offset = 0;
            nh.backing_file_size = 0;
        }
    }
    Ok(nh)
}

/// Set (or with `None` remove) the backing file name and format of the
/// qcow2 image at `path` without touching any data, like
/// `qemu-img rebase -u`. `name` is stored verbatim (relative names resolve
/// against `path`'s directory). The new backing file is not opened or
/// checked; guest-visible content changes unless the new backing has the
/// same content as the old one (that is the caller's contract).
///
/// Errors: every validation error of [`Image::open`] for writing (dirty,
/// corrupt, encrypted...), [`ImageError::InvalidArgument`] when the name is
/// empty, longer than 1023 bytes, or the header would not fit in cluster 0,
/// [`ImageError::Io`].
pub fn rebase_unsafe(path: &Path, backing: Option<(&str, BackingFormat)>) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(path, "open"))?;
    let (h, _) = read_header(path, &file, true)?;
    rewrite_backing(path, &file, &h, backing)?;
    Ok(())
}

impl Image {
    /// Rewrite this writable image's backing name and format in place (see
    /// [`rebase_unsafe`]); pending writes are flushed first.
    ///
    /// Errors: [`ImageError::ReadOnly`] and those of [`rebase_unsafe`].
    pub fn set_backing(&mut self, backing: Option<(&str, BackingFormat)>) -> Result<()> {
        if !self.writable {
            return Err(ImageError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.flush()?;
        let nh = rewrite_backing(&self.path, &self.file, &self.header, backing)?;
        self.header = nh;
        Ok(())
    }
}
