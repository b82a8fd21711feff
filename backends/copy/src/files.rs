//! File-level building blocks: staged writes (`.NAME.partial` -> fsync -> rename), sparse
//! copies that keep holes, directory fsync and allocated-size queries.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use boxlite_api::{Error, Result};
use boxlite_backend_qcow2::private;

/// Granularity at which the read/write fallback of [`sparse_copy`] detects zero blocks
/// (the qcow2 default cluster size).
const ZERO_BLOCK: usize = 64 << 10;
/// Buffer of the read/write fallback.
const CHUNK: usize = 1 << 20;

/// The staging name of `dest`: `.NAME.partial` in the same directory.
///
/// Errors: [`Error::Corrupt`] if `dest` has no parent directory or file name.
pub fn partial_name(dest: &Path) -> Result<PathBuf> {
    let dir = dest
        .parent()
        .ok_or_else(|| Error::corrupt(dest, "destination has no directory"))?;
    let name = dest
        .file_name()
        .ok_or_else(|| Error::corrupt(dest, "destination has no file name"))?;
    let mut staged = std::ffi::OsString::from(".");
    staged.push(name);
    staged.push(".partial");
    Ok(dir.join(staged))
}

/// Create `dest` through its staging name: `write` fills the new, empty staging file (created
/// with mode 0600, opened read-write, passed with its path); then the file is fsync'd and
/// renamed onto `dest`.
/// The directory is *not* fsync'd (callers writing several files fsync it once, see
/// [`sync_dir`]).
///
/// On any error the staging file is removed and `dest` is untouched.
///
/// Errors: those of `write`; I/O errors (with the path) creating, syncing or renaming;
/// [`Error::NoSpace`] when the filesystem is full.
pub fn write_staged(dest: &Path, write: impl FnOnce(&File, &Path) -> Result<()>) -> Result<()> {
    let tmp = partial_name(dest)?;
    let file = private::file_options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| Error::io(&tmp, e))?;
    let result = (|| {
        write(&file, &tmp)?;
        file.sync_all().map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))
    })();
    if result.is_err() {
        drop(file);
        if let Err(e) = fs::remove_file(&tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %tmp.display(), error = %e, "could not remove partial file");
            }
        }
    }
    result
}

/// Copy the whole content of `src` into `dst` (an empty file opened for writing), keeping
/// holes: only the data extents that `SEEK_DATA`/`SEEK_HOLE` report are copied (with
/// `copy_file_range`, falling back to `pread`/`pwrite` where the kernel refuses it), and the
/// destination is then extended to the source length. On a filesystem without `SEEK_DATA`,
/// every block is read and all-zero 64 KiB blocks are left as holes.
///
/// On btrfs and xfs, `copy_file_range` within one filesystem may share extents (a reflink);
/// use [`sparse_copy_unshared`] for a copy that shares nothing.
///
/// Returns the number of data bytes copied.
///
/// Errors: I/O errors with the path of the file involved; [`Error::NoSpace`];
/// [`Error::Corrupt`] if the source shrinks during the copy.
pub fn sparse_copy(src: &File, src_path: &Path, dst: &File, dst_path: &Path) -> Result<u64> {
    sparse_copy_impl(src, src_path, dst, dst_path, true)
}

/// Like [`sparse_copy`] but with `pread`/`pwrite` only, so the destination's data blocks are
/// its own even on filesystems that share extents (btrfs, xfs): for `cow = false` clones.
///
/// Errors: as [`sparse_copy`].
pub fn sparse_copy_unshared(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
) -> Result<u64> {
    sparse_copy_impl(src, src_path, dst, dst_path, false)
}

