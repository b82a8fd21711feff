//! Small positioned-I/O helpers shared by the image code.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::error::{io_err, Result};

/// Read `buf.len()` bytes at byte `offset`; bytes past the end of the file
/// read as zeros (this is how qemu's file driver treats a short host file).
pub fn read_zero_fill(file: &File, path: &Path, buf: &mut [u8], offset: u64) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let at = match offset.checked_add(done as u64) {
            Some(a) => a,
            None => break,
        };
        match file.read_at(&mut buf[done..], at) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(path, "read")(e)),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Write all of `buf` at byte `offset`.
pub fn write_all_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
    file.write_all_at(buf, offset)
        .map_err(io_err(path, "write"))
}

/// `fdatasync` the file.
pub fn sync_data(file: &File, path: &Path) -> Result<()> {
    file.sync_data().map_err(io_err(path, "fsync"))
}

/// Is every byte of `buf` zero? Compares 16 bytes at a time.
pub fn is_zero(buf: &[u8]) -> bool {
    let mut chunks = buf.chunks_exact(16);
    for c in &mut chunks {
        let mut a = [0u8; 16];
        a.copy_from_slice(c);
        if u128::from_ne_bytes(a) != 0 {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b == 0)
}

/// Big-endian u64 at byte `i * 8` of `b`.
pub fn get_be64(b: &[u8], i: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_be_bytes(a)
}

/// Decode a big-endian u64 table.
pub fn decode_table(b: &[u8]) -> Vec<u64> {
    (0..b.len() / 8).map(|i| get_be64(b, i)).collect()
}

/// Encode a u64 table big-endian.
pub fn encode_table(t: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(t.len() * 8);
    for v in t {
        out.extend_from_slice(&v.to_be_bytes());
    }
    out
}

/// fsync the directory containing `path` (after a rename into it).
pub fn sync_parent_dir(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let f = File::open(dir).map_err(io_err(dir, "open directory"))?;
    f.sync_all().map_err(io_err(dir, "fsync directory"))
}
