//! A raw backing file: its bytes are the guest bytes; past its end it reads
//! as zeros (qcow2 spec, "Cluster mapping": a backing file smaller than the
//! image reads as zeros for the parts it does not cover).

use std::fs::File;
use std::path::{Path, PathBuf};

use super::error::{io_err, Result};
use super::io::read_zero_fill;

/// An opened raw backing file (read-only).
#[derive(Debug)]
pub struct RawFile {
    pub(crate) path: PathBuf,
    file: File,
    len: u64,
}

impl RawFile {
    /// Open `path` read-only as a raw image.
    ///
    /// Errors: [`super::error::ImageError::Io`].
    pub fn open(path: &Path) -> Result<RawFile> {
        let file = File::open(path).map_err(io_err(path, "open raw backing file"))?;
        let len = file.metadata().map_err(io_err(path, "stat"))?.len();
        Ok(RawFile {
            path: path.to_path_buf(),
            file,
            len,
        })
    }

    /// Size in bytes (the file length at open time).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Path the file was opened with.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Read `buf.len()` bytes at byte `offset`; zeros past the end.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        if offset >= self.len {
            buf.fill(0);
            return Ok(());
        }
        let n = ((self.len - offset).min(buf.len() as u64)) as usize;
        buf[n..].fill(0);
        read_zero_fill(&self.file, &self.path, &mut buf[..n], offset)
    }
}