fn sparse_copy_impl(
    src: &File,
    src_path: &Path,
    dst: &File,
    dst_path: &Path,
    kernel_copy: bool,
) -> Result<u64> {
    let len = src.metadata().map_err(|e| Error::io(src_path, e))?.len();
    let mut copier = RangeCopier {
        src,
        src_path,
        dst,
        dst_path,
        kernel_copy,
        buf: Vec::new(),
    };
    let mut copied = 0u64;
    let mut off = 0u64;
    while off < len {
        let data = match seek(src, off, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data after `off`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // The filesystem has no SEEK_DATA: scan the rest for zero blocks.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                copied += copier.scan_copy(off, len)?;
                break;
            }
            Err(e) => return Err(Error::io(src_path, e)),
        };
        if data >= len {
            break;
        }
        let hole = seek(src, data, libc::SEEK_HOLE)
            .map_err(|e| Error::io(src_path, e))?
            .min(len);
        copier.copy(data, hole)?;
        copied += hole - data;
        off = hole;
    }
    dst.set_len(len).map_err(|e| Error::io(dst_path, e))?;
    Ok(copied)
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> io::Result<u64> {
    let off = libc::off_t::try_from(off)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek on a valid, open file descriptor owned by `f`; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), off, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

struct RangeCopier<'a> {
    src: &'a File,
    src_path: &'a Path,
    dst: &'a File,
    dst_path: &'a Path,
    /// Still trying `copy_file_range` (cleared once the kernel refuses it).
    kernel_copy: bool,
    buf: Vec<u8>,
}

impl RangeCopier<'_> {
    /// Copy `[start, end)` to the same offsets of the destination.
    fn copy(&mut self, start: u64, end: u64) -> Result<()> {
        let mut pos = start;
        while pos < end && self.kernel_copy {
            let mut off_in = pos as libc::loff_t;
            let mut off_out = pos as libc::loff_t;
            let want = usize::try_from(end - pos)
                .unwrap_or(usize::MAX)
                .min(1 << 30);
            // SAFETY: both descriptors are open files owned by the borrowed `File`s; the
            // offset pointers point to live locals for the duration of the call.
            let n = unsafe {
                libc::copy_file_range(
                    self.src.as_raw_fd(),
                    &mut off_in,
                    self.dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => {
                        self.kernel_copy = false;
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(self.classify(e)),
                }
            } else if n == 0 {
                return Err(Error::corrupt(
                    self.src_path,
                    "the file shrank while it was being copied",
                ));
            } else {
                pos += n as u64;
            }
        }
        if pos < end {
            self.rw_copy(pos, end, false)?;
        }
        Ok(())
    }

    /// Read/write copy of `[start, end)`; with `skip_zero`, all-zero blocks are not written.
    fn rw_copy(&mut self, start: u64, end: u64, skip_zero: bool) -> Result<u64> {
        if self.buf.is_empty() {
            self.buf = vec![0u8; CHUNK];
        }
        let mut written = 0u64;
        let mut pos = start;
        while pos < end {
            let n = usize::try_from(end - pos).unwrap_or(CHUNK).min(CHUNK);
            let buf = &mut self.buf[..n];
            self.src
                .read_exact_at(buf, pos)
                .map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        Error::corrupt(self.src_path, "the file shrank while it was being copied")
                    }
                    _ => Error::io(self.src_path, e),
                })?;
            for (i, block) in buf.chunks(ZERO_BLOCK).enumerate() {
                if skip_zero && block.iter().all(|&b| b == 0) {
                    continue;
                }
                let at = pos + (i * ZERO_BLOCK) as u64;
                self.dst
                    .write_all_at(block, at)
                    .map_err(|e| Error::io(self.dst_path, e))?;
                written += block.len() as u64;
            }
            pos += n as u64;
        }
        Ok(written)
    }

    /// Copy `[start, end)` without extent information, leaving zero blocks as holes.
    fn scan_copy(&mut self, start: u64, end: u64) -> Result<u64> {
        self.rw_copy(start, end, true)
    }

    /// A `copy_file_range` error: reads and writes cannot be told apart, so name both files
    /// unless it is a space error (which can only be the destination's).
    fn classify(&self, e: io::Error) -> Error {
        match Error::io(self.dst_path, e) {
            Error::Io { source, .. } => Error::Io {
                path: PathBuf::from(format!(
                    "{} -> {}",
                    self.src_path.display(),
                    self.dst_path.display()
                )),
                source,
            },
            other => other,
        }
    }
}

