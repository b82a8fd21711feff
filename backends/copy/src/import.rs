//! Importing a user's image (qcow2 with any backing chain, or raw) as a standalone qcow2 file,
//! flattened with the qcow2 crate's image layer.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use boxlite_api::{Error, Result};
use boxlite_backend_qcow2::image::{
    create_overlay, BackingFormat, Chain, FlattenPlan, OpenOptions, QCOW2_MAGIC,
};

use crate::files::write_staged;

/// Write the guest-visible content of the user's image `input` to `dest` as a standalone
/// (no backing file), sparse qcow2 file, through a staging name (see
/// [`crate::files::write_staged`]). `input` may be a qcow2 file with any backing chain or a
/// raw file.
///
/// A raw input is read through a temporary qcow2 overlay that backs onto it (created next to
/// `dest` under a hidden name and removed before returning), so one flatten path serves both
/// formats.
///
/// Errors: I/O errors with the path; [`Error::Unsupported`] / [`Error::Corrupt`] for images
/// the safe qcow2 open refuses; [`Error::NoSpace`] naming `dest`'s staging file.
pub fn flatten_image(input: &Path, dest: &Path) -> Result<()> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::corrupt(dest, "destination has no directory"))?;
    let overlay = if is_qcow2(input)? {
        None
    } else {
        Some(RawOverlay::create(input, dir)?)
    };
    let top = overlay.as_ref().map_or(input, |o| o.path.as_path());
    // The user's own image may back onto anything the user can read: no allowed root.
    let chain = Chain::open(top, &OpenOptions::new())?;
    write_staged(dest, |file, tmp| write_flat(&chain, file, tmp))
}

/// Write the flattened standalone image of `chain` to `file` (at `path`).
///
/// Errors: read errors of the chain; write errors of `file` as I/O errors naming `path`.
pub(crate) fn write_flat(chain: &Chain, file: &File, path: &Path) -> Result<()> {
    let plan = FlattenPlan::new(chain)?;
    let mut w = ErrorKeepingWriter {
        inner: io::BufWriter::with_capacity(1 << 20, file),
        failed: None,
    };
    let result = plan.write_to(&mut w).map_err(Error::from);
    let result = result.and_then(|_| w.flush().map_err(|e| Error::io(path, e)));
    match (result, w.failed.take()) {
        // A write error of ours: name the destination, not the source chain.
        (Err(_), Some(code)) => Err(Error::io(path, code.into_error())),
        (r, _) => r,
    }
}

/// True when `path` starts with the qcow2 magic.
fn is_qcow2(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let md = f.metadata().map_err(|e| Error::io(path, e))?;
    if !md.is_file() {
        return Err(Error::Unsupported {
            what: "an image that is not a regular file".into(),
            path: Some(path.to_owned()),
            hint: "pass a qcow2 or raw image file".into(),
        });
    }
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(got == 4 && magic == QCOW2_MAGIC)
}

/// A temporary qcow2 overlay backing onto a raw file; removed on drop.
struct RawOverlay {
    path: PathBuf,
}

impl RawOverlay {
    fn create(raw: &Path, dir: &Path) -> Result<RawOverlay> {
        let raw = fs::canonicalize(raw).map_err(|e| Error::io(raw, e))?;
        let size = boxlite_backend_qcow2::raw_input_size(&raw)?;
        let name = raw
            .to_str()
            .ok_or_else(|| Error::config(format!("{}: image path is not UTF-8", raw.display())))?;
        let path = dir.join(format!(".raw-{}.qcow2", ulid::Ulid::new()));
        create_overlay(&path, Some((name, BackingFormat::Raw)), size)?;
        Ok(RawOverlay { path })
    }
}

impl Drop for RawOverlay {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove temporary raw overlay");
        }
    }
}

/// An OS error saved by [`ErrorKeepingWriter`] (io::Error is not Clone).
enum SavedError {
    Os(i32),
    Kind(io::ErrorKind),
}

impl SavedError {
    fn into_error(self) -> io::Error {
        match self {
            SavedError::Os(code) => io::Error::from_raw_os_error(code),
            SavedError::Kind(k) => io::Error::from(k),
        }
    }
}

/// Remembers the first write error so it can be reported with the destination's path.
struct ErrorKeepingWriter<W> {
    inner: W,
    failed: Option<SavedError>,
}

impl<W: Write> ErrorKeepingWriter<W> {
    fn keep<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if let Err(e) = &r {
            if self.failed.is_none() {
                self.failed = Some(match e.raw_os_error() {
                    Some(code) => SavedError::Os(code),
                    None => SavedError::Kind(e.kind()),
                });
            }
        }
        r
    }
}

impl<W: Write> Write for ErrorKeepingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = self.inner.write(buf);
        self.keep(r)
    }
    fn flush(&mut self) -> io::Result<()> {
        let r = self.inner.flush();
        self.keep(r)
    }
}