/// fsync a directory so entries created or renamed in it are durable.
///
/// Errors: [`Error::Io`] with the directory.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

/// Create `dir` (which must not exist yet) and any missing ancestors, with mode 0700, fsyncing
/// the parent of each directory created so the new entries are durable.
///
/// Errors: I/O errors with the directory involved; `AlreadyExists` as [`Error::Io`] when
/// `dir` itself exists.
pub fn create_dir_durable(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir.parent();
    while let Some(p) = cur {
        if p.exists() {
            break;
        }
        missing.push(p.to_path_buf());
        cur = p.parent();
    }
    for p in missing.iter().rev() {
        match private::dir_builder().create(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(p, e)),
        }
        if let Some(parent) = p.parent() {
            sync_dir(parent)?;
        }
    }
    private::dir_builder()
        .create(dir)
        .map_err(|e| Error::io(dir, e))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Bytes allocated on the host for `path` (`st_blocks * 512`).
///
/// Errors: [`Error::Io`] with the path.
pub fn allocated_bytes(path: &Path) -> Result<u64> {
    let md = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    Ok(md.blocks() * 512)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_name_is_hidden_and_in_the_same_dir() {
        let p = partial_name(Path::new("/a/b/disk.qcow2")).unwrap();
        assert_eq!(p, Path::new("/a/b/.disk.qcow2.partial"));
    }

    #[test]
    fn staged_write_removes_the_partial_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.qcow2");
        let err = write_staged(&dest, |f, _| {
            f.write_all_at(b"half", 0).unwrap();
            Err(Error::corrupt("/src", "boom"))
        })
        .unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn sparse_copy_keeps_holes_and_content() {
        let dir = tempfile::tempdir().unwrap();
        let src_p = dir.path().join("src");
        let src = File::create(&src_p).unwrap();
        src.set_len(64 << 20).unwrap();
        src.write_all_at(&[7u8; 4096], 10 << 20).unwrap();
        src.write_all_at(&[9u8; 100], (64 << 20) - 100).unwrap();
        drop(src);
        let dst_p = dir.path().join("dst");
        write_staged(&dst_p, |d, p| {
            let s = File::open(&src_p).unwrap();
            sparse_copy(&s, &src_p, d, p).map(|_| ())
        })
        .unwrap();
        assert_eq!(fs::read(&src_p).unwrap(), fs::read(&dst_p).unwrap());
        assert!(allocated_bytes(&dst_p).unwrap() < 1 << 20);
    }

    #[test]
    fn staged_files_are_0600_and_new_directories_0700() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b/c");
        create_dir_durable(&sub).unwrap();
        for d in ["a", "a/b", "a/b/c"] {
            assert_eq!(mode(&dir.path().join(d)), 0o700, "{d}");
        }
        let dest = sub.join("disk.qcow2");
        write_staged(&dest, |f, p| {
            assert_eq!(mode(p), 0o600, "the staging file");
            f.write_all_at(b"data", 0).map_err(|e| Error::io(p, e))
        })
        .unwrap();
        assert_eq!(mode(&dest), 0o600);
    }

    #[test]
    fn scan_copy_skips_zero_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let src_p = dir.path().join("src");
        let mut data = vec![0u8; 8 << 20];
        data[5 << 20] = 1;
        fs::write(&src_p, &data).unwrap();
        let dst_p = dir.path().join("dst");
        let s = File::open(&src_p).unwrap();
        let d = File::create(&dst_p).unwrap();
        let mut c = RangeCopier {
            src: &s,
            src_path: &src_p,
            dst: &d,
            dst_path: &dst_p,
            kernel_copy: false,
            buf: Vec::new(),
        };
        assert_eq!(
            c.scan_copy(0, data.len() as u64).unwrap(),
            ZERO_BLOCK as u64
        );
        d.set_len(data.len() as u64).unwrap();
        assert_eq!(fs::read(&dst_p).unwrap(), data);
    }
}
